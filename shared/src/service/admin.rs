//! Admin actions on failed work: retry and discard dead letters and held
//! deliveries, one at a time or in bulk, and "Retry delivery" on an item.

use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::db::dead_letters::{self, Filter};
use crate::db::deliveries;
use crate::db::events::{self, NewEvent};
use crate::db::outbox;
use crate::domain::delivery::{DeliveryKind, DeliveryStatus};
use crate::error::DbError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] crate::service::Invalid),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for AdminError {
    fn from(e: sqlx::Error) -> Self {
        AdminError::Db(e.into())
    }
}

/// Locks the delivery's order (an alert has none), then the delivery;
/// returns (order, item, kind, status).
async fn lock_delivery(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<(Option<Uuid>, Option<Uuid>, DeliveryKind, DeliveryStatus), AdminError> {
    let order_id: Option<Uuid> =
        sqlx::query_scalar("SELECT order_id FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(AdminError::NotFound("delivery"))?;
    if let Some(order_id) = order_id {
        sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
            .bind(order_id)
            .execute(&mut *conn)
            .await?;
    }
    // Only a delivering row rolls up into its item (revoke and refund jobs do not).
    let row = sqlx::query(
        "SELECT CASE WHEN purpose = 'deliver' THEN item_id END AS item_id, kind, status \
         FROM deliveries WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let kind: String = row.try_get("kind")?;
    let status: String = row.try_get("status")?;
    Ok((
        order_id,
        row.try_get("item_id")?,
        kind.parse().map_err(DbError::from)?,
        status.parse().map_err(DbError::from)?,
    ))
}

/// Resets a dead or held delivery and re-publishes it through the outbox; the
/// item and order go back to `processing`. The failure budget starts afresh;
/// the attempt numbers continue, so the history stays whole.
pub async fn retry_delivery(pool: &PgPool, id: Uuid, actor: &str) -> Result<(), AdminError> {
    let mut tx = pool.begin().await?;
    let (order_id, item_id, kind, status) = lock_delivery(&mut tx, id).await?;
    // Only settled failures: a running delivery belongs to its worker (and the rescuer).
    if !matches!(status, DeliveryStatus::Dead | DeliveryStatus::Held) {
        return Err(AdminError::Conflict(format!(
            "delivery is `{status}`; only dead or held deliveries can be retried"
        )));
    }
    if let Some(item) = item_id
        && deliveries::delivered_by_hand(&mut tx, item).await?
    {
        return Err(AdminError::Conflict(
            "its item was marked delivered by hand: retrying would deliver it twice (discard it instead)".into(),
        ));
    }
    status
        .transition(DeliveryStatus::Queued)
        .map_err(DbError::from)?;
    crate::db::deliveries::requeue(&mut tx, id, status).await?;
    outbox::enqueue_job(&mut tx, id, kind).await?;
    outbox::notify_relays(&mut tx).await?;
    dead_letters::resolve_for_delivery(&mut tx, id, actor, "retried").await?;
    events::record_if_order(
        &mut tx,
        order_id,
        NewEvent {
            order_id: Uuid::nil(),
            delivery_id: Some(id),
            kind: "delivery.retried",
            message: format!("{status} delivery retried by {actor}"),
            actor,
            data: json!({ "from": status }),
        },
    )
    .await?;
    if let (Some(order_id), Some(item_id)) = (order_id, item_id) {
        deliveries::roll_up(&mut tx, order_id, item_id, actor).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Gives up on a dead or held delivery: it becomes `cancelled`, with who and why.
pub async fn discard_delivery(
    pool: &PgPool,
    id: Uuid,
    actor: &str,
    reason: &str,
) -> Result<(), AdminError> {
    let mut tx = pool.begin().await?;
    let (order_id, item_id, _, status) = lock_delivery(&mut tx, id).await?;
    if !matches!(status, DeliveryStatus::Dead | DeliveryStatus::Held) {
        return Err(AdminError::Conflict(format!(
            "delivery is `{status}`; only dead or held deliveries can be discarded"
        )));
    }
    let why = format!("discarded by {actor}: {reason}");
    deliveries::cancel(&mut tx, order_id, id, status, &why, actor).await?;
    if let (Some(order_id), Some(item_id)) = (order_id, item_id) {
        deliveries::roll_up(&mut tx, order_id, item_id, actor).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Retries the delivery a dead letter is about.
pub async fn retry_dead_letter(pool: &PgPool, id: i64, actor: &str) -> Result<(), AdminError> {
    let mut conn = pool.acquire().await?;
    let dl = dead_letters::get(&mut conn, id)
        .await?
        .ok_or(AdminError::NotFound("dead letter"))?;
    drop(conn);
    if dl.resolved_at.is_some() {
        return Err(AdminError::Conflict(format!(
            "dead letter {id} was already {}",
            dl.resolution.unwrap_or_default()
        )));
    }
    let delivery = dl.delivery_id.ok_or_else(|| {
        AdminError::Conflict(
            "this dead letter names no delivery (an undecodable message); discard it".into(),
        )
    })?;
    retry_delivery(pool, delivery, actor).await
}

pub async fn discard_dead_letter(
    pool: &PgPool,
    id: i64,
    actor: &str,
    reason: &str,
) -> Result<(), AdminError> {
    let mut conn = pool.acquire().await?;
    let dl = dead_letters::get(&mut conn, id)
        .await?
        .ok_or(AdminError::NotFound("dead letter"))?;
    if dl.resolved_at.is_some() {
        return Err(AdminError::Conflict(format!(
            "dead letter {id} is already resolved"
        )));
    }
    match dl.delivery_id {
        Some(delivery) => {
            drop(conn);
            discard_delivery(pool, delivery, actor, reason).await
        }
        None => {
            dead_letters::resolve(&mut conn, id, actor, "discarded").await?;
            Ok(())
        }
    }
}

/// The result of a bulk retry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BulkRetry {
    /// Dead letters matching the filter when the retry started.
    pub matched: usize,
    /// Of those, re-queued.
    pub requeued: usize,
    /// Skipped, each as `[dead letter id, why]` (already resolved meanwhile,
    /// names no delivery, …).
    #[schema(value_type = Vec<Vec<Object>>)]
    pub skipped: Vec<(i64, String)>,
}

/// Resolves `filter` to a snapshot of ids first, then retries each: dead
/// letters created while this runs are not swept in.
pub async fn retry_matching(
    pool: &PgPool,
    filter: &Filter,
    actor: &str,
) -> Result<BulkRetry, AdminError> {
    let mut conn = pool.acquire().await?;
    let ids = dead_letters::snapshot(&mut conn, filter).await?;
    drop(conn);
    retry_snapshot(pool, &ids, actor).await
}

/// The second half of `retry_matching`.
pub async fn retry_snapshot(
    pool: &PgPool,
    ids: &[i64],
    actor: &str,
) -> Result<BulkRetry, AdminError> {
    let mut result = BulkRetry {
        matched: ids.len(),
        requeued: 0,
        skipped: Vec::new(),
    };
    for id in ids {
        match retry_dead_letter(pool, *id, actor).await {
            Ok(()) => result.requeued += 1,
            Err(AdminError::Db(e)) => return Err(AdminError::Db(e)),
            Err(e) => result.skipped.push((*id, e.to_string())),
        }
    }
    Ok(result)
}

/// "Retry delivery" on an order item: retries its dead and held deliveries.
pub async fn retry_item(
    pool: &PgPool,
    order_id: Uuid,
    item_id: Uuid,
    actor: &str,
) -> Result<usize, AdminError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT d.id FROM deliveries d JOIN order_items i ON i.id = d.item_id \
         WHERE d.item_id = $1 AND i.order_id = $2 AND d.status IN ('dead', 'held')",
    )
    .bind(item_id)
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    if ids.is_empty() {
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM order_items WHERE id = $1 AND order_id = $2")
                .bind(item_id)
                .bind(order_id)
                .fetch_optional(pool)
                .await?;
        return Err(match exists {
            None => AdminError::NotFound("item"),
            Some(_) => {
                AdminError::Conflict("the item has no dead or held delivery to retry".into())
            }
        });
    }
    for id in &ids {
        retry_delivery(pool, *id, actor).await?;
    }
    Ok(ids.len())
}
