//! Orders and their items: inserts at accept time and the read model of
//! `GET /v1/orders/{id}`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::delivery::{AttemptOutcome, DeliveryKind, DeliveryStatus, Purpose};
use crate::domain::order::{ItemStatus, OrderStatus, PaymentStatus};
use crate::error::DbError;

/// The columns of a new order.
#[derive(Debug, Clone)]
pub struct OrderRow {
    pub id: Uuid,
    pub order_number: String,
    pub status: OrderStatus,
    pub payment_status: PaymentStatus,
    pub gateway: Option<String>,
    pub transaction_id: Option<String>,
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    pub customer_phone: Option<String>,
    pub customer_ip: Option<String>,
    pub game_username: Option<String>,
    pub game_uuid: Option<String>,
    pub discord_user_id: Option<String>,
    pub currency: String,
    pub subtotal: Decimal,
    pub discount: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
    pub idempotency_key: Option<String>,
    pub request_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub customer_ref: Option<String>,
    pub billing_address: Option<Value>,
    pub shipping_address: Option<Value>,
    /// Set when a paid order waits before its deliveries start.
    pub process_hold: Option<crate::domain::order::ProcessHold>,
    pub process_after: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct ItemRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub position: i32,
    pub product_id: Uuid,
    pub sku: String,
    pub product_name: String,
    pub quantity: i32,
    pub unit_price: Decimal,
    pub total: Decimal,
    pub custom_fields: Value,
    /// `pending`, or `processing` when it is accepted with a queued delivery
    /// (`service::orders` decides; see `Plan::started`).
    pub delivery_status: crate::domain::order::ItemStatus,
}

/// What `POST /v1/orders` answers: the order and a summary per item, small
/// whatever the number of deliveries (read them with `GET /v1/orders/{id}`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderSummary {
    pub id: Uuid,
    pub order_number: String,
    pub status: OrderStatus,
    pub payment_status: PaymentStatus,
    pub gateway: Option<String>,
    pub transaction_id: Option<String>,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub discount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub tax: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    pub created_at: DateTime<Utc>,
    pub items: Vec<ItemSummary>,
    /// Deliveries of the whole order (none until it is paid and processed).
    pub deliveries_queued: usize,
    /// Paid, but waiting before its deliveries start: `manual` (until an
    /// admin processes it) or `delayed` (until `process_after`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_hold: Option<crate::domain::order::ProcessHold>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_after: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ItemSummary {
    pub id: Uuid,
    pub position: i32,
    #[sqlx(rename = "sku")]
    pub product: String,
    pub product_name: String,
    pub quantity: i32,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    #[sqlx(try_from = "String")]
    pub delivery_status: ItemStatus,
    /// This item's deliveries (none until the order is paid).
    pub deliveries: i64,
}

/// The summary of a stored order (an idempotent repeat of its request).
pub async fn load_summary(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<OrderSummary>, DbError> {
    let Some(o) = sqlx::query(
        "SELECT id, order_number, status, payment_status, gateway, transaction_id, currency, \
           subtotal, discount, tax, total, created_at, process_hold, process_after \
         FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let items: Vec<ItemSummary> = sqlx::query_as(
        "SELECT i.id, i.position, i.sku, i.product_name, i.quantity, i.unit_price, i.total, \
           i.delivery_status, (SELECT count(*) FROM deliveries d WHERE d.item_id = i.id \
             AND d.purpose = 'deliver') AS deliveries \
         FROM order_items i WHERE i.order_id = $1 ORDER BY i.position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(OrderSummary {
        id,
        order_number: o.try_get("order_number")?,
        status: parse(&o, "status")?,
        payment_status: parse(&o, "payment_status")?,
        gateway: o.try_get("gateway")?,
        transaction_id: o.try_get("transaction_id")?,
        currency: o.try_get::<String, _>("currency")?.trim().to_owned(),
        subtotal: o.try_get("subtotal")?,
        discount: o.try_get("discount")?,
        tax: o.try_get("tax")?,
        total: o.try_get("total")?,
        created_at: o.try_get("created_at")?,
        deliveries_queued: items
            .iter()
            .map(|i| usize::try_from(i.deliveries).unwrap_or(0))
            .sum(),
        process_hold: o
            .try_get::<Option<String>, _>("process_hold")?
            .map(|h| h.parse())
            .transpose()?,
        process_after: o.try_get("process_after")?,
        items,
    }))
}

/// The id and request hash stored under an idempotency key.
pub async fn find_by_idempotency_key(
    conn: &mut PgConnection,
    key: &str,
) -> Result<Option<(Uuid, Vec<u8>)>, sqlx::Error> {
    let row = sqlx::query("SELECT id, request_hash FROM orders WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok((
            r.try_get("id")?,
            r.try_get::<Option<Vec<u8>>, _>("request_hash")?
                .unwrap_or_default(),
        ))
    })
    .transpose()
}

/// What a client polling an order reads: the order's own row, nothing
/// joined (`GET /v1/orders/{id}`; `?expand=full` gives the whole `OrderView`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OrderStatusView {
    pub id: Uuid,
    pub order_number: String,
    #[sqlx(try_from = "String")]
    pub status: OrderStatus,
    #[sqlx(try_from = "String")]
    pub payment_status: PaymentStatus,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub discount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub tax: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub refunded_amount: Decimal,
    /// Why the payment was not applied (`payment_status: mismatched`).
    pub payment_issue: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The orders' own rows (what a client polling them reads), by id or by
/// order number, many in one indexed statement: those among `ids` and
/// `numbers` that exist, in no particular order.
pub async fn load_statuses(
    conn: &mut PgConnection,
    ids: &[Uuid],
    numbers: &[String],
) -> Result<Vec<OrderStatusView>, DbError> {
    // Two index scans, not one `OR`: with the `OR`, Postgres filtered a
    // sequential scan of `orders` once the table grew under ingest.
    macro_rules! select {
        () => {
            "SELECT id, order_number, status, payment_status, trim(currency) AS currency, \
             subtotal, discount, tax, total, refunded_amount, payment_issue, created_at, \
             updated_at, paid_at, completed_at, revoked_at FROM orders "
        };
    }
    Ok(sqlx::query_as(concat!(
        select!(),
        "WHERE id = ANY($1) UNION ALL ",
        select!(),
        "WHERE order_number = ANY($2)"
    ))
    .bind(ids)
    .bind(numbers)
    .fetch_all(conn)
    .await?)
}

/// An order as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    pub order_number: String,
    pub status: OrderStatus,
    pub payment_status: PaymentStatus,
    pub gateway: Option<String>,
    pub transaction_id: Option<String>,
    pub customer: CustomerView,
    pub game: GameView,
    pub discord_user_id: Option<String>,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub discount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub tax: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// What the gateway said the payment took, when it said.
    pub payment_received: Option<Received>,
    /// Why the payment was not applied (`payment_status: mismatched`).
    pub payment_issue: Option<String>,
    /// Sum of the refunds recorded so far.
    #[serde(with = "rust_decimal::serde::str")]
    pub refunded_amount: Decimal,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When access was withdrawn (full refund, cancel, chargeback).
    pub revoked_at: Option<DateTime<Utc>>,
    pub items: Vec<ItemView>,
    pub deliveries: Vec<DeliveryView>,
    pub refunds: Vec<crate::db::refunds::RefundView>,
    pub disputes: Vec<crate::db::disputes::DisputeView>,
    /// Download links made for the items, with their counts (the URLs are
    /// at `GET /v1/orders/{id}/downloads`, for `orders:keys`).
    pub downloads: Vec<crate::db::downloads::LinkView>,
    /// Proof of delivery for a dispute; present once the order has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    pub timeline: Vec<EventView>,
    /// Where the customer is billed and where goods go, as the store sent them.
    pub billing_address: Option<Value>,
    pub shipping_address: Option<Value>,
    /// Paid, but waiting before its deliveries start: `manual` (until an
    /// admin processes it) or `delayed` (until `process_after`).
    pub process_hold: Option<crate::domain::order::ProcessHold>,
    pub process_after: Option<DateTime<Utc>>,
    /// Deliveries per kind with counts by status ("RCON executions",
    /// "Discord roles", "Keys", "Gateway refunds").
    pub delivery_summary: Vec<KindSummary>,
    /// What staff did (timeline entries by an API key or the CLI, other
    /// than accepting the order): retries, manual fulfilment, refunds, …
    pub manual_actions: Vec<EventView>,
    /// Staff notes (filled in for `admin` callers only; never shown to
    /// customers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<Vec<crate::db::notes::Note>>,
}

/// The deliveries of one kind of an order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KindSummary {
    pub kind: DeliveryKind,
    /// What the dashboard calls them.
    pub label: &'static str,
    pub total: usize,
    /// Deliveries by status (only statuses that occur).
    pub by_status: std::collections::BTreeMap<String, usize>,
}

/// The deliveries of an order summed per kind.
fn delivery_summary(deliveries: &[DeliveryView]) -> Vec<KindSummary> {
    let mut out: Vec<KindSummary> = Vec::new();
    for d in deliveries {
        let i = match out.iter().position(|k| k.kind == d.kind) {
            Some(i) => i,
            None => {
                out.push(KindSummary {
                    kind: d.kind,
                    label: match d.kind {
                        DeliveryKind::Rcon => "RCON executions",
                        DeliveryKind::DiscordRole => "Discord roles",
                        DeliveryKind::SupplierKey => "Keys",
                        DeliveryKind::GatewayRefund => "Gateway refunds",
                        DeliveryKind::Webhook => "Webhooks",
                        DeliveryKind::Email => "E-mails",
                        DeliveryKind::Alert => "Alerts",
                        DeliveryKind::Download => "Download links",
                    },
                    total: 0,
                    by_status: std::collections::BTreeMap::new(),
                });
                out.len() - 1
            }
        };
        out[i].total += 1;
        *out[i]
            .by_status
            .entry(d.status.as_str().to_owned())
            .or_default() += 1;
    }
    out
}

/// An item staff marked delivered.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HandDelivery {
    pub at: DateTime<Utc>,
    pub by: Option<String>,
    /// Delivery notes for the customer.
    pub notes: Option<String>,
}

/// A payment's figures as the gateway sent them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Received {
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
}

/// What a merchant submits against a chargeback: who bought, from where,
/// and every delivery with the game server's or API's own answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Evidence {
    pub order_number: String,
    pub customer_email: Option<String>,
    pub customer_ip: Option<String>,
    pub game_username: Option<String>,
    pub discord_user_id: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Succeeded deliveries (what was done, where, and the answer), oldest first.
    pub proof_of_delivery: Vec<Proof>,
    /// Every request for the order's download links (time, IP, user agent,
    /// bytes), oldest first, at most 1,000.
    pub download_logs: Vec<crate::db::downloads::DownloadLogView>,
    pub timeline: Vec<EventView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Proof {
    pub delivery_id: Uuid,
    pub kind: DeliveryKind,
    pub target: String,
    /// The command run or the role given.
    pub action: Value,
    pub delivered_at: Option<DateTime<Utc>>,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub ip: Option<String>,
    /// The store's own id of the customer's account.
    pub account_ref: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GameView {
    pub username: Option<String>,
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ItemView {
    pub id: Uuid,
    pub position: i32,
    pub product: String,
    pub product_name: String,
    pub quantity: i32,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    pub delivery_status: ItemStatus,
    pub custom_fields: Value,
    /// CD keys of the item (filled in by the order API; codes only with `orders:keys`).
    pub keys: Vec<crate::db::keys::KeyView>,
    /// Set when staff marked the item delivered.
    pub delivered_by_hand: Option<HandDelivery>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    /// `null` for a gateway refund (it belongs to the order).
    pub item_id: Option<Uuid>,
    pub kind: DeliveryKind,
    /// `deliver`, `revoke` (undoes `revokes`) or `refund`.
    pub purpose: Purpose,
    pub revokes: Option<Uuid>,
    pub target: String,
    pub payload: Value,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub attempt_history: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt: i32,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `null` while the attempt is running.
    pub outcome: Option<AttemptOutcome>,
    pub error: Option<String>,
    pub response: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub message: String,
    pub actor: String,
    pub delivery_id: Option<Uuid>,
    pub data: Value,
}

pub(crate) fn parse<T: std::str::FromStr<Err = crate::domain::UnknownValue>>(
    row: &sqlx::postgres::PgRow,
    col: &str,
) -> Result<T, DbError> {
    let s: String = row.try_get(col)?;
    Ok(s.parse()?)
}

/// The whole read model of one order, by id or by order number.
pub async fn load_view(
    conn: &mut PgConnection,
    id: Option<Uuid>,
    number: Option<&str>,
) -> Result<Option<OrderView>, DbError> {
    let Some(o) = sqlx::query(
        "SELECT * FROM orders WHERE ($1::uuid IS NOT NULL AND id = $1) OR ($2::text IS NOT NULL AND order_number = $2)",
    )
    .bind(id)
    .bind(number)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let order_id: Uuid = o.try_get("id")?;

    let items = sqlx::query("SELECT * FROM order_items WHERE order_id = $1 ORDER BY position")
        .bind(order_id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(ItemView {
                id: r.try_get("id")?,
                position: r.try_get("position")?,
                product: r.try_get("sku")?,
                product_name: r.try_get("product_name")?,
                quantity: r.try_get("quantity")?,
                unit_price: r.try_get("unit_price")?,
                total: r.try_get("total")?,
                delivery_status: parse(r, "delivery_status")?,
                custom_fields: r.try_get("custom_fields")?,
                keys: Vec::new(),
                delivered_by_hand: r
                    .try_get::<Option<DateTime<Utc>>, _>("delivered_by_hand_at")?
                    .map(|at| {
                        Ok::<_, DbError>(HandDelivery {
                            at,
                            by: r.try_get("delivered_by")?,
                            notes: r.try_get("delivery_notes")?,
                        })
                    })
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;

    let attempts = sqlx::query(
        "SELECT a.* FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
         WHERE d.order_id = $1 ORDER BY a.delivery_id, a.attempt",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut deliveries =
        sqlx::query("SELECT * FROM deliveries WHERE order_id = $1 ORDER BY created_at, id")
            .bind(order_id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| {
                Ok(DeliveryView {
                    id: r.try_get("id")?,
                    item_id: r.try_get("item_id")?,
                    kind: parse(r, "kind")?,
                    purpose: parse(r, "purpose")?,
                    revokes: r.try_get("revokes")?,
                    target: r.try_get("target")?,
                    payload: r.try_get("payload")?,
                    status: parse(r, "status")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                    completed_at: r.try_get("completed_at")?,
                    attempt_history: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
    for a in &attempts {
        let delivery_id: Uuid = a.try_get("delivery_id")?;
        let view = attempt_from_row(a)?;
        if let Some(d) = deliveries.iter_mut().find(|d| d.id == delivery_id) {
            d.attempt_history.push(view);
        }
    }

    let stored = sqlx::query("SELECT * FROM order_events WHERE order_id = $1 ORDER BY id")
        .bind(order_id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(EventView {
                at: r.try_get("created_at")?,
                kind: r.try_get("kind")?,
                message: r.try_get("message")?,
                actor: r.try_get("actor")?,
                delivery_id: r.try_get("delivery_id")?,
                data: r.try_get("data")?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    let timeline = with_attempts(stored, &deliveries);

    let refunds = crate::db::refunds::refunds_of(conn, order_id).await?;
    let disputes = crate::db::disputes::disputes_of(conn, order_id).await?;
    let evidence = if disputes.is_empty() {
        None
    } else {
        Some(Evidence {
            order_number: o.try_get("order_number")?,
            customer_email: o.try_get("customer_email")?,
            customer_ip: o.try_get("customer_ip")?,
            game_username: o.try_get("game_username")?,
            discord_user_id: o.try_get("discord_user_id")?,
            paid_at: o.try_get("paid_at")?,
            completed_at: o.try_get("completed_at")?,
            proof_of_delivery: deliveries
                .iter()
                .filter(|d| d.purpose == Purpose::Deliver && d.status == DeliveryStatus::Succeeded)
                .map(|d| Proof {
                    delivery_id: d.id,
                    kind: d.kind,
                    target: d.target.clone(),
                    action: proof_action(d.kind, &d.payload),
                    delivered_at: d.completed_at,
                    attempts: d.attempt_history.clone(),
                })
                .collect(),
            download_logs: crate::db::downloads::log_of(conn, order_id, 1_000).await?,
            timeline: timeline.clone(),
        })
    };
    let downloads = crate::db::downloads::links_of(conn, order_id, None).await?;

    let summary = delivery_summary(&deliveries);
    let manual_actions = timeline
        .iter()
        .filter(|e| {
            (e.actor.starts_with("api:") || e.actor.starts_with("cli:"))
                && e.kind != "order.created"
        })
        .cloned()
        .collect();
    Ok(Some(OrderView {
        id: order_id,
        order_number: o.try_get("order_number")?,
        status: parse(&o, "status")?,
        payment_status: parse(&o, "payment_status")?,
        gateway: o.try_get("gateway")?,
        transaction_id: o.try_get("transaction_id")?,
        customer: CustomerView {
            name: o.try_get("customer_name")?,
            email: o.try_get("customer_email")?,
            phone: o.try_get("customer_phone")?,
            ip: o.try_get("customer_ip")?,
            account_ref: o.try_get("customer_ref")?,
        },
        game: GameView {
            username: o.try_get("game_username")?,
            uuid: o.try_get("game_uuid")?,
        },
        discord_user_id: o.try_get("discord_user_id")?,
        currency: o.try_get("currency")?,
        subtotal: o.try_get("subtotal")?,
        discount: o.try_get("discount")?,
        tax: o.try_get("tax")?,
        total: o.try_get("total")?,
        payment_received: match (
            o.try_get::<Option<Decimal>, _>("paid_amount")?,
            o.try_get::<Option<String>, _>("paid_currency")?,
        ) {
            (Some(amount), Some(currency)) => Some(Received { amount, currency }),
            _ => None,
        },
        payment_issue: o.try_get("payment_issue")?,
        refunded_amount: o.try_get("refunded_amount")?,
        created_at: o.try_get("created_at")?,
        updated_at: o.try_get("updated_at")?,
        paid_at: o.try_get("paid_at")?,
        completed_at: o.try_get("completed_at")?,
        revoked_at: o.try_get("revoked_at")?,
        items,
        deliveries,
        refunds,
        disputes,
        downloads,
        evidence,
        billing_address: o.try_get("billing_address")?,
        shipping_address: o.try_get("shipping_address")?,
        process_hold: o
            .try_get::<Option<String>, _>("process_hold")?
            .map(|h| h.parse())
            .transpose()?,
        process_after: o.try_get("process_after")?,
        delivery_summary: summary,
        manual_actions,
        notes: None,
        timeline,
    }))
}

/// The timeline as the API shows it: the stored events (one per state change
/// of the order, and each delivery outcome other than success) merged, by
/// time, with an entry per attempt started and per attempt succeeded, read
/// from the attempts — the execution log — rather than stored twice.
fn with_attempts(stored: Vec<EventView>, deliveries: &[DeliveryView]) -> Vec<EventView> {
    let mut timeline = Vec::with_capacity(stored.len() + deliveries.len() * 2);
    for d in deliveries {
        for a in &d.attempt_history {
            let actor = format!("worker:{}", a.worker);
            timeline.push(EventView {
                at: a.started_at,
                kind: "delivery.started".into(),
                message: format!("attempt {} started", a.attempt),
                actor: actor.clone(),
                delivery_id: Some(d.id),
                data: serde_json::json!({ "attempt": a.attempt }),
            });
            if let (Some(AttemptOutcome::Succeeded), Some(at)) = (a.outcome, a.finished_at) {
                timeline.push(EventView {
                    at,
                    kind: "delivery.succeeded".into(),
                    message: format!("attempt {} succeeded", a.attempt),
                    actor,
                    delivery_id: Some(d.id),
                    data: serde_json::json!({
                        "attempt": a.attempt, "outcome": a.outcome, "response": a.response,
                    }),
                });
            }
        }
    }
    // Stable: at the same instant (one transaction), an attempt comes before
    // the order status change it caused, and stored entries keep their order.
    timeline.extend(stored);
    timeline.sort_by_key(|e| e.at);
    timeline
}

/// The part of a delivery's payload that says what was done.
fn proof_action(kind: DeliveryKind, payload: &Value) -> Value {
    match kind {
        DeliveryKind::Rcon => serde_json::json!({ "command": payload["command"] }),
        DeliveryKind::DiscordRole => serde_json::json!({
            "guild_id": payload["guild_id"], "role_id": payload["role_id"], "user_id": payload["user_id"],
        }),
        DeliveryKind::Download => serde_json::json!({ "product_id": payload["product_id"] }),
        _ => serde_json::json!({}),
    }
}

fn attempt_from_row(a: &sqlx::postgres::PgRow) -> Result<AttemptView, DbError> {
    let outcome: Option<String> = a.try_get("outcome")?;
    Ok(AttemptView {
        attempt: a.try_get("attempt")?,
        worker: a.try_get("worker")?,
        started_at: a.try_get("started_at")?,
        finished_at: a.try_get("finished_at")?,
        outcome: outcome.map(|s| s.parse()).transpose()?,
        error: a.try_get("error")?,
        response: a.try_get("response")?,
    })
}

/// Every attempt of one delivery, oldest first.
pub async fn load_attempts(
    conn: &mut PgConnection,
    delivery_id: Uuid,
) -> Result<Vec<AttemptView>, DbError> {
    let rows =
        sqlx::query("SELECT * FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt")
            .bind(delivery_id)
            .fetch_all(conn)
            .await?;
    rows.iter().map(attempt_from_row).collect()
}

/// Moves the order's payment status to `to` when the payment state machine
/// allows it (no-op when already there); the one writer of `payment_status`
/// after the order is accepted. Sets `paid_at` on the first payment. The
/// caller holds the order's row lock and writes the timeline entry, which
/// says why.
pub async fn set_payment_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    to: PaymentStatus,
) -> Result<PaymentStatus, DbError> {
    let current: String =
        sqlx::query_scalar("SELECT payment_status FROM orders WHERE id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_one(&mut *conn)
            .await?;
    let from: PaymentStatus = current.parse()?;
    if from == to {
        return Ok(from);
    }
    from.transition(to)?;
    sqlx::query(
        "UPDATE orders SET payment_status = $3, updated_at = now(), \
           paid_at = CASE WHEN $3 = 'paid' THEN coalesce(paid_at, now()) ELSE paid_at END \
         WHERE id = $1 AND payment_status = $2",
    )
    .bind(order_id)
    .bind(from.as_str())
    .bind(to.as_str())
    .execute(conn)
    .await?;
    Ok(from)
}

/// Records that a paid order waits before its deliveries start (`hold`,
/// until `after` for a delay). The caller holds the order's row lock.
pub async fn set_process_hold(
    conn: &mut PgConnection,
    order_id: Uuid,
    hold: crate::domain::order::ProcessHold,
    after: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET process_hold = $2, process_after = $3, updated_at = now() WHERE id = $1",
    )
    .bind(order_id)
    .bind(hold.as_str())
    .bind(after)
    .execute(conn)
    .await?;
    Ok(())
}

/// The order no longer waits (it starts now, or never will).
pub async fn clear_process_hold(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET process_hold = NULL, process_after = NULL WHERE id = $1")
        .bind(order_id)
        .execute(conn)
        .await?;
    Ok(())
}
