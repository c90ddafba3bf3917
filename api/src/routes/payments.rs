//! Payment webhooks (`/webhooks/stripe`, `/webhooks/generic`), refunds and
//! cancellation.
//!
//! Webhooks authenticate by signature on the raw body, checked before
//! anything is parsed; an unverified request changes nothing and is logged
//! without its headers or body. A verified event is stored and applied in one
//! transaction and answered only after the commit, without calling anything
//! outside (jobs go through the outbox). Duplicates answer 200 with
//! `"status": "duplicate"`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use courier_shared::config::Secret;
use courier_shared::db::refunds::RefundView;
use courier_shared::domain::ids;
use courier_shared::service::orders::NewOrder;
use courier_shared::service::payments::Accepted;
use courier_shared::service::payments::{
    self, AcceptRequest, IngestStatus, Ingested, PaymentPolicy, RefundRequest, StripeEvent,
};
use courier_shared::service::revoke::Withdrawn;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{ADMIN, Caller, ORDERS_REFUND, ORDERS_WRITE};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::json::{ValidJson, parse};
use crate::signature::{self, SignatureError, StandardHeaders};
use crate::startup::AppState;

fn secrets<'a>(a: &'a Option<Secret>, b: &'a Option<Secret>) -> Vec<&'a str> {
    [a, b]
        .into_iter()
        .flatten()
        .map(Secret::expose)
        .filter(|s| !s.is_empty())
        .collect()
}

fn not_configured(key: &str) -> ApiError {
    // 503, not 404: the gateway keeps re-sending until the secret is set.
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "webhook_not_configured",
        format!("this webhook is not configured (set {key})"),
    )
}

fn rejected(route: &str, e: SignatureError) -> ApiError {
    tracing::warn!(route, reason = %e, "webhook rejected");
    let status = match e {
        SignatureError::Malformed(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNAUTHORIZED,
    };
    ApiError::new(status, e.code(), e.to_string())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn answer(state: &AppState, route: &str, done: Ingested) -> (StatusCode, Json<Ingested>) {
    tracing::info!(route, status = ?done.status, order_id = ?done.order_id, note = ?done.note, "webhook event");
    if done.status == IngestStatus::Applied {
        state.relay_wake.notify_one();
    }
    (StatusCode::OK, Json(done))
}

#[utoipa::path(post, path = "/webhooks/stripe", operation_id = "stripe_webhook", tag = "webhooks",
    params(("Stripe-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">`")),
    request_body(content = Object, description = "A Stripe event (`checkout.session.completed`, `charge.refunded`, `charge.dispute.*`, …) as Stripe sends it"),
    responses((status = 200, description = "Stored and applied, stored for later, a duplicate, or unusable (recorded)", body = Ingested)),
    security(("stripe_signature" = [])))]
/// `POST /webhooks/stripe`.
pub async fn stripe(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Ingested>), ApiError> {
    let p = &state.payments;
    let keys = secrets(&p.stripe_webhook_secret, &p.stripe_webhook_secret_previous);
    if keys.is_empty() {
        return Err(not_configured("payments.stripe_webhook_secret"));
    }
    signature::verify_stripe(
        header(&headers, "stripe-signature"),
        &body,
        &keys,
        p.webhook_tolerance_seconds,
        chrono::Utc::now().timestamp(),
    )
    .map_err(|e| rejected("stripe", e))?;
    let raw: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?;
    // A verified event with text Postgres cannot keep (NUL, say) is stored
    // with those code points replaced, as `failed` with the field named, and
    // answered 200 like any other unusable verified event: Stripe stops
    // re-sending, an admin sees it, nothing is applied.
    let bad = crate::json::non_text_field(&body);
    let raw = match &bad {
        Some(_) => crate::json::sanitized(&raw),
        None => raw,
    };
    let event: StripeEvent = serde_json::from_value(raw.clone()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_event",
            format!("not a Stripe event: {e}"),
        )
    })?;
    if let Some(field) = bad {
        let reason = format!("{field}: contains NUL or another control character");
        let done =
            payments::ingest_unusable(&state.pool, "stripe", &event.id, &event.kind, &raw, &reason)
                .await?;
        return Ok(answer(&state, "stripe", done));
    }
    let policy = PaymentPolicy {
        revoke_on_dispute: p.revoke_on_dispute,
        accept: state.rules.clone(),
    };
    let done = payments::ingest_stripe(&state.pool, &event, &raw, &policy).await?;
    Ok(answer(&state, "stripe", done))
}

#[utoipa::path(post, path = "/webhooks/generic", operation_id = "generic_webhook", tag = "webhooks",
    params(
        ("webhook-id" = String, Header, description = "The event's id (the dedupe key)"),
        ("webhook-timestamp" = String, Header, description = "Unix seconds"),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256 of \"id.timestamp.body\">`, space-separated"),
    ),
    request_body = NewOrder,
    responses((status = 200, description = "Stored and applied, or a duplicate", body = Ingested)),
    security(("standard_webhook_signature" = [])))]
/// `POST /webhooks/generic`: an order in Courier's own format (the body of
/// `POST /v1/orders`), signed per Standard Webhooks; `webhook-id` is the dedupe key.
pub async fn generic(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Ingested>), ApiError> {
    let p = &state.payments;
    let keys = secrets(
        &p.generic_webhook_secret,
        &p.generic_webhook_secret_previous,
    );
    if keys.is_empty() {
        return Err(not_configured("payments.generic_webhook_secret"));
    }
    let id = signature::verify_standard(
        &StandardHeaders {
            id: header(&headers, "webhook-id"),
            timestamp: header(&headers, "webhook-timestamp"),
            signature: header(&headers, "webhook-signature"),
        },
        &body,
        &keys,
        p.webhook_tolerance_seconds,
        chrono::Utc::now().timestamp(),
    )
    .map_err(|e| rejected("generic", e))?;
    // Courier's own order format: a body that does not make a valid order
    // (NUL in a string included) is refused with the field named, as on
    // `POST /v1/orders`, and nothing is stored.
    let order: NewOrder = parse(&body)?;
    let raw: Value = serde_json::from_slice(&body).unwrap_or_default();
    let done = payments::ingest_generic(&state.pool, id, &order, &raw, &state.rules).await?;
    Ok(answer(&state, "generic", done))
}

/// `POST /v1/orders/{reference}/payment/accept` (`admin`): accepts a payment
/// that did not pay the order (`payment_status: mismatched`) as it is; the
/// order is then fulfilled. The reason goes into the timeline.
#[utoipa::path(post, path = "/v1/orders/{reference}/payment/accept", operation_id = "accept_payment", tag = "payments",
    params(("reference" = String, Path, description = "Order id (UUID) or order number")),
    request_body = AcceptRequest,
    responses((status = 200, description = "The payment accepted; fulfilment starts", body = Accepted)))]
pub async fn accept_payment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    ValidJson(req): ValidJson<AcceptRequest>,
) -> Result<Json<Accepted>, ApiError> {
    caller.require(ADMIN)?;
    let id = order_id(&state, &reference).await?;
    let policy = PaymentPolicy {
        revoke_on_dispute: state.payments.revoke_on_dispute,
        accept: state.rules.clone(),
    };
    let done = payments::accept_payment(&state.pool, id, &req, &caller.actor(), &policy).await?;
    state.relay_wake.notify_one();
    Ok(Json(done))
}

/// The order a path names by id or order number (`404` when there is none).
pub(crate) async fn order_id(state: &AppState, reference: &str) -> Result<Uuid, ApiError> {
    if Uuid::parse_str(reference).is_err() && !ids::looks_like_order_number(reference) {
        return Err(ApiError::invalid_reference());
    }
    let mut conn = state.pool.acquire().await?;
    payments::resolve_order(&mut conn, reference)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))
}

/// `POST /v1/orders/{reference}/refunds` (`orders:refund` or `admin`): `201`
/// with the refund; with an `Idempotency-Key` seen before for this order,
/// `200` with the same refund (`409` for another body).
#[utoipa::path(post, path = "/v1/orders/{reference}/refunds", operation_id = "refund_order", tag = "payments",
    params(
        ("reference" = String, Path, description = "Order id (UUID) or order number"),
        ("Idempotency-Key" = Option<String>, Header, description = "1–255 characters; a repeat returns the same refund"),
    ),
    request_body = RefundRequest,
    responses(
        (status = 201, description = "Refund recorded; the gateway refund and any revokes are queued", body = RefundView),
        (status = 200, description = "The same Idempotency-Key was seen: the refund it made", body = RefundView),
    ))]
pub async fn refund(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<RefundRequest>,
) -> Result<(StatusCode, Json<RefundView>), ApiError> {
    caller.require(ORDERS_REFUND)?;
    let key = super::orders::idempotency_key(&headers)?;
    let id = order_id(&state, &reference).await?;
    let done = payments::refund(&state.pool, id, &req, key, &caller.actor()).await?;
    if !done.created {
        return Ok((StatusCode::OK, Json(done.refund)));
    }
    state.relay_wake.notify_one();
    Ok((StatusCode::CREATED, Json(done.refund)))
}

/// Body of `POST /v1/orders/{reference}/cancel`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub reason: Option<String>,
}

/// The answer of `POST /v1/orders/{reference}/cancel`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cancelled {
    pub order_id: Uuid,
    /// Always `cancelled`.
    pub status: &'static str,
    /// What was withdrawn: deliveries cancelled, revokes queued.
    pub result: Withdrawn,
}

#[utoipa::path(post, path = "/v1/orders/{reference}/cancel", operation_id = "cancel_order", tag = "orders",
    params(("reference" = String, Path, description = "Order id (UUID) or order number")),
    request_body(content = Option<CancelRequest>, description = "Optional; an empty body cancels with the reason `cancelled`"),
    responses((status = 200, description = "Cancelled", body = Cancelled)))]
/// `POST /v1/orders/{reference}/cancel` (`orders:write`): for orders not
/// completed yet.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Cancelled>, ApiError> {
    caller.require(ORDERS_WRITE)?;
    let req: CancelRequest = if body.is_empty() {
        CancelRequest::default()
    } else {
        crate::json::check_json_type(&headers)?;
        parse(&body)?
    };
    let reason = req.reason.unwrap_or_else(|| "cancelled".into());
    let id = order_id(&state, &reference).await?;
    let done = payments::cancel(&state.pool, id, &reason, &caller.actor()).await?;
    state.relay_wake.notify_one();
    Ok(Json(Cancelled {
        order_id: id,
        status: "cancelled",
        result: done,
    }))
}
