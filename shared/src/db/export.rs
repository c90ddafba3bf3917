//! The rows of an order export: the list's filters and sort, every matching
//! order, streamed from one statement (the caller consumes them as they
//! come, so memory does not grow with the export).

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use rust_decimal::Decimal;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use crate::db::order_list::{ListFilter, SortKey, push_filter};
use crate::error::DbError;

/// One exported order.
#[derive(Debug, Clone)]
pub struct ExportRow {
    pub order_number: String,
    pub created_at: DateTime<Utc>,
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    pub status: String,
    pub payment_status: String,
    pub gateway: Option<String>,
    pub subtotal: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
    pub currency: String,
    /// `name × quantity`, `; `-separated, in item order.
    pub products: String,
    pub refunded: Decimal,
    /// What the order's keys cost (supplier prices); `None` without keys.
    pub cost: Option<Decimal>,
}

/// The statement for `f` sorted by `sort`.
pub fn query(f: &ListFilter, sort: SortKey, desc: bool) -> QueryBuilder<Postgres> {
    let column = sort.column();
    let mut q = QueryBuilder::new(
        "SELECT o.order_number, o.created_at, o.customer_name, o.customer_email, o.status, \
         o.payment_status, o.gateway, o.subtotal, o.tax, o.total, o.currency, o.refunded_amount, \
         (SELECT string_agg(i.product_name || ' × ' || i.quantity, '; ' ORDER BY i.position) \
            FROM order_items i WHERE i.order_id = o.id) AS products, \
         (SELECT sum(k.cost) FROM item_keys k JOIN order_items i ON i.id = k.item_id \
            WHERE i.order_id = o.id AND k.released_at IS NULL) AS cost \
         FROM orders o WHERE true",
    );
    push_filter(&mut q, f);
    let dir = if desc { " DESC" } else { " ASC" };
    q.push(" ORDER BY ")
        .push(column)
        .push(dir)
        .push(", o.id")
        .push(dir);
    q
}

/// How many orders `f` selects (what an export of it will write).
pub async fn count(conn: &mut PgConnection, f: &ListFilter) -> Result<i64, DbError> {
    let mut q = QueryBuilder::new("SELECT count(*) FROM orders o WHERE true");
    push_filter(&mut q, f);
    Ok(q.build_query_scalar().fetch_one(conn).await?)
}

fn row(r: &sqlx::postgres::PgRow) -> Result<ExportRow, DbError> {
    Ok(ExportRow {
        order_number: r.try_get("order_number")?,
        created_at: r.try_get("created_at")?,
        customer_name: r.try_get("customer_name")?,
        customer_email: r.try_get("customer_email")?,
        status: r.try_get("status")?,
        payment_status: r.try_get("payment_status")?,
        gateway: r.try_get("gateway")?,
        subtotal: r.try_get("subtotal")?,
        tax: r.try_get("tax")?,
        total: r.try_get("total")?,
        currency: r.try_get::<String, _>("currency")?.trim_end().to_owned(),
        products: r
            .try_get::<Option<String>, _>("products")?
            .unwrap_or_default(),
        refunded: r.try_get("refunded_amount")?,
        cost: r.try_get("cost")?,
    })
}

/// Streams the rows of `q` over `conn`.
pub fn stream<'c>(
    conn: &'c mut PgConnection,
    q: &'c mut QueryBuilder<Postgres>,
) -> impl Stream<Item = Result<ExportRow, DbError>> + 'c {
    q.build()
        .fetch(conn)
        .map(|r| r.map_err(DbError::from).and_then(|r| row(&r)))
}
