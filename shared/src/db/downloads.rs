//! Product files, the download links made for order items, and the log of
//! every request for a link. Guarded SQL only: each write's `WHERE` carries
//! the state it expects.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::error::DbError;

/// A file a product sells.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProductFile {
    pub id: Uuid,
    pub name: String,
    pub content_type: String,
    pub size_bytes: i64,
    /// Hex SHA-256 of the content, computed while it was uploaded.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub storage_key: String,
}

/// Records an uploaded file (its bytes are already in storage).
pub async fn insert_file(
    conn: &mut PgConnection,
    product_id: Uuid,
    file: &ProductFile,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO product_files (id, product_id, name, content_type, size_bytes, sha256, storage_key, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(file.id)
    .bind(product_id)
    .bind(&file.name)
    .bind(&file.content_type)
    .bind(file.size_bytes)
    .bind(&file.sha256)
    .bind(&file.storage_key)
    .bind(file.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The files a product sells now, oldest first.
pub async fn files_of(
    conn: &mut PgConnection,
    product_id: Uuid,
) -> Result<Vec<ProductFile>, DbError> {
    Ok(sqlx::query_as(
        "SELECT id, name, content_type, size_bytes, sha256, created_at, storage_key FROM product_files \
         WHERE product_id = $1 AND deleted_at IS NULL ORDER BY created_at, id",
    )
    .bind(product_id)
    .fetch_all(conn)
    .await?)
}

/// Withdraws a file from sale; false when the product has no such file.
pub async fn withdraw_file(
    conn: &mut PgConnection,
    product_id: Uuid,
    file_id: Uuid,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE product_files SET deleted_at = now() \
         WHERE id = $1 AND product_id = $2 AND deleted_at IS NULL",
    )
    .bind(file_id)
    .bind(product_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the item of `delivery_id` a link to each file its product sells
/// now; a second run (after a lost lease) adds none. Returns how many links
/// the delivery has.
pub async fn make_links(
    conn: &mut PgConnection,
    delivery_id: Uuid,
    product_id: Uuid,
    item_id: Uuid,
    ttl_hours: u32,
    max_downloads: u32,
) -> Result<i64, DbError> {
    let ttl = i32::try_from(ttl_hours).unwrap_or(i32::MAX);
    let max = i32::try_from(max_downloads).unwrap_or(i32::MAX);
    let count: i64 = sqlx::query_scalar(
        "WITH made AS ( \
           INSERT INTO download_links (id, order_id, item_id, delivery_id, file_id, ttl_hours, expires_at, max_downloads) \
           SELECT gen_random_uuid(), d.order_id, $3, d.id, f.id, $4, \
             date_trunc('second', now()) + make_interval(hours => $4), $5 \
           FROM deliveries d JOIN orders o ON o.id = d.order_id \
             JOIN product_files f ON f.product_id = $2 AND f.deleted_at IS NULL \
           WHERE d.id = $1 AND d.item_id = $3 AND d.status = 'running' AND o.revoked_at IS NULL \
           ON CONFLICT (delivery_id, file_id) DO NOTHING RETURNING 1) \
         SELECT (SELECT count(*) FROM made) + (SELECT count(*) FROM download_links WHERE delivery_id = $1)",
    )
    .bind(delivery_id)
    .bind(product_id)
    .bind(item_id)
    .bind(ttl)
    .bind(max)
    .fetch_one(conn)
    .await?;
    Ok(count)
}

/// A link as staff and the store see it (the URL only where the caller may
/// see it: `GET /v1/orders/{id}/downloads`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LinkView {
    pub id: Uuid,
    pub item_id: Uuid,
    pub file_id: Uuid,
    pub file_name: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub expires_at: DateTime<Utc>,
    pub max_downloads: i32,
    /// Requests that started at the first byte.
    pub downloads: i32,
    pub bytes_served: i64,
    pub created_at: DateTime<Utc>,
    pub last_download_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    /// `<downloads.public_base_url>/downloads/<token>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl LinkView {
    /// Neither revoked, expired nor used up.
    pub fn usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at > now && self.downloads_left() > 0
    }

    /// Whole downloads still allowed: the bytes not yet sent, in files.
    pub fn downloads_left(&self) -> i64 {
        (i64::from(self.max_downloads) * self.size_bytes - self.bytes_served)
            .max(0)
            .checked_div(self.size_bytes)
            .unwrap_or(0)
    }
}

/// The links of an order (of one item, when given), in item then file order.
pub async fn links_of(
    conn: &mut PgConnection,
    order_id: Uuid,
    item_id: Option<Uuid>,
) -> Result<Vec<LinkView>, DbError> {
    let rows = sqlx::query(
        "SELECT l.id, l.item_id, l.file_id, f.name, f.size_bytes, f.sha256, l.expires_at, l.max_downloads, \
           l.downloads, l.bytes_served, l.created_at, l.last_download_at, l.revoked_at, l.revoked_reason \
         FROM download_links l JOIN product_files f ON f.id = l.file_id \
         WHERE l.order_id = $1 AND ($2::uuid IS NULL OR l.item_id = $2) \
         ORDER BY l.item_id, f.created_at, f.id",
    )
    .bind(order_id)
    .bind(item_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LinkView {
                id: r.try_get("id")?,
                item_id: r.try_get("item_id")?,
                file_id: r.try_get("file_id")?,
                file_name: r.try_get("name")?,
                size_bytes: r.try_get("size_bytes")?,
                sha256: r.try_get("sha256")?,
                expires_at: r.try_get("expires_at")?,
                max_downloads: r.try_get("max_downloads")?,
                downloads: r.try_get("downloads")?,
                bytes_served: r.try_get("bytes_served")?,
                created_at: r.try_get("created_at")?,
                last_download_at: r.try_get("last_download_at")?,
                revoked_at: r.try_get("revoked_at")?,
                revoked_reason: r.try_get("revoked_reason")?,
                url: None,
            })
        })
        .collect()
}

/// A link with what serving it needs.
#[derive(Debug, Clone)]
pub struct Serving {
    pub link_id: Uuid,
    pub order_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
    /// Bytes of `max_downloads × size` not yet sent.
    pub remaining: i64,
    pub name: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub storage_key: String,
}

pub async fn for_serving(
    conn: &mut PgConnection,
    link_id: Uuid,
) -> Result<Option<Serving>, DbError> {
    let Some(r) = sqlx::query(
        "SELECT l.order_id, l.expires_at, (l.revoked_at IS NOT NULL OR o.revoked_at IS NOT NULL) AS revoked, \
           l.max_downloads::bigint * f.size_bytes - l.bytes_served AS remaining, \
           f.name, f.content_type, f.size_bytes, f.sha256, f.storage_key \
         FROM download_links l JOIN product_files f ON f.id = l.file_id \
           JOIN orders o ON o.id = l.order_id WHERE l.id = $1",
    )
    .bind(link_id)
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Serving {
        link_id,
        order_id: r.try_get("order_id")?,
        expires_at: r.try_get("expires_at")?,
        revoked: r.try_get("revoked")?,
        remaining: r.try_get("remaining")?,
        name: r.try_get("name")?,
        content_type: r.try_get("content_type")?,
        size_bytes: r.try_get("size_bytes")?,
        sha256: r.try_get("sha256")?,
        storage_key: r.try_get("storage_key")?,
    }))
}

/// Who asked, for the log.
#[derive(Debug, Clone, Default)]
pub struct Requester {
    pub ip: Option<String>,
    pub forwarded_for: Option<String>,
    pub user_agent: Option<String>,
    pub range: Option<String>,
}

/// Spends `bytes` of the link's allowance (and one download when the
/// response starts at the first byte) and logs the request, in one
/// statement that re-checks the link is still usable and that the response
/// fits in what remains; false when not (revoked, its order withdrawn,
/// expired, or spent by a concurrent request).
pub async fn spend(
    conn: &mut PgConnection,
    link_id: Uuid,
    bytes: i64,
    from_start: bool,
    status: i16,
    who: &Requester,
) -> Result<bool, DbError> {
    let logged: Option<i64> = sqlx::query_scalar(
        "WITH spent AS ( \
           UPDATE download_links l SET bytes_served = l.bytes_served + $2, \
             downloads = l.downloads + $3::int, last_download_at = now() \
           FROM product_files f, orders o \
           WHERE l.id = $1 AND f.id = l.file_id AND o.id = l.order_id AND o.revoked_at IS NULL \
             AND l.revoked_at IS NULL AND l.expires_at > now() \
             AND l.bytes_served + $2 <= l.max_downloads::bigint * f.size_bytes \
           RETURNING l.id, l.order_id) \
         INSERT INTO download_log (link_id, order_id, ip, forwarded_for, user_agent, range_header, status, bytes) \
         SELECT id, order_id, $4, $5, $6, $7, $8, $2 FROM spent RETURNING id",
    )
    .bind(link_id)
    .bind(bytes)
    .bind(i32::from(from_start))
    .bind(&who.ip)
    .bind(&who.forwarded_for)
    .bind(&who.user_agent)
    .bind(&who.range)
    .bind(status)
    .fetch_optional(conn)
    .await?;
    Ok(logged.is_some())
}

/// Logs a request for a genuine link that was refused (`why`: the error code).
pub async fn log_refused(
    conn: &mut PgConnection,
    link_id: Uuid,
    status: i16,
    why: &str,
    who: &Requester,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO download_log (link_id, order_id, ip, forwarded_for, user_agent, range_header, status, refused) \
         SELECT id, order_id, $2, $3, $4, $5, $6, $7 FROM download_links WHERE id = $1",
    )
    .bind(link_id)
    .bind(&who.ip)
    .bind(&who.forwarded_for)
    .bind(&who.user_agent)
    .bind(&who.range)
    .bind(status)
    .bind(why)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whose links to revoke.
#[derive(Debug, Clone, Copy)]
pub enum Links {
    /// Those one download delivery made.
    OfDelivery(Uuid),
    /// Every link of an order.
    OfOrder(Uuid),
}

/// Revokes the live links of `which`; returns how many there were.
pub async fn revoke(conn: &mut PgConnection, which: Links, reason: &str) -> Result<u64, DbError> {
    let (delivery, order) = match which {
        Links::OfDelivery(id) => (Some(id), None),
        Links::OfOrder(id) => (None, Some(id)),
    };
    let done = sqlx::query(
        "UPDATE download_links SET revoked_at = now(), revoked_reason = $3 \
         WHERE (delivery_id = $1 OR order_id = $2) AND revoked_at IS NULL",
    )
    .bind(delivery)
    .bind(order)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Gives the order's expired (not revoked) links a new lifetime of their
/// own length from now, for a resend of the delivery instructions. Their
/// download count is kept. Returns how many were renewed.
pub async fn renew_expired(conn: &mut PgConnection, order_id: Uuid) -> Result<u64, DbError> {
    let done = sqlx::query(
        "UPDATE download_links SET expires_at = date_trunc('second', now()) + make_interval(hours => ttl_hours) \
         WHERE order_id = $1 AND revoked_at IS NULL AND expires_at <= now()",
    )
    .bind(order_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// One request for one of the order's links.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DownloadLogView {
    pub at: DateTime<Utc>,
    pub link_id: Uuid,
    pub file_name: String,
    /// The peer address of the request.
    pub ip: Option<String>,
    /// `X-Forwarded-For` as it arrived (set by a proxy, or claimed by the client).
    pub forwarded_for: Option<String>,
    pub user_agent: Option<String>,
    pub range: Option<String>,
    /// The HTTP status answered (200, 206, 410, …).
    pub status: i16,
    pub bytes: i64,
    /// Why it was refused, when it was.
    pub refused: Option<String>,
}

/// The order's download log, oldest first (at most `limit` rows).
pub async fn log_of(
    conn: &mut PgConnection,
    order_id: Uuid,
    limit: i64,
) -> Result<Vec<DownloadLogView>, DbError> {
    let rows = sqlx::query(
        "SELECT g.at, g.link_id, f.name, g.ip, g.forwarded_for, g.user_agent, g.range_header, g.status, \
           g.bytes, g.refused \
         FROM download_log g JOIN download_links l ON l.id = g.link_id JOIN product_files f ON f.id = l.file_id \
         WHERE g.order_id = $1 ORDER BY g.id LIMIT $2",
    )
    .bind(order_id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DownloadLogView {
                at: r.try_get("at")?,
                link_id: r.try_get("link_id")?,
                file_name: r.try_get("name")?,
                ip: r.try_get("ip")?,
                forwarded_for: r.try_get("forwarded_for")?,
                user_agent: r.try_get("user_agent")?,
                range: r.try_get("range_header")?,
                status: r.try_get("status")?,
                bytes: r.try_get("bytes")?,
                refused: r.try_get("refused")?,
            })
        })
        .collect()
}
