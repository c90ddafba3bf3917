//! `POST /v1/orders` and `GET /v1/orders/{id or order number}`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use courier_shared::db::orders::{self, OrderSummary, OrderView};
use courier_shared::domain::ids;
use courier_shared::service::orders::{NewOrder, create_order};
use uuid::Uuid;

use crate::auth::{Caller, ORDERS_KEYS, ORDERS_READ, ORDERS_WRITE};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::json::ValidJson;
use crate::startup::AppState;

/// Accepts an order. `201` when created; `200` with the same order when the
/// `Idempotency-Key` was seen before with the same body; `409` with another body.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ValidJson(order): ValidJson<NewOrder>,
) -> Result<(StatusCode, Json<OrderSummary>), ApiError> {
    caller.require(ORDERS_WRITE)?;
    let key = idempotency_key(&headers)?;
    let accepted = create_order(&state.pool, order, key, &caller.actor(), &state.rules).await?;
    if accepted.created {
        state.relay_wake.notify_one();
    }
    let status = if accepted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(accepted.order)))
}

/// The `Idempotency-Key` header, if present and well-formed.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| ApiError {
                    field: Some("Idempotency-Key".into()),
                    ..ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_header",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    )
                })
        })
        .transpose()
}

/// The order with its items, deliveries (with every attempt) and timeline.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
) -> Result<Json<OrderView>, ApiError> {
    caller.require(ORDERS_READ)?;
    let mut conn = state.pool.acquire().await?;
    let view = if let Ok(id) = Uuid::parse_str(&reference) {
        orders::load_view(&mut conn, Some(id), None).await?
    } else if ids::looks_like_order_number(&reference) {
        orders::load_view(&mut conn, None, Some(&reference)).await?
    } else {
        return Err(ApiError::invalid_reference());
    };
    let mut view = view.ok_or_else(|| ApiError::not_found("order"))?;
    // Codes are decrypted only for callers allowed to see them.
    let cipher = if caller.has(ORDERS_KEYS) {
        state.cipher.as_ref()
    } else {
        None
    };
    if cipher.is_some() {
        courier_shared::db::keys::mark_revealed(&mut conn, view.id).await?;
    }
    for item in &mut view.items {
        item.keys = courier_shared::db::keys::item_keys(&mut conn, item.id, cipher).await?;
        if !caller.has(crate::auth::ADMIN) {
            for k in &mut item.keys {
                k.cost = None;
            }
        }
    }
    Ok(Json(view))
}
