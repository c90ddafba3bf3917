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
    Ok(Json(
        save_product(&state.pool, &sku, input, &state.rules).await?,
    ))
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
