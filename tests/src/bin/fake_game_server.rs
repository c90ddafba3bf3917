//! A stand-alone fake game server for the demo: speaks RCON, prints every
//! command it receives.

use clap::Parser;
use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::FakeGameServer;

#[derive(Parser)]
#[command(
    name = "courier-fake-game-server",
    about = "A fake RCON game server that prints the commands it receives"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:25575")]
    bind: String,
    #[arg(long, default_value = "demo-password")]
    password: String,
    /// minecraft or source
    #[arg(long, default_value = "minecraft")]
    dialect: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dialect: Dialect = args
        .dialect
        .parse()
        .map_err(|e| anyhow::anyhow!("--dialect: {e}"))?;
    let server = FakeGameServer::start_on(&args.bind, &args.password, dialect, true).await?;
    println!(
        "fake game server listening on {} ({})",
        server.addr, dialect
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
