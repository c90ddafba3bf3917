//! Fulfilling an order accepted unpaid, once its payment arrives (or an
//! admin accepts a payment that did not match).

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::plan::{plan, within_limit};
use super::{
    CreateOrderError, Customer, Game, NewItem, NewOrder, NewPaymentStatus, alert_held, hold_for,
    start_message, undeliverable,
};
use crate::db::accept::{self, AcceptRows};
use crate::db::catalog::Product;
use crate::db::events::{self, NewEvent};
use crate::db::orders;
use crate::domain::order::{OrderStatus, PaymentStatus, ProcessHold};
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
    /// Paid; it waits for an admin or its delay before its deliveries start.
    Waiting(ProcessHold),
}

/// The order's columns that planning its deliveries needs.
const ORDER_COLUMNS: &str = "SELECT order_number, status, payment_status, currency, tax, discount, \
    gateway, transaction_id, customer_name, customer_email, customer_phone, customer_ip, \
    game_username, game_uuid, discord_user_id, process_hold, revoked_at IS NOT NULL AS revoked \
    FROM orders WHERE id = $1";

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
    let row = sqlx::query(ORDER_COLUMNS)
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
    let (products, skus) = products_for(conn, order_id).await?;
    if let Some((hold, after)) = hold_for(skus.iter().map(String::as_str), &products, rules) {
        orders::set_process_hold(conn, order_id, hold, after).await?;
        events::record(
            conn,
            NewEvent {
                order_id,
                delivery_id: None,
                kind: "payment.received",
                message: format!("payment received; {}", start_message(0, Some(hold), after)),
                actor,
                data: json!({ "process_hold": hold, "process_after": after }),
            },
        )
        .await?;
        return Ok(Fulfilment::Waiting(hold));
    }
    let event = ("payment.received", "payment received");
    let queued = queue_deliveries(conn, order_id, &row, &products, actor, event, rules).await?;
    Ok(match queued {
        Ok(n) => Fulfilment::Started(n),
        Err(e) => Fulfilment::Unplannable(e),
    })
}

/// The products of a stored order's items by SKU, and its SKUs in order.
async fn products_for(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<(HashMap<String, Product>, Vec<String>), CreateOrderError> {
    let skus: Vec<String> =
        sqlx::query_scalar("SELECT sku FROM order_items WHERE order_id = $1 ORDER BY position")
            .bind(order_id)
            .fetch_all(&mut *conn)
            .await?;
    let products = crate::db::catalog::products_by_sku(conn, &skus)
        .await?
        .into_iter()
        .map(|p| (p.sku.clone(), p))
        .collect();
    Ok((products, skus))
}

/// Plans a paid order's deliveries from its products as configured now and
/// queues them, with the timeline entry (`event`: kind and what happened);
/// when the products no longer render, the order fails and the reason is
/// returned. `row` is the order's row as `ORDER_COLUMNS` reads it.
async fn queue_deliveries(
    conn: &mut PgConnection,
    order_id: Uuid,
    row: &sqlx::postgres::PgRow,
    products: &HashMap<String, Product>,
    actor: &str,
    event: (&'static str, &str),
    rules: &AcceptRules,
) -> Result<Result<usize, String>, CreateOrderError> {
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
            account_ref: None,
        },
        game: Game {
            username: row.try_get("game_username")?,
            uuid: row.try_get("game_uuid")?,
        },
        discord_user_id: row.try_get("discord_user_id")?,
        billing_address: None,
        shipping_address: None,
        items: new_items,
    };
    let number: String = row.try_get("order_number")?;
    let planned = within_limit(&order, products, rules)
        .map_err(|e| Invalid::new("items", e.to_string()))
        .and_then(|()| {
            plan(
                &order,
                products,
                None,
                &[],
                Some((order_id, number.clone(), item_ids)),
            )
        });
    match planned {
        Ok(plan) => {
            let held = undeliverable(products, rules);
            let rows = AcceptRows {
                order: None,
                items: &[],
                deliveries: &plan.deliveries,
                held: &held,
                event: NewEvent {
                    order_id,
                    delivery_id: None,
                    kind: event.0,
                    message: format!("{}; {} deliveries queued", event.1, plan.deliveries.len()),
                    actor,
                    data: json!({}),
                },
            };
            let held_count = accept::write_one(&mut *conn, rows).await?;
            alert_held(conn, order_id, &number, &plan.deliveries, &held, held_count).await?;
            Ok(Ok(plan.deliveries.len()))
        }
        Err(e) => {
            crate::db::deliveries::set_order_status(conn, order_id, OrderStatus::Failed, actor)
                .await?;
            events::record(
                conn,
                NewEvent {
                    order_id,
                    delivery_id: None,
                    kind: event.0,
                    message: format!("{}, but the order cannot be fulfilled: {e}", event.1),
                    actor,
                    data: json!({ "field": e.field }),
                },
            )
            .await?;
            Ok(Err(e.to_string()))
        }
    }
}

/// What `process_order` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// Its deliveries were queued (how many; 0 for an order of products
    /// fulfilled by hand).
    Started(usize),
    /// Nothing was done, and why (a stable word: `not_waiting`, `not_paid`,
    /// `withdrawn`, `unplannable`).
    Skipped(&'static str, String),
}

/// [Process] a paid order that waits (auto-processing off, or a delay not
/// yet over): its deliveries are planned from the products as configured
/// now and queued. An order that does not wait is skipped, with why. The
/// caller holds the order's row lock.
pub async fn process_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    actor: &str,
    rules: &AcceptRules,
) -> Result<Processed, CreateOrderError> {
    let row = sqlx::query(ORDER_COLUMNS)
        .bind(order_id)
        .fetch_one(&mut *conn)
        .await?;
    let hold: Option<String> = row.try_get("process_hold")?;
    let Some(hold) = hold else {
        return Ok(Processed::Skipped(
            "not_waiting",
            "the order is not waiting to be processed (it started already, or is not paid)".into(),
        ));
    };
    let payment: PaymentStatus = row
        .try_get::<String, _>("payment_status")?
        .parse()
        .map_err(DbError::from)?;
    let status: OrderStatus = row
        .try_get::<String, _>("status")?
        .parse()
        .map_err(DbError::from)?;
    let revoked: bool = row.try_get("revoked")?;
    // A partial refund that did not withdraw access leaves the rest to deliver.
    let open = matches!(
        status,
        OrderStatus::Pending | OrderStatus::PartiallyRefunded
    );
    if revoked || !open {
        // Withdrawn (cancelled, refunded, a dispute) while it waited: it never starts.
        orders::clear_process_hold(conn, order_id).await?;
        return Ok(Processed::Skipped(
            "withdrawn",
            format!(
                "the order is {status}{}: nothing is delivered",
                if revoked { ", access withdrawn" } else { "" }
            ),
        ));
    }
    if !matches!(
        payment,
        PaymentStatus::Paid | PaymentStatus::PartiallyRefunded
    ) {
        return Ok(Processed::Skipped(
            "not_paid",
            format!("the order's payment is {payment}"),
        ));
    }
    orders::clear_process_hold(conn, order_id).await?;
    let (products, _) = products_for(conn, order_id).await?;
    let what = if hold == ProcessHold::Delayed.as_str() {
        "its process delay is over"
    } else {
        "processed"
    };
    let queued = queue_deliveries(
        conn,
        order_id,
        &row,
        &products,
        actor,
        ("order.processed", what),
        rules,
    )
    .await?;
    Ok(match queued {
        Ok(n) => Processed::Started(n),
        Err(e) => Processed::Skipped("unplannable", e),
    })
}
