//! Refunds: rows, the refunded amount of an order and the payment status it
//! implies, and the gateway job's outcome.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::events::{self, NewEvent};
use crate::domain::delivery::DeliveryStatus;
use crate::domain::order::PaymentStatus;
use crate::domain::payment::{RefundReason, RefundSource, RefundStatus};
use crate::error::DbError;

/// A refund as the order API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RefundView {
    pub id: Uuid,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub reason: RefundReason,
    pub reason_text: Option<String>,
    pub source: RefundSource,
    pub status: RefundStatus,
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
    pub reason: RefundReason,
    pub reason_text: Option<&'a str>,
    pub source: RefundSource,
    pub status: RefundStatus,
    pub external_id: Option<&'a str>,
    pub delivery_id: Option<Uuid>,
    pub revoke: bool,
    pub requested_by: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: Option<&'a [u8]>,
    /// Gives back a payment that was never applied (`mismatched`).
    pub of_unapplied: bool,
}

pub async fn insert_refund(conn: &mut PgConnection, r: &NewRefund<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refunds (id, order_id, amount, currency, reason, reason_text, source, status, \
           external_id, delivery_id, revoke, requested_by, completed_at, idempotency_key, request_hash, \
           of_unapplied) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
           CASE WHEN $8 IN ('succeeded', 'recorded') THEN now() END, $13, $14, $15)",
    )
    .bind(r.id)
    .bind(r.order_id)
    .bind(r.amount)
    .bind(r.currency)
    .bind(r.reason.as_str())
    .bind(r.reason_text)
    .bind(r.source.as_str())
    .bind(r.status.as_str())
    .bind(r.external_id)
    .bind(r.delivery_id)
    .bind(r.revoke)
    .bind(r.requested_by)
    .bind(r.idempotency_key)
    .bind(r.request_hash)
    .bind(r.of_unapplied)
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
                reason: r.try_get::<String, _>("reason")?.parse()?,
                reason_text: r.try_get("reason_text")?,
                source: r.try_get::<String, _>("source")?.parse()?,
                status: r.try_get::<String, _>("status")?.parse()?,
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
        DeliveryStatus::Succeeded => RefundStatus::Succeeded,
        DeliveryStatus::Dead | DeliveryStatus::Cancelled => RefundStatus::Failed,
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
         RETURNING r.order_id, r.amount, r.currency, r.of_unapplied, prev.status AS prev_status",
    )
    .bind(delivery_id)
    .bind(status.as_str())
    .bind(&external)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let order_id: Uuid = row.try_get("order_id")?;
    let amount: Decimal = row.try_get("amount")?;
    let currency: String = row.try_get("currency")?;
    let prev: RefundStatus = row.try_get::<String, _>("prev_status")?.parse()?;
    // The amount counts while the refund is pending or succeeded, not once failed.
    let delta = match (prev, status) {
        (RefundStatus::Failed, RefundStatus::Succeeded) => amount,
        (RefundStatus::Pending, RefundStatus::Failed) => -amount,
        _ => Decimal::ZERO,
    };
    if row.try_get::<bool, _>("of_unapplied")? {
        // A payment that was never applied: it is back with the admin, or
        // given back after all.
        match (prev, status) {
            (RefundStatus::Pending, RefundStatus::Failed) => {
                super::orders::set_payment_status(conn, order_id, PaymentStatus::Mismatched)
                    .await?;
            }
            (RefundStatus::Failed, RefundStatus::Succeeded) => {
                super::orders::set_payment_status(conn, order_id, PaymentStatus::Refunded).await?;
            }
            _ => {}
        }
    } else if delta != Decimal::ZERO {
        adjust_refunded(conn, order_id, delta).await?;
    }
    if status == RefundStatus::Failed && prev != RefundStatus::Failed {
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
                RefundStatus::Succeeded => format!(
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

/// The refund made under `key` for the order, with the hash of its request.
pub async fn refund_by_key(
    conn: &mut PgConnection,
    order_id: Uuid,
    key: &str,
) -> Result<Option<(Uuid, Option<Vec<u8>>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, request_hash FROM refunds WHERE order_id = $1 AND idempotency_key = $2",
    )
    .bind(order_id)
    .bind(key)
    .fetch_optional(conn)
    .await
}

/// A refund Courier asked for whose job gave up but which the gateway made
/// after all: `succeeded` again; returns its amount (and whether it gave back
/// a payment never applied) if it was `failed`.
pub async fn revive_refund(
    conn: &mut PgConnection,
    refund_id: Uuid,
    order_id: Uuid,
    external_id: &str,
) -> Result<Option<(Decimal, bool)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE refunds SET status = 'succeeded', external_id = coalesce(external_id, $3), \
           completed_at = now() \
         WHERE id = $1 AND order_id = $2 AND status = 'failed' RETURNING amount, of_unapplied",
    )
    .bind(refund_id)
    .bind(order_id)
    .bind(external_id)
    .fetch_optional(conn)
    .await
}

/// Whether a gateway refund id is recorded already.
pub async fn refund_known(conn: &mut PgConnection, external_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM refunds WHERE external_id = $1)")
        .bind(external_id)
        .fetch_one(conn)
        .await
}
