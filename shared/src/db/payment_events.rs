//! The payment-event inbox: verified gateway events stored once, settled,
//! parked until their payment arrives, listed for admins.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::payment::EventStatus;

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
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
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

/// Serialises events about one payment (the payment and its early refund)
/// until the transaction ends.
pub async fn lock_payment_ref(conn: &mut PgConnection, reference: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('courier.payment:' || $1, 0))")
        .bind(reference)
        .execute(conn)
        .await?;
    Ok(())
}
