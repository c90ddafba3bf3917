//! Admin actions on failures (`admin` scope): dead letters (list with filters
//! and pagination, show with attempt history, retry, bulk retry, discard), held
//! deliveries, and "Retry delivery" on an order item.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use courier_shared::db::dead_letters::{self, DeadLetter, Filter};
use courier_shared::db::orders::AttemptView;
use courier_shared::db::payment_events::EventRow;
use courier_shared::db::rescue::{HeldDelivery, WaitingDelivery};
use courier_shared::db::{orders, rescue};
use courier_shared::domain::delivery::DeliveryKind;
use courier_shared::domain::payment::EventStatus;
use courier_shared::service::admin::{self, AdminError, BulkRetry};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{ADMIN, Caller};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
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
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
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
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Every admin list pages the same way: `limit` 1–500 (default 50) and an
/// opaque `cursor` (the previous page's `next_cursor`); unknown parameters
/// are refused by each query's `deny_unknown_fields`.
pub mod page {
    use axum::http::StatusCode;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use crate::error::ApiError;

    pub const DEFAULT: i64 = 50;
    pub const MAX: i64 = 500;

    pub fn limit(limit: Option<i64>) -> Result<i64, ApiError> {
        let limit = limit.unwrap_or(DEFAULT);
        if !(1..=MAX).contains(&limit) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("limit must be between 1 and {MAX}"),
            )
            .with_field("limit"));
        }
        Ok(limit)
    }

    /// The key a cursor stands for, read by `parse`.
    pub fn decode<T>(
        cursor: Option<&str>,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        cursor
            .map(|c| {
                URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|k| parse(&k))
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_query",
                            "cursor: pass the next_cursor of the previous page unchanged",
                        )
                        .with_field("cursor")
                    })
            })
            .transpose()
    }

    /// An id cursor.
    pub fn decode_id(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
        decode(cursor, |k| k.parse().ok())
    }

    /// The next page's cursor: present only when this page was full.
    pub fn next(len: usize, limit: i64, last: Option<String>) -> Option<String> {
        (len as i64 == limit)
            .then_some(last)
            .flatten()
            .map(|k| URL_SAFE_NO_PAD.encode(k))
    }
}

/// A page of dead letters, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One dead letter with every attempt of its delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterDetail {
    pub dead_letter: DeadLetter,
    pub attempts: Vec<AttemptView>,
}

/// How many deliveries were queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Requeued {
    pub requeued: u64,
}

/// How many were discarded.
#[derive(Debug, Serialize, ToSchema)]
pub struct Discarded {
    pub discarded: u64,
}

/// A page of held deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeldPage {
    pub held: Vec<HeldDelivery>,
    pub next_cursor: Option<String>,
}

/// A page of stored webhook events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentEventPage {
    pub events: Vec<EventRow>,
    pub next_cursor: Option<String>,
}

/// A stored webhook event's body, as the gateway sent it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentEventBody {
    pub id: i64,
    pub payload: Value,
}

/// A dead-letter filter's free-text fields, checked.
fn check_filter(f: &Filter) -> Result<(), ApiError> {
    filter_text("target", &f.target)?;
    filter_text("error", &f.error)
}

/// A filter on free text: at most 255 characters.
fn filter_text(field: &str, value: &Option<String>) -> Result<(), ApiError> {
    if value.as_ref().is_some_and(|v| v.chars().count() > 255) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("{field} must be at most 255 characters"),
        )
        .with_field(field));
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/admin/dead-letters", operation_id = "list_dead_letters", tag = "failures", params(ListQuery),
    responses((status = 200, description = "Dead letters, newest first", body = DeadLetterPage)))]
/// Dead letters, filtered and paged.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    caller.require(ADMIN)?;
    let limit = page::limit(q.limit)?;
    let before = page::decode_id(q.cursor.as_deref())?;
    let filter = Filter {
        kind: q.kind,
        target: q.target,
        error: q.error,
        older_than: q.older_than,
        newer_than: q.newer_than,
        include_resolved: q.include_resolved,
    };
    check_filter(&filter)?;
    let mut conn = state.pool.acquire().await?;
    let rows: Vec<DeadLetter> = dead_letters::list(&mut conn, &filter, limit, before).await?;
    let next = page::next(rows.len(), limit, rows.last().map(|d| d.id.to_string()));
    Ok(Json(DeadLetterPage {
        dead_letters: rows,
        next_cursor: next,
    }))
}

/// How many dead letters a filter matches.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterCount {
    pub matched: i64,
    /// When it was counted: pass it as `older_than` to a bulk retry to
    /// touch no dead letter that arrived after the count.
    pub as_of: DateTime<Utc>,
}

#[utoipa::path(get, path = "/v1/admin/dead-letters/count", operation_id = "count_dead_letters", tag = "failures", params(Filter),
    responses((status = 200, description = "How many match, and when that was counted", body = DeadLetterCount)))]
/// Counts the dead letters a filter matches (what a bulk retry would take).
pub async fn count(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filter): ApiQuery<Filter>,
) -> Result<Json<DeadLetterCount>, ApiError> {
    caller.require(ADMIN)?;
    check_filter(&filter)?;
    let mut conn = state.pool.acquire().await?;
    // Taken before the count: a dead letter created while it runs is either
    // counted or newer than `as_of`, never in a later retry uncounted.
    let as_of = Utc::now();
    let matched = dead_letters::count(&mut conn, &filter).await?;
    Ok(Json(DeadLetterCount { matched, as_of }))
}

#[utoipa::path(get, path = "/v1/admin/dead-letters/{id}", operation_id = "get_dead_letter", tag = "failures",
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses((status = 200, description = "The dead letter and its delivery's attempts", body = DeadLetterDetail)))]
/// One dead letter with its delivery's attempt history.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<DeadLetterDetail>, ApiError> {
    caller.require(ADMIN)?;
    let mut conn = state.pool.acquire().await?;
    let dl = dead_letters::get(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found("dead letter"))?;
    let attempts = match dl.delivery_id {
        Some(d) => orders::load_attempts(&mut conn, d).await?,
        None => Vec::new(),
    };
    Ok(Json(DeadLetterDetail {
        dead_letter: dl,
        attempts,
    }))
}

#[utoipa::path(post, path = "/v1/admin/dead-letters/{id}/retry", operation_id = "retry_dead_letter", tag = "failures",
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses((status = 200, description = "Queued again", body = Requeued)))]
/// Queues a dead letter's delivery again.
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Requeued>, ApiError> {
    caller.require(ADMIN)?;
    admin::retry_dead_letter(&state.pool, id, &caller.actor()).await?;
    state.relay_wake.notify_one();
    Ok(Json(Requeued { requeued: 1 }))
}

#[utoipa::path(post, path = "/v1/admin/dead-letters/retry", operation_id = "retry_dead_letters", tag = "failures", request_body = Filter,
    responses((status = 200, description = "The filter resolved to a snapshot, then each retried", body = BulkRetry)))]
/// Retries every open dead letter the filter matches.
pub async fn retry_bulk(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(filter): ValidJson<Filter>,
) -> Result<Json<BulkRetry>, ApiError> {
    caller.require(ADMIN)?;
    check_filter(&filter)?;
    let result = admin::retry_matching(&state.pool, &filter, &caller.actor()).await?;
    state.relay_wake.notify_one();
    Ok(Json(result))
}

/// Body of the discard actions.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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

#[utoipa::path(post, path = "/v1/admin/dead-letters/{id}/discard", operation_id = "discard_dead_letter", tag = "failures",
    params(("id" = i64, Path, description = "The dead letter's id")), request_body = Discard,
    responses((status = 200, description = "Discarded; the reason is in the order's timeline", body = Discarded)))]
/// Gives up on a dead letter's delivery, with a reason.
pub async fn discard(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ValidJson(body): ValidJson<Discard>,
) -> Result<Json<Discarded>, ApiError> {
    caller.require(ADMIN)?;
    admin::discard_dead_letter(&state.pool, id, &caller.actor(), reason(&body)?).await?;
    Ok(Json(Discarded { discarded: 1 }))
}

/// Query of `GET /v1/admin/held` and `GET /v1/admin/alerts`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1–500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/admin/held", operation_id = "list_held", tag = "failures", params(PageQuery),
    responses((status = 200, description = "Held deliveries, newest first", body = HeldPage)))]
/// Deliveries parked for an admin (they may have run), newest first.
pub async fn held(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<HeldPage>, ApiError> {
    caller.require(ADMIN)?;
    let limit = page::limit(q.limit)?;
    let after = page::decode(q.cursor.as_deref(), rescue::HeldCursor::parse)?;
    let (rows, last) = rescue::held(&state.pool, limit, after).await?;
    let next = page::next(rows.len(), limit, last.map(|c| c.to_string()));
    Ok(Json(HeldPage {
        held: rows,
        next_cursor: next,
    }))
}

/// A page of waiting deliveries, least recently checked first.
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitingPage {
    pub waiting: Vec<WaitingDelivery>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/admin/waiting", operation_id = "list_waiting", tag = "failures", params(PageQuery),
    responses((status = 200, description = "Waiting deliveries, least recently checked first", body = WaitingPage)))]
/// Deliveries that wait for something outside Courier (a player to come
/// online, a supplier's stock), with why and when they are checked again.
pub async fn waiting(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<WaitingPage>, ApiError> {
    caller.require(ADMIN)?;
    let limit = page::limit(q.limit)?;
    let after = page::decode(q.cursor.as_deref(), rescue::HeldCursor::parse)?;
    let (rows, last) = rescue::waiting(&state.pool, limit, after).await?;
    let next = page::next(rows.len(), limit, last.map(|c| c.to_string()));
    Ok(Json(WaitingPage {
        waiting: rows,
        next_cursor: next,
    }))
}

#[utoipa::path(post, path = "/v1/admin/deliveries/{id}/retry", operation_id = "retry_delivery", tag = "failures",
    params(("id" = Uuid, Path, description = "The delivery's id")),
    responses((status = 200, description = "Queued again", body = Requeued)))]
/// Queues a held or dead delivery again.
pub async fn retry_delivery(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Requeued>, ApiError> {
    caller.require(ADMIN)?;
    admin::retry_delivery(&state.pool, id, &caller.actor()).await?;
    state.relay_wake.notify_one();
    Ok(Json(Requeued { requeued: 1 }))
}

#[utoipa::path(post, path = "/v1/admin/deliveries/{id}/discard", operation_id = "discard_delivery", tag = "failures",
    params(("id" = Uuid, Path, description = "The delivery's id")), request_body = Discard,
    responses((status = 200, description = "Discarded", body = Discarded)))]
/// Gives up on a held or dead delivery, with a reason.
pub async fn discard_delivery(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ValidJson(body): ValidJson<Discard>,
) -> Result<Json<Discarded>, ApiError> {
    caller.require(ADMIN)?;
    admin::discard_delivery(&state.pool, id, &caller.actor(), reason(&body)?).await?;
    Ok(Json(Discarded { discarded: 1 }))
}

#[utoipa::path(post, path = "/v1/orders/{order_id}/items/{item_id}/retry", operation_id = "retry_item", tag = "failures",
    params(("order_id" = Uuid, Path, description = "The order's id"), ("item_id" = Uuid, Path, description = "The item's id")),
    responses((status = 200, description = "How many of the item's deliveries were queued again", body = Requeued)))]
/// "Retry delivery" on a failed item: retries its dead and held deliveries.
pub async fn retry_item(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((order_id, item_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<Requeued>, ApiError> {
    caller.require(ADMIN)?;
    let n = admin::retry_item(&state.pool, order_id, item_id, &caller.actor()).await?;
    state.relay_wake.notify_one();
    Ok(Json(Requeued { requeued: n as u64 }))
}

/// Query of `GET /v1/admin/payment-events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// `received`, `applied`, `pending`, `ignored` or `failed`.
    pub status: Option<EventStatus>,
    /// Page size, 1–500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/admin/payment-events", operation_id = "list_payment_events", tag = "payments", params(EventQuery),
    responses((status = 200, description = "Stored webhook events, newest first", body = PaymentEventPage)))]
/// Verified webhook events as stored: what was applied, what waits for its
/// payment (`pending`), what could not be used (`failed`, with the reason).
pub async fn payment_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<PaymentEventPage>, ApiError> {
    caller.require(ADMIN)?;
    let limit = page::limit(q.limit)?;
    let before = page::decode_id(q.cursor.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    let events =
        courier_shared::db::payment_events::list_events(&mut conn, q.status, before, limit).await?;
    let next = page::next(events.len(), limit, events.last().map(|e| e.id.to_string()));
    Ok(Json(PaymentEventPage {
        events,
        next_cursor: next,
    }))
}

#[utoipa::path(get, path = "/v1/admin/payment-events/{id}", operation_id = "get_payment_event", tag = "payments",
    params(("id" = i64, Path, description = "The event's id")),
    responses((status = 200, description = "The event's body as received", body = PaymentEventBody)))]
/// One stored webhook event with the body the gateway sent.
pub async fn payment_event(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<PaymentEventBody>, ApiError> {
    caller.require(ADMIN)?;
    let mut conn = state.pool.acquire().await?;
    let payload = courier_shared::db::payment_events::event_payload(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment event"))?;
    Ok(Json(PaymentEventBody { id, payload }))
}
