//! The worker's side of an order, as transactions: claim a batch, record one
//! attempt, complete a batch of successes, rescue an expired lease. What an
//! outcome means is decided in `domain::fulfilment`; the guarded SQL is in
//! `db::deliveries` (which never calls up here); the revocation of an action
//! that ran on a withdrawn order, and the announcement of changed orders to
//! waiting readers after commit, happen here.

use sqlx::PgPool;
use uuid::Uuid;

use crate::db::deliveries::{self, AttemptRecord, Claimed, NotClaimed, Recorded, Success};
use crate::db::rescue::{self, Rescued};
use crate::db::statuses;
use crate::domain::delivery::DeliveryStatus;
use crate::error::DbError;

/// Announces `orders` after a commit; a failure only delays waiting readers.
async fn announce(pool: PgPool, mut orders: Vec<Uuid>) {
    orders.sort_unstable();
    orders.dedup();
    if let Err(e) = statuses::announce(&pool, &orders).await {
        tracing::warn!(error = %e, "could not announce changed orders; waiting reads answer at their timeout");
    }
}

/// Claims `ids`: first the common claim that moves no status
/// (`deliveries::claim_started`, one statement, no order lock, nothing to
/// announce), then whatever it left — a pending order's first claim, or a
/// message whose delivery is not claimable — in one transaction
/// (`deliveries::claim_batch`), which announces the orders it moved after
/// commit. Answers one entry per id, in the order given.
pub async fn claim(
    pool: &PgPool,
    ids: &[Uuid],
    worker: &str,
    lease_seconds: u32,
) -> Result<Vec<(Uuid, Result<Claimed, NotClaimed>)>, DbError> {
    let started = deliveries::claim_started(pool, ids, worker, lease_seconds).await?;
    let mut started: std::collections::HashMap<Uuid, Claimed> =
        started.into_iter().map(|c| (c.id, c)).collect();
    let taken: std::collections::HashSet<Uuid> = started.keys().copied().collect();
    let rest: Vec<Uuid> = ids
        .iter()
        .filter(|id| !taken.contains(id))
        .copied()
        .collect();
    let mut rest_claims = if rest.is_empty() {
        Vec::new()
    } else {
        let mut tx = pool.begin().await?;
        let claims = deliveries::claim_batch(&mut tx, &rest, worker, lease_seconds).await?;
        tx.commit().await?;
        let orders = claims
            .iter()
            .filter_map(|(_, c)| c.as_ref().ok().and_then(|c| c.order_id))
            .collect();
        announce(pool.clone(), orders).await;
        claims
    }
    .into_iter();
    Ok(ids
        .iter()
        .map(|id| {
            if taken.contains(id) {
                // The same id twice in one batch: the second is a duplicate.
                let claim = started
                    .remove(id)
                    .ok_or(NotClaimed::NotClaimable(DeliveryStatus::Running));
                (*id, claim)
            } else {
                rest_claims
                    .next()
                    .unwrap_or((*id, Err(NotClaimed::Missing)))
            }
        })
        .collect())
}

/// Records one attempt in its own transaction; an action that ran on an
/// order withdrawn meanwhile is revoked in the same transaction.
pub async fn record(
    pool: &PgPool,
    claimed: &Claimed,
    worker: &str,
    rec: &AttemptRecord,
) -> Result<Recorded, DbError> {
    let mut tx = pool.begin().await?;
    let (recorded, revoke) = deliveries::record(&mut tx, claimed, worker, rec).await?;
    if revoke {
        super::revoke::revoke_delivery(&mut tx, claimed.id, false, &format!("worker:{worker}"))
            .await?;
    }
    tx.commit().await?;
    Ok(recorded)
}

/// Writes a batch of successes in one transaction; returns the ids applied
/// (the rest are for `record`) as soon as it committed: the announcement to
/// waiting readers follows in its own task, so the jobs' acks do not wait
/// for it.
pub async fn complete(
    pool: &PgPool,
    worker: &str,
    batch: &[Success],
) -> Result<Vec<Uuid>, DbError> {
    let mut tx = pool.begin().await?;
    let applied = deliveries::record_successes(&mut tx, worker, batch).await?;
    tx.commit().await?;
    let orders = batch
        .iter()
        .filter(|s| applied.contains(&s.id))
        .map(|s| s.order_id)
        .collect();
    tokio::spawn(announce(pool.clone(), orders));
    Ok(applied)
}

/// Takes one expired lease back in its own transaction; a delivery of a
/// withdrawn order is cancelled and revoked (it may have run).
pub async fn rescue(pool: &PgPool, id: Uuid, actor: &str) -> Result<Option<Rescued>, DbError> {
    let mut tx = pool.begin().await?;
    let rescued = rescue::rescue_one(&mut tx, id, actor).await?;
    if let Some(Rescued::Cancelled(id)) = rescued {
        super::revoke::revoke_delivery(&mut tx, id, false, actor).await?;
    }
    tx.commit().await?;
    Ok(rescued)
}
