//! `courier-worker`: runs deliveries from the queues until SIGTERM/SIGINT.

use courier_shared::config::Settings;
use courier_shared::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "courier-worker: consumes Courier's job queues. Configured by COURIER__* variables (see README)."
        );
        return Ok(());
    }
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    let worker = courier_worker::startup::start(&settings).await?;
    let stop = worker.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight jobs");
        let _ = stop.send(true);
    });
    worker.wait().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
