//! Webhook endpoints (`admin`): where Courier tells the store's other systems
//! about orders. The secret is shown when it is made (create, rotate) and
//! never again. Each endpoint has a delivery log, a resend of any message and
//! a test event. What is sent, and when, is in `docs/webhooks.md`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use courier_shared::db::webhooks::{self, Endpoint, LoggedDelivery, Patch};
use courier_shared::domain::webhook::{TargetError, check_events, check_target, new_secret};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{ADMIN, Caller};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::json::ValidJson;
use crate::routes::payments::order_id;
use crate::startup::AppState;

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// `http` or `https`, at most 2,000 characters; it must not resolve to a
    /// private address unless `webhooks.allow_private_targets` is on.
    pub url: String,
    /// Event names (`order.received`, `order.completed`, `order.refunded`,
    /// `order.updated`, `order.failed`, `delivery.dead`, `dispute.created`,
    /// `dispute.closed`; `order.created` is the old name of `order.received`),
    /// or `["*"]` for all.
    pub events: Vec<String>,
    /// At most 500 characters.
    #[serde(default)]
    pub description: String,
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Changes to an endpoint; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    /// Enabling an endpoint clears why it was disabled and its failures.
    pub enabled: Option<bool>,
}

/// An endpoint and its signing secret (shown this once).
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointWithSecret {
    pub endpoint: Endpoint,
    /// `whsec_` and base64: verify `webhook-signature` with it (any Standard
    /// Webhooks library does).
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<Endpoint>,
}

/// How long the old secret still signs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// 0 to 168 hours (default `webhooks.secret_overlap_hours`); 0 drops the
    /// old secret at once.
    pub overlap_hours: Option<u32>,
}

/// What a test event carries.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestEvent {
    /// The order whose data the event carries (id or number); default: the newest.
    pub order: Option<String>,
}

/// A message written for sending.
#[derive(Debug, Serialize, ToSchema)]
pub struct Queued {
    /// The delivery (its log entry).
    pub delivery_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Messages, newest first: 1–200 (default 50).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryLog {
    pub deliveries: Vec<LoggedDelivery>,
}

fn description(d: &str) -> Result<&str, ApiError> {
    if d.chars().count() > 500 {
        return Err(ApiError::invalid(
            "description",
            "a description has at most 500 characters",
        ));
    }
    Ok(d)
}

async fn url(state: &AppState, raw: &str) -> Result<String, ApiError> {
    match check_target(raw.trim(), state.webhooks.allow_private_targets).await {
        Ok(u) => Ok(u.to_string()),
        Err(e @ TargetError::Private(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "private_target",
            e.to_string(),
        )
        .with_field("url")),
        Err(e) => Err(ApiError::invalid("url", e.to_string())),
    }
}

fn events(e: &[String]) -> Result<(), ApiError> {
    check_events(e).map_err(|m| ApiError::invalid("events", m))
}

async fn found(state: &AppState, id: Uuid) -> Result<Endpoint, ApiError> {
    let mut conn = state.pool.acquire().await?;
    webhooks::get(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))
}

#[utoipa::path(post, path = "/v1/webhook-endpoints", operation_id = "create_webhook_endpoint", tag = "webhook-endpoints",
    request_body = NewEndpoint,
    responses((status = 201, description = "The endpoint, with its secret (shown this once)", body = EndpointWithSecret)))]
/// Registers an endpoint.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(b): ValidJson<NewEndpoint>,
) -> Result<(StatusCode, Json<EndpointWithSecret>), ApiError> {
    caller.require(ADMIN)?;
    events(&b.events)?;
    let desc = description(&b.description)?;
    let url = url(&state, &b.url).await?;
    let secret = new_secret();
    let mut conn = state.pool.acquire().await?;
    let endpoint = webhooks::create(&mut conn, &url, desc, &b.events, b.enabled, &secret).await?;
    Ok((
        StatusCode::CREATED,
        Json(EndpointWithSecret { endpoint, secret }),
    ))
}

#[utoipa::path(get, path = "/v1/webhook-endpoints", operation_id = "list_webhook_endpoints", tag = "webhook-endpoints",
    responses((status = 200, description = "Every endpoint, oldest first", body = EndpointList)))]
/// The endpoints.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<EndpointList>, ApiError> {
    caller.require(ADMIN)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(EndpointList {
        endpoints: webhooks::list(&mut conn).await?,
    }))
}

#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}", operation_id = "get_webhook_endpoint", tag = "webhook-endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses((status = 200, description = "The endpoint", body = Endpoint)))]
/// One endpoint.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Endpoint>, ApiError> {
    caller.require(ADMIN)?;
    Ok(Json(found(&state, id).await?))
}

#[utoipa::path(patch, path = "/v1/webhook-endpoints/{id}", operation_id = "update_webhook_endpoint", tag = "webhook-endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    request_body = EndpointChanges,
    responses((status = 200, description = "The endpoint as changed", body = Endpoint)))]
/// Changes an endpoint's URL, events, description or enabled flag.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ValidJson(b): ValidJson<EndpointChanges>,
) -> Result<Json<Endpoint>, ApiError> {
    caller.require(ADMIN)?;
    if let Some(e) = &b.events {
        events(e)?;
    }
    if let Some(d) = &b.description {
        description(d)?;
    }
    let url = match &b.url {
        Some(u) => Some(url(&state, u).await?),
        None => None,
    };
    let patch = Patch {
        url: url.as_deref(),
        description: b.description.as_deref(),
        events: b.events.as_deref(),
        enabled: b.enabled,
    };
    let mut conn = state.pool.acquire().await?;
    webhooks::update(&mut conn, id, &patch, &caller.actor())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))
}

#[utoipa::path(delete, path = "/v1/webhook-endpoints/{id}", operation_id = "delete_webhook_endpoint", tag = "webhook-endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses((status = 204, description = "Deleted; its messages not yet sent are cancelled")))]
/// Deletes an endpoint.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    caller.require(ADMIN)?;
    let mut tx = state.pool.begin().await?;
    if !webhooks::delete(&mut tx, id, &caller.actor()).await? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/rotate-secret", operation_id = "rotate_webhook_secret", tag = "webhook-endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    request_body = Rotation,
    responses((status = 200, description = "The new secret (shown this once); the old one signs too until `previous_secret_until`", body = EndpointWithSecret)))]
/// Rotates an endpoint's secret with an overlap.
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ValidJson(b): ValidJson<Rotation>,
) -> Result<Json<EndpointWithSecret>, ApiError> {
    caller.require(ADMIN)?;
    let overlap = b
        .overlap_hours
        .unwrap_or(state.webhooks.secret_overlap_hours);
    if overlap > 168 {
        return Err(ApiError::invalid(
            "overlap_hours",
            "the overlap is 0 to 168 hours",
        ));
    }
    let secret = new_secret();
    let mut conn = state.pool.acquire().await?;
    let endpoint = webhooks::rotate(&mut conn, id, &secret, overlap)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    Ok(Json(EndpointWithSecret { endpoint, secret }))
}

#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/test", operation_id = "send_webhook_test", tag = "webhook-endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    request_body = TestEvent,
    responses((status = 202, description = "An `endpoint.test` event is on its way; its result is in the delivery log", body = Queued)))]
/// Sends a test event (with a real order's data) to one endpoint.
pub async fn test(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ValidJson(b): ValidJson<TestEvent>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    caller.require(ADMIN)?;
    found(&state, id).await?;
    let order = match &b.order {
        Some(r) => order_id(&state, r)
            .await
            .map_err(|e| e.with_field("order"))?,
        None => {
            let mut conn = state.pool.acquire().await?;
            webhooks::newest_order(&mut conn).await?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "no_orders",
                    "a test event carries an order's data, and there is no order yet",
                )
            })?
        }
    };
    let mut tx = state.pool.begin().await?;
    let delivery_id = webhooks::send_test(&mut tx, id, order).await?;
    tx.commit().await?;
    state.relay_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(Queued { delivery_id })))
}

#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}/deliveries", operation_id = "webhook_delivery_log", tag = "webhook-endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id"), LogQuery),
    responses((status = 200, description = "Messages to the endpoint, newest first, each with its calls (status, latency, answer)", body = DeliveryLog)))]
/// An endpoint's delivery log.
pub async fn log(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<DeliveryLog>, ApiError> {
    caller.require(ADMIN)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit must be between 1 and 200",
        )
        .with_field("limit"));
    }
    found(&state, id).await?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(DeliveryLog {
        deliveries: webhooks::log(&mut conn, id, limit).await?,
    }))
}

#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/resend", operation_id = "resend_webhook", tag = "webhook-endpoints",
    params(
        ("id" = Uuid, Path, description = "The endpoint's id"),
        ("delivery_id" = Uuid, Path, description = "A delivery of its log"),
    ),
    responses((status = 202, description = "Sent again as a new delivery, with the same `webhook-id` and body", body = Queued)))]
/// Sends one message of the log again.
pub async fn resend(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, delivery)): ApiPath<(Uuid, Uuid)>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    caller.require(ADMIN)?;
    let mut tx = state.pool.begin().await?;
    let delivery_id = webhooks::resend(&mut tx, id, delivery)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook delivery"))?;
    tx.commit().await?;
    state.relay_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(Queued { delivery_id })))
}
