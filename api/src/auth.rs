//! Bearer API keys with scopes. `admin` implies every other scope.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use courier_shared::db::api_keys;

use crate::error::ApiError;
use crate::startup::AppState;

pub const ORDERS_WRITE: &str = "orders:write";
pub const ORDERS_READ: &str = "orders:read";
pub const ADMIN: &str = "admin";
/// Read CD keys (redemption codes) in order responses.
pub const ORDERS_KEYS: &str = "orders:keys";
/// Refund orders (money goes back, access is withdrawn).
pub const ORDERS_REFUND: &str = "orders:refund";
pub const ALL_SCOPES: &[&str] = &[ORDERS_WRITE, ORDERS_READ, ORDERS_KEYS, ORDERS_REFUND, ADMIN];

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub scopes: Vec<String>,
}

impl Caller {
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        if self.scopes.iter().any(|s| s == scope || s == ADMIN) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this API key lacks the `{scope}` scope"),
            ))
        }
    }

    pub fn has(&self, scope: &str) -> bool {
        self.require(scope).is_ok()
    }

    /// How the caller appears in the timeline.
    pub fn actor(&self) -> String {
        format!("api:{}", self.name)
    }
}

/// The caller behind the request's `Authorization` header.
pub async fn authenticate(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Caller, ApiError> {
    let unauthorized = |msg: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg);
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer <api key>` header"))?;
    // The scheme is case-insensitive (RFC 7235); only `Bearer` is taken.
    let key = header
        .to_str()
        .ok()
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, k)| k.trim())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <api key>`"))?;
    if let Some(caller) = state.keys.get(key) {
        return Ok(caller);
    }
    let found = api_keys::find(&state.pool, key).await?;
    let found = found.ok_or_else(|| unauthorized("unknown or revoked API key"))?;
    let caller = Caller {
        name: found.name,
        scopes: found.scopes,
    };
    state.keys.put(key, &caller);
    Ok(caller)
}

/// API keys this process looked up recently (`api.key_cache_seconds`), by
/// the SHA-256 of the key, so a request costs no query for its key. Only
/// keys that exist are kept (unknown keys are read every time: a client
/// guessing keys cannot fill it), at most `KeyCache::MAX` of them.
pub struct KeyCache {
    ttl: std::time::Duration,
    entries: std::sync::RwLock<std::collections::HashMap<Vec<u8>, (Caller, std::time::Instant)>>,
}

impl KeyCache {
    const MAX: usize = 10_000;

    pub fn new(ttl: std::time::Duration) -> Self {
        KeyCache {
            ttl,
            entries: Default::default(),
        }
    }

    fn get(&self, key: &str) -> Option<Caller> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&api_keys::hash(key))
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(caller, _)| caller.clone())
    }

    fn put(&self, key: &str, caller: &Caller) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= Self::MAX {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if entries.len() >= Self::MAX {
                entries.clear();
            }
        }
        entries.insert(
            api_keys::hash(key),
            (caller.clone(), std::time::Instant::now()),
        );
    }
}

/// Who may call a route; the router checks it before any body is read, so a
/// caller without the scope learns nothing from the body's validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Webhooks (signed) and health checks.
    Public,
    /// An API key with this scope (or `admin`).
    Scope(&'static str),
}

/// The route layer enforcing [`Access::Scope`]: authenticates, checks the
/// scope, and leaves the caller in the request for the handler.
pub async fn authorize(
    axum::extract::State((state, scope)): axum::extract::State<(AppState, &'static str)>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let caller = match authenticate(&state, req.headers()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = caller.require(scope) {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        authenticate(state, &parts.headers).await
    }
}

/// Checks scope names given to `create-key`.
pub fn parse_scopes(list: &str) -> Result<Vec<String>, String> {
    let scopes: Vec<String> = list
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if scopes.is_empty() {
        return Err("give at least one scope".into());
    }
    for s in &scopes {
        if !ALL_SCOPES.contains(&s.as_str()) {
            return Err(format!(
                "unknown scope `{s}`; known: {}",
                ALL_SCOPES.join(", ")
            ));
        }
    }
    Ok(scopes)
}
