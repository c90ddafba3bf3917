//! This machine's ceiling, measured in the same run as Courier with the same
//! client libraries and durability: what Postgres and RabbitMQ alone can do
//! for the work one order needs.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use sqlx::postgres::PgPoolOptions;

/// Jobs per second for 16 connections each doing, per job, one insert-commit
/// and one update-commit (a job's minimum durable work).
pub async fn postgres(url: &str, jobs: usize) -> anyhow::Result<f64> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_probe (id bigserial PRIMARY KEY, state text NOT NULL, at timestamptz NOT NULL DEFAULT now())")
        .execute(&pool)
        .await?;
    let per_task = jobs.div_ceil(16);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO bench_probe (state) VALUES ('queued') RETURNING id",
                )
                .fetch_one(&pool)
                .await?;
                sqlx::query("UPDATE bench_probe SET state = 'done' WHERE id = $1")
                    .bind(id)
                    .execute(&pool)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = (per_task * 16) as f64 / started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_probe").execute(&pool).await?;
    pool.close().await;
    Ok(rate)
}

/// Messages per second through a quorum queue: persistent messages published
/// with confirms (64 in flight) and consumed with manual acks, end to end.
pub async fn rabbitmq(url: &str, queue: &str, messages: usize) -> anyhow::Result<f64> {
    let conn = courier_shared::queue::connect(url).await?;
    let publish = conn.create_channel().await?;
    let consume = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    publish
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    consume.basic_qos(64, BasicQosOptions::default()).await?;
    let mut consumer = consume
        .basic_consume(
            queue.into(),
            "probe".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < messages {
            match tokio::time::timeout(Duration::from_secs(30), consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    d.acker.ack(BasicAckOptions::default()).await?;
                    seen += 1;
                }
                _ => anyhow::bail!("the probe's consumer stopped after {seen} messages"),
            }
        }
        Ok(())
    });
    let body = br#"{"delivery_id":"00000000-0000-0000-0000-000000000000","kind":"rcon"}"#;
    for chunk in (0..messages).collect::<Vec<_>>().chunks(64) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for _ in chunk {
            confirms.push(
                publish
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?,
            );
        }
        for c in confirms {
            anyhow::ensure!(c.await?.is_ack(), "the probe's publish was nacked");
        }
    }
    reader.await??;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    // Close the consuming channel before deleting its queue, so the broker's
    // cancel does not race the client's.
    let _ = consume.close(200, "probe done".into()).await;
    publish
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "probe done".into()).await;
    Ok(rate)
}
