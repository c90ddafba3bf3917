//! Digital downloads: a product's files (`admin`), an order's links
//! (`orders:keys`: the URLs are as secret as a CD key), and the public
//! `GET /downloads/{token}` that serves a file, whole or one byte range.
//!
//! The token is checked before anything is read (a forged one costs no
//! query); a genuine link is then refused when revoked, expired or used up,
//! each with its own code and a line in the order's download log. A served
//! response spends its length from the link's allowance of
//! `max_downloads × size` bytes in the same statement that logs it, so
//! concurrent requests cannot overspend and a resumed download costs only
//! the bytes it fetches.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use courier_shared::db::downloads::{self, LinkView, ProductFile, Requester};
use courier_shared::domain::download::{RangeAsk, TokenError, parse_range};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{ADMIN, Caller, ORDERS_KEYS};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::routes::payments::order_id;
use crate::startup::AppState;
use crate::storage::UploadError;

/// The file's name and, optionally, the checksum the upload must have.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The name customers download it as (1–255 characters, no `/`, `\` or control characters).
    pub name: String,
    /// Hex SHA-256 the content must have; the upload is refused (and nothing kept) otherwise.
    pub sha256: Option<String>,
}

/// A product's files.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    pub files: Vec<ProductFile>,
}

/// An order's download links, with their URLs.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderLinks {
    /// Revoked links have no URL; expired and used-up ones keep theirs (it answers 410).
    pub links: Vec<LinkView>,
}

fn file_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.len() > 255 || name == "." || name == ".." {
        return Err(ApiError::invalid("name", "must be 1 to 255 bytes"));
    }
    // Bidirectional controls too: `invoice\u{202E}fdp.exe` shows as `invoiceexe.pdf`.
    let bidi = |c: char| matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if name.chars().any(|c| {
        matches!(c, '/' | '\\') || bidi(c) || courier_shared::domain::is_non_text(c, false)
    }) {
        return Err(ApiError::invalid(
            "name",
            "must not contain `/`, `\\`, control or bidirectional-override characters",
        ));
    }
    Ok(name.to_owned())
}

fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok("application/octet-stream".into());
    };
    let v = v.to_str().unwrap_or_default().trim();
    let ok = !v.is_empty()
        && v.len() <= 127
        && v.contains('/')
        && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if !ok {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "Content-Type must be a media type such as application/zip",
        )
        .with_field("Content-Type"));
    }
    Ok(v.to_owned())
}

async fn product_id(state: &AppState, sku: &str) -> Result<Uuid, ApiError> {
    let mut conn = state.pool.acquire().await?;
    courier_shared::db::catalog::products_by_sku(&mut conn, &[sku.to_owned()])
        .await?
        .first()
        .map(|p| p.id)
        .ok_or_else(|| ApiError::not_found("product"))
}

#[utoipa::path(post, path = "/v1/products/{sku}/files", operation_id = "upload_product_file", tag = "catalog",
    params(("sku" = String, Path, description = "The product's SKU"), UploadQuery),
    request_body(description = "The file's bytes, streamed (any Content-Type; it is served with the same one); at most `downloads.max_file_bytes`",
        content((String = "application/octet-stream"))),
    responses(
        (status = 201, description = "Stored; orders paid from now on get a link to it", body = ProductFile),
        (status = 413, description = "Larger than downloads.max_file_bytes (nothing kept)", body = crate::error::ErrorBody),
        (status = 422, description = "Empty, a bad name or a checksum that does not match (nothing kept)", body = crate::error::ErrorBody),
    ))]
/// `POST /v1/products/{sku}/files?name=…`: adds a file a product sells.
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sku): ApiPath<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(ADMIN)?;
    let name = file_name(&q.name)?;
    let expected = match q.sha256.as_deref().map(str::trim) {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(h.to_ascii_lowercase())
        }
        Some(_) => return Err(ApiError::invalid("sha256", "must be 64 hex digits")),
        None => None,
    };
    let content_type = content_type(&headers)?;
    let max = state.downloads.max_file_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
            format!("a file may be at most {max} bytes (downloads.max_file_bytes)"),
        )
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max)
    {
        return Err(too_large());
    }
    let product_id = product_id(&state, &sku).await?;
    let storage = storage(&state)?;
    let id = Uuid::new_v4();
    let key = format!("products/{product_id}/{id}");
    let stored = storage
        .put_stream(&key, body.into_data_stream(), max)
        .await
        .map_err(|e| match e {
            UploadError::TooLarge(_) => too_large(),
            UploadError::Body(why) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_interrupted",
                format!("the upload did not arrive whole: {why}"),
            ),
            UploadError::Storage(e) => storage_down(&e),
        })?;
    let refuse = |e: ApiError| async {
        if let Err(d) = storage.delete(&key).await {
            tracing::warn!(error = %d, %key, "could not delete a refused upload");
        }
        Err(e)
    };
    if stored.size == 0 {
        return refuse(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_file",
            "the file is empty",
        ))
        .await;
    }
    if let Some(expected) = expected
        && expected != stored.sha256
    {
        return refuse(
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "checksum_mismatch",
                format!(
                    "the content's SHA-256 is {}, not {expected}: nothing was kept",
                    stored.sha256
                ),
            )
            .with_field("sha256"),
        )
        .await;
    }
    let file = ProductFile {
        id,
        name,
        content_type,
        size_bytes: i64::try_from(stored.size).unwrap_or(i64::MAX),
        sha256: stored.sha256,
        created_at: chrono::Utc::now(),
        storage_key: key.clone(),
    };
    let mut conn = state.pool.acquire().await?;
    if let Err(e) = downloads::insert_file(&mut conn, product_id, &file).await {
        return refuse(e.into()).await;
    }
    Ok((StatusCode::CREATED, Json(file)).into_response())
}

/// The file storage, or 503 when it could not be set up at start.
fn storage(state: &AppState) -> Result<&crate::storage::Storage, ApiError> {
    state.storage.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "file storage is not set up on this API process (see its log and downloads.storage)",
        )
    })
}

fn storage_down(e: &object_store::Error) -> ApiError {
    tracing::error!(error = %e, "file storage failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the file storage is not reachable; try again",
    )
}

#[utoipa::path(get, path = "/v1/products/{sku}/files", operation_id = "list_product_files", tag = "catalog",
    params(("sku" = String, Path, description = "The product's SKU")),
    responses((status = 200, description = "The files the product sells now, oldest first", body = FileList)))]
/// `GET /v1/products/{sku}/files`.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(sku): ApiPath<String>,
) -> Result<Json<FileList>, ApiError> {
    caller.require(ADMIN)?;
    let product_id = product_id(&state, &sku).await?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(FileList {
        files: downloads::files_of(&mut conn, product_id).await?,
    }))
}

#[utoipa::path(delete, path = "/v1/products/{sku}/files/{file_id}", operation_id = "withdraw_product_file", tag = "catalog",
    params(("sku" = String, Path, description = "The product's SKU"), ("file_id" = Uuid, Path, description = "The file")),
    responses((status = 204, description = "Withdrawn: new orders get no link to it; links already made keep working")))]
/// `DELETE /v1/products/{sku}/files/{file_id}`.
pub async fn withdraw(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((sku, file_id)): ApiPath<(String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    caller.require(ADMIN)?;
    let product_id = product_id(&state, &sku).await?;
    let mut conn = state.pool.acquire().await?;
    if downloads::withdraw_file(&mut conn, product_id, file_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("file"))
    }
}

#[utoipa::path(get, path = "/v1/orders/{reference}/downloads", operation_id = "order_downloads", tag = "orders",
    params(("reference" = String, Path, description = "Order id (UUID) or order number")),
    responses((status = 200, description = "The order's download links with their URLs and counts", body = OrderLinks)))]
/// `GET /v1/orders/{reference}/downloads` (`orders:keys`): for a store's
/// "your downloads" page.
pub async fn order_links(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
) -> Result<Json<OrderLinks>, ApiError> {
    caller.require(ORDERS_KEYS)?;
    let order_id = order_id(&state, &reference).await?;
    let mut conn = state.pool.acquire().await?;
    let mut links = downloads::links_of(&mut conn, order_id, None).await?;
    if let Some(signer) = &state.signer {
        for l in links.iter_mut().filter(|l| l.revoked_at.is_none()) {
            l.url = Some(signer.url(l.id, l.expires_at.timestamp()));
        }
    }
    Ok(Json(OrderLinks { links }))
}

/// The peer address, when the server was started with connect info.
pub struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName, max: usize) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .map(|v| {
            v.chars()
                .filter(|c| !courier_shared::domain::is_non_text(*c, false))
                .collect::<String>()
        })
        .map(|v| courier_shared::domain::clip(&v, max).to_owned())
}

/// Logs a refused request for a genuine link.
async fn refuse(
    state: &AppState,
    link_id: Uuid,
    status: i16,
    why: &str,
    who: &Requester,
) -> Result<(), ApiError> {
    let mut conn = state.pool.acquire().await?;
    downloads::log_refused(&mut conn, link_id, status, why, who).await?;
    Ok(())
}

fn gone(code: &'static str) -> ApiError {
    let message = match code {
        "link_revoked" => "this download link was revoked (the order was refunded or withdrawn)",
        "link_expired" => "this download link has expired; ask the store to send it again",
        _ => "this download link has been used as many times as it allows",
    };
    ApiError::new(StatusCode::GONE, code, message)
}

/// `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266): an ASCII
/// fallback and the exact name.
fn disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let exact = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{exact}")
}

#[utoipa::path(get, path = "/downloads/{token}", operation_id = "download", tag = "orders",
    params(
        ("token" = String, Path, description = "The signed token from the link"),
        ("Range" = Option<String>, Header, description = "`bytes=start-end`, `bytes=start-` or `bytes=-n` (one range)"),
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "application/octet-stream"),
        (status = 206, description = "The range asked for (Content-Range)", content_type = "application/octet-stream"),
        (status = 404, description = "Not a link this installation made (`link_not_found`)", body = crate::error::ErrorBody),
        (status = 410, description = "`link_revoked`, `link_expired` or `download_limit_reached`", body = crate::error::ErrorBody),
        (status = 416, description = "The range starts past the end of the file", body = crate::error::ErrorBody),
    ),
    security(()))]
/// `GET /downloads/{token}`: the customer's download (no API key: the token is the key).
pub async fn serve(
    State(state): State<AppState>,
    method: Method,
    Peer(peer): Peer,
    ApiPath(token): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "link_not_found",
            "no such download link",
        )
    };
    let Some(signer) = &state.signer else {
        return Err(not_found());
    };
    let who = Requester {
        ip: peer.map(|p| p.ip().to_string()),
        forwarded_for: header_text(
            &headers,
            header::HeaderName::from_static("x-forwarded-for"),
            200,
        ),
        user_agent: header_text(&headers, header::USER_AGENT, 500),
        range: header_text(&headers, header::RANGE, 100),
    };
    let now = chrono::Utc::now();
    // The token first: a forged one costs no connection and no query.
    let link_id = match signer.verify(&token, now.timestamp()) {
        Ok((id, _)) => id,
        Err(TokenError::Invalid) => return Err(not_found()),
        Err(TokenError::Expired { link_id }) => {
            refuse(&state, link_id, 410, "link_expired", &who).await?;
            return Err(gone("link_expired"));
        }
    };
    // Each database use takes a connection and gives it back: none is held
    // while storage is opened or the file streams.
    let link = {
        let mut conn = state.pool.acquire().await?;
        downloads::for_serving(&mut conn, link_id).await?
    };
    let Some(link) = link else {
        return Err(not_found());
    };
    let refused = if link.revoked {
        Some("link_revoked")
    } else if link.expires_at <= now {
        Some("link_expired")
    } else if link.remaining <= 0 {
        Some("download_limit_reached")
    } else {
        None
    };
    if let Some(code) = refused {
        refuse(&state, link_id, 410, code, &who).await?;
        return Err(gone(code));
    }
    let size = u64::try_from(link.size_bytes).unwrap_or(0);
    let etag = format!("\"{}\"", link.sha256);
    // A range is honoured only for the same content (`If-Range`).
    let same = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let ask = if same {
        parse_range(
            headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
            size,
        )
    } else {
        RangeAsk::Whole
    };
    let (status, start, end) = match ask {
        RangeAsk::Whole => (StatusCode::OK, 0, size - 1),
        RangeAsk::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeAsk::Unsatisfiable => {
            refuse(&state, link_id, 416, "range_not_satisfiable", &who).await?;
            let mut resp = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {size} bytes"),
            )
            .with_field("Range")
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let len = end - start + 1;
    if i64::try_from(len).unwrap_or(i64::MAX) > link.remaining {
        refuse(&state, link_id, 410, "download_limit_reached", &who).await?;
        return Err(ApiError::new(
            StatusCode::GONE,
            "download_limit_reached",
            format!(
                "this link has {} bytes of its download allowance left, less than this response ({len} bytes)",
                link.remaining
            ),
        ));
    }
    let mut out = HeaderMap::new();
    let mut put = |name: header::HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            out.insert(name, v);
        }
    };
    put(header::CONTENT_TYPE, link.content_type.clone());
    put(header::CONTENT_LENGTH, len.to_string());
    put(header::ACCEPT_RANGES, "bytes".into());
    put(header::ETAG, etag);
    put(header::CONTENT_DISPOSITION, disposition(&link.name));
    put(header::CACHE_CONTROL, "private, no-store".into());
    put(header::X_CONTENT_TYPE_OPTIONS, "nosniff".into());
    // Whatever the file's type, it never runs as a page of this origin.
    put(header::CONTENT_SECURITY_POLICY, "sandbox".into());
    if status == StatusCode::PARTIAL_CONTENT {
        put(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
    }
    if method == Method::HEAD {
        // What a download would be, without spending or logging one.
        return Ok((status, out).into_response());
    }
    // Open the file before spending: a storage failure costs the customer nothing.
    let range = (status == StatusCode::PARTIAL_CONTENT).then_some((start, end));
    let stream = storage(&state)?
        .get(&link.storage_key, range)
        .await
        .map_err(|e| storage_down(&e))?;
    let spent = downloads::spend(
        &mut *state.pool.acquire().await?,
        link_id,
        i64::try_from(len).unwrap_or(i64::MAX),
        start == 0,
        i16::try_from(status.as_u16()).unwrap_or(200),
        &who,
    )
    .await?;
    if !spent {
        // A concurrent request spent it, or it was revoked, meanwhile.
        let now = downloads::for_serving(&mut *state.pool.acquire().await?, link_id).await?;
        let code = match now {
            Some(l) if l.revoked => "link_revoked",
            Some(l) if l.expires_at <= chrono::Utc::now() => "link_expired",
            _ => "download_limit_reached",
        };
        refuse(&state, link_id, 410, code, &who).await?;
        return Err(gone(code));
    }
    state.metrics.downloads.inc();
    Ok((status, out, Body::from_stream(stream)).into_response())
}
