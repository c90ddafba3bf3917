//! Dead letters: what an admin must look at. A dead delivery opens one row
//! (written by the worker in the same transaction that makes it dead); the
//! recorder draining `courier.dead` adds the raw message and its `x-death`, or
//! opens a row of its own for messages that never reached a delivery (poison).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::domain::delivery::DeliveryKind;
use crate::error::DbError;

/// Opens (or refreshes) the open dead letter of a delivery.
pub async fn open_for_delivery(
    conn: &mut PgConnection,
    delivery_id: Uuid,
    kind: DeliveryKind,
    target: &str,
    reason: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO dead_letters (delivery_id, kind, target, reason, source) VALUES ($1, $2, $3, $4, 'worker') \
         ON CONFLICT (delivery_id) WHERE resolved_at IS NULL DO UPDATE SET reason = EXCLUDED.reason \
         RETURNING id",
    )
    .bind(delivery_id)
    .bind(kind.as_str())
    .bind(target)
    .bind(reason)
    .fetch_one(conn)
    .await
}

/// What the recorder knows of a message from `courier.dead`.
#[derive(Debug, Clone)]
pub struct QueuedDeadLetter {
    /// The delivery the message names, if it could be decoded and the row exists.
    pub delivery_id: Option<Uuid>,
    pub body: String,
    pub x_death: Value,
    /// From `x-death` (e.g. `rejected from t.courier.rcon`, `delivery_limit`).
    pub queue_reason: String,
}

/// Records a message drained from `courier.dead`: attached to the delivery's
/// open dead letter when there is one, else a new dead letter whose reason
/// combines the delivery's state (if any) and why RabbitMQ dead-lettered it.
pub async fn record_from_queue(
    conn: &mut PgConnection,
    msg: &QueuedDeadLetter,
) -> Result<i64, sqlx::Error> {
    if let Some(id) = msg.delivery_id {
        let attached: Option<i64> = sqlx::query_scalar(
            "UPDATE dead_letters SET body = $2, x_death = $3 \
             WHERE delivery_id = $1 AND resolved_at IS NULL AND body IS NULL RETURNING id",
        )
        .bind(id)
        .bind(&msg.body)
        .bind(&msg.x_death)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(dl) = attached {
            return Ok(dl);
        }
        let row =
            sqlx::query("SELECT kind, target, status, last_error FROM deliveries WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(row) = row {
            let status: String = row.try_get("status")?;
            if status == "dead" {
                // A second copy of a message whose dead letter is already open: nothing new.
                let open: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM dead_letters WHERE delivery_id = $1 AND resolved_at IS NULL",
                )
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(dl) = open {
                    return Ok(dl);
                }
            }
            let last_error: Option<String> = row.try_get("last_error")?;
            let reason = format!(
                "RabbitMQ dead-lettered a message for this delivery ({}) while it was `{status}`{}",
                msg.queue_reason,
                last_error
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
            return sqlx::query_scalar(
                "INSERT INTO dead_letters (delivery_id, kind, target, reason, body, x_death, source) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'recorder') \
                 ON CONFLICT (delivery_id) WHERE resolved_at IS NULL DO UPDATE SET body = EXCLUDED.body, x_death = EXCLUDED.x_death \
                 RETURNING id",
            )
            .bind(id)
            .bind(row.try_get::<String, _>("kind")?)
            .bind(row.try_get::<String, _>("target")?)
            .bind(reason)
            .bind(&msg.body)
            .bind(&msg.x_death)
            .fetch_one(conn)
            .await;
        }
    }
    sqlx::query_scalar(
        "INSERT INTO dead_letters (reason, body, x_death, source) VALUES ($1, $2, $3, 'recorder') RETURNING id",
    )
    .bind(format!("undeliverable message ({}): it names no delivery", msg.queue_reason))
    .bind(&msg.body)
    .bind(&msg.x_death)
    .fetch_one(conn)
    .await
}

/// Filters for listing, counting and bulk retry. Every field narrows the set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    pub kind: Option<DeliveryKind>,
    /// The game server id (or, later, guild/supplier) the delivery targets.
    pub target: Option<String>,
    /// Case-insensitive substring of the reason.
    pub error: Option<String>,
    /// Only dead letters created before / after these instants.
    pub older_than: Option<DateTime<Utc>>,
    pub newer_than: Option<DateTime<Utc>>,
    /// Include resolved ones too (default: open only).
    #[serde(default)]
    pub include_resolved: bool,
}

fn push_filter(q: &mut QueryBuilder<Postgres>, f: &Filter) {
    q.push(" WHERE TRUE");
    if !f.include_resolved {
        q.push(" AND dl.resolved_at IS NULL");
    }
    if let Some(kind) = f.kind {
        q.push(" AND dl.kind = ").push_bind(kind.as_str());
    }
    if let Some(target) = &f.target {
        q.push(" AND dl.target = ").push_bind(target.clone());
    }
    if let Some(error) = &f.error {
        let escaped = error
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        q.push(" AND dl.reason ILIKE ")
            .push_bind(format!("%{escaped}%"));
    }
    if let Some(t) = f.older_than {
        q.push(" AND dl.created_at < ").push_bind(t);
    }
    if let Some(t) = f.newer_than {
        q.push(" AND dl.created_at > ").push_bind(t);
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub delivery_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub order_number: Option<String>,
    pub kind: Option<String>,
    pub target: Option<String>,
    pub reason: String,
    pub delivery_status: Option<String>,
    pub attempts: Option<i32>,
    pub body: Option<String>,
    pub x_death: Option<Value>,
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub resolution: Option<String>,
}

const SELECT: &str = "SELECT dl.*, d.order_id, o.order_number, d.status AS delivery_status, d.attempts \
    FROM dead_letters dl LEFT JOIN deliveries d ON d.id = dl.delivery_id LEFT JOIN orders o ON o.id = d.order_id";

fn from_row(r: &sqlx::postgres::PgRow) -> Result<DeadLetter, DbError> {
    Ok(DeadLetter {
        id: r.try_get("id")?,
        delivery_id: r.try_get("delivery_id")?,
        order_id: r.try_get("order_id")?,
        order_number: r.try_get("order_number")?,
        kind: r.try_get("kind")?,
        target: r.try_get("target")?,
        reason: r.try_get("reason")?,
        delivery_status: r.try_get("delivery_status")?,
        attempts: r.try_get("attempts")?,
        body: r.try_get("body")?,
        x_death: r.try_get("x_death")?,
        source: r.try_get("source")?,
        created_at: r.try_get("created_at")?,
        resolved_at: r.try_get("resolved_at")?,
        resolved_by: r.try_get("resolved_by")?,
        resolution: r.try_get("resolution")?,
    })
}

/// A page of dead letters, newest first; `before` is the last id of the previous page.
pub async fn list(
    conn: &mut PgConnection,
    f: &Filter,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<DeadLetter>, DbError> {
    let mut q = QueryBuilder::new(SELECT);
    push_filter(&mut q, f);
    if let Some(b) = before {
        q.push(" AND dl.id < ").push_bind(b);
    }
    q.push(" ORDER BY dl.id DESC LIMIT ").push_bind(limit);
    let rows = q.build().fetch_all(conn).await?;
    rows.iter().map(from_row).collect()
}

pub async fn get(conn: &mut PgConnection, id: i64) -> Result<Option<DeadLetter>, DbError> {
    let mut q = QueryBuilder::new(SELECT);
    q.push(" WHERE dl.id = ").push_bind(id);
    let row = q.build().fetch_optional(conn).await?;
    row.as_ref().map(from_row).transpose()
}

/// The ids matching `f` now: bulk retry works on this snapshot, so dead
/// letters that appear while it runs are not swept in.
pub async fn snapshot(conn: &mut PgConnection, f: &Filter) -> Result<Vec<i64>, DbError> {
    let mut q = QueryBuilder::new("SELECT dl.id FROM dead_letters dl");
    push_filter(&mut q, f);
    q.push(" ORDER BY dl.id");
    Ok(q.build_query_scalar().fetch_all(conn).await?)
}

/// How many dead letters match `f` now (what a bulk retry of `f` would
/// start from).
pub async fn count(conn: &mut PgConnection, f: &Filter) -> Result<i64, DbError> {
    let mut q = QueryBuilder::new("SELECT count(*) FROM dead_letters dl");
    push_filter(&mut q, f);
    Ok(q.build_query_scalar().fetch_one(conn).await?)
}

/// Marks the open dead letters of a delivery resolved.
pub async fn resolve_for_delivery(
    conn: &mut PgConnection,
    delivery_id: Uuid,
    by: &str,
    resolution: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE dead_letters SET resolved_at = now(), resolved_by = $2, resolution = $3 \
         WHERE delivery_id = $1 AND resolved_at IS NULL",
    )
    .bind(delivery_id)
    .bind(by)
    .bind(resolution)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks one dead letter resolved (for those without a delivery).
pub async fn resolve(
    conn: &mut PgConnection,
    id: i64,
    by: &str,
    resolution: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE dead_letters SET resolved_at = now(), resolved_by = $2, resolution = $3 WHERE id = $1 AND resolved_at IS NULL",
    )
    .bind(id)
    .bind(by)
    .bind(resolution)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
