//! Console sign-in: an API key exchanged for a session cookie.
//!
//! The cookie holds 256 random bits; Postgres keeps only their SHA-256,
//! with the key the session was opened with (its scopes decide what the
//! session may do, read on every request, so revoking the key ends its
//! sessions at once) and a CSRF token that every form sends back. The
//! cookie is `HttpOnly`, `SameSite=Strict`, `Path=/admin`, expires with the
//! session, and is `Secure` when the request came over TLS (a proxy's
//! `X-Forwarded-Proto: https`) or `console.secure_cookies` says so.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::startup::AppState;

pub const COOKIE: &str = "courier_console";

/// The signed-in staff member behind a console request.
#[derive(Debug, Clone)]
pub struct Staff {
    pub caller: Caller,
    pub csrf: String,
    /// The cookie's token hash (to end the session).
    token_hash: Vec<u8>,
}

/// A request without a live session: the page sends it to sign in.
#[derive(Debug)]
pub struct SignedOut {
    /// Where to come back to.
    pub next: String,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The session token in the request's `Cookie` header.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| v.len() <= 64)
}

/// Whether the cookie must be `Secure`.
fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.console.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// Opens a session for the key; returns the `Set-Cookie` value.
pub async fn open(
    state: &AppState,
    key: &str,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, sqlx::Error> {
    let Some(found) = courier_shared::db::api_keys::find(&state.pool, key).await? else {
        return Ok(None);
    };
    // Sessions over a week past their end are of no use to anyone.
    sqlx::query("DELETE FROM console_sessions WHERE expires_at < now() - interval '7 days'")
        .execute(&state.pool)
        .await?;
    let token = random_token();
    let hours = i32::try_from(state.console.session_hours).unwrap_or(12);
    let agent: Option<String> = headers.get(header::USER_AGENT).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(300)
            .collect()
    });
    sqlx::query(
        "INSERT INTO console_sessions (token_hash, api_key_id, csrf_token, expires_at, user_agent) \
         VALUES ($1, $2, $3, now() + make_interval(hours => $4), $5)",
    )
    .bind(hash(&token))
    .bind(found.id)
    .bind(random_token())
    .bind(hours)
    .bind(agent)
    .execute(&state.pool)
    .await?;
    let cookie = format!(
        "{COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{}",
        i64::from(hours) * 3600,
        if secure(state, headers) {
            "; Secure"
        } else {
            ""
        }
    );
    Ok(HeaderValue::from_str(&cookie).ok())
}

/// Ends the session; returns the `Set-Cookie` that clears the cookie.
pub async fn close(state: &AppState, staff: &Staff) -> Result<HeaderValue, sqlx::Error> {
    sqlx::query(
        "UPDATE console_sessions SET ended_at = now() WHERE token_hash = $1 AND ended_at IS NULL",
    )
    .bind(&staff.token_hash)
    .execute(&state.pool)
    .await?;
    Ok(HeaderValue::from_static(
        "courier_console=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0",
    ))
}

impl FromRequestParts<AppState> for Staff {
    type Rejection = super::PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let next = parts
            .uri
            .path_and_query()
            .map_or("/admin/orders".to_owned(), |p| p.as_str().to_owned());
        let signed_out = || super::PageError::SignedOut(SignedOut { next: next.clone() });
        let Some(token) = cookie_token(&parts.headers) else {
            return Err(signed_out());
        };
        let token_hash = hash(&token);
        let row: Option<(String, Vec<String>, String)> = sqlx::query_as(
            "SELECT k.name, k.scopes, s.csrf_token FROM console_sessions s \
             JOIN api_keys k ON k.id = s.api_key_id \
             WHERE s.token_hash = $1 AND s.ended_at IS NULL AND s.expires_at > now() \
               AND k.revoked_at IS NULL",
        )
        .bind(&token_hash)
        .fetch_optional(&state.pool)
        .await
        .map_err(|e| super::PageError::Api(crate::error::ApiError::from(e)))?;
        let Some((name, scopes, csrf)) = row else {
            return Err(signed_out());
        };
        Ok(Staff {
            caller: Caller { name, scopes },
            csrf,
            token_hash,
        })
    }
}

/// Constant-time comparison of the form's CSRF token with the session's.
pub fn csrf_ok(staff: &Staff, sent: Option<&str>) -> bool {
    let Some(sent) = sent else { return false };
    let (a, b) = (sent.as_bytes(), staff.csrf.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
