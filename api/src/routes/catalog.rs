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

pub async fn list_game_servers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<GameServer>>, ApiError> {
    caller.require(ADMIN)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(catalog::list_game_servers(&mut conn).await?))
}

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

pub async fn list_products(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Product>>, ApiError> {
    caller.require(ADMIN)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(catalog::list_products(&mut conn).await?))
}
