//! RabbitMQ: the topology both binaries declare, the job message, and the
//! publisher the outbox relay uses.

pub mod messages;
pub mod publisher;
pub mod topology;

use lapin::{Connection, ConnectionProperties};

/// Opens a connection. Reconnection is the caller's loop (with `backon`), so
/// that a process notices, logs and recovers from a broker restart on its terms.
pub async fn connect(url: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(url, ConnectionProperties::default()).await
}
