//! `TestStack::start` brings up one isolated Courier for a test: a fresh
//! database (migrated by the API at start-up), its own queue prefix, the API on
//! a free port with a bootstrap admin key, and a worker, all in-process against
//! the real Postgres, RabbitMQ and Redis. `teardown` (or, after a panic, `Drop`)
//! removes the database and the queues.

use std::time::Duration;

use courier_api::startup::RunningApi;
use courier_shared::config::{Secret, Settings};
use courier_shared::queue::topology::Topology;
use courier_worker::startup::RunningWorker;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};

use crate::fakes::rcon::FakeGameServer;

pub struct TestStack {
    pub settings: Settings,
    pub api: Option<RunningApi>,
    pub worker: Option<RunningWorker>,
    /// More worker replicas, for tests of coordination between them.
    pub extra_workers: Vec<RunningWorker>,
    pub http: reqwest::Client,
    pub base: String,
    pub admin_key: String,
    pub pool: PgPool,
    cleanup: Cleanup,
}

/// The Stripe endpoint secret of test stacks.
pub const STRIPE_SECRET: &str = "whsec_test_stripe_endpoint";
/// The Standard Webhooks secret of test stacks (`whsec_` + base64 of 32 bytes).
pub const GENERIC_SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Settings for an isolated stack: fresh database name, queue prefix, free port.
pub fn test_settings() -> (Settings, String) {
    let mut settings = Settings::load().expect("default configuration loads");
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let db_name = format!("courier_t_{tag}");
    let url = settings.database.url.expose().to_owned();
    settings.database.url = Secret::new(replace_db(&url, &db_name));
    settings.database.max_connections = 8;
    settings.amqp.prefix = format!("t{tag}.");
    settings.api.bind = "127.0.0.1:0".into();
    settings.worker.http_bind = "127.0.0.1:0".into();
    settings.api.bootstrap_admin_key = Some(Secret::new(format!(
        "ck_test_admin_{}",
        uuid::Uuid::new_v4().simple()
    )));
    settings.relay.sweep_interval_ms = 200;
    settings.worker.concurrency = 4;
    settings.worker.lease_seconds = 15;
    settings.rcon.command_timeout_ms = 3000;
    settings.rcon.connect_timeout_ms = 2000;
    // Within the 15 s lease: 6 + 2 × 2 + 3.
    settings.rcon.slot_wait_ms = 6000;
    // A short schedule, so retries are seen within a test: 200, 400, 800 ms.
    for schedule in [
        &mut settings.retry.rcon,
        &mut settings.retry.discord,
        &mut settings.retry.supplier,
        &mut settings.retry.webhook,
        &mut settings.retry.email,
    ] {
        schedule.max_attempts = 4;
        schedule.base_delay_ms = 200;
        schedule.max_delay_ms = 1600;
    }
    settings.retry.waiting.interval_ms = 300;
    // The fake receivers listen on 127.0.0.1.
    settings.webhooks.allow_private_targets = true;
    settings.webhooks.timeout_ms = 2000;
    settings.rescuer.interval_ms = 200;
    settings.downloads.signing_key = Some(Secret::new("test-download-signing-key-32-bytes!!"));
    settings.downloads.local_dir = std::env::temp_dir()
        .join(format!("courier_files_{tag}"))
        .to_string_lossy()
        .into_owned();
    settings.discord.bot_token = Some(Secret::new("test-bot-token"));
    settings.keys.encryption_key =
        Some(Secret::new("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="));
    settings.worker.shutdown_grace_seconds = 10;
    settings.retry.payment.max_attempts = 4;
    settings.retry.payment.base_delay_ms = 200;
    settings.retry.payment.max_delay_ms = 1600;
    settings.payments.stripe_webhook_secret = Some(Secret::new(STRIPE_SECRET));
    settings.payments.generic_webhook_secret = Some(Secret::new(GENERIC_SECRET));
    settings.payments.stripe_secret_key = Some(Secret::new("sk_test_courier"));
    // Nothing listens here: a test that refunds through Stripe starts the fake.
    settings.payments.stripe_api_base = "http://127.0.0.1:9".into();
    (settings, db_name)
}

/// E-mail on, through the fake SMTP server on `port` (plain SMTP), from
/// `Test Store <shop@store.test>`.
pub fn use_fake_smtp(s: &mut Settings, port: u16) {
    s.email.enabled = true;
    s.email.smtp_host = "127.0.0.1".into();
    s.email.smtp_port = port;
    s.email.smtp_security = "none".into();
    s.email.from = "Test Store <shop@store.test>".into();
    s.email.store_name = "Test Store".into();
    s.email.timeout_ms = 3000;
}

/// `url` with its database name replaced.
pub fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let head = base.rsplit_once('/').map_or(base, |(h, _)| h);
    format!("{head}/{db}{query}")
}

impl TestStack {
    /// A stack with the default test settings and a running worker.
    pub async fn start() -> Self {
        Self::start_with(|_| {}, true).await
    }

    /// `tweak` adjusts settings before anything starts; `worker` starts one in-process.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings), worker: bool) -> Self {
        courier_shared::telemetry::init_for_tests();
        let (mut settings, db_name) = test_settings();
        tweak(&mut settings);
        let admin_url = replace_db(settings.database.url.expose(), "postgres");
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connect to Postgres as the courier role (run ./dev setup)");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{db_name}\""
        )))
        .execute(&mut admin)
        .await
        .expect("create test database");
        let cleanup = Cleanup {
            done: false,
            admin_url,
            db_name,
            amqp_url: settings.amqp.url.expose().to_owned(),
            queues: Topology::new(&settings.amqp.prefix, &settings.retry).all_queues(),
            files_dir: settings.downloads.local_dir.clone(),
        };
        let api = courier_api::startup::start(&settings)
            .await
            .expect("api starts");
        let base = format!("http://{}", api.addr);
        let pool = api.pool.clone();
        let admin_key = settings
            .api
            .bootstrap_admin_key
            .as_ref()
            .map(|k| k.expose().to_owned())
            .unwrap_or_default();
        let mut stack = TestStack {
            settings,
            api: Some(api),
            worker: None,
            extra_workers: Vec::new(),
            http: reqwest::Client::new(),
            base,
            admin_key,
            pool,
            cleanup,
        };
        if worker {
            stack.start_worker().await;
        }
        stack.wait_for_topology().await;
        stack
    }

    /// Waits until every queue of the stack exists (the relay and the worker
    /// declare them as they connect), then a little longer. A test that ends
    /// at once would otherwise delete quorum queues RabbitMQ is still
    /// starting, and RabbitMQ 3.10 can crash its dead-letter worker on that
    /// and leave quorum queues unusable for every later test (seen here).
    async fn wait_for_topology(&self) {
        let queues = Topology::new(&self.settings.amqp.prefix, &self.settings.retry).all_queues();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let conn = courier_shared::queue::Broker::plain(self.settings.amqp.url.expose())
            .connect()
            .await
            .expect("connect to RabbitMQ");
        for q in &queues {
            loop {
                let channel = conn.create_channel().await.expect("channel");
                let found = channel
                    .queue_declare(
                        q.as_str().into(),
                        lapin::options::QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        lapin::types::FieldTable::default(),
                    )
                    .await
                    .is_ok();
                let _ = channel.close(200, "checked".into()).await;
                if found {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "queue {q} was never declared"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = conn.close(200, "checked".into()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    pub async fn start_worker(&mut self) {
        let worker = courier_worker::startup::start(&self.settings)
            .await
            .expect("worker starts");
        self.worker = Some(worker);
    }

    /// The environment that makes a `courier-worker` process join this stack.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        process_env(&self.settings)
    }

    /// Waits until `sql` (a scalar query) returns true; panics after `limit`.
    pub async fn wait_until(&self, what: &str, sql: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let done: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&self.pool)
                .await
                .unwrap_or(false);
            if done {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn worker(&self) -> &RunningWorker {
        self.worker.as_ref().expect("stack has a worker")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends `method path` with the admin key and a JSON body; returns status and JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        self.call_as(&self.admin_key, method, path, body, &[]).await
    }

    pub async fn call_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(key);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// Posts `body` to `/webhooks/stripe` with `header` as `Stripe-Signature`.
    pub async fn post_stripe(&self, body: &str, header: Option<String>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(self.url("/webhooks/stripe"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(h) = header {
            req = req.header("Stripe-Signature", h);
        }
        let resp = req.send().await.expect("webhook sent");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Sends `event` signed with the test secret by the tests' own signing
    /// code; expects 200 and returns the answer.
    pub async fn send_stripe(&self, event: &Value) -> Value {
        let body = event.to_string();
        let header = crate::signing::stripe_header(STRIPE_SECRET, crate::signing::now(), &body);
        let (status, answer) = self.post_stripe(&body, Some(header)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }

    /// Posts `body` to `/webhooks/generic` with Standard Webhooks headers.
    pub async fn post_generic(
        &self,
        id: &str,
        ts: i64,
        body: &str,
        signature: &str,
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url("/webhooks/generic"))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await
            .expect("webhook sent");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Polls the order until `check` holds; panics with the order after 20 s.
    pub async fn wait_order_until(
        &self,
        id: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let o = self.order(id).await;
            if check(&o) {
                return o;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order never showed {what}: {o:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A product `sku` giving Discord role 222 in guild 111.
    pub async fn add_discord_product(&self, sku: &str) {
        self.add_product(
            sku,
            json!([{ "kind": "discord_role", "guild_id": "111", "role_id": "222" }]),
        )
        .await;
    }

    /// Unacknowledged admin alerts of `kind`.
    pub async fn alerts(&self, kind: &str) -> Vec<Value> {
        let (status, list) = self
            .call(reqwest::Method::GET, "/v1/admin/alerts?limit=500", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list["alerts"]
            .as_array()
            .map(|a| a.iter().filter(|a| a["kind"] == kind).cloned().collect())
            .unwrap_or_default()
    }

    /// One number from `sql` (a count).
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// A stack with a worker, a fake Minecraft server (password `pw`) registered
    /// as game server `s`, and product `p` running `command` on it.
    pub async fn with_rcon_product(command: &str) -> (Self, FakeGameServer) {
        Self::with_rcon_product_and(command, |_| {}, true).await
    }

    /// The same, with `tweak` applied to the stack's settings, and with a
    /// worker or without.
    pub async fn with_rcon_product_and(
        command: &str,
        tweak: impl FnOnce(&mut Settings),
        worker: bool,
    ) -> (Self, FakeGameServer) {
        let game = FakeGameServer::start("pw", courier_shared::rcon::Dialect::Minecraft)
            .await
            .expect("fake server");
        let stack = Self::start_with(tweak, worker).await;
        stack.add_game_server("s", &game).await;
        stack.add_rcon_product("p", "s", command).await;
        (stack, game)
    }

    /// Registers `server` as game server `name`.
    pub async fn add_game_server(&self, name: &str, server: &FakeGameServer) {
        let body = json!({
            "host": server.addr.ip().to_string(),
            "port": server.addr.port(),
            "password": server.password,
            "dialect": server.dialect.as_str(),
            "max_connections": 2,
        });
        let (status, resp) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/game-servers/{name}"),
                Some(&body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{resp}");
    }

    /// A product `sku` with one RCON action on game server `server`.
    pub async fn add_rcon_product(&self, sku: &str, server: &str, command: &str) {
        self.add_product(
            sku,
            json!([{ "kind": "rcon", "game_server": server, "command": command }]),
        )
        .await;
    }

    /// Registers a read-only key (`orders:read`) named `reader`; returns it.
    pub async fn reader_key(&self) -> String {
        let key = courier_shared::db::api_keys::generate();
        courier_shared::db::api_keys::insert(
            &self.pool,
            "reader",
            &key,
            &["orders:read".to_owned()],
        )
        .await
        .expect("reader key");
        key
    }

    /// A product `sku` with the given actions.
    pub async fn add_product(&self, sku: &str, actions: Value) {
        let body = json!({ "name": format!("Product {sku}"), "actions": actions });
        let (status, resp) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/products/{sku}"),
                Some(&body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{resp}");
    }

    /// Posts a paid order of one `sku` for `username`; returns the response.
    pub async fn post_order(
        &self,
        sku: &str,
        username: &str,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let body = sample_order(sku, username);
        let headers: Vec<(&str, &str)> = key
            .map(|k| vec![("Idempotency-Key", k)])
            .unwrap_or_default();
        self.call_as(
            &self.admin_key,
            reqwest::Method::POST,
            "/v1/orders",
            Some(&body),
            &headers,
        )
        .await
    }

    /// `GET /v1/orders/{id}` with the admin key (which reveals CD keys); panics unless 200.
    pub async fn order(&self, id: &str) -> Value {
        let (code, order) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/orders/{id}?expand=full"),
                None,
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{order}");
        order
    }

    /// Polls `GET /v1/orders/{id}` until its status is `status`; panics after `limit`.
    pub async fn wait_for_order(&self, id: &str, status: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let order = self.order(id).await;
            if order["status"] == status {
                return order;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("order {id} did not reach `{status}` within {limit:?}: {order:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes `body` straight to a work queue (bypassing the outbox), as a
    /// duplicate or a corrupt message would arrive.
    pub async fn publish_raw(&self, logical_queue: &str, body: &[u8]) {
        let conn = courier_shared::queue::Broker::plain(self.settings.amqp.url.expose())
            .connect()
            .await
            .expect("amqp");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let queue =
            Topology::new(&self.settings.amqp.prefix, &self.settings.retry).name(logical_queue);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
        let _ = conn.close(200, "done".into()).await;
    }

    /// Stops everything and removes the database and queues.
    pub async fn teardown(mut self) {
        if let Some(w) = self.worker.take() {
            w.stop().await;
        }
        for w in self.extra_workers.drain(..) {
            w.stop().await;
        }
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
        // Bounded: a connection a test forgot to drop must not hang the suite.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.pool.close()).await;
        self.cleanup.run().await;
    }
}

/// An accept path of a test's own — a group commit, a product cache that
/// hears of no change, the stack's rules — for tests that call
/// `service::orders::create_order` directly.
pub struct OwnAccepts {
    pub commit: courier_shared::service::orders::GroupCommit,
    pub cache: courier_shared::service::orders::ProductCache,
    pub rules: courier_shared::service::deliverable::AcceptRules,
}

impl OwnAccepts {
    /// `handoff` as the API gives its group commit (`None`: relays publish).
    pub fn new(stack: &TestStack, handoff: Option<courier_shared::db::outbox::Handoff>) -> Self {
        OwnAccepts {
            commit: courier_shared::service::orders::GroupCommit::start(
                stack.pool.clone(),
                prometheus_client::metrics::histogram::Histogram::new([1.0]),
                handoff,
            ),
            cache: courier_shared::service::orders::ProductCache::deaf(),
            rules: courier_shared::service::deliverable::AcceptRules::from_settings(
                &stack.settings,
            ),
        }
    }

    pub fn with<'a>(&'a self, pool: &'a PgPool) -> courier_shared::service::orders::AcceptWith<'a> {
        courier_shared::service::orders::AcceptWith {
            pool,
            commit: &self.commit,
            products: &self.cache,
            rules: &self.rules,
        }
    }
}

/// A paid order of one item, as a store back-end would send it.
pub fn sample_order(sku: &str, username: &str) -> Value {
    json!({
        "currency": "USD",
        "tax": "0.50",
        "gateway": "store",
        "transaction_id": "tx_123",
        "customer": { "name": "Alex", "email": "alex@example.com" },
        "game": { "username": username },
        "items": [{ "product": sku, "quantity": 2, "unit_price": "4.99" }],
    })
}

/// Creates the isolated database; the returned guard removes it and the queues.
pub async fn create_database(settings: &Settings, db_name: &str) -> Result<Cleanup, sqlx::Error> {
    let admin_url = replace_db(settings.database.url.expose(), "postgres");
    let mut admin = PgConnection::connect(&admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{db_name}\""
    )))
    .execute(&mut admin)
    .await?;
    Ok(Cleanup {
        done: false,
        admin_url,
        db_name: db_name.to_owned(),
        amqp_url: settings.amqp.url.expose().to_owned(),
        queues: Topology::new(&settings.amqp.prefix, &settings.retry).all_queues(),
        files_dir: settings.downloads.local_dir.clone(),
    })
}

/// Drops an isolated database and deletes its queues: explicitly with `run`,
/// or on drop (after a panic).
pub struct Cleanup {
    done: bool,
    admin_url: String,
    db_name: String,
    amqp_url: String,
    queues: Vec<String>,
    /// The stack's `downloads.local_dir`.
    files_dir: String,
}

impl Cleanup {
    pub async fn run(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let _ = std::fs::remove_dir_all(&self.files_dir);
        if let Ok(conn) = courier_shared::queue::Broker::plain(self.amqp_url.as_str())
            .connect()
            .await
        {
            // A failed delete closes its channel: each queue gets a fresh one
            // after a failure, so one error does not leave the rest behind.
            let mut channel = None;
            for q in &self.queues {
                if channel.is_none() {
                    channel = conn.create_channel().await.ok();
                }
                let Some(ch) = &channel else { break };
                if ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .is_err()
                {
                    tracing::warn!(queue = %q, "test cleanup could not delete a queue");
                    channel = None;
                }
            }
            let _ = conn.close(200, "cleanup".into()).await;
        }
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db_name
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

impl Drop for Cleanup {
    /// After a panic the test's runtime is going away: clean up on a thread of our own.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut this = Cleanup {
            done: false,
            admin_url: self.admin_url.clone(),
            db_name: self.db_name.clone(),
            amqp_url: self.amqp_url.clone(),
            queues: self.queues.clone(),
            files_dir: self.files_dir.clone(),
        };
        self.done = true;
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(this.run());
            }
        })
        .join();
    }
}

/// `COURIER__*` variables that reproduce `settings` in a child process (api or worker).
pub fn process_env(s: &Settings) -> Vec<(String, String)> {
    let mut vars = vec![
        ("DATABASE__URL", s.database.url.expose().to_owned()),
        (
            "DATABASE__MAX_CONNECTIONS",
            s.database.max_connections.to_string(),
        ),
        ("AMQP__URL", s.amqp.url.expose().to_owned()),
        ("AMQP__PREFIX", s.amqp.prefix.clone()),
        ("API__BIND", s.api.bind.clone()),
        ("WORKER__HTTP_BIND", s.worker.http_bind.clone()),
        (
            "RELAY__SWEEP_INTERVAL_MS",
            s.relay.sweep_interval_ms.to_string(),
        ),
        ("WORKER__LEASE_SECONDS", s.worker.lease_seconds.to_string()),
        ("WORKER__CONCURRENCY", s.worker.concurrency.to_string()),
        (
            "WORKER__SHUTDOWN_GRACE_SECONDS",
            s.worker.shutdown_grace_seconds.to_string(),
        ),
        (
            "RCON__COMMAND_TIMEOUT_MS",
            s.rcon.command_timeout_ms.to_string(),
        ),
        (
            "RCON__CONNECT_TIMEOUT_MS",
            s.rcon.connect_timeout_ms.to_string(),
        ),
        ("RCON__SLOT_WAIT_MS", s.rcon.slot_wait_ms.to_string()),
        (
            "RETRY__WAITING__INTERVAL_MS",
            s.retry.waiting.interval_ms.to_string(),
        ),
        ("RESCUER__INTERVAL_MS", s.rescuer.interval_ms.to_string()),
        (
            "RESCUER__OVERDUE_AFTER_SECS",
            s.rescuer.overdue_after_secs.to_string(),
        ),
        ("LOG__FILTER", "warn".to_owned()),
    ];
    if let Some(key) = &s.api.bootstrap_admin_key {
        vars.push(("API__BOOTSTRAP_ADMIN_KEY", key.expose().to_owned()));
    }
    if let Some(token) = &s.discord.bot_token {
        vars.push(("DISCORD__BOT_TOKEN", token.expose().to_owned()));
    }
    vars.push(("DISCORD__API_BASE", s.discord.api_base.clone()));
    if let Some(key) = &s.keys.encryption_key {
        vars.push(("KEYS__ENCRYPTION_KEY", key.expose().to_owned()));
    }
    if let Some(key) = &s.downloads.signing_key {
        vars.push(("DOWNLOADS__SIGNING_KEY", key.expose().to_owned()));
    }
    vars.push(("DOWNLOADS__LOCAL_DIR", s.downloads.local_dir.clone()));
    vars.push(("REDIS__URL", s.redis.url.expose().to_owned()));
    vars.push((
        "PAYMENTS__STRIPE_API_BASE",
        s.payments.stripe_api_base.clone(),
    ));
    for (key, secret) in [
        (
            "PAYMENTS__STRIPE_WEBHOOK_SECRET",
            &s.payments.stripe_webhook_secret,
        ),
        (
            "PAYMENTS__GENERIC_WEBHOOK_SECRET",
            &s.payments.generic_webhook_secret,
        ),
        ("PAYMENTS__STRIPE_SECRET_KEY", &s.payments.stripe_secret_key),
    ] {
        if let Some(v) = secret {
            vars.push((key, v.expose().to_owned()));
        }
    }
    let mut out: Vec<(String, String)> = vars
        .into_iter()
        .map(|(k, v)| (format!("COURIER__{k}"), v))
        .collect();
    for (name, sup) in &s.suppliers {
        let n = name.to_uppercase();
        out.push((
            format!("COURIER__SUPPLIERS__{n}__BASE_URL"),
            sup.base_url.clone(),
        ));
        out.push((
            format!("COURIER__SUPPLIERS__{n}__API_KEY"),
            sup.api_key.expose().to_owned(),
        ));
        out.push((
            format!("COURIER__SUPPLIERS__{n}__REQUESTS_PER_SECOND"),
            sup.requests_per_second.to_string(),
        ));
        out.push((
            format!("COURIER__SUPPLIERS__{n}__TIMEOUT_MS"),
            sup.timeout_ms.to_string(),
        ));
    }
    for (kind, r) in [
        ("RCON", &s.retry.rcon),
        ("DISCORD", &s.retry.discord),
        ("SUPPLIER", &s.retry.supplier),
        ("PAYMENT", &s.retry.payment),
    ] {
        out.push((
            format!("COURIER__RETRY__{kind}__MAX_ATTEMPTS"),
            r.max_attempts.to_string(),
        ));
        out.push((
            format!("COURIER__RETRY__{kind}__BASE_DELAY_MS"),
            r.base_delay_ms.to_string(),
        ));
        out.push((
            format!("COURIER__RETRY__{kind}__MAX_DELAY_MS"),
            r.max_delay_ms.to_string(),
        ));
    }
    out
}
