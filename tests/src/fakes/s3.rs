//! An S3-compatible object store, path-style (`/{bucket}/{key}`), with the
//! calls a streamed upload and a ranged download make: multipart upload
//! (create, upload part, complete, abort), GET with `Range`, HEAD and
//! DELETE. It checks that each request is signed for its access key
//! (`Authorization: AWS4-HMAC-SHA256 Credential=<key>/…`) without
//! recomputing the signature, answers S3's XML errors, and misbehaves on
//! demand: down (every call 503 `SlowDown`, as S3 does under load).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;

/// A multipart upload in progress: its key, and its parts by number.
type Upload = (String, BTreeMap<u32, Vec<u8>>);

#[derive(Default)]
struct St {
    access_key: String,
    objects: Mutex<HashMap<String, Vec<u8>>>,
    /// By upload id.
    uploads: Mutex<HashMap<String, Upload>>,
    down: Mutex<bool>,
    /// `METHOD /path?query` of every request.
    requests: Mutex<Vec<String>>,
}

pub struct FakeS3 {
    pub url: String,
    pub bucket: String,
    pub access_key: String,
    state: Arc<St>,
    task: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn xml_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/xml")],
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ),
    )
        .into_response()
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

impl FakeS3 {
    pub async fn start(bucket: &str) -> std::io::Result<Self> {
        let state = Arc::new(St {
            access_key: "AKIAFAKES3TEST".into(),
            ..St::default()
        });
        let app = Router::new()
            .route("/{*path}", axum::routing::any(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeS3 {
            url,
            bucket: bucket.to_owned(),
            access_key: state.access_key.clone(),
            state,
            task,
        })
    }

    /// Every call answers 503 `SlowDown` while down.
    pub fn set_down(&self, down: bool) {
        *lock(&self.state.down) = down;
    }

    /// The object's bytes, if it exists.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        lock(&self.state.objects).get(key).cloned()
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.state.objects).keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Multipart uploads begun and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        lock(&self.state.uploads).len()
    }

    pub fn requests(&self) -> Vec<String> {
        lock(&self.state.requests).clone()
    }
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(st): State<Arc<St>>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    lock(&st.requests).push(format!("{method} /{path}?{query}"));
    if *lock(&st.down) {
        return xml_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        );
    }
    let signed = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.starts_with("AWS4-HMAC-SHA256 ")
                && a.contains(&format!("Credential={}/", st.access_key))
                && a.contains("Signature=")
        });
    if !signed {
        return xml_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
    }
    let Some((_bucket, key)) = path.split_once('/') else {
        return xml_error(StatusCode::BAD_REQUEST, "InvalidRequest", "no key");
    };
    let key = key.to_owned();
    match method {
        Method::POST if query_value(&query, "uploads").is_some() => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            lock(&st.uploads).insert(id.clone(), (key.clone(), BTreeMap::new()));
            xml(format!(
                "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>{key}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>"
            ))
        }
        Method::PUT if query_value(&query, "uploadId").is_some() => {
            let id = query_value(&query, "uploadId").unwrap_or_default();
            let Some(n) = query_value(&query, "partNumber").and_then(|n| n.parse::<u32>().ok())
            else {
                return xml_error(StatusCode::BAD_REQUEST, "InvalidArgument", "partNumber");
            };
            let mut uploads = lock(&st.uploads);
            let Some((_, parts)) = uploads.get_mut(id) else {
                return xml_error(
                    StatusCode::NOT_FOUND,
                    "NoSuchUpload",
                    "The specified upload does not exist.",
                );
            };
            parts.insert(n, body.to_vec());
            (StatusCode::OK, [(header::ETAG, format!("\"part-{n}\""))]).into_response()
        }
        Method::POST if query_value(&query, "uploadId").is_some() => {
            let id = query_value(&query, "uploadId")
                .unwrap_or_default()
                .to_owned();
            let Some((key, parts)) = lock(&st.uploads).remove(&id) else {
                return xml_error(
                    StatusCode::NOT_FOUND,
                    "NoSuchUpload",
                    "The specified upload does not exist.",
                );
            };
            let whole: Vec<u8> = parts.into_values().flatten().collect();
            lock(&st.objects).insert(key.clone(), whole);
            xml(format!(
                "<CompleteMultipartUploadResult><Location>/{key}</Location><Bucket>b</Bucket><Key>{key}</Key><ETag>\"whole\"</ETag></CompleteMultipartUploadResult>"
            ))
        }
        Method::DELETE if query_value(&query, "uploadId").is_some() => {
            let id = query_value(&query, "uploadId").unwrap_or_default();
            lock(&st.uploads).remove(id);
            StatusCode::NO_CONTENT.into_response()
        }
        Method::DELETE => {
            lock(&st.objects).remove(&key);
            StatusCode::NO_CONTENT.into_response()
        }
        Method::PUT => {
            lock(&st.objects).insert(key, body.to_vec());
            (StatusCode::OK, [(header::ETAG, "\"single\"")]).into_response()
        }
        Method::GET | Method::HEAD => {
            let Some(data) = lock(&st.objects).get(&key).cloned() else {
                return xml_error(
                    StatusCode::NOT_FOUND,
                    "NoSuchKey",
                    "The specified key does not exist.",
                );
            };
            let size = data.len();
            let range = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| {
                    let start: usize = a.parse().ok()?;
                    let end: usize = if b.is_empty() {
                        size - 1
                    } else {
                        b.parse::<usize>().ok()?.min(size - 1)
                    };
                    (start <= end).then_some((start, end))
                });
            let common = [
                (
                    header::LAST_MODIFIED,
                    "Tue, 01 Dec 2026 10:00:00 GMT".to_owned(),
                ),
                (header::ETAG, "\"whole\"".to_owned()),
            ];
            match range {
                Some((start, end)) => (
                    StatusCode::PARTIAL_CONTENT,
                    common,
                    [
                        (header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")),
                        (header::CONTENT_LENGTH, (end - start + 1).to_string()),
                    ],
                    data[start..=end].to_vec(),
                )
                    .into_response(),
                None => (
                    StatusCode::OK,
                    common,
                    [(header::CONTENT_LENGTH, size.to_string())],
                    data,
                )
                    .into_response(),
            }
        }
        _ => xml_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported here",
        ),
    }
}

fn xml(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/xml")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>{body}"),
    )
        .into_response()
}
