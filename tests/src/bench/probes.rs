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
    let (conn, publish, _consume, mut consumer) = probe_queue(url, queue, 64, "probe").await?;
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
    remove_probe_queue(url, conn, queue).await?;
    Ok(rate)
}

/// The pipeline ceiling: the bare durable work of a job, with none of
/// Courier's business logic, `in_flight` jobs at a time. Per job: INSERT and
/// commit, publish (persistent, quorum queue) with a confirm, consume, one
/// RCON command to `game` on one of `rcon_connections` pooled connections,
/// UPDATE and commit, ack. Jobs per second.
pub async fn pipeline(
    db_url: &str,
    amqp_url: &str,
    queue: &str,
    game: &crate::fakes::rcon::FakeGameServer,
    rcon_connections: usize,
    jobs: usize,
    in_flight: usize,
) -> anyhow::Result<f64> {
    use std::sync::Arc;

    use courier_shared::rcon::client::{Framing, RconTarget, Timeouts};
    use courier_shared::rcon::pool::RconPool;

    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(db_url)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_pipeline (id bigserial PRIMARY KEY, state text NOT NULL, answer text, at timestamptz NOT NULL DEFAULT now())")
        .execute(&pool)
        .await?;
    let rcon = Arc::new(RconPool::new(
        RconTarget {
            host: game.addr.ip().to_string(),
            port: game.addr.port(),
            password: "bench".into(),
            dialect: courier_shared::rcon::Dialect::Minecraft,
            framing: Framing::ExecOnly,
            quiet: Duration::from_millis(500),
        },
        rcon_connections,
        Timeouts {
            connect: Duration::from_secs(2),
            command: Duration::from_secs(5),
            max_response_bytes: 64 * 1024,
            slot_wait: Duration::from_secs(30),
        },
        Duration::from_secs(60),
    ));
    let (conn, publish, _consume, mut consumer) =
        probe_queue(amqp_url, queue, in_flight as u16, "pipeline-probe").await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let started = Instant::now();
    let reader = {
        let pool = pool.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let mut handles = tokio::task::JoinSet::new();
            let mut seen = 0;
            while seen < jobs {
                let d = match tokio::time::timeout(Duration::from_secs(30), consumer.next()).await {
                    Ok(Some(Ok(d))) => d,
                    _ => anyhow::bail!("the pipeline probe's consumer stopped after {seen} jobs"),
                };
                seen += 1;
                let (pool, rcon, slots) = (pool.clone(), rcon.clone(), slots.clone());
                handles.spawn(async move {
                    let id: i64 = std::str::from_utf8(&d.data)?.parse()?;
                    let answer = rcon
                        .exec(&format!("give probe diamond 1 {id}"))
                        .await
                        .map_err(|e| anyhow::anyhow!("rcon: {}", e.error))?;
                    sqlx::query(
                        "UPDATE bench_pipeline SET state = 'done', answer = $2 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(answer)
                    .execute(&pool)
                    .await?;
                    d.acker.ack(BasicAckOptions::default()).await?;
                    slots.add_permits(1);
                    Ok::<_, anyhow::Error>(())
                });
                while let Some(done) = handles.try_join_next() {
                    done??;
                }
            }
            while let Some(done) = handles.join_next().await {
                done??;
            }
            Ok(())
        })
    };
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..jobs {
        slots.acquire().await?.forget();
        let (pool, publish, queue) = (pool.clone(), publish.clone(), queue.to_owned());
        writers.spawn(async move {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO bench_pipeline (state) VALUES ('queued') RETURNING id",
            )
            .fetch_one(&pool)
            .await?;
            let confirm = publish
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    id.to_string().as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await?;
            anyhow::ensure!(confirm.is_ack(), "the probe's publish was nacked");
            Ok::<_, anyhow::Error>(())
        });
        while let Some(done) = writers.try_join_next() {
            done??;
        }
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    reader.await??;
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    remove_probe_queue(amqp_url, conn, queue).await?;
    sqlx::query("DROP TABLE bench_pipeline")
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(rate)
}

/// Closes the probe's connection, then deletes its queue over a new one.
/// The consumer was dropped with the reader task, and lapin sends its
/// `basic.cancel` on its own; on the probe's own connection that cancel can
/// meet a closing channel and break the whole connection ("invalid channel
/// state: Closing (basic.cancel)", "invalid connection state: Error"), so
/// the clean-up uses a connection nothing else touched.
async fn remove_probe_queue(url: &str, conn: lapin::Connection, queue: &str) -> anyhow::Result<()> {
    let _ = conn.close(200, "probe done".into()).await;
    let fresh = courier_shared::queue::Broker::plain(url).connect().await?;
    let channel = fresh.create_channel().await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .map_err(|e| anyhow::anyhow!("deleting the probe queue {queue}: {e}"))?;
    let _ = fresh.close(200, "probe done".into()).await;
    Ok(())
}

/// A durable quorum queue for a probe, a publishing channel in confirm mode
/// and a consumer with `prefetch` unacked messages.
async fn probe_queue(
    url: &str,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> anyhow::Result<(
    lapin::Connection,
    lapin::Channel,
    lapin::Channel,
    lapin::Consumer,
)> {
    let conn = courier_shared::queue::Broker::plain(url).connect().await?;
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
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = consume
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((conn, publish, consume, consumer))
}
