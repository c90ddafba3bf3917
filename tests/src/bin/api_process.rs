//! `courier-api serve`, built inside the test package so the suite and the
//! benchmark can run it as a child process (same code: `startup::start`). It
//! prints `listening <addr>` on stdout once bound, so a parent can use port 0
//! without racing other processes for a port.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = courier_shared::config::Settings::load()?;
    courier_shared::telemetry::init(&settings.log);
    let api = courier_api::startup::start(&settings).await?;
    println!("listening {}", api.addr);
    let stop = api.shutdown_handle();
    tokio::spawn(async move {
        courier_shared::shutdown::signal().await;
        let _ = stop.send(true);
    });
    api.wait().await
}
