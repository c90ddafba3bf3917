//! Publishing with publisher confirms: a message counts as sent only once the
//! broker has confirmed it (written to the quorum queue's majority).

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not accept the message for `{0}` (nack)")]
    Nacked(String),
    #[error("no queue `{0}` to route to (message returned)")]
    Unroutable(String),
}

/// Header carrying the publish time in Unix milliseconds (the workers'
/// `courier_consumer_lag_seconds`).
pub const PUBLISHED_HEADER: &str = "x-published-ms";

/// One message to publish to `queue` (the broker's name, prefix included).
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub queue: String,
    pub body: Vec<u8>,
    /// Per-message TTL, for messages bound for a delay tier.
    pub expiration_ms: Option<i64>,
}

/// A channel in confirm mode.
#[derive(Debug)]
pub struct Publisher {
    // Kept so the channel's connection lives as long as the publisher.
    _connection: Connection,
    channel: Channel,
}

impl Publisher {
    pub async fn open(connection: Connection) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            _connection: connection,
            channel,
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub fn is_connected(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes each message persistently, then waits for every confirm.
    /// All-or-error: on error the caller treats the whole batch as unsent (a
    /// message that did go out is then sent again, which consumers tolerate).
    pub async fn publish_all(&self, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        let mut pending = Vec::with_capacity(messages.len());
        for OutgoingMessage {
            queue,
            body,
            expiration_ms,
        } in messages
        {
            let mut headers = lapin::types::FieldTable::default();
            headers.insert(
                PUBLISHED_HEADER.into(),
                lapin::types::AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
            );
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_headers(headers);
            if let Some(ms) = expiration_ms {
                props = props.with_expiration(ms.to_string().as_str().into());
            }
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    props,
                )
                .await?;
            pending.push((queue, confirm));
        }
        for (queue, confirm) in pending {
            match confirm.await? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) => return Err(PublishError::Unroutable(queue.clone())),
                Confirmation::Nack(_) | Confirmation::NotRequested => {
                    return Err(PublishError::Nacked(queue.clone()));
                }
            }
        }
        Ok(())
    }
}
