//! CD keys: stock uploads (JSON or CSV), keys entered by hand, admin alerts,
//! and the supplier webhook that says an order's keys are ready.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use courier_shared::service::keys;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{ADMIN, Caller};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::json::{ValidJson, parse};
use crate::startup::AppState;

fn cipher(state: &AppState) -> Result<&courier_shared::crypto::KeyCipher, ApiError> {
    state.cipher.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "keys_disabled",
            "keys.encryption_key is not configured, so keys cannot be stored",
        )
    })
}

/// Codes to add to a product's stock.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyList {
    pub keys: Vec<String>,
}

/// What an upload added.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockAdded {
    pub added: u64,
    /// Codes already in stock, skipped.
    pub duplicates: u64,
}

/// The key delivery a manually entered code completed.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyEntered {
    pub delivery_id: Uuid,
}

/// Codes from a CSV body: one per line, first column; a first line `code` is a header.
fn parse_csv(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(body);
    let mut codes = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_csv",
                format!("line {}: {e}", i + 1),
            )
        })?;
        let Some(code) = record.get(0).map(str::trim).filter(|c| !c.is_empty()) else {
            continue;
        };
        if i == 0 && code.eq_ignore_ascii_case("code") {
            continue;
        }
        codes.push(code.to_owned());
    }
    Ok(codes)
}

#[utoipa::path(post, path = "/v1/products/{sku}/keys", operation_id = "upload_keys", tag = "keys",
    params(("sku" = String, Path, description = "The product's SKU")),
    request_body(description = "`{\"keys\": [...]}`, or `text/csv` with one code per line (first column; a first line `code` is a header)",
        content((KeyList = "application/json"), (String = "text/csv"))),
    responses((status = 200, description = "Codes added to stock (encrypted at rest)", body = StockAdded)))]
/// `POST /v1/products/{sku}/keys`: `{"keys": [...]}` or a `text/csv` body.
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sku): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<StockAdded>, ApiError> {
    caller.require(ADMIN)?;
    let is_csv = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"));
    let codes = if is_csv {
        parse_csv(&body)?
    } else {
        crate::json::check_json_type(&headers).map_err(|e| ApiError {
            message: "send the keys as application/json or text/csv".into(),
            ..e
        })?;
        parse::<KeyList>(&body)?.keys
    };
    let (added, duplicates) = keys::add_stock(&state.pool, cipher(&state)?, &sku, &codes).await?;
    Ok(Json(StockAdded { added, duplicates }))
}

/// A code entered by hand for a key item.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualKey {
    pub code: String,
}

#[utoipa::path(post, path = "/v1/admin/items/{item_id}/key", operation_id = "enter_key", tag = "keys",
    params(("item_id" = Uuid, Path, description = "The order item's id")), request_body = ManualKey,
    responses((status = 200, description = "The item's key delivery, now succeeded", body = KeyEntered)))]
/// `POST /v1/admin/items/{item_id}/key`: "Enter key manually".
pub async fn enter(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(item_id): ApiPath<Uuid>,
    ValidJson(body): ValidJson<ManualKey>,
) -> Result<Json<KeyEntered>, ApiError> {
    caller.require(ADMIN)?;
    let delivery = keys::enter_key(
        &state.pool,
        cipher(&state)?,
        item_id,
        &body.code,
        &caller.actor(),
    )
    .await?;
    Ok(Json(KeyEntered {
        delivery_id: delivery,
    }))
}

/// Compares without an early exit, so timing does not leak the secret.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A supplier's "order ready" callback.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupplierEvent {
    /// The key delivery's id Courier sent as the order's external id.
    pub order_external_id: Uuid,
}

#[utoipa::path(post, path = "/webhooks/supplier/{name}", operation_id = "supplier_webhook", tag = "webhooks",
    params(("name" = String, Path, description = "The supplier's name in `suppliers.<name>`")),
    request_body = SupplierEvent,
    responses((status = 204, description = "The delivery will fetch its keys")),
    security(("supplier_api_key" = [])))]
/// `POST /webhooks/supplier/{name}`: authenticated by the supplier's API key
/// in `X-Api-Key`; the body names our delivery (`orderExternalId`).
pub async fn supplier_webhook(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown supplier or wrong X-Api-Key",
        )
    };
    let supplier = state.suppliers.get(&name).ok_or_else(unauthorized)?;
    let presented = headers
        .get("x-api-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !same(presented, supplier.api_key.expose().as_bytes()) {
        return Err(unauthorized());
    }
    let event: SupplierEvent = parse(&body)?;
    keys::supplier_order_ready(&state.pool, &name, event.order_external_id).await?;
    state.relay_wake.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
