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
use crate::domain::payment::{
    DisputeOutcome, EventStatus, RefundReason, RefundSource, RefundStatus,
};
use crate::error::DbError;

/// A refund as the order API shows it.
#[derive(Debug, Clone, Serialize)]
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
    /// Set once closed.
    pub outcome: Option<DisputeOutcome>,
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
                outcome: r
                    .try_get::<Option<String>, _>("outcome")?
                    .map(|o| o.parse())
                    .transpose()?,
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
    status: EventStatus,
    order_id: Option<Uuid>,
    note: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payment_events SET status = $2, order_id = coalesce($3, order_id), note = $4, \
           applied_at = CASE WHEN $2 = 'applied' THEN now() END WHERE id = $1",
    )
    .bind(id)
    .bind(status.as_str())
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
    #[sqlx(try_from = "String")]
    pub status: EventStatus,
    pub note: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
}

/// Stored events, newest first: all, or those in `status`; keyset pages by id.
pub async fn list_events(
    conn: &mut PgConnection,
    status: Option<EventStatus>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, provider, event_id, event_type, order_ref, order_id, status, note, occurred_at, \
           received_at, applied_at FROM payment_events \
         WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(status.map(EventStatus::as_str))
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

/// The order's id from its id or order number (anything else: `None`).
pub async fn resolve_order(
    conn: &mut PgConnection,
    reference: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    if let Ok(id) = Uuid::parse_str(reference) {
        return sqlx::query_scalar("SELECT id FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await;
    }
    if crate::domain::ids::looks_like_order_number(reference) {
        return sqlx::query_scalar("SELECT id FROM orders WHERE order_number = $1")
            .bind(reference)
            .fetch_optional(conn)
            .await;
    }
    Ok(None)
}

/// An order under its row lock, as the money rules read it.
#[derive(Debug, Clone)]
pub struct LockedOrder {
    pub id: Uuid,
    pub order_number: String,
    pub status: crate::domain::order::OrderStatus,
    pub payment: PaymentStatus,
    pub total: Decimal,
    pub refunded: Decimal,
    pub currency: String,
    pub gateway: Option<String>,
    pub transaction_id: Option<String>,
    /// What the last payment took, as the gateway said.
    pub paid_amount: Option<Decimal>,
    pub paid_currency: Option<String>,
    /// Why the payment was not applied (set while `mismatched`, and after a
    /// mismatched payment was given back).
    pub payment_issue: Option<String>,
}

pub async fn lock_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<LockedOrder>, DbError> {
    let Some(row) = sqlx::query(
        "SELECT order_number, status, payment_status, total, refunded_amount, currency, gateway, \
           transaction_id, paid_amount, paid_currency, payment_issue FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(LockedOrder {
        id: order_id,
        order_number: row.try_get("order_number")?,
        status: row.try_get::<String, _>("status")?.parse()?,
        payment: row.try_get::<String, _>("payment_status")?.parse()?,
        total: row.try_get("total")?,
        refunded: row.try_get("refunded_amount")?,
        currency: row.try_get::<String, _>("currency")?.trim().to_owned(),
        gateway: row.try_get("gateway")?,
        transaction_id: row.try_get("transaction_id")?,
        paid_amount: row.try_get("paid_amount")?,
        paid_currency: row.try_get("paid_currency")?,
        payment_issue: row.try_get("payment_issue")?,
    }))
}

/// Keeps what a payment took (`None`: the gateway said nothing) and, when it
/// does not pay the order, why.
pub async fn record_received(
    conn: &mut PgConnection,
    order_id: Uuid,
    paid: Option<(Decimal, &str)>,
    issue: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET paid_amount = coalesce($2, paid_amount), \
           paid_currency = coalesce($3, paid_currency), payment_issue = $4, updated_at = now() \
         WHERE id = $1",
    )
    .bind(order_id)
    .bind(paid.map(|p| p.0))
    .bind(paid.map(|p| p.1))
    .bind(issue)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the Stripe payment paying an order now: while it is unpaid the
/// new payment becomes the one refunds go against; once paid, the first one
/// stays.
pub async fn set_stripe_payment(
    conn: &mut PgConnection,
    order_id: Uuid,
    payment_intent: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET \
           gateway = CASE WHEN payment_status IN ('pending', 'failed') THEN 'stripe' ELSE coalesce(gateway, 'stripe') END, \
           transaction_id = CASE WHEN payment_status IN ('pending', 'failed') THEN coalesce($2, transaction_id) \
             ELSE coalesce(transaction_id, $2) END, \
           updated_at = now() WHERE id = $1",
    )
    .bind(order_id)
    .bind(payment_intent)
    .execute(conn)
    .await?;
    Ok(())
}

/// Serialises events about one payment (the payment and its early refund)
/// until the transaction ends.
pub async fn lock_payment_ref(conn: &mut PgConnection, reference: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('courier.payment:' || $1, 0))")
        .bind(reference)
        .execute(conn)
        .await?;
    Ok(())
}

/// The Stripe order paid by PaymentIntent `pi`.
pub async fn order_by_payment_intent(
    conn: &mut PgConnection,
    pi: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orders WHERE gateway = 'stripe' AND transaction_id = $1")
        .bind(pi)
        .fetch_optional(conn)
        .await
}

/// The order created under an idempotency key (a Checkout Session's or a
/// generic webhook's).
pub async fn order_by_key(conn: &mut PgConnection, key: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orders WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
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

/// A dispute as a gateway event describes it.
#[derive(Debug, Clone)]
pub struct DisputeFacts<'a> {
    pub order_id: Uuid,
    pub external_id: &'a str,
    pub amount: Decimal,
    pub currency: &'a str,
    pub reason: &'a str,
    pub gateway_status: &'a str,
    pub evidence_due_by: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
}

/// Stores the dispute the first time it is seen; true if it is new.
pub async fn open_dispute(
    conn: &mut PgConnection,
    d: &DisputeFacts<'_>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO disputes (id, order_id, external_id, amount, currency, reason, gateway_status, evidence_due_by, last_event_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (external_id) DO NOTHING",
    )
    .bind(Uuid::new_v4())
    .bind(d.order_id)
    .bind(d.external_id)
    .bind(d.amount)
    .bind(d.currency)
    .bind(d.reason)
    .bind(d.gateway_status)
    .bind(d.evidence_due_by)
    .bind(d.occurred_at)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Closes an open dispute (once, whenever the closing event arrives); true if
/// this call closed it.
pub async fn close_dispute(
    conn: &mut PgConnection,
    d: &DisputeFacts<'_>,
    outcome: DisputeOutcome,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE disputes SET outcome = $2, closed_at = now(), gateway_status = $3, amount = $4, \
           evidence_due_by = coalesce($5, evidence_due_by), \
           last_event_at = greatest(last_event_at, $6) \
         WHERE external_id = $1 AND outcome IS NULL",
    )
    .bind(d.external_id)
    .bind(outcome.as_str())
    .bind(d.gateway_status)
    .bind(d.amount)
    .bind(d.evidence_due_by)
    .bind(d.occurred_at)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Updates an open dispute, only from an event newer than the last applied.
pub async fn update_dispute(
    conn: &mut PgConnection,
    d: &DisputeFacts<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE disputes SET gateway_status = $2, amount = $3, \
           evidence_due_by = coalesce($4, evidence_due_by), last_event_at = $5 \
         WHERE external_id = $1 AND outcome IS NULL \
           AND (last_event_at IS NULL OR last_event_at <= $5)",
    )
    .bind(d.external_id)
    .bind(d.gateway_status)
    .bind(d.amount)
    .bind(d.evidence_due_by)
    .bind(d.occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks events waiting over an hour as alerted (once each); returns them
/// as (row id, event id, order ref).
pub async fn mark_stale_waiting(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<(i64, String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE payment_events SET alerted_at = now() WHERE id IN ( \
           SELECT id FROM payment_events WHERE status = 'pending' AND alerted_at IS NULL \
             AND received_at < now() - interval '1 hour' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING id, event_id, order_ref",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The newest waiting Stripe events of the last day (those whose payment is
/// most likely to have just arrived), in the order they happened.
pub async fn recent_waiting(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<(i64, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, order_ref FROM (SELECT id, order_ref, occurred_at FROM payment_events \
           WHERE provider = 'stripe' AND status = 'pending' AND received_at > now() - interval '1 day' \
           ORDER BY received_at DESC LIMIT $1) recent ORDER BY occurred_at, id",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A waiting event, locked (skipped if another transaction holds it).
pub async fn lock_waiting(
    conn: &mut PgConnection,
    id: i64,
) -> Result<Option<(String, Value, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_type, payload, occurred_at \
         FROM payment_events WHERE id = $1 AND status = 'pending' FOR UPDATE SKIP LOCKED",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}
