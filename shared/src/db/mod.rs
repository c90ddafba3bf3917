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

/// The worker's set-based writes are planned with their parameters every
/// time. sqlx prepares each statement once per connection, and after five
/// runs Postgres may keep a generic plan chosen while a table was small: the
/// claim's and the completer's `WHERE id = ANY($1)` statements then kept
/// scanning whole tables as they grew (seen with auto_explain: 9–12 ms
/// sequential scans of `orders` and `order_items` per batch). Figures in
/// docs/hot-path.md. (The API's reads are one-row index lookups whose
/// generic plan is right; they are left to Postgres.)
pub const CUSTOM_PLANS: (&str, &str) = ("plan_cache_mode", "force_custom_plan");

/// The same, each connection started with `session` settings
/// (`Settings::session`, and `CUSTOM_PLANS` for the worker).
pub fn connect_lazy_with(
    settings: &DatabaseSettings,
    session: &[(&str, String)],
) -> Result<PgPool, sqlx::Error> {
    let options: sqlx::postgres::PgConnectOptions = settings.url.expose().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.options(session.iter().map(|(k, v)| (*k, v.as_str())))))
}

/// Applies pending migrations; safe to run from several processes at once
/// (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
