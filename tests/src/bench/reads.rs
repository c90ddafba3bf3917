//! `courier-bench reads`: `GET /v1/orders/{id}` (each connection going round
//! the 200 warm-up orders) against `/healthz` on the
//! same API process, 64 connections each, from a Rust load loop (keep-alive
//! HTTP/1.1) — idle, then while orders are ingested at a fixed rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::percentile;
use super::procs::{ApiClient, ProcessStack};
use super::throughput::{send_orders, wait_completed};

#[derive(Debug, Clone, Serialize)]
pub struct ReadsArgs {
    pub connections: usize,
    pub seconds: u64,
    /// Orders per second offered while the second read figure is taken.
    pub ingest_rate: f64,
}

/// One load figure.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadsReport {
    pub params: ReadsArgs,
    pub healthz: Load,
    pub order_status: Load,
    pub order_status_vs_healthz: f64,
    pub order_status_while_ingesting: Load,
    pub ingested_per_s: f64,
}

/// `connections` loops sending requests back to back for `seconds`, each
/// going round `paths` from its own starting point (so reads at the same
/// moment are of different orders, as a store's clients' would be).
async fn load(api: &ApiClient, paths: &[String], connections: usize, seconds: u64) -> Load {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .expect("client");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for c in 0..connections {
        let (http, stop) = (http.clone(), stop.clone());
        let urls: Vec<String> = paths.iter().map(|p| format!("{}{p}", api.base)).collect();
        let key = api.admin_key.clone();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            let mut errors = 0u64;
            let mut next = c * 7;
            while !stop.load(Ordering::Relaxed) {
                let url = &urls[next % urls.len()];
                next += 1;
                let t = Instant::now();
                match http.get(url.as_str()).bearer_auth(&key).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        took.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => errors += 1,
                }
            }
            (took, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((took, e)) = t.await {
            all.extend(took);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Load {
        requests_per_s: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        errors,
    }
}

pub async fn run(args: ReadsArgs) -> anyhow::Result<ReadsReport> {
    let stack = ProcessStack::start(1, Duration::ZERO, |s| {
        s.worker.concurrency = 64;
    })
    .await?;
    stack.seed_with("hold", 64).await?;
    let api = stack.client();
    anyhow::ensure!(
        send_orders(&api, 200, 16, None, "warm", &["bench"]).await == 200,
        "warm-up orders were refused"
    );
    wait_completed(&stack, 200, Duration::from_secs(60)).await?;
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(&stack.pool)
        .await?;
    let paths: Vec<String> = ids.iter().map(|id| format!("/v1/orders/{id}")).collect();
    let healthz = load(
        &api,
        &["/healthz".to_owned()],
        args.connections,
        args.seconds,
    )
    .await;
    let order_status = load(&api, &paths, args.connections, args.seconds).await;

    // The same read while orders arrive at `ingest_rate`.
    let count = (args.ingest_rate * args.seconds as f64) as usize;
    let ingest = {
        let api = api.clone();
        let rate = args.ingest_rate;
        tokio::spawn(async move {
            let t = Instant::now();
            let n = send_orders(&api, count, 64, Some(rate), "ingest", &["bench"]).await;
            n as f64 / t.elapsed().as_secs_f64()
        })
    };
    let busy = load(&api, &paths, args.connections, args.seconds).await;
    let ingested_per_s = ingest.await.unwrap_or(0.0);
    stack.teardown().await;
    Ok(ReadsReport {
        order_status_vs_healthz: order_status.requests_per_s / healthz.requests_per_s,
        params: args,
        healthz,
        order_status,
        order_status_while_ingesting: busy,
        ingested_per_s,
    })
}

impl ReadsReport {
    pub fn print(&self) {
        let row = |name: &str, l: &Load| {
            println!(
                "  {name:<30} {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
                l.requests_per_s, l.p50_ms, l.p99_ms, l.errors
            );
        };
        println!(
            "reads: {} connections, {} s each (Rust load loop, same machine)",
            self.params.connections, self.params.seconds
        );
        row("/healthz", &self.healthz);
        row("GET /v1/orders/{id}", &self.order_status);
        println!(
            "  order status vs healthz        {:.3}",
            self.order_status_vs_healthz
        );
        row(
            &format!("same, ingesting {:.0}/s", self.ingested_per_s),
            &self.order_status_while_ingesting,
        );
    }
}
