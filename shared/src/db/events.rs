//! The order timeline: one row per thing that happened, with who did it.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// One timeline entry to write.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub order_id: Uuid,
    pub delivery_id: Option<Uuid>,
    /// Dotted name, e.g. `delivery.succeeded`.
    pub kind: &'a str,
    pub message: String,
    /// `api:<key name>`, `worker:<id>`, `system`.
    pub actor: &'a str,
    pub data: Value,
}

pub async fn record(conn: &mut PgConnection, event: NewEvent<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO order_events (order_id, delivery_id, kind, message, actor, data) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event.order_id)
    .bind(event.delivery_id)
    .bind(event.kind)
    .bind(&event.message)
    .bind(event.actor)
    .bind(&event.data)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records `event` in the timeline of `order_id`'s order; a delivery of no
/// order (an alert) has no timeline, so nothing is written for it (its
/// attempts are its record). `event.order_id` is replaced.
pub async fn record_if_order(
    conn: &mut PgConnection,
    order_id: Option<Uuid>,
    event: NewEvent<'_>,
) -> Result<(), sqlx::Error> {
    match order_id {
        Some(order_id) => record(conn, NewEvent { order_id, ..event }).await,
        None => Ok(()),
    }
}
