//! Saving game servers and products, with every check done at save time (an
//! unknown placeholder or game server is rejected here, not at delivery).

use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::Invalid;
use super::deliverable::AcceptRules;
use crate::db::catalog::{self, GameServer, Product};
use crate::domain::action::{ActionConfig, OnAmbiguous};
use crate::domain::template::Template;
use crate::error::DbError;
use crate::rcon::{Dialect, Framing};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Well-formed, but this installation cannot run it (a missing secret or
    /// supplier configuration).
    #[error("{0}")]
    NotDeliverable(Invalid),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for CatalogError {
    fn from(e: sqlx::Error) -> Self {
        CatalogError::Db(e.into())
    }
}

/// Body of `PUT /v1/game-servers/{name}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GameServerInput {
    pub host: String,
    pub port: u16,
    /// Required for a new game server; absent when replacing one keeps its
    /// stored password (which is never returned).
    #[serde(default)]
    pub password: Option<String>,
    pub dialect: Dialect,
    #[serde(default = "default_max_connections")]
    pub max_connections: u16,
    /// `auto` (default: `exec_only` for Minecraft, `sentinel` for Source),
    /// `exec_only`, `exec_quiet` or `sentinel`; docs/rcon.md says which server
    /// families need which.
    #[serde(default)]
    pub framing: Framing,
    /// How long an answer may pause before it counts as complete (and, under
    /// `exec_quiet`, how long a command without output is waited for).
    #[serde(default = "default_quiet_ms")]
    pub quiet_ms: u32,
    /// Answer starts (case-insensitive) that mean the server refused the
    /// command, beyond the dialect's own.
    #[serde(default)]
    pub error_patterns: Vec<String>,
    /// The command that lists online players for `require_online`
    /// (default `list` on Minecraft, `status` on Source).
    #[serde(default)]
    pub online_command: Option<String>,
}

fn default_quiet_ms() -> u32 {
    500
}

fn default_max_connections() -> u16 {
    2
}

fn check_name(field: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Invalid::new(
            field,
            "use 1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(())
}

/// Most actions one product may have.
pub const MAX_ACTIONS: usize = 20;
/// Most supplier candidates one key action may try.
pub const MAX_CANDIDATES: usize = 10;
/// Longest product name.
pub const MAX_PRODUCT_NAME: usize = 200;

/// A host name (RFC 1123 labels; `_` allowed, as container networks use it)
/// or an IP address.
fn check_host(host: &str) -> Result<(), Invalid> {
    let bad = || {
        Invalid::new(
            "host",
            "must be an IP address or a host name (letters, digits, '-', '_' and '.', at most 253 characters)",
        )
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if host.is_empty() || host.len() > 253 {
        return Err(bad());
    }
    let labels_ok = host.trim_end_matches('.').split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    });
    if labels_ok { Ok(()) } else { Err(bad()) }
}

pub async fn save_game_server(
    pool: &PgPool,
    name: &str,
    input: GameServerInput,
    rules: &AcceptRules,
) -> Result<GameServer, CatalogError> {
    check_name("name", name)?;
    check_host(&input.host)?;
    if input.port == 0 {
        return Err(Invalid::new("port", "must be between 1 and 65535").into());
    }
    let mut conn = pool.acquire().await?;
    let password = match input.password {
        Some(p) => p,
        None => catalog::find_game_server_by_name(&mut conn, name)
            .await?
            .map(|s| s.password)
            .ok_or_else(|| Invalid::new("password", "is required for a new game server"))?,
    };
    let max = input.dialect.max_command_len();
    if password.is_empty() || password.len() > max || password.chars().any(char::is_control) {
        return Err(Invalid::new(
            "password",
            format!("must be 1 to {max} bytes, without control characters"),
        )
        .into());
    }
    if !(1..=64).contains(&input.max_connections) {
        return Err(Invalid::new("max_connections", "must be between 1 and 64").into());
    }
    if !(20..=10_000).contains(&input.quiet_ms) {
        return Err(Invalid::new("quiet_ms", "must be between 20 and 10000").into());
    }
    // A silent command must settle before the command timeout calls it lost.
    if u64::from(input.quiet_ms) >= rules.rcon_command_timeout_ms {
        return Err(Invalid::new(
            "quiet_ms",
            format!(
                "must be shorter than rcon.command_timeout_ms ({} ms)",
                rules.rcon_command_timeout_ms
            ),
        )
        .into());
    }
    if input.error_patterns.len() > 20 {
        return Err(Invalid::new("error_patterns", "at most 20 patterns").into());
    }
    for (i, p) in input.error_patterns.iter().enumerate() {
        let field = format!("error_patterns[{i}]");
        if p.trim().is_empty() {
            return Err(Invalid::new(field, "must not be empty").into());
        }
        super::check_text(&field, p, 100)?;
    }
    if let Some(c) = &input.online_command {
        if c.trim().is_empty() {
            return Err(Invalid::new("online_command", "must not be empty").into());
        }
        super::check_text("online_command", c, 64)?;
    }
    let server = GameServer {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        host: input.host,
        port: input.port,
        password,
        dialect: input.dialect,
        max_connections: input.max_connections,
        framing: input.framing,
        quiet_ms: input.quiet_ms,
        error_patterns: input.error_patterns,
        online_command: input.online_command,
    };
    Ok(catalog::upsert_game_server(&mut conn, &server).await?)
}

/// Body of `PUT /v1/products/{sku}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    pub name: String,
    /// Empty: fulfilled by hand — its items wait until staff mark them
    /// delivered (`POST /v1/orders/{reference}/items/{item_id}/deliver`).
    pub actions: Vec<ActionInput>,
    /// `false`: paid orders of this product wait in `pending` until an admin
    /// processes them. Absent: the store-wide `orders.auto_process`.
    #[serde(default)]
    pub auto_process: Option<bool>,
    /// Paid orders of this product start this long after payment (at most
    /// 30 days). Absent: the store-wide `orders.process_delay_secs`.
    #[serde(default)]
    pub process_delay_secs: Option<u32>,
}

/// An action as an admin writes it: game servers by name.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionInput {
    Rcon {
        game_server: String,
        command: String,
        #[serde(default)]
        on_ambiguous: OnAmbiguous,
        #[serde(default)]
        require_online: bool,
        /// Run to take the item back on a refund, cancel or chargeback
        /// (e.g. `lp user {username} parent remove vip`).
        #[serde(default)]
        revoke_command: Option<String>,
        /// Run in addition on a chargeback (e.g. a ban).
        #[serde(default)]
        chargeback_command: Option<String>,
    },
    DiscordRole {
        guild_id: String,
        role_id: String,
    },
    SupplierKey {
        #[serde(default)]
        candidates: Vec<crate::domain::action::SupplierCandidate>,
        #[serde(default)]
        low_stock_threshold: i64,
        /// Sold only from the product's own stock: no supplier candidate
        /// needed (without it, at least one candidate is).
        #[serde(default)]
        stock_only: bool,
    },
    /// The product's files (uploaded with `POST /v1/products/{sku}/files`)
    /// as signed, expiring links for each order.
    Download {
        /// Hours a link works (1 to 87600; default `downloads.link_ttl_hours`).
        #[serde(default)]
        expires_hours: Option<u32>,
        /// Full downloads per link (1 to 10000; default `downloads.max_downloads`).
        #[serde(default)]
        max_downloads: Option<u32>,
    },
}

/// Saves a product, refusing what this installation cannot deliver
/// (`CatalogError::NotDeliverable`) as well as what is malformed.
pub async fn save_product(
    pool: &PgPool,
    sku: &str,
    input: ProductInput,
    rules: &AcceptRules,
) -> Result<Product, CatalogError> {
    check_name("sku", sku)?;
    if input.name.trim().is_empty() {
        return Err(Invalid::new("name", "must not be empty").into());
    }
    super::check_text("name", &input.name, MAX_PRODUCT_NAME)?;
    if input
        .process_delay_secs
        .is_some_and(|d| d > crate::config::MAX_PROCESS_DELAY_SECS)
    {
        return Err(Invalid::new("process_delay_secs", "must be at most 2592000 (30 days)").into());
    }
    if input.actions.len() > MAX_ACTIONS {
        return Err(Invalid::new(
            "actions",
            format!("at most {MAX_ACTIONS} actions per product"),
        )
        .into());
    }
    let mut tx = pool.begin().await?;
    let mut actions = Vec::with_capacity(input.actions.len());
    for (i, action) in input.actions.into_iter().enumerate() {
        match action {
            ActionInput::Rcon {
                game_server,
                command,
                on_ambiguous,
                require_online,
                revoke_command,
                chargeback_command,
            } => {
                check_name(&format!("actions[{i}].game_server"), &game_server)?;
                let server = catalog::find_game_server_by_name(&mut tx, &game_server)
                    .await?
                    .ok_or_else(|| {
                        CatalogError::NotDeliverable(Invalid::new(
                            format!("actions[{i}].game_server"),
                            format!("no game server named `{game_server}`"),
                        ))
                    })?;
                let max = server.dialect.max_command_len();
                for (field, template) in [
                    ("command", Some(&command)),
                    ("revoke_command", revoke_command.as_ref()),
                    ("chargeback_command", chargeback_command.as_ref()),
                ] {
                    if let Some(t) = template {
                        let field = format!("actions[{i}].{field}");
                        if t.trim().is_empty() {
                            return Err(Invalid::new(&field, "must not be empty").into());
                        }
                        super::check_text(&field, t, max)?;
                        let parsed =
                            Template::parse(t).map_err(|e| Invalid::new(&field, e.to_string()))?;
                        let longest = parsed.max_rendered_len();
                        if longest > max {
                            return Err(Invalid::new(
                                &field,
                                format!(
                                    "can render up to {longest} bytes (with the longest value of each placeholder); game server `{}` accepts at most {max}",
                                    server.name
                                ),
                            )
                            .into());
                        }
                    }
                }
                actions.push(ActionConfig::Rcon {
                    game_server_id: server.id,
                    command,
                    on_ambiguous,
                    require_online,
                    revoke_command,
                    chargeback_command,
                });
            }
            ActionInput::DiscordRole { guild_id, role_id } => {
                for (field, value) in [("guild_id", &guild_id), ("role_id", &role_id)] {
                    if crate::domain::action::parse_snowflake(value).is_none() {
                        return Err(Invalid::new(
                            format!("actions[{i}].{field}"),
                            "must be a Discord id (digits)",
                        )
                        .into());
                    }
                }
                actions.push(ActionConfig::DiscordRole { guild_id, role_id });
            }
            ActionInput::SupplierKey {
                candidates,
                low_stock_threshold,
                stock_only,
            } => {
                if candidates.is_empty() && !stock_only {
                    return Err(Invalid::new(
                        format!("actions[{i}].candidates"),
                        "add at least one supplier candidate, or set `stock_only: true` to sell only from the product's own stock",
                    )
                    .into());
                }
                if candidates.len() > MAX_CANDIDATES {
                    return Err(Invalid::new(
                        format!("actions[{i}].candidates"),
                        format!("at most {MAX_CANDIDATES} candidates"),
                    )
                    .into());
                }
                for (j, c) in candidates.iter().enumerate() {
                    if c.supplier.is_empty() || c.supplier_product_id.is_empty() {
                        return Err(Invalid::new(
                            format!("actions[{i}].candidates[{j}]"),
                            "needs a supplier and a supplier_product_id",
                        )
                        .into());
                    }
                    check_name(
                        &format!("actions[{i}].candidates[{j}].supplier"),
                        &c.supplier,
                    )?;
                    super::check_text(
                        &format!("actions[{i}].candidates[{j}].supplier_product_id"),
                        &c.supplier_product_id,
                        128,
                    )?;
                    if c.max_price
                        .parse::<rust_decimal::Decimal>()
                        .map_or(true, |p| p.is_sign_negative())
                    {
                        return Err(Invalid::new(
                            format!("actions[{i}].candidates[{j}].max_price"),
                            "must be a non-negative decimal string",
                        )
                        .into());
                    }
                }
                if !(0..=1_000_000).contains(&low_stock_threshold) {
                    return Err(Invalid::new(
                        format!("actions[{i}].low_stock_threshold"),
                        "must be between 0 and 1000000",
                    )
                    .into());
                }
                actions.push(ActionConfig::SupplierKey {
                    candidates,
                    low_stock_threshold,
                    stock_only,
                });
            }
            ActionInput::Download {
                expires_hours,
                max_downloads,
            } => {
                if expires_hours.is_some_and(|h| !(1..=87_600).contains(&h)) {
                    return Err(Invalid::new(
                        format!("actions[{i}].expires_hours"),
                        "must be between 1 and 87600 (10 years)",
                    )
                    .into());
                }
                if max_downloads.is_some_and(|n| !(1..=10_000).contains(&n)) {
                    return Err(Invalid::new(
                        format!("actions[{i}].max_downloads"),
                        "must be between 1 and 10000",
                    )
                    .into());
                }
                actions.push(ActionConfig::Download {
                    expires_hours,
                    max_downloads,
                });
            }
        }
    }
    for (i, action) in actions.iter().enumerate() {
        rules.check_action(action).map_err(|reason| {
            CatalogError::NotDeliverable(Invalid::new(format!("actions[{i}]"), reason))
        })?;
    }
    let product = catalog::upsert_product(
        &mut tx,
        sku,
        &input.name,
        &actions,
        catalog::Processing {
            auto_process: input.auto_process,
            process_delay_secs: input.process_delay_secs,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(product)
}
