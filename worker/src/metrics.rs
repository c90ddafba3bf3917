//! The worker's series, served by `http` on `worker.http_bind`.
//!
//! | series | what |
//! |---|---|
//! | `courier_deliveries_total{kind,outcome}` | attempts recorded, by the attempt's outcome |
//! | `courier_attempt_duration_seconds{kind,target}` | time the attempt took, from claim to outcome (for RCON including the wait for a connection slot); `target` is the delivery's target as dead letters name it (RCON: the game server's id) |
//! | `courier_consumer_lag_seconds{queue}` | publish → received by this worker, first deliveries only |
//! | `courier_claim_batch_size` | messages claimed in one statement |
//! | `courier_completer_batch_size` | successes written in one transaction |
//! | `courier_messages_skipped_total` | acked without running (done already, or leased elsewhere) |
//! | `courier_poison_messages_total` | undecodable messages dead-lettered |
//! | `courier_rescues_total{outcome}` | expired leases taken back by the rescuer |
//! | `courier_redis_fallback_active` | 1 while Redis is unreachable and local limits apply |
//! | `courier_consumers_connected` | consumers holding a broker channel right now |

use std::sync::atomic::AtomicI64;

use courier_shared::metrics::{
    KindOutcome, KindTarget, OutcomeLabel, QueueLabel, Registry, seconds_histogram, size_histogram,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Unit;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct WorkerMetrics {
    registry: Registry,
    pub deliveries: Family<KindOutcome, Counter>,
    pub attempt_duration: HistogramFamily<KindTarget>,
    pub consumer_lag: HistogramFamily<QueueLabel>,
    pub claim_batch: Histogram,
    pub completer_batch: Histogram,
    pub skipped: Counter,
    pub poison: Counter,
    pub rescues: Family<OutcomeLabel, Counter>,
    pub redis_fallback: Gauge<i64, AtomicI64>,
    pub consumers_connected: Gauge<i64, AtomicI64>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("courier");
        let deliveries = Family::<KindOutcome, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts recorded, by kind and outcome",
            deliveries.clone(),
        );
        let attempt_duration: HistogramFamily<KindTarget> =
            Family::new_with_constructor(seconds_histogram);
        registry.register_with_unit(
            "attempt_duration",
            "Time a driver took for one attempt, by kind and target",
            Unit::Seconds,
            attempt_duration.clone(),
        );
        let consumer_lag: HistogramFamily<QueueLabel> =
            Family::new_with_constructor(seconds_histogram);
        registry.register_with_unit(
            "consumer_lag",
            "Time from publish to receipt by a worker, first deliveries only",
            Unit::Seconds,
            consumer_lag.clone(),
        );
        let claim_batch = size_histogram();
        registry.register(
            "claim_batch_size",
            "Messages claimed in one statement",
            claim_batch.clone(),
        );
        let completer_batch = size_histogram();
        registry.register(
            "completer_batch_size",
            "Succeeded attempts written in one transaction",
            completer_batch.clone(),
        );
        let skipped = Counter::default();
        registry.register(
            "messages_skipped",
            "Messages acked without running (done already or leased elsewhere)",
            skipped.clone(),
        );
        let poison = Counter::default();
        registry.register(
            "poison_messages",
            "Undecodable messages dead-lettered",
            poison.clone(),
        );
        let rescues = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "rescues",
            "Expired leases taken back by the rescuer, by what became of the delivery",
            rescues.clone(),
        );
        let redis_fallback = Gauge::default();
        registry.register(
            "redis_fallback_active",
            "1 while Redis is unreachable and conservative local limits apply",
            redis_fallback.clone(),
        );
        let consumers_connected = Gauge::default();
        registry.register(
            "consumers_connected",
            "Consumers holding a broker channel",
            consumers_connected.clone(),
        );
        WorkerMetrics {
            registry,
            deliveries,
            attempt_duration,
            consumer_lag,
            claim_batch,
            completer_batch,
            skipped,
            poison,
            rescues,
            redis_fallback,
            consumers_connected,
        }
    }
}

impl WorkerMetrics {
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Counts a consumer as connected while it holds a channel.
pub struct ConnectedGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> ConnectedGuard<'a> {
    pub fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        ConnectedGuard(gauge)
    }
}

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
