//! Key stock uploads, keys entered by hand, and supplier webhooks.

use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::Invalid;
use super::admin::AdminError;
use crate::crypto::KeyCipher;
use crate::db::events::{self, NewEvent};
use crate::db::keys::{self, KeySource};
use crate::db::{catalog, dead_letters, deliveries, outbox};
use crate::domain::delivery::{DeliveryKind, DeliveryStatus};
use crate::error::DbError;

/// Adds codes to the stock of product `sku`; returns (added, duplicates).
pub async fn add_stock(
    pool: &PgPool,
    cipher: &KeyCipher,
    sku: &str,
    codes: &[String],
) -> Result<(u64, u64), AdminError> {
    if codes.is_empty() {
        return Err(AdminError::Invalid(Invalid::new("keys", "no keys given")));
    }
    for (i, c) in codes.iter().enumerate() {
        if c.is_empty() || c.len() > 255 || c.chars().any(char::is_control) {
            return Err(AdminError::Invalid(Invalid::new(
                format!("keys[{i}]"),
                "must be 1 to 255 characters without control characters",
            )));
        }
    }
    let mut tx = pool.begin().await?;
    let product = catalog::products_by_sku(&mut tx, &[sku.to_owned()])
        .await?
        .into_iter()
        .next()
        .ok_or(AdminError::NotFound("product"))?;
    let counts = keys::add_stock(&mut tx, cipher, product.id, codes).await?;
    tx.commit().await?;
    Ok(counts)
}

/// "Enter key manually": completes one key delivery of the item that has no
/// key yet (waiting, dead, held, queued or retrying — not one a worker is running).
pub async fn enter_key(
    pool: &PgPool,
    cipher: &KeyCipher,
    item_id: Uuid,
    code: &str,
    actor: &str,
) -> Result<Uuid, AdminError> {
    if code.trim().is_empty() || code.len() > 255 {
        return Err(AdminError::Invalid(Invalid::new(
            "code",
            "must be 1 to 255 characters",
        )));
    }
    let mut tx = pool.begin().await?;
    let order_id: Uuid = sqlx::query_scalar("SELECT order_id FROM order_items WHERE id = $1")
        .bind(item_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(AdminError::NotFound("item"))?;
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(
        "SELECT d.id, d.status FROM deliveries d WHERE d.item_id = $1 AND d.kind = 'supplier_key' \
           AND d.status IN ('waiting', 'dead', 'held', 'queued', 'retrying') \
           AND NOT EXISTS (SELECT 1 FROM item_keys k WHERE k.delivery_id = d.id) \
         ORDER BY d.created_at LIMIT 1 FOR UPDATE",
    )
    .bind(item_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AdminError::Conflict("the item has no key delivery waiting for a key (a worker may be running it; try again)".into()))?;
    let delivery_id: Uuid = row.try_get("id")?;
    let from: DeliveryStatus = row
        .try_get::<String, _>("status")?
        .parse()
        .map_err(DbError::from)?;
    from.transition(DeliveryStatus::Succeeded)
        .map_err(DbError::from)?;
    let src = KeySource {
        source: "manual",
        supplier: None,
        supplier_order_id: None,
        cost: None,
        stock_id: None,
    };
    keys::store_item_key(&mut tx, cipher, item_id, delivery_id, code.trim(), &src).await?;
    crate::db::deliveries::succeed_by_hand(&mut tx, delivery_id, from).await?;
    dead_letters::resolve_for_delivery(&mut tx, delivery_id, actor, "retried").await?;
    events::record(
        &mut tx,
        NewEvent {
            order_id,
            delivery_id: Some(delivery_id),
            kind: "delivery.succeeded",
            message: format!("key entered manually by {actor} (was {from})"),
            actor,
            data: json!({ "manual": true }),
        },
    )
    .await?;
    deliveries::roll_up(&mut tx, order_id, item_id, actor).await?;
    tx.commit().await?;
    Ok(delivery_id)
}

/// A supplier says an order is complete: the delivery whose id is the order's
/// external id is checked again at once (rather than on the waiting schedule).
pub async fn supplier_order_ready(
    pool: &PgPool,
    supplier: &str,
    external_id: Uuid,
) -> Result<bool, AdminError> {
    let mut tx = pool.begin().await?;
    let found: Option<String> = sqlx::query_scalar(
        "SELECT status FROM deliveries WHERE id = $1 AND kind = 'supplier_key' AND supplier_order->>'supplier' = $2",
    )
    .bind(external_id)
    .bind(supplier)
    .fetch_optional(&mut *tx)
    .await?;
    match found.as_deref() {
        None => Err(AdminError::NotFound("delivery for this order")),
        Some("waiting") | Some("retrying") => {
            outbox::enqueue_job(&mut tx, external_id, DeliveryKind::SupplierKey).await?;
            outbox::notify_relays(&mut tx).await?;
            tx.commit().await?;
            Ok(true)
        }
        Some(_) => Ok(false),
    }
}
