//! [Resend delivery instructions] (`admin`): the order's codes, delivery
//! notes and access instructions e-mailed again, to the customer or to a
//! new address (recorded in the timeline). Sent by the worker as an `email`
//! delivery, with retries and a dead letter like every delivery.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{ADMIN, Caller};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::json::parse;
use crate::routes::payments::order_id;
use crate::startup::AppState;

/// Where to send it.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendRequest {
    /// A new address (at most 254 characters); default: the order's customer e-mail.
    pub email: Option<String>,
}

/// The e-mail written for sending.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResendQueued {
    /// The `email` delivery (in the order's deliveries).
    pub delivery_id: Uuid,
    pub to: String,
}

/// A plausible address: one `@` with text on both sides, no spaces or
/// control characters, at most 254 characters. The SMTP server has the last word.
fn address(raw: &str) -> Result<String, ApiError> {
    let a = raw.trim();
    let ok = a.len() <= 254
        && a.split('@').count() == 2
        && a.split('@').all(|p| !p.is_empty())
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'));
    if !ok {
        return Err(ApiError::invalid(
            "email",
            "expected an e-mail address such as alex@example.com",
        ));
    }
    Ok(a.to_owned())
}

#[utoipa::path(post, path = "/v1/orders/{reference}/resend", operation_id = "resend_delivery_instructions", tag = "orders",
    params(("reference" = String, Path, description = "Order id (UUID) or order number")),
    request_body(content = Option<ResendRequest>, description = "Optional; an empty body sends to the customer's address"),
    responses((status = 202, description = "The e-mail is on its way (an `email` delivery of the order)", body = ResendQueued)))]
/// Resends the order's delivery instructions by e-mail.
pub async fn resend(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<ResendQueued>), ApiError> {
    caller.require(ADMIN)?;
    let req: ResendRequest = if body.is_empty() {
        ResendRequest::default()
    } else {
        crate::json::check_json_type(&headers)?;
        parse(&body)?
    };
    let new = req.email.as_deref().map(address).transpose()?;
    if !state.email_enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "email_disabled",
            "e-mail is off on this installation (email.enabled = false)",
        ));
    }
    let id = order_id(&state, &reference).await?;
    let mut tx = state.pool.begin().await?;
    let (customer, paid): (Option<String>, String) = sqlx::query_as(
        "SELECT customer_email, payment_status FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if !matches!(paid.as_str(), "paid" | "partially_refunded") {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "order_not_paid",
            format!("the order's payment is {paid}: there is nothing to deliver"),
        ));
    }
    let customer = customer.filter(|c| !c.is_empty());
    let (to, is_new) = match (new, customer) {
        (Some(n), c) => {
            let is_new = c.as_deref() != Some(n.as_str());
            (n, is_new)
        }
        (None, Some(c)) => (c, false),
        (None, None) => {
            return Err(ApiError::invalid(
                "email",
                "the order has no customer e-mail: give one",
            ));
        }
    };
    let delivery_id =
        courier_shared::db::emails::resend(&mut tx, id, &to, is_new, &caller.actor()).await?;
    tx.commit().await?;
    state.relay_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(ResendQueued { delivery_id, to })))
}
