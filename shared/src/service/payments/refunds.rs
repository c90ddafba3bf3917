//! Refunds: asked through the API (checked under the order's row lock, sent
//! to Stripe by a `gateway_refund` job) and seen at the gateway
//! (`charge.refunded`).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::stripe::Charge;
use super::{IngestStatus, Ingested, MAX_REASON, PaymentError, lock_order};
use crate::db::deliveries::{self, DeliveryRow};
use crate::db::events::{self, NewEvent};
use crate::db::payments::LockedOrder;
use crate::db::refunds::{self, NewRefund, RefundView};
use crate::db::{keys, outbox};
use crate::domain::action::GatewayRefundPayload;
use crate::domain::delivery::{DeliveryKind, Purpose};
use crate::domain::money::{from_minor, minor_unit_exponent, to_minor};
use crate::domain::order::{OrderStatus, PaymentStatus};
use crate::domain::payment::{RefundReason, RefundSource, RefundStatus};
use crate::error::DbError;
use crate::service::Invalid;
use crate::service::revoke::{self, Cause};

/// Body of `POST /v1/orders/{id}/refunds`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
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

/// One refund to record against a locked order.
struct RefundSpec<'a> {
    amount: Decimal,
    /// The payment's currency (the order's, except for a mismatched payment).
    currency: &'a str,
    reason: RefundReason,
    reason_text: Option<&'a str>,
    source: RefundSource,
    external_id: Option<&'a str>,
    revoke: Option<bool>,
    actor: &'a str,
    idempotency: Option<(&'a str, &'a [u8])>,
}

fn decimals(currency: &str) -> Invalid {
    Invalid::new(
        "amount",
        format!(
            "{currency} has at most {} decimal places",
            minor_unit_exponent(currency)
        ),
    )
}

/// Records a refund on a locked order: amounts, statuses, the gateway job
/// (for API refunds of Stripe payments), revocation, the timeline.
async fn record_refund(
    conn: &mut PgConnection,
    order: &LockedOrder,
    spec: RefundSpec<'_>,
) -> Result<Uuid, PaymentError> {
    let order_id = order.id;
    // A mismatched payment was never applied: giving it back refunds it in
    // full, and the order's own refunded amount (against its total) stays.
    let full = if order.payment == PaymentStatus::Mismatched {
        crate::db::orders::set_payment_status(conn, order_id, PaymentStatus::Refunded).await?;
        true
    } else {
        refunds::adjust_refunded(conn, order_id, spec.amount).await? == PaymentStatus::Refunded
    };
    let order_to = if full {
        OrderStatus::Refunded
    } else {
        OrderStatus::PartiallyRefunded
    };
    if order.status.transition(order_to).is_ok() {
        deliveries::set_order_status(conn, order_id, order_to, spec.actor).await?;
    }

    let refund_id = Uuid::new_v4();
    let via_stripe = spec.source == RefundSource::Api
        && order.gateway.as_deref() == Some("stripe")
        && order.transaction_id.is_some();
    let mut job = None;
    if via_stripe {
        let amount_minor =
            to_minor(spec.amount, spec.currency).ok_or_else(|| decimals(spec.currency))?;
        let payload = GatewayRefundPayload {
            refund_id,
            gateway: "stripe".into(),
            payment_ref: order.transaction_id.clone().unwrap_or_default(),
            amount_minor,
            currency: spec.currency.to_owned(),
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
    refunds::insert_refund(
        conn,
        &NewRefund {
            id: refund_id,
            order_id,
            amount: spec.amount,
            currency: spec.currency,
            reason: spec.reason,
            reason_text: spec.reason_text,
            source: spec.source,
            status: match (spec.source, via_stripe) {
                (RefundSource::Gateway, _) => RefundStatus::Succeeded,
                (_, true) => RefundStatus::Pending,
                _ => RefundStatus::Recorded,
            },
            external_id: spec.external_id,
            delivery_id: job,
            revoke,
            requested_by: spec.actor,
            idempotency_key: spec.idempotency.map(|(k, _)| k),
            request_hash: spec.idempotency.map(|(_, h)| h),
            of_unapplied: order.payment == PaymentStatus::Mismatched,
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
                spec.currency,
                spec.reason,
                spec.reason_text
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default(),
                match (spec.source, via_stripe) {
                    (RefundSource::Gateway, _) => ", made at the gateway",
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

async fn refund_view(
    conn: &mut PgConnection,
    order_id: Uuid,
    id: Uuid,
) -> Result<RefundView, PaymentError> {
    Ok(refunds::refunds_of(conn, order_id)
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| DbError::Corrupt("refund not readable".into()))?)
}

/// `POST /v1/orders/{id}/refunds`: checks the limits under the order's row lock
/// (so concurrent partial refunds cannot add up past the total) and records it.
/// With an idempotency key, a repeat of the same request returns the refund it
/// made (`created = false`); another body under the key is a conflict.
///
/// A `mismatched` payment (never applied) is given back whole, in the
/// currency it was paid in: `amount` may be left out or must be all of it.
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
        crate::service::check_text("reason_text", t, MAX_REASON)?;
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
    if let Some(key) = idempotency_key
        && let Some((id, stored)) = refunds::refund_by_key(&mut tx, order_id, key).await?
    {
        if stored.as_deref() != Some(hash.as_slice()) {
            return Err(PaymentError::IdempotencyConflict);
        }
        let refund = refund_view(&mut tx, order_id, id).await?;
        return Ok(Refunded {
            refund,
            created: false,
        });
    }
    let (remaining, currency) = match order.payment {
        PaymentStatus::Paid | PaymentStatus::PartiallyRefunded => {
            (order.total - order.refunded, order.currency.clone())
        }
        // The gateway said nothing of the amount: the order's total is what
        // the customer meant to pay.
        PaymentStatus::Mismatched => match (order.paid_amount, &order.paid_currency) {
            (Some(a), Some(c)) => (a, c.clone()),
            _ => (order.total, order.currency.clone()),
        },
        PaymentStatus::Refunded => return Err(PaymentError::AlreadyRefunded),
        other => return Err(PaymentError::NotPaid(other)),
    };
    if remaining <= Decimal::ZERO {
        return Err(PaymentError::AlreadyRefunded);
    }
    let amount = req.amount.unwrap_or(remaining);
    if amount <= Decimal::ZERO {
        return Err(Invalid::new("amount", "must be greater than zero").into());
    }
    if amount.scale() > minor_unit_exponent(&currency) && to_minor(amount, &currency).is_none() {
        return Err(decimals(&currency).into());
    }
    // Stored in the currency's minor unit: "2.0" and "2.00" are one amount.
    let mut amount = amount;
    amount.rescale(minor_unit_exponent(&currency));
    if amount > remaining {
        return Err(PaymentError::ExceedsRemaining {
            remaining,
            currency,
        });
    }
    if order.payment == PaymentStatus::Mismatched && amount != remaining {
        return Err(Invalid::new(
            "amount",
            format!(
                "a payment that was not applied is given back whole: leave amount out or send {remaining}"
            ),
        )
        .into());
    }
    let id = record_refund(
        &mut tx,
        &order,
        RefundSpec {
            amount,
            currency: &currency,
            reason: req.reason,
            reason_text: req.reason_text.as_deref(),
            source: RefundSource::Api,
            external_id: None,
            revoke: req.revoke,
            actor,
            idempotency: idempotency_key.map(|k| (k, hash.as_slice())),
        },
    )
    .await?;
    let refund = refund_view(&mut tx, order_id, id).await?;
    tx.commit().await?;
    Ok(Refunded {
        refund,
        created: true,
    })
}

/// `charge.refunded`: the charge's cumulative `amount_refunded`, of which
/// only what Courier has not recorded yet becomes a new refund.
pub(super) async fn charge_refunded(
    conn: &mut PgConnection,
    order: LockedOrder,
    charge: &Charge,
    actor: &str,
) -> Result<Ingested, PaymentError> {
    let order_id = order.id;
    // A refund Courier asked for whose job gave up (Stripe unreachable) but
    // which Stripe made after all: it counts again, as the same refund.
    for r in charge.refunds() {
        let Some(ours) = r
            .metadata
            .get("courier_refund_id")
            .and_then(|u| Uuid::parse_str(u).ok())
        else {
            continue;
        };
        if let Some((amount, of_unapplied)) =
            refunds::revive_refund(conn, ours, order_id, &r.id).await?
        {
            if of_unapplied {
                crate::db::orders::set_payment_status(conn, order_id, PaymentStatus::Refunded)
                    .await?;
            } else {
                refunds::adjust_refunded(conn, order_id, amount).await?;
            }
            events::record(
                conn,
                NewEvent {
                    order_id,
                    delivery_id: None,
                    kind: "refund.succeeded",
                    message: format!(
                        "Stripe made refund {} ({amount}) after all; it counts again",
                        r.id
                    ),
                    actor,
                    data: json!({ "refund_id": ours, "external_id": r.id }),
                },
            )
            .await?;
        }
    }
    let order = lock_order(conn, order_id).await?;
    let currency = charge
        .currency
        .as_deref()
        .map(str::to_ascii_uppercase)
        .unwrap_or_else(|| order.currency.clone());
    // A payment that did not pay the order and was given back whole through
    // Courier: Stripe's refund of it is that refund, not a new one.
    if order.payment == PaymentStatus::Refunded && order.payment_issue.is_some() {
        let paid = order.paid_amount.unwrap_or(order.total);
        let refunded = from_minor(charge.amount_refunded, &currency);
        if refunded > paid {
            keys::alert(
                conn,
                "refunded_over_total",
                &format!(
                    "Stripe has refunded {refunded} {currency} of order {}, more than the {paid} paid: check the gateway",
                    order.order_number
                ),
                &order_id.to_string(),
            )
            .await?;
        }
        return Ok(Ingested::new(
            IngestStatus::Applied,
            Some(order_id),
            "the payment that did not match was already given back whole".to_owned(),
        ));
    }
    if currency != order.currency {
        keys::alert(
            conn,
            "payment_mismatch",
            &format!(
                "a refund in {currency} arrived for order {} in {}: not applied; check it at Stripe",
                order.order_number, order.currency
            ),
            &format!("refund-currency:{order_id}"),
        )
        .await?;
        return Ok(Ingested::new(
            IngestStatus::Failed,
            Some(order_id),
            format!(
                "refunded in {currency}, but the order is in {}",
                order.currency
            ),
        ));
    }
    let refunded = from_minor(charge.amount_refunded, &currency);
    if refunded > order.total {
        // Stripe gave back more than the order cost (money went back twice,
        // or the charge paid more than this order): said once.
        keys::alert(
            conn,
            "refunded_over_total",
            &format!(
                "Stripe has refunded {refunded} {currency} of order {}, more than its total {}: check the gateway",
                order.order_number, order.total
            ),
            &order_id.to_string(),
        )
        .await?;
    }
    let new = (refunded - order.refunded).min(order.total - order.refunded);
    if new <= Decimal::ZERO {
        return Ok(Ingested::new(
            IngestStatus::Applied,
            Some(order_id),
            format!("{refunded} {currency} refunded at Stripe is already recorded"),
        ));
    }
    // The newest Stripe refund Courier does not know yet names this one;
    // refunds Courier asked for carry `metadata.courier_refund_id` and are
    // never taken for it (their id may not be recorded yet).
    let mut external = None;
    let mut reason = RefundReason::Other;
    for r in charge.refunds() {
        if r.metadata.contains_key("courier_refund_id") {
            continue;
        }
        if !refunds::refund_known(conn, &r.id).await? {
            external = Some(r.id.clone());
            reason = r
                .reason
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or(RefundReason::Other);
            break;
        }
    }
    record_refund(
        conn,
        &order,
        RefundSpec {
            amount: new,
            currency: &currency,
            reason,
            reason_text: (reason == RefundReason::Other).then_some("refunded in Stripe"),
            source: RefundSource::Gateway,
            external_id: external.as_deref(),
            revoke: None,
            actor,
            idempotency: None,
        },
    )
    .await?;
    Ok(Ingested::new(
        IngestStatus::Applied,
        Some(order_id),
        format!("recorded a refund of {new} {currency}"),
    ))
}
