//! Fulfilment by hand (`admin`): [Mark as Delivered], [Mark as Completed],
//! [Process] and [Process Selected]. The rules are in
//! `courier_shared::service::manual`.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use courier_shared::db::order_list::{self, After, SortKey};
use courier_shared::domain::order::ProcessHold;
use courier_shared::service::manual::{self, MarkCompleted, MarkDelivered, Marked, ProcessOutcome};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{ADMIN, Caller};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::json::ValidJson;
use crate::routes::order_list::ListQuery;
use crate::routes::payments::order_id;
use crate::startup::AppState;

/// A JSON body that may be left out (empty: every field at its default).
fn optional_body<T: Default + serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    crate::json::check_json_type(headers)?;
    crate::json::parse(body)
}

#[utoipa::path(post, path = "/v1/orders/{reference}/items/{item_id}/deliver", operation_id = "mark_item_delivered", tag = "orders",
    params(
        ("reference" = String, Path, description = "Order id (UUID) or order number"),
        ("item_id" = Uuid, Path, description = "The item"),
    ),
    request_body = MarkDelivered,
    responses((status = 200, description = "The item is delivered; what was cancelled and what is still running", body = Marked)))]
/// [Mark as Delivered]: the item is delivered by hand, with an optional
/// redemption code (stored encrypted) and delivery notes. Its deliveries that
/// are not running are cancelled; running ones are left to finish (named in
/// the answer). `409` when the order is not paid, withdrawn, waiting to be
/// processed, or the item is already delivered or revoked.
pub async fn deliver_item(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((reference, item_id)): ApiPath<(String, Uuid)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Marked>, ApiError> {
    caller.require(ADMIN)?;
    let body: MarkDelivered = optional_body(&headers, &body)?;
    let id = order_id(&state, &reference).await?;
    let marked = manual::mark_item_delivered(
        &state.pool,
        state.cipher.as_ref(),
        id,
        item_id,
        body,
        &caller.actor(),
    )
    .await?;
    Ok(Json(marked))
}

#[utoipa::path(post, path = "/v1/orders/{reference}/complete", operation_id = "mark_order_completed", tag = "orders",
    params(("reference" = String, Path, description = "Order id (UUID) or order number")),
    request_body = MarkCompleted,
    responses((status = 200, description = "The order is completed; what was cancelled and what is still running", body = Marked)))]
/// [Mark as Completed]: every item not yet delivered is marked delivered by
/// hand and the order completes; queued deliveries are cancelled, running
/// ones left to finish (named in the answer). `409` when the order is not
/// paid, withdrawn or already completed.
pub async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Marked>, ApiError> {
    caller.require(ADMIN)?;
    let body: MarkCompleted = optional_body(&headers, &body)?;
    let id = order_id(&state, &reference).await?;
    let marked = manual::mark_order_completed(&state.pool, id, body, &caller.actor()).await?;
    Ok(Json(marked))
}

#[utoipa::path(post, path = "/v1/orders/{reference}/process", operation_id = "process_order", tag = "orders",
    params(("reference" = String, Path, description = "Order id (UUID) or order number")),
    responses((status = 200, description = "Its deliveries are queued", body = ProcessOutcome)))]
/// [Process]: starts a paid order that waits (auto-processing off, or a
/// process delay not over yet). `409` with the reason as the error code
/// (`not_waiting`, `not_paid`, `withdrawn`, `unplannable`) when it cannot;
/// after `withdrawn` it no longer waits, after `unplannable` (its products
/// no longer plan) it is `failed`, as when a payment arrives for it.
pub async fn process(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
) -> Result<Json<ProcessOutcome>, ApiError> {
    caller.require(ADMIN)?;
    let id = order_id(&state, &reference).await?;
    let outcome = manual::process(&state.pool, id, &caller.actor(), &state.rules).await?;
    state.relay_wake.notify_one();
    match outcome.skipped {
        None => Ok(Json(outcome)),
        Some(code) => Err(ApiError::new(
            StatusCode::CONFLICT,
            code,
            outcome.message.unwrap_or_default(),
        )),
    }
}

/// Most orders one bulk [Process] call takes (each is its own transaction,
/// and the answer waits for all); a filter matching more is processed in
/// calls of this size (`remaining` says so).
const MAX_BULK: usize = 1_000;

/// Body of `POST /v1/orders/process`: either `ids` or `filter`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkProcess {
    /// These orders (at most 1,000).
    #[serde(default)]
    pub ids: Option<Vec<Uuid>>,
    /// The orders that wait to be processed and match this filter of
    /// `GET /v1/orders` (its query parameters as a JSON object of strings;
    /// `sort`, `order`, `limit`, `cursor` and `format` are not filters),
    /// resolved to a snapshot before any is processed.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<ListQuery>,
}

/// What a bulk [Process] did.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkProcessed {
    /// Orders in the snapshot.
    pub matched: usize,
    /// Orders whose deliveries were queued.
    pub started: usize,
    /// Orders skipped.
    pub skipped: usize,
    /// Skipped orders by reason (`not_found`, `not_waiting`, `not_paid`,
    /// `withdrawn`, `unplannable`, `error`: see the outcome's message).
    pub skipped_by_reason: BTreeMap<String, usize>,
    /// The filter matched more than one call takes (1,000): call again.
    pub remaining: bool,
    /// Each order's outcome, in snapshot order.
    pub outcomes: Vec<ProcessOutcome>,
}

#[utoipa::path(post, path = "/v1/orders/process", operation_id = "process_orders", tag = "orders",
    request_body = BulkProcess,
    responses((status = 200, description = "The snapshot, and each order's outcome", body = BulkProcessed)))]
/// [Process Selected]: processes the orders named by `ids`, or those a
/// list filter matches, resolved to a snapshot first (orders that arrive
/// meanwhile are not taken); each in its own transaction.
pub async fn process_many(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(body): ValidJson<BulkProcess>,
) -> Result<Json<BulkProcessed>, ApiError> {
    caller.require(ADMIN)?;
    let (ids, remaining) = match (body.ids, body.filter) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_BULK {
                return Err(ApiError::invalid("ids", "give 1 to 1000 order ids"));
            }
            let mut seen = std::collections::HashSet::new();
            let ids: Vec<Uuid> = ids.into_iter().filter(|id| seen.insert(*id)).collect();
            (ids, false)
        }
        (None, Some(filter)) => snapshot(&state, &filter).await?,
        _ => {
            return Err(ApiError::invalid(
                "ids",
                "give either ids or filter (one of them)",
            ));
        }
    };
    let actor = caller.actor();
    let mut outcomes = Vec::with_capacity(ids.len());
    for id in &ids {
        // One order's failure is its outcome, not the whole answer's: the
        // others were committed and are reported.
        outcomes.push(
            match manual::process(&state.pool, *id, &actor, &state.rules).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(order = %id, error = %e, "bulk process: one order failed");
                    ProcessOutcome {
                        order_id: *id,
                        started: None,
                        skipped: Some("error"),
                        message: Some(e.to_string()),
                    }
                }
            },
        );
    }
    state.relay_wake.notify_one();
    let mut skipped_by_reason = BTreeMap::new();
    for o in &outcomes {
        if let Some(why) = o.skipped {
            *skipped_by_reason.entry(why.to_owned()).or_default() += 1;
        }
    }
    let skipped = skipped_by_reason.values().sum();
    Ok(Json(BulkProcessed {
        matched: ids.len(),
        started: outcomes.len() - skipped,
        skipped,
        skipped_by_reason,
        remaining,
        outcomes,
    }))
}

/// The ids of the orders `filter` matches now, oldest first, at most
/// `MAX_BULK` (and whether there are more).
async fn snapshot(state: &AppState, filter: &ListQuery) -> Result<(Vec<Uuid>, bool), ApiError> {
    for (field, given) in [
        ("filter.sort", filter.sort.is_some()),
        ("filter.order", filter.order.is_some()),
        ("filter.limit", filter.limit.is_some()),
        ("filter.cursor", filter.cursor.is_some()),
        ("filter.format", filter.format.is_some()),
    ] {
        if given {
            return Err(ApiError::invalid(field, "is not a filter"));
        }
    }
    let mut conn = state.pool.acquire().await?;
    // A refused filter names its field as the body has it (`filter.q`).
    let mut f = filter.resolve(&mut conn).await.map_err(|mut e| {
        e.field = e.field.map(|f| format!("filter.{f}"));
        e
    })?;
    // Only orders that wait are worth a transaction each.
    if f.process_holds.is_empty() {
        f.process_holds = ProcessHold::ALL.to_vec();
    }
    let mut ids = Vec::new();
    let mut after: Option<After> = None;
    loop {
        let page =
            order_list::list(&mut conn, &f, SortKey::Created, false, after.as_ref(), 500).await?;
        let full = page.len() == 500;
        for row in &page {
            if ids.len() == MAX_BULK {
                return Ok((ids, true));
            }
            ids.push(row.id);
        }
        match page.last() {
            Some(last) if full => {
                after = Some(After {
                    key: last.sort_value(SortKey::Created),
                    id: last.id,
                });
            }
            _ => return Ok((ids, false)),
        }
    }
}
