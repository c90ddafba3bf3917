//! Delivery rows: claim by a worker, record an attempt — guarded SQL only;
//! the policy (what an outcome means) is `domain::fulfilment`, the
//! transactions and what follows a commit are `service::fulfilment`.
//! Item and order statuses are rolled up here, under the order's row lock, so
//! two workers finishing the last two deliveries of an order cannot both miss
//! the completion.

use serde_json::{Value, json};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::events::{self, NewEvent};
use super::statuses::{self, Change};
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
    /// None for the one kind that belongs to no order (`alert`).
    pub order_id: Option<Uuid>,
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
    /// For an RCON delivery, the version of its game server's row as the
    /// claim saw it (as `catalog::get_game_server_versioned` reads it), so a worker can use the
    /// server it loaded before when nothing changed since; `None` when
    /// the server is gone (or the kind has none).
    pub target_version: Option<String>,
}

/// Why a claim did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotClaimed {
    /// No such delivery (e.g. its order was deleted).
    Missing,
    /// Done, dead, held, cancelled, or leased by a worker right now.
    NotClaimable(DeliveryStatus),
}

/// The claim's `UPDATE` of the deliveries of `$1` whose status is one of
/// `$4` (the claimable ones) to running, leased by `$2` for `$3` seconds;
/// the caller adds its own conditions and `claim_returning!`.
macro_rules! claim_update {
    () => {
        "WITH c AS (UPDATE deliveries d SET status = 'running', attempts = d.attempts + 1, \
             lease_until = now() + make_interval(secs => $3), leased_by = $2, updated_at = now() \
           WHERE d.id = ANY($1) AND d.status = ANY($4) "
    };
}

/// The attempt row each claimed delivery opens.
macro_rules! claim_attempt {
    () => {
        "a AS (INSERT INTO delivery_attempts (delivery_id, attempt, worker) \
           SELECT id, attempts, $2 FROM c)"
    };
}

/// The statuses a claim takes a delivery from, checked against the state
/// machine.
fn claimable() -> Result<Vec<&'static str>, DbError> {
    for from in DeliveryStatus::CLAIMABLE {
        from.transition(DeliveryStatus::Running)?;
    }
    Ok(DeliveryStatus::CLAIMABLE
        .iter()
        .map(|s| s.as_str())
        .collect())
}

/// The claim's `UPDATE … RETURNING` columns.
macro_rules! claim_returning {
    () => {
        "RETURNING d.id, d.order_id, d.item_id, d.kind, d.purpose, d.payload, d.attempts, \
           d.failures, d.waiting_since, d.target"
    };
}

/// The version of an RCON delivery's game server, for a `SELECT … FROM c`.
/// The payload's id is cast to `uuid` (only when it looks like one, so an
/// odd payload finds no server rather than failing the whole claim) so that
/// the lookup is by the primary key: comparing `g.id::text` scanned the
/// table, 0.11 ms of each claim (auto_explain, open loop).
macro_rules! claim_target_version {
    () => {
        concat!(
            "(SELECT ",
            super::catalog::game_server_version!("g"),
            " FROM game_servers g \
             WHERE c.kind = 'rcon' AND g.id = CASE WHEN c.payload->>'game_server_id' \
               ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' \
               THEN (c.payload->>'game_server_id')::uuid END) AS target_version"
        )
    };
}

fn claimed_of(row: &sqlx::postgres::PgRow) -> Result<Claimed, DbError> {
    Ok(Claimed {
        id: row.try_get("id")?,
        order_id: row.try_get("order_id")?,
        item_id: row.try_get("item_id")?,
        kind: row.try_get::<String, _>("kind")?.parse()?,
        purpose: row.try_get::<String, _>("purpose")?.parse()?,
        payload: row.try_get("payload")?,
        attempt: row.try_get("attempts")?,
        failures: row.try_get("failures")?,
        waiting_since: row.try_get("waiting_since")?,
        target: row.try_get("target")?,
        target_version: row.try_get("target_version")?,
    })
}

/// The common claim, in one statement and no order lock: the deliveries of
/// `ids` that are claimable and whose claim moves no status — their item and
/// order are already `processing` (an order paid with queued deliveries
/// starts so at accept), the keys e-mail of a fulfilled item, or a delivery
/// of no item (refunds, webhooks, alerts, revokes). Same guarded `UPDATE` and
/// attempt rows as `claim_batch`; the ids it does not answer for (a status
/// to move, or not claimable) go to `claim_batch`.
///
/// It takes no order lock because it writes nothing the order lock guards:
/// a withdrawal or an admin action that cancels a delivery meets this claim
/// on the delivery's own row (each `UPDATE` is guarded by the status it
/// expects), and what ran on an order withdrawn meanwhile is revoked when
/// it is recorded, as with any claim. It locks only delivery rows, in the
/// order of the primary key, and nothing after them: it cannot deadlock
/// with writers that lock an order first. Runs as its own statement (no
/// explicit transaction needed: it commits or not as a whole).
pub async fn claim_started<'c, E>(
    conn: E,
    ids: &[Uuid],
    worker: &str,
    lease_seconds: u32,
) -> Result<Vec<Claimed>, DbError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let claimable = claimable()?;
    let rows = sqlx::query(concat!(
        claim_update!(),
        "AND (d.purpose <> 'deliver' OR d.item_id IS NULL OR EXISTS ( \
               SELECT 1 FROM order_items i JOIN orders o ON o.id = i.order_id \
               WHERE i.id = d.item_id AND ((i.delivery_status = 'processing' AND o.status = 'processing') \
                 OR (i.delivery_status = 'fulfilled' AND d.kind = 'email')))) ",
        claim_returning!(),
        "), ",
        claim_attempt!(),
        " SELECT c.*, ",
        claim_target_version!(),
        " FROM c"
    ))
    .bind(ids)
    .bind(worker)
    .bind(f64::from(lease_seconds))
    .bind(&claimable)
    .fetch_all(conn)
    .await?;
    rows.iter().map(claimed_of).collect()
}

/// Claims every delivery of `ids` that is claimable for `worker`:
/// queued/retrying/waiting → running, attempt + 1, lease set, its attempt row
/// opened — one guarded UPDATE for all of them — then moves their items and
/// orders to processing through `statuses::write`. Anything else is
/// `NotClaimed`, and the caller acks its message: a redelivered message can
/// never run a job twice. Answers one entry per id, in the order given. The
/// caller announces the claimed deliveries' orders after commit
/// (`statuses::announce`).
pub async fn claim_batch(
    conn: &mut PgConnection,
    ids: &[Uuid],
    worker: &str,
    lease_seconds: u32,
) -> Result<Vec<(Uuid, Result<Claimed, NotClaimed>)>, DbError> {
    let claimable = claimable()?;
    // Lock order: the orders' rows first, as `record`, the rescuer and the
    // admin actions do, so a claim never deadlocks with them.
    let orders = statuses::lock_orders_of(conn, ids).await?;
    let rows = sqlx::query(concat!(
        claim_update!(),
        claim_returning!(),
        "), ",
        claim_attempt!(),
        " SELECT c.*, (SELECT delivery_status FROM order_items i WHERE i.id = c.item_id) AS item_status, ",
        claim_target_version!(),
        " FROM c"
    ))
    .bind(ids)
    .bind(worker)
    .bind(f64::from(lease_seconds))
    .bind(&claimable)
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = std::collections::HashMap::with_capacity(rows.len());
    let mut items = Vec::new();
    let mut moved_orders = std::collections::HashSet::new();
    for row in &rows {
        let c = claimed_of(row)?;
        if let (Purpose::Deliver, Some(item_id)) = (c.purpose, c.item_id) {
            let from: ItemStatus = row.try_get::<String, _>("item_status")?.parse()?;
            // A fulfilled item has its keys; the claim of its keys e-mail
            // leaves it fulfilled.
            if from == ItemStatus::Fulfilled && c.kind == DeliveryKind::Email {
                claimed.insert(c.id, c);
                continue;
            }
            // The order moves only with an item that moved: a delivery of an
            // item already delivered (by hand) does not reopen its order.
            if let Some(to) = rollup::item_move(from, ItemStatus::Processing)? {
                if !items.iter().any(|i: &Change<ItemStatus>| i.id == item_id) {
                    items.push(Change {
                        id: item_id,
                        from,
                        to,
                    });
                }
                moved_orders.extend(c.order_id);
            } else if from == ItemStatus::Processing {
                moved_orders.extend(c.order_id);
            }
        }
        claimed.insert(c.id, c);
    }
    let mut order_changes = Vec::new();
    for (order_id, from, _) in &orders {
        if moved_orders.contains(order_id)
            && let Some(to) = rollup::order_move(*from, OrderStatus::Processing)?
        {
            order_changes.push(Change {
                id: *order_id,
                from: *from,
                to,
            });
        }
    }
    statuses::write(conn, &items, &order_changes, &format!("worker:{worker}")).await?;
    let missing: Vec<Uuid> = ids
        .iter()
        .filter(|id| !claimed.contains_key(id))
        .copied()
        .collect();
    let mut status_of = std::collections::HashMap::new();
    if !missing.is_empty() {
        let rows = sqlx::query("SELECT id, status FROM deliveries WHERE id = ANY($1)")
            .bind(&missing)
            .fetch_all(&mut *conn)
            .await?;
        for r in rows {
            status_of.insert(
                r.try_get::<Uuid, _>("id")?,
                r.try_get::<String, _>("status")?
                    .parse::<DeliveryStatus>()?,
            );
        }
    }
    Ok(ids
        .iter()
        .map(|id| {
            let claim = match claimed.remove(id) {
                Some(c) => {
                    // The same id twice in one batch: the second is a duplicate.
                    status_of.insert(*id, DeliveryStatus::Running);
                    Ok(c)
                }
                None => Err(status_of
                    .get(id)
                    .map_or(NotClaimed::Missing, |s| NotClaimed::NotClaimable(*s))),
            };
            (*id, claim)
        })
        .collect())
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

/// Writes the attempt and the statuses it implies, in the caller's
/// transaction. The flag says the action must be taken back (it happened, or
/// may have, on an order withdrawn meanwhile): `service::fulfilment::record`
/// does that in the same transaction.
pub async fn record(
    conn: &mut PgConnection,
    claimed: &Claimed,
    worker: &str,
    rec: &AttemptRecord,
) -> Result<(Recorded, bool), DbError> {
    DeliveryStatus::Running.transition(rec.next)?;
    // Serialise roll-ups per order (see the module comment).
    let orders: Vec<Uuid> = claimed.order_id.into_iter().collect();
    let revoked = statuses::lock_orders(conn, &orders, statuses::Announce::Trigger)
        .await?
        .first()
        .is_some_and(|(_, _, revoked)| *revoked);
    let withdrawn = revoked && claimed.purpose == Purpose::Deliver;
    // Staff marked the item delivered while this attempt ran: whatever it
    // did, it is not tried again (and not revoked: the customer has it).
    let by_hand = match (claimed.purpose, claimed.item_id) {
        (Purpose::Deliver, Some(item)) if rec.next != DeliveryStatus::Succeeded => {
            delivered_by_hand(&mut *conn, item).await?
        }
        _ => false,
    };
    let adjusted;
    let rec = if (withdrawn || by_hand) && rec.next != DeliveryStatus::Succeeded {
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
        events::record_if_order(
            conn,
            claimed.order_id,
            NewEvent {
                order_id: Uuid::nil(),
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
        let revoke = withdrawn && (rec.next == DeliveryStatus::Succeeded || rec.ambiguous);
        return Ok((Recorded::LeaseLost, revoke));
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
        events::record_if_order(
            conn,
            claimed.order_id,
            NewEvent {
                order_id: Uuid::nil(),
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
    // A success is its attempt row (the execution log); every other outcome
    // changes what happens next, and the timeline says so.
    if rec.next != DeliveryStatus::Succeeded {
        events::record_if_order(
            conn,
            claimed.order_id,
            NewEvent {
                order_id: Uuid::nil(),
                delivery_id: Some(claimed.id),
                kind: &format!("delivery.{}", rec.next),
                message,
                actor: &actor,
                data: json!({ "attempt": claimed.attempt, "outcome": rec.outcome, "response": rec.response }),
            },
        )
        .await?;
    }
    if withdrawn {
        // Done, or maybe done (an RCON command written before the error).
        let revoke = rec.next == DeliveryStatus::Succeeded || rec.ambiguous;
        return Ok((Recorded::Withdrawn, revoke));
    }
    match (claimed.purpose, claimed.item_id) {
        (Purpose::Deliver, Some(item_id)) => {
            if let Some(order_id) = claimed.order_id {
                roll_up(conn, order_id, item_id, &actor).await?;
            }
        }
        (Purpose::Refund, _) => {
            super::refunds::settle_refund(conn, claimed.id, rec.next, rec.response.as_deref())
                .await?;
        }
        _ => {}
    }
    Ok((Recorded::Applied, false))
}

/// A succeeded attempt for `record_successes`.
#[derive(Debug, Clone)]
pub struct Success {
    pub id: Uuid,
    pub order_id: Uuid,
    pub attempt: i32,
    pub response: Option<String>,
}

/// The caller announces the orders after commit (`statuses::announce`).
///
/// Records succeeded attempts of `deliver` deliveries in set-based
/// statements: the orders locked in id order, every delivery and attempt
/// written by one guarded UPDATE, then one roll-up of their items and orders.
/// Returns the ids it applied; the others — the lease was lost, or the order
/// was withdrawn while the attempt ran — are left untouched for `record`,
/// which handles those cases one by one. The caller's transaction holds it all.
pub async fn record_successes(
    conn: &mut PgConnection,
    worker: &str,
    done: &[Success],
) -> Result<Vec<Uuid>, DbError> {
    DeliveryStatus::Running.transition(DeliveryStatus::Succeeded)?;
    let mut order_ids: Vec<Uuid> = done.iter().map(|s| s.order_id).collect();
    order_ids.sort_unstable();
    order_ids.dedup();
    let live: Vec<Uuid> = statuses::lock_orders(conn, &order_ids, statuses::Announce::AfterCommit)
        .await?
        .into_iter()
        .filter(|(_, _, revoked)| !revoked)
        .map(|(id, _, _)| id)
        .collect();
    let batch: Vec<&Success> = done.iter().filter(|s| live.contains(&s.order_id)).collect();
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "WITH u AS (SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::text[]) AS u(id, attempt, response)), \
         done AS (UPDATE deliveries d SET status = 'succeeded', lease_until = NULL, leased_by = NULL, \
             last_error = NULL, updated_at = now(), completed_at = now(), next_attempt_at = NULL, \
             waiting_since = NULL \
           FROM u WHERE d.id = ANY($1) AND d.id = u.id AND d.status = 'running' AND d.leased_by = $4 \
             AND d.attempts = u.attempt AND d.purpose = 'deliver' \
           RETURNING d.id, d.item_id, u.attempt, u.response), \
         a AS (UPDATE delivery_attempts a SET finished_at = now(), outcome = 'succeeded', \
             error = NULL, response = done.response \
           FROM done WHERE a.delivery_id = ANY($1) AND a.delivery_id = done.id \
             AND a.attempt = done.attempt) \
         SELECT id, item_id FROM done",
    )
    .bind(batch.iter().map(|s| s.id).collect::<Vec<_>>())
    .bind(batch.iter().map(|s| s.attempt).collect::<Vec<_>>())
    .bind(batch.iter().map(|s| s.response.as_deref()).collect::<Vec<_>>())
    .bind(worker)
    .fetch_all(&mut *conn)
    .await?;
    let mut applied = Vec::with_capacity(rows.len());
    let mut items = Vec::with_capacity(rows.len());
    for r in &rows {
        applied.push(r.try_get::<Uuid, _>("id")?);
        if let Some(item) = r.try_get::<Option<Uuid>, _>("item_id")? {
            items.push(item);
        }
    }
    let touched: Vec<Uuid> = batch
        .iter()
        .filter(|s| applied.contains(&s.id))
        .map(|s| s.order_id)
        .collect();
    if !touched.is_empty() {
        roll_up_orders(conn, &touched, &items, &format!("worker:{worker}")).await?;
    }
    Ok(applied)
}

/// An admin retry: `from` (dead, held) → queued with a fresh budget. The
/// caller publishes the job and writes the timeline entry.
pub async fn requeue(
    conn: &mut PgConnection,
    id: Uuid,
    from: DeliveryStatus,
) -> Result<(), DbError> {
    from.transition(DeliveryStatus::Queued)?;
    let done = sqlx::query(
        "UPDATE deliveries SET status = 'queued', failures = 0, waiting_since = NULL, next_attempt_at = now(), \
           updated_at = now() WHERE id = $1 AND status = $2",
    )
    .bind(id)
    .bind(from.as_str())
    .execute(conn)
    .await?;
    changed_one(done.rows_affected(), id, from)
}

/// A key entered by hand: `from` → succeeded without an attempt.
pub async fn succeed_by_hand(
    conn: &mut PgConnection,
    id: Uuid,
    from: DeliveryStatus,
) -> Result<(), DbError> {
    from.transition(DeliveryStatus::Succeeded)?;
    let done = sqlx::query(
        "UPDATE deliveries SET status = 'succeeded', completed_at = now(), updated_at = now(), last_error = NULL, \
           next_attempt_at = NULL WHERE id = $1 AND status = $2",
    )
    .bind(id)
    .bind(from.as_str())
    .execute(conn)
    .await?;
    changed_one(done.rows_affected(), id, from)
}

fn changed_one(rows: u64, id: Uuid, from: DeliveryStatus) -> Result<(), DbError> {
    if rows == 1 {
        Ok(())
    } else {
        Err(DbError::Corrupt(format!(
            "delivery {id} was no longer {from} under its order's lock"
        )))
    }
}

/// Gives up on a delivery that is not running (an admin discard, a refund or
/// cancel): `from` → cancelled, its open dead letter resolved as discarded,
/// `why` in the timeline (its last error stays, for the record). The caller holds the order's
/// row lock and rolls up if it should.
pub async fn cancel(
    conn: &mut PgConnection,
    order_id: Option<Uuid>,
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
    events::record_if_order(
        conn,
        order_id,
        NewEvent {
            order_id: Uuid::nil(),
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
/// items, writing each change through `statuses::write`. The caller holds the
/// order's row lock.
pub async fn roll_up(
    conn: &mut PgConnection,
    order_id: Uuid,
    item_id: Uuid,
    actor: &str,
) -> Result<(), DbError> {
    roll_up_orders(conn, &[order_id], &[item_id], actor).await
}

/// `roll_up` for several orders at once: the items of `item_ids` follow their
/// deliveries, then each order of `order_ids` follows its items. One read of
/// every item of those orders with its deliveries' statuses, one write of
/// what changed. The caller holds the orders' row locks (`statuses::lock_orders`).
pub async fn roll_up_orders(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
    item_ids: &[Uuid],
    actor: &str,
) -> Result<(), DbError> {
    let rows = sqlx::query(
        "SELECT i.order_id, i.id, i.delivery_status, o.status AS order_status, \
           nullif(o.customer_email, '') AS customer_email, courier_email_on('keys') AS email_keys, \
           EXISTS (SELECT 1 FROM item_keys k WHERE k.item_id = i.id) AS has_keys, \
           EXISTS (SELECT 1 FROM download_links l WHERE l.item_id = i.id) AS has_links, \
           courier_email_on('downloads') AS email_downloads, \
           coalesce(array_agg(d.status) FILTER (WHERE d.id IS NOT NULL AND d.kind <> 'email'), '{}') AS deliveries, \
           (array_agg(d.status) FILTER (WHERE d.kind = 'email'))[1] AS email \
         FROM order_items i JOIN orders o ON o.id = i.order_id AND o.id = ANY($1) \
           LEFT JOIN deliveries d ON d.item_id = i.id AND d.purpose = 'deliver' \
             AND d.order_id = ANY($1) \
         WHERE i.order_id = ANY($1) GROUP BY i.id, o.status, o.customer_email",
    )
    .bind(order_ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut item_changes = Vec::new();
    // Key and download items whose codes or links are now all in and must be
    // e-mailed: (order, item, address, template).
    let mut key_emails: Vec<(Uuid, Uuid, String, &'static str)> = Vec::new();
    let mut by_order: std::collections::HashMap<Uuid, (OrderStatus, Vec<ItemStatus>)> =
        std::collections::HashMap::new();
    for r in &rows {
        let id: Uuid = r.try_get("id")?;
        let order_id: Uuid = r.try_get("order_id")?;
        let mut status: ItemStatus = r.try_get::<String, _>("delivery_status")?.parse()?;
        if item_ids.contains(&id) {
            let deliveries = r
                .try_get::<Vec<String>, _>("deliveries")?
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<DeliveryStatus>, _>>()?;
            let has_keys: bool = r.try_get("has_keys")?;
            let has_links: bool = r.try_get("has_links")?;
            // What the customer is e-mailed before the item counts as
            // delivered: the codes (with any links), else the links.
            let (template, mail_on) = if has_keys {
                ("keys", r.try_get::<bool, _>("email_keys")?)
            } else {
                ("downloads", r.try_get::<bool, _>("email_downloads")?)
            };
            let email: Option<DeliveryStatus> = r
                .try_get::<Option<String>, _>("email")?
                .map(|s| s.parse())
                .transpose()?;
            let mut implied = match email {
                Some(e) => rollup::key_item_status(&deliveries, e),
                None => rollup::item_status(&deliveries),
            };
            // The keys or links are in: they go to the customer by e-mail first.
            if let (None, ItemStatus::Delivered, true, true, Some(to)) = (
                email,
                implied,
                has_keys || has_links,
                mail_on,
                r.try_get::<Option<String>, _>("customer_email")?,
            ) && status != ItemStatus::Delivered
            {
                key_emails.push((order_id, id, to, template));
                implied = ItemStatus::Fulfilled;
            }
            if let Some(to) = rollup::item_rollup(status, implied, has_keys || has_links)? {
                item_changes.push(Change {
                    id,
                    from: status,
                    to,
                });
                status = to;
            }
        }
        let order_status: OrderStatus = r.try_get::<String, _>("order_status")?.parse()?;
        by_order
            .entry(order_id)
            .or_insert_with(|| (order_status, Vec::new()))
            .1
            .push(status);
    }
    if !key_emails.is_empty() {
        queue_key_emails(conn, &key_emails).await?;
    }
    let mut order_changes = Vec::new();
    for (id, (from, items)) in by_order {
        if let Some(implied) = rollup::order_status(&items)
            && let Some(to) = rollup::order_move(from, implied)?
        {
            order_changes.push(Change { id, from, to });
        }
    }
    statuses::write(conn, &item_changes, &order_changes, actor).await
}

/// Writes the keys (or downloads) e-mail of each item (a `deliver`
/// delivery of kind `email`, so the item is delivered only when the SMTP
/// server accepted it) and its job message.
async fn queue_key_emails(
    conn: &mut PgConnection,
    emails: &[(Uuid, Uuid, String, &'static str)],
) -> Result<(), DbError> {
    let ids: Vec<Uuid> = emails.iter().map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "WITH u AS (SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $6::text[]) AS u(id, order_id, item_id, email, template)), \
         d AS (INSERT INTO deliveries (id, order_id, item_id, kind, target, payload, status, purpose, next_attempt_at) \
           SELECT u.id, u.order_id, u.item_id, 'email', u.email, \
             jsonb_build_object('template', u.template, 'to', u.email, 'extra', jsonb_build_object('item_id', u.item_id)), \
             'queued', 'deliver', now() FROM u RETURNING id) \
         INSERT INTO outbox (queue, payload) \
         SELECT $5, jsonb_build_object('delivery_id', d.id, 'kind', 'email') FROM d",
    )
    .bind(&ids)
    .bind(emails.iter().map(|e| e.0).collect::<Vec<_>>())
    .bind(emails.iter().map(|e| e.1).collect::<Vec<_>>())
    .bind(emails.iter().map(|e| e.2.as_str()).collect::<Vec<_>>())
    .bind(DeliveryKind::Email.queue())
    .bind(emails.iter().map(|e| e.3).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    super::outbox::notify_relays(conn).await?;
    Ok(())
}

/// Moves an item to `to` if its state machine allows it from the current
/// status; no-op when already there or revoked. The caller holds the order's
/// row lock.
pub async fn set_item_status(
    conn: &mut PgConnection,
    item_id: Uuid,
    to: ItemStatus,
    actor: &str,
) -> Result<bool, DbError> {
    let current: String =
        sqlx::query_scalar("SELECT delivery_status FROM order_items WHERE id = $1")
            .bind(item_id)
            .fetch_one(&mut *conn)
            .await?;
    let from: ItemStatus = current.parse()?;
    let Some(to) = rollup::item_move(from, to)? else {
        return Ok(false);
    };
    statuses::write(
        conn,
        &[Change {
            id: item_id,
            from,
            to,
        }],
        &[],
        actor,
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
    let Some(to) = rollup::order_move(from, to)? else {
        return Ok(false);
    };
    statuses::write(
        conn,
        &[],
        &[Change {
            id: order_id,
            from,
            to,
        }],
        actor,
    )
    .await?;
    Ok(true)
}

/// Whether staff marked the item delivered: its deliveries then never run
/// again (a failure is cancelled, a retry refused).
pub async fn delivered_by_hand(
    conn: &mut PgConnection,
    item_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT delivered_by_hand_at IS NOT NULL FROM order_items WHERE id = $1")
        .bind(item_id)
        .fetch_one(conn)
        .await
}
