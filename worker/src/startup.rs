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
pub const SUPPORTED: &[DeliveryKind] = &[DeliveryKind::Rcon];

pub struct RunningWorker {
    ctx: Arc<Context>,
    shutdown: watch::Sender<bool>,
    consumers: JoinSet<()>,
}

impl RunningWorker {
    pub fn stats(&self) -> &Stats {
        &self.ctx.stats
    }

    pub fn id(&self) -> &str {
        &self.ctx.worker_id
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Stops consuming and waits for in-flight jobs.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.consumers.join_next().await.is_some() {}
    }

    /// Waits until the consumers end (after a shutdown request).
    pub async fn wait(mut self) {
        while self.consumers.join_next().await.is_some() {}
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
    let pool = db::connect_lazy(&settings.database).context("database.url")?;
    let worker_id = settings.worker.id.clone().unwrap_or_else(default_worker_id);
    let ctx = Arc::new(Context {
        pool,
        worker_id,
        lease_seconds: settings.worker.lease_seconds,
        rcon: RconDriver::new(settings.rcon.clone()),
        stats: Stats::default(),
    });
    let (shutdown, rx) = watch::channel(false);
    let mut consumers = JoinSet::new();
    let topology = Topology::new(&settings.amqp.prefix);
    for kind in SUPPORTED {
        consumers.spawn(consume::run(
            ctx.clone(),
            settings.amqp.url.expose().to_owned(),
            topology.clone(),
            *kind,
            settings.worker.concurrency,
            rx.clone(),
        ));
    }
    tracing::info!(worker = %ctx.worker_id, "courier-worker started");
    Ok(RunningWorker {
        ctx,
        shutdown,
        consumers,
    })
}
