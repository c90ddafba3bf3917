//! Money after the order: refunds, cancellation, and the events payment
//! gateways send (payment succeeded or failed, refunded, disputed).
//!
//! # Layout
//! - `stripe`: the Stripe objects Courier reads, as typed structs.
//! - `ingest`: verified Stripe events in (dedupe, ordering per payment, the
//!   event router, events parked until their payment arrives).
//! - `checkout`: a paid Checkout Session — the money check, orders created
//!   from a session, an admin accepting a payment that did not match.
//! - `refunds`: refunds asked through the API and those seen at the gateway.
//! - `disputes`: chargebacks opened and closed.
//! - `cancel`: cancelling an order not completed yet.
//! - `generic`: the Standard Webhooks order webhook.
//!
//! Decisions (docs/payments.md repeats them):
//! - A payment is applied only when it pays the order: amount in the
//!   currency's minor unit and currency equal to the order's total and
//!   currency. Anything else is recorded on the order with its real figures
//!   (`payment_status: mismatched`, `payment_received`, `payment_issue`),
//!   delivers nothing, and raises a `payment_mismatch` alert; an admin
//!   accepts it (`POST /v1/orders/{id}/payment/accept`) or refunds it.
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
//!   refund, so refunds made through Courier are never counted twice. More
//!   than the order's total raises one `refunded_over_total` alert.
//! - A dispute withdraws access when it opens (`payments.revoke_on_dispute`,
//!   default true) and runs the actions' `chargeback_command`s; lost or
//!   accepted, the payment and order become `refunded` (the money went back
//!   through the chargeback).

mod cancel;
mod checkout;
mod disputes;
mod generic;
mod ingest;
mod refunds;
pub mod stripe;

use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

pub use self::cancel::cancel;
pub use self::checkout::{AcceptRequest, Accepted, accept_payment, order_from_session};
pub use self::generic::ingest_generic;
pub use self::ingest::{ingest_stripe, ingest_unusable, retry_parked};
pub use self::refunds::{RefundRequest, Refunded, refund};
pub use self::stripe::StripeEvent;
use super::Invalid;
use super::deliverable::AcceptRules;
use super::orders::CreateOrderError;
use crate::db;
pub use crate::db::payments::resolve_order;
pub use crate::domain::money::{from_minor, minor_unit_exponent, to_minor};
use crate::domain::order::{OrderStatus, PaymentStatus};
use crate::domain::payment::EventStatus;
pub use crate::domain::payment::RefundReason;
use crate::error::DbError;

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
    #[error("the order is `{0}`: nothing is delivered any more (refund the payment instead)")]
    OrderClosed(OrderStatus),
    #[error("the order has no payment waiting for a decision (payment status `{0}`)")]
    NoMismatchedPayment(PaymentStatus),
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
            CreateOrderError::Invalid(i) | CreateOrderError::NotDeliverable(i) => {
                PaymentError::Invalid(i)
            }
            e @ CreateOrderError::TooManyDeliveries { .. } => {
                PaymentError::Invalid(Invalid::new("items", e.to_string()))
            }
            CreateOrderError::IdempotencyConflict => PaymentError::Db(DbError::Corrupt(
                "idempotency conflict on a payment event".into(),
            )),
            CreateOrderError::Db(d) => PaymentError::Db(d),
        }
    }
}

/// Longest reason an admin may give for a refund, cancel or acceptance.
const MAX_REASON: usize = 500;

/// What becomes of a webhook event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IngestStatus {
    Applied,
    /// Kept until its payment arrives.
    Pending,
    Ignored,
    /// Verified but unusable; an admin alert says why.
    Failed,
    /// Seen before: nothing changed.
    Duplicate,
}

impl IngestStatus {
    /// How the stored event row ends (a duplicate has no row of its own).
    fn stored(self) -> EventStatus {
        match self {
            IngestStatus::Applied => EventStatus::Applied,
            IngestStatus::Pending => EventStatus::Pending,
            IngestStatus::Ignored | IngestStatus::Duplicate => EventStatus::Ignored,
            IngestStatus::Failed => EventStatus::Failed,
        }
    }
}

/// What became of a webhook event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Ingested {
    pub status: IngestStatus,
    pub order_id: Option<Uuid>,
    pub note: Option<String>,
}

impl Ingested {
    fn new(status: IngestStatus, order_id: Option<Uuid>, note: impl Into<Option<String>>) -> Self {
        Ingested {
            status,
            order_id,
            note: note.into(),
        }
    }
}

/// What the operator decided: disputes, and the rules orders are accepted
/// under (what this installation can deliver, the size cap).
#[derive(Debug, Clone)]
pub struct PaymentPolicy {
    pub revoke_on_dispute: bool,
    pub accept: std::sync::Arc<AcceptRules>,
}

/// Locks the order's row and reads what the money rules need.
async fn lock_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<db::payments::LockedOrder, PaymentError> {
    db::payments::lock_order(conn, order_id)
        .await?
        .ok_or(PaymentError::NotFound)
}
