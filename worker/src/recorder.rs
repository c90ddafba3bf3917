//! The dead-letter recorder: drains `courier.dead` into Postgres. A message
//! for a delivery that is already recorded dead is attached to its dead letter;
//! any other (poison, delivery limit reached, unknown delivery) opens a dead
//! letter whose reason comes from the message's `x-death` header.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use courier_shared::db::dead_letters::{self, QueuedDeadLetter};
use courier_shared::queue::messages::JobMessage;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::consume::Context;

pub async fn run(ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let queue = ctx.topology.dead_queue();
    loop {
        let open = || async {
            let conn = ctx.broker.connect().await?;
            let channel = conn.create_channel().await?;
            ctx.topology.declare(&channel).await?;
            channel.basic_qos(8, BasicQosOptions::default()).await?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("{}-recorder", ctx.worker_id).as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((conn, channel, consumer))
        };
        let opened = open
            .retry(
                courier_shared::queue::reconnect_backoff()
            )
            .notify(|e, after| tracing::warn!(error = %e, retry_in = ?after, "recorder cannot reach RabbitMQ"));
        let (_conn, channel, mut consumer) = tokio::select! {
            r = opened => match r { Ok(p) => p, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let _connected = crate::metrics::ConnectedGuard::new(&ctx.metrics.consumers_connected);
        loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => record(&ctx, delivery).await,
                    _ => break,
                },
                _ = shutdown.changed() => {
                    let _ = channel.close(200, "worker shutting down".into()).await;
                    return;
                }
            }
        }
    }
}

async fn record(ctx: &Context, delivery: Delivery) {
    let body = String::from_utf8_lossy(&delivery.data).into_owned();
    let x_death = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").map(amqp_to_json))
        .unwrap_or(Value::Null);
    let first = x_death.get(0).cloned().unwrap_or(Value::Null);
    let queue_reason = format!(
        "{} from {}",
        first
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("dead-lettered"),
        first
            .get("queue")
            .and_then(Value::as_str)
            .unwrap_or("an unknown queue")
    );
    let delivery_id = serde_json::from_slice::<JobMessage>(&delivery.data)
        .ok()
        .map(|m| m.delivery_id);
    let msg = QueuedDeadLetter {
        delivery_id,
        body,
        x_death,
        queue_reason,
    };
    let write = || async {
        let mut tx = ctx.pool.begin().await?;
        let id = dead_letters::record_from_queue(&mut tx, &msg).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(id)
    };
    match write
        .retry(ExponentialBuilder::default().with_max_times(5))
        .await
    {
        Ok(id) => {
            tracing::info!(dead_letter = id, reason = %msg.queue_reason, "dead letter recorded");
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "could not record a dead letter; leaving it on the queue");
            tokio::time::sleep(Duration::from_secs(1)).await;
            courier_shared::queue::nack(&delivery.acker, true).await;
        }
    }
}

/// AMQP header values as JSON, for storing `x-death`.
fn amqp_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::Timestamp(n) => json!(n),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), amqp_to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        other => json!(format!("{other:?}")),
    }
}
