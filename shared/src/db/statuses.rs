//! The one writer of `order_items.delivery_status` and `orders.status` after
//! an order is accepted. Every change carries the status it expects to
//! replace; a row that is no longer there is an error (the caller's
//! transaction rolls back), never a silent overwrite. Each order status
//! change writes its timeline entry; item changes are not timeline entries
//! (an item follows its deliveries, whose attempts are the execution log).
//!
//! Callers hold the orders' row locks (see `lock_orders`), so the statuses
//! they read and the changes they write cannot interleave with another
//! writer's.
//!
//! Set-based statements here and in `deliveries` name their rows with
//! `= ANY($ids)` on an indexed column even where a join to `UNNEST` already
//! says which: a prepared statement's generic plan is fixed while a table is
//! still small (a fresh database), and without an index condition it keeps
//! scanning the whole table as it grows.

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::order::{ItemStatus, OrderStatus};
use crate::error::DbError;

/// One status change: `id` from `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change<S> {
    pub id: Uuid,
    pub from: S,
    pub to: S,
}

/// Who tells waiting readers about the changes a transaction makes to the
/// orders it locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// The `orders_status_notify` trigger, at commit.
    Trigger,
    /// The caller, with `announce` right after commit; the trigger stays
    /// quiet (see its migration: a NOTIFY makes commits queue behind each
    /// other).
    AfterCommit,
}

impl Announce {
    fn setting(self) -> &'static str {
        match self {
            Announce::Trigger => "",
            Announce::AfterCommit => "after_commit",
        }
    }
}

/// Locks the rows of these orders in id order — every writer that locks more
/// than one order does it this way, so two batches cannot deadlock — and
/// `FOR NO KEY UPDATE`, which serialises writers of the order (it conflicts
/// with itself and with `FOR UPDATE`) but not the foreign-key checks of
/// rows inserted under the order (`FOR KEY SHARE`), and returns each order's
/// status and whether it was withdrawn (`revoked_at`).
pub async fn lock_orders(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
    announce: Announce,
) -> Result<Vec<(Uuid, OrderStatus, bool)>, DbError> {
    let rows = sqlx::query(
        "SELECT id, status, revoked_at IS NOT NULL AS revoked, \
           set_config('courier.announce', $2, true) FROM orders \
         WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(order_ids)
    .bind(announce.setting())
    .fetch_all(conn)
    .await?;
    locked(&rows)
}

/// Tells waiting readers (`LISTEN courier_orders`) that these orders may have
/// changed: after the commit of a batch locked with `Announce::AfterCommit`, in
/// its own statement (no transaction of its own to flush). A change that is
/// not announced (a crash between commit and this) only makes a waiting read
/// answer at its timeout.
pub async fn announce(pool: &sqlx::PgPool, order_ids: &[Uuid]) -> Result<(), sqlx::Error> {
    if order_ids.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify('courier_orders', id::text) FROM UNNEST($1::uuid[]) AS id")
        .bind(order_ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// `lock_orders` (announced after commit) for the orders of these deliveries.
pub async fn lock_orders_of(
    conn: &mut PgConnection,
    delivery_ids: &[Uuid],
) -> Result<Vec<(Uuid, OrderStatus, bool)>, DbError> {
    let rows = sqlx::query(
        "SELECT id, status, revoked_at IS NOT NULL AS revoked, \
           set_config('courier.announce', 'after_commit', true) FROM orders \
         WHERE id = ANY(ARRAY(SELECT order_id FROM deliveries WHERE id = ANY($1))) \
         ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(delivery_ids)
    .fetch_all(conn)
    .await?;
    locked(&rows)
}

fn locked(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<(Uuid, OrderStatus, bool)>, DbError> {
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                r.try_get::<String, _>("status")?.parse()?,
                r.try_get("revoked")?,
            ))
        })
        .collect()
}

/// Writes item and order status changes in one statement, checking that
/// every row changed; the order changes get their timeline entries
/// (`order.<to>`, by `actor`).
pub async fn write(
    conn: &mut PgConnection,
    items: &[Change<ItemStatus>],
    orders: &[Change<OrderStatus>],
    actor: &str,
) -> Result<(), DbError> {
    if items.is_empty() && orders.is_empty() {
        return Ok(());
    }
    let row = sqlx::query(
        "WITH iu AS (UPDATE order_items i SET delivery_status = u.to_s, updated_at = now() \
           FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(id, from_s, to_s) \
           WHERE i.id = ANY($1) AND i.id = u.id AND i.delivery_status = u.from_s RETURNING i.id), \
         ou AS (UPDATE orders o SET status = u.to_s, updated_at = now(), \
             completed_at = CASE WHEN u.to_s = 'completed' THEN now() ELSE o.completed_at END \
           FROM UNNEST($4::uuid[], $5::text[], $6::text[]) AS u(id, from_s, to_s) \
           WHERE o.id = ANY($4) AND o.id = u.id AND o.status = u.from_s \
           RETURNING o.id, u.from_s, u.to_s), \
         ev AS (INSERT INTO order_events (order_id, kind, message, actor, data) \
           SELECT id, 'order.' || to_s, 'order ' || from_s || ' → ' || to_s, $7, \
             jsonb_build_object('from', from_s, 'to', to_s) FROM ou) \
         SELECT (SELECT count(*) FROM iu) AS items, (SELECT count(*) FROM ou) AS orders",
    )
    .bind(items.iter().map(|c| c.id).collect::<Vec<_>>())
    .bind(items.iter().map(|c| c.from.as_str()).collect::<Vec<_>>())
    .bind(items.iter().map(|c| c.to.as_str()).collect::<Vec<_>>())
    .bind(orders.iter().map(|c| c.id).collect::<Vec<_>>())
    .bind(orders.iter().map(|c| c.from.as_str()).collect::<Vec<_>>())
    .bind(orders.iter().map(|c| c.to.as_str()).collect::<Vec<_>>())
    .bind(actor)
    .fetch_one(conn)
    .await?;
    let (changed_items, changed_orders): (i64, i64) =
        (row.try_get("items")?, row.try_get("orders")?);
    if changed_items != items.len() as i64 || changed_orders != orders.len() as i64 {
        return Err(DbError::Corrupt(format!(
            "status changed under a lock: {changed_items} of {} items, {changed_orders} of {} orders moved",
            items.len(),
            orders.len()
        )));
    }
    Ok(())
}
