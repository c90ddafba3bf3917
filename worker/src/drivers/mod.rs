//! Delivery drivers. Each runs one delivery and classifies the result
//! (`ErrorClass`), so the retry decision never depends on parsing messages.

pub mod alert;
pub mod discord;
pub mod email;
pub mod payment;
pub mod rcon;
pub mod supplier;
pub mod webhook;

pub use courier_shared::domain::fulfilment::DriverOutcome;
