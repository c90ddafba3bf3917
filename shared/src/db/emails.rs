//! Customer e-mails written by a person (the resend). The automatic ones
//! (confirmation, refund) are written by the triggers of migration
//! `20261206000002_email.sql`; the worker renders and sends them all.

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::events::{self, NewEvent};
use crate::domain::delivery::DeliveryKind;
use crate::error::DbError;

/// Writes an e-mail of `template` to `to` about `order_id`, and its job message.
pub async fn enqueue(
    conn: &mut PgConnection,
    order_id: Uuid,
    to: &str,
    template: &str,
    extra: Value,
) -> Result<Uuid, DbError> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO deliveries (id, order_id, item_id, kind, target, payload, status, purpose, next_attempt_at) \
         VALUES ($1, $2, NULL, 'email', $3, $4, 'queued', 'notify', now())",
    )
    .bind(id)
    .bind(order_id)
    .bind(to)
    .bind(json!({ "template": template, "to": to, "extra": extra }))
    .execute(&mut *conn)
    .await?;
    super::outbox::enqueue_job(conn, id, DeliveryKind::Email).await?;
    Ok(id)
}

/// [Resend delivery instructions]: the codes, delivery notes and access
/// instructions of the order, to `to` (the customer's address unless a new
/// one is given, which the timeline records).
pub async fn resend(
    conn: &mut PgConnection,
    order_id: Uuid,
    to: &str,
    new_address: bool,
    actor: &str,
) -> Result<Uuid, DbError> {
    // Links that ran out of time work again (for their own length) in
    // what is sent; their download counts stay.
    let renewed = super::downloads::renew_expired(conn, order_id).await?;
    let id = enqueue(conn, order_id, to, "delivery_instructions", json!({})).await?;
    events::record(
        conn,
        NewEvent {
            order_id,
            delivery_id: Some(id),
            kind: "email.resend",
            message: if new_address {
                format!("delivery instructions resent to a new address, {to}")
            } else {
                format!("delivery instructions resent to {to}")
            },
            actor,
            data: json!({ "to": to, "new_address": new_address, "links_renewed": renewed }),
        },
    )
    .await?;
    Ok(id)
}
