//! Webhook endpoints and their delivery log. The events themselves are
//! written by the triggers of migration `20261206000001_webhooks.sql`; a
//! resend and a test event are written here, the same way (a `webhook`
//! delivery with its outbox row).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::domain::delivery::{DeliveryKind, DeliveryStatus};
use crate::error::DbError;

/// An endpoint as admins read it (never its secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub description: String,
    /// Event names it receives (`*`: all).
    pub events: Vec<String>,
    pub enabled: bool,
    /// Why it is disabled: `410 Gone` from the receiver, failing for days, or an admin.
    pub disabled_reason: Option<String>,
    /// The first failure since its last success.
    pub failing_since: Option<DateTime<Utc>>,
    /// Until then the previous secret signs too (after a rotation).
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, url, description, events, enabled, disabled_reason, failing_since, \
    previous_secret_until, created_at, updated_at";

fn endpoint(r: &sqlx::postgres::PgRow) -> Result<Endpoint, DbError> {
    Ok(Endpoint {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        description: r.try_get("description")?,
        events: r.try_get("events")?,
        enabled: r.try_get("enabled")?,
        disabled_reason: r.try_get("disabled_reason")?,
        failing_since: r.try_get("failing_since")?,
        previous_secret_until: r.try_get("previous_secret_until")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Saves a new endpoint with `secret`.
pub async fn create(
    conn: &mut PgConnection,
    url: &str,
    description: &str,
    events: &[String],
    enabled: bool,
    secret: &str,
) -> Result<Endpoint, DbError> {
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO webhook_endpoints (id, url, description, events, enabled, secret) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    )))
    .bind(Uuid::new_v4())
    .bind(url)
    .bind(description)
    .bind(events)
    .bind(enabled)
    .bind(secret)
    .fetch_one(conn)
    .await?;
    endpoint(&r)
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<Endpoint>, DbError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"
    )))
    .fetch_all(conn)
    .await?
    .iter()
    .map(endpoint)
    .collect()
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Endpoint>, DbError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(endpoint)
    .transpose()
}

/// The fields a PATCH may change (`None`: unchanged).
#[derive(Debug, Default)]
pub struct Patch<'a> {
    pub url: Option<&'a str>,
    pub description: Option<&'a str>,
    pub events: Option<&'a [String]>,
    pub enabled: Option<bool>,
}

/// Applies `patch`. Enabling an endpoint forgets why it was disabled and
/// its failures; disabling it records `actor` as the reason.
pub async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    patch: &Patch<'_>,
    actor: &str,
) -> Result<Option<Endpoint>, DbError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_endpoints SET url = coalesce($2, url), \
           description = coalesce($3, description), events = coalesce($4, events), \
           enabled = coalesce($5, enabled), \
           disabled_reason = CASE WHEN $5 IS TRUE THEN NULL \
             WHEN $5 IS FALSE AND enabled THEN $6 ELSE disabled_reason END, \
           failing_since = CASE WHEN $5 IS TRUE AND NOT enabled THEN NULL ELSE failing_since END, \
           updated_at = now() \
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(patch.url)
    .bind(patch.description)
    .bind(patch.events)
    .bind(patch.enabled)
    .bind(format!("disabled by {actor}"))
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(endpoint)
    .transpose()
}

/// Deletes an endpoint; its deliveries that are not running are cancelled
/// (their dead letters resolved), a running one finds no endpoint and ends
/// dead. Returns false when there was no such endpoint.
pub async fn delete(conn: &mut PgConnection, id: Uuid, actor: &str) -> Result<bool, DbError> {
    let gone = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0;
    if !gone {
        return Ok(false);
    }
    let open = sqlx::query(
        "SELECT id, order_id, status FROM deliveries WHERE kind = 'webhook' AND target = $1 \
           AND status IN ('queued', 'retrying', 'waiting', 'dead', 'held') FOR UPDATE",
    )
    .bind(id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    for r in open {
        let status: DeliveryStatus = r.try_get::<String, _>("status")?.parse()?;
        super::deliveries::cancel(
            conn,
            Some(r.try_get("order_id")?),
            r.try_get("id")?,
            status,
            "its webhook endpoint was deleted",
            actor,
        )
        .await?;
    }
    Ok(true)
}

/// A new secret; the current one keeps signing for `overlap_hours`.
pub async fn rotate(
    conn: &mut PgConnection,
    id: Uuid,
    secret: &str,
    overlap_hours: u32,
) -> Result<Option<Endpoint>, DbError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_endpoints SET previous_secret = CASE WHEN $3 > 0 THEN secret END, \
           previous_secret_until = CASE WHEN $3 > 0 THEN now() + make_interval(hours => $3) END, \
           secret = $2, updated_at = now() \
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(secret)
    .bind(i32::try_from(overlap_hours).unwrap_or(i32::MAX))
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(endpoint)
    .transpose()
}

/// What the worker needs to call an endpoint.
#[derive(Debug, Clone)]
pub struct Signing {
    pub url: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// The current secret first, then the previous one while it overlaps.
    pub secrets: Vec<String>,
}

pub async fn signing(pool: &PgPool, id: Uuid) -> Result<Option<Signing>, DbError> {
    let Some(r) = sqlx::query(
        "SELECT url, enabled, disabled_reason, secret, \
           CASE WHEN previous_secret_until > now() THEN previous_secret END AS previous \
         FROM webhook_endpoints WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let mut secrets = vec![r.try_get::<String, _>("secret")?];
    if let Some(p) = r.try_get::<Option<String>, _>("previous")? {
        secrets.push(p);
    }
    Ok(Some(Signing {
        url: r.try_get("url")?,
        enabled: r.try_get("enabled")?,
        disabled_reason: r.try_get("disabled_reason")?,
        secrets,
    }))
}

/// A call that succeeded: the endpoint is no longer failing.
pub async fn succeeded(pool: &PgPool, id: Uuid) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// A call that failed. The endpoint is disabled, with an alert, when it has
/// failed for `disable_after_hours` without a success; returns the reason then.
pub async fn failed(
    pool: &PgPool,
    id: Uuid,
    disable_after_hours: u32,
) -> Result<Option<String>, DbError> {
    let failing: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now()) \
         WHERE id = $1 RETURNING failing_since",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(since) = failing else {
        return Ok(None);
    };
    if Utc::now() - since < chrono::Duration::hours(i64::from(disable_after_hours)) {
        return Ok(None);
    }
    let reason = format!(
        "failing since {} without one success (webhooks.disable_after_hours = {disable_after_hours})",
        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    disable(pool, id, &reason).await?;
    Ok(Some(reason))
}

/// Disables an endpoint (the receiver answered 410, or it failed for too
/// long) and raises an alert, in one transaction.
pub async fn disable(pool: &PgPool, id: Uuid, reason: &str) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    let url: Option<String> = sqlx::query_scalar(
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $2, updated_at = now() \
         WHERE id = $1 AND enabled RETURNING url",
    )
    .bind(id)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(url) = url {
        super::keys::alert(
            &mut tx,
            "webhook_endpoint_disabled",
            &format!("webhook endpoint {url} ({id}) was disabled: {reason}"),
            &id.to_string(),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One call of an endpoint, for its delivery log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoggedAttempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Milliseconds from the start of the call to its end.
    pub latency_ms: Option<i64>,
    /// The HTTP status the receiver answered (none: no answer).
    pub status_code: Option<i32>,
    pub outcome: Option<String>,
    pub error: Option<String>,
    /// The start of the receiver's answer.
    pub response: Option<String>,
}

/// One message to an endpoint and its calls.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoggedDelivery {
    /// The delivery's id (resend and the dead-letter routes take it).
    pub id: Uuid,
    /// The `webhook-id` header: the same on every retry and resend.
    pub message_id: String,
    pub event: String,
    pub status: DeliveryStatus,
    pub order_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// The message as sent (without headers).
    pub body: Value,
    pub attempts: Vec<LoggedAttempt>,
}

/// The latest `limit` messages to an endpoint, newest first.
pub async fn log(
    conn: &mut PgConnection,
    endpoint: Uuid,
    limit: i64,
) -> Result<Vec<LoggedDelivery>, DbError> {
    let rows = sqlx::query(
        "SELECT d.id, d.order_id, d.status, d.created_at, d.last_error, \
           d.payload->>'message_id' AS message_id, d.payload->>'event' AS event, d.payload->'body' AS body, \
           coalesce((SELECT jsonb_agg(jsonb_build_object('attempt', a.attempt, 'started_at', a.started_at, \
               'finished_at', a.finished_at, \
               'latency_ms', (extract(epoch FROM a.finished_at - a.started_at) * 1000)::bigint, \
               'status_code', a.status_code, 'outcome', a.outcome, 'error', a.error, \
               'response', left(a.response, 500)) ORDER BY a.attempt) \
             FROM delivery_attempts a WHERE a.delivery_id = d.id), '[]'::jsonb) AS attempts \
         FROM deliveries d WHERE d.kind = 'webhook' AND d.target = $1 \
         ORDER BY d.created_at DESC, d.id DESC LIMIT $2",
    )
    .bind(endpoint.to_string())
    .bind(limit)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let attempts: Value = r.try_get("attempts")?;
        let attempts = attempts
            .as_array()
            .map(|a| a.iter().map(attempt).collect())
            .unwrap_or_default();
        out.push(LoggedDelivery {
            id: r.try_get("id")?,
            message_id: r
                .try_get::<Option<String>, _>("message_id")?
                .unwrap_or_default(),
            event: r.try_get::<Option<String>, _>("event")?.unwrap_or_default(),
            status: r.try_get::<String, _>("status")?.parse()?,
            order_id: r.try_get("order_id")?,
            created_at: r.try_get("created_at")?,
            last_error: r.try_get("last_error")?,
            body: r
                .try_get::<Option<Value>, _>("body")?
                .unwrap_or(Value::Null),
            attempts,
        });
    }
    Ok(out)
}

fn attempt(v: &Value) -> LoggedAttempt {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let time = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    LoggedAttempt {
        attempt: v
            .get("attempt")
            .and_then(Value::as_i64)
            .and_then(|a| i32::try_from(a).ok())
            .unwrap_or_default(),
        started_at: time("started_at").unwrap_or_default(),
        finished_at: time("finished_at"),
        latency_ms: v.get("latency_ms").and_then(Value::as_i64),
        status_code: v
            .get("status_code")
            .and_then(Value::as_i64)
            .and_then(|c| i32::try_from(c).ok()),
        outcome: text("outcome"),
        error: text("error"),
        response: text("response"),
    }
}

/// Writes a webhook delivery of `payload` and its job message.
async fn enqueue(
    conn: &mut PgConnection,
    endpoint: Uuid,
    order_id: Uuid,
    payload: &Value,
) -> Result<Uuid, DbError> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO deliveries (id, order_id, item_id, kind, target, payload, status, purpose, next_attempt_at) \
         VALUES ($1, $2, NULL, 'webhook', $3, $4, 'queued', 'notify', now())",
    )
    .bind(id)
    .bind(order_id)
    .bind(endpoint.to_string())
    .bind(payload)
    .execute(&mut *conn)
    .await?;
    super::outbox::enqueue_job(conn, id, DeliveryKind::Webhook).await?;
    super::outbox::notify_relays(conn).await?;
    Ok(id)
}

/// Sends a message of the endpoint again, as a new delivery with the same
/// `webhook-id` and body. None when the endpoint has no such delivery.
pub async fn resend(
    conn: &mut PgConnection,
    endpoint: Uuid,
    delivery: Uuid,
) -> Result<Option<Uuid>, DbError> {
    let Some(r) = sqlx::query(
        "SELECT order_id, payload FROM deliveries WHERE id = $1 AND kind = 'webhook' AND target = $2",
    )
    .bind(delivery)
    .bind(endpoint.to_string())
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let order_id: Uuid = r.try_get("order_id")?;
    let payload: Value = r.try_get("payload")?;
    enqueue(conn, endpoint, order_id, &payload).await.map(Some)
}

/// Sends `endpoint.test` with `order`'s data to one endpoint, whatever
/// events it wants (and even when disabled: the call says why it fails).
pub async fn send_test(
    conn: &mut PgConnection,
    endpoint: Uuid,
    order: Uuid,
) -> Result<Uuid, DbError> {
    let r = sqlx::query(
        "SELECT courier_webhook_order($1) AS data, nextval('webhook_event_seq') AS seq, now() AS at",
    )
    .bind(order)
    .fetch_one(&mut *conn)
    .await?;
    let data: Value = r.try_get("data")?;
    let seq: i64 = r.try_get("seq")?;
    let at: DateTime<Utc> = r.try_get("at")?;
    let id = Uuid::new_v4();
    let event = crate::domain::webhook::TEST_EVENT;
    let payload = json!({
        "endpoint_id": endpoint,
        "message_id": format!("msg_{}", id.simple()),
        "event": event,
        "body": {
            "event": event,
            "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "sequence": seq,
            "data": data,
        },
    });
    enqueue(conn, endpoint, order, &payload).await
}

/// The newest order, for a test event that names none.
pub async fn newest_order(conn: &mut PgConnection) -> Result<Option<Uuid>, DbError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM orders ORDER BY created_at DESC, id DESC LIMIT 1")
            .fetch_optional(conn)
            .await?,
    )
}
