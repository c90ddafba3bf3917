//! `courier-api`: serve the HTTP API (and the outbox relay), run migrations,
//! create API keys, seed the catalog.

use anyhow::Context;
use clap::{Parser, Subcommand};
use courier_api::auth::parse_scopes;
use courier_shared::config::Settings;
use courier_shared::{db, telemetry};

#[derive(Parser)]
#[command(
    name = "courier-api",
    version,
    about = "Courier's HTTP API and outbox relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and run the outbox relay (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create an API key and print it once (only its hash is stored).
    CreateKey {
        /// A name that says who uses the key, e.g. `store-backend`.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: orders:write, orders:read, admin.
        #[arg(long, default_value = "orders:write,orders:read")]
        scopes: String,
    },
    /// Create or replace game servers and products from a JSON file
    /// (`{"game_servers": {name: {...}}, "products": {sku: {...}}}`).
    Seed {
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Print the OpenAPI 3.1 document (as served at `/openapi.json`) and exit.
    Openapi,
    /// Look at and act on failed work (dead letters, held deliveries).
    #[command(subcommand)]
    Admin(courier_api::admin_cli::AdminCommand),
    /// Export the orders the list's filters select to a CSV or XLSX file
    /// (admin columns included), with a progress bar on stderr.
    Export(Box<courier_api::export_cli::ExportArgs>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Openapi)) {
        use utoipa::OpenApi;
        println!(
            "{}",
            courier_api::openapi::ApiDoc::openapi().to_pretty_json()?
        );
        return Ok(());
    }
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => courier_api::startup::serve(&settings).await,
        Command::Migrate => {
            let pool = db::connect_lazy_with(&settings.database, &settings.session())?;
            db::migrate(&pool).await.context("running migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::CreateKey { name, scopes } => {
            let scopes = parse_scopes(&scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            let pool = db::connect_lazy_with(&settings.database, &settings.session())?;
            let key = db::api_keys::generate();
            db::api_keys::insert(&pool, &name, &key, &scopes).await?;
            println!("{key}");
            Ok(())
        }
        Command::Seed { file } => courier_api::seed::run(&settings, &file).await,
        Command::Admin(cmd) => courier_api::admin_cli::run(&settings, cmd).await,
        Command::Export(args) => courier_api::export_cli::run(&settings, *args).await,
        Command::Openapi => Ok(()),
    }
}
