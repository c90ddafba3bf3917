//! `courier-bench throughput | chaos | reads | orders | latency` — see docs/benchmarks.md.
//!
//! `latency`: time from `POST /v1/orders` to `completed` for
//! orders posted one after another, on an isolated in-process stack (api +
//! relay + worker) against the real Postgres, RabbitMQ and Redis, with the fake
//! game server answering at once.
//!
//! Reports two figures per order: the client's (POST sent → first GET that
//! shows `completed`, polling every millisecond) and the server's
//! (`orders.completed_at - orders.created_at`).

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use courier_shared::rcon::Dialect;
use courier_tests::bench::chaos::{self, ChaosArgs};
use courier_tests::bench::throughput::{self, ThroughputArgs};
use courier_tests::fakes::rcon::FakeGameServer;
use courier_tests::stack::TestStack;
use reqwest::Method;

#[derive(Parser)]
#[command(name = "courier-bench", about = "Courier's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Orders through the real api and worker processes, then this machine's
    /// ceiling in the same run.
    Throughput {
        #[arg(long, default_value_t = 20_000)]
        orders: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Open loop: offer this many orders per second instead.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// The fake game server's delay per command.
        #[arg(long, default_value_t = 0)]
        command_delay_ms: u64,
        #[arg(long, default_value_t = 900)]
        timeout_secs: u64,
        /// Jobs each worker runs at once.
        #[arg(long, default_value_t = 16)]
        worker_concurrency: u16,
        /// The game server's connection limit (across workers).
        #[arg(long, default_value_t = 64)]
        game_connections: usize,
        /// About a minute: 300 orders, small probes.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
    },
    /// Orders while workers are killed (and, with --restart-services, RabbitMQ
    /// and Postgres restarted); then an audit. Exits 1 if anything was lost.
    Chaos {
        #[arg(long, default_value_t = 10_000)]
        orders: usize,
        #[arg(long, default_value_t = 3)]
        workers: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 3.0)]
        kill_every_secs: f64,
        /// Restart RabbitMQ and Postgres once each mid-run (never in tests:
        /// other users of the services would notice).
        #[arg(long)]
        restart_services: bool,
        #[arg(long, default_value_t = 600)]
        quiesce_timeout_secs: u64,
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
    },
    /// `GET /v1/orders/{id}` against `/healthz` on the same API process,
    /// idle and while orders are ingested.
    Reads {
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 500.0)]
        ingest_rate: f64,
        #[arg(long)]
        json: bool,
    },
    /// The staff's order list on a large history (seeded once into its own
    /// database, `courier_bench_orders`): p50/p99 per filter, sort and search.
    Orders {
        #[arg(long, default_value_t = 1_000_000)]
        orders: i64,
        /// Requests per case.
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Drop the seeded database and seed again.
        #[arg(long)]
        reseed: bool,
        #[arg(long)]
        json: bool,
    },
    /// Sequential orders, POST → completed.
    Latency {
        #[arg(long, default_value_t = 100)]
        orders: usize,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
}

use courier_tests::bench::percentile;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (orders, json) = match Cli::parse().command {
        Command::Throughput {
            orders,
            concurrency,
            rate,
            workers,
            command_delay_ms,
            timeout_secs,
            worker_concurrency,
            game_connections,
            quick,
            json,
        } => {
            let args = ThroughputArgs {
                worker_concurrency,
                game_connections,
                orders: if quick { 300 } else { orders },
                concurrency,
                rate,
                workers,
                command_delay_ms,
                timeout_secs,
                probe_jobs: if quick {
                    1000
                } else {
                    orders.clamp(2000, 20_000)
                },
                db_pool: 16,
            };
            let report = throughput::run(args).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print();
            }
            return Ok(());
        }
        Command::Chaos {
            orders,
            workers,
            concurrency,
            kill_every_secs,
            restart_services,
            quiesce_timeout_secs,
            quick,
            json,
        } => {
            let args = ChaosArgs {
                orders: if quick { 400 } else { orders },
                workers,
                concurrency,
                kill_every_secs: if quick { 1.0 } else { kill_every_secs },
                restart_services: restart_services && !quick,
                quiesce_timeout_secs,
                db_pool: 16,
            };
            let report = chaos::run(args).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print();
            }
            if !report.ok() {
                std::process::exit(1);
            }
            return Ok(());
        }
        Command::Reads {
            connections,
            seconds,
            ingest_rate,
            json,
        } => {
            let report = courier_tests::bench::reads::run(courier_tests::bench::reads::ReadsArgs {
                connections,
                seconds,
                ingest_rate,
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print();
            }
            return Ok(());
        }
        Command::Orders {
            orders,
            samples,
            reseed,
            json,
        } => {
            let report =
                courier_tests::bench::orders::run(courier_tests::bench::orders::OrdersArgs {
                    orders,
                    samples,
                    reseed,
                })
                .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print();
            }
            return Ok(());
        }
        Command::Latency { orders, json } => (orders, json),
    };
    let game = FakeGameServer::start("bench", Dialect::Minecraft).await?;
    let stack = TestStack::start().await;
    stack.add_game_server("bench", &game).await;
    stack
        .add_rcon_product("bench", "bench", "give {username} diamond {quantity}")
        .await;
    // One warm-up order: connections, pools and prepared statements.
    let (_, o) = stack.post_order("bench", "warmup", None).await;
    stack
        .wait_for_order(
            o["id"].as_str().unwrap_or_default(),
            "completed",
            Duration::from_secs(30),
        )
        .await;

    let mut client_ms = Vec::with_capacity(orders);
    for i in 0..orders {
        let started = Instant::now();
        let (status, order) = stack.post_order("bench", &format!("p{i}"), None).await;
        anyhow::ensure!(status.is_success(), "order rejected: {order}");
        let id = order["id"].as_str().unwrap_or_default().to_owned();
        loop {
            let (_, o) = stack
                .call(Method::GET, &format!("/v1/orders/{id}"), None)
                .await;
            if o["status"] == "completed" {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "order {id} did not complete: {o}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        client_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut server_ms: Vec<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (completed_at - created_at))::float8 * 1000 FROM orders \
         WHERE game_username <> 'warmup' ORDER BY created_at",
    )
    .fetch_all(&stack.pool)
    .await?;
    client_ms.sort_by(f64::total_cmp);
    server_ms.sort_by(f64::total_cmp);
    let row = |v: &[f64]| {
        (
            percentile(v, 0.0),
            percentile(v, 0.5),
            percentile(v, 0.95),
            percentile(v, 1.0),
        )
    };
    let (c0, c50, c95, c100) = row(&client_ms);
    let (s0, s50, s95, s100) = row(&server_ms);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "orders": orders,
                "client_ms": { "min": c0, "p50": c50, "p95": c95, "max": c100 },
                "server_ms": { "min": s0, "p50": s50, "p95": s95, "max": s100 },
            })
        );
    } else {
        println!("POST /v1/orders → completed, {orders} sequential orders (ms)");
        println!(
            "{:<34} {:>8} {:>8} {:>8} {:>8}",
            "", "min", "median", "p95", "max"
        );
        println!(
            "{:<34} {c0:>8.1} {c50:>8.1} {c95:>8.1} {c100:>8.1}",
            "client (POST → GET shows completed)"
        );
        println!(
            "{:<34} {s0:>8.1} {s50:>8.1} {s95:>8.1} {s100:>8.1}",
            "server (created_at → completed_at)"
        );
    }
    stack.teardown().await;
    Ok(())
}
