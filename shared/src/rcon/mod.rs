//! A small RCON client (Minecraft and Source dialects) that never panics and
//! never allocates without bound on what a server sends.
//!
//! - `codec`: the packet format, as a pure function over bytes (fuzzed in tests).
//! - `client`: one authenticated connection with a timeout on every call.
//! - `pool`: per-server pools bounded by the server's `max_connections`.
//! - `answers`: what servers answer: error texts and player listings.
//!
//! The `rcon` crate 0.6 panics on a declared length below 10 and has no
//! timeouts, hence this module.

pub mod answers;
pub mod client;
pub mod codec;
pub mod pool;

pub use client::{Dialect, ExecError, Framing, RconConnection, RconError, RconTarget, Timeouts};
pub use pool::{GlobalSlots, RconPool, RconPools};
