//! `courier-worker`: runs deliveries from the queues until SIGTERM/SIGINT.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    courier_worker::startup::run_process().await
}
