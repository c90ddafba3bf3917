//! `courier-worker`: consumes job messages and runs deliveries.
//!
//! # Layout
//! - `startup`: connects, declares the topology, starts one consumer per
//!   delivery kind that has a driver; returns a handle with stats and `stop`.
//! - `consume`: the consumer loop: decode, claim the messages that arrived
//!   together in one statement, run each driver, record, ack.
//! - `completer`: writes succeeded attempts in batches (one transaction each).
//! - `drivers/`: one module per delivery kind; each returns a classified outcome.
//! - `recorder`: drains `courier.dead` into the `dead_letters` table.
//! - `rescuer`: takes back expired leases and re-publishes lost messages.
//! - `http`, `metrics`: the worker's listener (`/healthz`, `/readyz`, `/metrics`) and its series.

pub mod completer;
pub mod consume;
pub mod drivers;
pub mod http;
pub mod metrics;
pub mod recorder;
pub mod rescuer;
pub mod startup;
