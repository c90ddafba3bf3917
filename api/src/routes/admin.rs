//! Admin actions on failures (`admin` scope): dead letters (list with filters
//! and pagination, show with attempt history, retry, bulk retry, discard), held
//! deliveries, and "Retry delivery" on an order item.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use courier_shared::db::dead_letters::{self, DeadLetter, Filter};
use courier_shared::db::{orders, rescue};
use courier_shared::domain::delivery::DeliveryKind;
use courier_shared::service::admin::{self, AdminError, BulkRetry};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{ADMIN, Caller};
use crate::error::ApiError;
use crate::json::ValidJson;
use crate::startup::AppState;

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(what) => ApiError::not_found(what),
            AdminError::Conflict(msg) => ApiError::new(StatusCode::CONFLICT, "conflict", msg),
            AdminError::Invalid(i) => i.into(),
            AdminError::Db(e) => e.into(),
        }
    }
}

/// Query of `GET /v1/admin/dead-letters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub kind: Option<DeliveryKind>,
    pub target: Option<String>,
    pub error: Option<String>,
    pub older_than: Option<DateTime<Utc>>,
    pub newer_than: Option<DateTime<Utc>>,
    #[serde(default)]
    pub include_resolved: bool,
    /// Page size, 1–500 (default 50).
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub before: Option<i64>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError {
            field: Some("limit".into()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "limit must be between 1 and 500",
            )
        });
    }
    let filter = Filter {
        kind: q.kind,
        target: q.target,
        error: q.error,
        older_than: q.older_than,
        newer_than: q.newer_than,
        include_resolved: q.include_resolved,
    };
    let mut conn = state.pool.acquire().await?;
    let page: Vec<DeadLetter> = dead_letters::list(&mut conn, &filter, limit, q.before).await?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|d| d.id))
        .flatten();
    Ok(Json(json!({ "dead_letters": page, "next_before": next })))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let mut conn = state.pool.acquire().await?;
    let dl = dead_letters::get(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found("dead letter"))?;
    let attempts = match dl.delivery_id {
        Some(d) => orders::load_attempts(&mut conn, d).await?,
        None => Vec::new(),
    };
    Ok(Json(json!({ "dead_letter": dl, "attempts": attempts })))
}

pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    admin::retry_dead_letter(&state.pool, id, &caller.actor()).await?;
    state.relay_wake.notify_one();
    Ok(Json(json!({ "requeued": 1 })))
}

pub async fn retry_bulk(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(filter): ValidJson<Filter>,
) -> Result<Json<BulkRetry>, ApiError> {
    caller.require(ADMIN)?;
    let result = admin::retry_matching(&state.pool, &filter, &caller.actor()).await?;
    state.relay_wake.notify_one();
    Ok(Json(result))
}

/// Body of the discard actions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discard {
    /// Why: goes into the order's timeline with the admin's key name.
    pub reason: String,
}

fn reason(d: &Discard) -> Result<&str, ApiError> {
    let r = d.reason.trim();
    if r.is_empty() || r.len() > 500 {
        return Err(ApiError {
            field: Some("reason".into()),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "reason: say why, in 1 to 500 characters",
            )
        });
    }
    Ok(r)
}

pub async fn discard(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    ValidJson(body): ValidJson<Discard>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    admin::discard_dead_letter(&state.pool, id, &caller.actor(), reason(&body)?).await?;
    Ok(Json(json!({ "discarded": 1 })))
}

pub async fn held(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    Ok(Json(
        json!({ "held": rescue::held(&state.pool, 500).await? }),
    ))
}

pub async fn retry_delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    admin::retry_delivery(&state.pool, id, &caller.actor()).await?;
    state.relay_wake.notify_one();
    Ok(Json(json!({ "requeued": 1 })))
}

pub async fn discard_delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    ValidJson(body): ValidJson<Discard>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    admin::discard_delivery(&state.pool, id, &caller.actor(), reason(&body)?).await?;
    Ok(Json(json!({ "discarded": 1 })))
}

/// "Retry delivery" on a failed item: retries its dead and held deliveries.
pub async fn retry_item(
    State(state): State<AppState>,
    caller: Caller,
    Path((order_id, item_id)): Path<(Uuid, Uuid)>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let n = admin::retry_item(&state.pool, order_id, item_id, &caller.actor()).await?;
    state.relay_wake.notify_one();
    Ok(Json(json!({ "requeued": n })))
}

/// Query of `GET /v1/admin/payment-events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// `received`, `applied`, `pending`, `ignored` or `failed`.
    pub status: Option<String>,
    /// Page size, 1–500 (default 50).
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub before: Option<i64>,
}

/// Verified webhook events as stored: what was applied, what waits for its
/// payment (`pending`), what could not be used (`failed`, with the reason).
pub async fn payment_events(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let q = query(q)?;
    if let Some(s) = &q.status
        && !["received", "applied", "pending", "ignored", "failed"].contains(&s.as_str())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "status must be received, applied, pending, ignored or failed",
        ));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let mut conn = state.pool.acquire().await?;
    let events =
        courier_shared::db::payments::list_events(&mut conn, q.status.as_deref(), q.before, limit)
            .await?;
    let next = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(Json(json!({ "events": events, "next_before": next })))
}

/// One stored webhook event with the body the gateway sent.
pub async fn payment_event(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    caller.require(ADMIN)?;
    let mut conn = state.pool.acquire().await?;
    let payload = courier_shared::db::payments::event_payload(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment event"))?;
    Ok(Json(json!({ "id": id, "payload": payload })))
}
