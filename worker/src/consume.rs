//! The consumer of one delivery kind: decode → claim → run the driver →
//! record (one transaction) → ack. A message is acked only after its outcome is
//! committed, so a crash at any point leaves either a redelivered message (the
//! claim makes it harmless) or a lease for the rescuer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use courier_shared::config::RetrySettings;
use courier_shared::db::deliveries::{Claimed, NotClaimed, Recorded, Success};
use courier_shared::domain::delivery::{DeliveryKind, DeliveryStatus, Purpose};
use courier_shared::error::{DbError, ErrorClass};
use courier_shared::queue::messages::JobMessage;
use courier_shared::queue::topology::Topology;
use courier_shared::service::fulfilment;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::drivers::rcon::RconDriver;
use courier_shared::domain::fulfilment::{DriverOutcome, decide};
use courier_shared::metrics::{KindOutcome, KindTarget, QueueLabel};

/// Counters a test or `/metrics` can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Attempts recorded (any outcome).
    pub attempts: AtomicU64,
    /// Messages acked without running anything (already done, or leased elsewhere).
    pub skipped: AtomicU64,
    /// Messages that could not be decoded and were dead-lettered.
    pub poison: AtomicU64,
    /// Drivers that panicked (recorded as failed attempts).
    pub panics: AtomicU64,
}

/// Everything a job needs; shared by all consumers of the process.
pub struct Context {
    pub pool: PgPool,
    pub worker_id: String,
    pub lease_seconds: u32,
    pub shutdown_grace: Duration,
    pub retry: RetrySettings,
    pub topology: Topology,
    pub rcon: RconDriver,
    pub discord: crate::drivers::discord::DiscordDriver,
    pub supplier: crate::drivers::supplier::SupplierDriver,
    pub payment: crate::drivers::payment::PaymentDriver,
    pub webhook: crate::drivers::webhook::WebhookDriver,
    pub email: crate::drivers::email::EmailDriver,
    pub alert: crate::drivers::alert::AlertDriver,
    pub download: crate::drivers::download::DownloadDriver,
    /// For events about a payment the rescuer re-tries.
    pub payment_policy: courier_shared::service::payments::PaymentPolicy,
    pub limits: Arc<courier_shared::limits::Limits>,
    pub stats: Stats,
    /// Writes succeeded attempts in batches.
    pub completer: crate::completer::Completer,
    pub broker: courier_shared::queue::Broker,
    pub metrics: crate::metrics::WorkerMetrics,
}

/// What to do with the message once the outcome is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    Ack,
    /// The delivery is dead: reject without requeue, so the message reaches
    /// `courier.dead` (at-least-once) and the recorder attaches it.
    DeadLetter,
}

/// Consumes `queue` until `shutdown`, reconnecting with backoff when the broker
/// goes away. In-flight jobs finish before this returns.
pub async fn run(
    ctx: Arc<Context>,
    kind: DeliveryKind,
    concurrency: u16,
    mut shutdown: watch::Receiver<bool>,
) {
    let topology = ctx.topology.clone();
    let queue = topology.work_queue(kind);
    let consumer_tag = format!("{}-{}", ctx.worker_id, kind);
    let mut jobs = JoinSet::new();
    // Drivers running at once: `concurrency`. The prefetch window is twice
    // that, and a message is claimed as soon as a claim lane is free, not
    // when a driver slot is: so when a driver returns, a claimed job is
    // already waiting for its slot (no claim round trip between two jobs),
    // and the slot is not held while the outcome commits.
    let prefetch = concurrency.saturating_mul(2);
    let slots = Arc::new(Semaphore::new(usize::from(concurrency)));
    loop {
        let open = || async {
            let conn = ctx.broker.connect().await?;
            let channel = conn.create_channel().await?;
            topology.declare(&channel).await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    consumer_tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((conn, channel, consumer))
        };
        let opened = open
            .retry(
                courier_shared::queue::reconnect_backoff()
            )
            .notify(|e, after| tracing::warn!(error = %e, retry_in = ?after, %queue, "worker cannot reach RabbitMQ"));
        let (_conn, channel, mut consumer) = tokio::select! {
            r = opened => match r {
                Ok(parts) => parts,
                Err(_) => continue,
            },
            _ = shutdown.changed() => break,
        };
        tracing::info!(%queue, "consuming");
        let _connected = crate::metrics::ConnectedGuard::new(&ctx.metrics.consumers_connected);
        // Claims in flight at once. While they commit, the messages that
        // arrive wait in `pending` and the next free lane claims them all
        // together: under load a claim takes many messages, idle it takes
        // each at once (no timer). Without this, a full prefetch window hands
        // over one message per finished job and every claim is of one.
        let lanes = Arc::new(tokio::sync::Semaphore::new(CLAIM_LANES));
        let mut pending: Vec<Delivery> = Vec::new();
        loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(first)) => {
                        pending.push(first);
                        if let Some(e) = take_ready(&mut consumer, &mut pending, usize::from(prefetch)) {
                            tracing::warn!(error = %e, %queue, "consumer failed; reconnecting");
                            spawn_batch(&ctx, (kind, &slots), &mut jobs, queue.as_str(), &mut pending, None);
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, %queue, "consumer failed; reconnecting");
                        spawn_batch(&ctx, (kind, &slots), &mut jobs, queue.as_str(), &mut pending, None);
                        break;
                    }
                    None => {
                        tracing::warn!(%queue, "consumer closed; reconnecting");
                        spawn_batch(&ctx, (kind, &slots), &mut jobs, queue.as_str(), &mut pending, None);
                        break;
                    }
                },
                Ok(lane) = lanes.clone().acquire_owned(), if !pending.is_empty() => {
                    let broken = take_ready(&mut consumer, &mut pending, usize::from(prefetch));
                    spawn_batch(&ctx, (kind, &slots), &mut jobs, queue.as_str(), &mut pending, Some(lane));
                    if let Some(e) = broken {
                        tracing::warn!(error = %e, %queue, "consumer failed; reconnecting");
                        break;
                    }
                }
                Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
                _ = shutdown.changed() => {
                    // Stop receiving, give in-flight jobs the grace period, then
                    // close: RabbitMQ requeues every unacked message, and the
                    // lease of a job cut short goes to the rescuer.
                    let _ = channel
                        .basic_cancel(consumer_tag.as_str().into(), lapin::options::BasicCancelOptions::default())
                        .await;
                    let drained = tokio::time::timeout(ctx.shutdown_grace, async {
                        while jobs.join_next().await.is_some() {}
                    })
                    .await;
                    if drained.is_err() {
                        tracing::warn!(remaining = jobs.len(), "grace period over; abandoning in-flight jobs to redelivery");
                        jobs.abort_all();
                    }
                    let _ = channel.close(200, "worker shutting down".into()).await;
                    return;
                }
            }
        }
    }
    while jobs.join_next().await.is_some() {}
}

/// Claim transactions one consumer runs at once (see `run`).
const CLAIM_LANES: usize = 2;

/// Moves the messages already received into `pending`, up to `max`; says
/// why the consumer broke if it did.
fn take_ready(
    consumer: &mut lapin::Consumer,
    pending: &mut Vec<Delivery>,
    max: usize,
) -> Option<String> {
    while pending.len() < max {
        match consumer.next().now_or_never() {
            Some(Some(Ok(d))) => pending.push(d),
            Some(Some(Err(e))) => return Some(e.to_string()),
            Some(None) => return Some("consumer closed".into()),
            None => break,
        }
    }
    None
}

/// Claims and runs everything `pending` holds, holding `lane` for the claim.
fn spawn_batch(
    ctx: &Arc<Context>,
    (kind, slots): (DeliveryKind, &Arc<Semaphore>),
    jobs: &mut JoinSet<()>,
    queue: &str,
    pending: &mut Vec<Delivery>,
    lane: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    if pending.is_empty() {
        return;
    }
    let batch = std::mem::take(pending);
    observe_lag(ctx, queue, &batch);
    let (ctx, slots) = (ctx.clone(), slots.clone());
    jobs.spawn(async move { handle_batch(ctx, (kind, slots), batch, lane).await });
}

/// Decodes, claims and runs the messages that arrived together: one claim
/// for the batch (the claim lane is given back once it committed), then
/// every claimed job concurrently; each message is acked once its outcome
/// is committed.
async fn handle_batch(
    ctx: Arc<Context>,
    (kind, slots): (DeliveryKind, Arc<Semaphore>),
    deliveries: Vec<Delivery>,
    lane: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let mut jobs = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match serde_json::from_slice::<JobMessage>(&delivery.data) {
            Ok(m) => {
                if m.kind != kind {
                    tracing::warn!(delivery_id = %m.delivery_id, expected = %kind, got = %m.kind, "message on the wrong queue");
                }
                jobs.push((m, delivery));
            }
            Err(e) => {
                // Poison: never requeue; the queue dead-letters it to `courier.dead`.
                tracing::error!(error = %e, "undecodable job message; dead-lettering it");
                ctx.stats.poison.fetch_add(1, Ordering::Relaxed);
                ctx.metrics.poison.inc();
                courier_shared::queue::nack(&delivery.acker, false).await;
            }
        }
    }
    if jobs.is_empty() {
        return;
    }
    let ids: Vec<Uuid> = jobs.iter().map(|(m, _)| m.delivery_id).collect();
    ctx.metrics.claim_batch.observe(ids.len() as f64);
    let claims = match fulfilment::claim(&ctx.pool, &ids, &ctx.worker_id, ctx.lease_seconds).await {
        Ok(claims) => claims.into_iter().map(|(_, c)| Ok(c)).collect(),
        Err(e) if jobs.len() > 1 => {
            // One bad row must not hold up the rest: claim them one by one.
            tracing::warn!(error = %e, batch = jobs.len(), "batch claim failed; claiming one by one");
            let mut each = Vec::with_capacity(ids.len());
            for id in &ids {
                each.push(
                    fulfilment::claim(
                        &ctx.pool,
                        std::slice::from_ref(id),
                        &ctx.worker_id,
                        ctx.lease_seconds,
                    )
                    .await
                    .map(|mut c| c.pop().map_or(Err(NotClaimed::Missing), |(_, c)| c)),
                );
            }
            each
        }
        Err(e) => vec![Err(e)],
    };
    drop(lane);
    let runs = jobs
        .into_iter()
        .zip(claims)
        .map(|((message, delivery), claim)| {
            let (ctx, slots) = (ctx.clone(), &slots);
            async move {
                let disposition = match claim {
                    Ok(claim) => run_claimed(&ctx, &message, claim, slots).await,
                    Err(e) => Err(e),
                };
                settle(&message, &delivery, disposition).await;
            }
        });
    futures_util::future::join_all(runs).await;
}

/// Acks, dead-letters or requeues a message once its outcome is known.
async fn settle(
    message: &JobMessage,
    delivery: &Delivery,
    disposition: Result<Disposition, DbError>,
) {
    match disposition {
        Ok(Disposition::DeadLetter) => {
            courier_shared::queue::nack(&delivery.acker, false).await;
        }
        Ok(Disposition::Ack) => {
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                // The outcome is committed; a redelivery will be skipped by the claim.
                tracing::warn!(error = %e, delivery_id = %message.delivery_id, "ack failed");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, delivery_id = %message.delivery_id, "job failed before its outcome was recorded; requeueing");
            // Back off a little so a database outage does not spin the queue;
            // `x-delivery-limit` bounds how often this can happen to one message.
            tokio::time::sleep(Duration::from_secs(1)).await;
            courier_shared::queue::nack(&delivery.acker, true).await;
        }
    }
}

async fn run_claimed(
    ctx: &Arc<Context>,
    message: &JobMessage,
    claim: Result<Claimed, NotClaimed>,
    slots: &Semaphore,
) -> Result<Disposition, DbError> {
    let claimed = match claim {
        Ok(c) => c,
        Err(reason) => {
            ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
            ctx.metrics.skipped.inc();
            match reason {
                NotClaimed::Missing => {
                    tracing::warn!(delivery_id = %message.delivery_id, "no such delivery; dropping message")
                }
                NotClaimed::NotClaimable(status) => {
                    tracing::debug!(delivery_id = %message.delivery_id, %status, "delivery not claimable; skipping duplicate")
                }
            }
            return Ok(Disposition::Ack);
        }
    };

    // The lease runs from here. Jobs get driver slots in the order they were
    // claimed (the semaphore is FIFO); one that waited a quarter of its lease
    // for a slot does not run but comes back shortly, at no cost to its retry
    // budget, so every driver keeps most of its lease (and the RCON driver
    // ends by the lease's own deadline, counted from here).
    let leased_at = tokio::time::Instant::now();
    let slot_wait = Duration::from_secs(u64::from(ctx.lease_seconds)) / 4;
    let outcome = match tokio::time::timeout(slot_wait, slots.acquire()).await {
        Ok(slot) => {
            let started = std::time::Instant::now();
            let outcome = run_driver(ctx, &claimed, leased_at).await;
            // The work is done; recording it waits on the database, not on
            // a slot (the unacked message still counts against the prefetch).
            drop(slot);
            ctx.metrics
                .attempt_duration
                .get_or_create(&KindTarget {
                    kind: claimed.kind.to_string(),
                    target: claimed.target.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            outcome
        }
        Err(_) => DriverOutcome::Failed {
            class: ErrorClass::Busy,
            error: format!(
                "all of this worker's {} job slots stayed busy for {slot_wait:?}; not run, tried again shortly",
                claimed.kind
            ),
            response: None,
            maybe_sent: false,
        },
    };
    let schedule = ctx.retry.schedule(claimed.kind);
    let record = decide(
        &outcome,
        &claimed,
        (schedule, &ctx.retry.waiting),
        rand::random(),
    );
    tracing::debug!(delivery_id = %claimed.id, attempt = claimed.attempt, outcome = %record.outcome, next = %record.next, "attempt finished");

    // The common case goes through the batch completer; whatever it declines
    // (or a batch that failed) is recorded one by one below.
    if let (DeliveryStatus::Succeeded, Purpose::Deliver, Some(order_id)) =
        (record.next, claimed.purpose, claimed.order_id)
    {
        let success = Success {
            id: claimed.id,
            order_id,
            attempt: claimed.attempt,
            response: record.response.clone(),
        };
        if ctx.completer.complete(success).await == Ok(true) {
            ctx.stats.attempts.fetch_add(1, Ordering::Relaxed);
            count_attempt(ctx, &claimed, &record.outcome.to_string());
            return Ok(Disposition::Ack);
        }
    }

    // The action has happened (or not); the record must reach the database.
    // Retry it through short outages, within the lease.
    let write = || fulfilment::record(&ctx.pool, &claimed, &ctx.worker_id, &record);
    let recorded = write
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_total_delay(Some(Duration::from_secs(u64::from(ctx.lease_seconds) / 2))),
        )
        .when(|e| matches!(e, DbError::Sqlx(_)))
        .notify(|e, after| tracing::warn!(error = %e, retry_in = ?after, "could not record the attempt"))
        .await?;
    ctx.stats.attempts.fetch_add(1, Ordering::Relaxed);
    count_attempt(ctx, &claimed, &record.outcome.to_string());
    Ok(
        if record.next == DeliveryStatus::Dead && recorded == Recorded::Applied {
            Disposition::DeadLetter
        } else {
            Disposition::Ack
        },
    )
}

fn count_attempt(ctx: &Context, claimed: &Claimed, outcome: &str) {
    ctx.metrics
        .deliveries
        .get_or_create(&KindOutcome {
            kind: claimed.kind.to_string(),
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// Publish → receipt, from the relay's `x-published-ms` header; messages that
/// came back through a delay tier (they carry `x-death`) or were delivered
/// before (requeued, or a consumer died holding them) are left out: their
/// wait was the retry's, not the queue's.
fn observe_lag(ctx: &Context, queue: &str, batch: &[Delivery]) {
    let now = chrono::Utc::now().timestamp_millis();
    let lag = ctx.metrics.consumer_lag.get_or_create(&QueueLabel {
        queue: queue.to_owned(),
    });
    for delivery in batch {
        if delivery.redelivered {
            continue;
        }
        let Some(headers) = delivery.properties.headers() else {
            continue;
        };
        let headers = headers.inner();
        if headers.contains_key("x-death") {
            continue;
        }
        if let Some(published) = headers
            .get(courier_shared::queue::publisher::PUBLISHED_HEADER)
            .and_then(|v| v.as_long_long_int())
        {
            lag.observe((now - published).max(0) as f64 / 1000.0);
        }
    }
}

/// Runs the driver in its own task so a panic becomes a failed attempt.
async fn run_driver(
    ctx: &Arc<Context>,
    claimed: &Claimed,
    leased_at: tokio::time::Instant,
) -> DriverOutcome {
    let task_ctx = ctx.clone();
    let kind = claimed.kind;
    let payload = claimed.payload.clone();
    let delivery_id = claimed.id;
    let version = claimed.target_version.clone();
    let attempt = claimed.attempt;
    let order_id = claimed.order_id;
    let task = tokio::spawn(async move {
        match kind {
            DeliveryKind::Rcon => {
                task_ctx
                    .rcon
                    .run(
                        &task_ctx.pool,
                        &task_ctx.limits,
                        &payload,
                        (version.as_deref(), leased_at),
                    )
                    .await
            }
            DeliveryKind::DiscordRole => task_ctx.discord.run(&payload).await,
            DeliveryKind::SupplierKey => {
                task_ctx
                    .supplier
                    .run(&task_ctx.pool, delivery_id, &payload)
                    .await
            }
            DeliveryKind::GatewayRefund => task_ctx.payment.run(&payload).await,
            DeliveryKind::Webhook => {
                task_ctx
                    .webhook
                    .run(&task_ctx.pool, (delivery_id, attempt), &payload)
                    .await
            }
            DeliveryKind::Email => match order_id {
                Some(order_id) => task_ctx.email.run(&task_ctx.pool, order_id, &payload).await,
                None => DriverOutcome::permanent("an e-mail delivery without an order"),
            },
            DeliveryKind::Download => {
                task_ctx
                    .download
                    .run(&task_ctx.pool, delivery_id, &payload)
                    .await
            }
            DeliveryKind::Alert => {
                task_ctx
                    .alert
                    .run(&task_ctx.pool, &task_ctx.email, &payload)
                    .await
            }
        }
    });
    match task.await {
        Ok(outcome) => outcome,
        Err(e) => {
            ctx.stats.panics.fetch_add(1, Ordering::Relaxed);
            tracing::error!(delivery_id = %claimed.id, error = %e, "driver panicked");
            DriverOutcome::Failed {
                class: ErrorClass::Transient,
                error: format!("the driver crashed: {e}"),
                response: None,
                maybe_sent: true,
            }
        }
    }
}
