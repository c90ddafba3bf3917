//! Money after the order: refunds, cancellation, and the events payment
//! gateways send (payment succeeded or failed, refunded, disputed).
//!
//! Decisions (README repeats them):
//! - A refund is recorded when it is asked for: the order's refunded amount,
//!   payment and order status change in the same transaction, and for a Stripe
//!   payment a `gateway_refund` job asks Stripe (with an idempotency key, so a
//!   retried job never refunds twice). Other gateways' refunds are `recorded`:
//!   the money is moved outside Courier.
//! - A full refund withdraws access (see `revoke`); a partial one does not,
//!   unless the request says `"revoke": true` (a partial refund is usually a
//!   goodwill credit, not a return).
//! - Stripe's `charge.refunded` carries the charge's cumulative
//!   `amount_refunded`; only the part Courier has not recorded yet becomes a new
//!   refund, so refunds made through Courier are never counted twice.
//! - A dispute withdraws access when it opens (`payments.revoke_on_dispute`,
//!   default true) and runs the actions' `chargeback_command`s; lost or
//!   accepted, the payment and order become `refunded` (the money went back
//!   through the chargeback).

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::Invalid;
use super::orders::{
    CreateOrderError, Customer, Fulfilment, Game, NewItem, NewOrder, NewPaymentStatus,
};
use super::revoke::{self, Cause, Withdrawn};
use crate::db::deliveries::{self, DeliveryRow};
use crate::db::events::{self, NewEvent};
use crate::db::payments::{self, InboxEvent, NewRefund, RefundView};
use crate::db::{keys, outbox};
use crate::domain::action::GatewayRefundPayload;
use crate::domain::delivery::{DeliveryKind, Purpose};
use crate::domain::order::{OrderStatus, PaymentStatus};
use crate::domain::{ids, text_enum};
use crate::error::DbError;

text_enum!(
    /// Why money goes back (the list admins pick from).
    RefundReason, "refund reason" {
        RequestedByCustomer => "requested_by_customer",
        Duplicate => "duplicate",
        Fraudulent => "fraudulent",
        NotAsDescribed => "not_as_described",
        Other => "other",
    }
);

/// Body of `POST /v1/orders/{id}/refunds`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// Decimal string in the order's currency; absent = everything that remains.
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub amount: Option<Decimal>,
    pub reason: RefundReason,
    /// Required with `other`; free text for the timeline otherwise.
    pub reason_text: Option<String>,
    /// Withdraw access (default: only when the refund makes the order fully refunded).
    pub revoke: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("order not found")]
    NotFound,
    #[error("the order is not paid (payment status `{0}`)")]
    NotPaid(PaymentStatus),
    #[error("the order is already fully refunded")]
    AlreadyRefunded,
    #[error("amount: at most {remaining} {currency} remains refundable")]
    ExceedsRemaining {
        remaining: Decimal,
        currency: String,
    },
    #[error("this Idempotency-Key was already used for a different refund of this order")]
    IdempotencyConflict,
    #[error("an order that is `{0}` cannot be cancelled (only pending, processing or failed)")]
    NotCancellable(OrderStatus),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for PaymentError {
    fn from(e: sqlx::Error) -> Self {
        PaymentError::Db(e.into())
    }
}

impl From<CreateOrderError> for PaymentError {
    fn from(e: CreateOrderError) -> Self {
        match e {
            CreateOrderError::Invalid(i) => PaymentError::Invalid(i),
            CreateOrderError::IdempotencyConflict => PaymentError::Db(DbError::Corrupt(
                "idempotency conflict on a payment event".into(),
            )),
            CreateOrderError::Db(d) => PaymentError::Db(d),
        }
    }
}

/// Longest reason an admin may give for a refund or cancel.
const MAX_REASON: usize = 500;

/// Digits after the point in the currency's minor unit (ISO 4217), as Stripe
/// counts amounts.
pub fn minor_unit_exponent(currency: &str) -> u32 {
    const ZERO: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
        "XAF", "XOF", "XPF",
    ];
    const THREE: &[&str] = &["BHD", "JOD", "KWD", "OMR", "TND"];
    let c = currency.to_ascii_uppercase();
    if ZERO.contains(&c.as_str()) {
        0
    } else if THREE.contains(&c.as_str()) {
        3
    } else {
        2
    }
}

fn from_minor(amount: i64, currency: &str) -> Decimal {
    Decimal::new(amount, minor_unit_exponent(currency))
}

fn to_minor(amount: Decimal, currency: &str) -> Option<i64> {
    let scaled = amount * Decimal::from(10_i64.pow(minor_unit_exponent(currency)));
    if scaled.fract() != Decimal::ZERO {
        return None;
    }
    i64::try_from(scaled).ok()
}

/// The order's id from its id or order number.
pub async fn resolve_order(
    conn: &mut PgConnection,
    reference: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    if let Ok(id) = Uuid::parse_str(reference) {
        return sqlx::query_scalar("SELECT id FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await;
    }
    if ids::looks_like_order_number(reference) {
        return sqlx::query_scalar("SELECT id FROM orders WHERE order_number = $1")
            .bind(reference)
            .fetch_optional(conn)
            .await;
    }
    Ok(None)
}

struct Locked {
    id: Uuid,
    status: OrderStatus,
    payment: PaymentStatus,
    total: Decimal,
    refunded: Decimal,
    currency: String,
    gateway: Option<String>,
    transaction_id: Option<String>,
}

async fn lock_order(conn: &mut PgConnection, order_id: Uuid) -> Result<Locked, PaymentError> {
    let row = sqlx::query(
        "SELECT status, payment_status, total, refunded_amount, currency, gateway, transaction_id \
         FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(PaymentError::NotFound)?;
    let status: String = row.try_get("status")?;
    let payment: String = row.try_get("payment_status")?;
    Ok(Locked {
        id: order_id,
        status: status.parse().map_err(DbError::from)?,
        payment: payment.parse().map_err(DbError::from)?,
        total: row.try_get("total")?,
        refunded: row.try_get("refunded_amount")?,
        currency: row.try_get::<String, _>("currency")?.trim().to_owned(),
        gateway: row.try_get("gateway")?,
        transaction_id: row.try_get("transaction_id")?,
    })
}

/// One refund to record against a locked order.
struct RefundSpec<'a> {
    amount: Decimal,
    reason: RefundReason,
    reason_text: Option<&'a str>,
    /// `api` (Courier asks the gateway) or `gateway` (seen in a webhook).
    source: &'a str,
    external_id: Option<&'a str>,
    revoke: Option<bool>,
    actor: &'a str,
    idempotency: Option<(&'a str, &'a [u8])>,
}

/// Records a refund on a locked, paid order: amounts, statuses, the gateway
/// job (for API refunds of Stripe payments), revocation, the timeline.
async fn record_refund(
    conn: &mut PgConnection,
    order_id: Uuid,
    order: &Locked,
    spec: RefundSpec<'_>,
) -> Result<Uuid, PaymentError> {
    let full =
        payments::adjust_refunded(conn, order_id, spec.amount).await? == PaymentStatus::Refunded;
    let order_to = if full {
        OrderStatus::Refunded
    } else {
        OrderStatus::PartiallyRefunded
    };
    if order.status.transition(order_to).is_ok() {
        deliveries::set_order_status(conn, order_id, order_to, spec.actor).await?;
    }

    let refund_id = Uuid::new_v4();
    let via_stripe = spec.source == "api"
        && order.gateway.as_deref() == Some("stripe")
        && order.transaction_id.is_some();
    let mut job = None;
    if via_stripe {
        let amount_minor = to_minor(spec.amount, &order.currency).ok_or_else(|| {
            Invalid::new(
                "amount",
                format!(
                    "{} has at most {} decimal places",
                    order.currency,
                    minor_unit_exponent(&order.currency)
                ),
            )
        })?;
        let payload = GatewayRefundPayload {
            refund_id,
            gateway: "stripe".into(),
            payment_ref: order.transaction_id.clone().unwrap_or_default(),
            amount_minor,
            currency: order.currency.clone(),
            reason: spec.reason.as_str().into(),
        };
        let row = DeliveryRow {
            id: Uuid::new_v4(),
            order_id,
            item_id: None,
            action_id: None,
            kind: DeliveryKind::GatewayRefund,
            purpose: Purpose::Refund,
            revokes: None,
            target: "stripe".into(),
            payload: serde_json::to_value(payload).map_err(DbError::from)?,
        };
        deliveries::insert(conn, &row).await?;
        outbox::enqueue_job(conn, row.id, row.kind).await?;
        job = Some(row.id);
    }
    let revoke = spec.revoke.unwrap_or(full);
    payments::insert_refund(
        conn,
        &NewRefund {
            id: refund_id,
            order_id,
            amount: spec.amount,
            currency: &order.currency,
            reason: spec.reason.as_str(),
            reason_text: spec.reason_text,
            source: spec.source,
            status: match (spec.source, via_stripe) {
                ("gateway", _) => "succeeded",
                (_, true) => "pending",
                _ => "recorded",
            },
            external_id: spec.external_id,
            delivery_id: job,
            revoke,
            requested_by: spec.actor,
            idempotency_key: spec.idempotency.map(|(k, _)| k),
            request_hash: spec.idempotency.map(|(_, h)| h),
        },
    )
    .await?;
    // Hook point: outbound `order.refunded` webhooks (a later issue) enqueue here.
    events::record(
        conn,
        NewEvent {
            order_id,
            delivery_id: job,
            kind: "order.refunded",
            message: format!(
                "{} refund of {} {} ({}{}){}",
                if full { "full" } else { "partial" },
                spec.amount,
                order.currency,
                spec.reason,
                spec.reason_text
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default(),
                match (spec.source, via_stripe) {
                    ("gateway", _) => ", made at the gateway",
                    (_, true) => ", Stripe refund queued",
                    _ => ", recorded (move the money at the gateway)",
                }
            ),
            actor: spec.actor,
            data: json!({
                "refund_id": refund_id, "amount": spec.amount.to_string(), "full": full,
                "reason": spec.reason, "reason_text": spec.reason_text,
            }),
        },
    )
    .await?;
    if revoke {
        let why = format!("refund {refund_id}");
        revoke::withdraw(conn, order_id, Cause::Refund, &why, spec.actor).await?;
    }
    outbox::notify_relays(conn).await?;
    Ok(refund_id)
}

/// What `refund` did.
#[derive(Debug, Clone)]
pub struct Refunded {
    pub refund: RefundView,
    /// False when an earlier request with the same idempotency key made it.
    pub created: bool,
}

/// `POST /v1/orders/{id}/refunds`: checks the limits under the order's row lock
/// (so concurrent partial refunds cannot add up past the total) and records it.
/// With an idempotency key, a repeat of the same request returns the refund it
/// made (`created = false`); another body under the key is a conflict.
pub async fn refund(
    pool: &PgPool,
    order_id: Uuid,
    req: &RefundRequest,
    idempotency_key: Option<&str>,
    actor: &str,
) -> Result<Refunded, PaymentError> {
    if req.reason == RefundReason::Other
        && req
            .reason_text
            .as_deref()
            .is_none_or(|t| t.trim().is_empty())
    {
        return Err(Invalid::new("reason_text", "is required when the reason is `other`").into());
    }
    if let Some(t) = &req.reason_text {
        super::check_text("reason_text", t, MAX_REASON)?;
    }
    // "2.0" and "2.00" are the same request.
    let canonical = RefundRequest {
        amount: req.amount.map(|a| a.normalize()),
        ..req.clone()
    };
    let hash =
        sha2::Sha256::digest(serde_json::to_vec(&canonical).map_err(DbError::from)?).to_vec();
    let mut tx = pool.begin().await?;
    let order = lock_order(&mut tx, order_id).await?;
    if let Some(key) = idempotency_key {
        let earlier: Option<(Uuid, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT id, request_hash FROM refunds WHERE order_id = $1 AND idempotency_key = $2",
        )
        .bind(order_id)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id, stored)) = earlier {
            if stored.as_deref() != Some(hash.as_slice()) {
                return Err(PaymentError::IdempotencyConflict);
            }
            let refund = payments::refunds_of(&mut tx, order_id)
                .await?
                .into_iter()
                .find(|r| r.id == id)
                .ok_or_else(|| DbError::Corrupt("refund vanished".into()))?;
            return Ok(Refunded {
                refund,
                created: false,
            });
        }
    }
    match order.payment {
        PaymentStatus::Paid | PaymentStatus::PartiallyRefunded => {}
        PaymentStatus::Refunded => return Err(PaymentError::AlreadyRefunded),
        other => return Err(PaymentError::NotPaid(other)),
    }
    let remaining = order.total - order.refunded;
    if remaining <= Decimal::ZERO {
        return Err(PaymentError::AlreadyRefunded);
    }
    let amount = req.amount.unwrap_or(remaining);
    if amount <= Decimal::ZERO {
        return Err(Invalid::new("amount", "must be greater than zero").into());
    }
    if amount.scale() > minor_unit_exponent(&order.currency) {
        return Err(Invalid::new(
            "amount",
            format!(
                "{} has at most {} decimal places",
                order.currency,
                minor_unit_exponent(&order.currency)
            ),
        )
        .into());
    }
    // Stored in the currency's minor unit: "2.0" and "2.00" are one amount.
    let mut amount = amount;
    amount.rescale(minor_unit_exponent(&order.currency));
    if amount > remaining {
        return Err(PaymentError::ExceedsRemaining {
            remaining,
            currency: order.currency,
        });
    }
    let id = record_refund(
        &mut tx,
        order_id,
        &order,
        RefundSpec {
            amount,
            reason: req.reason,
            reason_text: req.reason_text.as_deref(),
            source: "api",
            external_id: None,
            revoke: req.revoke,
            actor,
            idempotency: idempotency_key.map(|k| (k, hash.as_slice())),
        },
    )
    .await?;
    let refund = payments::refunds_of(&mut tx, order_id)
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| DbError::Corrupt("refund not readable after insert".into()))?;
    tx.commit().await?;
    Ok(Refunded {
        refund,
        created: true,
    })
}

/// `POST /v1/orders/{id}/cancel`: for orders not completed yet. Deliveries not
/// run are cancelled; whatever already ran is revoked (nothing half-delivered
/// stays with the customer). Money is not moved: refund a paid order separately.
pub async fn cancel(
    pool: &PgPool,
    order_id: Uuid,
    reason: &str,
    actor: &str,
) -> Result<Withdrawn, PaymentError> {
    super::check_text("reason", reason, MAX_REASON)?;
    let mut tx = pool.begin().await?;
    let order = lock_order(&mut tx, order_id).await?;
    if !matches!(
        order.status,
        OrderStatus::Pending | OrderStatus::Processing | OrderStatus::Failed
    ) {
        return Err(PaymentError::NotCancellable(order.status));
    }
    let done = revoke::withdraw(&mut tx, order_id, Cause::Cancel, reason, actor).await?;
    deliveries::set_order_status(&mut tx, order_id, OrderStatus::Cancelled, actor).await?;
    tx.commit().await?;
    Ok(done)
}

/// What became of a webhook event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ingested {
    /// `applied`, `pending` (kept until its payment arrives), `ignored`,
    /// `failed` (verified but unusable; an admin alert says why) or `duplicate`.
    pub status: &'static str,
    pub order_id: Option<Uuid>,
    pub note: Option<String>,
}

impl Ingested {
    fn new(status: &'static str, order_id: Option<Uuid>, note: impl Into<Option<String>>) -> Self {
        Ingested {
            status,
            order_id,
            note: note.into(),
        }
    }
}

/// What the operator decided about disputes.
#[derive(Debug, Clone, Copy)]
pub struct DisputePolicy {
    pub revoke_on_dispute: bool,
}

/// A Stripe event, as far as Courier reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct StripeEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub data: StripeData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StripeData {
    pub object: Value,
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// The payment a Stripe object belongs to: its PaymentIntent, else the
/// order named in its metadata. Events about one payment are serialised on it.
fn stripe_ref(object: &Value) -> Option<String> {
    text(object, &["payment_intent"])
        .or_else(|| text(object, &["metadata", "order_id"]))
        .map(str::to_owned)
}

/// Applies a verified Stripe event once (deduplicated on its id), in one
/// transaction with the event row; answers after the commit.
pub async fn ingest_stripe(
    pool: &PgPool,
    event: &StripeEvent,
    raw: &Value,
    policy: DisputePolicy,
) -> Result<Ingested, PaymentError> {
    let mut tx = pool.begin().await?;
    let occurred = Utc
        .timestamp_opt(event.created, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let order_ref = stripe_ref(&event.data.object);
    let Some(row) = payments::receive(
        &mut tx,
        &InboxEvent {
            provider: "stripe",
            event_id: &event.id,
            event_type: &event.kind,
            order_ref: order_ref.as_deref(),
            payload: raw,
            occurred_at: occurred,
        },
    )
    .await?
    else {
        tx.commit().await?;
        return Ok(Ingested::new("duplicate", None, None));
    };
    if let Some(r) = &order_ref {
        // Two events of one payment (the payment and its early refund) are
        // applied one after the other, so neither misses the other.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('courier.payment:' || $1, 0))")
            .bind(r)
            .execute(&mut *tx)
            .await?;
    }
    let actor = format!("stripe:{}", event.id);
    let outcome = apply_stripe(
        &mut tx,
        &event.kind,
        &event.data.object,
        occurred,
        policy,
        &actor,
    )
    .await?;
    payments::settle_event(
        &mut tx,
        row,
        outcome.status,
        outcome.order_id,
        outcome.note.as_deref(),
    )
    .await?;
    if outcome.status == "failed" {
        keys::alert(
            &mut tx,
            "payment_event_failed",
            &format!(
                "Stripe event {} ({}) could not be applied: {}",
                event.id,
                event.kind,
                outcome.note.as_deref().unwrap_or("")
            ),
            &event.id,
        )
        .await?;
    }
    // A payment that just became known releases the events that waited for it.
    if outcome.status == "applied"
        && event.kind.starts_with("checkout.session.")
        && let Some(order_id) = outcome.order_id
    {
        let mut refs = vec![order_id.to_string()];
        refs.extend(order_ref.clone());
        let number: String = sqlx::query_scalar("SELECT order_number FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&mut *tx)
            .await?;
        refs.push(number);
        for parked in payments::parked(&mut tx, "stripe", &refs).await? {
            let object = parked.payload["data"]["object"].clone();
            let actor = format!(
                "stripe:{}",
                parked.payload["id"].as_str().unwrap_or_default()
            );
            let at = parked.payload["created"]
                .as_i64()
                .and_then(|t| Utc.timestamp_opt(t, 0).single())
                .unwrap_or(occurred);
            let later =
                apply_stripe(&mut tx, &parked.event_type, &object, at, policy, &actor).await?;
            // Still unpaid (a failed payment, say): it stays parked.
            if later.status != "pending" {
                payments::settle_event(
                    &mut tx,
                    parked.id,
                    later.status,
                    later.order_id,
                    later.note.as_deref(),
                )
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(outcome)
}

/// Re-tries events kept `pending` (a refund or dispute that came before its
/// payment). The payment event releases them at once when it is a Checkout
/// event; this sweep (run by every worker's rescuer) covers orders paid any
/// other way (`POST /v1/orders` with the PaymentIntent as `transaction_id`,
/// the generic webhook) and raises an admin alert for events still waiting
/// after an hour. Returns how many were applied.
pub async fn retry_parked(
    pool: &PgPool,
    policy: DisputePolicy,
    limit: i64,
) -> Result<usize, PaymentError> {
    // Events still waiting after an hour are worth an admin's look, once.
    let stale: Vec<(i64, String, Option<String>)> = sqlx::query_as(
        "UPDATE payment_events SET alerted_at = now() WHERE id IN ( \
           SELECT id FROM payment_events WHERE status = 'pending' AND alerted_at IS NULL \
             AND received_at < now() - interval '1 hour' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING id, event_id, order_ref",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    if !stale.is_empty() {
        let mut conn = pool.acquire().await?;
        for (id, event, order_ref) in stale {
            keys::alert(
                &mut conn,
                "payment_event_waiting",
                &format!(
                    "payment event {event} has waited over an hour for its payment ({}); it is re-tried for a day, then left to you",
                    order_ref.as_deref().unwrap_or("?")
                ),
                &id.to_string(),
            )
            .await?;
        }
    }
    // The newest waiting events of the last day (those whose payment is most
    // likely to have just arrived), applied in the order they happened.
    let waiting: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT id, order_ref FROM (SELECT id, order_ref, occurred_at FROM payment_events \
           WHERE provider = 'stripe' AND status = 'pending' AND received_at > now() - interval '1 day' \
           ORDER BY received_at DESC LIMIT $1) recent ORDER BY occurred_at, id",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut applied = 0;
    for (id, order_ref) in waiting {
        // One event that fails must not hold up the others.
        match retry_one(pool, policy, id, order_ref.as_deref()).await {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(event = id, error = %e, "a waiting payment event could not be applied")
            }
        }
    }
    Ok(applied)
}

/// Applies one waiting event if its payment is known now; true if it was.
async fn retry_one(
    pool: &PgPool,
    policy: DisputePolicy,
    id: i64,
    order_ref: Option<&str>,
) -> Result<bool, PaymentError> {
    let mut tx = pool.begin().await?;
    // The payment's lock first, as `ingest_stripe` takes it; the row is
    // skipped if an ingest holds it.
    if let Some(r) = order_ref {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('courier.payment:' || $1, 0))")
            .bind(r)
            .execute(&mut *tx)
            .await?;
    }
    let Some(row) = sqlx::query(
        "SELECT event_type, payload, occurred_at \
         FROM payment_events WHERE id = $1 AND status = 'pending' FOR UPDATE SKIP LOCKED",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(false);
    };
    let kind: String = row.try_get("event_type")?;
    let payload: Value = row.try_get("payload")?;
    let actor = format!("stripe:{}", payload["id"].as_str().unwrap_or_default());
    let done = apply_stripe(
        &mut tx,
        &kind,
        &payload["data"]["object"],
        row.try_get("occurred_at")?,
        policy,
        &actor,
    )
    .await?;
    if done.status == "pending" {
        return Ok(false);
    }
    payments::settle_event(
        &mut tx,
        id,
        done.status,
        done.order_id,
        done.note.as_deref(),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Finds (and locks) the order a Stripe object is about: `metadata.order_id`
/// (id or order number), else the payment, else the checkout session.
async fn find_stripe_order(
    conn: &mut PgConnection,
    object: &Value,
) -> Result<Option<Uuid>, PaymentError> {
    if let Some(reference) = text(object, &["metadata", "order_id"])
        && let Some(id) = resolve_order(conn, reference).await?
    {
        return Ok(Some(id));
    }
    if let Some(pi) = text(object, &["payment_intent"]) {
        let id: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM orders WHERE gateway = 'stripe' AND transaction_id = $1",
        )
        .bind(pi)
        .fetch_optional(&mut *conn)
        .await?;
        if id.is_some() {
            return Ok(id);
        }
    }
    if text(object, &["object"]) == Some("checkout.session")
        && let Some(session) = text(object, &["id"])
    {
        return Ok(
            sqlx::query_scalar("SELECT id FROM orders WHERE idempotency_key = $1")
                .bind(format!("stripe:checkout:{session}"))
                .fetch_optional(&mut *conn)
                .await?,
        );
    }
    Ok(None)
}

async fn apply_stripe(
    conn: &mut PgConnection,
    kind: &str,
    object: &Value,
    occurred: DateTime<Utc>,
    policy: DisputePolicy,
    actor: &str,
) -> Result<Ingested, PaymentError> {
    match kind {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            // `no_payment_required`: a free checkout (a 100 % coupon) is paid too.
            if !matches!(
                text(object, &["payment_status"]),
                Some("paid" | "no_payment_required")
            ) {
                return Ok(Ingested::new(
                    "ignored",
                    None,
                    "the session is not paid yet (an asynchronous payment method); waiting for async_payment_succeeded".to_owned(),
                ));
            }
            checkout_paid(conn, object, actor).await
        }
        "checkout.session.async_payment_failed" => {
            let Some(order_id) = find_stripe_order(conn, object).await? else {
                return Ok(Ingested::new(
                    "ignored",
                    None,
                    "no order for this session".to_owned(),
                ));
            };
            let order = lock_order(conn, order_id).await?;
            if order.payment != PaymentStatus::Pending {
                return Ok(Ingested::new(
                    "ignored",
                    Some(order_id),
                    format!("the payment is already {}", order.payment),
                ));
            }
            crate::db::orders::set_payment_status(conn, order_id, PaymentStatus::Failed).await?;
            // The order stays pending: the customer may pay again (a new
            // session for the same order), or the store cancels it.
            events::record(
                conn,
                NewEvent {
                    order_id,
                    delivery_id: None,
                    kind: "payment.failed",
                    message: "the asynchronous payment failed; the order waits for another payment or a cancel".into(),
                    actor,
                    data: json!({}),
                },
            )
            .await?;
            Ok(Ingested::new("applied", Some(order_id), None))
        }
        "charge.refunded" => match paid_order(conn, object, kind).await? {
            Target::Waiting => Ok(park(object)),
            Target::Other(ignored) => Ok(ignored),
            Target::Order(order) => charge_refunded(conn, order.id, object, actor).await,
        },
        "charge.dispute.created" | "charge.dispute.closed" | "charge.dispute.updated" => {
            match paid_order(conn, object, kind).await? {
                Target::Waiting => Ok(park(object)),
                Target::Other(ignored) => Ok(ignored),
                Target::Order(order) => {
                    dispute(conn, &order, kind, object, occurred, policy, actor).await
                }
            }
        }
        _ => Ok(Ingested::new(
            "ignored",
            None,
            format!("Courier does not act on `{kind}`"),
        )),
    }
}

/// An event that arrived before its payment: kept, applied when it comes.
fn park(object: &Value) -> Ingested {
    match stripe_ref(object) {
        Some(r) => Ingested::new(
            "pending",
            None,
            format!("no paid order for payment {r} yet; kept until it is paid"),
        ),
        None => Ingested::new(
            "ignored",
            None,
            "the object names no payment_intent or metadata.order_id".to_owned(),
        ),
    }
}

/// What a charge or dispute event is about.
enum Target {
    /// No paid order for it yet: the event waits.
    Waiting,
    /// Another Stripe payment of the order than the one recorded (the second
    /// payment of an order paid twice): it must not refund or withdraw the
    /// order. Ignored, with an admin alert.
    Other(Ingested),
    /// The order, paid (or once paid and now being refunded), locked.
    Order(Locked),
}

async fn paid_order(
    conn: &mut PgConnection,
    object: &Value,
    kind: &str,
) -> Result<Target, PaymentError> {
    let Some(order_id) = find_stripe_order(conn, object).await? else {
        return Ok(Target::Waiting);
    };
    let order = lock_order(conn, order_id).await?;
    if matches!(
        order.payment,
        PaymentStatus::Pending | PaymentStatus::Failed
    ) {
        return Ok(Target::Waiting);
    }
    if let (Some("stripe"), Some(recorded), Some(pi)) = (
        order.gateway.as_deref(),
        order.transaction_id.as_deref(),
        text(object, &["payment_intent"]),
    ) && recorded != pi
    {
        keys::alert(
            conn,
            "other_payment_event",
            &format!(
                "{kind} about payment {pi} of order {order_id}, whose recorded payment is {recorded}: not applied; handle it at Stripe"
            ),
            &format!("{kind}:{pi}"),
        )
        .await?;
        return Ok(Target::Other(Ingested::new(
            "ignored",
            Some(order_id),
            format!("about payment {pi}, not the order's recorded payment {recorded}"),
        )));
    }
    Ok(Target::Order(order))
}

async fn checkout_paid(
    conn: &mut PgConnection,
    session: &Value,
    actor: &str,
) -> Result<Ingested, PaymentError> {
    let payment_intent = text(session, &["payment_intent"]).map(str::to_owned);
    let order_id = match find_stripe_order(conn, session).await? {
        Some(id) => id,
        None => {
            if text(session, &["metadata", "order_id"]).is_some() {
                return Ok(Ingested::new(
                    "failed",
                    None,
                    "metadata.order_id names no order".to_owned(),
                ));
            }
            let order = match order_from_session(session) {
                Ok(o) => o,
                Err(e) => return Ok(Ingested::new("failed", None, e.to_string())),
            };
            let key = format!(
                "stripe:checkout:{}",
                text(session, &["id"]).unwrap_or_default()
            );
            return match super::orders::create_order_in(conn, &order, Some(&key), actor).await {
                Ok(id) => Ok(Ingested::new(
                    "applied",
                    Some(id),
                    "order created from the session".to_owned(),
                )),
                Err(CreateOrderError::Invalid(e)) => Ok(Ingested::new(
                    "failed",
                    None,
                    format!("the session does not make a valid order: {e}"),
                )),
                Err(e) => Err(e.into()),
            };
        }
    };
    let before = lock_order(conn, order_id).await?;
    // The payment that is paying now is the one to refund against.
    sqlx::query(
        "UPDATE orders SET \
           gateway = CASE WHEN payment_status IN ('pending', 'failed') THEN 'stripe' ELSE coalesce(gateway, 'stripe') END, \
           transaction_id = CASE WHEN payment_status IN ('pending', 'failed') THEN coalesce($2, transaction_id) \
             ELSE coalesce(transaction_id, $2) END, \
           updated_at = now() WHERE id = $1",
    )
    .bind(order_id)
    .bind(&payment_intent)
    .execute(&mut *conn)
    .await?;
    let note = match super::orders::start_fulfilment(conn, order_id, actor).await? {
        Fulfilment::Started(n) => format!("paid; {n} deliveries queued"),
        Fulfilment::AlreadyPaid => {
            if let (Some(known), Some(pi)) = (&before.transaction_id, &payment_intent)
                && known != pi
            {
                // Paid twice (two sessions for one order): the customer was charged again.
                keys::alert(
                    conn,
                    "paid_twice",
                    &format!(
                        "order {order_id} was paid again by {pi} (first payment {known}); refund one of them"
                    ),
                    pi,
                )
                .await?;
                events::record(
                    conn,
                    NewEvent {
                        order_id,
                        delivery_id: None,
                        kind: "payment.duplicate",
                        message: format!(
                            "a second payment {pi} arrived for this order (first {known}); nothing more is delivered, refund one"
                        ),
                        actor,
                        data: json!({ "payment_intent": pi }),
                    },
                )
                .await?;
                "paid twice: admin alert raised".to_owned()
            } else {
                "the order was already paid".to_owned()
            }
        }
        Fulfilment::Cancelled => "paid after it was cancelled; nothing delivered".to_owned(),
        Fulfilment::Unplannable(e) => format!("paid, but cannot be fulfilled: {e}"),
    };
    Ok(Ingested::new("applied", Some(order_id), note))
}

/// Builds an order from a Checkout Session without `metadata.order_id`:
///
/// | order field | session field |
/// |---|---|
/// | items | `metadata.courier_items`: `sku:quantity[:unit_price]`, comma-separated; the unit price may be left out only for a single item (then `amount_subtotal` ÷ quantity) |
/// | currency | `currency`, upper-cased |
/// | tax | `total_details.amount_tax` |
/// | customer | `customer_details.name` / `.email`; `metadata.customer_ip` |
/// | game | `metadata.game_username`, `metadata.game_uuid` |
/// | discord_user_id | `metadata.discord_user_id` |
/// | gateway / transaction_id | `stripe` / `payment_intent` |
///
/// (Line items are not in the webhook, and fetching them would put a Stripe
/// call on the request path; the store's checkout code sets the metadata.)
pub fn order_from_session(session: &Value) -> Result<NewOrder, Invalid> {
    let currency = text(session, &["currency"])
        .ok_or_else(|| Invalid::new("currency", "the session has no currency"))?
        .to_ascii_uppercase();
    let list = text(session, &["metadata", "courier_items"]).ok_or_else(|| {
        Invalid::new(
            "metadata.courier_items",
            "the session has neither metadata.order_id nor metadata.courier_items",
        )
    })?;
    let mut items = Vec::new();
    for (i, part) in list.split(',').map(str::trim).enumerate() {
        let field = format!("metadata.courier_items[{i}]");
        let mut bits = part.split(':');
        let sku = bits.next().unwrap_or_default().trim();
        let quantity: i32 = bits
            .next()
            .and_then(|q| q.trim().parse().ok())
            .ok_or_else(|| Invalid::new(&field, "expected `sku:quantity[:unit_price]`"))?;
        let price = bits
            .next()
            .map(|p| p.trim().parse::<Decimal>())
            .transpose()
            .map_err(|_| Invalid::new(&field, "the unit price is not a decimal"))?;
        items.push((sku.to_owned(), quantity, price));
    }
    let subtotal = from_minor(int(session, "amount_subtotal").unwrap_or(0), &currency);
    let single = items.len() == 1;
    let items = items
        .into_iter()
        .enumerate()
        .map(|(i, (sku, quantity, price))| {
            let unit_price = match price {
                Some(p) => p,
                None if single && quantity > 0 => (subtotal / Decimal::from(quantity)).round_dp(4),
                None => {
                    return Err(Invalid::new(
                        format!("metadata.courier_items[{i}]"),
                        "with several items, each needs its unit price",
                    ));
                }
            };
            Ok(NewItem {
                product: sku,
                quantity,
                unit_price,
                custom_fields: serde_json::Map::new(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = |key: &str| text(session, &["metadata", key]).map(str::to_owned);
    Ok(NewOrder {
        payment_status: NewPaymentStatus::Paid,
        tax: from_minor(
            session["total_details"]["amount_tax"].as_i64().unwrap_or(0),
            &currency,
        ),
        currency,
        gateway: Some("stripe".into()),
        transaction_id: text(session, &["payment_intent"]).map(str::to_owned),
        customer: Customer {
            name: text(session, &["customer_details", "name"]).map(str::to_owned),
            email: text(session, &["customer_details", "email"]).map(str::to_owned),
            phone: None,
            ip: meta("customer_ip").and_then(|ip| ip.parse().ok()),
        },
        game: Game {
            username: meta("game_username"),
            uuid: meta("game_uuid"),
        },
        discord_user_id: meta("discord_user_id"),
        items,
    })
}

async fn charge_refunded(
    conn: &mut PgConnection,
    order_id: Uuid,
    charge: &Value,
    actor: &str,
) -> Result<Ingested, PaymentError> {
    // A refund Courier asked for whose job gave up (Stripe unreachable) but
    // which Stripe made after all: it counts again, as the same refund.
    if let Some(list) = charge["refunds"]["data"].as_array() {
        for r in list {
            let (Some(ours), Some(id)) = (
                r["metadata"]["courier_refund_id"]
                    .as_str()
                    .and_then(|u| Uuid::parse_str(u).ok()),
                r["id"].as_str(),
            ) else {
                continue;
            };
            let revived: Option<Decimal> = sqlx::query_scalar(
                "UPDATE refunds SET status = 'succeeded', external_id = coalesce(external_id, $3), \
                   completed_at = now() \
                 WHERE id = $1 AND order_id = $2 AND status = 'failed' RETURNING amount",
            )
            .bind(ours)
            .bind(order_id)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(amount) = revived {
                payments::adjust_refunded(conn, order_id, amount).await?;
                events::record(
                    conn,
                    NewEvent {
                        order_id,
                        delivery_id: None,
                        kind: "refund.succeeded",
                        message: format!(
                            "Stripe made refund {id} ({amount}) after all; it counts again"
                        ),
                        actor,
                        data: json!({ "refund_id": ours, "external_id": id }),
                    },
                )
                .await?;
            }
        }
    }
    let order = lock_order(conn, order_id).await?;
    let currency = text(charge, &["currency"]).unwrap_or(&order.currency);
    let refunded = from_minor(int(charge, "amount_refunded").unwrap_or(0), currency);
    let new = (refunded - order.refunded).min(order.total - order.refunded);
    if new <= Decimal::ZERO {
        return Ok(Ingested::new(
            "applied",
            Some(order_id),
            format!("{refunded} {currency} refunded at Stripe is already recorded"),
        ));
    }
    // The newest Stripe refund Courier does not know yet names this one;
    // refunds Courier asked for carry `metadata.courier_refund_id` and are
    // never taken for it (their id may not be recorded yet).
    let mut external = None;
    let mut reason = RefundReason::Other;
    if let Some(list) = charge["refunds"]["data"].as_array() {
        for r in list {
            let Some(id) = r["id"].as_str() else { continue };
            if r["metadata"]["courier_refund_id"].is_string() {
                continue;
            }
            let known: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM refunds WHERE external_id = $1)")
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await?;
            if !known {
                external = Some(id.to_owned());
                reason = r["reason"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(RefundReason::Other);
                break;
            }
        }
    }
    record_refund(
        conn,
        order_id,
        &order,
        RefundSpec {
            amount: new,
            reason,
            reason_text: (reason == RefundReason::Other).then_some("refunded in Stripe"),
            source: "gateway",
            external_id: external.as_deref(),
            revoke: None,
            actor,
            idempotency: None,
        },
    )
    .await?;
    Ok(Ingested::new(
        "applied",
        Some(order_id),
        format!("recorded a refund of {new} {currency}"),
    ))
}

/// Stripe's dispute status → Courier's outcome. Stripe has no "accepted"
/// status: accepting closes a dispute as `lost` with no evidence submitted.
/// So does letting the deadline pass unanswered, which is told apart by time:
/// closed `lost`, nothing submitted, before the evidence deadline → `accepted`
/// (a heuristic; README says so).
fn dispute_outcome(dispute: &Value, at: DateTime<Utc>) -> Option<&'static str> {
    match text(dispute, &["status"])? {
        "won" | "warning_closed" => Some("won"),
        "lost"
            if dispute["evidence_details"]["submission_count"].as_i64() == Some(0)
                && dispute["evidence_details"]["due_by"]
                    .as_i64()
                    .is_some_and(|due| at.timestamp() < due) =>
        {
            Some("accepted")
        }
        "lost" => Some("lost"),
        _ => None,
    }
}

async fn dispute(
    conn: &mut PgConnection,
    order: &Locked,
    kind: &str,
    object: &Value,
    occurred: DateTime<Utc>,
    policy: DisputePolicy,
    actor: &str,
) -> Result<Ingested, PaymentError> {
    let order_id = order.id;
    let external = text(object, &["id"]).unwrap_or_default().to_owned();
    let currency = text(object, &["currency"])
        .map(str::to_ascii_uppercase)
        .unwrap_or_else(|| order.currency.clone());
    let amount = from_minor(int(object, "amount").unwrap_or(0), &currency);
    let reason = text(object, &["reason"]).unwrap_or("general").to_owned();
    let status = text(object, &["status"]).unwrap_or("unknown").to_owned();
    let due: Option<DateTime<Utc>> = object["evidence_details"]["due_by"]
        .as_i64()
        .and_then(|t| Utc.timestamp_opt(t, 0).single());
    let outcome = if kind == "charge.dispute.closed" {
        dispute_outcome(object, occurred)
    } else {
        None
    };
    let created = sqlx::query(
        "INSERT INTO disputes (id, order_id, external_id, amount, currency, reason, gateway_status, evidence_due_by, last_event_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (external_id) DO NOTHING",
    )
    .bind(Uuid::new_v4())
    .bind(order_id)
    .bind(&external)
    .bind(amount)
    .bind(&currency)
    .bind(&reason)
    .bind(&status)
    .bind(due)
    .bind(occurred)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    // (A dispute first seen closed as won never withdrew anything.)
    if created && outcome != Some("won") {
        events::record(
            conn,
            NewEvent {
                order_id,
                delivery_id: None,
                kind: "dispute.created",
                message: format!(
                    "dispute {external} opened: {amount} {currency}, reason {reason}{}",
                    due.map(|d| format!(", evidence due by {}", d.to_rfc3339()))
                        .unwrap_or_default()
                ),
                actor,
                data: json!({ "dispute": external, "status": status }),
            },
        )
        .await?;
        if policy.revoke_on_dispute {
            let why = format!("dispute {external}");
            revoke::withdraw(conn, order_id, Cause::Chargeback, &why, actor).await?;
        } else {
            revoke::chargeback_commands(conn, order_id, actor).await?;
        }
    }
    // The closing event always closes (once), whenever it arrives; other
    // events update an open dispute only if newer than what was applied.
    let closed_now = match outcome {
        Some(outcome) => {
            sqlx::query(
                "UPDATE disputes SET outcome = $2, closed_at = now(), gateway_status = $3, amount = $4, \
                   evidence_due_by = coalesce($5, evidence_due_by), \
                   last_event_at = greatest(last_event_at, $6) \
                 WHERE external_id = $1 AND outcome IS NULL",
            )
            .bind(&external)
            .bind(outcome)
            .bind(&status)
            .bind(amount)
            .bind(due)
            .bind(occurred)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1
        }
        None => {
            sqlx::query(
                "UPDATE disputes SET gateway_status = $2, amount = $3, \
                   evidence_due_by = coalesce($4, evidence_due_by), last_event_at = $5 \
                 WHERE external_id = $1 AND outcome IS NULL \
                   AND (last_event_at IS NULL OR last_event_at <= $5)",
            )
            .bind(&external)
            .bind(&status)
            .bind(amount)
            .bind(due)
            .bind(occurred)
            .execute(&mut *conn)
            .await?;
            false
        }
    };
    if let (true, Some(outcome)) = (closed_now, outcome) {
        events::record(
            conn,
            NewEvent {
                order_id,
                delivery_id: None,
                kind: &format!("dispute.{outcome}"),
                message: format!("dispute {external} closed: {outcome}"),
                actor,
                data: json!({ "dispute": external, "status": status }),
            },
        )
        .await?;
        if outcome != "won" {
            // The money went back through the chargeback.
            crate::db::orders::set_payment_status(conn, order_id, PaymentStatus::Refunded).await?;
            if order.status.transition(OrderStatus::Refunded).is_ok() {
                deliveries::set_order_status(conn, order_id, OrderStatus::Refunded, actor).await?;
            }
            let why = format!("dispute {external} {outcome}");
            revoke::withdraw(conn, order_id, Cause::Chargeback, &why, actor).await?;
        }
    }
    outbox::notify_relays(conn).await?;
    Ok(Ingested::new("applied", Some(order_id), None))
}

/// Applies a verified generic webhook (Courier's order format) once,
/// deduplicated on `webhook-id`.
pub async fn ingest_generic(
    pool: &PgPool,
    webhook_id: &str,
    order: &NewOrder,
    raw: &Value,
) -> Result<Ingested, PaymentError> {
    let mut tx = pool.begin().await?;
    let Some(row) = payments::receive(
        &mut tx,
        &InboxEvent {
            provider: "generic",
            event_id: webhook_id,
            event_type: "order",
            order_ref: None,
            payload: raw,
            occurred_at: Utc::now(),
        },
    )
    .await?
    else {
        tx.commit().await?;
        let mut conn = pool.acquire().await?;
        let id = sqlx::query_scalar("SELECT id FROM orders WHERE idempotency_key = $1")
            .bind(format!("generic:{webhook_id}"))
            .fetch_optional(&mut *conn)
            .await?;
        return Ok(Ingested::new("duplicate", id, None));
    };
    let actor = format!("webhook:{webhook_id}");
    let key = format!("generic:{webhook_id}");
    let id = super::orders::create_order_in(&mut tx, order, Some(&key), &actor).await?;
    payments::settle_event(&mut tx, row, "applied", Some(id), None).await?;
    tx.commit().await?;
    Ok(Ingested::new("applied", Some(id), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_follow_the_currency_minor_unit() {
        assert_eq!(from_minor(1048, "usd"), Decimal::new(1048, 2));
        assert_eq!(from_minor(500, "JPY"), Decimal::from(500));
        assert_eq!(to_minor(Decimal::new(1234, 2), "EUR"), Some(1234));
        assert_eq!(
            to_minor(Decimal::new(1234, 3), "EUR"),
            None,
            "no fractions of a cent"
        );
        assert_eq!(to_minor(Decimal::new(1500, 3), "KWD"), Some(1500));
    }

    #[test]
    fn a_session_maps_to_an_order_and_several_items_need_their_prices() {
        let session = json!({
            "currency": "eur", "payment_intent": "pi_1", "amount_subtotal": 1000,
            "total_details": { "amount_tax": 190 },
            "customer_details": { "email": "a@example.com", "name": "A" },
            "metadata": { "courier_items": "vip:2", "game_username": "steve", "customer_ip": "198.51.100.4" },
        });
        let order = order_from_session(&session).expect("maps");
        assert_eq!(order.currency, "EUR");
        assert_eq!(order.tax, Decimal::new(190, 2));
        assert_eq!(order.items[0].unit_price, Decimal::new(5, 0));
        assert_eq!(order.items[0].quantity, 2);
        assert_eq!(order.transaction_id.as_deref(), Some("pi_1"));
        assert_eq!(order.game.username.as_deref(), Some("steve"));
        assert!(order.customer.ip.is_some());

        let mut two = session.clone();
        two["metadata"]["courier_items"] = json!("vip:1,coins:3");
        let err = order_from_session(&two).expect_err("prices needed");
        assert_eq!(err.field, "metadata.courier_items[0]");
        two["metadata"]["courier_items"] = json!("vip:1:4.00,coins:3:2.00");
        assert_eq!(order_from_session(&two).expect("priced").items.len(), 2);

        let mut none = session;
        none["metadata"] = json!({});
        assert_eq!(
            order_from_session(&none).expect_err("no items").field,
            "metadata.courier_items"
        );
    }

    #[test]
    fn dispute_outcomes_tell_accepted_from_lost() {
        let d = |status: &str, n: i64| json!({ "status": status, "evidence_details": { "submission_count": n, "due_by": 1_000 } });
        let before = Utc.timestamp_opt(900, 0).single().expect("time");
        let after = Utc.timestamp_opt(1_100, 0).single().expect("time");
        assert_eq!(dispute_outcome(&d("won", 1), before), Some("won"));
        assert_eq!(
            dispute_outcome(&d("warning_closed", 0), before),
            Some("won")
        );
        assert_eq!(dispute_outcome(&d("lost", 1), before), Some("lost"));
        assert_eq!(dispute_outcome(&d("lost", 0), before), Some("accepted"));
        assert_eq!(
            dispute_outcome(&d("lost", 0), after),
            Some("lost"),
            "unanswered until the deadline"
        );
        assert_eq!(dispute_outcome(&d("needs_response", 0), before), None);
    }
}
