//! Refunds, disputes and the payment-event inbox.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::events::{self, NewEvent};
use crate::domain::delivery::DeliveryStatus;
use crate::domain::order::PaymentStatus;
use crate::error::DbError;

/// A refund as the order API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RefundView {
    pub id: Uuid,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub reason: String,
    pub reason_text: Option<String>,
    pub source: String,
    pub status: String,
    pub external_id: Option<String>,
    /// The gateway job (a delivery of kind `gateway_refund`), when there is one.
    pub delivery_id: Option<Uuid>,
    pub revoke: bool,
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A new refund row.
#[derive(Debug, Clone)]
pub struct NewRefund<'a> {
    pub id: Uuid,
    pub order_id: Uuid,
    pub amount: Decimal,
    pub currency: &'a str,
    pub reason: &'a str,
    pub reason_text: Option<&'a str>,
    pub source: &'a str,
    pub status: &'a str,
    pub external_id: Option<&'a str>,
    pub delivery_id: Option<Uuid>,
    pub revoke: bool,
    pub requested_by: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: Option<&'a [u8]>,
}

pub async fn insert_refund(conn: &mut PgConnection, r: &NewRefund<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refunds (id, order_id, amount, currency, reason, reason_text, source, status, \
           external_id, delivery_id, revoke, requested_by, completed_at, idempotency_key, request_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
           CASE WHEN $8 IN ('succeeded', 'recorded') THEN now() END, $13, $14)",
    )
    .bind(r.id)
    .bind(r.order_id)
    .bind(r.amount)
    .bind(r.currency)
    .bind(r.reason)
    .bind(r.reason_text)
    .bind(r.source)
    .bind(r.status)
    .bind(r.external_id)
    .bind(r.delivery_id)
    .bind(r.revoke)
    .bind(r.requested_by)
    .bind(r.idempotency_key)
    .bind(r.request_hash)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn refunds_of(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<RefundView>, DbError> {
    let rows = sqlx::query("SELECT * FROM refunds WHERE order_id = $1 ORDER BY created_at, id")
        .bind(order_id)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RefundView {
                id: r.try_get("id")?,
                amount: r.try_get("amount")?,
                currency: r.try_get::<String, _>("currency")?.trim().to_owned(),
                reason: r.try_get("reason")?,
                reason_text: r.try_get("reason_text")?,
                source: r.try_get("source")?,
                status: r.try_get("status")?,
                external_id: r.try_get("external_id")?,
                delivery_id: r.try_get("delivery_id")?,
                revoke: r.try_get("revoke")?,
                requested_by: r.try_get("requested_by")?,
                created_at: r.try_get("created_at")?,
                completed_at: r.try_get("completed_at")?,
            })
        })
        .collect()
}

/// Moves the refund of a gateway-refund job along with the job, in the
/// worker's transaction (which holds the order's row lock):
/// - succeeded: the gateway's refund id is kept;
/// - dead (or cancelled): the refund is `failed`, its amount is refundable
///   again (`refunded_amount` and the payment status follow the money) and an
///   admin alert says so. The order's status and any withdrawal of access stay:
///   they record the admin's decision, which a retry of the job completes.
/// - a failed refund whose job an admin retried and which then succeeds counts
///   again.
pub async fn settle_refund(
    conn: &mut PgConnection,
    delivery_id: Uuid,
    next: DeliveryStatus,
    response: Option<&str>,
) -> Result<(), DbError> {
    let status = match next {
        DeliveryStatus::Succeeded => "succeeded",
        DeliveryStatus::Dead | DeliveryStatus::Cancelled => "failed",
        _ => return Ok(()),
    };
    let external: Option<String> = response
        .and_then(|r| serde_json::from_str::<Value>(r).ok())
        .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned));
    let row = sqlx::query(
        "WITH prev AS (SELECT id, status FROM refunds WHERE delivery_id = $1 FOR UPDATE) \
         UPDATE refunds r SET status = $2, \
           external_id = CASE WHEN $3::text IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM refunds o WHERE o.external_id = $3 AND o.id <> r.id) \
             THEN $3 ELSE r.external_id END, \
           completed_at = CASE WHEN $2 = 'succeeded' THEN now() END \
         FROM prev WHERE r.id = prev.id \
         RETURNING r.order_id, r.amount, r.currency, prev.status AS prev_status",
    )
    .bind(delivery_id)
    .bind(status)
    .bind(&external)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let order_id: Uuid = row.try_get("order_id")?;
    let amount: Decimal = row.try_get("amount")?;
    let currency: String = row.try_get("currency")?;
    let prev: String = row.try_get("prev_status")?;
    // The amount counts while the refund is pending or succeeded, not once failed.
    let delta = match (prev.as_str(), status) {
        ("failed", "succeeded") => amount,
        ("pending", "failed") => -amount,
        _ => Decimal::ZERO,
    };
    if delta != Decimal::ZERO {
        adjust_refunded(conn, order_id, delta).await?;
    }
    if status == "failed" && prev != "failed" {
        super::keys::alert(
            conn,
            "refund_failed",
            &format!(
                "the gateway refund of {amount} {} for order {order_id} failed; it is refundable again (retry its dead letter, or refund again)",
                currency.trim()
            ),
            &delivery_id.to_string(),
        )
        .await?;
    }
    events::record(
        conn,
        NewEvent {
            order_id,
            delivery_id: Some(delivery_id),
            kind: &format!("refund.{status}"),
            message: match status {
                "succeeded" => format!(
                    "the gateway refunded {amount} {} (refund {})",
                    currency.trim(),
                    external.as_deref().unwrap_or("?")
                ),
                _ => format!(
                    "the gateway refund of {amount} {} failed; the amount is refundable again and the dead letter can be retried",
                    currency.trim()
                ),
            },
            actor: "system",
            data: json!({ "external_id": external }),
        },
    )
    .await?;
    Ok(())
}

/// Adds `delta` (negative: a refund that did not happen) to the order's
/// refunded amount, kept within 0 and the total, and derives the payment
/// status from it (returned) — unless a lost or accepted dispute already made
/// the payment `refunded`. An admin alert says when the total would be exceeded (money went
/// back twice).
pub async fn adjust_refunded(
    conn: &mut PgConnection,
    order_id: Uuid,
    delta: Decimal,
) -> Result<PaymentStatus, DbError> {
    let (total, refunded): (Decimal, Decimal) =
        sqlx::query_as("SELECT total, refunded_amount FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&mut *conn)
            .await?;
    let wanted = refunded + delta;
    let amount = wanted.clamp(Decimal::ZERO, total);
    let charged_back: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM disputes WHERE order_id = $1 AND outcome IN ('lost', 'accepted'))",
    )
    .bind(order_id)
    .fetch_one(&mut *conn)
    .await?;
    let status = if charged_back || amount >= total {
        PaymentStatus::Refunded
    } else if amount > Decimal::ZERO {
        PaymentStatus::PartiallyRefunded
    } else {
        PaymentStatus::Paid
    };
    sqlx::query("UPDATE orders SET refunded_amount = $2, updated_at = now() WHERE id = $1")
        .bind(order_id)
        .bind(amount)
        .execute(&mut *conn)
        .await?;
    super::orders::set_payment_status(conn, order_id, status).await?;
    if wanted > total {
        super::keys::alert(
            conn,
            "refunded_over_total",
            &format!(
                "refunds of order {order_id} add up to {wanted}, more than its total {total}: money went back twice; check the gateway"
            ),
            &order_id.to_string(),
        )
        .await?;
    }
    Ok(status)
}

/// A dispute as the order API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DisputeView {
    pub id: Uuid,
    pub external_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub reason: String,
    pub gateway_status: String,
    pub evidence_due_by: Option<DateTime<Utc>>,
    /// `won`, `lost` or `accepted` once closed.
    pub outcome: Option<String>,
    pub created_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

pub async fn disputes_of(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<DisputeView>, DbError> {
    let rows = sqlx::query("SELECT * FROM disputes WHERE order_id = $1 ORDER BY created_at, id")
        .bind(order_id)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DisputeView {
                id: r.try_get("id")?,
                external_id: r.try_get("external_id")?,
                amount: r.try_get("amount")?,
                currency: r.try_get::<String, _>("currency")?.trim().to_owned(),
                reason: r.try_get("reason")?,
                gateway_status: r.try_get("gateway_status")?,
                evidence_due_by: r.try_get("evidence_due_by")?,
                outcome: r.try_get("outcome")?,
                created_at: r.try_get("created_at")?,
                closed_at: r.try_get("closed_at")?,
            })
        })
        .collect()
}

/// A verified webhook event, as received.
#[derive(Debug, Clone)]
pub struct InboxEvent<'a> {
    pub provider: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub order_ref: Option<&'a str>,
    pub payload: &'a Value,
    pub occurred_at: DateTime<Utc>,
}

/// Stores the event once. Returns its row id, or `None` when the same event
/// was stored before (the unique key is the dedupe; a concurrent duplicate
/// waits for the first insert's transaction and then gets `None`). An event
/// that had `failed` is taken again, so a re-send after a fix is applied.
pub async fn receive(
    conn: &mut PgConnection,
    e: &InboxEvent<'_>,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO payment_events (provider, event_id, event_type, order_ref, payload, occurred_at, status) \
         VALUES ($1, $2, $3, $4, $5, $6, 'received') \
         ON CONFLICT (provider, event_id) DO UPDATE SET status = 'received', note = NULL \
           WHERE payment_events.status = 'failed' \
         RETURNING id",
    )
    .bind(e.provider)
    .bind(e.event_id)
    .bind(e.event_type)
    .bind(e.order_ref)
    .bind(e.payload)
    .bind(e.occurred_at)
    .fetch_optional(conn)
    .await
}

/// Settles an inbox row: `applied`, `pending` (waits for its payment),
/// `ignored` or `failed`, with a note for the admin.
pub async fn settle_event(
    conn: &mut PgConnection,
    id: i64,
    status: &str,
    order_id: Option<Uuid>,
    note: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payment_events SET status = $2, order_id = coalesce($3, order_id), note = $4, \
           applied_at = CASE WHEN $2 = 'applied' THEN now() END WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(order_id)
    .bind(note)
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored event waiting for its payment.
#[derive(Debug, Clone)]
pub struct Parked {
    pub id: i64,
    pub event_type: String,
    pub payload: Value,
}

/// Events parked under any of `refs`, oldest first (as they happened at the
/// gateway). One locked elsewhere (the rescuer applying it) is skipped.
pub async fn parked(
    conn: &mut PgConnection,
    provider: &str,
    refs: &[String],
) -> Result<Vec<Parked>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, event_type, payload FROM payment_events \
         WHERE provider = $1 AND status = 'pending' AND order_ref = ANY($2) \
         ORDER BY occurred_at, id FOR UPDATE SKIP LOCKED",
    )
    .bind(provider)
    .bind(refs)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Parked {
                id: r.try_get("id")?,
                event_type: r.try_get("event_type")?,
                payload: r.try_get("payload")?,
            })
        })
        .collect()
}

/// A stored webhook event as an admin lists it (without its body).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub provider: String,
    pub event_id: String,
    pub event_type: String,
    pub order_ref: Option<String>,
    pub order_id: Option<Uuid>,
    pub status: String,
    pub note: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
}

/// Stored events, newest first: all, or those in `status`; keyset pages by id.
pub async fn list_events(
    conn: &mut PgConnection,
    status: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, provider, event_id, event_type, order_ref, order_id, status, note, occurred_at, \
           received_at, applied_at FROM payment_events \
         WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(status)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// One stored event with the body the gateway sent.
pub async fn event_payload(conn: &mut PgConnection, id: i64) -> Result<Option<Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT payload FROM payment_events WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}
