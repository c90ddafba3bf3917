//! Disputes (chargebacks) as gateway events describe them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::payment::DisputeOutcome;
use crate::error::DbError;

/// A dispute as the order API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DisputeView {
    pub id: Uuid,
    pub external_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub reason: String,
    pub gateway_status: String,
    pub evidence_due_by: Option<DateTime<Utc>>,
    /// Set once closed.
    pub outcome: Option<DisputeOutcome>,
    pub created_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

pub async fn disputes_of(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<DisputeView>, DbError> {
    let rows = sqlx::query("SELECT * FROM disputes WHERE order_id = $1 ORDER BY created_at, id")
        .bind(order_id)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DisputeView {
                id: r.try_get("id")?,
                external_id: r.try_get("external_id")?,
                amount: r.try_get("amount")?,
                currency: r.try_get::<String, _>("currency")?.trim().to_owned(),
                reason: r.try_get("reason")?,
                gateway_status: r.try_get("gateway_status")?,
                evidence_due_by: r.try_get("evidence_due_by")?,
                outcome: r
                    .try_get::<Option<String>, _>("outcome")?
                    .map(|o| o.parse())
                    .transpose()?,
                created_at: r.try_get("created_at")?,
                closed_at: r.try_get("closed_at")?,
            })
        })
        .collect()
}

/// A dispute as a gateway event describes it.
#[derive(Debug, Clone)]
pub struct DisputeFacts<'a> {
    pub order_id: Uuid,
    pub external_id: &'a str,
    pub amount: Decimal,
    pub currency: &'a str,
    pub reason: &'a str,
    pub gateway_status: &'a str,
    pub evidence_due_by: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
}

/// Stores the dispute the first time it is seen; true if it is new.
pub async fn open_dispute(
    conn: &mut PgConnection,
    d: &DisputeFacts<'_>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO disputes (id, order_id, external_id, amount, currency, reason, gateway_status, evidence_due_by, last_event_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (external_id) DO NOTHING",
    )
    .bind(Uuid::new_v4())
    .bind(d.order_id)
    .bind(d.external_id)
    .bind(d.amount)
    .bind(d.currency)
    .bind(d.reason)
    .bind(d.gateway_status)
    .bind(d.evidence_due_by)
    .bind(d.occurred_at)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Closes an open dispute (once, whenever the closing event arrives); true if
/// this call closed it.
pub async fn close_dispute(
    conn: &mut PgConnection,
    d: &DisputeFacts<'_>,
    outcome: DisputeOutcome,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE disputes SET outcome = $2, closed_at = now(), gateway_status = $3, amount = $4, \
           evidence_due_by = coalesce($5, evidence_due_by), \
           last_event_at = greatest(last_event_at, $6) \
         WHERE external_id = $1 AND outcome IS NULL",
    )
    .bind(d.external_id)
    .bind(outcome.as_str())
    .bind(d.gateway_status)
    .bind(d.amount)
    .bind(d.evidence_due_by)
    .bind(d.occurred_at)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Updates an open dispute, only from an event newer than the last applied.
pub async fn update_dispute(
    conn: &mut PgConnection,
    d: &DisputeFacts<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE disputes SET gateway_status = $2, amount = $3, \
           evidence_due_by = coalesce($4, evidence_due_by), last_event_at = $5 \
         WHERE external_id = $1 AND outcome IS NULL \
           AND (last_event_at IS NULL OR last_event_at <= $5)",
    )
    .bind(d.external_id)
    .bind(d.gateway_status)
    .bind(d.amount)
    .bind(d.evidence_due_by)
    .bind(d.occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}
