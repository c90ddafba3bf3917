//! `courier-bench chaos`: orders flow while worker processes are SIGKILLed and
//! replaced, and (full run only) RabbitMQ and Postgres are restarted; then an
//! audit proves nothing accepted was lost or left stuck, and that every
//! command run twice is accounted for as an ambiguous (abandoned) attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::procs::ProcessStack;
use super::throughput::send_orders;

#[derive(Debug, Clone, Serialize)]
pub struct ChaosArgs {
    pub orders: usize,
    pub workers: usize,
    pub concurrency: usize,
    pub kill_every_secs: f64,
    /// Restart RabbitMQ and Postgres once each (never in the test suite).
    pub restart_services: bool,
    pub quiesce_timeout_secs: u64,
    /// Database connections per process.
    pub db_pool: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub params: ChaosArgs,
    pub accepted: usize,
    pub in_database: i64,
    pub completed: i64,
    pub failed: i64,
    pub dead: Vec<(String, i64)>,
    /// Deliveries not settled after the wait, by kind, status and last error.
    pub unsettled: Vec<(String, i64)>,
    pub held: Vec<(String, i64)>,
    pub lost: i64,
    pub stuck: i64,
    pub workers_killed: usize,
    pub service_restarts: Vec<String>,
    pub commands_run: usize,
    pub duplicate_executions: usize,
    pub duplicates_accounted: usize,
    pub duplicates_unaccounted: usize,
    pub discord_calls: usize,
    pub supplier_orders_placed: usize,
    pub supplier_keys_stored: i64,
    /// Supplier orders beyond one per key delivery: must be 0.
    pub duplicate_supplier_purchases: i64,
}

impl ChaosReport {
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.stuck == 0
            && self.duplicates_unaccounted == 0
            && self.duplicate_supplier_purchases == 0
    }

    pub fn print(&self) {
        let p = &self.params;
        println!(
            "chaos: {} orders, {} workers, a worker SIGKILLed every {} s, service restarts: {}",
            p.orders,
            p.workers,
            p.kill_every_secs,
            if self.service_restarts.is_empty() {
                "none".to_owned()
            } else {
                self.service_restarts.join(", ")
            }
        );
        println!("  accepted (2xx)              {}", self.accepted);
        println!("  orders in the database      {}", self.in_database);
        println!("  completed                   {}", self.completed);
        println!("  failed                      {}", self.failed);
        for (reason, n) in &self.dead {
            println!("  dead                        {n}: {reason}");
        }
        for (reason, n) in &self.held {
            println!("  held                        {n}: {reason}");
        }
        for (reason, n) in &self.unsettled {
            println!("  unsettled                   {n}: {reason}");
        }
        println!("  lost                        {}", self.lost);
        println!("  stuck                       {}", self.stuck);
        println!("  workers killed              {}", self.workers_killed);
        println!("  commands run                {}", self.commands_run);
        println!(
            "  duplicate executions        {} ({} accounted as ambiguous, {} unaccounted)",
            self.duplicate_executions, self.duplicates_accounted, self.duplicates_unaccounted
        );
        println!("  Discord calls               {}", self.discord_calls);
        println!(
            "  supplier orders / keys      {} placed, {} keys stored",
            self.supplier_orders_placed, self.supplier_keys_stored
        );
        println!(
            "  duplicate supplier buys     {}",
            self.duplicate_supplier_purchases
        );
        println!(
            "  verdict                     {}",
            if self.ok() { "OK" } else { "FAILED" }
        );
    }
}

fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(program).args(args).status()?;
    anyhow::ensure!(
        status.success(),
        "{program} {} failed: {status}",
        args.join(" ")
    );
    Ok(())
}

fn restart_rabbitmq() -> anyhow::Result<()> {
    run_cmd("rabbitmqctl", &["-q", "stop_app"])?;
    std::thread::sleep(Duration::from_secs(2));
    run_cmd("rabbitmqctl", &["-q", "start_app"])?;
    run_cmd("rabbitmqctl", &["-q", "await_startup"])
}

fn restart_postgres() -> anyhow::Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .max()
        .ok_or_else(|| anyhow::anyhow!("no cluster in /etc/postgresql"))?;
    run_cmd(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "restart"],
    )
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<ChaosReport> {
    let mut stack = ProcessStack::start(args.workers, Duration::ZERO, |s| {
        s.worker.lease_seconds = 10;
        s.database.max_connections = args.db_pool;
        s.rcon.command_timeout_ms = 3000;
        // Within the lease: 2 + 2 × 2 + 3 s.
        s.rcon.slot_wait_ms = 2000;
        s.rescuer.interval_ms = 1000;
        s.rescuer.overdue_after_secs = 20;
        s.relay.sweep_interval_ms = 500;
        for r in [
            &mut s.retry.rcon,
            &mut s.retry.discord,
            &mut s.retry.supplier,
        ] {
            r.max_attempts = 10;
            r.base_delay_ms = 500;
            r.max_delay_ms = 5000;
        }
    })
    .await?;
    stack.seed("retry").await?;

    // Orders go in from another task while this one makes trouble.
    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let sending = sending.clone();
        let client = stack.client();
        let (orders, concurrency) = (args.orders, args.concurrency);
        tokio::spawn(async move {
            let n = send_orders(
                &client,
                orders,
                concurrency,
                None,
                "chaos",
                &["bench", "bench-role", "bench-key"],
            )
            .await;
            sending.store(false, Ordering::SeqCst);
            n
        })
    };
    let started = Instant::now();
    let mut killed = 0;
    let mut restarts = Vec::new();
    let (mut rabbit_done, mut pg_done) = (!args.restart_services, !args.restart_services);
    while sending.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs_f64(args.kill_every_secs)).await;
        if !stack.workers.is_empty() {
            let victim = rand::rng().random_range(0..stack.workers.len());
            stack.kill_worker(victim).await;
            stack.spawn_worker()?;
            killed += 1;
        }
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&stack.pool)
            .await
            .unwrap_or(0);
        if !rabbit_done && done as usize > args.orders / 4 {
            rabbit_done = true;
            tokio::task::spawn_blocking(restart_rabbitmq).await??;
            restarts.push(format!(
                "RabbitMQ at {:.0} s",
                started.elapsed().as_secs_f64()
            ));
        }
        if !pg_done && rabbit_done && done as usize > args.orders / 2 {
            pg_done = true;
            tokio::task::spawn_blocking(restart_postgres).await??;
            restarts.push(format!(
                "Postgres at {:.0} s",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    // Sending may end before a restart's turn came (a RabbitMQ restart takes
    // a while): then it happens now, while the deliveries are still in flight.
    let in_flight = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM deliveries WHERE status IN ('queued', 'running', 'retrying')",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
        }
    };
    if !rabbit_done {
        let busy = in_flight(&stack.pool).await;
        tokio::task::spawn_blocking(restart_rabbitmq).await??;
        restarts.push(format!(
            "RabbitMQ at {:.0} s ({busy} deliveries in flight)",
            started.elapsed().as_secs_f64()
        ));
    }
    if !pg_done {
        let busy = in_flight(&stack.pool).await;
        tokio::task::spawn_blocking(restart_postgres).await??;
        restarts.push(format!(
            "Postgres at {:.0} s ({busy} deliveries in flight)",
            started.elapsed().as_secs_f64()
        ));
    }
    let accepted = sender.await?;

    // Quiescence: nothing queued, running, retrying or waiting, and the outbox empty.
    let deadline = Instant::now() + Duration::from_secs(args.quiesce_timeout_secs);
    loop {
        let busy: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM deliveries WHERE status IN ('queued', 'running', 'retrying', 'waiting')) \
                  + (SELECT count(*) FROM outbox WHERE published_at IS NULL)",
        )
        .fetch_one(&stack.pool)
        .await
        .unwrap_or(i64::MAX);
        if busy == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let report = audit(&stack, &args, accepted, killed, restarts).await?;
    stack.teardown().await;
    Ok(report)
}

async fn audit(
    stack: &ProcessStack,
    args: &ChaosArgs,
    accepted: usize,
    killed: usize,
    restarts: Vec<String>,
) -> anyhow::Result<ChaosReport> {
    let counts = sqlx::query(
        "SELECT count(*) AS total, count(*) FILTER (WHERE status = 'completed') AS completed, \
                count(*) FILTER (WHERE status = 'failed') AS failed FROM orders",
    )
    .fetch_one(&stack.pool)
    .await?;
    let in_database: i64 = counts.try_get("total")?;
    let grouped = |status: &'static str| async move {
        sqlx::query(
            "SELECT coalesce(last_error, '(no reason)') AS reason, count(*) AS n FROM deliveries WHERE status = $1 GROUP BY 1 ORDER BY 2 DESC",
        )
        .bind(status)
        .fetch_all(&stack.pool)
        .await
        .map(|rows| rows.iter().map(|r| (r.get::<String, _>("reason"), r.get::<i64, _>("n"))).collect::<Vec<_>>())
    };
    let dead = grouped("dead").await?;
    let unsettled: Vec<(String, i64)> = sqlx::query(
        "SELECT kind || ' ' || status || ': ' || coalesce(last_error, '-') AS reason, count(*) AS n FROM deliveries \
         WHERE status IN ('queued', 'running', 'retrying', 'waiting') GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
    )
    .fetch_all(&stack.pool)
    .await?
    .iter()
    .map(|r| (r.get::<String, _>("reason"), r.get::<i64, _>("n")))
    .collect();
    let held = grouped("held").await?;
    // Stuck: not terminal after the wait and not parked for an admin.
    let stuck: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o WHERE o.status NOT IN ('completed', 'failed') \
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.order_id = o.id AND d.status = 'held')",
    )
    .fetch_one(&stack.pool)
    .await?;
    // Lost: accepted but absent, or non-terminal with no work left anywhere for it.
    let orphaned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries d WHERE d.status IN ('queued', 'retrying', 'waiting') \
         AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.published_at IS NULL AND x.payload->>'delivery_id' = d.id::text)",
    )
    .fetch_one(&stack.pool)
    .await?;
    let missing = (accepted as i64 - in_database).max(0);
    let lost = missing + if stuck > 0 { orphaned } else { 0 };

    // Duplicates: the command embeds the delivery id as its last word.
    let mut runs: HashMap<Uuid, usize> = HashMap::new();
    let commands = stack.game.commands();
    for c in &commands {
        if let Some(id) = c.rsplit(' ').next().and_then(|w| Uuid::parse_str(w).ok()) {
            *runs.entry(id).or_default() += 1;
        }
    }
    // Each ambiguity the rescuer recorded allows one extra execution.
    let abandoned: HashMap<Uuid, i64> = sqlx::query(
        "SELECT delivery_id, count(*) AS n FROM order_events WHERE kind = 'delivery.ambiguous' GROUP BY 1",
    )
    .fetch_all(&stack.pool)
    .await?
    .iter()
    .map(|r| (r.get("delivery_id"), r.get("n")))
    .collect();
    let (mut duplicate_executions, mut accounted) = (0, 0);
    for (id, n) in &runs {
        if *n > 1 {
            let extra = n - 1;
            duplicate_executions += extra;
            accounted += extra.min(abandoned.get(id).copied().unwrap_or(0) as usize);
        }
    }
    let placed = stack.supplier.orders_placed();
    let unique_placed = placed
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let keys_stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM item_keys WHERE source = 'supplier'")
            .fetch_one(&stack.pool)
            .await?;
    Ok(ChaosReport {
        params: args.clone(),
        accepted,
        in_database,
        completed: counts.try_get("completed")?,
        failed: counts.try_get("failed")?,
        dead,
        unsettled,
        held,
        lost,
        stuck,
        workers_killed: killed,
        service_restarts: restarts,
        commands_run: commands.len(),
        duplicate_executions,
        duplicates_accounted: accounted,
        duplicates_unaccounted: duplicate_executions - accounted,
        discord_calls: stack.discord.calls().len(),
        supplier_orders_placed: placed.len(),
        supplier_keys_stored: keys_stored,
        duplicate_supplier_purchases: placed.len() as i64 - unique_placed as i64
            + (placed.len() as i64 - keys_stored).max(0),
    })
}
