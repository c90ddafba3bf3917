//! The payment side of an order: its row under lock as the money rules read
//! it, what a payment took, which order a gateway object is about.

use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::order::PaymentStatus;
use crate::error::DbError;

/// The order's id from its id or order number (anything else: `None`).
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
    if crate::domain::ids::looks_like_order_number(reference) {
        return sqlx::query_scalar("SELECT id FROM orders WHERE order_number = $1")
            .bind(reference)
            .fetch_optional(conn)
            .await;
    }
    Ok(None)
}

/// An order under its row lock, as the money rules read it.
#[derive(Debug, Clone)]
pub struct LockedOrder {
    pub id: Uuid,
    pub order_number: String,
    pub status: crate::domain::order::OrderStatus,
    pub payment: PaymentStatus,
    pub total: Decimal,
    pub refunded: Decimal,
    pub currency: String,
    pub gateway: Option<String>,
    pub transaction_id: Option<String>,
    /// What the last payment took, as the gateway said.
    pub paid_amount: Option<Decimal>,
    pub paid_currency: Option<String>,
    /// Why the payment was not applied (set while `mismatched`, and after a
    /// mismatched payment was given back).
    pub payment_issue: Option<String>,
}

pub async fn lock_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<LockedOrder>, DbError> {
    let Some(row) = sqlx::query(
        "SELECT order_number, status, payment_status, total, refunded_amount, currency, gateway, \
           transaction_id, paid_amount, paid_currency, payment_issue FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(LockedOrder {
        id: order_id,
        order_number: row.try_get("order_number")?,
        status: row.try_get::<String, _>("status")?.parse()?,
        payment: row.try_get::<String, _>("payment_status")?.parse()?,
        total: row.try_get("total")?,
        refunded: row.try_get("refunded_amount")?,
        currency: row.try_get::<String, _>("currency")?.trim().to_owned(),
        gateway: row.try_get("gateway")?,
        transaction_id: row.try_get("transaction_id")?,
        paid_amount: row.try_get("paid_amount")?,
        paid_currency: row.try_get("paid_currency")?,
        payment_issue: row.try_get("payment_issue")?,
    }))
}

/// Keeps what a payment took (`None`: the gateway said nothing) and, when it
/// does not pay the order, why.
pub async fn record_received(
    conn: &mut PgConnection,
    order_id: Uuid,
    paid: Option<&crate::domain::money::Received>,
    issue: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET paid_amount = coalesce($2, paid_amount), \
           paid_currency = coalesce($3, paid_currency), payment_issue = $4, updated_at = now() \
         WHERE id = $1",
    )
    .bind(order_id)
    .bind(paid.map(|p| p.amount()))
    .bind(paid.map(|p| p.currency()))
    .bind(issue)
    .execute(conn)
    .await?;
    Ok(())
}

/// An admin accepted a payment that did not match: the order is now worth
/// what was paid, in the currency it was paid in (refunds and disputes are
/// then measured against that).
pub async fn reprice(
    conn: &mut PgConnection,
    order_id: Uuid,
    total: Decimal,
    currency: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET total = $2, currency = $3, updated_at = now() WHERE id = $1")
        .bind(order_id)
        .bind(total)
        .bind(currency)
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes `payment_intent` the order's payment (a correct payment after one
/// that did not match).
pub async fn replace_payment(
    conn: &mut PgConnection,
    order_id: Uuid,
    payment_intent: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET gateway = 'stripe', transaction_id = coalesce($2, transaction_id), \
           updated_at = now() WHERE id = $1",
    )
    .bind(order_id)
    .bind(payment_intent)
    .execute(conn)
    .await?;
    Ok(())
}

/// The order's recorded payment reference, read without a lock (to take the
/// payment's advisory lock before the order's row lock, as ingest does).
pub async fn transaction_id(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    Ok(
        sqlx::query_scalar("SELECT transaction_id FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_optional(conn)
            .await?
            .flatten(),
    )
}

/// Records the Stripe payment paying an order now: while it is unpaid the
/// new payment becomes the one refunds go against; once paid, the first one
/// stays.
pub async fn set_stripe_payment(
    conn: &mut PgConnection,
    order_id: Uuid,
    payment_intent: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET \
           gateway = CASE WHEN payment_status IN ('pending', 'failed') THEN 'stripe' ELSE coalesce(gateway, 'stripe') END, \
           transaction_id = CASE WHEN payment_status IN ('pending', 'failed') THEN coalesce($2, transaction_id) \
             ELSE coalesce(transaction_id, $2) END, \
           updated_at = now() WHERE id = $1",
    )
    .bind(order_id)
    .bind(payment_intent)
    .execute(conn)
    .await?;
    Ok(())
}

/// The Stripe order paid by PaymentIntent `pi`.
pub async fn order_by_payment_intent(
    conn: &mut PgConnection,
    pi: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orders WHERE gateway = 'stripe' AND transaction_id = $1")
        .bind(pi)
        .fetch_optional(conn)
        .await
}

/// The order created under an idempotency key (a Checkout Session's or a
/// generic webhook's).
pub async fn order_by_key(conn: &mut PgConnection, key: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orders WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}
