//! The rescuer: a periodic task, safe in every replica at once, that takes back
//! deliveries whose worker died mid-job (expired lease), re-publishes
//! deliveries whose message was lost (long overdue), and re-tries payment
//! events that arrived before their payment.

use std::sync::Arc;
use std::time::Duration;

use courier_shared::db::rescue::{self, Rescued};
use tokio::sync::watch;

use crate::consume::Context;

pub async fn run(
    ctx: Arc<Context>,
    interval: Duration,
    overdue_secs: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let actor = format!("rescuer:{}", ctx.worker_id);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = sweep(&ctx, &actor, overdue_secs).await {
            tracing::warn!(error = %e, "rescuer sweep failed; will try again");
        }
    }
}

/// One pass; public so tests can drive it step by step.
pub async fn sweep(
    ctx: &Context,
    actor: &str,
    overdue_secs: u32,
) -> Result<Vec<Rescued>, courier_shared::error::DbError> {
    let mut rescued = Vec::new();
    for id in rescue::expired_leases(&ctx.pool, 50).await? {
        // One delivery that cannot be rescued must not block the others.
        match courier_shared::service::fulfilment::rescue(&ctx.pool, id, actor).await {
            Ok(Some(r)) => {
                tracing::warn!(delivery_id = %id, outcome = ?r, "rescued a delivery whose lease expired");
                ctx.metrics
                    .rescues
                    .get_or_create(&courier_shared::metrics::OutcomeLabel {
                        outcome: r.label().to_owned(),
                    })
                    .inc();
                rescued.push(r);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(delivery_id = %id, error = %e, "could not rescue a delivery; skipping it")
            }
        }
    }
    let republished = rescue::republish_overdue(&ctx.pool, overdue_secs, actor).await?;
    if republished > 0 {
        tracing::warn!(count = republished, "re-published overdue deliveries");
    }
    match courier_shared::service::payments::retry_parked(&ctx.pool, &ctx.payment_policy, 50).await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            count = n,
            "applied payment events that waited for their payment"
        ),
        Err(e) => tracing::warn!(error = %e, "could not re-try waiting payment events"),
    }
    Ok(rescued)
}
