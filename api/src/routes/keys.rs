//! CD keys: stock uploads (JSON or CSV), keys entered by hand, admin alerts,
//! and the supplier webhook that says an order's keys are ready.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use courier_shared::service::keys;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use crate::auth::{ADMIN, Caller};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::json::{ValidJson, parse};
use crate::routes::admin::{PageQuery, page};
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct KeyList {
    keys: Vec<String>,
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

/// `POST /v1/products/{sku}/keys`: `{"keys": [...]}` or a `text/csv` body.
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sku): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "added": added, "duplicates": duplicates })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualKey {
    pub code: String,
}

/// `POST /v1/admin/items/{item_id}/key`: "Enter key manually".
pub async fn enter(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(item_id): ApiPath<Uuid>,
    ValidJson(body): ValidJson<ManualKey>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let delivery = keys::enter_key(
        &state.pool,
        cipher(&state)?,
        item_id,
        &body.code,
        &caller.actor(),
    )
    .await?;
    Ok(Json(json!({ "delivery_id": delivery })))
}

/// `GET /v1/admin/alerts`: unacknowledged alerts, newest first.
pub async fn alerts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let limit = page::limit(q.limit)?;
    let before = page::decode_id(q.cursor.as_deref())?;
    let rows = sqlx::query(
        "SELECT id, kind, message, created_at FROM admin_alerts \
         WHERE acknowledged_at IS NULL AND ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let alerts: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<i64, _>("id"),
                "kind": r.get::<String, _>("kind"),
                "message": r.get::<String, _>("message"),
                "created_at": r.get::<chrono::DateTime<chrono::Utc>, _>("created_at"),
            })
        })
        .collect();
    let next = page::next(
        alerts.len(),
        limit,
        rows.last().map(|r| r.get::<i64, _>("id").to_string()),
    );
    Ok(Json(json!({ "alerts": alerts, "next_cursor": next })))
}

/// Compares without an early exit, so timing does not leak the secret.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SupplierEvent {
    order_external_id: Uuid,
}

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
