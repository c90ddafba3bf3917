//! Group commit of accepts: the plans of orders accepted at the same time
//! are written together, in one statement (`db::accept::write`), so a busy
//! API pays one round trip, one statement and one WAL flush for many orders.
//!
//! As in the worker's batch completer there is no timer: a batch is
//! whatever arrived while the lanes were busy (up to `MAX_BATCH`), so an idle
//! API writes each order at once and a busy one writes many per statement.
//! `LANES` batches are written at the same time.
//!
//! The statement is all or nothing. When Postgres refuses it (a unique
//! violation: an order number drawn twice, an idempotency key sent twice at
//! once), nothing was written and each order of the batch is written alone,
//! so each caller gets its own answer. Any other failure (the database
//! unreachable, the connection lost) is every caller's answer, as it would
//! be for an order written alone; a lost connection leaves the batch's
//! outcome unknown, which is what `Idempotency-Key` is for.

use std::collections::HashMap;

use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::plan::Plan;
use super::rows_of;
use crate::db::{accept, outbox};
use crate::error::same_sqlx_error as same_error;

/// Most orders written in one statement.
const MAX_BATCH: usize = 64;

/// Batches written at the same time (each on its own connection).
const LANES: usize = 2;

struct Job {
    plan: Plan,
    idempotency_key: Option<String>,
    actor: String,
    reply: oneshot::Sender<Result<Plan, sqlx::Error>>,
}

/// A handle to the process's group-commit lanes; they end when every handle
/// is dropped.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the lanes (on the current Tokio runtime); `sizes` observes the
    /// size of every batch written. With a `handoff` that takes rows, each
    /// batch's outbox rows go to it right after the commit, leased for
    /// `outbox::DIRECT_LEASE`, to be published directly (the API's relay);
    /// rows it cannot take at once (its queue is full or gone) are given back
    /// to the relays. Its sweep is woken whenever it has rows to take. Without
    /// a handoff, nothing is woken (a relay's periodic sweep publishes).
    pub fn start(pool: PgPool, sizes: Histogram, handoff: Option<outbox::Handoff>) -> Self {
        let tx = crate::lanes::start(LANES, MAX_BATCH, sizes, move |batch| {
            write_and_answer(pool.clone(), handoff.clone(), batch)
        });
        GroupCommit { tx }
    }

    /// Writes a planned order with the next batch; gives the plan back once
    /// it is committed.
    pub(super) async fn write(
        &self,
        plan: Plan,
        idempotency_key: Option<&str>,
        actor: &str,
    ) -> Result<Plan, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            plan,
            idempotency_key: idempotency_key.map(str::to_owned),
            actor: actor.to_owned(),
            reply,
        };
        if self.tx.send(job).await.is_err() {
            return Err(sqlx::Error::PoolClosed);
        }
        // No answer: the lane ended with the runtime (shutting down).
        answer.await.unwrap_or(Err(sqlx::Error::WorkerCrashed))
    }
}

async fn write_and_answer(pool: PgPool, handoff: Option<outbox::Handoff>, batch: Vec<Job>) {
    let direct_lanes = handoff.as_ref().and_then(|h| h.rows.as_ref());
    let direct = direct_lanes.map(|_| outbox::DIRECT_LEASE);
    let (outcomes, written, triggered) = write_batch(&pool, direct, &batch).await;
    if let Some(handoff) = &handoff
        && (triggered || (direct_lanes.is_none() && !written.is_empty()))
    {
        handoff.sweep.notify_one();
    }
    if let Some(rows) = direct_lanes
        && !written.is_empty()
        && let Err(refused) = rows.try_send(written)
    {
        // The relay is reconnecting or behind: its sweep takes the rows now
        // rather than after their lease.
        let ids: Vec<i64> = refused.into_inner().iter().map(|r| r.id).collect();
        tokio::spawn(async move {
            if let Err(e) = outbox::release(&pool, &ids).await {
                tracing::warn!(error = %e, rows = ids.len(), "could not give outbox rows back to the relays; they go out when their lease ends");
            }
        });
    }
    for (job, outcome) in batch.into_iter().zip(outcomes) {
        // A caller that went away (its request was dropped) still had
        // its order written; a retry with its Idempotency-Key finds it.
        let _ = job.reply.send(outcome.map(|()| job.plan));
    }
}

/// One outcome per job, in order; the outbox rows written; whether the
/// statements' triggers may have written more.
type BatchWritten = (Vec<Result<(), sqlx::Error>>, Vec<outbox::Pending>, bool);

/// Writes the batch in one statement, or each order alone when Postgres
/// refuses the statement.
async fn write_batch(
    pool: &PgPool,
    direct: Option<std::time::Duration>,
    batch: &[Job],
) -> BatchWritten {
    let everyone = |e: &sqlx::Error| batch.iter().map(|_| Err(same_error(e))).collect();
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => return (everyone(&e), Vec::new(), false),
    };
    let held = HashMap::new();
    let rows = || {
        batch
            .iter()
            .map(|j| rows_of(&j.plan, j.idempotency_key.as_deref(), &j.actor, &held))
    };
    match accept::write(&mut conn, &rows().collect::<Vec<_>>(), direct).await {
        Ok(written) => (
            batch.iter().map(|_| Ok(())).collect(),
            written.outbox,
            written.triggered,
        ),
        Err(sqlx::Error::Database(e)) if batch.len() > 1 => {
            tracing::debug!(error = %e, batch = batch.len(), "group accept refused; writing each order alone");
            let mut outcomes = Vec::with_capacity(batch.len());
            let (mut outbox, mut triggered) = (Vec::new(), false);
            for r in rows() {
                match accept::write(&mut conn, &[r], direct).await {
                    Ok(written) => {
                        outbox.extend(written.outbox);
                        triggered |= written.triggered;
                        outcomes.push(Ok(()));
                    }
                    Err(e) => outcomes.push(Err(e)),
                }
            }
            (outcomes, outbox, triggered)
        }
        Err(e) if batch.len() == 1 => (vec![Err(e)], Vec::new(), false),
        Err(e) => (everyone(&e), Vec::new(), false),
    }
}
