//! The staff's order list: filters, a substring search, five sorts in both
//! directions, keyset pages.
//!
//! Every sort is `(key, id)`, with an index per key (see the migration
//! `order_list`), so a page is an index range read however deep it is, and
//! an order inserted meanwhile never moves the rows of later pages. Only the
//! filters that are set become SQL (each statement is built from fixed
//! fragments; every value is a bind), so each combination gets its own plan.
//! The page is chosen first and its rows' item counts and delivery summaries
//! are read for those rows only.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::domain::order::{OrderStatus, PaymentStatus};
use crate::error::DbError;

/// What the list is sorted by (then by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Created,
    Total,
    OrderNumber,
    PaymentStatus,
    Status,
}

impl SortKey {
    pub const ALL: &[(&str, SortKey)] = &[
        ("created", SortKey::Created),
        ("total", SortKey::Total),
        ("order_number", SortKey::OrderNumber),
        ("payment_status", SortKey::PaymentStatus),
        ("status", SortKey::Status),
    ];

    pub fn name(self) -> &'static str {
        SortKey::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("created", |(n, _)| n)
    }

    /// The column sorted by.
    pub(crate) fn column(self) -> &'static str {
        match self {
            SortKey::Created => "o.created_at",
            SortKey::Total => "o.total",
            SortKey::OrderNumber => "o.order_number",
            SortKey::PaymentStatus => "o.payment_status",
            SortKey::Status => "o.status",
        }
    }
}

/// Orders that need someone: a dead delivery, a held one, a waiting one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    Failures,
    Held,
    Waiting,
}

impl Attention {
    fn status(self) -> &'static str {
        match self {
            Attention::Failures => "dead",
            Attention::Held => "held",
            Attention::Waiting => "waiting",
        }
    }
}

/// Every filter narrows the list; unset ones are left out of the statement.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub statuses: Vec<OrderStatus>,
    pub payment_statuses: Vec<PaymentStatus>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    pub paid_from: Option<DateTime<Utc>>,
    pub paid_to: Option<DateTime<Utc>>,
    pub completed_from: Option<DateTime<Utc>>,
    pub completed_to: Option<DateTime<Utc>>,
    pub gateway: Option<String>,
    /// Orders with an item of this product.
    pub sku: Option<String>,
    /// Orders with a key bought from this supplier.
    pub supplier: Option<String>,
    /// Orders with a delivery on this game server (its id).
    pub game_server_id: Option<Uuid>,
    pub min_total: Option<Decimal>,
    pub max_total: Option<Decimal>,
    pub currency: Option<String>,
    pub attention: Vec<Attention>,
    /// Paid orders that wait to be processed, by why.
    pub process_holds: Vec<crate::domain::order::ProcessHold>,
    /// A substring of the order number, customer e-mail or name, game
    /// username, transaction id or a product name (lower-cased; at least 3
    /// characters, which the trigram index needs).
    pub search: Option<String>,
    /// Only these orders (a ticked selection); empty: no such limit.
    pub ids: Vec<Uuid>,
}

/// A sort key's value, typed: a cursor's key is parsed in Rust and bound
/// as its column's type, so no text from a client is ever cast in SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortValue {
    Time(DateTime<Utc>),
    Number(Decimal),
    Text(String),
}

impl SortValue {
    /// The key as a cursor carries it.
    pub fn to_text(&self) -> String {
        match self {
            SortValue::Time(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            SortValue::Number(n) => n.to_string(),
            SortValue::Text(s) => s.clone(),
        }
    }

    /// A key of `sort` read back from a cursor; `None` when it is not one.
    pub fn parse(sort: SortKey, text: &str) -> Option<Self> {
        match sort {
            SortKey::Created => DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| SortValue::Time(t.to_utc())),
            SortKey::Total => text.parse().ok().map(SortValue::Number),
            SortKey::OrderNumber | SortKey::PaymentStatus | SortKey::Status => (text.len() <= 255
                && !text.chars().any(|c| crate::domain::is_non_text(c, false)))
            .then(|| SortValue::Text(text.to_owned())),
        }
    }
}

/// Where the previous page ended: its last row's sort key and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub key: SortValue,
    pub id: Uuid,
}

/// How an order's deliveries stand, counted by status.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct DeliverySummary {
    pub total: i64,
    pub succeeded: i64,
    /// Queued, running or retrying.
    pub in_progress: i64,
    pub waiting: i64,
    pub held: i64,
    pub dead: i64,
    pub cancelled: i64,
}

/// One row of the list: what the orders dashboard shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderRow {
    pub id: Uuid,
    pub order_number: String,
    pub created_at: DateTime<Utc>,
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    pub total: Decimal,
    pub currency: String,
    pub status: OrderStatus,
    pub payment_status: PaymentStatus,
    pub gateway: Option<String>,
    pub item_count: i64,
    pub deliveries: DeliverySummary,
    /// Set while a paid order waits to be processed (`manual`, `delayed`).
    pub process_hold: Option<crate::domain::order::ProcessHold>,
}

impl OrderRow {
    /// This row's key in `sort`, for the next page's cursor.
    pub fn sort_value(&self, sort: SortKey) -> SortValue {
        match sort {
            SortKey::Created => SortValue::Time(self.created_at),
            SortKey::Total => SortValue::Number(self.total),
            SortKey::OrderNumber => SortValue::Text(self.order_number.clone()),
            SortKey::PaymentStatus => SortValue::Text(self.payment_status.as_str().to_owned()),
            SortKey::Status => SortValue::Text(self.status.as_str().to_owned()),
        }
    }
}

pub(crate) fn push_filter(q: &mut QueryBuilder<Postgres>, f: &ListFilter) {
    push_filters(q, f);
    if let Some(s) = &f.search {
        q.push(" AND o.search LIKE lower(")
            .push_bind(like_pattern(s))
            .push(")");
    }
}

/// Every filter but the search.
fn push_filters(q: &mut QueryBuilder<Postgres>, f: &ListFilter) {
    if !f.statuses.is_empty() {
        q.push(" AND o.status = ANY(")
            .push_bind(f.statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>())
            .push(")");
    }
    if !f.payment_statuses.is_empty() {
        q.push(" AND o.payment_status = ANY(")
            .push_bind(
                f.payment_statuses
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>(),
            )
            .push(")");
    }
    let ranges = [
        (" AND o.created_at >= ", f.created_from),
        (" AND o.created_at < ", f.created_to),
        (" AND o.paid_at >= ", f.paid_from),
        (" AND o.paid_at < ", f.paid_to),
        (" AND o.completed_at >= ", f.completed_from),
        (" AND o.completed_at < ", f.completed_to),
    ];
    for (sql, value) in ranges {
        if let Some(v) = value {
            q.push(sql).push_bind(v);
        }
    }
    if !f.process_holds.is_empty() {
        q.push(" AND o.process_hold = ANY(")
            .push_bind(
                f.process_holds
                    .iter()
                    .map(|h| h.as_str())
                    .collect::<Vec<_>>(),
            )
            .push(")");
    }
    if let Some(g) = &f.gateway {
        q.push(" AND o.gateway = ").push_bind(g.clone());
    }
    if let Some(c) = &f.currency {
        q.push(" AND o.currency = ").push_bind(c.clone());
    }
    if let Some(min) = f.min_total {
        q.push(" AND o.total >= ").push_bind(min);
    }
    if let Some(max) = f.max_total {
        q.push(" AND o.total <= ").push_bind(max);
    }
    if let Some(sku) = &f.sku {
        q.push(" AND o.id IN (SELECT i.order_id FROM order_items i WHERE i.sku = ")
            .push_bind(sku.clone())
            .push(")");
    }
    if let Some(s) = &f.supplier {
        q.push(
            " AND o.id IN (SELECT i.order_id FROM item_keys k JOIN order_items i ON i.id = k.item_id \
             WHERE k.supplier = ",
        )
        .push_bind(s.clone())
        .push(")");
    }
    if let Some(server) = f.game_server_id {
        q.push(" AND o.id IN (SELECT d.order_id FROM deliveries d WHERE d.target = ")
            .push_bind(server.to_string())
            .push(" AND d.kind = 'rcon')");
    }
    if !f.ids.is_empty() {
        q.push(" AND o.id = ANY(")
            .push_bind(f.ids.clone())
            .push(")");
    }
    if !f.attention.is_empty() {
        q.push(" AND o.id IN (SELECT d.order_id FROM deliveries d WHERE d.status = ANY(")
            .push_bind(f.attention.iter().map(|a| a.status()).collect::<Vec<_>>())
            .push(") AND d.status IN ('dead', 'held', 'waiting'))");
    }
}

/// `%s%` with LIKE's own characters escaped (lower-cased in SQL, by the
/// same `lower()` as the search column).
fn like_pattern(s: &str) -> String {
    let mut p = String::with_capacity(s.len() + 2);
    p.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// How a page with a search is found. A substring's frequency is what the
/// planner guesses worst: walking the sort's index and filtering is fast for
/// a common one and reads the whole table for a rare one; the trigram index
/// is fast for a rare one and fetches every match of a common one. So a
/// search first walks only the first `WINDOW` rows in the page's order: if
/// the page fills there, those are its rows (nothing outside the window sorts
/// before them). Otherwise the matches come from the trigram index.
#[derive(Clone, Copy)]
enum Strategy {
    Plain,
    Window,
    Trigram,
}

/// Rows a search walks in the sort's order before it asks the trigram index.
const WINDOW: i64 = 5_000;

/// One page: `limit` rows after `after`, sorted by `sort` (descending when
/// `desc`), then by id in the same direction.
pub async fn list(
    conn: &mut PgConnection,
    f: &ListFilter,
    sort: SortKey,
    desc: bool,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<OrderRow>, DbError> {
    if f.search.is_none() {
        return fetch(conn, f, sort, desc, after, limit, Strategy::Plain).await;
    }
    let rows = fetch(&mut *conn, f, sort, desc, after, limit, Strategy::Window).await?;
    if rows.len() as i64 >= limit {
        return Ok(rows);
    }
    fetch(conn, f, sort, desc, after, limit, Strategy::Trigram).await
}

async fn fetch(
    conn: &mut PgConnection,
    f: &ListFilter,
    sort: SortKey,
    desc: bool,
    after: Option<&After>,
    limit: i64,
    strategy: Strategy,
) -> Result<Vec<OrderRow>, DbError> {
    let column = sort.column();
    let dir = if desc { " DESC" } else { " ASC" };
    let pattern = f.search.as_deref().map(like_pattern).unwrap_or_default();
    let mut q = QueryBuilder::new("WITH ");
    // The rows to choose from, with every filter but the search applied.
    let from = |q: &mut QueryBuilder<Postgres>, source: &'static str| {
        q.push(source).push(" o WHERE true");
        push_filters(q, f);
        if let Some(a) = after {
            q.push(" AND (").push(column).push(", o.id) ");
            q.push(if desc { "< (" } else { "> (" });
            match &a.key {
                SortValue::Time(t) => q.push_bind(*t),
                SortValue::Number(n) => q.push_bind(*n),
                SortValue::Text(s) => q.push_bind(s.clone()),
            };
            q.push(", ").push_bind(a.id).push(")");
        }
    };
    if let Strategy::Trigram = strategy {
        // The matches of the search and of every other filter, as whole rows
        // (fetching them again by id would read each row's page twice).
        q.push("hits AS MATERIALIZED (SELECT o.* FROM ");
        from(&mut q, "orders");
        q.push(" AND o.search LIKE lower(")
            .push_bind(pattern.clone())
            .push(")), ");
    }
    q.push(
        "page AS (SELECT o.id, o.order_number, o.created_at, o.customer_name, o.customer_email, \
         o.total, o.currency, o.status, o.payment_status, o.gateway, o.process_hold FROM ",
    );
    match strategy {
        Strategy::Plain => from(&mut q, "orders"),
        Strategy::Window => {
            q.push("(SELECT o.* FROM ");
            from(&mut q, "orders");
            q.push(" ORDER BY ")
                .push(column)
                .push(dir)
                .push(", o.id")
                .push(dir)
                .push(" LIMIT ")
                .push_bind(WINDOW)
                .push(") o WHERE o.search LIKE lower(")
                .push_bind(pattern)
                .push(")");
        }
        Strategy::Trigram => {
            q.push("hits o");
        }
    }
    q.push(" ORDER BY ")
        .push(column)
        .push(dir)
        .push(", o.id")
        .push(dir);
    q.push(" LIMIT ").push_bind(limit).push(
        ") SELECT p.*, \
         (SELECT count(*) FROM order_items i WHERE i.order_id = p.id) AS item_count, \
         s.total AS d_total, s.succeeded, s.in_progress, s.waiting, s.held, s.dead, s.cancelled \
         FROM page p CROSS JOIN LATERAL (SELECT count(*) AS total, \
           count(*) FILTER (WHERE d.status = 'succeeded') AS succeeded, \
           count(*) FILTER (WHERE d.status IN ('queued', 'running', 'retrying')) AS in_progress, \
           count(*) FILTER (WHERE d.status = 'waiting') AS waiting, \
           count(*) FILTER (WHERE d.status = 'held') AS held, \
           count(*) FILTER (WHERE d.status = 'dead') AS dead, \
           count(*) FILTER (WHERE d.status = 'cancelled') AS cancelled \
           FROM deliveries d WHERE d.order_id = p.id AND d.purpose = 'deliver') s \
         ORDER BY ",
    );
    q.push(match sort {
        SortKey::Created => "p.created_at",
        SortKey::Total => "p.total",
        SortKey::OrderNumber => "p.order_number",
        SortKey::PaymentStatus => "p.payment_status",
        SortKey::Status => "p.status",
    })
    .push(dir)
    .push(", p.id")
    .push(dir);
    // A search's plan depends on its text: no cached generic plan for it.
    let rows = q
        .build()
        .persistent(matches!(strategy, Strategy::Plain))
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(OrderRow {
                id: r.try_get("id")?,
                order_number: r.try_get("order_number")?,
                created_at: r.try_get("created_at")?,
                customer_name: r.try_get("customer_name")?,
                customer_email: r.try_get("customer_email")?,
                total: r.try_get("total")?,
                currency: r.try_get::<String, _>("currency")?.trim_end().to_owned(),
                status: crate::db::orders::parse(r, "status")?,
                payment_status: crate::db::orders::parse(r, "payment_status")?,
                gateway: r.try_get("gateway")?,
                process_hold: r
                    .try_get::<Option<String>, _>("process_hold")?
                    .map(|h| h.parse())
                    .transpose()?,
                item_count: r.try_get("item_count")?,
                deliveries: DeliverySummary {
                    total: r.try_get("d_total")?,
                    succeeded: r.try_get("succeeded")?,
                    in_progress: r.try_get("in_progress")?,
                    waiting: r.try_get("waiting")?,
                    held: r.try_get("held")?,
                    dead: r.try_get("dead")?,
                    cancelled: r.try_get("cancelled")?,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn search_text_is_a_literal_substring() {
        assert_eq!(like_pattern("ORD-AB"), "%ORD-AB%");
        assert_eq!(like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }
}
