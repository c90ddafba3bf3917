//! Accepting an order: validate, render every fulfilment action, and write the
//! order, items, deliveries, timeline and outbox rows in one transaction.
//!
//! - `validate`: the checks that need no database, the order's total.
//! - `plan`: every row of an order built in memory, each action rendered.
//! - `fulfil`: a pending order paid later (a webhook, an admin's acceptance).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

mod commit;
mod fulfil;
mod plan;
mod products;
mod reads;
mod validate;

pub use self::commit::GroupCommit;
pub use self::fulfil::{Fulfilment, Processed, process_order, start_fulfilment};
use self::plan::{Plan, plan, within_limit};
pub use self::products::ProductCache;
pub use self::reads::{OrderRef, StatusReads};
pub use self::validate::{request_hash, validate};
use super::Invalid;
use super::deliverable::AcceptRules;
use crate::db::accept::{self, AcceptRows};
use crate::db::catalog::{self, Product};
use crate::db::deliveries::DeliveryRow;
use crate::db::events::NewEvent;
use crate::db::orders::{self, OrderSummary};
use crate::domain::order::ProcessHold;
use crate::error::{DbError, violated_constraint};

/// Body of `POST /v1/orders`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Where the customer is billed; shown to staff, never used to deliver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_address: Option<Address>,
    /// Where physical goods go; shown to staff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<Address>,
    pub items: Vec<NewItem>,
}

/// A postal address as the store sends it; every part optional, each at
/// most 255 characters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// State, province or county.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 (e.g. `DE`) or the country's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NewPaymentStatus {
    Paid,
    Pending,
}

fn paid() -> NewPaymentStatus {
    NewPaymentStatus::Paid
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// The buyer's IP address as the store saw it (kept as dispute evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "ip")]
    pub ip: Option<std::net::IpAddr>,
    /// The store's own id of the customer's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_ref: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Game {
    pub username: Option<String>,
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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

/// Where `create_order` writes and what it reads the products from.
pub struct AcceptWith<'a> {
    pub pool: &'a PgPool,
    pub commit: &'a GroupCommit,
    pub products: &'a ProductCache,
    pub rules: &'a AcceptRules,
}

/// Accepts an order. With an idempotency key, a repeat of the same request
/// returns the order it created (`created = false`); another body under the
/// same key is `IdempotencyConflict`. `actor` names the caller for the timeline.
pub async fn create_order(
    with: &AcceptWith<'_>,
    order: NewOrder,
    idempotency_key: Option<&str>,
    actor: &str,
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
    let skus: Vec<String> = order.items.iter().map(|i| i.product.clone()).collect();
    let products = with.products.products(with.pool, &skus).await?;
    match accept_planned(with, &order, &products, idempotency_key, actor).await {
        // Planned from a product saved anew since it was kept (its actions
        // have new ids): plan again from what is stored.
        Err(CreateOrderError::Db(DbError::Sqlx(e)))
            if violated_constraint(&e) == Some("deliveries_action_id_fkey") =>
        {
            with.products.invalidate();
            let products = with.products.products(with.pool, &skus).await?;
            accept_planned(with, &order, &products, idempotency_key, actor).await
        }
        answer => answer,
    }
}

async fn accept_planned(
    with: &AcceptWith<'_>,
    order: &NewOrder,
    products: &HashMap<String, Product>,
    idempotency_key: Option<&str>,
    actor: &str,
) -> Result<Accepted, CreateOrderError> {
    let (pool, commit, rules) = (with.pool, with.commit, with.rules);
    let hash = request_hash(order);
    // A repeat of an accepted request is found by the insert's unique
    // violation, not by a read before every insert; a repeat that no longer
    // plans (the product changed since) still gets the order it created.
    let hold = hold_of(order, products, rules);
    let plan_it = || {
        plan(order, products, idempotency_key, &hash, None)
            .map(|p| p.held(hold).started(&HashMap::new()))
            .map_err(Into::into)
    };
    let mut planned = deliverable(order, products, rules)
        .and_then(|()| within_limit(order, products, rules))
        .and_then(|()| plan_it());
    for _ in 0..3 {
        let plan = match planned {
            Ok(plan) => plan,
            Err(e) => {
                if let Some(key) = idempotency_key
                    && let Some(existing) = replay(pool, key, &hash).await?
                {
                    return Ok(existing);
                }
                return Err(e);
            }
        };
        // Refused above if anything could not be delivered: nothing is held.
        // Written with the orders accepted at the same moment (`commit`).
        match commit.write(plan, idempotency_key, actor).await {
            // Answered from what was written, not read back.
            Ok(plan) => {
                return Ok(Accepted {
                    order: plan.summary(),
                    created: true,
                });
            }
            Err(e) if violated_constraint(&e) == Some("orders_order_number_key") => {
                planned = plan_it();
            }
            Err(e) if violated_constraint(&e) == Some("orders_idempotency_key_key") => {
                // Accepted before (a retry), or a concurrent request with the same key won.
                let key = idempotency_key.unwrap_or_default();
                return replay(pool, key, &hash)
                    .await?
                    .ok_or_else(|| DbError::Corrupt("idempotent order vanished".into()).into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(DbError::Corrupt("could not allocate a unique order number".into()).into())
}

/// Whether a paid order of these products waits before its deliveries
/// start, and until when: `manual` when any product's (or the store's)
/// auto-processing is off; otherwise `delayed` by the longest process delay
/// of its products; `None` to start at once.
pub(super) fn hold_of(
    order: &NewOrder,
    products: &HashMap<String, Product>,
    rules: &AcceptRules,
) -> Option<(ProcessHold, Option<DateTime<Utc>>)> {
    if order.payment_status != NewPaymentStatus::Paid {
        return None;
    }
    hold_for(
        order.items.iter().map(|i| i.product.as_str()),
        products,
        rules,
    )
}

/// `hold_of` for the products of these SKUs (a stored order being paid).
pub(super) fn hold_for<'a>(
    skus: impl Iterator<Item = &'a str>,
    products: &HashMap<String, Product>,
    rules: &AcceptRules,
) -> Option<(ProcessHold, Option<DateTime<Utc>>)> {
    let mut delay = 0;
    for sku in skus {
        let Some(p) = products.get(sku) else {
            continue;
        };
        if !p.processing.auto_process.unwrap_or(rules.auto_process) {
            return Some((ProcessHold::Manual, None));
        }
        delay = delay.max(
            p.processing
                .process_delay_secs
                .unwrap_or(rules.process_delay_secs),
        );
    }
    (delay > 0).then(|| {
        (
            ProcessHold::Delayed,
            Some(Utc::now() + chrono::Duration::seconds(i64::from(delay))),
        )
    })
}

/// What the timeline says of an accepted or paid order's start.
pub(super) fn start_message(
    queued: usize,
    hold: Option<ProcessHold>,
    after: Option<DateTime<Utc>>,
) -> String {
    match (hold, after) {
        (Some(ProcessHold::Manual), _) => "waiting for an admin to process it".to_owned(),
        (Some(ProcessHold::Delayed), Some(at)) => {
            format!("its deliveries start at {}", at.to_rfc3339())
        }
        _ => format!("{queued} deliveries queued"),
    }
}

/// Refuses an order for a product this installation cannot deliver now.
fn deliverable(
    order: &NewOrder,
    products: &HashMap<String, Product>,
    rules: &AcceptRules,
) -> Result<(), CreateOrderError> {
    let cannot = undeliverable(products, rules);
    for (i, item) in order.items.iter().enumerate() {
        let Some(product) = products.get(&item.product) else {
            continue;
        };
        if let Some(reason) = product.actions.iter().find_map(|a| cannot.get(&a.id)) {
            return Err(CreateOrderError::NotDeliverable(Invalid::new(
                format!("items[{i}].product"),
                format!("product `{}` cannot be delivered: {reason}", product.sku),
            )));
        }
    }
    Ok(())
}

/// The actions of these products this installation cannot run now (by
/// action id, with why): checked once per action, not per delivery.
pub(super) fn undeliverable(
    products: &HashMap<String, Product>,
    rules: &AcceptRules,
) -> HashMap<Uuid, String> {
    products
        .values()
        .flat_map(|p| &p.actions)
        .filter_map(|a| rules.check_action(&a.config).err().map(|why| (a.id, why)))
        .collect()
}

/// The products an order names, by SKU (unknown SKUs are simply absent).
pub(super) async fn products_of(
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

/// The rows of a planned order — the order, items, deliveries, outbox rows
/// and the timeline entry — for `db::accept`.
fn rows_of<'a>(
    plan: &'a Plan,
    idempotency_key: Option<&str>,
    actor: &'a str,
    held: &'a HashMap<Uuid, String>,
) -> AcceptRows<'a> {
    let o = &plan.order;
    AcceptRows {
        order: Some(o),
        items: &plan.items,
        deliveries: &plan.deliveries,
        held,
        event: NewEvent {
            order_id: o.id,
            delivery_id: None,
            kind: "order.created",
            message: format!(
                "order accepted ({} {}, payment {}), {}",
                o.total,
                o.currency,
                o.payment_status,
                start_message(plan.deliveries.len(), o.process_hold, o.process_after)
            ),
            actor,
            data: json!({ "idempotency_key": idempotency_key }),
        },
    }
}

/// Writes a planned order in one statement (`db::accept`), alerting an
/// admin when deliveries were held.
async fn write_plan(
    conn: &mut PgConnection,
    plan: &Plan,
    idempotency_key: Option<&str>,
    actor: &str,
    held: &HashMap<Uuid, String>,
) -> Result<(), sqlx::Error> {
    let o = &plan.order;
    let held_count =
        accept::write_one(&mut *conn, rows_of(plan, idempotency_key, actor, held)).await?;
    alert_held(
        conn,
        o.id,
        &o.order_number,
        &plan.deliveries,
        held,
        held_count,
    )
    .await
}

/// One admin alert per order whose deliveries were held at accept (see
/// `undeliverable`).
pub(super) async fn alert_held(
    conn: &mut PgConnection,
    order_id: Uuid,
    order_number: &str,
    rows: &[DeliveryRow],
    held: &HashMap<Uuid, String>,
    held_count: usize,
) -> Result<(), sqlx::Error> {
    if held_count == 0 {
        return Ok(());
    }
    let Some(reason) = rows
        .iter()
        .find_map(|d| d.action_id.and_then(|a| held.get(&a)))
    else {
        return Ok(());
    };
    crate::db::keys::alert(
        conn,
        "undeliverable_order",
        &format!(
            "order {order_number} was paid, but {reason}; its deliveries are held: fix the configuration, then retry them"
        ),
        &order_id.to_string(),
    )
    .await
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
    let held = undeliverable(&products, rules);
    let plan = plan(order, &products, idempotency_key, &hash, None)?
        .held(hold_of(order, &products, rules))
        .started(&held);
    write_plan(conn, &plan, idempotency_key, actor, &held).await?;
    Ok(plan.order.id)
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
