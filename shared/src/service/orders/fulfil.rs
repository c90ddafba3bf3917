//! Fulfilling an order accepted unpaid, once its payment arrives (or an
//! admin accepts a payment that did not match).

use serde_json::{Value, json};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::plan::{plan, within_limit};
use super::{
    CreateOrderError, Customer, Game, NewItem, NewOrder, NewPaymentStatus, alert_held, products_of,
    undeliverable,
};
use crate::db::accept::{self, AcceptRows};
use crate::db::events::{self, NewEvent};
use crate::db::orders;
use crate::domain::order::{OrderStatus, PaymentStatus};
use crate::error::DbError;
use crate::service::Invalid;
use crate::service::deliverable::AcceptRules;

/// What `start_fulfilment` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fulfilment {
    /// Deliveries were queued (how many).
    Started(usize),
    /// The order was already paid: nothing changed.
    AlreadyPaid,
    /// Paid, but the order was cancelled first: nothing is delivered.
    Cancelled,
    /// Paid, but the products no longer render (edited since): the order failed.
    Unplannable(String),
}

/// Marks a pending order paid and queues its deliveries, planned from the
/// products as configured now. The caller holds the order's row lock.
/// `accept_mismatched`: an admin accepts a payment that did not match.
pub async fn start_fulfilment(
    conn: &mut PgConnection,
    order_id: Uuid,
    actor: &str,
    accept_mismatched: bool,
    rules: &AcceptRules,
) -> Result<Fulfilment, CreateOrderError> {
    let row = sqlx::query(
        "SELECT order_number, status, payment_status, currency, tax, discount, gateway, transaction_id, \
           customer_name, customer_email, customer_phone, customer_ip, game_username, game_uuid, \
           discord_user_id FROM orders WHERE id = $1",
    )
    .bind(order_id)
    .fetch_one(&mut *conn)
    .await?;
    let payment: PaymentStatus = row
        .try_get::<String, _>("payment_status")?
        .parse()
        .map_err(DbError::from)?;
    // `failed`: an asynchronous payment failed and the customer paid again.
    let accepting = accept_mismatched && payment == PaymentStatus::Mismatched;
    if !matches!(payment, PaymentStatus::Pending | PaymentStatus::Failed) && !accepting {
        return Ok(Fulfilment::AlreadyPaid);
    }
    orders::set_payment_status(conn, order_id, PaymentStatus::Paid).await?;
    let status: String = row.try_get("status")?;
    if status == OrderStatus::Cancelled.as_str() {
        events::record(
            conn,
            NewEvent {
                order_id,
                delivery_id: None,
                kind: "payment.received",
                message: "payment received for a cancelled order; nothing is delivered (refund it)"
                    .into(),
                actor,
                data: json!({}),
            },
        )
        .await?;
        crate::db::keys::alert(
            conn,
            "paid_after_cancel",
            &format!(
                "order {} was paid after it was cancelled; refund the payment",
                row.try_get::<String, _>("order_number")?
            ),
            &order_id.to_string(),
        )
        .await?;
        return Ok(Fulfilment::Cancelled);
    }
    let items = sqlx::query(
        "SELECT id, sku, quantity, unit_price, custom_fields FROM order_items WHERE order_id = $1 ORDER BY position",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut item_ids = Vec::with_capacity(items.len());
    let mut new_items = Vec::with_capacity(items.len());
    for r in &items {
        item_ids.push(r.try_get::<Uuid, _>("id")?);
        let custom: Value = r.try_get("custom_fields")?;
        new_items.push(NewItem {
            product: r.try_get("sku")?,
            quantity: r.try_get("quantity")?,
            unit_price: r.try_get("unit_price")?,
            custom_fields: custom.as_object().cloned().unwrap_or_default(),
        });
    }
    let order = NewOrder {
        payment_status: NewPaymentStatus::Paid,
        currency: row.try_get::<String, _>("currency")?.trim().to_owned(),
        tax: row.try_get("tax")?,
        discount: row.try_get("discount")?,
        amount_paid: None,
        gateway: row.try_get("gateway")?,
        transaction_id: row.try_get("transaction_id")?,
        customer: Customer {
            name: row.try_get("customer_name")?,
            email: row.try_get("customer_email")?,
            phone: row.try_get("customer_phone")?,
            ip: None,
        },
        game: Game {
            username: row.try_get("game_username")?,
            uuid: row.try_get("game_uuid")?,
        },
        discord_user_id: row.try_get("discord_user_id")?,
        items: new_items,
    };
    let products = products_of(conn, &order).await?;
    let number: String = row.try_get("order_number")?;
    let planned = within_limit(&order, &products, rules)
        .map_err(|e| Invalid::new("items", e.to_string()))
        .and_then(|()| {
            plan(
                &order,
                &products,
                None,
                &[],
                Some((order_id, number.clone(), item_ids)),
            )
        });
    match planned {
        Ok(plan) => {
            let held = undeliverable(&products, rules);
            let rows = AcceptRows {
                order: None,
                order_id,
                items: &[],
                deliveries: &plan.deliveries,
                held: &held,
                event: NewEvent {
                    order_id,
                    delivery_id: None,
                    kind: "payment.received",
                    message: format!(
                        "payment received; {} deliveries queued",
                        plan.deliveries.len()
                    ),
                    actor,
                    data: json!({}),
                },
            };
            let held_count = accept::write(&mut *conn, rows).await?;
            alert_held(conn, order_id, &number, &plan.deliveries, &held, held_count).await?;
            Ok(Fulfilment::Started(plan.deliveries.len()))
        }
        Err(e) => {
            crate::db::deliveries::set_order_status(conn, order_id, OrderStatus::Failed, actor)
                .await?;
            events::record(
                conn,
                NewEvent {
                    order_id,
                    delivery_id: None,
                    kind: "payment.received",
                    message: format!("payment received, but the order cannot be fulfilled: {e}"),
                    actor,
                    data: json!({ "field": e.field }),
                },
            )
            .await?;
            Ok(Fulfilment::Unplannable(e.to_string()))
        }
    }
}
