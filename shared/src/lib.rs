//! Courier's shared library: everything both binaries need.
//!
//! # Layout
//! - `config`, `telemetry`, `error`: start-up and cross-cutting types.
//! - `domain/`: pure types and state machines (orders, items, deliveries,
//!   refunds, payment events, disputes), money in minor units and the rule
//!   that a payment pays an order, order numbers, command templates and
//!   fulfilment actions.
//! - `db/`: sqlx access; every status change is a guarded UPDATE that names the
//!   status it expects, and writes its timeline event in the same transaction.
//! - `queue/`: RabbitMQ topology (one definition, declared by both binaries),
//!   message types, connections and the publisher.
//! - `service/`: the use cases (accept an order, claim and record a delivery,
//!   payments and refunds, what this installation can deliver) that the API
//!   handlers and the worker consumers call.
//! - `rcon/`: the RCON client (framing per server), what servers answer, and
//!   connection pools with slots across workers.
//! - `lanes`: batches without a timer (group commit, status reads, the completer).
//! - `redis`, `limits`: Redis coordination across replicas (semaphores, rates, pauses).
//! - `crypto`: CD keys encrypted at rest.
//! - `shutdown`: SIGTERM/SIGINT.

pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod error;
pub mod lanes;
pub mod limits;
pub mod metrics;
pub mod queue;
pub mod rcon;
pub mod redis;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
