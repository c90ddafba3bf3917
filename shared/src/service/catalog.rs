//! Saving game servers and products, with every check done at save time (an
//! unknown placeholder or game server is rejected here, not at delivery).

use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::Invalid;
use crate::db::catalog::{self, GameServer, Product};
use crate::domain::action::{ActionConfig, OnAmbiguous};
use crate::domain::template::Template;
use crate::error::DbError;
use crate::rcon::Dialect;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for CatalogError {
    fn from(e: sqlx::Error) -> Self {
        CatalogError::Db(e.into())
    }
}

/// Body of `PUT /v1/game-servers/{name}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GameServerInput {
    pub host: String,
    pub port: u16,
    pub password: String,
    pub dialect: Dialect,
    #[serde(default = "default_max_connections")]
    pub max_connections: u16,
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

pub async fn save_game_server(
    pool: &PgPool,
    name: &str,
    input: GameServerInput,
) -> Result<GameServer, CatalogError> {
    check_name("name", name)?;
    if input.host.trim().is_empty() {
        return Err(Invalid::new("host", "must not be empty").into());
    }
    if input.port == 0 {
        return Err(Invalid::new("port", "must be between 1 and 65535").into());
    }
    if input.password.is_empty() || input.password.len() > input.dialect.max_command_len() {
        return Err(Invalid::new("password", "must be 1 to 1446 bytes").into());
    }
    if !(1..=64).contains(&input.max_connections) {
        return Err(Invalid::new("max_connections", "must be between 1 and 64").into());
    }
    let mut conn = pool.acquire().await?;
    let server = GameServer {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        host: input.host,
        port: input.port,
        password: input.password,
        dialect: input.dialect,
        max_connections: input.max_connections,
    };
    Ok(catalog::upsert_game_server(&mut conn, &server).await?)
}

/// Body of `PUT /v1/products/{sku}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    pub name: String,
    pub actions: Vec<ActionInput>,
}

/// An action as an admin writes it: game servers by name.
#[derive(Debug, Clone, Deserialize)]
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
    },
}

pub async fn save_product(
    pool: &PgPool,
    sku: &str,
    input: ProductInput,
) -> Result<Product, CatalogError> {
    check_name("sku", sku)?;
    if input.name.trim().is_empty() {
        return Err(Invalid::new("name", "must not be empty").into());
    }
    if input.actions.is_empty() {
        return Err(
            Invalid::new("actions", "a product needs at least one fulfilment action").into(),
        );
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
                for (field, template) in [
                    ("command", Some(&command)),
                    ("revoke_command", revoke_command.as_ref()),
                    ("chargeback_command", chargeback_command.as_ref()),
                ] {
                    if let Some(t) = template {
                        Template::parse(t).map_err(|e| {
                            Invalid::new(format!("actions[{i}].{field}"), e.to_string())
                        })?;
                    }
                }
                let server = catalog::find_game_server_by_name(&mut tx, &game_server)
                    .await?
                    .ok_or_else(|| {
                        Invalid::new(
                            format!("actions[{i}].game_server"),
                            format!("no game server named `{game_server}`"),
                        )
                    })?;
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
            } => {
                for (j, c) in candidates.iter().enumerate() {
                    if c.supplier.is_empty() || c.supplier_product_id.is_empty() {
                        return Err(Invalid::new(
                            format!("actions[{i}].candidates[{j}]"),
                            "needs a supplier and a supplier_product_id",
                        )
                        .into());
                    }
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
                if low_stock_threshold < 0 {
                    return Err(Invalid::new(
                        format!("actions[{i}].low_stock_threshold"),
                        "must not be negative",
                    )
                    .into());
                }
                actions.push(ActionConfig::SupplierKey {
                    candidates,
                    low_stock_threshold,
                });
            }
        }
    }
    let product = catalog::upsert_product(&mut tx, sku, &input.name, &actions).await?;
    tx.commit().await?;
    Ok(product)
}
