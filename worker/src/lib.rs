//! `courier-worker`: consumes job messages and runs deliveries.
//!
//! # Layout
//! - `startup`: connects, declares the topology, starts one consumer per
//!   delivery kind that has a driver; returns a handle with stats and `stop`.
//! - `consume`: the consumer loop: decode, claim, run the driver, record, ack.
//! - `drivers/`: one module per delivery kind; each returns a classified outcome.
//! - `recorder`: drains `courier.dead` into the `dead_letters` table.
//! - `rescuer`: takes back expired leases and re-publishes lost messages.

pub mod consume;
pub mod drivers;
pub mod recorder;
pub mod rescuer;
pub mod startup;
