//! Builds a worker: pool, driver set, one consumer per supported kind.

use std::sync::Arc;

use anyhow::Context as _;
use courier_shared::config::Settings;
use courier_shared::db;
use courier_shared::domain::delivery::DeliveryKind;
use courier_shared::queue::topology::Topology;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::consume::{self, Context, Stats};
use crate::drivers::rcon::RconDriver;

/// Kinds this build has drivers for; the others' queues are left for workers that do.
pub const SUPPORTED: &[DeliveryKind] = &[
    DeliveryKind::Rcon,
    DeliveryKind::DiscordRole,
    DeliveryKind::SupplierKey,
    DeliveryKind::GatewayRefund,
    DeliveryKind::Webhook,
    DeliveryKind::Email,
    DeliveryKind::Alert,
    DeliveryKind::Download,
];

pub struct RunningWorker {
    ctx: Arc<Context>,
    /// Where `/healthz`, `/readyz` and `/metrics` answer.
    pub http_addr: std::net::SocketAddr,
    shutdown: watch::Sender<bool>,
    consumers: JoinSet<()>,
    /// The listener stops after the consumers, so a drain can be watched
    /// (and its last counts scraped) until it ends.
    http_stop: watch::Sender<bool>,
    http: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    pub fn stats(&self) -> &Stats {
        &self.ctx.stats
    }

    /// The shared job context (tests drive the rescuer with it).
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub fn id(&self) -> &str {
        &self.ctx.worker_id
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Stops consuming and waits for in-flight jobs.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.wait().await;
    }

    /// Waits until the consumers end (after a shutdown request), then stops
    /// the listener.
    pub async fn wait(mut self) {
        while self.consumers.join_next().await.is_some() {}
        let _ = self.http_stop.send(true);
        let _ = self.http.await;
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

pub async fn start(settings: &Settings) -> anyhow::Result<RunningWorker> {
    let pool = db::connect_lazy_with(&settings.database, &{
        let mut session = settings.session();
        session.extend(db::WORKER_PLANS.map(|(k, v)| (k, v.to_owned())));
        session
    })
    .context("database.url")?;
    let worker_id = settings.worker.id.clone().unwrap_or_else(default_worker_id);
    let ca = courier_shared::tls::CaBundle::load(&settings.tls)?;
    let limits = Arc::new(courier_shared::limits::Limits::with_client(
        Some(courier_shared::redis::client(settings.redis.url.expose(), &ca).context("redis.url")?),
        &settings.amqp.prefix,
    ));
    let metrics = crate::metrics::WorkerMetrics::default();
    let cipher = settings
        .keys
        .encryption_key
        .as_ref()
        .map(|k| courier_shared::crypto::KeyCipher::from_base64(k.expose()))
        .transpose()
        .context("keys.encryption_key")?;
    let mut email_settings = settings.email.clone();
    email_settings.timeout_ms = settings.within_lease(email_settings.timeout_ms);
    let email = crate::drivers::email::EmailDriver::new(
        &email_settings,
        cipher.clone(),
        settings.downloads.signer(),
    )?;
    let mut webhook_settings = settings.webhooks.clone();
    webhook_settings.timeout_ms = settings.within_lease(webhook_settings.timeout_ms);
    let completer = crate::completer::Completer::start(
        pool.clone(),
        worker_id.clone(),
        metrics.completer_batch.clone(),
    );
    let ctx = Arc::new(Context {
        pool,
        worker_id,
        completer,
        lease_seconds: settings.worker.lease_seconds,
        shutdown_grace: std::time::Duration::from_secs(u64::from(
            settings.worker.shutdown_grace_seconds,
        )),
        retry: settings.retry.clone(),
        topology: Topology::new(&settings.amqp.prefix, &settings.retry),
        rcon: RconDriver::new(
            settings.rcon.clone(),
            std::time::Duration::from_secs(u64::from(settings.worker.lease_seconds)),
        ),
        discord: crate::drivers::discord::DiscordDriver::new(
            settings.discord.clone(),
            limits.clone(),
        ),
        supplier: crate::drivers::supplier::SupplierDriver::new(
            settings.suppliers.clone(),
            cipher,
            limits.clone(),
        ),
        payment: crate::drivers::payment::PaymentDriver::new(settings.payments.clone()),
        email,
        download: crate::drivers::download::DownloadDriver::new(&settings.downloads),
        alert: crate::drivers::alert::AlertDriver::new(courier_shared::config::AlertSettings {
            timeout_ms: settings.within_lease(settings.alerts.timeout_ms),
            ..settings.alerts.clone()
        }),
        webhook: crate::drivers::webhook::WebhookDriver::new(webhook_settings, limits.clone()),
        payment_policy: courier_shared::service::payments::PaymentPolicy {
            revoke_on_dispute: settings.payments.revoke_on_dispute,
            accept: Arc::new(
                courier_shared::service::deliverable::AcceptRules::from_settings(settings),
            ),
        },
        limits,
        stats: Stats::default(),
        broker: courier_shared::queue::Broker {
            url: settings.amqp.url.clone(),
            ca,
        },
        metrics,
    });
    let (shutdown, rx) = watch::channel(false);
    let mut consumers = JoinSet::new();
    for kind in SUPPORTED {
        consumers.spawn(consume::run(
            ctx.clone(),
            *kind,
            settings.worker.concurrency,
            rx.clone(),
        ));
    }
    consumers.spawn(crate::recorder::run(ctx.clone(), rx.clone()));
    consumers.spawn(crate::rescuer::run(
        ctx.clone(),
        std::time::Duration::from_millis(settings.rescuer.interval_ms),
        settings.rescuer.overdue_after_secs,
        rx.clone(),
    ));
    let (http_stop, http_rx) = watch::channel(false);
    let (http_addr, http) = crate::http::start(
        &settings.worker.http_bind,
        ctx.clone(),
        i64::try_from(SUPPORTED.len() + 1).unwrap_or(i64::MAX),
        http_rx,
    )
    .await
    .with_context(|| format!("binding worker.http_bind = {}", settings.worker.http_bind))?;
    tracing::info!(worker = %ctx.worker_id, %http_addr, "courier-worker started");
    Ok(RunningWorker {
        ctx,
        http_addr,
        http_stop,
        http,
        shutdown,
        consumers,
    })
}

/// The whole `courier-worker` process: configuration, logs, consumers, and a
/// graceful stop on SIGTERM/SIGINT (in-flight jobs get
/// `worker.shutdown_grace_seconds`; exit status 0).
pub async fn run_process() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "courier-worker: consumes Courier's job queues. Configured by COURIER__* variables (see README)."
        );
        return Ok(());
    }
    let settings = Settings::load()?;
    courier_shared::telemetry::init(&settings.log);
    let worker = start(&settings).await?;
    let stop = worker.shutdown_handle();
    tokio::spawn(async move {
        courier_shared::shutdown::signal().await;
        tracing::info!("shutting down: finishing in-flight jobs");
        let _ = stop.send(true);
    });
    worker.wait().await;
    tracing::info!("stopped");
    Ok(())
}
