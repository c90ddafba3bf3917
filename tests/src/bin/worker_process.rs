//! The `courier-worker` process, built inside the test package so the suite can
//! run it as a child (and SIGKILL it) via `CARGO_BIN_EXE_courier-worker-process`.
//! Same code path as the real binary: `courier_worker::startup::run_process`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    courier_worker::startup::run_process().await
}
