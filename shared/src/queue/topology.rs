//! The one definition of Courier's queues, declared idempotently at start-up by
//! both binaries. RabbitMQ here is 3.10: every limit is set explicitly.
//!
//! - a durable quorum work queue per delivery kind, whose dead letters go
//!   (at-least-once) to the dead-letter queue; `x-delivery-limit` stops a
//!   message that crashes every consumer from being redelivered forever;
//! - delay tiers per kind (`courier.rcon.delay.5000ms`): durable classic
//!   queues with `x-message-ttl` whose dead-letter target is the work queue
//!   (classic, because a tier only holds messages for a while: a message lost
//!   there is re-published by the rescuer, which finds its delivery overdue);
//! - `courier.dead`, the dead-letter queue drained into Postgres.

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::config::RetrySettings;
use crate::domain::delivery::DeliveryKind;
use crate::domain::retry::delay_queue;

/// Deliveries of one message (to crashing consumers) before RabbitMQ dead-letters it.
pub const DELIVERY_LIMIT: i64 = 10;
/// Logical name of the dead-letter queue.
pub const DEAD_QUEUE: &str = "courier.dead";

/// Queue names with the installation's prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    retry: RetrySettings,
}

impl Topology {
    pub fn new(prefix: &str, retry: &RetrySettings) -> Self {
        Topology {
            prefix: prefix.to_owned(),
            retry: retry.clone(),
        }
    }

    /// The delay tiers (ms) of `kind`: its retry schedule's and the waiting interval.
    pub fn tiers(&self, kind: DeliveryKind) -> Vec<u64> {
        let mut tiers = self.retry.schedule(kind).tiers();
        tiers.push(self.retry.waiting.interval_ms);
        tiers.sort_unstable();
        tiers.dedup();
        tiers
    }

    /// The broker's name for a logical queue (`courier.rcon` → `<prefix>courier.rcon`).
    pub fn name(&self, logical: &str) -> String {
        format!("{}{}", self.prefix, logical)
    }

    pub fn work_queue(&self, kind: DeliveryKind) -> String {
        self.name(kind.queue())
    }

    pub fn dead_queue(&self) -> String {
        self.name(DEAD_QUEUE)
    }

    /// Every queue this topology declares (for tests that clean up after themselves).
    pub fn all_queues(&self) -> Vec<String> {
        let mut names: Vec<String> = DeliveryKind::ALL
            .iter()
            .map(|k| self.work_queue(*k))
            .collect();
        for kind in DeliveryKind::ALL {
            for tier in self.tiers(*kind) {
                names.push(self.name(&delay_queue(*kind, tier)));
            }
        }
        names.push(self.dead_queue());
        names
    }

    /// Declares every queue; safe to repeat, and from several processes at once.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), string("quorum"));
        channel
            .queue_declare(self.dead_queue().into(), durable, dead_args)
            .await?;
        for kind in DeliveryKind::ALL {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), string("quorum"));
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            args.insert("x-dead-letter-exchange".into(), string(""));
            args.insert(
                "x-dead-letter-routing-key".into(),
                string(&self.dead_queue()),
            );
            // At-least-once dead-lettering needs reject-publish overflow on the source queue.
            args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
            args.insert("x-overflow".into(), string("reject-publish"));
            channel
                .queue_declare(self.work_queue(*kind).into(), durable, args)
                .await?;
            for tier in self.tiers(*kind) {
                let mut args = FieldTable::default();
                args.insert(
                    "x-message-ttl".into(),
                    AMQPValue::LongLongInt(i64::try_from(tier).unwrap_or(i64::MAX)),
                );
                args.insert("x-dead-letter-exchange".into(), string(""));
                args.insert(
                    "x-dead-letter-routing-key".into(),
                    string(&self.work_queue(*kind)),
                );
                channel
                    .queue_declare(self.name(&delay_queue(*kind, tier)).into(), durable, args)
                    .await?;
            }
        }
        Ok(())
    }
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// A short string for lapin's name arguments.
pub fn short(s: &str) -> ShortString {
    ShortString::from(s)
}
