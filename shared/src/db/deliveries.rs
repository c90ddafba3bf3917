//! Delivery rows: insert at accept time, claim by a worker, record an attempt.
//! Item and order statuses are rolled up here, under the order's row lock, so
//! two workers finishing the last two deliveries of an order cannot both miss
//! the completion.

use serde_json::{Value, json};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::events::{self, NewEvent};
use crate::domain::delivery::{AttemptOutcome, DeliveryKind, DeliveryStatus, Purpose};
use crate::domain::order::{ItemStatus, OrderStatus};
use crate::domain::rollup;
use crate::error::DbError;

#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub order_id: Uuid,
    /// `None` only for a gateway refund, which belongs to the order.
    pub item_id: Option<Uuid>,
    pub action_id: Option<Uuid>,
    pub kind: DeliveryKind,
    pub purpose: Purpose,
    /// For a revoke job: the delivery it undoes.
    pub revokes: Option<Uuid>,
    pub target: String,
    pub payload: Value,
}

pub async fn insert(conn: &mut PgConnection, d: &DeliveryRow) -> Result<(), sqlx::Error> {
    insert_as(conn, d, DeliveryStatus::Queued, None).await
}

/// Inserts a delivery parked for an admin (`held`, with the reason) instead
/// of queued: this installation cannot run it now (a secret or supplier
/// configuration went away since the product was saved). No job is
/// published; an admin retries it once the configuration is back.
pub async fn insert_held(
    conn: &mut PgConnection,
    d: &DeliveryRow,
    reason: &str,
) -> Result<(), sqlx::Error> {
    insert_as(conn, d, DeliveryStatus::Held, Some(reason)).await
}

async fn insert_as(
    conn: &mut PgConnection,
    d: &DeliveryRow,
    status: DeliveryStatus,
    last_error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO deliveries (id, order_id, item_id, action_id, kind, target, payload, status, next_attempt_at, purpose, revokes, last_error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), $9, $10, $11)",
    )
    .bind(d.id)
    .bind(d.order_id)
    .bind(d.item_id)
    .bind(d.action_id)
    .bind(d.kind.as_str())
    .bind(&d.target)
    .bind(&d.payload)
    .bind(status.as_str())
    .bind(d.purpose.as_str())
    .bind(d.revokes)
    .bind(last_error)
    .execute(conn)
    .await?;
    Ok(())
}

/// A delivery a worker now holds the lease on.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub order_id: Uuid,
    pub item_id: Option<Uuid>,
    pub kind: DeliveryKind,
    pub purpose: Purpose,
    pub payload: Value,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
    /// Transient failures before this attempt.
    pub failures: i32,
    pub waiting_since: Option<chrono::DateTime<chrono::Utc>>,
    pub target: String,
}

/// Why a claim did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotClaimed {
    /// No such delivery (e.g. its order was deleted).
    Missing,
    /// Done, dead, held, cancelled, or leased by a worker right now.
    NotClaimable(DeliveryStatus),
}

/// Claims `id` for `worker`: queued/retrying/waiting → running, attempt + 1,
/// lease set, in one conditional UPDATE; then opens the attempt row and moves
/// the item and order to processing. Anything else is `NotClaimed`, and the
/// caller acks the message: a redelivered message can never run a job twice.
pub async fn claim(
    conn: &mut PgConnection,
    id: Uuid,
    worker: &str,
    lease_seconds: u32,
) -> Result<Result<Claimed, NotClaimed>, DbError> {
    for from in DeliveryStatus::CLAIMABLE {
        from.transition(DeliveryStatus::Running)?;
    }
    // Lock order: the order row first, as `record`, the rescuer and the admin
    // actions do, so a claim never deadlocks with them.
    let order_id: Option<Uuid> =
        sqlx::query_scalar("SELECT order_id FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(order_id) = order_id else {
        return Ok(Err(NotClaimed::Missing));
    };
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order_id)
        .execute(&mut *conn)
        .await?;
    let claimable: Vec<&str> = DeliveryStatus::CLAIMABLE
        .iter()
        .map(|s| s.as_str())
        .collect();
    let row = sqlx::query(
        "WITH prev AS (SELECT id, status FROM deliveries WHERE id = $1 FOR UPDATE) \
         UPDATE deliveries d SET status = 'running', attempts = d.attempts + 1, \
           lease_until = now() + make_interval(secs => $3), leased_by = $2, updated_at = now() \
         FROM prev WHERE d.id = prev.id AND prev.status = ANY($4) \
         RETURNING d.order_id, d.item_id, d.kind, d.purpose, d.payload, d.attempts, d.failures, d.waiting_since, d.target, prev.status AS prev_status",
    )
    .bind(id)
    .bind(worker)
    .bind(f64::from(lease_seconds))
    .bind(&claimable)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM deliveries WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
        return Ok(Err(match status {
            None => NotClaimed::Missing,
            Some(s) => NotClaimed::NotClaimable(s.parse()?),
        }));
    };
    let kind: String = row.try_get("kind")?;
    let claimed = Claimed {
        id,
        order_id: row.try_get("order_id")?,
        item_id: row.try_get("item_id")?,
        kind: kind.parse()?,
        purpose: row.try_get::<String, _>("purpose")?.parse()?,
        payload: row.try_get("payload")?,
        attempt: row.try_get("attempts")?,
        failures: row.try_get("failures")?,
        waiting_since: row.try_get("waiting_since")?,
        target: row.try_get("target")?,
    };
    sqlx::query("INSERT INTO delivery_attempts (delivery_id, attempt, worker) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(claimed.attempt)
        .bind(worker)
        .execute(&mut *conn)
        .await?;
    let actor = format!("worker:{worker}");
    if let (Purpose::Deliver, Some(item_id)) = (claimed.purpose, claimed.item_id) {
        set_item_status(
            conn,
            claimed.order_id,
            item_id,
            ItemStatus::Processing,
            &actor,
        )
        .await?;
        set_order_status(conn, claimed.order_id, OrderStatus::Processing, &actor).await?;
    }
    events::record(
        conn,
        NewEvent {
            order_id: claimed.order_id,
            delivery_id: Some(id),
            kind: "delivery.started",
            message: format!("attempt {} started", claimed.attempt),
            actor: &actor,
            data: json!({ "attempt": claimed.attempt }),
        },
    )
    .await?;
    Ok(Ok(claimed))
}

/// The end of one attempt, as the worker reports it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub outcome: AttemptOutcome,
    /// The delivery's next status: succeeded, retrying, waiting or dead.
    pub next: DeliveryStatus,
    pub error: Option<String>,
    pub response: Option<String>,
    /// A transient failure, counted against the attempt limit.
    pub failed: bool,
    /// For `retrying` and `waiting`: the delay-tier queue (logical name) and this message's delay.
    pub requeue: Option<(String, u64)>,
    /// For `dead` and `held`: what the admin reads.
    pub dead_reason: Option<String>,
    /// The action may have happened although the attempt failed (an RCON
    /// command written before the error): recorded as a `delivery.ambiguous` event.
    pub ambiguous: bool,
}

/// Whether the worker still held the lease when it recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Applied,
    /// The lease had been taken away (the rescuer re-queued or held it): the
    /// attempt is written, the statuses are left to whoever holds it now.
    LeaseLost,
    /// The order was withdrawn (refund, cancel, chargeback) while the attempt
    /// ran: a success is revoked at once, anything else ends as cancelled.
    Withdrawn,
}

/// Writes the attempt and the statuses it implies, in the caller's transaction.
pub async fn record(
    conn: &mut PgConnection,
    claimed: &Claimed,
    worker: &str,
    rec: &AttemptRecord,
) -> Result<Recorded, DbError> {
    DeliveryStatus::Running.transition(rec.next)?;
    // Serialise roll-ups per order (see the module comment).
    let revoked: bool =
        sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM orders WHERE id = $1 FOR UPDATE")
            .bind(claimed.order_id)
            .fetch_one(&mut *conn)
            .await?;
    let withdrawn = revoked && claimed.purpose == Purpose::Deliver;
    let adjusted;
    let rec = if withdrawn && rec.next != DeliveryStatus::Succeeded {
        adjusted = AttemptRecord {
            next: DeliveryStatus::Cancelled,
            requeue: None,
            dead_reason: None,
            ..rec.clone()
        };
        &adjusted
    } else {
        rec
    };
    sqlx::query(
        "UPDATE delivery_attempts SET finished_at = now(), outcome = $3, error = $4, response = $5 \
         WHERE delivery_id = $1 AND attempt = $2",
    )
    .bind(claimed.id)
    .bind(claimed.attempt)
    .bind(rec.outcome.as_str())
    .bind(&rec.error)
    .bind(&rec.response)
    .execute(&mut *conn)
    .await?;
    let delay_ms = rec
        .requeue
        .as_ref()
        .map(|(_, ms)| i64::try_from(*ms).unwrap_or(i64::MAX));
    let last_error = rec.dead_reason.as_ref().or(rec.error.as_ref());
    let updated = sqlx::query(
        "UPDATE deliveries SET status = $4, lease_until = NULL, leased_by = NULL, last_error = $5, \
           updated_at = now(), completed_at = CASE WHEN $4 = 'succeeded' THEN now() END, \
           failures = failures + $6, \
           next_attempt_at = CASE WHEN $7::bigint IS NULL THEN NULL ELSE now() + make_interval(secs => $7::bigint / 1000.0) END, \
           waiting_since = CASE WHEN $4 = 'waiting' THEN coalesce(waiting_since, now()) END \
         WHERE id = $1 AND status = 'running' AND leased_by = $2 AND attempts = $3",
    )
    .bind(claimed.id)
    .bind(worker)
    .bind(claimed.attempt)
    .bind(rec.next.as_str())
    .bind(last_error)
    .bind(i32::from(rec.failed))
    .bind(delay_ms)
    .execute(&mut *conn)
    .await?;
    let actor = format!("worker:{worker}");
    if updated.rows_affected() == 0 {
        events::record(
            conn,
            NewEvent {
                order_id: claimed.order_id,
                delivery_id: Some(claimed.id),
                kind: "delivery.lease_lost",
                message: format!(
                    "attempt {} finished ({}) after its lease had been taken over",
                    claimed.attempt, rec.outcome
                ),
                actor: &actor,
                data: json!({ "attempt": claimed.attempt, "outcome": rec.outcome }),
            },
        )
        .await?;
        // The rescuer cancelled it because the order was withdrawn, yet it ran.
        if withdrawn && (rec.next == DeliveryStatus::Succeeded || rec.ambiguous) {
            crate::service::revoke::revoke_delivery(conn, claimed.id, false, &actor).await?;
        }
        return Ok(Recorded::LeaseLost);
    }
    if let Some((queue, delay)) = &rec.requeue {
        let message = crate::queue::messages::JobMessage {
            delivery_id: claimed.id,
            kind: claimed.kind,
        };
        super::outbox::enqueue_delayed(
            conn,
            queue,
            &message.to_json(),
            Some(i64::try_from(*delay).unwrap_or(i64::MAX)),
        )
        .await?;
        super::outbox::notify_relays(conn).await?;
    }
    if rec.ambiguous {
        events::record(
            conn,
            NewEvent {
                order_id: claimed.order_id,
                delivery_id: Some(claimed.id),
                kind: "delivery.ambiguous",
                message: format!(
                    "attempt {} failed after the command was sent; it may have run (now {})",
                    claimed.attempt, rec.next
                ),
                actor: &format!("worker:{worker}"),
                data: json!({ "attempt": claimed.attempt }),
            },
        )
        .await?;
    }
    if rec.next == DeliveryStatus::Dead {
        let reason = rec
            .dead_reason
            .clone()
            .or_else(|| rec.error.clone())
            .unwrap_or_default();
        super::dead_letters::open_for_delivery(
            conn,
            claimed.id,
            claimed.kind,
            &claimed.target,
            &reason,
        )
        .await?;
    }
    let message = match (&rec.error, rec.next) {
        (_, DeliveryStatus::Succeeded) => format!("attempt {} succeeded", claimed.attempt),
        (Some(e), DeliveryStatus::Retrying) => format!(
            "attempt {} failed: {e}; retrying in {:.1} s",
            claimed.attempt,
            delay_ms.unwrap_or_default() as f64 / 1000.0
        ),
        (Some(e), DeliveryStatus::Waiting) => format!(
            "attempt {}: {e}; checking again in {:.0} s",
            claimed.attempt,
            delay_ms.unwrap_or_default() as f64 / 1000.0
        ),
        (_, DeliveryStatus::Dead) => format!(
            "attempt {}: {}; delivery is dead",
            claimed.attempt,
            rec.dead_reason.as_deref().unwrap_or("failed")
        ),
        (Some(e), next) => format!("attempt {} failed: {e} (now {next})", claimed.attempt),
        (None, next) => format!("attempt {} ended ({next})", claimed.attempt),
    };
    events::record(
        conn,
        NewEvent {
            order_id: claimed.order_id,
            delivery_id: Some(claimed.id),
            kind: &format!("delivery.{}", rec.next),
            message,
            actor: &actor,
            data: json!({ "attempt": claimed.attempt, "outcome": rec.outcome, "response": rec.response }),
        },
    )
    .await?;
    if withdrawn {
        // Done, or maybe done (an RCON command written before the error).
        if rec.next == DeliveryStatus::Succeeded || rec.ambiguous {
            crate::service::revoke::revoke_delivery(conn, claimed.id, false, &actor).await?;
        }
        return Ok(Recorded::Withdrawn);
    }
    match (claimed.purpose, claimed.item_id) {
        (Purpose::Deliver, Some(item_id)) => {
            roll_up(conn, claimed.order_id, item_id, &actor).await?;
        }
        (Purpose::Refund, _) => {
            super::refunds::settle_refund(conn, claimed.id, rec.next, rec.response.as_deref())
                .await?;
        }
        _ => {}
    }
    Ok(Recorded::Applied)
}

/// Gives up on a delivery that is not running (an admin discard, a refund or
/// cancel): `from` → cancelled, its open dead letter resolved as discarded,
/// `why` in the timeline (its last error stays, for the record). The caller holds the order's
/// row lock and rolls up if it should.
pub async fn cancel(
    conn: &mut PgConnection,
    order_id: Uuid,
    id: Uuid,
    from: DeliveryStatus,
    why: &str,
    actor: &str,
) -> Result<(), DbError> {
    from.transition(DeliveryStatus::Cancelled)?;
    sqlx::query(
        "UPDATE deliveries SET status = 'cancelled', lease_until = NULL, leased_by = NULL, \
           next_attempt_at = NULL, updated_at = now() WHERE id = $1 AND status = $2",
    )
    .bind(id)
    .bind(from.as_str())
    .execute(&mut *conn)
    .await?;
    super::dead_letters::resolve_for_delivery(conn, id, actor, "discarded").await?;
    events::record(
        conn,
        NewEvent {
            order_id,
            delivery_id: Some(id),
            kind: "delivery.cancelled",
            message: format!("{from} delivery cancelled: {why}"),
            actor,
            data: json!({ "from": from, "reason": why }),
        },
    )
    .await?;
    Ok(())
}

/// Recomputes the item's status from its deliveries, then the order's from its
/// items, writing each change through the guarded setters. The caller holds the
/// order's row lock.
pub async fn roll_up(
    conn: &mut PgConnection,
    order_id: Uuid,
    item_id: Uuid,
    actor: &str,
) -> Result<(), DbError> {
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT status FROM deliveries WHERE item_id = $1 AND purpose = 'deliver'",
    )
    .bind(item_id)
    .fetch_all(&mut *conn)
    .await?;
    let statuses = statuses
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<DeliveryStatus>, _>>()?;
    let item_status = rollup::item_status(&statuses);
    if item_status == ItemStatus::Delivered {
        // A key item passes through `fulfilled` (key obtained) on its way to
        // `delivered` (key available to the customer).
        let has_keys: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM item_keys WHERE item_id = $1) \
               AND (SELECT delivery_status FROM order_items WHERE id = $1) NOT IN ('delivered', 'fulfilled')",
        )
            .bind(item_id)
            .fetch_one(&mut *conn)
            .await?;
        if has_keys {
            set_item_status(conn, order_id, item_id, ItemStatus::Fulfilled, actor).await?;
        }
    }
    set_item_status(
        conn,
        order_id,
        item_id,
        rollup::item_status(&statuses),
        actor,
    )
    .await?;
    let items: Vec<String> =
        sqlx::query_scalar("SELECT delivery_status FROM order_items WHERE order_id = $1")
            .bind(order_id)
            .fetch_all(&mut *conn)
            .await?;
    let items = items
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<ItemStatus>, _>>()?;
    if let Some(status) = rollup::order_status(&items) {
        set_order_status(conn, order_id, status, actor).await?;
    }
    Ok(())
}

/// Moves an item to `to` if its state machine allows it from the current
/// status; no-op when already there or revoked. Writes the timeline event.
pub async fn set_item_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    item_id: Uuid,
    to: ItemStatus,
    actor: &str,
) -> Result<bool, DbError> {
    let current: String =
        sqlx::query_scalar("SELECT delivery_status FROM order_items WHERE id = $1 FOR UPDATE")
            .bind(item_id)
            .fetch_one(&mut *conn)
            .await?;
    let from: ItemStatus = current.parse()?;
    // A revoked item stays so: what its deliveries do after a withdrawal
    // (a roll-up, a late success) no longer moves it.
    if from == to || from == ItemStatus::Revoked {
        return Ok(false);
    }
    from.transition(to)?;
    sqlx::query("UPDATE order_items SET delivery_status = $3, updated_at = now() WHERE id = $1 AND delivery_status = $2")
        .bind(item_id)
        .bind(from.as_str())
        .bind(to.as_str())
        .execute(&mut *conn)
        .await?;
    events::record(
        conn,
        NewEvent {
            order_id,
            delivery_id: None,
            kind: "item.status",
            message: format!("item {from} → {to}"),
            actor,
            data: json!({ "item_id": item_id, "from": from, "to": to }),
        },
    )
    .await?;
    Ok(true)
}

/// Moves an order to `to` when allowed; a final order (refunded, cancelled)
/// keeps its status, and a partially refunded one is not moved back by
/// delivery progress. Writes the timeline event.
pub async fn set_order_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    to: OrderStatus,
    actor: &str,
) -> Result<bool, DbError> {
    let current: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order_id)
        .fetch_one(&mut *conn)
        .await?;
    let from: OrderStatus = current.parse()?;
    // A refund or cancel has the last word: delivery progress (a claim, a
    // roll-up, an admin retry) no longer moves the order's status.
    if from == to || from.is_final() || (!from.follows_deliveries() && to.follows_deliveries()) {
        return Ok(false);
    }
    from.transition(to)?;
    sqlx::query(
        "UPDATE orders SET status = $3, updated_at = now(), \
           completed_at = CASE WHEN $3 = 'completed' THEN now() ELSE completed_at END \
         WHERE id = $1 AND status = $2",
    )
    .bind(order_id)
    .bind(from.as_str())
    .bind(to.as_str())
    .execute(&mut *conn)
    .await?;
    events::record(
        conn,
        NewEvent {
            order_id,
            delivery_id: None,
            kind: &format!("order.{to}"),
            message: format!("order {from} → {to}"),
            actor,
            data: json!({ "from": from, "to": to }),
        },
    )
    .await?;
    Ok(true)
}
