//! Fulfilment by hand: staff mark an item delivered [Mark as Delivered] or a
//! whole order completed [Mark as Completed], and process orders that wait
//! [Process / Process Selected].
//!
//! What is not running of the items concerned — queued, retrying, waiting,
//! dead or held deliveries — is cancelled, so nothing delivers twice by
//! itself; a delivery a worker is running is left to finish (its attempt is
//! recorded as usual and shows in the order; an item marked delivered stays
//! delivered whatever it does) and named in the answer and the timeline, so
//! nothing half-run is forgotten. Each action is a timeline entry with who
//! and why.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::Invalid;
use super::admin::AdminError;
use super::deliverable::AcceptRules;
use super::orders::{CreateOrderError, Processed, process_order};
use crate::crypto::KeyCipher;
use crate::db::events::{self, NewEvent};
use crate::db::statuses::{self, Announce, Change};
use crate::db::{deliveries, keys};
use crate::domain::delivery::DeliveryStatus;
use crate::domain::order::{ItemStatus, OrderStatus, PaymentStatus};
use crate::error::DbError;

/// Longest delivery notes or reason, in bytes.
const MAX_NOTES: usize = 4000;

/// Body of `POST /v1/orders/{reference}/items/{item_id}/deliver`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkDelivered {
    /// A redemption code given to the customer; stored encrypted like every
    /// key and read like them (`orders:keys`).
    #[serde(default)]
    pub code: Option<String>,
    /// Delivery notes for the customer (tracking number, instructions).
    #[serde(default)]
    pub notes: Option<String>,
}

/// Body of `POST /v1/orders/{reference}/complete`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkCompleted {
    /// Why, for the timeline.
    #[serde(default)]
    pub notes: Option<String>,
}

/// What a manual fulfilment did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Marked {
    pub order_id: Uuid,
    /// The order's status afterwards.
    pub status: OrderStatus,
    /// Items marked delivered.
    pub items: Vec<Uuid>,
    /// Deliveries cancelled because the item no longer needs them.
    pub cancelled: Vec<Uuid>,
    /// Deliveries a worker was running: left to finish; look at them.
    pub left_running: Vec<Uuid>,
}

/// Notes or a reason: at most `MAX_NOTES` bytes; line breaks and tabs are
/// fine, other control characters are not.
fn check_notes(field: &str, notes: Option<&str>) -> Result<Option<String>, Invalid> {
    let Some(n) = notes.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if n.len() > MAX_NOTES || n.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Invalid::new(
            field,
            format!(
                "must be at most {MAX_NOTES} bytes, without control characters other than line breaks"
            ),
        ));
    }
    Ok(Some(n.to_owned()))
}

/// What `lock_for_hand` found of the order.
struct ForHand {
    status: OrderStatus,
    /// Set while the order waits to be processed.
    hold: Option<String>,
}

/// Locks the order and checks staff may fulfil it by hand: paid (or
/// partially refunded without withdrawing access), not withdrawn.
async fn lock_for_hand(conn: &mut PgConnection, order_id: Uuid) -> Result<ForHand, AdminError> {
    let locked = statuses::lock_orders(conn, &[order_id], Announce::Trigger).await?;
    let Some((_, status, revoked)) = locked.first().copied() else {
        return Err(AdminError::NotFound("order"));
    };
    let row = sqlx::query("SELECT payment_status, process_hold FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(&mut *conn)
        .await?;
    let payment: String = row.try_get("payment_status")?;
    // A partial refund that did not withdraw access leaves the rest to deliver.
    if revoked || !(status.follows_deliveries() || status == OrderStatus::PartiallyRefunded) {
        return Err(AdminError::Conflict(format!(
            "the order is {status}{}: it cannot be fulfilled any more",
            if revoked { ", access withdrawn" } else { "" }
        )));
    }
    if payment != PaymentStatus::Paid.as_str()
        && payment != PaymentStatus::PartiallyRefunded.as_str()
    {
        return Err(AdminError::Conflict(format!(
            "the order's payment is {payment}: only a paid order is fulfilled"
        )));
    }
    Ok(ForHand {
        status,
        hold: row.try_get("process_hold")?,
    })
}

/// Cancels the deliveries of `item_ids` that are not running; returns
/// (cancelled, left running).
async fn settle_deliveries(
    conn: &mut PgConnection,
    order_id: Uuid,
    item_ids: &[Uuid],
    why: &str,
    actor: &str,
) -> Result<(Vec<Uuid>, Vec<Uuid>), AdminError> {
    let rows = sqlx::query(
        "SELECT id, status FROM deliveries WHERE order_id = $1 AND item_id = ANY($2) \
           AND purpose = 'deliver' AND status NOT IN ('succeeded', 'cancelled') \
         ORDER BY created_at, id FOR UPDATE",
    )
    .bind(order_id)
    .bind(item_ids)
    .fetch_all(&mut *conn)
    .await?;
    let (mut cancelled, mut running) = (Vec::new(), Vec::new());
    for r in &rows {
        let id: Uuid = r.try_get("id")?;
        let status: DeliveryStatus = r
            .try_get::<String, _>("status")?
            .parse()
            .map_err(DbError::from)?;
        if status == DeliveryStatus::Running {
            running.push(id);
        } else {
            deliveries::cancel(conn, Some(order_id), id, status, why, actor).await?;
            cancelled.push(id);
        }
    }
    Ok((cancelled, running))
}

/// Writes items as delivered by hand (each from its current status) and
/// rolls the order up; returns the order's status afterwards.
async fn deliver_items(
    conn: &mut PgConnection,
    order_id: Uuid,
    items: &[(Uuid, ItemStatus)],
    notes: Option<&str>,
    actor: &str,
) -> Result<OrderStatus, AdminError> {
    let mut changes = Vec::with_capacity(items.len());
    for (id, from) in items {
        from.transition(ItemStatus::Delivered)
            .map_err(DbError::from)?;
        changes.push(Change {
            id: *id,
            from: *from,
            to: ItemStatus::Delivered,
        });
    }
    let ids: Vec<Uuid> = items.iter().map(|(id, _)| *id).collect();
    sqlx::query(
        "UPDATE order_items SET delivered_by_hand_at = now(), delivered_by = $2, \
           delivery_notes = coalesce($3, delivery_notes) WHERE id = ANY($1)",
    )
    .bind(&ids)
    .bind(actor)
    .bind(notes)
    .execute(&mut *conn)
    .await?;
    statuses::write(conn, &changes, &[], actor).await?;
    deliveries::roll_up_orders(conn, &[order_id], &[], actor).await?;
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(status.parse().map_err(DbError::from)?)
}

/// [Mark as Delivered]: the item is delivered by hand, with an optional
/// redemption code (encrypted; needs `keys.encryption_key`) and notes.
pub async fn mark_item_delivered(
    pool: &PgPool,
    cipher: Option<&KeyCipher>,
    order_id: Uuid,
    item_id: Uuid,
    input: MarkDelivered,
    actor: &str,
) -> Result<Marked, AdminError> {
    let notes = check_notes("notes", input.notes.as_deref())?;
    let code = input
        .code
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if let Some(c) = code
        && (c.len() > 255 || c.chars().any(char::is_control))
    {
        return Err(Invalid::new(
            "code",
            "must be 1 to 255 characters without control characters",
        )
        .into());
    }
    if code.is_some() && cipher.is_none() {
        return Err(AdminError::Conflict(
            "a redemption code is stored encrypted, and keys.encryption_key is not set".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    // An item of an order that waits has no deliveries yet; processing plans
    // them for every item, so one item is not marked alone.
    if let Some(hold) = lock_for_hand(&mut tx, order_id).await?.hold {
        return Err(AdminError::Conflict(format!(
            "the order waits to be processed ({hold}): process it first, or mark the whole order completed"
        )));
    }
    let row = sqlx::query(
        "SELECT delivery_status, product_name FROM order_items WHERE id = $1 AND order_id = $2",
    )
    .bind(item_id)
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(AdminError::NotFound("item"))?;
    let from: ItemStatus = row
        .try_get::<String, _>("delivery_status")?
        .parse()
        .map_err(DbError::from)?;
    if matches!(from, ItemStatus::Delivered | ItemStatus::Revoked) {
        return Err(AdminError::Conflict(format!("the item is already {from}")));
    }
    let why = format!("item marked delivered by {actor}");
    let (cancelled, left_running) =
        settle_deliveries(&mut tx, order_id, &[item_id], &why, actor).await?;
    if let (Some(code), Some(cipher)) = (code, cipher) {
        keys::store_manual_code(&mut tx, cipher, item_id, code).await?;
    }
    let product: String = row.try_get("product_name")?;
    events::record(
        &mut tx,
        NewEvent {
            order_id,
            delivery_id: None,
            kind: "item.delivered_by_hand",
            message: hand_message(
                &format!("{product} marked delivered"),
                actor,
                notes.as_deref(),
                &left_running,
            ),
            actor,
            data: json!({
                "item_id": item_id, "code_given": code.is_some(), "notes": notes,
                "cancelled": cancelled, "left_running": left_running,
            }),
        },
    )
    .await?;
    let status = deliver_items(
        &mut tx,
        order_id,
        &[(item_id, from)],
        notes.as_deref(),
        actor,
    )
    .await?;
    tx.commit().await?;
    Ok(Marked {
        order_id,
        status,
        items: vec![item_id],
        cancelled,
        left_running,
    })
}

/// [Mark as Completed]: every item not yet delivered is marked delivered by
/// hand and the order completes; an order waiting to be processed is
/// completed without starting its deliveries.
pub async fn mark_order_completed(
    pool: &PgPool,
    order_id: Uuid,
    input: MarkCompleted,
    actor: &str,
) -> Result<Marked, AdminError> {
    let notes = check_notes("notes", input.notes.as_deref())?;
    let mut tx = pool.begin().await?;
    let status = lock_for_hand(&mut tx, order_id).await?.status;
    if status == OrderStatus::Completed {
        return Err(AdminError::Conflict(
            "the order is already completed".into(),
        ));
    }
    crate::db::orders::clear_process_hold(&mut tx, order_id).await?;
    let rows = sqlx::query(
        "SELECT id, delivery_status FROM order_items WHERE order_id = $1 \
           AND delivery_status NOT IN ('delivered', 'revoked') ORDER BY position",
    )
    .bind(order_id)
    .fetch_all(&mut *tx)
    .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<Uuid, _>("id")?,
                r.try_get::<String, _>("delivery_status")?
                    .parse::<ItemStatus>()
                    .map_err(DbError::from)?,
            ))
        })
        .collect::<Result<Vec<_>, AdminError>>()?;
    let ids: Vec<Uuid> = items.iter().map(|(id, _)| *id).collect();
    let why = format!("order marked completed by {actor}");
    let (cancelled, left_running) = settle_deliveries(&mut tx, order_id, &ids, &why, actor).await?;
    events::record(
        &mut tx,
        NewEvent {
            order_id,
            delivery_id: None,
            kind: "order.completed_by_hand",
            message: hand_message(
                "order marked completed",
                actor,
                notes.as_deref(),
                &left_running,
            ),
            actor,
            data: json!({
                "items": ids, "notes": notes, "cancelled": cancelled, "left_running": left_running,
            }),
        },
    )
    .await?;
    let status = deliver_items(&mut tx, order_id, &items, None, actor).await?;
    tx.commit().await?;
    Ok(Marked {
        order_id,
        status,
        items: ids,
        cancelled,
        left_running,
    })
}

/// The timeline's words for a manual fulfilment: what, by whom, the notes,
/// and the deliveries left running.
fn hand_message(what: &str, actor: &str, notes: Option<&str>, running: &[Uuid]) -> String {
    let mut message = format!("{what} by {actor}");
    if let Some(n) = notes {
        message.push_str(&format!(": {n}"));
    }
    if !running.is_empty() {
        message.push_str(&format!(
            " ({} running deliveries left to finish: {})",
            running.len(),
            running
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    message
}

/// One order's outcome in a [Process] answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProcessOutcome {
    pub order_id: Uuid,
    /// Deliveries queued, when it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<usize>,
    /// Why it was skipped: `not_found`, `not_waiting`, `not_paid`,
    /// `withdrawn` or `unplannable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// [Process] one order, in its own transaction.
pub async fn process(
    pool: &PgPool,
    order_id: Uuid,
    actor: &str,
    rules: &AcceptRules,
) -> Result<ProcessOutcome, AdminError> {
    let mut tx = pool.begin().await?;
    let locked = statuses::lock_orders(&mut tx, &[order_id], Announce::Trigger).await?;
    if locked.is_empty() {
        return Ok(ProcessOutcome {
            order_id,
            started: None,
            skipped: Some("not_found"),
            message: Some("no such order".into()),
        });
    }
    let outcome = match process_order(&mut tx, order_id, actor, rules).await {
        Ok(o) => o,
        Err(CreateOrderError::Db(e)) => return Err(AdminError::Db(e)),
        Err(e) => Processed::Skipped("unplannable", e.to_string()),
    };
    tx.commit().await?;
    Ok(match outcome {
        Processed::Started(n) => ProcessOutcome {
            order_id,
            started: Some(n),
            skipped: None,
            message: None,
        },
        Processed::Skipped(why, message) => ProcessOutcome {
            order_id,
            started: None,
            skipped: Some(why),
            message: Some(message),
        },
    })
}

/// Starts the delayed orders whose time has come (at most `limit`, each in
/// its own transaction, skipping any another replica is starting); returns
/// how many were looked at. Run by every API process's relay loop.
pub async fn start_due(
    pool: &PgPool,
    rules: &AcceptRules,
    limit: i64,
) -> Result<usize, AdminError> {
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE process_hold = 'delayed' AND process_after <= now() \
         ORDER BY process_after LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    for id in &due {
        // One order's error is logged and the sweep goes on to the next.
        if let Err(e) = start_one(pool, *id, rules).await {
            tracing::warn!(order = %id, error = %e, "could not start a delayed order; will retry");
        }
    }
    Ok(due.len())
}

/// Starts one due delayed order unless another replica is doing it.
async fn start_one(pool: &PgPool, id: Uuid, rules: &AcceptRules) -> Result<(), AdminError> {
    let mut tx = pool.begin().await?;
    let free: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE id = $1 AND process_hold = 'delayed' \
         FOR NO KEY UPDATE SKIP LOCKED",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if free.is_none() {
        return Ok(());
    }
    match process_order(&mut tx, id, "courier:process-delay", rules).await {
        Ok(_) => {}
        Err(CreateOrderError::Db(e)) => return Err(AdminError::Db(e)),
        Err(e) => return Err(AdminError::Conflict(e.to_string())),
    }
    tx.commit().await?;
    Ok(())
}
