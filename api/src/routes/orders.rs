//! `POST /v1/orders` and `GET /v1/orders/{id or order number}`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use courier_shared::db::orders::{self, OrderStatusView, OrderSummary};
use courier_shared::domain::ids;
use courier_shared::domain::order::OrderStatus;
use courier_shared::service::orders::{AcceptWith, NewOrder, OrderRef, create_order};
use uuid::Uuid;

use crate::auth::{Caller, ORDERS_KEYS, ORDERS_READ, ORDERS_WRITE};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::json::ValidJson;
use crate::startup::AppState;

#[utoipa::path(post, path = "/v1/orders", operation_id = "create_order", tag = "orders",
    params(("Idempotency-Key" = Option<String>, Header, description = "1–255 characters; a repeat with the same body returns the same order, with another body 409")),
    request_body = NewOrder,
    responses(
        (status = 201, description = "Accepted; its deliveries are queued", body = OrderSummary),
        (status = 200, description = "The Idempotency-Key was seen with this body: the order it made", body = OrderSummary),
    ))]
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
    let with = AcceptWith {
        pool: &state.pool,
        commit: &state.accepts,
        products: &state.products,
        rules: &state.rules,
    };
    let accepted = create_order(&with, order, key, &caller.actor()).await?;
    // Its job messages were handed to this process's relay at commit.
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

/// Query of `GET /v1/orders/{id}`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// `full`: items (with keys), deliveries with every attempt, refunds,
    /// disputes and the timeline. Without it: the order's own row.
    pub expand: Option<String>,
    /// Answer once the order's status is one of these (comma-separated), or
    /// settled (completed, failed, refunded, partially refunded, cancelled),
    /// or `timeout` passed — whichever is first.
    pub wait_for: Option<String>,
    /// How long to wait: `30s`, `1500ms` or seconds; at most 60 s (default 30 s).
    pub timeout: Option<String>,
}

/// Longest `timeout` of a waiting read.
const MAX_WAIT: Duration = Duration::from_secs(60);

impl GetQuery {
    fn full(&self) -> Result<bool, ApiError> {
        match self.expand.as_deref() {
            None => Ok(false),
            Some("full") => Ok(true),
            Some(other) => Err(ApiError::invalid(
                "expand",
                format!(
                    "unknown expansion `{}`; the one there is: full",
                    clip(other)
                ),
            )),
        }
    }

    /// The statuses to wait for and until when, if the client waits.
    fn wait(&self) -> Result<Option<(Vec<OrderStatus>, Duration)>, ApiError> {
        let Some(list) = &self.wait_for else {
            if self.timeout.is_some() {
                return Err(ApiError::invalid("timeout", "timeout needs wait_for"));
            }
            return Ok(None);
        };
        let statuses = list
            .split(',')
            .map(|s| {
                s.trim().parse::<OrderStatus>().map_err(|_| {
                    ApiError::invalid(
                        "wait_for",
                        format!(
                            "`{}` is not an order status; known: {}",
                            clip(s),
                            OrderStatus::ALL
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = match self.timeout.as_deref() {
            None => Duration::from_secs(30),
            Some(t) => parse_timeout(t).filter(|d| *d <= MAX_WAIT).ok_or_else(|| {
                ApiError::invalid(
                    "timeout",
                    format!(
                        "`{}` is not a duration of at most 60s (e.g. 30s, 1500ms)",
                        clip(t)
                    ),
                )
            })?,
        };
        Ok(Some((statuses, timeout)))
    }
}

fn clip(s: &str) -> String {
    courier_shared::domain::clip(s, 40).to_owned()
}

fn parse_timeout(t: &str) -> Option<Duration> {
    let t = t.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    let secs = t.strip_suffix('s').unwrap_or(t);
    secs.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
        .map(Duration::from_secs_f64)
}

/// What `GET /v1/orders/{reference}` answers: the order's row, or with
/// `?expand=full` the whole view. (For the document; the handler answers
/// one of the two types directly.)
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)]
pub enum OrderRead {
    Status(OrderStatusView),
    Full(courier_shared::db::orders::OrderView),
}

#[utoipa::path(get, path = "/v1/orders/{reference}", operation_id = "get_order", tag = "orders",
    params(
        ("reference" = String, Path, description = "Order id (UUID) or order number (ORD-XXXXXXXXXX)"),
        GetQuery,
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
    ),
    responses(
        (status = 200, description = "The order's row (default) or, with `expand=full`, the whole view", body = OrderRead,
            headers(("ETag" = String, description = "Strong tag of the body"))),
        (status = 304, description = "Unchanged since the ETag in If-None-Match"),
    ))]
/// An order: by default its own row (status, payment, amounts, times — one
/// indexed read); `?expand=full` for everything. `?wait_for=completed` holds
/// the request until the status is reached (see `GetQuery`). Answers carry an
/// `ETag`; `If-None-Match` with the same tag answers `304`.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    ApiQuery(query): ApiQuery<GetQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(ORDERS_READ)?;
    let full = query.full()?;
    let wait = query.wait()?;
    let order = if let Ok(id) = Uuid::parse_str(&reference) {
        OrderRef::Id(id)
    } else if ids::looks_like_order_number(&reference) {
        OrderRef::Number(reference)
    } else {
        return Err(ApiError::invalid_reference());
    };
    let mut status = state
        .status_reads
        .read(order)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    if let Some((wanted, timeout)) = wait {
        status = wait_for(&state, status, &wanted, timeout).await?;
    }
    if !full {
        return Ok(with_etag(&headers, &status));
    }
    let view = full_view(&state, &caller, status.id, caller.has(ORDERS_KEYS)).await?;
    Ok(with_etag(&headers, &view))
}

/// The whole order as `?expand=full` shows it. With `reveal` (and a caller
/// with `orders:keys`) its codes are decrypted and marked revealed; without,
/// keys show their source but not their code. Staff notes for `admin` only.
pub async fn full_view(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    reveal: bool,
) -> Result<orders::OrderView, ApiError> {
    // Codes are decrypted only for callers allowed to see them.
    let cipher = if reveal && caller.has(ORDERS_KEYS) {
        state.cipher.as_ref()
    } else {
        None
    };
    if cipher.is_some() {
        let mut conn = state.pool.acquire().await?;
        courier_shared::db::keys::mark_revealed(&mut conn, id).await?;
    }
    // One snapshot for the whole view: read statement by statement, a
    // delivery could be seen succeeded without the attempt that did it.
    let mut conn = state.pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *conn)
        .await?;
    let mut view = orders::load_view(&mut conn, Some(id), None)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    for item in &mut view.items {
        item.keys = courier_shared::db::keys::item_keys(&mut conn, item.id, cipher).await?;
        if !caller.has(crate::auth::ADMIN) {
            for k in &mut item.keys {
                k.cost = None;
            }
        }
    }
    if caller.has(crate::auth::ADMIN) {
        view.notes = Some(courier_shared::db::notes::list(&mut conn, view.id).await?);
    }
    conn.commit().await?;
    Ok(view)
}

/// Holds until the order's status is one of `wanted` or settled, or until
/// `timeout`; answers its latest row. Woken by the process's one LISTEN
/// (`waiters`): one read per change of this order, none while nothing changes.
async fn wait_for(
    state: &AppState,
    mut status: OrderStatusView,
    wanted: &[OrderStatus],
    timeout: Duration,
) -> Result<OrderStatusView, ApiError> {
    let done = |s: &OrderStatusView| {
        wanted.contains(&s.status)
            || !matches!(s.status, OrderStatus::Pending | OrderStatus::Processing)
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let waiting = state.waiters.watch(status.id);
    loop {
        if done(&status) {
            return Ok(status);
        }
        let notified = waiting.notify.notified();
        tokio::pin!(notified);
        // Enabled before the read: a change committed after it still wakes us.
        notified.as_mut().enable();
        status = state
            .status_reads
            .read(OrderRef::Id(status.id))
            .await?
            .ok_or_else(|| ApiError::not_found("order"))?;
        if done(&status) || state.waiters.closing() {
            return Ok(status);
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => return Ok(status),
        }
    }
}

/// `value` as JSON with a strong `ETag` of its bytes; `304 Not Modified` when
/// `If-None-Match` names that tag (or `*`).
fn with_etag<T: serde::Serialize>(headers: &HeaderMap, value: &T) -> Response {
    use std::hash::{Hash, Hasher};
    let body = match serde_json::to_vec(value) {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("could not encode the answer: {e}"),
            )
            .into_response();
        }
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    let tag = format!("\"{:016x}{:08x}\"", hasher.finish(), body.len());
    let matches = headers
        .get_all(axum::http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == tag || t == "*");
    let etag = [
        (axum::http::header::ETAG, tag),
        (
            axum::http::header::CACHE_CONTROL,
            "private, no-cache".to_owned(),
        ),
    ];
    if matches {
        return (StatusCode::NOT_MODIFIED, etag).into_response();
    }
    (
        etag,
        [(
            axum::http::header::CONTENT_TYPE,
            "application/json".to_owned(),
        )],
        body,
    )
        .into_response()
}
