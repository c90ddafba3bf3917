//! Path and query extractors whose rejections are Courier's JSON error, and
//! the middleware that checks every request's URI before any handler runs
//! (invalid UTF-8 and non-text code points in the path or a query value are
//! refused, naming the parameter) and rewrites any error the framework itself
//! produces (405, 413, 415, …) into the same shape.

use axum::body::to_bytes;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::extract::Path` with a JSON 400 `invalid_path` naming the parameter.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text()))
    }
}

/// `axum::extract::Query` with a JSON 400 `invalid_query` (unknown parameters
/// are refused by the target's `deny_unknown_fields`).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

pub use courier_shared::domain::is_non_text;

/// Refuses a request whose path or query is not text before it is routed.
pub async fn check_uri(req: Request, next: Next) -> Response {
    if let Err(e) = uri_text(req.uri()) {
        return e.into_response();
    }
    next.run(req).await
}

fn uri_text(uri: &axum::http::Uri) -> Result<(), ApiError> {
    const MAX_URI: usize = 4096;
    if uri.path().len() + uri.query().map_or(0, str::len) > MAX_URI {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the path and query may be at most {MAX_URI} bytes"),
        ));
    }
    let path = percent_encoding::percent_decode_str(uri.path())
        .decode_utf8()
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "the path is not valid UTF-8 once percent-decoded",
            )
        })?;
    if path.chars().any(|c| is_non_text(c, false)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "path: contains a control character (such as NUL); a path segment must be text",
        )
        .with_field("path"));
    }
    let Some(query) = uri.query() else {
        return Ok(());
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let plus = s.replace('+', " ");
            percent_encoding::percent_decode_str(&plus)
                .decode_utf8()
                .map(|c| c.into_owned())
        };
        let name = decode(key).unwrap_or_else(|_| key.to_owned());
        let name: String = name.chars().filter(|c| !is_non_text(*c, false)).collect();
        let value = decode(value).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{name}: not valid UTF-8 once percent-decoded"),
            )
            .with_field(&name)
        })?;
        if decode(key).is_err() || value.chars().any(|c| is_non_text(c, false)) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("{name}: contains a control character (such as NUL); must be text"),
            )
            .with_field(&name));
        }
    }
    Ok(())
}

/// Rewrites an error response that is not JSON (the framework's own 405,
/// 413, 415 and extractor rejections) into the one error shape, keeping its
/// headers (`Allow` on a 405). Handlers never produce such responses, so a
/// route added later cannot escape the shape either.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let (code, fallback) = match status {
        StatusCode::BAD_REQUEST => ("bad_request", "the request is malformed"),
        StatusCode::NOT_FOUND => ("not_found", "route not found"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not take that method (see the Allow header)",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send the body as application/json",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_body", "the body does not fit this route"),
        s if s.is_server_error() => ("internal", "internal error"),
        _ => ("http_error", "the request was refused"),
    };
    let message = if text.is_empty() || status.is_server_error() {
        fallback.to_owned()
    } else {
        text
    };
    let json = ApiError::new(status, code, message).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let (_, body) = json.into_parts();
    Response::from_parts(parts, body)
}
