//! Verifying signed webhooks on the raw body, before anything is parsed.
//!
//! - Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, each `v1` an
//!   HMAC-SHA256 of `"{t}.{body}"` keyed with the endpoint secret (the whole
//!   `whsec_…` string). Any `v1` by any configured secret is accepted (rotation).
//! - Standard Webhooks (`/webhooks/generic`): `webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64>[ v1,<base64>…]`, each an HMAC-SHA256 of
//!   `"{id}.{timestamp}.{body}"` keyed with the base64 part of `whsec_…`.
//!
//! Both reject a timestamp further than the tolerance from now (either way:
//! a replay of an old request, or a forged one from the future). Comparisons
//! are constant-time (`Mac::verify_slice`). The HMAC is the `hmac` crate; only
//! the header parsing is ours (the Standard Webhooks crate fixes its tolerance
//! at five minutes and Stripe's official crates are whole API clients).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused; `code` is the API's stable error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the `{0}` header is missing")]
    Missing(&'static str),
    #[error("the `{0}` header is malformed")]
    Malformed(&'static str),
    #[error("the signed timestamp is outside the {0} s tolerance")]
    Expired(u64),
    #[error("no signature matches")]
    Mismatch,
}

impl SignatureError {
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing(_) | SignatureError::Mismatch => "invalid_signature",
            SignatureError::Malformed(_) => "malformed_signature",
            SignatureError::Expired(_) => "signature_expired",
        }
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m
}

fn fresh(timestamp: i64, now: i64, tolerance: u64) -> Result<(), SignatureError> {
    if now.abs_diff(timestamp) > tolerance {
        Err(SignatureError::Expired(tolerance))
    } else {
        Ok(())
    }
}

/// Verifies a `Stripe-Signature` header; returns the signed timestamp.
pub fn verify_stripe(
    header: Option<&str>,
    body: &[u8],
    secrets: &[&str],
    tolerance: u64,
    now: i64,
) -> Result<i64, SignatureError> {
    const NAME: &str = "Stripe-Signature";
    let header = header.ok_or(SignatureError::Missing(NAME))?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed(NAME))?;
        match k {
            "t" if timestamp.is_none() => {
                timestamp = Some(
                    v.parse::<i64>()
                        .map_err(|_| SignatureError::Malformed(NAME))?,
                );
            }
            "t" => return Err(SignatureError::Malformed(NAME)),
            // A v1 that is not hex cannot match; it does not spoil the others.
            "v1" => signatures.extend(hex::decode(v).ok()),
            _ => {} // v0 and future schemes are ignored, as Stripe advises.
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed(NAME))?;
    if signatures.is_empty() {
        return Err(SignatureError::Mismatch);
    }
    let prefix = format!("{t}.");
    let matched = secrets.iter().any(|secret| {
        let m = mac(secret.as_bytes(), &[prefix.as_bytes(), body]);
        signatures.iter().any(|s| m.clone().verify_slice(s).is_ok())
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    fresh(t, now, tolerance)?;
    Ok(t)
}

/// The headers of a Standard Webhooks request.
pub struct StandardHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Verifies a Standard Webhooks request; returns the message id.
pub fn verify_standard<'a>(
    headers: &StandardHeaders<'a>,
    body: &[u8],
    secrets: &[&str],
    tolerance: u64,
    now: i64,
) -> Result<&'a str, SignatureError> {
    let id = headers
        .id
        .filter(|i| !i.is_empty() && i.len() <= 255)
        .ok_or(SignatureError::Missing("webhook-id"))?;
    let ts_text = headers
        .timestamp
        .ok_or(SignatureError::Missing("webhook-timestamp"))?;
    let ts: i64 = ts_text
        .parse()
        .map_err(|_| SignatureError::Malformed("webhook-timestamp"))?;
    let header = headers
        .signature
        .ok_or(SignatureError::Missing("webhook-signature"))?;
    let signatures: Vec<Vec<u8>> = header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b| STANDARD.decode(b).ok())
        .collect();
    if signatures.is_empty() {
        return Err(SignatureError::Mismatch);
    }
    let matched = secrets.iter().any(|secret| {
        let Ok(key) = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret)) else {
            return false;
        };
        let m = mac(&key, &[id.as_bytes(), b".", ts_text.as_bytes(), b".", body]);
        signatures.iter().any(|s| m.clone().verify_slice(s).is_ok())
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    fresh(ts, now, tolerance)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripe_sig(secret: &str, t: i64, body: &str) -> String {
        let m = mac(
            secret.as_bytes(),
            &[format!("{t}.").as_bytes(), body.as_bytes()],
        );
        hex::encode(m.finalize().into_bytes())
    }

    #[test]
    fn stripe_accepts_any_matching_v1_and_rejects_the_rest() {
        let body = r#"{"id":"evt_1"}"#;
        let good = stripe_sig("whsec_a", 1000, body);
        let header = format!("t=1000,v1={},v1={good},v0=zz", "00".repeat(32));
        assert_eq!(
            verify_stripe(Some(&header), body.as_bytes(), &["whsec_a"], 300, 1100),
            Ok(1000)
        );
        // The previous secret during rotation.
        assert_eq!(
            verify_stripe(
                Some(&header),
                body.as_bytes(),
                &["whsec_new", "whsec_a"],
                300,
                1100
            ),
            Ok(1000)
        );
        assert_eq!(
            verify_stripe(
                Some(&header),
                b"{\"id\":\"evt_2\"}",
                &["whsec_a"],
                300,
                1100
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_stripe(Some(&header), body.as_bytes(), &["whsec_a"], 300, 1301),
            Err(SignatureError::Expired(300))
        );
        assert_eq!(
            verify_stripe(Some("v1=abc"), body.as_bytes(), &["whsec_a"], 300, 1000),
            Err(SignatureError::Malformed("Stripe-Signature"))
        );
        assert_eq!(
            verify_stripe(None, body.as_bytes(), &["whsec_a"], 300, 1000),
            Err(SignatureError::Missing("Stripe-Signature"))
        );
    }

    #[test]
    fn standard_webhooks_use_the_decoded_secret() {
        let key = b"0123456789abcdef0123456789abcdef";
        let secret = format!("whsec_{}", STANDARD.encode(key));
        let m = mac(key, &[b"msg_1.1000.", b"{}"]);
        let sig = format!("v1,{}", STANDARD.encode(m.finalize().into_bytes()));
        let h = StandardHeaders {
            id: Some("msg_1"),
            timestamp: Some("1000"),
            signature: Some(&sig),
        };
        assert_eq!(
            verify_standard(&h, b"{}", &[&secret], 300, 900),
            Ok("msg_1")
        );
        assert_eq!(
            verify_standard(&h, b"{ }", &[&secret], 300, 900),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_standard(&h, b"{}", &[&secret], 300, 1400),
            Err(SignatureError::Expired(300))
        );
    }
}
