//! `courier-api export`, built inside the test package so the suite can run
//! it as a child process: cargo tells a test where its own package's
//! binaries are, not another package's. The same arguments and code as the
//! subcommand (`courier_api::export_cli`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "courier-api-export")]
struct Cli {
    #[command(flatten)]
    args: courier_api::export_cli::ExportArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = courier_shared::config::Settings::load()?;
    courier_shared::telemetry::init(&settings.log);
    courier_api::export_cli::run(&settings, cli.args).await
}
