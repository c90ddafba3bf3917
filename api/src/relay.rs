//! The outbox relay: publishes outbox rows with publisher confirms and marks
//! them sent. Two kinds of lanes share its one channel:
//!
//! - **direct** lanes publish the rows this process's accepts just wrote,
//!   handed over in memory right after their commit (`outbox::Handoff`); the
//!   rows are leased to this process (`publishing_until`), so no lock and no
//!   read is needed. Confirmed rows are marked sent by one **marker**, which
//!   gathers them for `relay.mark_linger_ms` and marks them in one statement;
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

/// Most rows one mark statement carries.
const MARK_MOST: usize = 1024;

/// A row the broker confirmed, waiting for the marker.
struct Confirmed {
    id: i64,
    /// When the broker confirmed it, by this process's clock: the mark
    /// writes `published_at` as that moment, not as its own.
    at: Instant,
    /// Written → confirmed, for the publish-delay metric.
    delay: Duration,
}

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
        // The marker outlives the lanes: once they stop (the sender is
        // dropped with them), it marks what was confirmed and ends.
        let (marks, marker) = mpsc::unbounded_channel();
        tokio::join!(
            self.run_loop(sweep, &mut shutdown, marks),
            self.marker(marker)
        );
        listener.abort();
    }

    async fn run_loop(
        &self,
        sweep: Duration,
        shutdown: &mut watch::Receiver<bool>,
        marks: mpsc::UnboundedSender<Vec<Confirmed>>,
    ) {
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
            let direct = (0..DIRECT_LANES).map(|_| self.direct_lane(&publisher, &marks).boxed());
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

    /// Publishes handed-over rows until the channel breaks, and passes the
    /// confirmed ones to the marker. Rows it could not publish are given
    /// back to the sweep lanes.
    async fn direct_lane(
        &self,
        publisher: &Publisher,
        marks: &mpsc::UnboundedSender<Vec<Confirmed>>,
    ) {
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
            let at = Instant::now();
            let now = chrono::Utc::now();
            let confirmed = rows
                .iter()
                .map(|r| Confirmed {
                    id: r.id,
                    at,
                    delay: (now - r.created_at).to_std().unwrap_or_default(),
                })
                .collect();
            // The marker runs until every lane has stopped.
            let _ = marks.send(confirmed);
        }
    }

    /// Marks confirmed rows sent: whatever arrives within
    /// `relay.mark_linger_ms` of the first (up to `MARK_MOST`) in one
    /// statement, until every direct lane has stopped. Nothing waits for a
    /// mark (the consumer has the message once the broker confirmed it); it
    /// only keeps a sweep from sending the row again when its lease ends.
    /// Marking each lane's rows as soon as they were confirmed cost a
    /// transaction per order at 500 orders/s ("Publishing" in
    /// docs/hot-path.md). Rows it cannot mark (the database unreachable) go
    /// out once more when their lease ends, which consumers tolerate.
    async fn marker(&self, mut confirmed: mpsc::UnboundedReceiver<Vec<Confirmed>>) {
        let linger = Duration::from_millis(self.settings.mark_linger_ms);
        let mut batch: Vec<Confirmed> = Vec::new();
        while let Some(first) = confirmed.recv().await {
            batch.extend(first);
            let until = tokio::time::Instant::now() + linger;
            while batch.len() < MARK_MOST {
                match tokio::time::timeout_at(until, confirmed.recv()).await {
                    Ok(Some(more)) => batch.extend(more),
                    Ok(None) | Err(_) => break,
                }
            }
            let now = Instant::now();
            let ids: Vec<i64> = batch.iter().map(|c| c.id).collect();
            let ages: Vec<i64> = batch
                .iter()
                .map(|c| i64::try_from(now.duration_since(c.at).as_micros()).unwrap_or(i64::MAX))
                .collect();
            match outbox::mark_confirmed(&self.pool, &ids, &ages).await {
                Ok(()) => self.observe(batch.iter().map(|c| c.delay)),
                Err(e) => {
                    tracing::warn!(error = %e, rows = ids.len(), "published rows could not be marked sent; they go out again when their lease ends")
                }
            }
            batch.clear();
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
        outbox::mark_published(&mut tx, &ids).await?;
        tx.commit().await?;
        let now = chrono::Utc::now();
        self.observe(
            rows.iter()
                .map(|r| (now - r.created_at).to_std().unwrap_or_default()),
        );
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

    /// Counts rows marked sent, with their delays from written to confirmed.
    fn observe(&self, delays: impl Iterator<Item = Duration>) {
        let mut count = 0;
        for delay in delays {
            count += 1;
            self.metrics.publish_delay.observe(delay.as_secs_f64());
        }
        self.metrics.published.inc_by(count);
        tracing::debug!(count, "published outbox rows");
    }
}
