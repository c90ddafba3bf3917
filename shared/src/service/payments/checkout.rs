//! A paid Checkout Session: the money check, orders created from a session,
//! and an admin's decision on a payment that did not pay its order.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::ingest::{find_order, note};
use super::stripe::{CheckoutSession, Refs};
use super::{IngestStatus, Ingested, MAX_REASON, PaymentError, PaymentPolicy, lock_order};
use crate::db::{keys, orders as order_rows, outbox};
use crate::db::{payment_events, payments};
use crate::domain::money::{Received, from_minor, mismatch};
use crate::domain::order::PaymentStatus;
use crate::service::Invalid;
use crate::service::deliverable::AcceptRules;
use crate::service::orders::{
    CreateOrderError, Customer, Fulfilment, Game, NewItem, NewOrder, NewPaymentStatus,
    create_order_in, start_fulfilment,
};

/// The idempotency key of the order created from a session.
pub(super) fn session_key(session: &str) -> String {
    format!("stripe:checkout:{session}")
}

pub(super) async fn paid(
    conn: &mut PgConnection,
    session: &CheckoutSession,
    refs: &Refs,
    actor: &str,
    rules: &AcceptRules,
) -> Result<Ingested, PaymentError> {
    // `no_payment_required`: a free checkout (a 100 % coupon) is paid too.
    if !matches!(
        session.payment_status.as_deref(),
        Some("paid" | "no_payment_required")
    ) {
        return Ok(Ingested::new(
            IngestStatus::Ignored,
            None,
            "the session is not paid yet (an asynchronous payment method); waiting for async_payment_succeeded".to_owned(),
        ));
    }
    let received = session.received();
    let Some(order_id) = find_order(conn, refs).await? else {
        if refs.order_id().is_some() {
            return Ok(Ingested::new(
                IngestStatus::Failed,
                None,
                "metadata.order_id names no order".to_owned(),
            ));
        }
        return create_from_session(conn, session, received.as_ref(), actor, rules).await;
    };
    let before = lock_order(conn, order_id).await?;
    if before.payment == PaymentStatus::Mismatched
        && let Some(pi) = session.payment_intent()
        && before.transaction_id.as_deref() != Some(pi)
    {
        return another_payment(conn, &before, pi, received.as_ref(), actor, rules).await;
    }
    // The payment that is paying now is the one to refund against.
    payments::set_stripe_payment(conn, order_id, session.payment_intent()).await?;
    if matches!(
        before.payment,
        PaymentStatus::Pending | PaymentStatus::Failed
    ) {
        if let Some(issue) = mismatch(before.total, &before.currency, received.as_ref()) {
            record_mismatch(conn, order_id, received.as_ref(), &issue, actor).await?;
            return Ok(Ingested::new(
                IngestStatus::Applied,
                Some(order_id),
                format!(
                    "payment recorded but not applied: {issue}; nothing is delivered until an admin accepts or refunds it"
                ),
            ));
        }
        record_paid(conn, order_id, received.as_ref()).await?;
    }
    let note_text = match start_fulfilment(conn, order_id, actor, false, rules).await? {
        Fulfilment::Started(n) => format!("paid; {n} deliveries queued"),
        Fulfilment::AlreadyPaid => {
            let pi = session.payment_intent();
            if let (Some(known), Some(pi)) = (&before.transaction_id, pi)
                && known != pi
            {
                // Paid twice (two sessions for one order): the customer was charged again.
                keys::alert(
                    conn,
                    "paid_twice",
                    &format!(
                        "order {order_id} was paid again by {pi} (first payment {known}); refund one of them"
                    ),
                    pi,
                )
                .await?;
                note(
                    conn,
                    order_id,
                    "payment.duplicate",
                    format!(
                        "a second payment {pi} arrived for this order (first {known}); nothing more is delivered, refund one"
                    ),
                    actor,
                    json!({ "payment_intent": pi }),
                )
                .await?;
                "paid twice: admin alert raised".to_owned()
            } else {
                "the order was already paid".to_owned()
            }
        }
        Fulfilment::Cancelled => "paid after it was cancelled; nothing delivered".to_owned(),
        Fulfilment::Unplannable(e) => format!("paid, but cannot be fulfilled: {e}"),
        Fulfilment::Waiting(hold) => format!("paid; waiting to be processed ({hold})"),
    };
    Ok(Ingested::new(
        IngestStatus::Applied,
        Some(order_id),
        note_text,
    ))
}

/// A second payment for an order whose first did not match (the customer
/// paid again, correctly this time): if it pays the order it becomes the
/// order's payment and fulfilment starts; either way the first payment is
/// left for an admin to give back, and an alert says so.
async fn another_payment(
    conn: &mut PgConnection,
    before: &crate::db::payments::LockedOrder,
    pi: &str,
    received: Option<&Received>,
    actor: &str,
    rules: &AcceptRules,
) -> Result<Ingested, PaymentError> {
    let order_id = before.id;
    let first = before.transaction_id.as_deref().unwrap_or("?");
    if let Some(issue) = mismatch(before.total, &before.currency, received) {
        keys::alert(
            conn,
            "paid_twice",
            &format!(
                "order {} got a second payment {pi} that does not match either ({issue}); the first, {first}, waits too: refund what is not wanted",
                before.order_number
            ),
            pi,
        )
        .await?;
        return Ok(Ingested::new(
            IngestStatus::Applied,
            Some(order_id),
            format!("a second payment that does not match either: {issue}"),
        ));
    }
    payments::replace_payment(conn, order_id, Some(pi)).await?;
    record_paid(conn, order_id, received).await?;
    note(
        conn,
        order_id,
        "payment.superseded",
        format!("payment {pi} pays the order; the earlier payment {first}, which did not, must be refunded at the gateway"),
        actor,
        json!({ "payment_intent": pi, "superseded": first }),
    )
    .await?;
    keys::alert(
        conn,
        "superseded_payment",
        &format!(
            "order {} was paid correctly by {pi}; the earlier payment {first} did not match and is still with you: refund it at Stripe",
            before.order_number
        ),
        pi,
    )
    .await?;
    let note_text = match start_fulfilment(conn, order_id, actor, true, rules).await? {
        Fulfilment::Started(n) => format!("paid by a second payment; {n} deliveries queued"),
        Fulfilment::Cancelled => "paid after it was cancelled; nothing delivered".to_owned(),
        Fulfilment::AlreadyPaid => "the order was already paid".to_owned(),
        Fulfilment::Unplannable(e) => format!("paid, but cannot be fulfilled: {e}"),
        Fulfilment::Waiting(hold) => format!("paid; waiting to be processed ({hold})"),
    };
    Ok(Ingested::new(
        IngestStatus::Applied,
        Some(order_id),
        note_text,
    ))
}

async fn create_from_session(
    conn: &mut PgConnection,
    session: &CheckoutSession,
    received: Option<&Received>,
    actor: &str,
    rules: &AcceptRules,
) -> Result<Ingested, PaymentError> {
    let (mut order, issue) = match order_from_session(session) {
        Ok(o) => o,
        Err(e) => return Ok(Ingested::new(IngestStatus::Failed, None, e.to_string())),
    };
    let issue = issue.or_else(|| mismatch(order.total(), &order.currency, received));
    if issue.is_some() {
        order.payment_status = NewPaymentStatus::Pending;
    }
    let id =
        match create_order_in(conn, &order, Some(&session_key(&session.id)), actor, rules).await {
            Ok(id) => id,
            Err(
                e @ (CreateOrderError::Invalid(_)
                | CreateOrderError::NotDeliverable(_)
                | CreateOrderError::TooManyDeliveries { .. }),
            ) => {
                return Ok(Ingested::new(
                    IngestStatus::Failed,
                    None,
                    format!("the session does not make a valid order: {e}"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
    match issue {
        Some(issue) => {
            record_mismatch(conn, id, received, &issue, actor).await?;
            Ok(Ingested::new(
                IngestStatus::Applied,
                Some(id),
                format!(
                    "order created from the session; payment not applied: {issue}; nothing is delivered until an admin accepts or refunds it"
                ),
            ))
        }
        None => {
            record_paid(conn, id, received).await?;
            Ok(Ingested::new(
                IngestStatus::Applied,
                Some(id),
                "order created from the session".to_owned(),
            ))
        }
    }
}

async fn record_paid(
    conn: &mut PgConnection,
    order_id: Uuid,
    received: Option<&Received>,
) -> Result<(), sqlx::Error> {
    payments::record_received(conn, order_id, received, None).await
}

/// Records a payment that does not pay its order: its figures and why, the
/// `mismatched` payment status, the timeline entry and one admin alert.
/// Nothing is delivered. The caller holds the order's row lock.
pub(crate) async fn record_mismatch(
    conn: &mut PgConnection,
    order_id: Uuid,
    received: Option<&Received>,
    issue: &str,
    actor: &str,
) -> Result<(), PaymentError> {
    payments::record_received(conn, order_id, received, Some(issue)).await?;
    order_rows::set_payment_status(conn, order_id, PaymentStatus::Mismatched).await?;
    let order = lock_order(conn, order_id).await?;
    note(
        conn,
        order_id,
        "payment.mismatch",
        format!(
            "a payment arrived that does not pay the order ({issue}); nothing is delivered until an admin accepts or refunds it"
        ),
        actor,
        json!({
            "issue": issue,
            "paid_amount": received.map(|r| r.amount().to_string()),
            "paid_currency": received.map(Received::currency),
        }),
    )
    .await?;
    keys::alert(
        conn,
        "payment_mismatch",
        &format!(
            "order {} ({} {}): {issue}; accept the payment (POST /v1/orders/{}/payment/accept) or refund it",
            order.order_number, order.total, order.currency, order.order_number
        ),
        &order_id.to_string(),
    )
    .await?;
    Ok(())
}

pub(super) async fn async_failed(
    conn: &mut PgConnection,
    refs: &Refs,
    actor: &str,
) -> Result<Ingested, PaymentError> {
    let Some(order_id) = find_order(conn, refs).await? else {
        return Ok(Ingested::new(
            IngestStatus::Ignored,
            None,
            "no order for this session".to_owned(),
        ));
    };
    let order = lock_order(conn, order_id).await?;
    if order.payment != PaymentStatus::Pending {
        return Ok(Ingested::new(
            IngestStatus::Ignored,
            Some(order_id),
            format!("the payment is already {}", order.payment),
        ));
    }
    order_rows::set_payment_status(conn, order_id, PaymentStatus::Failed).await?;
    // The order stays pending: the customer may pay again (a new session for
    // the same order), or the store cancels it.
    note(
        conn,
        order_id,
        "payment.failed",
        "the asynchronous payment failed; the order waits for another payment or a cancel".into(),
        actor,
        json!({}),
    )
    .await?;
    Ok(Ingested::new(IngestStatus::Applied, Some(order_id), None))
}

/// Builds an order from a Checkout Session without `metadata.order_id`, and
/// says why the session's payment cannot be applied to it, if it cannot.
///
/// | order field | session field |
/// |---|---|
/// | items | `metadata.courier_items`: `sku:quantity[:unit_price]`, comma-separated |
/// | unit prices | from Stripe's `amount_subtotal`: a single item's is `amount_subtotal` ÷ quantity; with several items each gives its unit price in metadata, and they must add up to `amount_subtotal` to the minor unit |
/// | currency | `currency`, upper-cased |
/// | discount, tax | `total_details.amount_discount`, `.amount_tax` |
/// | customer | `customer_details.name` / `.email`; `metadata.customer_ip`, `metadata.customer_ref` (the store's account id) |
/// | game | `metadata.game_username`, `metadata.game_uuid` |
/// | discord_user_id | `metadata.discord_user_id` |
/// | gateway / transaction_id | `stripe` / `payment_intent` |
///
/// Prices in metadata are never trusted alone: a session without
/// `amount_subtotal`, one whose metadata prices do not add up to it, one with
/// shipping (Courier sells digital goods), or one whose `amount_total` is not
/// the order's total is an issue (the order is created with the payment
/// `mismatched`). Line items are not in the webhook, and fetching them would
/// put a Stripe call on the request path; the store's checkout code sets the
/// metadata.
pub fn order_from_session(
    session: &CheckoutSession,
) -> Result<(NewOrder, Option<String>), Invalid> {
    let currency = session
        .currency
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Invalid::new("currency", "the session has no currency"))?
        .to_ascii_uppercase();
    let list = session.meta("courier_items").ok_or_else(|| {
        Invalid::new(
            "metadata.courier_items",
            "the session has neither metadata.order_id nor metadata.courier_items",
        )
    })?;
    let mut items = Vec::new();
    for (i, part) in list.split(',').map(str::trim).enumerate() {
        let field = format!("metadata.courier_items[{i}]");
        let mut bits = part.split(':');
        let sku = bits.next().unwrap_or_default().trim();
        let quantity: i32 = bits
            .next()
            .and_then(|q| q.trim().parse().ok())
            .filter(|q| (1..=10_000).contains(q))
            .ok_or_else(|| {
                Invalid::new(
                    &field,
                    "expected `sku:quantity[:unit_price]`, quantity 1 to 10000",
                )
            })?;
        // Bounded before any arithmetic: Decimal multiplication panics on overflow.
        let price = match bits.next() {
            None => None,
            Some(p) => {
                let p: Decimal = p
                    .trim()
                    .parse()
                    .map_err(|_| Invalid::new(&field, "the unit price is not a decimal"))?;
                if p.is_sign_negative() || p > Decimal::from(1_000_000_000) || p.scale() > 4 {
                    return Err(Invalid::new(&field, "the unit price is not a valid amount"));
                }
                Some(p)
            }
        };
        items.push((sku.to_owned(), quantity, price));
    }
    let subtotal = session.amount_subtotal.map(|s| from_minor(s, &currency));
    let totals = session.totals();
    let mut issue = None;
    if subtotal.is_none() {
        issue = Some(
            "the session has no amount_subtotal; prices written in metadata are not trusted alone"
                .to_owned(),
        );
    }
    if totals.amount_shipping.unwrap_or(0) != 0 {
        issue.get_or_insert_with(|| {
            "the session charges shipping, which Courier does not sell".to_owned()
        });
    }
    let single = items.len() == 1;
    let mut new_items = Vec::with_capacity(items.len());
    for (i, (sku, quantity, price)) in items.into_iter().enumerate() {
        let unit_price = match (price, subtotal) {
            (Some(p), _) => p,
            (None, Some(s)) if single && quantity > 0 => {
                let unit = (s / Decimal::from(quantity)).round_dp(4);
                if unit * Decimal::from(quantity) != s {
                    issue.get_or_insert_with(|| {
                        format!(
                            "amount_subtotal {s} {currency} does not divide into {quantity} equal unit prices; give the unit price in metadata"
                        )
                    });
                }
                unit
            }
            (None, None) if single => Decimal::ZERO,
            (None, _) => {
                return Err(Invalid::new(
                    format!("metadata.courier_items[{i}]"),
                    "with several items, each needs its unit price",
                ));
            }
        };
        new_items.push(NewItem {
            product: sku,
            quantity,
            unit_price,
            custom_fields: serde_json::Map::new(),
        });
    }
    let items_total: Decimal = new_items
        .iter()
        .map(|i| i.unit_price * Decimal::from(i.quantity))
        .sum();
    if let Some(s) = subtotal
        && items_total != s
    {
        issue.get_or_insert_with(|| {
            format!(
                "the unit prices in metadata add up to {items_total} {currency}, but Stripe's amount_subtotal is {s} {currency}"
            )
        });
    }
    let meta = |key: &str| session.meta(key).map(str::to_owned);
    let customer = session.customer_details.clone().unwrap_or_default();
    let order = NewOrder {
        payment_status: NewPaymentStatus::Paid,
        tax: from_minor(totals.amount_tax.unwrap_or(0), &currency),
        discount: from_minor(totals.amount_discount.unwrap_or(0), &currency),
        amount_paid: None,
        currency,
        gateway: Some("stripe".into()),
        transaction_id: session.payment_intent().map(str::to_owned),
        customer: Customer {
            name: customer.name.filter(|n| !n.is_empty()),
            email: customer.email.filter(|e| !e.is_empty()),
            phone: None,
            ip: meta("customer_ip").and_then(|ip| ip.parse().ok()),
            // Stripe allows 500 characters of metadata; an over-long
            // reference is dropped rather than failing a paid session.
            account_ref: meta("customer_ref").filter(|r| r.len() <= 255),
        },
        game: Game {
            username: meta("game_username"),
            uuid: meta("game_uuid"),
        },
        discord_user_id: meta("discord_user_id"),
        billing_address: None,
        shipping_address: None,
        items: new_items,
    };
    Ok((order, issue))
}

/// Body of `POST /v1/orders/{id}/payment/accept`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    /// Why the payment is accepted as it is (goes into the timeline).
    pub reason: String,
}

/// What accepting a payment did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub order_id: Uuid,
    pub payment_status: PaymentStatus,
    /// Deliveries queued by the acceptance.
    pub deliveries_queued: usize,
    pub note: Option<String>,
}

/// An admin accepts a `mismatched` payment as it is: the payment becomes
/// `paid` and the order is fulfilled, with who and why in the timeline.
///
/// The order is re-priced to what was paid (its total and currency become
/// the payment's, the old ones stay in the timeline), so later refunds and
/// disputes are measured against the money that came in; events about the
/// payment that waited for the decision are applied in the same transaction.
pub async fn accept_payment(
    pool: &PgPool,
    order_id: Uuid,
    req: &AcceptRequest,
    actor: &str,
    policy: &PaymentPolicy,
) -> Result<Accepted, PaymentError> {
    let reason = req.reason.trim();
    if reason.is_empty() {
        return Err(Invalid::new("reason", "say why the payment is accepted").into());
    }
    crate::service::check_text("reason", reason, MAX_REASON)?;
    let mut tx = pool.begin().await?;
    // The payment's lock before the order's, in the order ingest takes them.
    let payment_ref = payments::transaction_id(&mut tx, order_id).await?;
    if let Some(r) = &payment_ref {
        payment_events::lock_payment_ref(&mut tx, r).await?;
    }
    let order = lock_order(&mut tx, order_id).await?;
    if order.payment != PaymentStatus::Mismatched {
        return Err(PaymentError::NoMismatchedPayment(order.payment));
    }
    // Refunded (the gateway refused to give the payment back) or cancelled:
    // nothing is delivered any more; refund again instead.
    if order.status.is_final() {
        return Err(PaymentError::OrderClosed(order.status));
    }
    note(
        &mut tx,
        order_id,
        "payment.accepted",
        format!(
            "the payment of {} {} was accepted for the order's total {} {}{}: {reason}",
            order
                .paid_amount
                .map_or_else(|| "?".to_owned(), |a| a.to_string()),
            order.paid_currency.as_deref().unwrap_or("?"),
            order.total,
            order.currency,
            if order.paid_amount.is_some() {
                "; the order is now worth what was paid"
            } else {
                ""
            }
        ),
        actor,
        json!({
            "reason": reason,
            "total_before": order.total.to_string(),
            "currency_before": order.currency,
        }),
    )
    .await?;
    if let (Some(amount), Some(currency)) = (order.paid_amount, &order.paid_currency) {
        payments::reprice(&mut tx, order_id, amount, currency).await?;
    }
    payments::record_received(&mut tx, order_id, None, None).await?;
    let (queued, note_text) =
        match start_fulfilment(&mut tx, order_id, actor, true, &policy.accept).await? {
            Fulfilment::Started(n) => (n, None),
            Fulfilment::AlreadyPaid => (0, Some("the order was already paid".to_owned())),
            Fulfilment::Cancelled => (
                0,
                Some("the order was cancelled: nothing is delivered (refund it)".to_owned()),
            ),
            Fulfilment::Unplannable(e) => (0, Some(format!("the order cannot be fulfilled: {e}"))),
            Fulfilment::Waiting(_) => (0, None),
        };
    super::ingest::release_parked(&mut tx, order_id, payment_ref, chrono::Utc::now(), policy)
        .await?;
    outbox::notify_relays(&mut tx).await?;
    tx.commit().await?;
    Ok(Accepted {
        order_id,
        payment_status: PaymentStatus::Paid,
        deliveries_queued: queued,
        note: note_text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(v: serde_json::Value) -> CheckoutSession {
        serde_json::from_value(v).expect("a session")
    }

    #[test]
    fn a_session_maps_to_an_order_priced_from_stripes_figures() {
        let base = json!({
            "id": "cs_1", "currency": "eur", "payment_intent": "pi_1", "amount_subtotal": 1000,
            "amount_total": 1190, "total_details": { "amount_tax": 190 },
            "customer_details": { "email": "a@example.com", "name": "A" },
            "metadata": { "courier_items": "vip:2", "game_username": "steve", "customer_ip": "198.51.100.4" },
        });
        let (order, issue) = order_from_session(&session(base.clone())).expect("maps");
        assert_eq!(issue, None);
        assert_eq!(order.currency, "EUR");
        assert_eq!(order.tax, Decimal::new(190, 2));
        assert_eq!(order.items[0].unit_price, Decimal::new(5, 0));
        assert_eq!(order.total(), Decimal::new(1190, 2));
        assert_eq!(order.transaction_id.as_deref(), Some("pi_1"));
        assert!(order.customer.ip.is_some());

        let mut two = base.clone();
        two["metadata"]["courier_items"] = json!("vip:1,coins:3");
        let err = order_from_session(&session(two.clone())).expect_err("prices needed");
        assert_eq!(err.field, "metadata.courier_items[0]");
        two["metadata"]["courier_items"] = json!("vip:1:4.00,coins:3:2.00");
        let (order, issue) = order_from_session(&session(two.clone())).expect("priced");
        assert_eq!((order.items.len(), issue), (2, None));

        // Metadata prices that do not add up to Stripe's subtotal.
        two["metadata"]["courier_items"] = json!("vip:1:0.01,coins:3:0.01");
        let (_, issue) = order_from_session(&session(two)).expect("maps");
        assert!(issue.is_some_and(|i| i.contains("amount_subtotal")));

        // No amount_subtotal: metadata alone is not trusted.
        let mut bare = base.clone();
        bare.as_object_mut().map(|o| o.remove("amount_subtotal"));
        bare["metadata"]["courier_items"] = json!("vip:1:9.99");
        let (_, issue) = order_from_session(&session(bare)).expect("maps");
        assert!(issue.is_some_and(|i| i.contains("no amount_subtotal")));

        let mut none = base;
        none["metadata"] = json!({});
        assert_eq!(
            order_from_session(&session(none))
                .expect_err("no items")
                .field,
            "metadata.courier_items"
        );
    }

    #[test]
    fn a_discount_lowers_the_total() {
        let s = session(json!({
            "id": "cs_2", "currency": "usd", "amount_subtotal": 1000, "amount_total": 850,
            "total_details": { "amount_tax": 50, "amount_discount": 200 },
            "metadata": { "courier_items": "vip:1" },
        }));
        let (order, issue) = order_from_session(&s).expect("maps");
        assert_eq!(issue, None);
        assert_eq!(order.total(), Decimal::new(850, 2));
        assert_eq!(
            mismatch(order.total(), &order.currency, s.received().as_ref()),
            None
        );
    }
}
