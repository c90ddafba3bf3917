//! A JSON body extractor whose errors name the field at fault
//! (`items[0].quantity`) in Courier's error shape, and which refuses strings
//! holding non-text code points (NUL and other controls; Postgres refuses NUL
//! in `text` and `jsonb`, and none belongs in a name, a host or a command).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;
use crate::extract::is_non_text;

pub struct ValidJson<T>(pub T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_json_type(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                e.body_text(),
            )
        })?;
        parse(&bytes).map(ValidJson)
    }
}

/// A body declared as something other than JSON is 415 (no `Content-Type`
/// is taken as JSON, for curl and friends).
pub fn check_json_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as application/json",
    ))
}

/// Parses `bytes` as `T`: malformed JSON is 400 `malformed_json`, a string
/// with a non-text code point is 422 `validation_failed` naming it, JSON of
/// the wrong shape is 422 `invalid_body` with the path of the offending field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => {
            de.end().map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
            })?;
            // Checked after the parse, so malformed JSON keeps its own error.
            if let Some(field) = non_text_field(bytes) {
                return Err(non_text_error(&field));
            }
            Ok(v)
        }
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    inner.to_string(),
                ));
            }
            if let Some(field) = non_text_field(bytes) {
                return Err(non_text_error(&field));
            }
            Err(ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_body",
                message: format!("{path}: {inner}"),
                field: (path != ".").then_some(path),
            })
        }
    }
}

pub fn non_text_error(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        format!("{field}: contains NUL or another control character; send text"),
    )
    .with_field(field)
}

/// The JSON path (`customer.name`, `items[0].custom_fields.note`, or the key
/// itself for a bad object key) of the first string holding a non-text code
/// point, if any. A byte scan decides; only a body that fails it is parsed
/// again to name the field, so clean bodies pay one pass over their bytes.
pub fn non_text_field(bytes: &[u8]) -> Option<String> {
    if !may_hold_non_text(bytes) {
        return None;
    }
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let mut path = String::new();
    find(&value, &mut path).then_some(if path.is_empty() { ".".into() } else { path })
}

fn bad(s: &str) -> bool {
    s.chars().any(|c| is_non_text(c, true))
}

fn find(v: &Value, path: &mut String) -> bool {
    match v {
        Value::String(s) => bad(s),
        Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = find(item, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        Value::Object(map) => map.iter().any(|(k, item)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(
                &k.chars()
                    .filter(|c| !is_non_text(*c, true))
                    .collect::<String>(),
            );
            let found = bad(k) || find(item, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        _ => false,
    }
}

/// True when the raw JSON may hold a non-text code point: a `\u` escape of
/// one, or one written raw (DEL, a C1 control, U+FFFE/U+FFFF). Raw C0
/// controls inside strings are already a syntax error.
fn may_hold_non_text(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                if b.get(i + 1) == Some(&b'u')
                    && let Some(hex) = b.get(i + 2..i + 6)
                    && let Some(cp) = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                    && char::from_u32(cp).is_some_and(|c| is_non_text(c, true))
                {
                    return true;
                }
                // Skip the escaped character, so `\\u0000` (a backslash, then
                // text) is not taken for an escape.
                i += 2;
            }
            0x7f => return true,
            0xc2 if b.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)) => return true,
            0xef if b.get(i + 1) == Some(&0xbf)
                && b.get(i + 2).is_some_and(|n| *n == 0xbe || *n == 0xbf) =>
            {
                return true;
            }
            _ => i += 1,
        }
    }
    false
}

/// `value` with every non-text code point (in keys and strings) replaced by
/// U+FFFD, so a verified webhook that holds one can still be stored as
/// `failed` for an admin to read.
pub fn sanitized(value: &Value) -> Value {
    let clean = |s: &str| courier_shared::domain::storable(s).into_owned();
    match value {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(a) => Value::Array(a.iter().map(sanitized).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (clean(k), sanitized(v))).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_field_with_a_nul_and_ignores_escaped_backslashes() {
        assert_eq!(
            non_text_field(br#"{"customer":{"name":"a\u0000b"}}"#).as_deref(),
            Some("customer.name")
        );
        assert_eq!(
            non_text_field(br#"{"items":[{"x":1},{"custom_fields":{"k\u0001":"v"}}]}"#).as_deref(),
            Some("items[1].custom_fields.k")
        );
        assert_eq!(non_text_field(br#"{"a":"\\u0000 is text"}"#), None);
        assert_eq!(non_text_field(br#"{"a":"line\nbreak\ttab"}"#), None);
        assert_eq!(
            non_text_field("{\"a\":\"\u{85}\"}".as_bytes()).as_deref(),
            Some("a")
        );
        assert_eq!(
            non_text_field("{\"a\":\"caf\u{e9} \u{1F600}\"}".as_bytes()),
            None
        );
    }

    #[test]
    fn parse_refuses_non_text_with_the_field() {
        #[derive(serde::Deserialize, Debug, utoipa::ToSchema)]
        struct T {
            #[allow(dead_code)]
            name: String,
        }
        let e = parse::<T>(br#"{"name":"x\u0000"}"#).expect_err("refused");
        assert_eq!((e.status.as_u16(), e.code), (422, "validation_failed"));
        assert_eq!(e.field.as_deref(), Some("name"));
    }
}
