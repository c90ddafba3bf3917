//! Withdrawing an order: what a full refund, a cancel or a chargeback does to
//! what was (or was about to be) delivered.
//!
//! - Deliveries that have not run (queued, retrying, waiting, dead, held) are
//!   cancelled; an open dead letter of theirs is resolved as discarded.
//! - Deliveries that succeeded are undone by *revoke jobs*, ordinary delivery
//!   rows with purpose `revoke` (retries and dead letters as for any job): the
//!   Discord role is removed, the RCON action's `revoke_command` is run (an action
//!   without one has nothing to run, which the timeline says). A CD key from own
//!   stock goes back to stock if the customer never saw it; a revealed or
//!   supplier-bought key cannot be taken back, which the timeline says too.
//!   Download links are revoked at once (they stop working; the log stays).
//! - Deliveries running right now finish; `deliveries::record` then revokes a
//!   success at once and turns anything else into `cancelled`.
//! - Every item becomes `revoked`. A chargeback also queues each RCON action's
//!   `chargeback_command`.
//!
//! The caller holds the order's row lock and commits.

use serde_json::json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::db::deliveries::{self, DeliveryRow};
use crate::db::events::{self, NewEvent};
use crate::db::outbox;
use crate::domain::action::{DiscordPayload, RconPayload};
use crate::domain::delivery::{DeliveryKind, DeliveryStatus, Purpose};
use crate::domain::order::ItemStatus;
use crate::error::DbError;

/// Why the order is withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Refund,
    Cancel,
    Chargeback,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Refund => "refund",
            Cause::Cancel => "cancel",
            Cause::Chargeback => "chargeback",
        }
    }
}

/// What `withdraw` did, for the caller's answer and the timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Withdrawn {
    /// Deliveries that will not run now.
    pub cancelled: usize,
    /// Revoke jobs queued (roles to remove, commands to run).
    pub revoke_jobs: usize,
    /// Stock keys put back.
    pub keys_released: usize,
    /// Deliveries still running; revoked or cancelled when they end.
    pub running: usize,
    /// False when the order had already been withdrawn (only a chargeback's
    /// extra commands are queued then).
    pub first: bool,
}

/// Withdraws the order (see the module comment). Idempotent: a second call
/// changes nothing but a chargeback's extra commands.
pub async fn withdraw(
    conn: &mut PgConnection,
    order_id: Uuid,
    cause: Cause,
    reason: &str,
    actor: &str,
) -> Result<Withdrawn, DbError> {
    let mut done = Withdrawn {
        first: sqlx::query(
            "UPDATE orders SET revoked_at = now(), updated_at = now(), process_hold = NULL, \
               process_after = NULL WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(order_id)
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1,
        ..Withdrawn::default()
    };
    let rows = sqlx::query(
        "SELECT id, status FROM deliveries WHERE order_id = $1 AND purpose = 'deliver' \
         ORDER BY created_at, id FOR UPDATE",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        let id: Uuid = r.try_get("id")?;
        let status: DeliveryStatus = r.try_get::<String, _>("status")?.parse()?;
        if done.first {
            match status {
                DeliveryStatus::Succeeded => {
                    let undone = revoke_delivery(conn, id, false, actor).await?;
                    done.revoke_jobs += undone.jobs;
                    done.keys_released += undone.keys_released;
                }
                DeliveryStatus::Running => done.running += 1,
                // Cancelled earlier (a discard, or its item marked delivered
                // by hand) after it may have reached the target: taken back.
                DeliveryStatus::Cancelled => {
                    if may_have_run(conn, id, status).await? {
                        let undone = revoke_delivery(conn, id, false, actor).await?;
                        done.revoke_jobs += undone.jobs;
                        done.keys_released += undone.keys_released;
                    }
                }
                _ => {
                    let why = format!("cancelled by {} ({reason})", cause.as_str());
                    deliveries::cancel(conn, Some(order_id), id, status, &why, actor).await?;
                    done.cancelled += 1;
                    // Held, or after an attempt that may have reached the target:
                    // it may have happened, so it is taken back too.
                    if may_have_run(conn, id, status).await? {
                        let undone = revoke_delivery(conn, id, false, actor).await?;
                        done.revoke_jobs += undone.jobs;
                        done.keys_released += undone.keys_released;
                    }
                }
            }
        }
    }
    // Every download link of the order stops working, whatever state its
    // delivery is in (one may have made links and died before recording);
    // the succeeded deliveries' links were revoked above, with a note.
    crate::db::downloads::revoke(
        conn,
        crate::db::downloads::Links::OfOrder(order_id),
        &format!("order withdrawn ({})", cause.as_str()),
    )
    .await?;
    if cause == Cause::Chargeback {
        done.revoke_jobs += chargeback_commands(conn, order_id, actor).await?;
    }
    if done.first {
        let items: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM order_items WHERE order_id = $1 AND delivery_status <> 'revoked' ORDER BY position",
        )
        .bind(order_id)
        .fetch_all(&mut *conn)
        .await?;
        for item in items {
            deliveries::set_item_status(conn, item, ItemStatus::Revoked, actor).await?;
        }
    }
    events::record(
        conn,
        NewEvent {
            order_id,
            delivery_id: None,
            kind: "order.revoked",
            message: format!(
                "{} ({reason}): {} deliveries cancelled, {} revoke jobs queued, {} stock keys released, {} still running{}",
                cause.as_str(),
                done.cancelled,
                done.revoke_jobs,
                done.keys_released,
                done.running,
                if done.first { "" } else { " (access had already been withdrawn)" }
            ),
            actor,
            data: json!({ "cause": cause.as_str(), "reason": reason, "result": &done }),
        },
    )
    .await?;
    outbox::notify_relays(conn).await?;
    Ok(done)
}

/// Queues each RCON action's `chargeback_command` once (whatever became of
/// the delivery: a ban applies even if the goods never arrived). Returns how
/// many jobs were queued.
pub async fn chargeback_commands(
    conn: &mut PgConnection,
    order_id: Uuid,
    actor: &str,
) -> Result<usize, DbError> {
    let rows = sqlx::query(
        "SELECT id, payload FROM deliveries WHERE order_id = $1 AND purpose = 'deliver' \
         AND kind = 'rcon' ORDER BY created_at, id",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut jobs = 0;
    for r in &rows {
        let payload: RconPayload = serde_json::from_value(r.try_get("payload")?)?;
        if payload.chargeback_command.is_some() {
            jobs += revoke_delivery(conn, r.try_get("id")?, true, actor)
                .await?
                .jobs;
        }
    }
    Ok(jobs)
}

async fn may_have_run(
    conn: &mut PgConnection,
    id: Uuid,
    status: DeliveryStatus,
) -> Result<bool, DbError> {
    if status == DeliveryStatus::Held {
        return Ok(true);
    }
    // Any earlier attempt that may have reached the target (with
    // `on_ambiguous = retry` the delivery may even be queued again).
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM order_events WHERE delivery_id = $1 AND kind = 'delivery.ambiguous')",
    )
    .bind(id)
    .fetch_one(conn)
    .await?)
}

/// What undoing one delivery took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Undone {
    pub jobs: usize,
    pub keys_released: usize,
}

/// Undoes one succeeded delivery (or, with `chargeback`, queues its action's
/// chargeback command). Never queues the same job twice for a delivery.
pub async fn revoke_delivery(
    conn: &mut PgConnection,
    id: Uuid,
    chargeback: bool,
    actor: &str,
) -> Result<Undone, DbError> {
    let row = sqlx::query(
        "SELECT order_id, item_id, kind, target, payload FROM deliveries WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let order_id: Uuid = row.try_get("order_id")?;
    let item_id: Option<Uuid> = row.try_get("item_id")?;
    let kind: DeliveryKind = row.try_get::<String, _>("kind")?.parse()?;
    let target: String = row.try_get("target")?;
    let payload: serde_json::Value = row.try_get("payload")?;
    let mut undone = Undone::default();
    let (job, note) = match kind {
        DeliveryKind::Rcon => {
            let p: RconPayload = serde_json::from_value(payload)?;
            let command = if chargeback {
                p.chargeback_command.clone()
            } else {
                p.revoke_command.clone()
            };
            match command {
                Some(command) => {
                    let note = format!("queued `{command}` on the game server");
                    let job = RconPayload {
                        command,
                        require_online: None,
                        revoke_command: None,
                        chargeback_command: None,
                        ..p
                    };
                    (Some(serde_json::to_value(job)?), note)
                }
                None => (
                    None,
                    "the RCON action has no revoke_command: nothing to run".to_owned(),
                ),
            }
        }
        DeliveryKind::DiscordRole if !chargeback => {
            let p: DiscordPayload = serde_json::from_value(payload)?;
            let note = format!(
                "queued removal of role {} in guild {}",
                p.role_id, p.guild_id
            );
            let job = DiscordPayload { revoke: true, ..p };
            (Some(serde_json::to_value(job)?), note)
        }
        DeliveryKind::SupplierKey if !chargeback => {
            let keys = sqlx::query(
                "SELECT id, source, revealed_at IS NOT NULL AS revealed FROM item_keys \
                 WHERE delivery_id = $1 AND released_at IS NULL ORDER BY id",
            )
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
            let mut notes = Vec::new();
            for k in &keys {
                let key_id: i64 = k.try_get("id")?;
                let source: String = k.try_get("source")?;
                let revealed: bool = k.try_get("revealed")?;
                // `release` re-checks under the row lock (a GET may reveal it meanwhile).
                if source == "stock" && !revealed && crate::db::keys::release(conn, key_id).await? {
                    undone.keys_released += 1;
                    notes.push(format!("key {key_id} returned to stock (never revealed)"));
                } else if revealed || source == "stock" {
                    notes.push(format!(
                        "key {key_id} was already shown to the customer: it cannot be taken back"
                    ));
                } else {
                    notes.push(format!(
                        "key {key_id} came from {source}: it cannot be returned by Courier"
                    ));
                }
            }
            if notes.is_empty() {
                notes.push("no key to take back".into());
            }
            (None, notes.join("; "))
        }
        DeliveryKind::Download if !chargeback => {
            let n = crate::db::downloads::revoke(
                conn,
                crate::db::downloads::Links::OfDelivery(id),
                &format!("order withdrawn ({actor})"),
            )
            .await?;
            (
                None,
                match n {
                    0 => "no live download link to revoke".to_owned(),
                    1 => "1 download link revoked".to_owned(),
                    n => format!("{n} download links revoked"),
                },
            )
        }
        _ => (None, String::new()),
    };
    if let Some(payload) = job {
        // A chargeback command runs once. A revoke is not queued twice at
        // once; but once one has run, a later success of the same delivery (a
        // second run after a lost lease) is revoked again.
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE revokes = $1 AND payload = $2 \
               AND ($3 OR status <> 'succeeded'))",
        )
        .bind(id)
        .bind(&payload)
        .bind(chargeback)
        .fetch_one(&mut *conn)
        .await?;
        if !exists {
            let row = DeliveryRow {
                id: Uuid::new_v4(),
                order_id,
                item_id,
                action_id: None,
                kind,
                purpose: Purpose::Revoke,
                revokes: Some(id),
                target,
                payload,
            };
            deliveries::insert(conn, &row).await?;
            outbox::enqueue_job(conn, row.id, kind).await?;
            undone.jobs += 1;
        }
    }
    if !note.is_empty() {
        events::record(
            conn,
            NewEvent {
                order_id,
                delivery_id: Some(id),
                kind: if chargeback {
                    "delivery.chargeback"
                } else {
                    "delivery.revoke"
                },
                message: note,
                actor,
                data: json!({ "jobs": undone.jobs, "keys_released": undone.keys_released }),
            },
        )
        .await?;
    }
    Ok(undone)
}
