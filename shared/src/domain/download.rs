//! Download links: the signed token in a link's URL, and the byte ranges a
//! request may ask for.
//!
//! A token is `base64url(link id ‖ expiry ‖ tag)`: the link's 16-byte id,
//! its expiry in Unix seconds (8 bytes, big-endian) and the first 16 bytes
//! of HMAC-SHA256 over both under `downloads.signing_key`. A forged or
//! altered token fails the tag and is refused without a database read; an
//! expired one is refused by its own expiry; a revoked or used-up one by
//! its row. Nothing secret is stored: a token is recomputed from the row
//! whenever a link is shown again (a resend).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

const TAG_LEN: usize = 16;
const TOKEN_LEN: usize = 16 + 8 + TAG_LEN;
/// Separates this use of the key from any other.
const CONTEXT: &[u8] = b"courier-download-v1";

/// Signs and checks link tokens, and builds their URLs.
#[derive(Clone)]
pub struct LinkSigner {
    key: Vec<u8>,
    base_url: String,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused before any database read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token this installation made (malformed, or a wrong tag).
    Invalid,
    /// Genuine, but past its expiry.
    Expired { link_id: Uuid },
}

impl LinkSigner {
    /// `base_url` without a trailing slash is where `/downloads/<token>` is served.
    pub fn new(key: &[u8], base_url: &str) -> Self {
        LinkSigner {
            key: key.to_vec(),
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    fn mac(&self, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(CONTEXT);
        mac.update(body);
        mac
    }

    /// The token of link `id`, valid until `expires_unix`.
    pub fn token(&self, id: Uuid, expires_unix: i64) -> String {
        let mut raw = Vec::with_capacity(TOKEN_LEN);
        raw.extend_from_slice(id.as_bytes());
        raw.extend_from_slice(&expires_unix.to_be_bytes());
        let tag = self.mac(&raw).finalize().into_bytes();
        raw.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The link's URL as customers get it.
    pub fn url(&self, id: Uuid, expires_unix: i64) -> String {
        format!(
            "{}/downloads/{}",
            self.base_url,
            self.token(id, expires_unix)
        )
    }

    /// The link id of a genuine token that has not expired at `now_unix`.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<(Uuid, i64), TokenError> {
        if token.len() > 64 {
            return Err(TokenError::Invalid);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Invalid)?;
        if raw.len() != TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let (body, tag) = raw.split_at(16 + 8);
        self.mac(body)
            .verify_truncated_left(tag)
            .map_err(|_| TokenError::Invalid)?;
        let id = Uuid::from_slice(&body[..16]).map_err(|_| TokenError::Invalid)?;
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&body[16..]);
        let expires = i64::from_be_bytes(exp);
        if expires <= now_unix {
            return Err(TokenError::Expired { link_id: id });
        }
        Ok((id, expires))
    }
}

/// What a `Range` header asks of a file of `size` bytes (`size` > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable range: send the whole file (also for several ranges, which
    /// a server may answer in full, and for a header it cannot parse).
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// No byte of the range is in the file: 416.
    Unsatisfiable,
}

/// Parses `Range: bytes=…` (RFC 9110 §14.1.2) for one range.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim(), last.trim()) {
        // The last n bytes.
        ("", n) => match number(n) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            None => RangeAsk::Whole,
        },
        (a, b) => match (
            number(a),
            if b.is_empty() {
                Some(None)
            } else {
                number(b).map(Some)
            },
        ) {
            (Some(start), Some(end)) => {
                if end.is_some_and(|e| e < start) {
                    return RangeAsk::Whole;
                }
                if start >= size {
                    return RangeAsk::Unsatisfiable;
                }
                RangeAsk::Part {
                    start,
                    end: end.map_or(size - 1, |e| e.min(size - 1)),
                }
            }
            _ => RangeAsk::Whole,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_and_any_change_is_refused() {
        let s = LinkSigner::new(b"0123456789abcdef0123456789abcdef", "https://shop.example/");
        let id = Uuid::new_v4();
        let t = s.token(id, 2_000);
        assert_eq!(s.verify(&t, 1_000), Ok((id, 2_000)));
        assert_eq!(
            s.verify(&t, 2_000),
            Err(TokenError::Expired { link_id: id })
        );
        // Another key, or a token pointing at another link or a later expiry.
        let other = LinkSigner::new(b"another key, also thirty-two byt", "x");
        assert_eq!(other.verify(&t, 1_000), Err(TokenError::Invalid));
        let forged = s.token(Uuid::new_v4(), 2_000);
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap_or_default();
        let forged_raw = URL_SAFE_NO_PAD.decode(&forged).unwrap_or_default();
        raw[..16].copy_from_slice(&forged_raw[..16]);
        assert_eq!(
            s.verify(&URL_SAFE_NO_PAD.encode(&raw), 1_000),
            Err(TokenError::Invalid)
        );
        assert_eq!(s.verify("not a token", 0), Err(TokenError::Invalid));
        assert_eq!(s.verify(&"A".repeat(500), 0), Err(TokenError::Invalid));
        assert!(
            s.url(id, 2_000)
                .starts_with("https://shop.example/downloads/")
        );
    }

    #[test]
    fn ranges_as_rfc_9110_reads_them() {
        use RangeAsk::*;
        assert_eq!(parse_range(None, 100), Whole);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            Part { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-500"), 100),
            Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-500"), 100),
            Part { start: 0, end: 99 }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-1"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=a-b"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=+1-2"), 100), Whole);
    }
}
