//! The generic payment webhook: an order in Courier's own format, signed per
//! Standard Webhooks, applied once per `webhook-id`.

use chrono::Utc;
use serde_json::Value;
use sqlx::PgPool;

use super::checkout::record_mismatch;
use super::{IngestStatus, Ingested, PaymentError};
use crate::db::payment_events::{self, InboxEvent};
use crate::db::payments;
use crate::domain::money::{Received, mismatch, to_minor};
use crate::domain::payment::EventStatus;
use crate::service::deliverable::AcceptRules;
use crate::service::orders::{NewOrder, NewPaymentStatus, create_order_in};

/// Applies a verified generic webhook once, deduplicated on `webhook-id`.
/// When it says what was paid (`amount_paid`), that must be the order's
/// total: otherwise the order is created with the payment `mismatched`
/// (recorded, alerted, nothing delivered until an admin decides).
pub async fn ingest_generic(
    pool: &PgPool,
    webhook_id: &str,
    order: &NewOrder,
    raw: &Value,
    rules: &AcceptRules,
) -> Result<Ingested, PaymentError> {
    let mut tx = pool.begin().await?;
    let Some(row) = payment_events::receive(
        &mut tx,
        &InboxEvent {
            provider: "generic",
            event_id: webhook_id,
            event_type: "order",
            order_ref: None,
            payload: raw,
            occurred_at: Utc::now(),
        },
    )
    .await?
    else {
        tx.commit().await?;
        let mut conn = pool.acquire().await?;
        let id = payments::order_by_key(&mut conn, &format!("generic:{webhook_id}")).await?;
        return Ok(Ingested::new(IngestStatus::Duplicate, id, None));
    };
    // Validated before its total is computed (bounded amounts cannot overflow).
    crate::service::orders::validate(order)?;
    let actor = format!("webhook:{webhook_id}");
    let key = format!("generic:{webhook_id}");
    let received = order.amount_paid.and_then(|a| {
        Some(Received {
            amount_minor: to_minor(a, &order.currency)?,
            currency: order.currency.clone(),
        })
    });
    let issue = match (order.payment_status, order.amount_paid) {
        (NewPaymentStatus::Paid, Some(_)) => {
            mismatch(order.total(), &order.currency, received.as_ref())
        }
        _ => None,
    };
    let mut order = order.clone();
    if issue.is_some() {
        order.payment_status = NewPaymentStatus::Pending;
    }
    let id = create_order_in(&mut tx, &order, Some(&key), &actor, rules).await?;
    let note = match &issue {
        Some(issue) => {
            record_mismatch(&mut tx, id, received.as_ref(), issue, &actor).await?;
            Some(format!("payment not applied: {issue}"))
        }
        None => None,
    };
    payment_events::settle_event(
        &mut tx,
        row,
        EventStatus::Applied,
        Some(id),
        note.as_deref(),
    )
    .await?;
    tx.commit().await?;
    Ok(Ingested::new(IngestStatus::Applied, Some(id), note))
}
