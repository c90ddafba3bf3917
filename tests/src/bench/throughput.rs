//! `courier-bench throughput`: N paid orders through the real processes, then
//! the machine's ceiling in the same run, and Courier's rate as a fraction of it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::json;
use sqlx::{Connection, Row};

use super::probes;
use super::procs::{ApiClient, ProcessStack, peak_rss_kib};

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputArgs {
    pub orders: usize,
    pub concurrency: usize,
    /// Open loop: send this many orders per second on schedule.
    pub rate: Option<f64>,
    pub workers: usize,
    pub command_delay_ms: u64,
    pub timeout_secs: u64,
    pub probe_jobs: usize,
    /// Database connections per process.
    pub db_pool: u32,
    /// Jobs each worker runs at once (`worker.concurrency`).
    pub worker_concurrency: u16,
    /// The game server's `max_connections`, across all workers (and the
    /// pipeline probe's RCON connections).
    pub game_connections: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    pub params: ThroughputArgs,
    pub accepted: usize,
    pub completed: i64,
    pub ingest_per_s: f64,
    pub end_to_end_per_s: f64,
    pub latency_ms: Latency,
    /// Where that time went, per stage of the first attempt.
    pub stages_ms: Stages,
    pub api_peak_rss_mib: f64,
    pub worker_peak_rss_mib: f64,
    pub postgres_ceiling_jobs_per_s: f64,
    pub rabbitmq_ceiling_msgs_per_s: f64,
    pub end_to_end_vs_postgres: f64,
    pub end_to_end_vs_rabbitmq: f64,
    /// The bare durable work per job, 64 in flight (`probes::pipeline`).
    pub pipeline_ceiling_per_s: f64,
    pub end_to_end_vs_pipeline: f64,
    pub cost: Cost,
}

/// What Postgres did per order, accept to completed: transactions from
/// `pg_stat_database`, statements from `pg_stat_statements` when it is
/// loaded (and its extension exists in the `courier` database). Includes the
/// harness's own polling for completion (a few hundred statements a run).
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub transactions_per_order: f64,
    pub statements_per_order: Option<f64>,
    /// The statements that ran most per order, when known.
    pub top_statements: Vec<(f64, String)>,
}

/// Counters of one database at one moment.
struct Counters {
    transactions: i64,
    statements: Option<(i64, Vec<(i64, String)>)>,
}

/// Reads the counters of the stack's database. `pg_stat_statements` is read
/// through the `courier` database, where docs/benchmarks.md's set-up creates the
/// extension (a fresh bench database cannot: creating it needs a superuser).
async fn counters(stack: &ProcessStack) -> anyhow::Result<Counters> {
    let transactions: i64 = sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&stack.pool)
    .await?;
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&stack.pool)
        .await?;
    let url = crate::stack::replace_db(stack.settings.database.url.expose(), "courier");
    let statements = match sqlx::PgConnection::connect(&url).await {
        Ok(mut conn) => sqlx::query(
            "SELECT calls::int8 AS calls, query FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)",
        )
        .bind(&db)
        .fetch_all(&mut conn)
        .await
        .ok()
        .map(|rows| {
            let per: Vec<(i64, String)> = rows
                .iter()
                .map(|r| (r.get::<i64, _>("calls"), r.get::<String, _>("query")))
                .collect();
            (per.iter().map(|(c, _)| c).sum(), per)
        }),
        Err(_) => None,
    };
    Ok(Counters {
        transactions,
        statements,
    })
}

fn cost(before: &Counters, after: &Counters, orders: i64) -> Cost {
    let n = orders.max(1) as f64;
    let (statements_per_order, top_statements) = match (&before.statements, &after.statements) {
        (Some((b, bq)), Some((a, aq))) => {
            let mut top: Vec<(f64, String)> = aq
                .iter()
                .map(|(calls, q)| {
                    let earlier = bq.iter().find(|(_, bqq)| bqq == q).map_or(0, |(c, _)| *c);
                    ((calls - earlier) as f64 / n, q.chars().take(90).collect())
                })
                .filter(|(per, _)| *per > 0.0)
                .collect();
            top.sort_by(|x, y| y.0.total_cmp(&x.0));
            top.truncate(12);
            (Some((a - b) as f64 / n), top)
        }
        _ => (None, Vec::new()),
    };
    Cost {
        transactions_per_order: (after.transactions - before.transactions) as f64 / n,
        statements_per_order,
        top_statements,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// p50 and p99 (ms) of each stage of an order's first delivery: accepted →
/// marked published (by a direct lane after the broker's confirm, or at the
/// start of a sweep's transaction), published → claimed (the queue and the
/// worker's intake; about 0 when published directly, since the worker gets
/// the message while the mark is written), claimed → answered (the driver),
/// answered → order completed (the completer).
#[derive(Debug, Clone, Serialize)]
pub struct Stages {
    pub publish: [f64; 2],
    pub queue: [f64; 2],
    pub run: [f64; 2],
    pub record: [f64; 2],
}

async fn stages(pool: &sqlx::PgPool) -> Result<Stages, sqlx::Error> {
    let row = sqlx::query(
        "WITH s AS (SELECT extract(epoch FROM x.published_at - o.created_at) * 1000 AS publish, \
             extract(epoch FROM a.started_at - x.published_at) * 1000 AS queue, \
             extract(epoch FROM a.finished_at - a.started_at) * 1000 AS run, \
             extract(epoch FROM o.completed_at - a.finished_at) * 1000 AS record \
           FROM orders o JOIN deliveries d ON d.order_id = o.id \
           JOIN delivery_attempts a ON a.delivery_id = d.id AND a.attempt = 1 \
           JOIN outbox x ON x.payload->>'delivery_id' = d.id::text) \
         SELECT percentile_cont(ARRAY[0.5, 0.99]::float8[]) WITHIN GROUP (ORDER BY publish) AS publish, \
           percentile_cont(ARRAY[0.5, 0.99]::float8[]) WITHIN GROUP (ORDER BY queue) AS queue, \
           percentile_cont(ARRAY[0.5, 0.99]::float8[]) WITHIN GROUP (ORDER BY run) AS run, \
           percentile_cont(ARRAY[0.5, 0.99]::float8[]) WITHIN GROUP (ORDER BY record) AS record FROM s",
    )
    .fetch_one(pool)
    .await?;
    let get = |c: &str| -> [f64; 2] {
        let v: Option<Vec<f64>> = row.try_get(c).ok().flatten();
        match v.as_deref() {
            Some([p50, p99]) => [*p50, *p99],
            _ => [f64::NAN, f64::NAN],
        }
    };
    Ok(Stages {
        publish: get("publish"),
        queue: get("queue"),
        run: get("run"),
        record: get("record"),
    })
}

/// Posts one order, retrying the same `Idempotency-Key` through outages (as a
/// store back-end should) for up to a minute; true when accepted.
pub async fn post_order(stack: &ApiClient, key: &str, username: &str, sku: &str) -> bool {
    let body = json!({
        "currency": "USD",
        "game": { "username": username },
        "discord_user_id": "4242",
        "items": [{ "product": sku, "quantity": 1, "unit_price": "1.00" }],
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(50);
    loop {
        let sent = stack
            .http
            .post(format!("{}/v1/orders", stack.base))
            .bearer_auth(&stack.admin_key)
            .header("Idempotency-Key", key)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return true,
            Ok(r)
                if r.status().is_client_error() && r.status() != StatusCode::TOO_MANY_REQUESTS =>
            {
                eprintln!(
                    "order {key} rejected: {}",
                    r.text().await.unwrap_or_default()
                );
                return false;
            }
            _ if Instant::now() > deadline => return false,
            _ => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Sends `orders` orders: closed loop at `concurrency`, or open loop at `rate`.
pub async fn send_orders(
    stack: &ApiClient,
    orders: usize,
    concurrency: usize,
    rate: Option<f64>,
    tag: &str,
    skus: &[&str],
) -> usize {
    let skus: Vec<String> = skus.iter().map(|s| (*s).to_owned()).collect();
    match rate {
        None => {
            futures_util::stream::iter(0..orders)
                .map(|i| {
                    let stack = stack.clone();
                    let key = format!("{tag}-{i}");
                    let sku = skus[i % skus.len()].clone();
                    async move { post_order(&stack, &key, &format!("p{i}"), &sku).await }
                })
                .buffer_unordered(concurrency.max(1))
                .filter(|ok| futures_util::future::ready(*ok))
                .count()
                .await
        }
        Some(rate) => {
            let start = tokio::time::Instant::now();
            let mut handles = Vec::with_capacity(orders);
            for i in 0..orders {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                let stack = stack.clone();
                let key = format!("{tag}-{i}");
                let sku = skus[i % skus.len()].clone();
                handles.push(tokio::spawn(async move {
                    post_order(&stack, &key, &format!("p{i}"), &sku).await
                }));
            }
            let mut ok = 0;
            for h in handles {
                ok += usize::from(h.await.unwrap_or(false));
            }
            ok
        }
    }
}

/// Waits until `expected` orders are completed (or `limit` passes); returns the count.
pub async fn wait_completed(
    stack: &ProcessStack,
    expected: usize,
    limit: Duration,
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + limit;
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'completed'")
                .fetch_one(&stack.pool)
                .await?;
        if done as usize >= expected || Instant::now() > deadline {
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(args: ThroughputArgs) -> anyhow::Result<ThroughputReport> {
    let stack = ProcessStack::start(
        args.workers,
        Duration::from_millis(args.command_delay_ms),
        |s| {
            s.database.max_connections = args.db_pool;
            s.worker.concurrency = args.worker_concurrency;
        },
    )
    .await?;
    stack.seed_with("hold", args.game_connections).await?;
    // Statistics reach the shared counters when a backend goes idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = counters(&stack).await?;
    let accepted = send_orders(
        &stack.client(),
        args.orders,
        args.concurrency,
        args.rate,
        "tp",
        &["bench"],
    )
    .await;
    let completed =
        wait_completed(&stack, accepted, Duration::from_secs(args.timeout_secs)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = counters(&stack).await?;
    let cost = cost(&before, &after, completed);

    let row = sqlx::query(
        "SELECT extract(epoch FROM max(created_at) - min(created_at))::float8 AS ingest_s, \
                extract(epoch FROM max(completed_at) - min(created_at))::float8 AS e2e_s, \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at))::float8 * 1000 AS p50, \
                percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at))::float8 * 1000 AS p95, \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at))::float8 * 1000 AS p99, \
                max(extract(epoch FROM completed_at - created_at))::float8 * 1000 AS max \
         FROM orders",
    )
    .fetch_one(&stack.pool)
    .await?;
    let get = |c: &str| {
        row.try_get::<Option<f64>, _>(c)
            .ok()
            .flatten()
            .unwrap_or(f64::NAN)
    };
    let ingest_per_s = accepted as f64 / get("ingest_s").max(1e-3);
    let end_to_end_per_s = completed as f64 / get("e2e_s").max(1e-3);
    let api_peak_rss_mib = stack.api_pid().and_then(peak_rss_kib).unwrap_or(0) as f64 / 1024.0;
    let worker_peak_rss_mib = stack
        .worker_pids()
        .into_iter()
        .filter_map(peak_rss_kib)
        .max()
        .unwrap_or(0) as f64
        / 1024.0;
    let latency_ms = Latency {
        p50: get("p50"),
        p95: get("p95"),
        p99: get("p99"),
        max: get("max"),
    };
    let stages_ms = stages(&stack.pool).await?;
    let settings = stack.settings.clone();
    stack.teardown().await;

    // The ceiling, in the same run, once Courier is stopped.
    let (settings_for_db, db) = crate::stack::test_settings();
    let cleanup_db = crate::stack::create_database(&settings_for_db, &db).await?;
    let pg = probes::postgres(settings_for_db.database.url.expose(), args.probe_jobs).await;
    let mut cleanup_db = cleanup_db;
    cleanup_db.run().await;
    let rabbit = probes::rabbitmq(
        settings.amqp.url.expose(),
        &format!("{}bench.probe", settings.amqp.prefix),
        args.probe_jobs,
    )
    .await;
    let game = crate::fakes::rcon::FakeGameServer::start(
        "bench",
        courier_shared::rcon::Dialect::Minecraft,
    )
    .await?;
    game.set(crate::fakes::rcon::Behaviour {
        delay: Duration::from_millis(args.command_delay_ms),
        ..Default::default()
    });
    let (settings_for_db, db) = crate::stack::test_settings();
    let mut cleanup_db = crate::stack::create_database(&settings_for_db, &db).await?;
    let pipeline = probes::pipeline(
        settings_for_db.database.url.expose(),
        settings.amqp.url.expose(),
        &format!("{}bench.pipeline", settings.amqp.prefix),
        &game,
        args.game_connections,
        args.probe_jobs,
        64,
    )
    .await;
    cleanup_db.run().await;
    let (pg, rabbit, pipeline) = (pg?, rabbit?, pipeline?);
    Ok(ThroughputReport {
        params: args,
        accepted,
        completed,
        ingest_per_s,
        end_to_end_per_s,
        latency_ms,
        stages_ms,
        api_peak_rss_mib,
        worker_peak_rss_mib,
        postgres_ceiling_jobs_per_s: pg,
        rabbitmq_ceiling_msgs_per_s: rabbit,
        end_to_end_vs_postgres: end_to_end_per_s / pg,
        end_to_end_vs_rabbitmq: end_to_end_per_s / rabbit,
        pipeline_ceiling_per_s: pipeline,
        end_to_end_vs_pipeline: end_to_end_per_s / pipeline,
        cost,
    })
}

impl ThroughputReport {
    pub fn print(&self) {
        let p = &self.params;
        println!(
            "throughput: {} orders, {} worker(s), {}, command delay {} ms",
            p.orders,
            p.workers,
            p.rate
                .map_or(format!("concurrency {}", p.concurrency), |r| format!(
                    "open loop {r}/s"
                )),
            p.command_delay_ms
        );
        println!(
            "  accepted / completed        {} / {}",
            self.accepted, self.completed
        );
        println!(
            "  ingest                      {:.0} orders/s",
            self.ingest_per_s
        );
        println!(
            "  end to end                  {:.0} orders/s",
            self.end_to_end_per_s
        );
        let l = &self.latency_ms;
        println!(
            "  accepted → delivered (ms)   p50 {:.0}  p95 {:.0}  p99 {:.0}  max {:.0}",
            l.p50, l.p95, l.p99, l.max
        );
        let st = &self.stages_ms;
        println!(
            "  stages p50/p99 (ms)         publish {:.1}/{:.0}  queue {:.1}/{:.0}  run {:.1}/{:.0}  record {:.1}/{:.0}",
            st.publish[0],
            st.publish[1],
            st.queue[0],
            st.queue[1],
            st.run[0],
            st.run[1],
            st.record[0],
            st.record[1]
        );
        println!(
            "  peak RSS                    api {:.1} MiB, worker {:.1} MiB",
            self.api_peak_rss_mib, self.worker_peak_rss_mib
        );
        println!(
            "  ceiling (same run)          Postgres {:.0} jobs/s, RabbitMQ {:.0} msgs/s",
            self.postgres_ceiling_jobs_per_s, self.rabbitmq_ceiling_msgs_per_s
        );
        println!(
            "  pipeline ceiling            {:.0} jobs/s (insert, publish+confirm, consume, RCON, update, ack; 64 in flight)",
            self.pipeline_ceiling_per_s
        );
        println!(
            "  end to end as a fraction    {:.3} of the pipeline, {:.3} of Postgres, {:.3} of RabbitMQ",
            self.end_to_end_vs_pipeline, self.end_to_end_vs_postgres, self.end_to_end_vs_rabbitmq
        );
        let c = &self.cost;
        println!(
            "  per order                   {:.2} transactions, {}",
            c.transactions_per_order,
            c.statements_per_order.map_or(
                "statements n/a (pg_stat_statements not loaded; see docs/benchmarks.md)".to_owned(),
                |s| format!("{s:.2} statements")
            )
        );
        for (per, q) in &c.top_statements {
            println!("    {per:>6.2}  {q}");
        }
    }
}
