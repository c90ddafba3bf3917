//! The outbox relay: publishes outbox rows with publisher confirms and marks
//! them sent. Two kinds of lanes share its one channel:
//!
//! - **direct** lanes publish the rows this process's accepts just wrote,
//!   handed over in memory right after their commit (`outbox::Handoff`); the
//!   rows are leased to this process (`publishing_until`), so no lock and no
//!   read is needed, and the mark is one statement after the confirms;
//! - **sweep** lanes lock whatever else is unpublished (`FOR UPDATE SKIP
//!   LOCKED`; rows written by workers and the CLI, rows whose lease ran out
//!   or was given back), publish them and mark them sent in the same
//!   transaction. They are woken by `NOTIFY courier_outbox` and by this
//!   process's other writers, and run every `relay.sweep_interval_ms` anyway,
//!   so rows written while RabbitMQ was unreachable go out once it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::Retryable;
use courier_shared::config::RelaySettings;
use courier_shared::db::listen::Heard;
use courier_shared::db::outbox::{self, Pending};
use courier_shared::queue::publisher::{OutgoingMessage, PublishError, Publisher};
use courier_shared::queue::{Broker, topology::Topology};
use futures_util::FutureExt;
use sqlx::PgPool;
use tokio::sync::{Mutex, Notify, mpsc, watch};

/// Lanes publishing handed-over rows; while some wait for their confirms and
/// marks, the others take what arrives.
const DIRECT_LANES: usize = 4;

/// Most handovers (one per group-commit batch) one direct lane publishes at once.
const DIRECT_BATCHES: usize = 16;

/// How old (by this process's clock) a handed-over row may be for a direct
/// lane to publish it: a second inside its lease (`outbox::DIRECT_LEASE`).
/// Older ones are left to the sweep, which takes them when the lease ends.
const DIRECT_LEASE_LEFT: Duration = outbox::DIRECT_LEASE.saturating_sub(Duration::from_secs(1));

pub struct Relay {
    pub pool: PgPool,
    pub broker: Broker,
    pub topology: Topology,
    pub settings: RelaySettings,
    pub wake: Arc<Notify>,
    /// Rows this process's accepts wrote, to publish directly.
    pub direct: Mutex<mpsc::Receiver<Vec<Pending>>>,
    /// True while the relay holds a working broker connection (for `/readyz`).
    pub connected: Arc<AtomicBool>,
    pub metrics: Arc<crate::metrics::ApiMetrics>,
}

/// Wakes the relay on `NOTIFY courier_outbox` (sent by workers and the CLI at
/// commit), and whenever the `LISTEN` is back in place; the periodic sweep
/// covers any gap.
async fn listen_for_notifications(pool: PgPool, wake: Arc<Notify>) {
    courier_shared::db::listen::listen(pool, outbox::NOTIFY_CHANNEL, |heard| {
        if heard != Heard::Lost {
            wake.notify_one();
        }
    })
    .await;
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl Relay {
    async fn open(&self) -> Result<Publisher, lapin::Error> {
        let conn = self.broker.connect().await?;
        let publisher = Publisher::open(conn).await?;
        self.topology.declare(publisher.channel()).await?;
        Ok(publisher)
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let sweep = Duration::from_millis(self.settings.sweep_interval_ms);
        let listener = tokio::spawn(listen_for_notifications(
            self.pool.clone(),
            self.wake.clone(),
        ));
        self.run_loop(sweep, &mut shutdown).await;
        listener.abort();
    }

    async fn run_loop(&self, sweep: Duration, shutdown: &mut watch::Receiver<bool>) {
        let last_prune = std::sync::Mutex::new(Instant::now());
        loop {
            self.connected.store(false, Ordering::Relaxed);
            let connect = (|| self.open())
                .retry(
                    courier_shared::queue::reconnect_backoff()
                )
                .notify(|e, after| tracing::warn!(error = %e, retry_in = ?after, "relay cannot reach RabbitMQ"));
            let publisher = tokio::select! {
                p = connect => match p {
                    Ok(p) => p,
                    Err(_) => continue,
                },
                _ = shutdown.changed() => return,
            };
            tracing::info!("relay connected to RabbitMQ");
            self.connected.store(true, Ordering::Relaxed);
            // Two lanes on the one channel: while one waits for its confirms
            // and commits, rows committed meanwhile go out through the other
            // (`SKIP LOCKED` keeps their batches apart). Either lane ending
            // means the channel is gone: both stop, and a batch cut short is
            // rolled back and sent again (consumers tolerate a repeat).
            let sweeping = (0..2).map(|_| self.lane(&publisher, sweep, &last_prune).boxed());
            let direct = (0..DIRECT_LANES).map(|_| self.direct_lane(&publisher).boxed());
            tokio::select! {
                _ = futures_util::future::select_all(sweeping.into_iter().chain(direct)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Publishes until the channel breaks: a batch, again while batches come
    /// back full, then waits for a wake-up (one lane per wake-up) or the sweep.
    async fn lane(
        &self,
        publisher: &Publisher,
        sweep: Duration,
        last_prune: &std::sync::Mutex<Instant>,
    ) {
        loop {
            loop {
                match self.publish_batch(publisher).await {
                    Ok(n) if n as i64 >= self.settings.batch_size => continue,
                    Ok(_) => break,
                    Err(BatchError::Publish(e)) => {
                        tracing::warn!(error = %e, "publishing failed; will reconnect and retry");
                        return;
                    }
                    Err(BatchError::Db(e)) => {
                        tracing::warn!(error = %e, "relay cannot read the outbox; will retry");
                        break;
                    }
                }
            }
            if !publisher.is_connected() {
                return;
            }
            let prune = {
                let mut last = last_prune.lock().unwrap_or_else(|e| e.into_inner());
                let due = last.elapsed() > Duration::from_secs(600);
                if due {
                    *last = Instant::now();
                }
                due
            };
            if prune && let Err(e) = outbox::prune(&self.pool, self.settings.retention_hours).await
            {
                tracing::warn!(error = %e, "could not prune the outbox");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sweep) => {}
            }
        }
    }

    /// Publishes handed-over rows until the channel breaks. Rows it could not
    /// publish are given back to the sweep lanes; rows published but not
    /// marked (the database unreachable) go out once more when their lease
    /// ends, which consumers tolerate.
    async fn direct_lane(&self, publisher: &Publisher) {
        let mut handed = Vec::with_capacity(DIRECT_BATCHES);
        loop {
            if self
                .direct
                .lock()
                .await
                .recv_many(&mut handed, DIRECT_BATCHES)
                .await
                == 0
            {
                // No accepts hand rows over any more (shutting down).
                return std::future::pending().await;
            }
            // Rows handed over while the broker was away may have outlived
            // their lease: a sweep takes those, so they are not sent twice.
            let fresh_after = chrono::Utc::now()
                - chrono::TimeDelta::from_std(DIRECT_LEASE_LEFT).unwrap_or_default();
            let rows: Vec<Pending> = handed
                .drain(..)
                .flatten()
                .filter(|r| r.created_at > fresh_after)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            if let Err(e) = publisher.publish_all(&self.messages(&rows)).await {
                tracing::warn!(error = %e, "publishing failed; will reconnect and retry");
                if let Err(e) = outbox::release(&self.pool, &ids).await {
                    tracing::warn!(error = %e, rows = ids.len(), "could not give outbox rows back; they go out when their lease ends");
                }
                return;
            }
            match outbox::mark_published(&self.pool, &ids).await {
                Ok(()) => self.observe(&rows),
                Err(e) => {
                    tracing::warn!(error = %e, rows = ids.len(), "published rows could not be marked sent; they go out again when their lease ends")
                }
            }
        }
    }

    /// Publishes one batch; returns how many rows it sent.
    async fn publish_batch(&self, publisher: &Publisher) -> Result<usize, BatchError> {
        let mut tx = self.pool.begin().await?;
        let rows = outbox::lock_batch(&mut tx, self.settings.batch_size).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        if let Err(e) = publisher.publish_all(&self.messages(&rows)).await {
            drop(tx);
            let _ = outbox::mark_failed(&self.pool, &ids, &e.to_string()).await;
            return Err(e.into());
        }
        outbox::mark_published(&mut *tx, &ids).await?;
        tx.commit().await?;
        self.observe(&rows);
        Ok(ids.len())
    }

    fn messages(&self, rows: &[Pending]) -> Vec<OutgoingMessage> {
        rows.iter()
            .map(|r| OutgoingMessage {
                queue: self.topology.name(&r.queue),
                body: r.payload.to_string().into_bytes(),
                expiration_ms: r.expiration_ms,
            })
            .collect()
    }

    /// Counts rows marked sent, with their delay since they were written.
    fn observe(&self, rows: &[Pending]) {
        let now = chrono::Utc::now();
        self.metrics.published.inc_by(rows.len() as u64);
        for row in rows {
            let delay = (now - row.created_at)
                .num_microseconds()
                .unwrap_or(0)
                .max(0);
            self.metrics.publish_delay.observe(delay as f64 / 1e6);
        }
        tracing::debug!(count = rows.len(), "published outbox rows");
    }
}
