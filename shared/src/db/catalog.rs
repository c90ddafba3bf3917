//! Game servers and products with their fulfilment actions.

use serde::Serialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::action::ActionConfig;
use crate::error::DbError;
use crate::rcon::{Dialect, Framing};

/// A game server as stored. The password is never serialised.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GameServer {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub port: u16,
    #[serde(skip)]
    pub password: String,
    pub dialect: Dialect,
    pub max_connections: u16,
    /// How answers end (`auto`: by dialect); see `rcon::client`.
    pub framing: Framing,
    /// The quiet time of `exec_only` framing, in milliseconds.
    pub quiet_ms: u32,
    /// Answer starts that mean "refused", beyond the dialect's own.
    pub error_patterns: Vec<String>,
    /// What lists the players for `require_online` (default: `list` or `status`).
    pub online_command: Option<String>,
}

impl GameServer {
    /// Where and how to log in to it.
    pub fn rcon_target(&self) -> crate::rcon::RconTarget {
        crate::rcon::RconTarget {
            host: self.host.clone(),
            port: self.port,
            password: self.password.clone(),
            dialect: self.dialect,
            framing: self.framing,
            quiet: std::time::Duration::from_millis(u64::from(self.quiet_ms)),
        }
    }
}

fn game_server_from_row(row: &sqlx::postgres::PgRow) -> Result<GameServer, DbError> {
    let port: i32 = row.try_get("port")?;
    let max: i32 = row.try_get("max_connections")?;
    let dialect: String = row.try_get("dialect")?;
    let framing: String = row.try_get("framing")?;
    let quiet: i32 = row.try_get("quiet_ms")?;
    Ok(GameServer {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        host: row.try_get("host")?,
        port: u16::try_from(port).map_err(|_| DbError::Corrupt(format!("port {port}")))?,
        password: row.try_get("password")?,
        dialect: dialect.parse()?,
        max_connections: u16::try_from(max)
            .map_err(|_| DbError::Corrupt(format!("max_connections {max}")))?,
        framing: framing.parse()?,
        quiet_ms: u32::try_from(quiet)
            .map_err(|_| DbError::Corrupt(format!("quiet_ms {quiet}")))?,
        error_patterns: row.try_get("error_patterns")?,
        online_command: row.try_get("online_command")?,
    })
}

macro_rules! game_server_columns {
    () => {
        "id, name, host, port, password, dialect, max_connections, framing, quiet_ms, error_patterns, online_command"
    };
}

/// Creates or replaces the server called `server.name` (its id is kept).
pub async fn upsert_game_server(
    conn: &mut PgConnection,
    server: &GameServer,
) -> Result<GameServer, DbError> {
    let row = sqlx::query(concat!(
        "INSERT INTO game_servers (id, name, host, port, password, dialect, max_connections, \
           framing, quiet_ms, error_patterns, online_command) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (name) DO UPDATE SET host = EXCLUDED.host, port = EXCLUDED.port, \
           password = EXCLUDED.password, dialect = EXCLUDED.dialect, \
           max_connections = EXCLUDED.max_connections, framing = EXCLUDED.framing, \
           quiet_ms = EXCLUDED.quiet_ms, error_patterns = EXCLUDED.error_patterns, \
           online_command = EXCLUDED.online_command, updated_at = now() \
         RETURNING ",
        game_server_columns!()
    ))
    .bind(server.id)
    .bind(&server.name)
    .bind(&server.host)
    .bind(i32::from(server.port))
    .bind(&server.password)
    .bind(server.dialect.as_str())
    .bind(i32::from(server.max_connections))
    .bind(server.framing.as_str())
    .bind(i32::try_from(server.quiet_ms).unwrap_or(i32::MAX))
    .bind(&server.error_patterns)
    .bind(&server.online_command)
    .fetch_one(conn)
    .await?;
    game_server_from_row(&row)
}

pub async fn list_game_servers(conn: &mut PgConnection) -> Result<Vec<GameServer>, DbError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        game_server_columns!(),
        " FROM game_servers ORDER BY name"
    ))
    .fetch_all(conn)
    .await?;
    rows.iter().map(game_server_from_row).collect()
}

/// The version of a `game_servers` row (alias `$t`): the transaction that
/// wrote it and where it lies (a row written twice in one transaction
/// moves), so any change of the row changes it. Read by
/// `get_game_server_versioned` and by each claim (`deliveries::claim_batch`),
/// so a worker can keep a server it loaded until a claim shows it changed.
macro_rules! game_server_version {
    ($t:literal) => {
        concat!($t, ".xmin::text || ':' || ", $t, ".ctid::text")
    };
}
pub(crate) use game_server_version;

/// A game server with the version of its row (`game_server_version!`).
pub async fn get_game_server_versioned(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<(GameServer, String)>, DbError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        game_server_columns!(),
        ", ",
        game_server_version!("g"),
        " AS version FROM game_servers g WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref()
        .map(|r| Ok((game_server_from_row(r)?, r.try_get("version")?)))
        .transpose()
}

pub async fn find_game_server_by_name(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<GameServer>, DbError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        game_server_columns!(),
        " FROM game_servers WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(game_server_from_row).transpose()
}

/// A product with its actions in order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Product {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    /// No actions: fulfilled by hand (physical goods, custom services); its
    /// items wait until staff mark them delivered.
    pub actions: Vec<StoredAction>,
    #[serde(flatten)]
    pub processing: Processing,
}

/// How paid orders of a product start; `None` takes the store-wide setting.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Processing {
    /// `false`: its orders wait in `pending` until an admin processes them.
    #[serde(default)]
    pub auto_process: Option<bool>,
    /// Its orders start this long after payment.
    #[serde(default)]
    pub process_delay_secs: Option<u32>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredAction {
    pub id: Uuid,
    #[serde(flatten)]
    pub config: ActionConfig,
}

/// Creates or replaces the product `sku` and all its actions.
pub async fn upsert_product(
    conn: &mut PgConnection,
    sku: &str,
    name: &str,
    actions: &[ActionConfig],
    processing: Processing,
) -> Result<Product, DbError> {
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO products (id, sku, name, auto_process, process_delay_secs) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, auto_process = EXCLUDED.auto_process, \
           process_delay_secs = EXCLUDED.process_delay_secs, updated_at = now() RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(sku)
    .bind(name)
    .bind(processing.auto_process)
    .bind(
        processing
            .process_delay_secs
            .map(|d| i32::try_from(d).unwrap_or(i32::MAX)),
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM product_actions WHERE product_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let mut stored = Vec::with_capacity(actions.len());
    for (position, config) in actions.iter().enumerate() {
        let action_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO product_actions (id, product_id, position, kind, config) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(action_id)
        .bind(id)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(config.kind().as_str())
        .bind(serde_json::to_value(config)?)
        .execute(&mut *conn)
        .await?;
        stored.push(StoredAction {
            id: action_id,
            config: config.clone(),
        });
    }
    Ok(Product {
        id,
        sku: sku.to_owned(),
        name: name.to_owned(),
        actions: stored,
        processing,
    })
}

/// Products by SKU, with their actions; SKUs not found are simply absent.
pub async fn products_by_sku(
    conn: &mut PgConnection,
    skus: &[String],
) -> Result<Vec<Product>, DbError> {
    let rows = sqlx::query(
        "SELECT p.id, p.sku, p.name, p.auto_process, p.process_delay_secs, \
           a.id AS action_id, a.config \
         FROM products p LEFT JOIN product_actions a ON a.product_id = p.id \
         WHERE p.sku = ANY($1) ORDER BY p.sku, a.position",
    )
    .bind(skus)
    .fetch_all(conn)
    .await?;
    let mut products: Vec<Product> = Vec::new();
    for row in rows {
        let id: Uuid = row.try_get("id")?;
        if products.last().is_none_or(|p| p.id != id) {
            products.push(Product {
                id,
                sku: row.try_get("sku")?,
                name: row.try_get("name")?,
                actions: Vec::new(),
                processing: Processing {
                    auto_process: row.try_get("auto_process")?,
                    process_delay_secs: row
                        .try_get::<Option<i32>, _>("process_delay_secs")?
                        .map(|d| u32::try_from(d).unwrap_or(0)),
                },
            });
        }
        let action_id: Option<Uuid> = row.try_get("action_id")?;
        if let (Some(action_id), Some(product)) = (action_id, products.last_mut()) {
            let config: serde_json::Value = row.try_get("config")?;
            product.actions.push(StoredAction {
                id: action_id,
                config: serde_json::from_value(config)?,
            });
        }
    }
    Ok(products)
}

/// Every product (for `GET /v1/products`).
pub async fn list_products(conn: &mut PgConnection) -> Result<Vec<Product>, DbError> {
    let skus: Vec<String> = sqlx::query_scalar("SELECT sku FROM products ORDER BY sku")
        .fetch_all(&mut *conn)
        .await?;
    products_by_sku(conn, &skus).await
}
