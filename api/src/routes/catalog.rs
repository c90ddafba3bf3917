//! Catalog administration (`admin` scope): game servers and products. `PUT`
//! creates or replaces, so seeding is repeatable.

use axum::Json;
use axum::extract::State;
use courier_shared::db::catalog::{self, GameServer, Product};
use courier_shared::service::catalog::{
    GameServerInput, ProductInput, save_game_server, save_product,
};

use crate::auth::{ADMIN, Caller};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::json::ValidJson;
use crate::startup::AppState;

#[utoipa::path(put, path = "/v1/game-servers/{name}", tag = "catalog",
    params(("name" = String, Path, description = "The game server's name, used by products' `server`")),
    request_body = GameServerInput,
    responses((status = 200, description = "Created or replaced (the password is never returned)", body = GameServer)))]
/// Creates or replaces a game server.
pub async fn put_game_server(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ValidJson(input): ValidJson<GameServerInput>,
) -> Result<Json<GameServer>, ApiError> {
    caller.require(ADMIN)?;
    Ok(Json(
        save_game_server(&state.pool, &name, input, &state.rules).await?,
    ))
}

#[utoipa::path(get, path = "/v1/game-servers", tag = "catalog",
    responses((status = 200, description = "Every game server", body = Vec<GameServer>)))]
/// Every game server.
pub async fn list_game_servers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<GameServer>>, ApiError> {
    caller.require(ADMIN)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(catalog::list_game_servers(&mut conn).await?))
}

#[utoipa::path(put, path = "/v1/products/{sku}", tag = "catalog",
    params(("sku" = String, Path, description = "The product's SKU, as orders name it")),
    request_body = ProductInput,
    responses((status = 200, description = "Created or replaced", body = Product)))]
/// Creates or replaces a product and its actions.
pub async fn put_product(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sku): ApiPath<String>,
    ValidJson(input): ValidJson<ProductInput>,
) -> Result<Json<Product>, ApiError> {
    caller.require(ADMIN)?;
    let saved = save_product(&state.pool, &sku, input, &state.rules).await;
    // This process's next order sees the change at once; others hear of it
    // from the catalog trigger.
    state.products.invalidate();
    Ok(Json(saved?))
}

#[utoipa::path(get, path = "/v1/products", tag = "catalog",
    responses((status = 200, description = "Every product", body = Vec<Product>)))]
/// Every product.
pub async fn list_products(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Product>>, ApiError> {
    caller.require(ADMIN)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(catalog::list_products(&mut conn).await?))
}

/// What a connection test found.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ConnectionTest {
    /// Logged in and the command was answered.
    pub ok: bool,
    /// The harmless command run: the server's `online_command`, else
    /// `list` (Minecraft) or `status` (Source).
    pub command: String,
    /// What the server answered (first 2,000 bytes).
    pub response: Option<String>,
    /// Why it failed: connect, password, timeout, malformed answer.
    pub error: Option<String>,
    /// Connect, log in, run, answer.
    pub latency_ms: u64,
}

#[utoipa::path(post, path = "/v1/game-servers/{name}/test", operation_id = "test_game_server", tag = "catalog",
    params(("name" = String, Path, description = "The game server's name")),
    responses((status = 200, description = "The test ran; `ok` says whether the server answered", body = ConnectionTest)))]
/// "Test connection": logs in over RCON and runs a command that changes
/// nothing (the player list), on a connection of its own, with the
/// configured `rcon.*` timeouts.
pub async fn test_game_server(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ConnectionTest>, ApiError> {
    use courier_shared::rcon::client::RconConnection;
    caller.require(ADMIN)?;
    let server = {
        let mut conn = state.pool.acquire().await?;
        catalog::find_game_server_by_name(&mut conn, &name)
            .await?
            .ok_or_else(|| ApiError::not_found("game server"))?
    };
    let command = server.online_command.clone().unwrap_or_else(|| {
        courier_shared::rcon::answers::default_online_command(server.dialect).to_owned()
    });
    let target = server.rcon_target();
    let started = std::time::Instant::now();
    let outcome = match RconConnection::connect(&target, state.rcon).await {
        Ok(mut conn) => {
            let answer = conn.exec(&command).await;
            conn.close(std::time::Duration::from_millis(200)).await;
            answer.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(Json(match outcome {
        Ok(text) => ConnectionTest {
            ok: true,
            command,
            response: Some(courier_shared::domain::clip(&text, 2000).to_owned()),
            error: None,
            latency_ms,
        },
        Err(error) => ConnectionTest {
            ok: false,
            command,
            response: None,
            error: Some(error),
            latency_ms,
        },
    }))
}
