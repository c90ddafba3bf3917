//! Small real servers standing in for the outside world, with switches to misbehave.

pub mod discord;
pub mod http;
pub mod proxy;
pub mod rcon;
pub mod receiver;
pub mod s3;
pub mod smtp;
pub mod stripe;
pub mod supplier;
