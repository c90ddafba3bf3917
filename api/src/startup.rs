//! Builds the API: database pool, migrations, bootstrap key, router, relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use courier_shared::config::Settings;
use courier_shared::db;
use courier_shared::queue::Broker;
use courier_shared::queue::topology::Topology;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::relay::Relay;
use crate::routes;

/// What every handler can reach: a handle to one `Shared`. axum clones
/// the state for every extractor and middleware of every request; cloning
/// the fields themselves (a Redis client, the topology's names, the broker's
/// URL) cost a dozen allocations per clone, a few per request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state itself (see `AppState`).
pub struct Shared {
    pub pool: PgPool,
    pub relay_wake: Arc<Notify>,
    pub relay_connected: Arc<AtomicBool>,
    pub redis: redis::Client,
    /// Decrypts CD keys for callers with `orders:keys`; `None` without `keys.encryption_key`.
    pub cipher: Option<courier_shared::crypto::KeyCipher>,
    pub suppliers: std::sync::Arc<
        std::collections::BTreeMap<String, courier_shared::config::SupplierSettings>,
    >,
    /// Webhook secrets and the dispute policy.
    pub payments: Arc<courier_shared::config::PaymentSettings>,
    /// What this installation can deliver and the size cap, for saving
    /// products and accepting orders.
    pub rules: Arc<courier_shared::service::deliverable::AcceptRules>,
    /// Writes the orders accepted at the same moment together.
    pub accepts: courier_shared::service::orders::GroupCommit,
    /// Reads the statuses asked for at the same moment together.
    pub status_reads: courier_shared::service::orders::StatusReads,
    /// The products orders name, kept until the catalog changes.
    pub products: Arc<courier_shared::service::orders::ProductCache>,
    /// API keys looked up recently.
    pub keys: Arc<crate::auth::KeyCache>,
    /// Wakes requests waiting for an order's status to change.
    pub waiters: Arc<crate::waiters::Waiters>,
    pub metrics: Arc<crate::metrics::ApiMetrics>,
    /// Permits for order exports running at once (`api.max_exports`).
    pub exports: Arc<tokio::sync::Semaphore>,
    /// For the queue gauges of `/metrics`.
    pub broker: Broker,
    pub topology: Topology,
    /// Outbound webhooks: which endpoint URLs are allowed, the default overlap of a rotation.
    pub webhooks: Arc<courier_shared::config::WebhookSettings>,
    /// `email.enabled`: the resend can be sent.
    pub email_enabled: bool,
    /// Product files: a local directory or S3 (`downloads.storage`);
    /// `None` when it could not be set up (logged at start: uploads and
    /// downloads answer 503 naming it, everything else works).
    pub storage: Option<crate::storage::Storage>,
    /// Upload cap and link defaults.
    pub downloads: Arc<courier_shared::config::DownloadSettings>,
    /// Checks and signs download links; `None` without `downloads.signing_key`.
    pub signer: Option<courier_shared::domain::download::LinkSigner>,
    /// The admin console's session length and cookie policy.
    pub console: Arc<courier_shared::config::ConsoleSettings>,
    /// `rcon.*` timeouts, for a game server's connection test.
    pub rcon: courier_shared::rcon::client::Timeouts,
}

/// A running API: its address, and a way to stop it.
pub struct RunningApi {
    pub addr: SocketAddr,
    pub pool: PgPool,
    /// The process's product cache (for tests of what it keeps).
    pub products: Arc<courier_shared::service::orders::ProductCache>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    relay: JoinHandle<()>,
}

impl RunningApi {
    /// Stops taking requests, lets in-flight ones finish, stops the relay.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        let _ = self.relay.await;
    }

    /// Resolves when a shutdown was requested and everything stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        let result = self.server.await;
        let _ = self.shutdown.send(true);
        let _ = self.relay.await;
        result.context("server task")?.context("server")
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Binds `api.bind` (port 0 picks a free one) and starts the server and the relay.
pub async fn start(settings: &Settings) -> anyhow::Result<RunningApi> {
    let pool =
        db::connect_lazy_with(&settings.database, &settings.session()).context("database.url")?;
    if settings.database.migrate_on_start {
        db::migrate(&pool).await.context("running migrations")?;
    }
    if let Some(key) = &settings.api.bootstrap_admin_key {
        db::api_keys::insert(
            &pool,
            "bootstrap-admin",
            key.expose(),
            &["admin".to_owned()],
        )
        .await
        .context("registering api.bootstrap_admin_key")?;
    }
    let ca = courier_shared::tls::CaBundle::load(&settings.tls)?;
    let redis =
        courier_shared::redis::client(settings.redis.url.expose(), &ca).context("redis.url")?;
    let broker = Broker {
        url: settings.amqp.url.clone(),
        ca,
    };
    let topology = Topology::new(&settings.amqp.prefix, &settings.retry);
    let metrics = Arc::new(crate::metrics::ApiMetrics::default());
    let relay_wake = Arc::new(Notify::new());
    // Handovers of freshly accepted orders' outbox rows to the relay's direct
    // lanes; a full queue sends them through the sweep instead.
    let (handoff, direct) = tokio::sync::mpsc::channel(1024);
    let handoff = courier_shared::db::outbox::Handoff {
        rows: settings.relay.publish_directly.then_some(handoff),
        sweep: relay_wake.clone(),
    };
    let relay_connected = Arc::new(AtomicBool::new(false));
    let (shutdown, rx) = watch::channel(false);
    let state = AppState(Arc::new(Shared {
        pool: pool.clone(),
        relay_wake: relay_wake.clone(),
        relay_connected: relay_connected.clone(),
        redis,
        cipher: settings
            .keys
            .encryption_key
            .as_ref()
            .map(|k| courier_shared::crypto::KeyCipher::from_base64(k.expose()))
            .transpose()
            .context("keys.encryption_key")?,
        suppliers: Arc::new(settings.suppliers.clone()),
        payments: Arc::new(settings.payments.clone()),
        rules: Arc::new(courier_shared::service::deliverable::AcceptRules::from_settings(settings)),
        accepts: courier_shared::service::orders::GroupCommit::start(
            pool.clone(),
            metrics.accept_batch.clone(),
            Some(handoff),
        ),
        status_reads: courier_shared::service::orders::StatusReads::start(
            pool.clone(),
            metrics.status_read_batch.clone(),
        ),
        keys: Arc::new(crate::auth::KeyCache::new(std::time::Duration::from_secs(
            settings.api.key_cache_seconds,
        ))),
        products: courier_shared::service::orders::ProductCache::start(pool.clone(), rx.clone()),
        waiters: crate::waiters::Waiters::start(pool.clone(), rx.clone()),
        metrics: metrics.clone(),
        exports: Arc::new(tokio::sync::Semaphore::new(settings.api.max_exports)),
        broker: broker.clone(),
        topology: topology.clone(),
        webhooks: Arc::new(settings.webhooks.clone()),
        email_enabled: settings.email.enabled,
        storage: match crate::storage::Storage::from_settings(&settings.downloads) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "file storage is unavailable: uploads and downloads will answer 503"
                );
                None
            }
        },
        downloads: Arc::new(settings.downloads.clone()),
        signer: settings.downloads.signer(),
        console: Arc::new(settings.console.clone()),
        rcon: settings.rcon.timeouts(),
    }));
    let products = state.products.clone();
    let app =
        routes::router(state.clone()).layer(DefaultBodyLimit::max(settings.api.body_limit_bytes));
    let listener = TcpListener::bind(&settings.api.bind)
        .await
        .with_context(|| format!("binding api.bind = {}", settings.api.bind))?;
    let addr = listener.local_addr()?;

    tokio::spawn(start_delayed(
        pool.clone(),
        state.rules.clone(),
        relay_wake.clone(),
        rx.clone(),
    ));
    let relay = Relay {
        pool: pool.clone(),
        broker,
        topology,
        metrics,
        settings: settings.relay.clone(),
        wake: relay_wake,
        direct: tokio::sync::Mutex::new(direct),
        connected: relay_connected,
    };
    let relay = tokio::spawn(relay.run(rx.clone()));
    let mut server_rx = rx;
    let server = tokio::spawn(async move {
        // The peer address is kept for the download log.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = server_rx.wait_for(|stop| *stop).await;
        })
        .await
    });
    tracing::info!(%addr, "courier-api listening");
    Ok(RunningApi {
        addr,
        pool,
        products,
        shutdown,
        server,
        relay,
    })
}

/// Starts delayed orders once their process delay is over (every API
/// process does; `start_due` skips an order another one is starting), then
/// wakes the relay for the deliveries queued.
async fn start_delayed(
    pool: sqlx::PgPool,
    rules: Arc<courier_shared::service::deliverable::AcceptRules>,
    relay_wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    loop {
        match courier_shared::service::manual::start_due(&pool, &rules, 100).await {
            Ok(0) => {}
            Ok(_) => relay_wake.notify_one(),
            Err(e) => tracing::warn!(error = %e, "could not start delayed orders; will retry"),
        }
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// `courier-api serve`: runs until SIGTERM/SIGINT, then stops taking requests,
/// lets in-flight ones finish and stops the relay.
pub async fn serve(settings: &Settings) -> anyhow::Result<()> {
    let api = start(settings).await?;
    let stop = api.shutdown_handle();
    tokio::spawn(async move {
        courier_shared::shutdown::signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    api.wait().await
}
