//! Signing webhooks the way the gateways document it, written here from the
//! specifications and not with Courier's code, so a test catches Courier
//! verifying the wrong thing.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(message);
    m.finalize().into_bytes().to_vec()
}

/// Stripe: `t=<t>,v1=<hex HMAC-SHA256("{t}.{body}") keyed with the secret>`.
pub fn stripe_v1(secret: &str, t: i64, body: &str) -> String {
    hex::encode(hmac(secret.as_bytes(), format!("{t}.{body}").as_bytes()))
}

pub fn stripe_header(secret: &str, t: i64, body: &str) -> String {
    format!("t={t},v1={}", stripe_v1(secret, t, body))
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256("{id}.{ts}.{body}")>` keyed with
/// the base64-decoded part of `whsec_…`.
pub fn standard_signature(secret: &str, id: &str, ts: i64, body: &str) -> String {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("whsec_ + base64");
    format!(
        "v1,{}",
        STANDARD.encode(hmac(&key, format!("{id}.{ts}.{body}").as_bytes()))
    )
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A Stripe event envelope around `object`.
pub fn stripe_event(id: &str, kind: &str, object: Value) -> Value {
    json!({
        "id": id, "object": "event", "type": kind, "created": now(),
        "livemode": false, "api_version": "2024-06-20",
        "data": { "object": object },
    })
}

/// A paid Checkout Session.
pub fn checkout_session(session: &str, payment_intent: &str, metadata: Value) -> Value {
    json!({
        "id": session, "object": "checkout.session", "payment_status": "paid",
        "status": "complete", "payment_intent": payment_intent, "currency": "usd",
        "amount_subtotal": 998, "amount_total": 1048, "total_details": { "amount_tax": 50 },
        "customer_details": { "email": "alex@example.com", "name": "Alex" },
        "metadata": metadata,
    })
}

/// A charge after refunds totalling `refunded` (minor units) of `amount`.
pub fn refunded_charge(payment_intent: &str, amount: i64, refunded: i64, metadata: Value) -> Value {
    json!({
        "id": format!("ch_{payment_intent}"), "object": "charge", "payment_intent": payment_intent,
        "amount": amount, "amount_refunded": refunded, "currency": "usd",
        "refunded": refunded >= amount, "metadata": metadata,
    })
}

/// A dispute on the charge of `payment_intent`.
pub fn dispute(
    id: &str,
    payment_intent: &str,
    amount: i64,
    status: &str,
    submissions: i64,
) -> Value {
    json!({
        "id": id, "object": "dispute", "amount": amount, "currency": "usd",
        "reason": "fraudulent", "status": status, "payment_intent": payment_intent,
        "charge": format!("ch_{payment_intent}"),
        "evidence_details": { "due_by": now() + 7 * 86_400, "submission_count": submissions },
    })
}
