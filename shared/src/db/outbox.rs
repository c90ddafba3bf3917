//! The transactional outbox: rows written with the change that causes them,
//! published by the relay with publisher confirms.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

/// Queues a message for `queue` (logical name, without the installation prefix).
pub async fn enqueue(
    conn: &mut PgConnection,
    queue: &str,
    payload: &Value,
) -> Result<(), sqlx::Error> {
    enqueue_delayed(conn, queue, payload, None).await
}

/// Queues a message with a per-message TTL (for a delay tier).
pub async fn enqueue_delayed(
    conn: &mut PgConnection,
    queue: &str,
    payload: &Value,
    expiration_ms: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO outbox (queue, payload, expiration_ms) VALUES ($1, $2, $3)")
        .bind(queue)
        .bind(payload)
        .bind(expiration_ms)
        .execute(conn)
        .await?;
    Ok(())
}

/// The channel relays LISTEN on; processes other than the API (the worker's
/// retries, the CLI's admin retries) wake the relay through it at commit.
pub const NOTIFY_CHANNEL: &str = "courier_outbox";

/// Wakes every relay when the caller's transaction commits.
pub async fn notify_relays(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Queues the job message of a delivery for its work queue.
pub async fn enqueue_job(
    conn: &mut PgConnection,
    delivery_id: uuid::Uuid,
    kind: crate::domain::delivery::DeliveryKind,
) -> Result<(), sqlx::Error> {
    let message = crate::queue::messages::JobMessage { delivery_id, kind };
    enqueue(conn, kind.queue(), &message.to_json()).await
}

/// A row waiting to be published.
#[derive(Debug, sqlx::FromRow)]
pub struct Pending {
    pub id: i64,
    pub queue: String,
    pub payload: Value,
    pub expiration_ms: Option<i64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Locks up to `limit` unpublished rows; other relays skip them (SKIP LOCKED),
/// so several API replicas can run relays without publishing a row twice
/// (except after a crash between publish and commit: consumers are idempotent).
/// Rows the process that wrote them is still publishing directly (their
/// `publishing_until` is ahead) are left to it.
pub async fn lock_batch(conn: &mut PgConnection, limit: i64) -> Result<Vec<Pending>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, queue, payload, expiration_ms, created_at FROM outbox WHERE published_at IS NULL \
         AND (publishing_until IS NULL OR publishing_until < now()) \
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Marks rows sent, inside the sweep's transaction.
pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks rows a direct lane published sent, each as of its broker's
/// confirm, `ages_us` microseconds before this statement (a duration on the
/// caller's clock, so no clock but the database's is written). A row already
/// marked (a sweep sent it again after its lease ended) keeps its mark.
pub async fn mark_confirmed(
    pool: &PgPool,
    ids: &[i64],
    ages_us: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox o SET published_at = now() - u.age * interval '1 microsecond', \
           attempts = o.attempts + 1 \
         FROM UNNEST($1::int8[], $2::int8[]) AS u(id, age) \
         WHERE o.id = u.id AND o.id = ANY($1) AND o.published_at IS NULL",
    )
    .bind(ids)
    .bind(ages_us)
    .execute(pool)
    .await?;
    Ok(())
}

/// How long the process that accepted an order has to publish its outbox
/// rows itself before relays take them (`publishing_until`).
pub const DIRECT_LEASE: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest `relay.mark_linger_ms` may be: a second inside the lease, the
/// margin the direct lanes keep too. A row the broker confirmed close to its
/// lease's end (it waited out an outage) and marked after it may be sent
/// once more by a sweep, which consumers tolerate.
pub const MARK_LINGER_MOST: std::time::Duration =
    DIRECT_LEASE.saturating_sub(std::time::Duration::from_secs(1));

/// Where an accept hands what it wrote to its process's relay: its own
/// outbox rows to the direct lanes (`rows`; `None` when direct publishing is
/// off), and a wake-up for the sweep (`sweep`) whenever the sweep has rows to
/// take — the accept's own without direct lanes, and those its statement's
/// triggers may have written (outbound webhooks, confirmation e-mails).
#[derive(Clone)]
pub struct Handoff {
    pub rows: Option<tokio::sync::mpsc::Sender<Vec<Pending>>>,
    pub sweep: std::sync::Arc<tokio::sync::Notify>,
}

/// Gives rows back to the relays at once, and wakes them: the process that
/// wrote them could not publish them (its relay is away or behind). One
/// statement: the `count(*)` makes the update run before the notification.
pub async fn release(pool: &PgPool, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH r AS (UPDATE outbox SET publishing_until = NULL \
           WHERE id = ANY($1) AND published_at IS NULL RETURNING 1) \
         SELECT pg_notify($2, '') FROM (SELECT count(*) FROM r) AS n",
    )
    .bind(ids)
    .bind(NOTIFY_CHANNEL)
    .execute(pool)
    .await?;
    Ok(())
}

/// Notes a failed publish on rows that stay pending (outside the batch's transaction).
pub async fn mark_failed(pool: &PgPool, ids: &[i64], error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)")
        .bind(ids)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes published rows older than `hours`.
pub async fn prune(pool: &PgPool, hours: u32) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM outbox WHERE published_at < now() - make_interval(hours => $1)")
            .bind(i32::try_from(hours).unwrap_or(i32::MAX))
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

/// Rows not yet published (for readiness and tests).
pub async fn pending_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
}
