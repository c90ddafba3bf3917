//! Courier's end-to-end suite: one binary, one module per capability. Every
//! test starts its own isolated stack (database, queue prefix) against the real
//! Postgres, RabbitMQ and Redis; only the outside world is faked.

mod alerts;
mod bench;
mod console;
mod dead_letters;
mod deploy;
mod discord;
mod downloads;
mod email;
mod export;
mod hostile;
mod hot_path;
mod keys;
mod limits;
mod manual;
mod metrics;
mod money;
mod openapi;
mod order_list;
mod orders;
mod outbox;
mod payments;
mod rcon_client;
mod rcon_habits;
mod redelivery;
mod reports;
mod rescuer;
mod retries;
mod shutdown;
mod status;
mod tls;
mod validation;
mod webhooks_out;

/// A `courier-worker` process joining `stack` (killed when dropped).
pub fn spawn_worker_process(stack: &courier_tests::stack::TestStack) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_courier-worker-process"))
        .envs(stack.worker_env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("worker process starts")
}
