//! The rows of accepted orders written in one statement: the orders (those
//! that are new), their items, their deliveries, an outbox row per queued
//! delivery and a timeline entry per order — each table one `INSERT … SELECT
//! FROM UNNEST(…)`, all of them data-modifying CTEs of a single statement.
//! Foreign keys are checked at the end of the statement, so orders and their
//! items may be inserted side by side. One accept or many (a group commit,
//! `service::orders::commit`) is the same statement with longer arrays.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::deliveries::DeliveryRow;
use super::events::NewEvent;
use super::orders::{ItemRow, OrderRow};
use super::outbox::Pending;
use crate::domain::delivery::DeliveryStatus;
use crate::queue::messages::JobMessage;

/// What one accept (or a pending order's payment) writes.
pub struct AcceptRows<'a> {
    /// `None` when the order is already stored (a pending order being paid).
    pub order: Option<&'a OrderRow>,
    pub items: &'a [ItemRow],
    pub deliveries: &'a [DeliveryRow],
    /// Deliveries of these actions are parked `held` with the reason instead
    /// of queued (this installation cannot run them now).
    pub held: &'a HashMap<Uuid, String>,
    pub event: NewEvent<'a>,
}

const SQL: &str = "\
WITH o AS (INSERT INTO orders (id, order_number, status, payment_status, gateway, transaction_id, \
        customer_name, customer_email, customer_phone, game_username, game_uuid, discord_user_id, \
        currency, subtotal, tax, total, idempotency_key, request_hash, paid_at, customer_ip, \
        discount, created_at, updated_at, item_names, customer_ref, billing_address, \
        shipping_address, process_hold, process_after) \
      SELECT u.id, u.order_number, u.status, u.payment_status, u.gateway, u.transaction_id, \
        u.customer_name, u.customer_email, u.customer_phone, u.game_username, u.game_uuid, \
        u.discord_user_id, u.currency, u.subtotal, u.tax, u.total, u.idempotency_key, \
        u.request_hash, CASE WHEN u.payment_status = 'paid' THEN u.created_at END, u.customer_ip, \
        u.discount, u.created_at, u.created_at, u.item_names, u.customer_ref, u.billing_address, \
        u.shipping_address, u.process_hold, u.process_after \
      FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
        $14::numeric[], $15::numeric[], $16::numeric[], $17::text[], $18::bytea[], $19::text[], \
        $20::numeric[], $21::timestamptz[], $22::text[], $23::text[], $24::jsonb[], $25::jsonb[], \
        $26::text[], $27::timestamptz[]) \
        AS u(id, order_number, status, payment_status, gateway, transaction_id, customer_name, \
          customer_email, customer_phone, game_username, game_uuid, discord_user_id, currency, \
          subtotal, tax, total, idempotency_key, request_hash, customer_ip, discount, created_at, \
          item_names, customer_ref, billing_address, shipping_address, process_hold, process_after)), \
i AS (INSERT INTO order_items (id, order_id, position, product_id, sku, product_name, \
        quantity, unit_price, total, delivery_status, custom_fields) \
      SELECT u.id, u.order_id, u.position, u.product_id, u.sku, u.product_name, u.quantity, \
        u.unit_price, u.total, u.delivery_status, u.custom_fields \
      FROM UNNEST($28::uuid[], $29::uuid[], $30::int4[], $31::uuid[], $32::text[], $33::text[], \
        $34::int4[], $35::numeric[], $36::numeric[], $37::jsonb[], $56::text[]) \
        AS u(id, order_id, position, product_id, sku, product_name, quantity, unit_price, total, \
          custom_fields, delivery_status)), \
d AS (INSERT INTO deliveries (id, order_id, item_id, action_id, kind, target, payload, \
        status, next_attempt_at, purpose, revokes, last_error) \
      SELECT u.id, u.order_id, u.item_id, u.action_id, u.kind, u.target, u.payload, u.status, \
        now(), u.purpose, u.revokes, u.last_error \
      FROM UNNEST($38::uuid[], $39::uuid[], $40::uuid[], $41::uuid[], $42::text[], $43::text[], \
        $44::jsonb[], $45::text[], $46::text[], $47::uuid[], $48::text[]) \
        AS u(id, order_id, item_id, action_id, kind, target, payload, status, purpose, revokes, \
          last_error)), \
x AS (INSERT INTO outbox (queue, payload, publishing_until) \
      SELECT u.queue, u.payload, now() + $57::int8 * interval '1 millisecond' \
      FROM UNNEST($49::text[], $50::jsonb[]) AS u(queue, payload) \
      RETURNING id, queue, payload, expiration_ms, created_at), \
e AS (INSERT INTO order_events (order_id, delivery_id, kind, message, actor, data) \
      SELECT u.order_id, NULL, u.kind, u.message, u.actor, u.data \
      FROM UNNEST($51::uuid[], $52::text[], $53::text[], $54::text[], $55::jsonb[]) \
        AS u(order_id, kind, message, actor, data)), \
f AS (SELECT courier_webhook_any() OR courier_email_on('confirmation') AS triggered) \
SELECT x.id, x.queue, x.payload, x.expiration_ms, x.created_at, f.triggered FROM f LEFT JOIN x ON true";

/// Every order's column as one array (`UNNEST` turns them back into rows).
#[derive(Default)]
struct OrderColumns<'a> {
    id: Vec<Uuid>,
    order_number: Vec<&'a str>,
    status: Vec<&'static str>,
    payment_status: Vec<&'static str>,
    gateway: Vec<Option<&'a str>>,
    transaction_id: Vec<Option<&'a str>>,
    customer_name: Vec<Option<&'a str>>,
    customer_email: Vec<Option<&'a str>>,
    customer_phone: Vec<Option<&'a str>>,
    game_username: Vec<Option<&'a str>>,
    game_uuid: Vec<Option<&'a str>>,
    discord_user_id: Vec<Option<&'a str>>,
    currency: Vec<&'a str>,
    subtotal: Vec<Decimal>,
    tax: Vec<Decimal>,
    total: Vec<Decimal>,
    idempotency_key: Vec<Option<&'a str>>,
    request_hash: Vec<&'a [u8]>,
    customer_ip: Vec<Option<&'a str>>,
    discount: Vec<Decimal>,
    created_at: Vec<DateTime<Utc>>,
    item_names: Vec<String>,
    customer_ref: Vec<Option<&'a str>>,
    billing_address: Vec<Option<&'a Value>>,
    shipping_address: Vec<Option<&'a Value>>,
    process_hold: Vec<Option<&'static str>>,
    process_after: Vec<Option<DateTime<Utc>>>,
}

impl<'a> OrderColumns<'a> {
    fn push(&mut self, o: &'a OrderRow, items: &[ItemRow]) {
        self.id.push(o.id);
        self.order_number.push(&o.order_number);
        self.status.push(o.status.as_str());
        self.payment_status.push(o.payment_status.as_str());
        self.gateway.push(o.gateway.as_deref());
        self.transaction_id.push(o.transaction_id.as_deref());
        self.customer_name.push(o.customer_name.as_deref());
        self.customer_email.push(o.customer_email.as_deref());
        self.customer_phone.push(o.customer_phone.as_deref());
        self.game_username.push(o.game_username.as_deref());
        self.game_uuid.push(o.game_uuid.as_deref());
        self.discord_user_id.push(o.discord_user_id.as_deref());
        self.currency.push(&o.currency);
        self.subtotal.push(o.subtotal);
        self.tax.push(o.tax);
        self.total.push(o.total);
        self.idempotency_key.push(o.idempotency_key.as_deref());
        self.request_hash.push(&o.request_hash);
        self.customer_ip.push(o.customer_ip.as_deref());
        self.discount.push(o.discount);
        self.created_at.push(o.created_at);
        // What the order list searches by product: its items' names.
        let names: Vec<&str> = items.iter().map(|i| i.product_name.as_str()).collect();
        self.item_names.push(names.join(" "));
        self.customer_ref.push(o.customer_ref.as_deref());
        self.billing_address.push(o.billing_address.as_ref());
        self.shipping_address.push(o.shipping_address.as_ref());
        self.process_hold.push(o.process_hold.map(|h| h.as_str()));
        self.process_after.push(o.process_after);
    }
}

/// What `write` wrote besides the rows it was given.
pub struct Written {
    /// Per accept, how many of its deliveries were held.
    pub held: Vec<usize>,
    /// The outbox rows, one per queued delivery.
    pub outbox: Vec<Pending>,
    /// The statement's triggers may have written outbox rows of their own
    /// (an outbound webhook or a confirmation e-mail is configured), which
    /// only a relay's sweep publishes.
    pub triggered: bool,
}

/// A row of the statement's answer: an outbox row (absent when nothing
/// was queued) and whether the triggers may have written more.
#[derive(sqlx::FromRow)]
struct Returned {
    id: Option<i64>,
    queue: Option<String>,
    payload: Option<Value>,
    expiration_ms: Option<i64>,
    created_at: Option<DateTime<Utc>>,
    triggered: bool,
}

/// `write` for one accept, for the relays to publish: how many of its
/// deliveries were held.
pub async fn write_one(
    conn: &mut PgConnection,
    rows: AcceptRows<'_>,
) -> Result<usize, sqlx::Error> {
    Ok(write(conn, &[rows], None).await?.held.iter().sum())
}

/// Writes the rows of every accept in `batch` in one statement, all or
/// nothing; a unique violation (order number, idempotency key) is returned as
/// is for the caller to interpret. With `direct`, the outbox rows are the
/// caller's to publish for that long (`outbox::DIRECT_LEASE`) before relays
/// take them; without, relays publish them.
pub async fn write(
    conn: &mut PgConnection,
    batch: &[AcceptRows<'_>],
    direct: Option<std::time::Duration>,
) -> Result<Written, sqlx::Error> {
    let mut o = OrderColumns::default();
    let items: Vec<&ItemRow> = batch.iter().flat_map(|r| r.items).collect();
    let ds: Vec<&DeliveryRow> = batch.iter().flat_map(|r| r.deliveries).collect();
    let mut d_status = Vec::with_capacity(ds.len());
    let mut d_error = Vec::with_capacity(ds.len());
    let mut queues = Vec::with_capacity(ds.len());
    let mut messages = Vec::with_capacity(ds.len());
    let mut held = Vec::with_capacity(batch.len());
    for rows in batch {
        if let Some(order) = rows.order {
            o.push(order, rows.items);
        }
        let mut held_here = 0;
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
                    held_here += 1;
                    d_status.push(DeliveryStatus::Held.as_str());
                    d_error.push(Some(format!("not deliverable: {reason}")));
                }
            }
        }
        held.push(held_here);
    }
    let returned: Vec<Returned> = sqlx::query_as(SQL)
        .bind(o.id)
        .bind(o.order_number)
        .bind(o.status)
        .bind(o.payment_status)
        .bind(o.gateway)
        .bind(o.transaction_id)
        .bind(o.customer_name)
        .bind(o.customer_email)
        .bind(o.customer_phone)
        .bind(o.game_username)
        .bind(o.game_uuid)
        .bind(o.discord_user_id)
        .bind(o.currency)
        .bind(o.subtotal)
        .bind(o.tax)
        .bind(o.total)
        .bind(o.idempotency_key)
        .bind(o.request_hash)
        .bind(o.customer_ip)
        .bind(o.discount)
        .bind(o.created_at)
        .bind(o.item_names)
        .bind(o.customer_ref)
        .bind(o.billing_address)
        .bind(o.shipping_address)
        .bind(o.process_hold)
        .bind(o.process_after)
        .bind(items.iter().map(|i| i.id).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.order_id).collect::<Vec<_>>())
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
                .map(|i| &i.custom_fields)
                .collect::<Vec<&Value>>(),
        )
        .bind(ds.iter().map(|d| d.id).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.order_id).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.item_id).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.action_id).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.target.as_str()).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| &d.payload).collect::<Vec<&Value>>())
        .bind(d_status)
        .bind(ds.iter().map(|d| d.purpose.as_str()).collect::<Vec<_>>())
        .bind(ds.iter().map(|d| d.revokes).collect::<Vec<_>>())
        .bind(d_error)
        .bind(queues)
        .bind(messages)
        .bind(batch.iter().map(|r| r.event.order_id).collect::<Vec<_>>())
        .bind(batch.iter().map(|r| r.event.kind).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|r| r.event.message.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(batch.iter().map(|r| r.event.actor).collect::<Vec<_>>())
        .bind(batch.iter().map(|r| &r.event.data).collect::<Vec<&Value>>())
        .bind(
            items
                .iter()
                .map(|i| i.delivery_status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(direct.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        .fetch_all(conn)
        .await?;
    let triggered = returned.iter().any(|r| r.triggered);
    let outbox = returned
        .into_iter()
        .filter_map(|r| {
            Some(Pending {
                id: r.id?,
                queue: r.queue?,
                payload: r.payload?,
                expiration_ms: r.expiration_ms,
                created_at: r.created_at?,
            })
        })
        .collect();
    Ok(Written {
        held,
        outbox,
        triggered,
    })
}
