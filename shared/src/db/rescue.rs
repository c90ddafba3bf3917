//! The rescuer's queries: deliveries whose worker died mid-job (expired lease)
//! and deliveries whose message was lost (long overdue). Safe to run from every
//! worker replica at once: each change is a guarded UPDATE, taken under the
//! order's row lock in the same order as `deliveries::record`.

use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::events::{self, NewEvent};
use super::{deliveries, outbox};
use crate::domain::action::{OnAmbiguous, RconPayload};
use crate::domain::delivery::{DeliveryKind, DeliveryStatus, Purpose};
use crate::error::DbError;

/// What the rescuer did with one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rescued {
    Requeued(Uuid),
    Held(Uuid),
    /// The order was withdrawn meanwhile: cancelled, and the caller revokes
    /// it (it may have run before the worker died).
    Cancelled(Uuid),
    /// Staff marked its item delivered meanwhile: cancelled, not run again
    /// and not revoked (the customer has the item).
    Superseded(Uuid),
}

impl Rescued {
    /// What became of the delivery, as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Rescued::Requeued(_) => "requeued",
            Rescued::Held(_) => "held",
            Rescued::Cancelled(_) => "cancelled",
            Rescued::Superseded(_) => "superseded",
        }
    }
}

pub async fn expired_leases(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM deliveries WHERE status = 'running' AND lease_until < now() ORDER BY lease_until LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Takes one expired lease back. RCON commands are not idempotent and the
/// worker may have sent the command before it died, so an RCON delivery
/// follows its action's `on_ambiguous` (`hold` by default); other kinds are
/// idempotent at the target and are simply re-queued.
pub async fn rescue_one(
    conn: &mut PgConnection,
    id: Uuid,
    actor: &str,
) -> Result<Option<Rescued>, DbError> {
    let Some(order_id) =
        sqlx::query_scalar::<_, Option<Uuid>>("SELECT order_id FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
    else {
        return Ok(None);
    };
    if let Some(order_id) = order_id {
        sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
            .bind(order_id)
            .execute(&mut *conn)
            .await?;
    }
    let Some(row) = sqlx::query(
        "SELECT d.item_id, d.kind, d.purpose, d.payload, d.attempts, d.leased_by, \
           coalesce(o.revoked_at IS NOT NULL, false) AS revoked, \
           (SELECT i.delivered_by_hand_at IS NOT NULL FROM order_items i WHERE i.id = d.item_id) AS by_hand \
         FROM deliveries d LEFT JOIN orders o ON o.id = d.order_id \
         WHERE d.id = $1 AND d.status = 'running' AND d.lease_until < now() FOR UPDATE OF d",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let item_id: Option<Uuid> = row.try_get("item_id")?;
    let purpose: Purpose = row.try_get::<String, _>("purpose")?.parse()?;
    // The order was withdrawn while the worker held it: nothing runs again.
    let withdrawn = purpose == Purpose::Deliver && row.try_get::<bool, _>("revoked")?;
    // Its item was marked delivered by hand: it does not run again either.
    let by_hand =
        purpose == Purpose::Deliver && row.try_get::<Option<bool>, _>("by_hand")?.unwrap_or(false);
    let kind: DeliveryKind = row.try_get::<String, _>("kind")?.parse()?;
    let attempt: i32 = row.try_get("attempts")?;
    let leased_by: Option<String> = row.try_get("leased_by")?;
    let worker = leased_by.unwrap_or_else(|| "unknown".into());
    sqlx::query(
        "UPDATE delivery_attempts SET finished_at = now(), outcome = 'abandoned', \
           error = $3 WHERE delivery_id = $1 AND attempt = $2 AND outcome IS NULL",
    )
    .bind(id)
    .bind(attempt)
    .bind(format!(
        "worker {worker} stopped before recording the attempt (lease expired)"
    ))
    .execute(&mut *conn)
    .await?;

    let ambiguous = kind == DeliveryKind::Rcon;
    let policy = if ambiguous {
        let payload: RconPayload = serde_json::from_value(row.try_get("payload")?)?;
        payload.on_ambiguous
    } else {
        OnAmbiguous::Retry
    };
    if ambiguous {
        events::record_if_order(
            conn,
            order_id,
            NewEvent {
                order_id: Uuid::nil(),
                delivery_id: Some(id),
                kind: "delivery.ambiguous",
                message: format!(
                    "worker {worker} died during attempt {attempt}; the command may already have run (on_ambiguous = {policy})"
                ),
                actor,
                data: json!({ "attempt": attempt, "worker": worker, "on_ambiguous": policy }),
            },
        )
        .await?;
    }
    let runs_again = crate::domain::fulfilment::runs_again(policy, true);
    let to = if withdrawn || (by_hand && runs_again) {
        DeliveryStatus::Cancelled
    } else if runs_again {
        DeliveryStatus::Queued
    } else {
        DeliveryStatus::Held
    };
    DeliveryStatus::Running.transition(to)?;
    let reason =
        format!("worker {worker} died during attempt {attempt}; the command may already have run");
    sqlx::query(
        "UPDATE deliveries SET status = $2, lease_until = NULL, leased_by = NULL, updated_at = now(), \
           last_error = $3, next_attempt_at = CASE WHEN $2 = 'queued' THEN now() END \
         WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .bind(to.as_str())
    .bind(&reason)
    .execute(&mut *conn)
    .await?;
    let rescued = if to == DeliveryStatus::Cancelled && !withdrawn {
        Rescued::Superseded(id)
    } else if to == DeliveryStatus::Cancelled {
        Rescued::Cancelled(id)
    } else if to == DeliveryStatus::Queued {
        outbox::enqueue_job(conn, id, kind).await?;
        outbox::notify_relays(conn).await?;
        Rescued::Requeued(id)
    } else {
        Rescued::Held(id)
    };
    events::record_if_order(
        conn,
        order_id,
        NewEvent {
            order_id: Uuid::nil(),
            delivery_id: Some(id),
            kind: &format!("delivery.{to}"),
            message: match to {
                DeliveryStatus::Held => format!("{reason}: held for an admin to retry or discard"),
                DeliveryStatus::Cancelled => {
                    format!("{reason}: cancelled, the order was withdrawn meanwhile")
                }
                _ => format!("{reason}: re-queued"),
            },
            actor,
            data: json!({ "attempt": attempt }),
        },
    )
    .await?;
    if let (Purpose::Deliver, Some(order_id), Some(item_id), false) =
        (purpose, order_id, item_id, withdrawn)
    {
        deliveries::roll_up(conn, order_id, item_id, actor).await?;
    }
    Ok(Some(rescued))
}

/// Re-publishes deliveries waiting for a message that is long overdue (lost in
/// a delay tier or a broker crash). Returns how many.
pub async fn republish_overdue(
    pool: &PgPool,
    overdue_secs: u32,
    actor: &str,
) -> Result<u64, DbError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "UPDATE deliveries SET next_attempt_at = now() \
         WHERE id IN (SELECT id FROM deliveries WHERE status IN ('queued', 'retrying', 'waiting') \
                      AND next_attempt_at < now() - make_interval(secs => $1) \
                      ORDER BY next_attempt_at LIMIT 100 FOR UPDATE SKIP LOCKED) \
         RETURNING id, order_id, kind",
    )
    .bind(f64::from(overdue_secs))
    .fetch_all(&mut *tx)
    .await?;
    for row in &rows {
        let id: Uuid = row.try_get("id")?;
        let kind: DeliveryKind = row.try_get::<String, _>("kind")?.parse()?;
        outbox::enqueue_job(&mut tx, id, kind).await?;
        events::record_if_order(
            &mut tx,
            row.try_get("order_id")?,
            NewEvent {
                order_id: Uuid::nil(),
                delivery_id: Some(id),
                kind: "delivery.republished",
                message: format!("no message arrived {overdue_secs} s after the delivery was due; published again"),
                actor,
                data: json!({}),
            },
        )
        .await?;
    }
    if !rows.is_empty() {
        outbox::notify_relays(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// Where a page of held deliveries ended: `updated_at` and id of its last row.
#[derive(Debug, Clone, Copy)]
pub struct HeldCursor {
    pub at: chrono::DateTime<chrono::Utc>,
    pub id: Uuid,
}

impl HeldCursor {
    /// Where a page ends: its last row's `updated_at` and `id`.
    fn of(row: &sqlx::postgres::PgRow) -> Result<Self, DbError> {
        Ok(HeldCursor {
            at: row.try_get("updated_at")?,
            id: row.try_get("id")?,
        })
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (at, id) = s.split_once('|')?;
        Some(HeldCursor {
            at: chrono::DateTime::parse_from_rfc3339(at).ok()?.to_utc(),
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

impl std::fmt::Display for HeldCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}|{}", self.at.to_rfc3339(), self.id)
    }
}

/// A delivery parked for a person: it may have run, so nothing retries it
/// until an admin decides.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HeldDelivery {
    pub delivery_id: Uuid,
    pub order_id: Uuid,
    pub order_number: String,
    pub kind: String,
    pub target: String,
    pub payload: serde_json::Value,
    pub attempts: i32,
    /// Why it was held (the last attempt's error).
    pub reason: Option<String>,
    pub held_since: chrono::DateTime<chrono::Utc>,
}

/// Held deliveries (ambiguous after a worker died), newest first, after
/// `after`; with where the page ended.
pub async fn held(
    pool: &PgPool,
    limit: i64,
    after: Option<HeldCursor>,
) -> Result<(Vec<HeldDelivery>, Option<HeldCursor>), DbError> {
    let rows = sqlx::query(
        "SELECT d.id, d.order_id, o.order_number, d.kind, d.target, d.payload, d.attempts, d.last_error, d.updated_at \
         FROM deliveries d JOIN orders o ON o.id = d.order_id WHERE d.status = 'held' \
           AND ($2::timestamptz IS NULL OR (d.updated_at, d.id) < ($2, $3)) \
         ORDER BY d.updated_at DESC, d.id DESC LIMIT $1",
    )
    .bind(limit)
    .bind(after.map(|c| c.at))
    .bind(after.map(|c| c.id))
    .fetch_all(pool)
    .await?;
    let last = rows.last().map(HeldCursor::of).transpose()?;
    let list = rows
        .iter()
        .map(|r| {
            Ok(HeldDelivery {
                delivery_id: r.try_get("id")?,
                order_id: r.try_get("order_id")?,
                order_number: r.try_get("order_number")?,
                kind: r.try_get("kind")?,
                target: r.try_get("target")?,
                payload: r.try_get("payload")?,
                attempts: r.try_get("attempts")?,
                reason: r.try_get("last_error")?,
                held_since: r.try_get("updated_at")?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    Ok((list, last))
}

/// A delivery that waits for something outside Courier (a player to come
/// online, a supplier's stock): re-checked on the waiting schedule, without
/// using up its attempts.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct WaitingDelivery {
    pub delivery_id: Uuid,
    pub order_id: Uuid,
    pub order_number: String,
    pub kind: String,
    pub target: String,
    /// What the last check found (why it waits).
    pub reason: Option<String>,
    pub waiting_since: Option<chrono::DateTime<chrono::Utc>>,
    /// When it is checked again.
    pub next_check_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Attempts so far, checks included.
    pub attempts: i32,
}

/// Waiting deliveries, least recently checked first, after `after` (a
/// cursor on the last row's `updated_at` and id, as `held`'s).
pub async fn waiting(
    pool: &PgPool,
    limit: i64,
    after: Option<HeldCursor>,
) -> Result<(Vec<WaitingDelivery>, Option<HeldCursor>), DbError> {
    let rows = sqlx::query(
        "SELECT d.id, d.order_id, o.order_number, d.kind, d.target, d.attempts, d.last_error, \
                d.waiting_since, d.next_attempt_at, d.updated_at \
         FROM deliveries d JOIN orders o ON o.id = d.order_id WHERE d.status = 'waiting' \
           AND ($2::timestamptz IS NULL OR (d.updated_at, d.id) > ($2, $3)) \
         ORDER BY d.updated_at, d.id LIMIT $1",
    )
    .bind(limit)
    .bind(after.map(|c| c.at))
    .bind(after.map(|c| c.id))
    .fetch_all(pool)
    .await?;
    let last = rows.last().map(HeldCursor::of).transpose()?;
    let list = rows
        .iter()
        .map(|r| {
            Ok(WaitingDelivery {
                delivery_id: r.try_get("id")?,
                order_id: r.try_get("order_id")?,
                order_number: r.try_get("order_number")?,
                kind: r.try_get("kind")?,
                target: r.try_get("target")?,
                reason: r.try_get("last_error")?,
                waiting_since: r.try_get("waiting_since")?,
                next_check_at: r.try_get("next_attempt_at")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    Ok((list, last))
}
