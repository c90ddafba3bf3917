//! Cancelling an order that is not completed yet.

use sqlx::PgPool;
use uuid::Uuid;

use super::{MAX_REASON, PaymentError, lock_order};
use crate::db::deliveries;
use crate::domain::order::OrderStatus;
use crate::service::revoke::{self, Cause, Withdrawn};

/// `POST /v1/orders/{id}/cancel`: for orders not completed yet. Deliveries not
/// run are cancelled; whatever already ran is revoked (nothing half-delivered
/// stays with the customer). Money is not moved: refund a paid order separately.
pub async fn cancel(
    pool: &PgPool,
    order_id: Uuid,
    reason: &str,
    actor: &str,
) -> Result<Withdrawn, PaymentError> {
    crate::service::check_text("reason", reason, MAX_REASON)?;
    let mut tx = pool.begin().await?;
    let order = lock_order(&mut tx, order_id).await?;
    if !matches!(
        order.status,
        OrderStatus::Pending | OrderStatus::Processing | OrderStatus::Failed
    ) {
        return Err(PaymentError::NotCancellable(order.status));
    }
    let done = revoke::withdraw(&mut tx, order_id, Cause::Cancel, reason, actor).await?;
    deliveries::set_order_status(&mut tx, order_id, OrderStatus::Cancelled, actor).await?;
    tx.commit().await?;
    Ok(done)
}
