//! Courier as the operator runs it: a `courier-api` process and N
//! `courier-worker` processes on an isolated database and queue prefix, plus the
//! fake game server (a real TCP server, in this process).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use courier_shared::config::{Secret, Settings};
use courier_shared::rcon::Dialect;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::fakes::discord::FakeDiscord;
use crate::fakes::rcon::FakeGameServer;
use crate::fakes::supplier::FakeSupplier;
use crate::stack::{Cleanup, create_database, process_env, test_settings};

/// What a client of the API needs; cheap to clone into tasks.
#[derive(Clone)]
pub struct ApiClient {
    pub http: reqwest::Client,
    pub base: String,
    pub admin_key: String,
}

pub struct ProcessStack {
    pub settings: Settings,
    pub base: String,
    pub admin_key: String,
    pub http: reqwest::Client,
    /// For the audit (not Courier's own pool).
    pub pool: PgPool,
    pub game: FakeGameServer,
    pub discord: FakeDiscord,
    pub supplier: FakeSupplier,
    pub api: Child,
    pub workers: Vec<Child>,
    bin_dir: PathBuf,
    cleanup: Cleanup,
}

/// Where the process binaries are: next to this executable (`courier-bench`),
/// or one level up from a test binary in `deps/`.
pub(crate) fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable has a directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

pub(crate) fn binary(dir: &std::path::Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} not found; build it first (cargo build --release -p courier-tests --bins)",
        path.display()
    );
    Ok(path)
}

impl ProcessStack {
    /// Starts the api and `workers` worker processes; `tweak` adjusts settings first.
    pub async fn start(
        workers: usize,
        command_delay: Duration,
        tweak: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        let (mut settings, db_name) = test_settings();
        // Full runs keep 16 per process; `tweak` lowers it where many stacks
        // share one Postgres (the test suite).
        settings.database.max_connections = 16;
        settings.worker.concurrency = 16;
        settings.relay.sweep_interval_ms = 1000;
        settings.api.bind = "127.0.0.1:0".into();
        let discord = FakeDiscord::start().await?;
        let supplier = FakeSupplier::start("chaos").await?;
        supplier.set_product("bench-game", 3.0, i64::MAX / 2);
        settings.discord.api_base = discord.base.clone();
        settings.suppliers.insert(
            "chaos".into(),
            courier_shared::config::SupplierSettings {
                base_url: supplier.base.clone(),
                api_key: Secret::new(supplier.api_key.clone()),
                requests_per_second: 50,
                timeout_ms: 5000,
            },
        );
        tweak(&mut settings);
        let cleanup = create_database(&settings, &db_name).await?;
        let bin_dir = bin_dir()?;
        let mut api = Command::new(binary(&bin_dir, "courier-api-process")?)
            .envs(process_env(&settings))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        // The api binds port 0 and says where.
        let stdout = api.stdout.take().context("api stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("listening ") {
                    return Ok::<_, std::io::Error>(Some(addr.to_owned()));
                }
            }
            Ok(None)
        })
        .await
        .context("courier-api did not start within 30 s")??
        .context("courier-api exited before listening")?;
        // Keep draining its stdout (logs), or a full pipe would block it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        settings.api.bind = addr.clone();
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "courier-api did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(settings.database.url.expose())
            .await?;
        let game = FakeGameServer::start("bench", Dialect::Minecraft).await?;
        game.set(crate::fakes::rcon::Behaviour {
            delay: command_delay,
            ..Default::default()
        });
        let admin_key = settings
            .api
            .bootstrap_admin_key
            .as_ref()
            .map(|k| k.expose().to_owned())
            .unwrap_or_default();
        let mut stack = ProcessStack {
            settings,
            base,
            admin_key,
            http,
            pool,
            game,
            discord,
            supplier,
            api,
            workers: Vec::new(),
            bin_dir,
            cleanup,
        };
        for _ in 0..workers {
            stack.spawn_worker()?;
        }
        Ok(stack)
    }

    pub fn spawn_worker(&mut self) -> anyhow::Result<u32> {
        let child = Command::new(binary(&self.bin_dir, "courier-worker-process")?)
            .envs(process_env(&self.settings))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("worker pid")?;
        self.workers.push(child);
        Ok(pid)
    }

    /// SIGKILLs worker `index` (only processes this harness started).
    pub async fn kill_worker(&mut self, index: usize) -> Option<u32> {
        let mut child = self.workers.remove(index);
        let pid = child.id();
        let _ = child.start_kill();
        let _ = child.wait().await;
        pid
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin_key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// One game server and one product `bench` whose command embeds the delivery id.
    pub async fn seed(&self, on_ambiguous: &str) -> anyhow::Result<()> {
        self.seed_with(on_ambiguous, 8).await
    }

    /// `seed` with the game server allowing `max_connections` (across workers).
    pub async fn seed_with(
        &self,
        on_ambiguous: &str,
        max_connections: usize,
    ) -> anyhow::Result<()> {
        let server = json!({
            "host": "127.0.0.1", "port": self.game.addr.port(), "password": "bench",
            "dialect": "minecraft", "max_connections": max_connections,
        });
        let (s, b) = self
            .call(Method::PUT, "/v1/game-servers/bench", Some(&server))
            .await?;
        anyhow::ensure!(s.is_success(), "game server: {b}");
        let product = json!({ "name": "Bench", "actions": [{
            "kind": "rcon", "game_server": "bench",
            "command": "give {username} diamond {quantity} {delivery_id}", "on_ambiguous": on_ambiguous,
        }]});
        let (s, b) = self
            .call(Method::PUT, "/v1/products/bench", Some(&product))
            .await?;
        anyhow::ensure!(s.is_success(), "product: {b}");
        let role = json!({ "name": "Bench role", "actions": [{ "kind": "discord_role", "guild_id": "111", "role_id": "222" }] });
        let (s, b) = self
            .call(Method::PUT, "/v1/products/bench-role", Some(&role))
            .await?;
        anyhow::ensure!(s.is_success(), "product: {b}");
        let key = json!({ "name": "Bench key", "actions": [{ "kind": "supplier_key", "candidates": [
            { "supplier": "chaos", "supplier_product_id": "bench-game", "max_price": "5.00" }] }] });
        let (s, b) = self
            .call(Method::PUT, "/v1/products/bench-key", Some(&key))
            .await?;
        anyhow::ensure!(s.is_success(), "product: {b}");
        Ok(())
    }

    pub fn client(&self) -> ApiClient {
        ApiClient {
            http: self.http.clone(),
            base: self.base.clone(),
            admin_key: self.admin_key.clone(),
        }
    }

    pub fn api_pid(&self) -> Option<u32> {
        self.api.id()
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(Child::id).collect()
    }

    pub async fn teardown(mut self) {
        for w in &mut self.workers {
            let _ = w.start_kill();
            let _ = w.wait().await;
        }
        let _ = self.api.start_kill();
        let _ = self.api.wait().await;
        self.pool.close().await;
        self.cleanup.run().await;
    }
}

/// Peak resident set (`VmHWM`) of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A secret for the audit pool's URL (used by probes too).
pub fn database_url(settings: &Settings) -> Secret {
    settings.database.url.clone()
}
