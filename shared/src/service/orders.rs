//! Accepting an order: validate, render every fulfilment action, and write the
//! order, items, deliveries, timeline and outbox rows in one transaction.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::Invalid;
use super::deliverable::AcceptRules;
use crate::db::catalog::{self, Product};
use crate::db::deliveries::{self, DeliveryRow};
use crate::db::events::{self, NewEvent};
use crate::db::orders::{self, ItemRow, ItemSummary, OrderRow, OrderSummary};
use crate::db::outbox;
use crate::domain::action::{ActionConfig, DiscordPayload, RconPayload, SupplierKeyPayload};
use crate::domain::delivery::Purpose;
use crate::domain::ids;
use crate::domain::order::{OrderStatus, PaymentStatus};
use crate::domain::template::Template;
use crate::error::{DbError, violated_constraint};

/// Body of `POST /v1/orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// `paid` (fulfilment starts now) or `pending` (awaiting payment).
    #[serde(default = "paid")]
    pub payment_status: NewPaymentStatus,
    /// ISO 4217, e.g. `USD`.
    pub currency: String,
    #[serde(default, with = "rust_decimal::serde::str")]
    pub tax: Decimal,
    /// Coupons and other reductions: total = items − discount + tax.
    #[serde(
        default,
        with = "rust_decimal::serde::str",
        skip_serializing_if = "Decimal::is_zero"
    )]
    pub discount: Decimal,
    /// What the gateway took, in `currency`. When given with a `paid` order it
    /// must equal the order's total: the API refuses another amount (422), a
    /// payment webhook records it as a mismatched payment for an admin.
    #[serde(
        default,
        with = "rust_decimal::serde::str_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub amount_paid: Option<Decimal>,
    pub gateway: Option<String>,
    pub transaction_id: Option<String>,
    #[serde(default)]
    pub customer: Customer,
    #[serde(default)]
    pub game: Game,
    pub discord_user_id: Option<String>,
    pub items: Vec<NewItem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NewPaymentStatus {
    Paid,
    Pending,
}

fn paid() -> NewPaymentStatus {
    NewPaymentStatus::Paid
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// The buyer's IP address as the store saw it (kept as dispute evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Game {
    pub username: Option<String>,
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// The product's SKU.
    pub product: String,
    pub quantity: i32,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    #[serde(default)]
    pub custom_fields: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateOrderError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A product this installation cannot deliver any more (configuration
    /// removed since it was saved).
    #[error("{0}")]
    NotDeliverable(Invalid),
    #[error(
        "this order plans {planned} deliveries; at most {limit} are allowed per order (api.max_deliveries_per_order)"
    )]
    TooManyDeliveries { planned: usize, limit: usize },
    #[error("the Idempotency-Key was already used with a different request body")]
    IdempotencyConflict,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for CreateOrderError {
    fn from(e: sqlx::Error) -> Self {
        CreateOrderError::Db(e.into())
    }
}

/// What `create_order` did.
#[derive(Debug)]
pub struct Accepted {
    pub order: OrderSummary,
    /// False when an earlier request with the same idempotency key created it.
    pub created: bool,
}

const MAX_ITEMS: usize = 100;
const MAX_QUANTITY: i32 = 10_000;
const MAX_TEXT: usize = 255;
/// Custom fields per item: how many, and the size of each key and value.
const MAX_CUSTOM_FIELDS: usize = 20;
const MAX_CUSTOM_KEY: usize = 64;
const MAX_CUSTOM_VALUE: usize = 1024;

fn text(field: &str, value: &Option<String>) -> Result<(), Invalid> {
    value
        .as_deref()
        .map_or(Ok(()), |v| super::check_text(field, v, MAX_TEXT))
}

fn money(field: &str, value: Decimal) -> Result<(), Invalid> {
    if value.is_sign_negative() {
        return Err(Invalid::new(field, "must not be negative"));
    }
    if value.scale() > 4 {
        return Err(Invalid::new(field, "must have at most 4 decimal places"));
    }
    if value > Decimal::from(1_000_000_000) {
        return Err(Invalid::new(field, "is unreasonably large"));
    }
    Ok(())
}

/// Checks everything that does not need the database.
pub fn validate(order: &NewOrder) -> Result<(), Invalid> {
    if order.currency.len() != 3 || !order.currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(Invalid::new(
            "currency",
            "must be a three-letter ISO 4217 code in capitals, e.g. USD",
        ));
    }
    money("tax", order.tax)?;
    money("discount", order.discount)?;
    if let Some(paid) = order.amount_paid {
        money("amount_paid", paid)?;
    }
    text("gateway", &order.gateway)?;
    text("transaction_id", &order.transaction_id)?;
    text("customer.name", &order.customer.name)?;
    text("customer.phone", &order.customer.phone)?;
    text("customer.email", &order.customer.email)?;
    if let Some(email) = &order.customer.email {
        let parts: Vec<&str> = email.split('@').collect();
        if parts.len() != 2 || parts[0].is_empty() || !parts[1].contains('.') {
            return Err(Invalid::new("customer.email", "is not an email address"));
        }
    }
    if let Some(name) = &order.game.username
        && (name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(Invalid::new(
            "game.username",
            "must be 1 to 32 letters, digits, '_', '.' or '-'",
        ));
    }
    if let Some(uuid) = &order.game.uuid
        && Uuid::parse_str(uuid).is_err()
    {
        return Err(Invalid::new("game.uuid", "is not a UUID"));
    }
    if let Some(id) = &order.discord_user_id
        && (id.is_empty() || id.len() > 20 || !id.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(Invalid::new(
            "discord_user_id",
            "must be a Discord snowflake (digits)",
        ));
    }
    if order.items.is_empty() {
        return Err(Invalid::new("items", "an order needs at least one item"));
    }
    if order.items.len() > MAX_ITEMS {
        return Err(Invalid::new(
            "items",
            format!("at most {MAX_ITEMS} items per order"),
        ));
    }
    for (i, item) in order.items.iter().enumerate() {
        if item.product.is_empty() || item.product.len() > 64 {
            return Err(Invalid::new(
                format!("items[{i}].product"),
                "must name a product SKU (at most 64 characters)",
            ));
        }
        super::check_text(&format!("items[{i}].product"), &item.product, 64)?;
        if item.custom_fields.len() > MAX_CUSTOM_FIELDS {
            return Err(Invalid::new(
                format!("items[{i}].custom_fields"),
                format!("at most {MAX_CUSTOM_FIELDS} fields"),
            ));
        }
        for (key, value) in &item.custom_fields {
            let field = format!("items[{i}].custom_fields");
            if key.is_empty() || key.chars().count() > MAX_CUSTOM_KEY {
                return Err(Invalid::new(
                    field,
                    format!("keys must be 1 to {MAX_CUSTOM_KEY} characters"),
                ));
            }
            let size = match value {
                Value::String(s) => s.chars().count(),
                other => other.to_string().len(),
            };
            if size > MAX_CUSTOM_VALUE {
                return Err(Invalid::new(
                    format!("{field}.{key}"),
                    format!("must be at most {MAX_CUSTOM_VALUE} characters"),
                ));
            }
        }
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(Invalid::new(
                format!("items[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
        money(&format!("items[{i}].unit_price"), item.unit_price)?;
    }
    Ok(())
}

impl NewOrder {
    /// Items (unit price × quantity) − discount + tax.
    pub fn total(&self) -> Decimal {
        let items: Decimal = self
            .items
            .iter()
            .map(|i| i.unit_price * Decimal::from(i.quantity))
            .sum();
        items - self.discount + self.tax
    }
}

/// SHA-256 of the request as parsed, so formatting differences do not count as
/// a different body but any change of content does.
pub fn request_hash(order: &NewOrder) -> Vec<u8> {
    let canonical = serde_json::to_vec(order).unwrap_or_default();
    Sha256::digest(&canonical).to_vec()
}

/// Accepts an order. With an idempotency key, a repeat of the same request
/// returns the order it created (`created = false`); another body under the
/// same key is `IdempotencyConflict`. `actor` names the caller for the timeline.
pub async fn create_order(
    pool: &PgPool,
    order: NewOrder,
    idempotency_key: Option<&str>,
    actor: &str,
    rules: &AcceptRules,
) -> Result<Accepted, CreateOrderError> {
    validate(&order)?;
    if order.payment_status == NewPaymentStatus::Paid
        && let Some(paid) = order.amount_paid
        && paid != order.total()
    {
        return Err(Invalid::new(
            "amount_paid",
            format!(
                "{paid} {} does not pay the order's total of {} {}",
                order.currency,
                order.total(),
                order.currency
            ),
        )
        .into());
    }
    let hash = request_hash(&order);
    if let Some(key) = idempotency_key
        && let Some(existing) = replay(pool, key, &hash).await?
    {
        return Ok(existing);
    }

    let mut conn = pool.acquire().await?;
    let products = products_of(&mut conn, &order).await?;
    drop(conn);
    deliverable(&order, &products, rules)?;
    within_limit(&order, &products, rules)?;

    for _ in 0..3 {
        let plan = plan(&order, &products, idempotency_key, &hash, None)?;
        let mut tx = pool.begin().await?;
        match orders::insert_order(&mut tx, &plan.order).await {
            Ok(()) => {}
            Err(e) if violated_constraint(&e) == Some("orders_order_number_key") => continue,
            Err(e) if violated_constraint(&e) == Some("orders_idempotency_key_key") => {
                drop(tx);
                // A concurrent request with the same key won the race.
                let key = idempotency_key.unwrap_or_default();
                return replay(pool, key, &hash)
                    .await?
                    .ok_or_else(|| DbError::Corrupt("idempotent order vanished".into()).into());
            }
            Err(e) => return Err(e.into()),
        }
        insert_plan(&mut tx, &plan, idempotency_key, actor, rules).await?;
        tx.commit().await?;
        // Answered from what was written, not read back.
        return Ok(Accepted {
            order: plan.summary(),
            created: true,
        });
    }
    Err(DbError::Corrupt("could not allocate a unique order number".into()).into())
}

/// Refuses an order for a product this installation cannot deliver now.
fn deliverable(
    order: &NewOrder,
    products: &HashMap<String, Product>,
    rules: &AcceptRules,
) -> Result<(), CreateOrderError> {
    for (i, item) in order.items.iter().enumerate() {
        let Some(product) = products.get(&item.product) else {
            continue;
        };
        for action in &product.actions {
            rules.check_action(&action.config).map_err(|reason| {
                CreateOrderError::NotDeliverable(Invalid::new(
                    format!("items[{i}].product"),
                    format!("product `{}` cannot be delivered: {reason}", product.sku),
                ))
            })?;
        }
    }
    Ok(())
}

/// The products an order names, by SKU (unknown SKUs are simply absent).
async fn products_of(
    conn: &mut PgConnection,
    order: &NewOrder,
) -> Result<HashMap<String, Product>, DbError> {
    let skus: Vec<String> = order.items.iter().map(|i| i.product.clone()).collect();
    Ok(catalog::products_by_sku(conn, &skus)
        .await?
        .into_iter()
        .map(|p| (p.sku.clone(), p))
        .collect())
}

/// Writes the items, deliveries, outbox rows and the timeline entry of a
/// planned order whose order row is already inserted.
async fn insert_plan(
    conn: &mut PgConnection,
    plan: &Plan,
    idempotency_key: Option<&str>,
    actor: &str,
    rules: &AcceptRules,
) -> Result<(), sqlx::Error> {
    for item in &plan.items {
        orders::insert_item(conn, item).await?;
    }
    insert_deliveries(conn, &plan.order.order_number, &plan.deliveries, rules).await?;
    let o = &plan.order;
    events::record(
        conn,
        NewEvent {
            order_id: o.id,
            delivery_id: None,
            kind: "order.created",
            message: format!(
                "order accepted ({} {}, payment {}), {} deliveries queued",
                o.total,
                o.currency,
                o.payment_status,
                plan.deliveries.len()
            ),
            actor,
            data: json!({ "idempotency_key": idempotency_key }),
        },
    )
    .await
}

/// Queues the deliveries; one this installation cannot run now is parked
/// `held` with the reason instead (and one admin alert per order says so).
async fn insert_deliveries(
    conn: &mut PgConnection,
    order_number: &str,
    rows: &[DeliveryRow],
    rules: &AcceptRules,
) -> Result<(), sqlx::Error> {
    let mut held = None;
    for d in rows {
        match rules.check_delivery(d.kind, &d.payload) {
            Ok(()) => {
                deliveries::insert(conn, d).await?;
                outbox::enqueue_job(conn, d.id, d.kind).await?;
            }
            Err(reason) => {
                deliveries::insert_held(conn, d, &format!("not deliverable: {reason}")).await?;
                held.get_or_insert((d.order_id, reason));
            }
        }
    }
    if let Some((order_id, reason)) = held {
        crate::db::keys::alert(
            conn,
            "undeliverable_order",
            &format!(
                "order {order_number} was paid, but {reason}; its deliveries are held: fix the configuration, then retry them"
            ),
            &order_id.to_string(),
        )
        .await?;
    }
    Ok(())
}

/// Accepts an order inside the caller's transaction (a payment webhook, whose
/// event row must commit with it). Returns the new order's id. Unlike
/// `create_order` there is no retry on an order-number collision: the
/// transaction fails and the gateway re-sends the event.
///
/// A product this installation cannot deliver does not refuse the order
/// (it is paid): its deliveries are held for an admin, with an alert.
pub async fn create_order_in(
    conn: &mut PgConnection,
    order: &NewOrder,
    idempotency_key: Option<&str>,
    actor: &str,
    rules: &AcceptRules,
) -> Result<Uuid, CreateOrderError> {
    validate(order)?;
    let hash = request_hash(order);
    let products = products_of(conn, order).await?;
    within_limit(order, &products, rules)?;
    let plan = plan(order, &products, idempotency_key, &hash, None)?;
    orders::insert_order(conn, &plan.order).await?;
    insert_plan(conn, &plan, idempotency_key, actor, rules).await?;
    Ok(plan.order.id)
}

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
            insert_deliveries(conn, &number, &plan.deliveries, rules).await?;
            events::record(
                conn,
                NewEvent {
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
            )
            .await?;
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

async fn replay(
    pool: &PgPool,
    key: &str,
    hash: &[u8],
) -> Result<Option<Accepted>, CreateOrderError> {
    let mut conn = pool.acquire().await?;
    let Some((id, stored)) = orders::find_by_idempotency_key(&mut conn, key).await? else {
        return Ok(None);
    };
    if stored != hash {
        return Err(CreateOrderError::IdempotencyConflict);
    }
    let order = orders::load_summary(&mut conn, id)
        .await?
        .ok_or_else(|| DbError::Corrupt("idempotent order vanished".into()))?;
    Ok(Some(Accepted {
        order,
        created: false,
    }))
}

struct Plan {
    order: OrderRow,
    items: Vec<ItemRow>,
    deliveries: Vec<DeliveryRow>,
}

/// How many deliveries `quantity` units of `product` plan: a key product
/// one per unit per key action, any other action one per item.
fn deliveries_of(product: &Product, quantity: i32) -> usize {
    product
        .actions
        .iter()
        .map(|a| match a.config {
            ActionConfig::SupplierKey { .. } => usize::try_from(quantity).unwrap_or(0),
            _ => 1,
        })
        .sum()
}

/// Refuses an order over `api.max_deliveries_per_order`, counted before
/// anything is rendered (so a huge order never builds its rows).
fn within_limit(
    order: &NewOrder,
    products: &HashMap<String, Product>,
    rules: &AcceptRules,
) -> Result<(), CreateOrderError> {
    let planned = order
        .items
        .iter()
        .filter_map(|i| {
            products
                .get(&i.product)
                .map(|p| deliveries_of(p, i.quantity))
        })
        .sum();
    if planned > rules.max_deliveries {
        return Err(CreateOrderError::TooManyDeliveries {
            planned,
            limit: rules.max_deliveries,
        });
    }
    Ok(())
}

impl Plan {
    fn summary(&self) -> OrderSummary {
        let o = &self.order;
        OrderSummary {
            id: o.id,
            order_number: o.order_number.clone(),
            status: o.status,
            payment_status: o.payment_status,
            gateway: o.gateway.clone(),
            transaction_id: o.transaction_id.clone(),
            currency: o.currency.clone(),
            subtotal: o.subtotal,
            discount: o.discount,
            tax: o.tax,
            total: o.total,
            created_at: o.created_at,
            deliveries_queued: self.deliveries.len(),
            items: self
                .items
                .iter()
                .map(|i| ItemSummary {
                    id: i.id,
                    position: i.position,
                    product: i.sku.clone(),
                    product_name: i.product_name.clone(),
                    quantity: i.quantity,
                    unit_price: i.unit_price,
                    total: i.total,
                    delivery_status: crate::domain::order::ItemStatus::Pending,
                    deliveries: self
                        .deliveries
                        .iter()
                        .filter(|d| d.item_id == Some(i.id))
                        .count(),
                })
                .collect(),
        }
    }
}

/// Builds every row in memory, rendering each action; fails with the field at
/// fault before anything is written.
///
/// `existing` gives the ids of an order already stored (a pending order being
/// paid): its deliveries are planned with them.
fn plan(
    order: &NewOrder,
    products: &HashMap<String, Product>,
    idempotency_key: Option<&str>,
    hash: &[u8],
    existing: Option<(Uuid, String, Vec<Uuid>)>,
) -> Result<Plan, Invalid> {
    let (order_id, order_number, item_ids) = match existing {
        Some((id, number, items)) => (id, number, Some(items)),
        None => (Uuid::new_v4(), ids::new_order_number(), None),
    };
    let paid = order.payment_status == NewPaymentStatus::Paid;
    let mut items = Vec::with_capacity(order.items.len());
    let mut rows = Vec::new();
    let mut subtotal = Decimal::ZERO;
    for (i, item) in order.items.iter().enumerate() {
        let product = products.get(&item.product).ok_or_else(|| {
            Invalid::new(
                format!("items[{i}].product"),
                format!("no product with SKU `{}`", item.product),
            )
        })?;
        let total = item.unit_price * Decimal::from(item.quantity);
        subtotal += total;
        let item_id = item_ids
            .as_ref()
            .and_then(|ids| ids.get(i).copied())
            .unwrap_or_else(Uuid::new_v4);
        items.push(ItemRow {
            id: item_id,
            order_id,
            position: i32::try_from(i).unwrap_or(i32::MAX),
            product_id: product.id,
            sku: product.sku.clone(),
            product_name: product.name.clone(),
            quantity: item.quantity,
            unit_price: item.unit_price,
            total,
            custom_fields: Value::Object(item.custom_fields.clone()),
        });
        for action in &product.actions {
            // A key product delivers one key per unit, each its own delivery.
            let units = match action.config {
                ActionConfig::SupplierKey { .. } => item.quantity,
                _ => 1,
            };
            for _unit in 0..units {
                let delivery_id = Uuid::new_v4();
                let values = HashMap::from([
                    ("username", order.game.username.clone().unwrap_or_default()),
                    ("uuid", order.game.uuid.clone().unwrap_or_default()),
                    ("quantity", item.quantity.to_string()),
                    ("order_number", order_number.clone()),
                    ("order_id", order_id.to_string()),
                    ("email", order.customer.email.clone().unwrap_or_default()),
                    (
                        "discord_user_id",
                        order.discord_user_id.clone().unwrap_or_default(),
                    ),
                    ("sku", product.sku.clone()),
                    ("delivery_id", delivery_id.to_string()),
                ]);
                let (target, payload) = match &action.config {
                    ActionConfig::Rcon {
                        game_server_id,
                        command,
                        on_ambiguous,
                        require_online,
                        revoke_command,
                        chargeback_command,
                    } => {
                        let render = |template: &str| {
                            Template::parse(template)
                                .map_err(|e| {
                                    Invalid::new(
                                        format!("items[{i}].product"),
                                        format!(
                                            "product `{}` has an invalid command: {e}",
                                            product.sku
                                        ),
                                    )
                                })?
                                .render(&values)
                                .map_err(|e| {
                                    let field = match &e {
                                        crate::domain::template::RenderError::Missing {
                                            field,
                                            ..
                                        }
                                        | crate::domain::template::RenderError::Unsafe {
                                            field,
                                            ..
                                        } => *field,
                                    };
                                    let field = if field.starts_with("items[]") {
                                        format!("items[{i}]")
                                    } else {
                                        field.to_owned()
                                    };
                                    Invalid::new(field, e.to_string())
                                })
                        };
                        let payload = RconPayload {
                            game_server_id: *game_server_id,
                            command: render(command)?,
                            on_ambiguous: *on_ambiguous,
                            require_online: if *require_online {
                                let name = order.game.username.clone().ok_or_else(|| {
                                    Invalid::new(
                                        "game.username",
                                        "is required: the product checks the player is online",
                                    )
                                })?;
                                Some(name)
                            } else {
                                None
                            },
                            revoke_command: revoke_command.as_deref().map(render).transpose()?,
                            chargeback_command: chargeback_command
                                .as_deref()
                                .map(render)
                                .transpose()?,
                        };
                        (
                            game_server_id.to_string(),
                            serde_json::to_value(payload).unwrap_or_default(),
                        )
                    }
                    ActionConfig::DiscordRole { guild_id, role_id } => {
                        let user_id = order.discord_user_id.clone().ok_or_else(|| {
                            Invalid::new(
                                "discord_user_id",
                                format!(
                                    "is required: product `{}` gives a Discord role",
                                    product.sku
                                ),
                            )
                        })?;
                        let payload = DiscordPayload {
                            guild_id: guild_id.clone(),
                            role_id: role_id.clone(),
                            user_id,
                            revoke: false,
                        };
                        (
                            guild_id.clone(),
                            serde_json::to_value(payload).unwrap_or_default(),
                        )
                    }
                    ActionConfig::SupplierKey {
                        candidates,
                        low_stock_threshold,
                        ..
                    } => {
                        let payload = SupplierKeyPayload {
                            product_id: product.id,
                            item_id,
                            candidates: candidates.clone(),
                            low_stock_threshold: *low_stock_threshold,
                        };
                        let target = candidates
                            .first()
                            .map_or_else(|| "stock".to_owned(), |c| c.supplier.clone());
                        (target, serde_json::to_value(payload).unwrap_or_default())
                    }
                };
                if paid {
                    rows.push(DeliveryRow {
                        id: delivery_id,
                        order_id,
                        item_id: Some(item_id),
                        action_id: Some(action.id),
                        kind: action.config.kind(),
                        purpose: Purpose::Deliver,
                        revokes: None,
                        target,
                        payload,
                    });
                }
            }
        }
    }
    money("subtotal", subtotal)?;
    if order.discount > subtotal {
        return Err(Invalid::new(
            "discount",
            format!("is more than the items' subtotal {subtotal}"),
        ));
    }
    let total = subtotal - order.discount + order.tax;
    Ok(Plan {
        order: OrderRow {
            id: order_id,
            order_number,
            status: OrderStatus::Pending,
            payment_status: if paid {
                PaymentStatus::Paid
            } else {
                PaymentStatus::Pending
            },
            gateway: order.gateway.clone(),
            transaction_id: order.transaction_id.clone(),
            customer_name: order.customer.name.clone(),
            customer_email: order.customer.email.clone(),
            customer_phone: order.customer.phone.clone(),
            customer_ip: order.customer.ip.map(|ip| ip.to_string()),
            game_username: order.game.username.clone(),
            game_uuid: order.game.uuid.clone(),
            discord_user_id: order.discord_user_id.clone(),
            currency: order.currency.clone(),
            subtotal,
            discount: order.discount,
            tax: order.tax,
            total,
            idempotency_key: idempotency_key.map(str::to_owned),
            request_hash: hash.to_vec(),
            created_at: chrono::Utc::now(),
        },
        items,
        deliveries: rows,
    })
}
