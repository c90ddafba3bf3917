//! Admin alerts (`admin`): the list, acknowledge ("seen, someone is on it")
//! and resolve ("fixed"). Raising an alert also sends it to the configured
//! channels (see `docs/alerts.md`); acknowledging it lets the same condition
//! be raised again later.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{ADMIN, Caller};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::routes::admin::page;
use crate::startup::AppState;

/// An alert for an admin (low stock, a failed order, a dispute…).
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Alert {
    pub id: i64,
    pub kind: String,
    pub message: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it was handed to the channels (none: no channel, or cooled down).
    pub notified_at: Option<chrono::DateTime<chrono::Utc>>,
    pub acknowledged_at: Option<chrono::DateTime<chrono::Utc>>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<chrono::DateTime<chrono::Utc>>,
    pub resolved_by: Option<String>,
}

/// A page of alerts, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertPage {
    pub alerts: Vec<Alert>,
    pub next_cursor: Option<String>,
}

/// Which alerts.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Neither acknowledged nor resolved (the default).
    Open,
    /// Acknowledged, not resolved.
    Acknowledged,
    Resolved,
    All,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// Page size, 1–500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `open` (default), `acknowledged`, `resolved` or `all`.
    #[param(value_type = Option<AlertState>)]
    pub state: Option<AlertState>,
}

const COLUMNS: &str = "id, kind, message, created_at, notified_at, acknowledged_at, acknowledged_by, resolved_at, resolved_by";

#[utoipa::path(get, path = "/v1/admin/alerts", operation_id = "list_alerts", tag = "failures", params(AlertQuery),
    responses((status = 200, description = "Alerts in that state, newest first", body = AlertPage)))]
/// `GET /v1/admin/alerts`: open alerts (or `state=`), newest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AlertQuery>,
) -> Result<Json<AlertPage>, ApiError> {
    caller.require(ADMIN)?;
    let limit = page::limit(q.limit)?;
    let before = page::decode_id(q.cursor.as_deref())?;
    let filter = match q.state.unwrap_or(AlertState::Open) {
        AlertState::Open => "acknowledged_at IS NULL AND resolved_at IS NULL",
        AlertState::Acknowledged => "acknowledged_at IS NOT NULL AND resolved_at IS NULL",
        AlertState::Resolved => "resolved_at IS NOT NULL",
        AlertState::All => "true",
    };
    let alerts: Vec<Alert> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM admin_alerts \
         WHERE {filter} AND ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
    )))
    .bind(before)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let next = page::next(alerts.len(), limit, alerts.last().map(|a| a.id.to_string()));
    Ok(Json(AlertPage {
        alerts,
        next_cursor: next,
    }))
}

async fn mark(state: &AppState, id: i64, sql: &str, actor: &str) -> Result<Alert, ApiError> {
    let done: Option<Alert> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{sql} WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(actor)
    .fetch_optional(&state.pool)
    .await?;
    done.ok_or_else(|| ApiError::not_found("alert"))
}

#[utoipa::path(post, path = "/v1/admin/alerts/{id}/acknowledge", operation_id = "acknowledge_alert", tag = "failures",
    params(("id" = i64, Path, description = "The alert's id")),
    responses((status = 200, description = "Acknowledged (again: unchanged)", body = Alert)))]
/// Acknowledges an alert: someone has seen it.
pub async fn acknowledge(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Alert>, ApiError> {
    caller.require(ADMIN)?;
    let alert = mark(
        &state,
        id,
        "UPDATE admin_alerts SET acknowledged_at = coalesce(acknowledged_at, now()), \
           acknowledged_by = coalesce(acknowledged_by, $2)",
        &caller.actor(),
    )
    .await?;
    Ok(Json(alert))
}

#[utoipa::path(post, path = "/v1/admin/alerts/{id}/resolve", operation_id = "resolve_alert", tag = "failures",
    params(("id" = i64, Path, description = "The alert's id")),
    responses((status = 200, description = "Resolved (and acknowledged, if it was not)", body = Alert)))]
/// Resolves an alert: the condition is fixed.
pub async fn resolve(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<(StatusCode, Json<Alert>), ApiError> {
    caller.require(ADMIN)?;
    let alert = mark(
        &state,
        id,
        "UPDATE admin_alerts SET resolved_at = coalesce(resolved_at, now()), \
           resolved_by = coalesce(resolved_by, $2), \
           acknowledged_at = coalesce(acknowledged_at, now()), \
           acknowledged_by = coalesce(acknowledged_by, $2)",
        &caller.actor(),
    )
    .await?;
    Ok((StatusCode::OK, Json(alert)))
}
