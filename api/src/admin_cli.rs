//! `courier-api admin …`: the admin API's failure handling from a shell, for
//! operators with database access. Prints JSON; the actor in the timeline is
//! `cli:$USER`.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use courier_shared::config::Settings;
use courier_shared::db::dead_letters::{self, Filter};
use courier_shared::db::{self, orders, rescue};
use courier_shared::domain::delivery::DeliveryKind;
use courier_shared::service::admin;
use serde_json::json;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Dead letters: deliveries that failed for good, and undecodable messages.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Deliveries held after a worker died mid-command.
    Held,
    /// Retry a dead or held delivery by id.
    RetryDelivery { id: uuid::Uuid },
}

#[derive(Subcommand)]
pub enum DeadLetterCommand {
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        before: Option<i64>,
    },
    Show {
        id: i64,
    },
    Retry {
        id: i64,
    },
    /// Retry every open dead letter matching the filter (a snapshot taken first).
    RetryAll {
        #[command(flatten)]
        filter: FilterArgs,
    },
    Discard {
        id: i64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Args)]
pub struct FilterArgs {
    /// rcon, discord_role or supplier_key
    #[arg(long)]
    kind: Option<String>,
    /// The target (game server id, …).
    #[arg(long)]
    target: Option<String>,
    /// Substring of the reason.
    #[arg(long)]
    error: Option<String>,
    /// RFC 3339 instant.
    #[arg(long)]
    older_than: Option<DateTime<Utc>>,
    #[arg(long)]
    newer_than: Option<DateTime<Utc>>,
}

impl FilterArgs {
    fn into_filter(self) -> anyhow::Result<Filter> {
        let kind = self
            .kind
            .map(|k| k.parse::<DeliveryKind>())
            .transpose()
            .map_err(|e| anyhow::anyhow!("--kind: {e}"))?;
        Ok(Filter {
            kind,
            target: self.target,
            error: self.error,
            older_than: self.older_than,
            newer_than: self.newer_than,
            include_resolved: false,
        })
    }
}

pub async fn run(settings: &Settings, command: AdminCommand) -> anyhow::Result<()> {
    let pool = db::connect_lazy_with(&settings.database, &settings.session())?;
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let out = match command {
        AdminCommand::Held => json!({ "held": rescue::held(&pool, 500, None).await?.0 }),
        AdminCommand::RetryDelivery { id } => {
            admin::retry_delivery(&pool, id, &actor).await?;
            json!({ "requeued": 1 })
        }
        AdminCommand::DeadLetters(cmd) => match cmd {
            DeadLetterCommand::List {
                filter,
                limit,
                before,
            } => {
                let mut conn = pool.acquire().await?;
                json!({ "dead_letters": dead_letters::list(&mut conn, &filter.into_filter()?, limit, before).await? })
            }
            DeadLetterCommand::Show { id } => {
                let mut conn = pool.acquire().await?;
                let dl = dead_letters::get(&mut conn, id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no dead letter {id}"))?;
                let attempts = match dl.delivery_id {
                    Some(d) => orders::load_attempts(&mut conn, d).await?,
                    None => Vec::new(),
                };
                json!({ "dead_letter": dl, "attempts": attempts })
            }
            DeadLetterCommand::Retry { id } => {
                admin::retry_dead_letter(&pool, id, &actor).await?;
                json!({ "requeued": 1 })
            }
            DeadLetterCommand::RetryAll { filter } => serde_json::to_value(
                admin::retry_matching(&pool, &filter.into_filter()?, &actor).await?,
            )?,
            DeadLetterCommand::Discard { id, reason } => {
                admin::discard_dead_letter(&pool, id, &actor, &reason).await?;
                json!({ "discarded": 1 })
            }
        },
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
