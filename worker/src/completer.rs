//! The batch completer (River's `BatchCompleter` is the model): succeeded
//! attempts of the whole process are collected and written together — the
//! orders locked in id order, every delivery and attempt in one guarded
//! UPDATE, one roll-up of their items and orders — in one transaction. Each
//! job waits for the commit of its batch before its message is acked.
//!
//! There is no timer: a batch is whatever arrived while the previous one was
//! being committed (up to `MAX_BATCH`), so an idle worker writes each outcome
//! at once and a busy one writes many per commit. It runs on the shared
//! `courier_shared::lanes` with one lane: two lanes were tried twice (before
//! and after the driver slots) and did not move the open loop's latency
//! while they halved the batches (docs/benchmarks.md). The queue is bounded:
//! when the database falls behind, jobs wait here, their messages stay
//! unacked, and the consumer's prefetch stops new ones from arriving.
//!
//! Only the common case comes here. Failures, refunds, revokes and anything
//! the batch declines (a lease lost, an order withdrawn while the attempt
//! ran) are recorded one by one by `deliveries::record`.

use courier_shared::db::deliveries::Success;
use courier_shared::error::DbError;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

/// Most outcomes written in one transaction.
const MAX_BATCH: usize = 256;

/// Batches written at the same time.
const LANES: usize = 1;

type Reply = oneshot::Sender<Result<bool, ()>>;

/// A handle to the process's completer lanes.
#[derive(Clone)]
pub struct Completer {
    tx: mpsc::Sender<(Success, Reply)>,
}

impl Completer {
    /// Starts the completer lanes; they end when every handle is dropped.
    /// `sizes` observes the size of every batch written.
    pub fn start(pool: PgPool, worker_id: String, sizes: Histogram) -> Self {
        let worker_id: std::sync::Arc<str> = worker_id.into();
        let tx = courier_shared::lanes::start(LANES, MAX_BATCH, sizes, move |batch| {
            write_and_answer(pool.clone(), worker_id.clone(), batch)
        });
        Completer { tx }
    }

    /// Records one success with the next batch: `Ok(true)` once committed,
    /// `Ok(false)` when the batch left it to `deliveries::record` (lease lost,
    /// order withdrawn), `Err` when the batch failed (nothing of it is written).
    pub async fn complete(&self, success: Success) -> Result<bool, ()> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send((success, reply)).await.is_err() {
            return Err(());
        }
        answer.await.unwrap_or(Err(()))
    }
}

async fn write_and_answer(
    pool: PgPool,
    worker_id: std::sync::Arc<str>,
    batch: Vec<(Success, Reply)>,
) {
    let successes: Vec<Success> = batch.iter().map(|(s, _)| s.clone()).collect();
    let written = write(&pool, &worker_id, &successes).await;
    match &written {
        Ok(applied) => {
            tracing::debug!(
                batch = successes.len(),
                applied = applied.len(),
                "batch completed"
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, batch = successes.len(), "batch completion failed; recording one by one")
        }
    }
    for (success, reply) in batch {
        let answer = match &written {
            Ok(applied) => Ok(applied.contains(&success.id)),
            Err(_) => Err(()),
        };
        let _ = reply.send(answer);
    }
}

async fn write(
    pool: &PgPool,
    worker_id: &str,
    batch: &[Success],
) -> Result<Vec<uuid::Uuid>, DbError> {
    courier_shared::service::fulfilment::complete(pool, worker_id, batch).await
}
