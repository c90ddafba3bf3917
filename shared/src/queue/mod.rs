//! RabbitMQ: the topology both binaries declare, the job message, and the
//! publisher the outbox relay uses.

pub mod messages;
pub mod publisher;
pub mod topology;

use lapin::{Connection, ConnectionProperties};

use crate::config::Secret;
use crate::tls::CaBundle;

/// Where the broker is: its URL (`amqp://` or `amqps://`) and the CA bundle
/// an `amqps://` connection is verified against (built-in roots when none).
#[derive(Clone, Debug)]
pub struct Broker {
    pub url: Secret,
    pub ca: CaBundle,
}

impl Broker {
    /// A broker reached without a custom CA bundle.
    pub fn plain(url: impl Into<String>) -> Self {
        Broker {
            url: Secret::new(url),
            ca: CaBundle::default(),
        }
    }

    /// Opens a connection. Reconnection is the caller's loop (with `backon`), so
    /// that a process notices, logs and recovers from a broker restart on its terms.
    pub async fn connect(&self) -> Result<Connection, lapin::Error> {
        let url = self.url.expose();
        match self.ca.pem() {
            Some(pem) if url.starts_with("amqps://") => {
                let tls = lapin::tcp::OwnedTLSConfig {
                    identity: None,
                    cert_chain: Some(pem.to_owned()),
                };
                Connection::connect_with_config(
                    url,
                    ConnectionProperties::default(),
                    tls,
                    lapin::runtime::default_runtime()?,
                )
                .await
            }
            _ => Connection::connect(url, ConnectionProperties::default()).await,
        }
    }
}

/// The backoff every reconnect loop uses: 200 ms doubling to 5 s, jittered, forever.
pub fn reconnect_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// Rejects a message without requeue (it goes to the queue's dead-letter target)
/// or with requeue; errors are ignored, since a lost channel requeues it anyway.
pub async fn nack(acker: &lapin::Acker, requeue: bool) {
    let _ = acker
        .nack(lapin::options::BasicNackOptions {
            requeue,
            ..lapin::options::BasicNackOptions::default()
        })
        .await;
}
