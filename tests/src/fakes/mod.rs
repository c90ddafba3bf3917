//! Small real servers standing in for the outside world, with switches to misbehave.

pub mod proxy;
pub mod rcon;
