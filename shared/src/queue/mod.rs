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
        let url = with_frame_max(self.url.expose());
        let url = url.as_str();
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

/// The largest AMQP frame asked of the broker, unless the URL names one.
/// lapin keeps a read and a write buffer of 32 frames per connection, so
/// RabbitMQ's default of 128 KiB cost 8 MiB per connection, and a worker
/// holds one connection per delivery kind (about 75 MiB of its 90 MiB).
/// Courier's messages are well under a kilobyte; a larger body is split
/// into frames by the protocol, as always.
pub const FRAME_MAX: u32 = 16_384;

/// `url` with `frame_max=FRAME_MAX` added to its query, unless it has one.
pub fn with_frame_max(url: &str) -> String {
    if url.contains("frame_max=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}frame_max={FRAME_MAX}")
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

#[cfg(test)]
mod tests {
    #[test]
    fn frame_max_is_asked_for_unless_the_url_names_one() {
        use super::with_frame_max;
        assert_eq!(
            with_frame_max("amqp://g:g@h:5672/%2f"),
            "amqp://g:g@h:5672/%2f?frame_max=16384"
        );
        assert_eq!(
            with_frame_max("amqps://h/%2f?heartbeat=10"),
            "amqps://h/%2f?heartbeat=10&frame_max=16384"
        );
        assert_eq!(
            with_frame_max("amqp://h/%2f?frame_max=131072"),
            "amqp://h/%2f?frame_max=131072"
        );
    }
}
