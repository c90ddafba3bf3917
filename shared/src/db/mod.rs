//! Database access. Functions take `&mut PgConnection` so callers compose them
//! inside one transaction; status changes are guarded by the expected status.

pub mod accept;
pub mod api_keys;
pub mod backlog;
pub mod catalog;
pub mod dead_letters;
pub mod deliveries;
pub mod disputes;
pub mod downloads;
pub mod emails;
pub mod events;
pub mod export;
pub mod keys;
pub mod listen;
pub mod notes;
pub mod order_list;
pub mod orders;
pub mod outbox;
pub mod payment_events;
pub mod payments;
pub mod refunds;
pub mod reports;
pub mod rescue;
pub mod statuses;
pub mod webhooks;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseSettings;

/// The embedded migrations (`migrations/` at the repository root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool that is created even when Postgres is down (connections are opened on
/// use), so a process can start, report not-ready, and recover by itself.
pub fn connect_lazy(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    connect_lazy_with(settings, &[])
}

/// How the worker's connections plan: one generic plan per prepared
/// statement, with index access whatever the tables' size, and no JIT.
///
/// - `plan_cache_mode = force_generic_plan`: sqlx prepares each statement
///   once per connection, so a generic plan is made once and reused. At the
///   worker's small batches, planning every statement cost as much as running
///   it (pg_stat_statements, two workers, 20 ms commands: ≈ 3.1 ms of
///   planning and 3.0 ms of execution per completer batch and claim).
/// - `enable_seqscan = off`: the worker starts on a new, nearly empty
///   database as well as an old one, and a generic plan made while `orders`
///   or `order_items` held a few rows was a sequential scan with
///   `id = ANY($1)` as a filter, kept as the table grew (auto_explain:
///   9–12 ms per batch). Every hot statement looks rows up by a key that has
///   an index; where none exists (`game_servers` by its text id) the scan
///   still happens, only costed higher.
/// - `jit = off`: that higher cost (a `disable_cost` of 10¹⁰) is far above
///   `jit_above_cost`, so each execution was JIT-compiled by LLVM
///   (39 functions, hundreds of ms per claim). JIT never pays for the
///   worker's one-row-per-delivery statements.
///
/// Figures in docs/hot-path.md. The API keeps Postgres's defaults: its reads
/// are one-row index lookups that Postgres plans well by itself.
pub const WORKER_PLANS: [(&str, &str); 3] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
    ("jit", "off"),
];

/// A pooled connection idle this long is pinged before it is handed out;
/// one in use more recently is not. sqlx's default pings on every acquire,
/// an extra round trip for every statement and transaction (sqlx also pings
/// on every release, which cannot be turned off). Without the acquire ping
/// the status read did 8,894–10,223 req/s against 6,586–8,242 with it
/// (`courier-bench reads`, three alternating runs each; docs/hot-path.md).
pub const PING_IF_IDLE: Duration = Duration::from_secs(1);

/// The same, each connection started with `session` settings
/// (`Settings::session`, and `WORKER_PLANS` for the worker).
pub fn connect_lazy_with(
    settings: &DatabaseSettings,
    session: &[(&str, String)],
) -> Result<PgPool, sqlx::Error> {
    let options: sqlx::postgres::PgConnectOptions = settings.url.expose().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options.options(session.iter().map(|(k, v)| (*k, v.as_str())))))
}

/// Applies pending migrations; safe to run from several processes at once
/// (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
