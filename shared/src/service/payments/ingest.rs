//! Verified Stripe events in: stored once (deduplicated on the event id),
//! applied in the same transaction, serialised per payment, routed by type;
//! events that arrive before their payment are kept and applied when it does.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::stripe::{self, Refs, StripeEvent};
use super::{
    IngestStatus, Ingested, PaymentError, PaymentPolicy, checkout, disputes, lock_order, refunds,
};
use crate::db::events::{self, NewEvent};
use crate::db::keys;
use crate::db::payment_events::{self, InboxEvent};
use crate::db::payments::{self, LockedOrder};
use crate::domain::order::PaymentStatus;
use crate::domain::payment::EventStatus;

/// Applies a verified Stripe event once (deduplicated on its id), in one
/// transaction with the event row; answers after the commit.
pub async fn ingest_stripe(
    pool: &PgPool,
    event: &StripeEvent,
    raw: &Value,
    policy: &PaymentPolicy,
) -> Result<Ingested, PaymentError> {
    let mut tx = pool.begin().await?;
    let occurred = Utc
        .timestamp_opt(event.created, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let refs = Refs::from_object(&event.data.object);
    let order_ref = refs.payment_ref().map(str::to_owned);
    let Some(row) = payment_events::receive(
        &mut tx,
        &InboxEvent {
            provider: "stripe",
            event_id: &event.id,
            event_type: &event.kind,
            order_ref: order_ref.as_deref(),
            payload: raw,
            occurred_at: occurred,
        },
    )
    .await?
    else {
        tx.commit().await?;
        return Ok(Ingested::new(IngestStatus::Duplicate, None, None));
    };
    if let Some(r) = &order_ref {
        // Two events of one payment (the payment and its early refund) are
        // applied one after the other, so neither misses the other.
        payment_events::lock_payment_ref(&mut tx, r).await?;
    }
    let actor = format!("stripe:{}", event.id);
    let outcome = apply(
        &mut tx,
        &event.kind,
        &event.data.object,
        occurred,
        policy,
        &actor,
    )
    .await?;
    payment_events::settle_event(
        &mut tx,
        row,
        outcome.status.stored(),
        outcome.order_id,
        outcome.note.as_deref(),
    )
    .await?;
    if outcome.status == IngestStatus::Failed {
        alert_failed(&mut tx, &event.id, &event.kind, outcome.note.as_deref()).await?;
    }
    // A payment that just became known releases the events that waited for it.
    if outcome.status == IngestStatus::Applied
        && event.kind.starts_with("checkout.session.")
        && let Some(order_id) = outcome.order_id
    {
        release_parked(&mut tx, order_id, order_ref, occurred, policy).await?;
    }
    tx.commit().await?;
    Ok(outcome)
}

async fn alert_failed(
    conn: &mut PgConnection,
    event_id: &str,
    kind: &str,
    note: Option<&str>,
) -> Result<(), sqlx::Error> {
    keys::alert(
        conn,
        "payment_event_failed",
        &format!(
            "Stripe event {event_id} ({kind}) could not be applied: {}",
            note.unwrap_or("")
        ),
        event_id,
    )
    .await
}

/// Stores a verified event that cannot be used as it is (it holds text
/// Postgres cannot keep, such as NUL): `payload` is the event with those
/// code points replaced, kept `failed` with `reason` and an admin alert, so
/// the gateway gets its 200 and stops re-sending, and nothing is applied.
pub async fn ingest_unusable(
    pool: &PgPool,
    provider: &str,
    event_id: &str,
    event_type: &str,
    payload: &Value,
    reason: &str,
) -> Result<Ingested, PaymentError> {
    let mut tx = pool.begin().await?;
    let Some(row) = payment_events::receive(
        &mut tx,
        &InboxEvent {
            provider,
            event_id,
            event_type,
            order_ref: None,
            payload,
            occurred_at: Utc::now(),
        },
    )
    .await?
    else {
        tx.commit().await?;
        return Ok(Ingested::new(IngestStatus::Duplicate, None, None));
    };
    payment_events::settle_event(&mut tx, row, EventStatus::Failed, None, Some(reason)).await?;
    alert_failed(&mut tx, event_id, event_type, Some(reason)).await?;
    tx.commit().await?;
    Ok(Ingested::new(IngestStatus::Failed, None, reason.to_owned()))
}

/// Applies the events that waited for the order's payment (a refund or
/// dispute that came first, or while the payment waited for an admin).
pub(super) async fn release_parked(
    conn: &mut PgConnection,
    order_id: Uuid,
    order_ref: Option<String>,
    occurred: DateTime<Utc>,
    policy: &PaymentPolicy,
) -> Result<(), PaymentError> {
    let order = lock_order(conn, order_id).await?;
    let mut refs = vec![order_id.to_string(), order.order_number.clone()];
    refs.extend(order_ref);
    for parked in payment_events::parked(conn, "stripe", &refs).await? {
        let object = &parked.payload["data"]["object"];
        let actor = format!(
            "stripe:{}",
            parked.payload["id"].as_str().unwrap_or_default()
        );
        let at = parked.payload["created"]
            .as_i64()
            .and_then(|t| Utc.timestamp_opt(t, 0).single())
            .unwrap_or(occurred);
        let later = apply(conn, &parked.event_type, object, at, policy, &actor).await?;
        // Still unpaid (a failed payment, say): it stays parked.
        if later.status != IngestStatus::Pending {
            payment_events::settle_event(
                conn,
                parked.id,
                later.status.stored(),
                later.order_id,
                later.note.as_deref(),
            )
            .await?;
        }
    }
    Ok(())
}

/// Re-tries events kept `pending` (a refund or dispute that came before its
/// payment). The payment event releases them at once when it is a Checkout
/// event; this sweep (run by every worker's rescuer) covers orders paid any
/// other way (`POST /v1/orders` with the PaymentIntent as `transaction_id`,
/// the generic webhook) and raises an admin alert for events still waiting
/// after an hour. Returns how many were applied.
pub async fn retry_parked(
    pool: &PgPool,
    policy: &PaymentPolicy,
    limit: i64,
) -> Result<usize, PaymentError> {
    let mut conn = pool.acquire().await?;
    // Events still waiting after an hour are worth an admin's look, once.
    for (id, event, order_ref) in payment_events::mark_stale_waiting(&mut conn, limit).await? {
        keys::alert(
            &mut conn,
            "payment_event_waiting",
            &format!(
                "payment event {event} has waited over an hour for its payment ({}); it is re-tried for a day, then left to you",
                order_ref.as_deref().unwrap_or("?")
            ),
            &id.to_string(),
        )
        .await?;
    }
    let waiting = payment_events::recent_waiting(&mut conn, limit).await?;
    drop(conn);
    let mut applied = 0;
    for (id, order_ref) in waiting {
        // One event that fails must not hold up the others.
        match retry_one(pool, policy, id, order_ref.as_deref()).await {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(event = id, error = %e, "a waiting payment event could not be applied")
            }
        }
    }
    Ok(applied)
}

/// Applies one waiting event if its payment is known now; true if it was.
async fn retry_one(
    pool: &PgPool,
    policy: &PaymentPolicy,
    id: i64,
    order_ref: Option<&str>,
) -> Result<bool, PaymentError> {
    let mut tx = pool.begin().await?;
    // The payment's lock first, as `ingest_stripe` takes it; the row is
    // skipped if an ingest holds it.
    if let Some(r) = order_ref {
        payment_events::lock_payment_ref(&mut tx, r).await?;
    }
    let Some((kind, payload, occurred)) = payment_events::lock_waiting(&mut tx, id).await? else {
        return Ok(false);
    };
    let actor = format!("stripe:{}", payload["id"].as_str().unwrap_or_default());
    let done = apply(
        &mut tx,
        &kind,
        &payload["data"]["object"],
        occurred,
        policy,
        &actor,
    )
    .await?;
    if done.status == IngestStatus::Pending {
        return Ok(false);
    }
    payment_events::settle_event(
        &mut tx,
        id,
        done.status.stored(),
        done.order_id,
        done.note.as_deref(),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Finds the order a Stripe object is about: `metadata.order_id` (id or
/// order number), else the payment, else the checkout session.
pub(super) async fn find_order(
    conn: &mut PgConnection,
    refs: &Refs,
) -> Result<Option<Uuid>, PaymentError> {
    if let Some(reference) = refs.order_id()
        && let Some(id) = payments::resolve_order(conn, reference).await?
    {
        return Ok(Some(id));
    }
    if let Some(pi) = refs.payment_intent()
        && let Some(id) = payments::order_by_payment_intent(conn, pi).await?
    {
        return Ok(Some(id));
    }
    if let Some(session) = refs.session_id() {
        return Ok(payments::order_by_key(conn, &checkout::session_key(session)).await?);
    }
    Ok(None)
}

/// Reads the event's object as `T`, or the `failed` outcome naming the field.
fn typed<T: serde::de::DeserializeOwned>(object: &Value) -> Result<T, Ingested> {
    stripe::object(object).map_err(|e| Ingested::new(IngestStatus::Failed, None, e))
}

async fn apply(
    conn: &mut PgConnection,
    kind: &str,
    object: &Value,
    occurred: DateTime<Utc>,
    policy: &PaymentPolicy,
    actor: &str,
) -> Result<Ingested, PaymentError> {
    let refs = Refs::from_object(object);
    match kind {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            let session = match typed(object) {
                Ok(s) => s,
                Err(failed) => return Ok(failed),
            };
            checkout::paid(conn, &session, &refs, actor, &policy.accept).await
        }
        "checkout.session.async_payment_failed" => checkout::async_failed(conn, &refs, actor).await,
        "charge.refunded" => {
            let charge = match typed(object) {
                Ok(c) => c,
                Err(failed) => return Ok(failed),
            };
            match paid_order(conn, &refs, kind).await? {
                Target::Waiting => Ok(park(&refs)),
                Target::Other(ignored) => Ok(ignored),
                Target::Order(order) => refunds::charge_refunded(conn, order, &charge, actor).await,
            }
        }
        "charge.dispute.created" | "charge.dispute.closed" | "charge.dispute.updated" => {
            let dispute = match typed(object) {
                Ok(d) => d,
                Err(failed) => return Ok(failed),
            };
            match paid_order(conn, &refs, kind).await? {
                Target::Waiting => Ok(park(&refs)),
                Target::Other(ignored) => Ok(ignored),
                Target::Order(order) => {
                    disputes::apply(
                        conn,
                        &order,
                        kind,
                        &dispute,
                        occurred,
                        policy.revoke_on_dispute,
                        actor,
                    )
                    .await
                }
            }
        }
        _ => Ok(Ingested::new(
            IngestStatus::Ignored,
            None,
            format!("Courier does not act on `{kind}`"),
        )),
    }
}

/// An event that arrived before its payment: kept, applied when it comes.
fn park(refs: &Refs) -> Ingested {
    match refs.payment_ref() {
        Some(r) => Ingested::new(
            IngestStatus::Pending,
            None,
            format!("no paid order for payment {r} yet; kept until it is paid"),
        ),
        None => Ingested::new(
            IngestStatus::Ignored,
            None,
            "the object names no payment_intent or metadata.order_id".to_owned(),
        ),
    }
}

/// What a charge or dispute event is about.
enum Target {
    /// No paid order for it yet: the event waits.
    Waiting,
    /// Another Stripe payment of the order than the one recorded (the second
    /// payment of an order paid twice): it must not refund or withdraw the
    /// order. Ignored, with an admin alert.
    Other(Ingested),
    /// The order, paid (or once paid and now being refunded), locked.
    Order(LockedOrder),
}

async fn paid_order(
    conn: &mut PgConnection,
    refs: &Refs,
    kind: &str,
) -> Result<Target, PaymentError> {
    let Some(order_id) = find_order(conn, refs).await? else {
        return Ok(Target::Waiting);
    };
    let order = lock_order(conn, order_id).await?;
    // A mismatched payment waits for an admin; refunds and disputes of it
    // wait with it (applied once it is accepted or given back).
    if matches!(
        order.payment,
        PaymentStatus::Pending | PaymentStatus::Failed | PaymentStatus::Mismatched
    ) {
        return Ok(Target::Waiting);
    }
    if let (Some("stripe"), Some(recorded), Some(pi)) = (
        order.gateway.as_deref(),
        order.transaction_id.as_deref(),
        refs.payment_intent(),
    ) && recorded != pi
    {
        keys::alert(
            conn,
            "other_payment_event",
            &format!(
                "{kind} about payment {pi} of order {order_id}, whose recorded payment is {recorded}: not applied; handle it at Stripe"
            ),
            &format!("{kind}:{pi}"),
        )
        .await?;
        return Ok(Target::Other(Ingested::new(
            IngestStatus::Ignored,
            Some(order_id),
            format!("about payment {pi}, not the order's recorded payment {recorded}"),
        )));
    }
    Ok(Target::Order(order))
}

/// The timeline entry of a payment event that changed nothing else.
pub(super) async fn note(
    conn: &mut PgConnection,
    order_id: Uuid,
    kind: &str,
    message: String,
    actor: &str,
    data: Value,
) -> Result<(), sqlx::Error> {
    events::record(
        conn,
        NewEvent {
            order_id,
            delivery_id: None,
            kind,
            message,
            actor,
            data,
        },
    )
    .await
}
