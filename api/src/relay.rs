//! The outbox relay: publishes outbox rows with publisher confirms, then marks
//! them sent in the same transaction that locked them. Woken right after an
//! order commits, and sweeping every `relay.sweep_interval_ms` anyway, so rows
//! written while RabbitMQ was unreachable go out once it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::Retryable;
use courier_shared::config::RelaySettings;
use courier_shared::db::listen::Heard;
use courier_shared::db::outbox;
use courier_shared::queue::publisher::{OutgoingMessage, PublishError, Publisher};
use courier_shared::queue::{Broker, topology::Topology};
use sqlx::PgPool;
use tokio::sync::{Notify, watch};

pub struct Relay {
    pub pool: PgPool,
    pub broker: Broker,
    pub topology: Topology,
    pub settings: RelaySettings,
    pub wake: Arc<Notify>,
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
            let lanes = [0, 1].map(|_| self.lane(&publisher, sweep, &last_prune));
            tokio::select! {
                _ = futures_util::future::select_all(lanes.into_iter().map(Box::pin)) => {}
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

    /// Publishes one batch; returns how many rows it sent.
    async fn publish_batch(&self, publisher: &Publisher) -> Result<usize, BatchError> {
        let mut tx = self.pool.begin().await?;
        let rows = outbox::lock_batch(&mut tx, self.settings.batch_size).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let messages: Vec<OutgoingMessage> = rows
            .iter()
            .map(|r| OutgoingMessage {
                queue: self.topology.name(&r.queue),
                body: r.payload.to_string().into_bytes(),
                expiration_ms: r.expiration_ms,
            })
            .collect();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        if let Err(e) = publisher.publish_all(&messages).await {
            drop(tx);
            let _ = outbox::mark_failed(&self.pool, &ids, &e.to_string()).await;
            return Err(e.into());
        }
        outbox::mark_published(&mut tx, &ids).await?;
        tx.commit().await?;
        let now = chrono::Utc::now();
        self.metrics.published.inc_by(ids.len() as u64);
        for row in &rows {
            let delay = (now - row.created_at)
                .num_microseconds()
                .unwrap_or(0)
                .max(0);
            self.metrics.publish_delay.observe(delay as f64 / 1e6);
        }
        tracing::debug!(count = ids.len(), "published outbox rows");
        Ok(ids.len())
    }
}
