//! The rows of an accepted order written in one statement: the order (when it
//! is new), its items, its deliveries, an outbox row per queued delivery and
//! the timeline entry — each table one `INSERT … SELECT FROM UNNEST(…)`, all
//! of them data-modifying CTEs of a single statement. Foreign keys are checked
//! at the end of the statement, so the order and its items may be inserted
//! side by side.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::deliveries::DeliveryRow;
use super::events::NewEvent;
use super::orders::{ItemRow, OrderRow};
use crate::domain::delivery::DeliveryStatus;
use crate::queue::messages::JobMessage;

/// What one accept (or a pending order's payment) writes.
pub struct AcceptRows<'a> {
    /// `None` when the order is already stored (a pending order being paid).
    pub order: Option<&'a OrderRow>,
    pub order_id: Uuid,
    pub items: &'a [ItemRow],
    pub deliveries: &'a [DeliveryRow],
    /// Deliveries of these actions are parked `held` with the reason instead
    /// of queued (this installation cannot run them now).
    pub held: &'a HashMap<Uuid, String>,
    pub event: NewEvent<'a>,
}

/// Writes the rows; a unique violation (order number, idempotency key) is
/// returned as is for the caller to interpret. Returns how many deliveries
/// were held.
pub async fn write(conn: &mut PgConnection, rows: AcceptRows<'_>) -> Result<usize, sqlx::Error> {
    let items = rows.items;
    let mut d_status = Vec::with_capacity(rows.deliveries.len());
    let mut d_error = Vec::with_capacity(rows.deliveries.len());
    let mut queues = Vec::new();
    let mut messages = Vec::new();
    for d in rows.deliveries {
        match d.action_id.and_then(|a| rows.held.get(&a)) {
            None => {
                d_status.push(DeliveryStatus::Queued.as_str());
                d_error.push(None);
                queues.push(d.kind.queue());
                messages.push(
                    JobMessage {
                        delivery_id: d.id,
                        kind: d.kind,
                    }
                    .to_json(),
                );
            }
            Some(reason) => {
                d_status.push(DeliveryStatus::Held.as_str());
                d_error.push(Some(format!("not deliverable: {reason}")));
            }
        }
    }
    let held = rows.deliveries.len() - queues.len();
    macro_rules! common {
        () => { "\
        i AS (INSERT INTO order_items (id, order_id, position, product_id, sku, product_name, \
                quantity, unit_price, total, delivery_status, custom_fields) \
              SELECT u.id, $1, u.position, u.product_id, u.sku, u.product_name, u.quantity, \
                u.unit_price, u.total, 'pending', u.custom_fields \
              FROM UNNEST($2::uuid[], $3::int4[], $4::uuid[], $5::text[], $6::text[], $7::int4[], \
                $8::numeric[], $9::numeric[], $10::jsonb[]) \
                AS u(id, position, product_id, sku, product_name, quantity, unit_price, total, custom_fields)), \
        d AS (INSERT INTO deliveries (id, order_id, item_id, action_id, kind, target, payload, \
                status, next_attempt_at, purpose, revokes, last_error) \
              SELECT u.id, $1, u.item_id, u.action_id, u.kind, u.target, u.payload, u.status, now(), \
                u.purpose, u.revokes, u.last_error \
              FROM UNNEST($11::uuid[], $12::uuid[], $13::uuid[], $14::text[], $15::text[], \
                $16::jsonb[], $17::text[], $18::text[], $19::uuid[], $20::text[]) \
                AS u(id, item_id, action_id, kind, target, payload, status, purpose, revokes, last_error)), \
        x AS (INSERT INTO outbox (queue, payload) SELECT * FROM UNNEST($21::text[], $22::jsonb[])), \
        e AS (INSERT INTO order_events (order_id, delivery_id, kind, message, actor, data) \
              VALUES ($1, NULL, $23, $24, $25, $26)) \
        SELECT 1" };
    }
    macro_rules! order_cte {
        () => { "\
        o AS (INSERT INTO orders (id, order_number, status, payment_status, gateway, transaction_id, \
                customer_name, customer_email, customer_phone, game_username, game_uuid, discord_user_id, \
                currency, subtotal, tax, total, idempotency_key, request_hash, paid_at, customer_ip, \
                discount, created_at, updated_at, item_names, customer_ref, billing_address, \
                shipping_address, process_hold, process_after) \
              VALUES ($1, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38, $39, $40, $41, \
                $42, $43, CASE WHEN $29 = 'paid' THEN $46 END, $44, $45, $46, $46, \
                array_to_string($6::text[], ' '), $47, $48, $49, $50, $51)), " };
    }
    let sql = match rows.order {
        Some(_) => concat!("WITH ", order_cte!(), common!()),
        None => concat!("WITH ", common!()),
    };
    let ds = rows.deliveries;
    let mut q = sqlx::query(sql)
        .bind(rows.order_id)
        .bind(items.iter().map(|i| i.id).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.position).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.product_id).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.sku.as_str()).collect::<Vec<_>>())
        .bind(
            items
                .iter()
                .map(|i| i.product_name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(items.iter().map(|i| i.quantity).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.unit_price).collect::<Vec<Decimal>>())
        .bind(items.iter().map(|i| i.total).collect::<Vec<Decimal>>())
        .bind(
            items
                .iter()
                .map(|i| i.custom_fields.clone())
                .collect::<Vec<Value>>(),
        )
        .bind(ds.iter().map(|d| d.id).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.item_id).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.action_id).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.target.as_str()).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.payload.clone()).collect::<Vec<Value>>())
        .bind(d_status)
        .bind(ds.iter().map(|d| d.purpose.as_str()).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.revokes).collect::<Vec<_>>())
        .bind(d_error)
        .bind(queues)
        .bind(messages)
        .bind(rows.event.kind)
        .bind(&rows.event.message)
        .bind(rows.event.actor)
        .bind(&rows.event.data);
    if let Some(o) = rows.order {
        q = q
            .bind(&o.order_number)
            .bind(o.status.as_str())
            .bind(o.payment_status.as_str())
            .bind(&o.gateway)
            .bind(&o.transaction_id)
            .bind(&o.customer_name)
            .bind(&o.customer_email)
            .bind(&o.customer_phone)
            .bind(&o.game_username)
            .bind(&o.game_uuid)
            .bind(&o.discord_user_id)
            .bind(&o.currency)
            .bind(o.subtotal)
            .bind(o.tax)
            .bind(o.total)
            .bind(&o.idempotency_key)
            .bind(&o.request_hash)
            .bind(&o.customer_ip)
            .bind(o.discount)
            .bind(o.created_at)
            .bind(&o.customer_ref)
            .bind(&o.billing_address)
            .bind(&o.shipping_address)
            .bind(o.process_hold.map(|h| h.as_str()))
            .bind(o.process_after);
    }
    q.execute(conn).await?;
    Ok(held)
}
