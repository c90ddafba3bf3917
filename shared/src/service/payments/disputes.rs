//! Chargebacks: a dispute opened withdraws access (or runs the chargeback
//! commands only, by policy); closed lost or accepted, the money went back.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use sqlx::PgConnection;

use super::ingest::note;
use super::stripe::Dispute;
use super::{IngestStatus, Ingested, PaymentError};
use crate::db::disputes::{self, DisputeFacts};
use crate::db::payments::LockedOrder;
use crate::db::{deliveries, outbox};
use crate::domain::money::from_minor;
use crate::domain::order::{OrderStatus, PaymentStatus};
use crate::domain::payment::DisputeOutcome;
use crate::service::revoke::{self, Cause};

/// Stripe's dispute status → Courier's outcome. Stripe has no "accepted"
/// status: accepting closes a dispute as `lost` with no evidence submitted.
/// So does letting the deadline pass unanswered, which is told apart by time:
/// closed `lost`, nothing submitted, before the evidence deadline → `accepted`
/// (a heuristic; docs/payments.md says so).
fn outcome(dispute: &Dispute, at: DateTime<Utc>) -> Option<DisputeOutcome> {
    let evidence = dispute.evidence_details.clone().unwrap_or_default();
    match dispute.status.as_deref()? {
        "won" | "warning_closed" => Some(DisputeOutcome::Won),
        "lost"
            if evidence.submission_count == Some(0)
                && evidence.due_by.is_some_and(|due| at.timestamp() < due) =>
        {
            Some(DisputeOutcome::Accepted)
        }
        "lost" => Some(DisputeOutcome::Lost),
        _ => None,
    }
}

pub(super) async fn apply(
    conn: &mut PgConnection,
    order: &LockedOrder,
    kind: &str,
    dispute: &Dispute,
    occurred: DateTime<Utc>,
    revoke_on_dispute: bool,
    actor: &str,
) -> Result<Ingested, PaymentError> {
    let order_id = order.id;
    let currency = dispute
        .currency
        .as_deref()
        .map(str::to_ascii_uppercase)
        .unwrap_or_else(|| order.currency.clone());
    let amount = from_minor(dispute.amount.unwrap_or(0), &currency);
    let reason = dispute.reason.as_deref().unwrap_or("general");
    let status = dispute.status.as_deref().unwrap_or("unknown");
    let due = dispute
        .evidence_details
        .as_ref()
        .and_then(|e| e.due_by)
        .and_then(|t| Utc.timestamp_opt(t, 0).single());
    let closing = if kind == "charge.dispute.closed" {
        outcome(dispute, occurred)
    } else {
        None
    };
    let facts = DisputeFacts {
        order_id,
        external_id: &dispute.id,
        amount,
        currency: &currency,
        reason,
        gateway_status: status,
        evidence_due_by: due,
        occurred_at: occurred,
    };
    let created = disputes::open_dispute(conn, &facts).await?;
    // (A dispute first seen closed as won never withdrew anything.)
    if created && closing != Some(DisputeOutcome::Won) {
        note(
            conn,
            order_id,
            "dispute.created",
            format!(
                "dispute {} opened: {amount} {currency}, reason {reason}{}",
                dispute.id,
                due.map(|d| format!(", evidence due by {}", d.to_rfc3339()))
                    .unwrap_or_default()
            ),
            actor,
            json!({ "dispute": dispute.id, "status": status }),
        )
        .await?;
        if revoke_on_dispute {
            let why = format!("dispute {}", dispute.id);
            revoke::withdraw(conn, order_id, Cause::Chargeback, &why, actor).await?;
        } else {
            revoke::chargeback_commands(conn, order_id, actor).await?;
        }
    }
    // The closing event always closes (once), whenever it arrives; other
    // events update an open dispute only if newer than what was applied.
    let closed_now = match closing {
        Some(o) => disputes::close_dispute(conn, &facts, o).await?,
        None => {
            disputes::update_dispute(conn, &facts).await?;
            false
        }
    };
    if let (true, Some(o)) = (closed_now, closing) {
        note(
            conn,
            order_id,
            &format!("dispute.{o}"),
            format!("dispute {} closed: {o}", dispute.id),
            actor,
            json!({ "dispute": dispute.id, "status": status }),
        )
        .await?;
        if o != DisputeOutcome::Won {
            // The money went back through the chargeback.
            crate::db::orders::set_payment_status(conn, order_id, PaymentStatus::Refunded).await?;
            if order.status.transition(OrderStatus::Refunded).is_ok() {
                deliveries::set_order_status(conn, order_id, OrderStatus::Refunded, actor).await?;
            }
            let why = format!("dispute {} {o}", dispute.id);
            revoke::withdraw(conn, order_id, Cause::Chargeback, &why, actor).await?;
        }
    }
    outbox::notify_relays(conn).await?;
    Ok(Ingested::new(IngestStatus::Applied, Some(order_id), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispute_outcomes_tell_accepted_from_lost() {
        let d = |status: &str, n: i64| -> Dispute {
            serde_json::from_value(json!({
                "id": "dp_1", "status": status,
                "evidence_details": { "submission_count": n, "due_by": 1_000 },
            }))
            .expect("a dispute")
        };
        let before = Utc.timestamp_opt(900, 0).single().expect("time");
        let after = Utc.timestamp_opt(1_100, 0).single().expect("time");
        assert_eq!(outcome(&d("won", 1), before), Some(DisputeOutcome::Won));
        assert_eq!(
            outcome(&d("warning_closed", 0), before),
            Some(DisputeOutcome::Won)
        );
        assert_eq!(outcome(&d("lost", 1), before), Some(DisputeOutcome::Lost));
        assert_eq!(
            outcome(&d("lost", 0), before),
            Some(DisputeOutcome::Accepted)
        );
        assert_eq!(
            outcome(&d("lost", 0), after),
            Some(DisputeOutcome::Lost),
            "unanswered until the deadline"
        );
        assert_eq!(outcome(&d("needs_response", 0), before), None);
    }
}
