//! The sales summary: what the orders paid in a range brought in, gave back
//! and cost, per group and currency (money is never converted).
//!
//! An order belongs to the range by `paid_at` (`from` inclusive, `to`
//! exclusive): orders never paid are not revenue. Its refunds (`refunded_amount`,
//! whenever they were made), its lost disputes and the cost of its keys count
//! with it, so a range's figures are those of its orders, not a cash-flow
//! statement. Time buckets are UTC.
//!
//! Each grouping is one static statement of set-based aggregates, each over
//! the range read through `orders (paid_at)` (the `reports` migration's
//! covering index); the planner joins items and keys as their sizes say.
//! Statements run unprepared (`persistent(false)`), so every range gets its
//! own plan (a generic plan guesses a range's size), with the planner
//! settings of `PLANNER` (why each: there).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection, Row};

use crate::error::DbError;

crate::domain::text_enum!(
    /// What the rows are grouped by.
    GroupBy, "report grouping" {
        Day => "day",
        Week => "week",
        Month => "month",
        Product => "product",
        Supplier => "supplier",
        Gateway => "gateway",
        Currency => "currency",
    }
);

impl GroupBy {
    /// Groupings whose rows each hold whole orders (an order is in exactly
    /// one row), so the rows add up to the totals.
    fn by_order(self) -> bool {
        !matches!(self, GroupBy::Product | GroupBy::Supplier)
    }
}

/// The exact sums of one group in one currency (rounded only when shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sums {
    pub currency: String,
    pub orders: i64,
    pub revenue: Decimal,
    pub refunds: Decimal,
    pub disputes_lost: Decimal,
    pub cost: Decimal,
}

impl Sums {
    fn zero(currency: &str) -> Self {
        Sums {
            currency: currency.to_owned(),
            orders: 0,
            revenue: Decimal::ZERO,
            refunds: Decimal::ZERO,
            disputes_lost: Decimal::ZERO,
            cost: Decimal::ZERO,
        }
    }

    /// Revenue less what went back (refunds, lost disputes) and what the keys cost.
    pub fn profit(&self) -> Decimal {
        self.revenue - self.refunds - self.disputes_lost - self.cost
    }

    /// Profit per unit of revenue; `None` without revenue.
    pub fn margin(&self) -> Option<Decimal> {
        (!self.revenue.is_zero()).then(|| self.profit() / self.revenue)
    }

    fn add(&mut self, other: &Sums) {
        self.orders += other.orders;
        self.revenue += other.revenue;
        self.refunds += other.refunds;
        self.disputes_lost += other.disputes_lost;
        self.cost += other.cost;
    }
}

/// One row of the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `2026-11-01` (day; week: its Monday), `2026-11` (month), a SKU, a
    /// supplier (`stock` or `manual` for keys not bought), a gateway (`none`
    /// when the order names none) or a currency.
    pub group: String,
    /// The product's name in the catalog (group by product).
    pub product_name: Option<String>,
    /// Keys counted (group by supplier).
    pub keys: Option<i64>,
    pub sums: Sums,
}

/// The rows, and the totals per currency over the whole range (order-level).
#[derive(Debug, Clone)]
pub struct Summary {
    pub rows: Vec<Group>,
    pub totals: Vec<Sums>,
}

/// An order-level statement: `$g` groups the orders of the range, `$label`
/// shows `s.g`. Sales, lost disputes and key costs are summed per group
/// separately (each over the range) and joined, so no order counts twice.
macro_rules! by_order {
    ($g:literal, $label:literal) => {
        concat!(
            "SELECT ", $label, " AS label, s.currency, s.orders, s.revenue, s.refunds, \
               coalesce(l.amount, 0) AS disputes_lost, coalesce(c.cost, 0) AS cost \
             FROM (SELECT ", $g, " AS g, o.currency, count(*) AS orders, sum(o.total) AS revenue, \
                     sum(o.refunded_amount) AS refunds \
                   FROM orders o WHERE o.paid_at >= $1 AND o.paid_at < $2 GROUP BY 1, 2) s \
             LEFT JOIN (SELECT ", $g, " AS g, o.currency, sum(d.amount) AS amount \
                   FROM orders o JOIN disputes d ON d.order_id = o.id AND d.currency = o.currency \
                   WHERE o.paid_at >= $1 AND o.paid_at < $2 AND d.outcome IN ('lost', 'accepted') \
                   GROUP BY 1, 2) l USING (g, currency) \
             LEFT JOIN (SELECT ", $g, " AS g, o.currency, sum(i.key_cost) AS cost \
                   FROM orders o JOIN order_items i ON i.order_id = o.id \
                   WHERE o.paid_at >= $1 AND o.paid_at < $2 \
                   GROUP BY 1, 2) c USING (g, currency) \
             ORDER BY s.g, s.currency"
        )
    };
}

const BY_DAY: &str = by_order!(
    "date_trunc('day', o.paid_at AT TIME ZONE 'UTC')",
    "to_char(s.g, 'YYYY-MM-DD')"
);
const BY_WEEK: &str = by_order!(
    "date_trunc('week', o.paid_at AT TIME ZONE 'UTC')",
    "to_char(s.g, 'YYYY-MM-DD')"
);
const BY_MONTH: &str = by_order!(
    "date_trunc('month', o.paid_at AT TIME ZONE 'UTC')",
    "to_char(s.g, 'YYYY-MM')"
);
const BY_GATEWAY: &str = by_order!("coalesce(o.gateway, 'none')", "s.g");
const BY_CURRENCY: &str = by_order!("o.currency::text", "s.g");

/// Items by SKU: their own totals and their keys' costs (`key_cost`, kept
/// on the item by a trigger on `item_keys`), `orders` counting each order
/// once. Refunds and disputes are the order's, not an item's, so they are
/// not split here. The name is the catalog's (the item's own when the
/// product is gone).
const BY_PRODUCT: &str = "\
SELECT i.sku AS label, coalesce(max(p.name), max(i.product_name)) AS product_name, o.currency, \
  count(DISTINCT o.id) AS orders, sum(i.total) AS revenue, 0::numeric AS refunds, \
  0::numeric AS disputes_lost, sum(i.key_cost) AS cost \
FROM orders o JOIN order_items i ON i.order_id = o.id \
LEFT JOIN products p ON p.sku = i.sku \
WHERE o.paid_at >= $1 AND o.paid_at < $2 \
GROUP BY i.sku, o.currency ORDER BY i.sku, o.currency";

/// Keys by where they came from: each key sells at its item's unit price.
/// Keys given back to stock (`released_at`) were neither sold nor paid for.
const BY_SUPPLIER: &str = "\
SELECT coalesce(k.supplier, k.source) AS label, o.currency, count(DISTINCT o.id) AS orders, \
  count(*) AS keys, sum(i.unit_price) AS revenue, 0::numeric AS refunds, 0::numeric AS disputes_lost, \
  coalesce(sum(k.cost), 0) AS cost \
FROM orders o JOIN order_items i ON i.order_id = o.id JOIN item_keys k ON k.item_id = i.id \
WHERE o.paid_at >= $1 AND o.paid_at < $2 AND k.released_at IS NULL \
GROUP BY 1, 2 ORDER BY 1, 2";

/// The order-level totals per currency but the cost, for the groupings
/// whose rows split orders (by product, by supplier): their rows' costs add
/// up to the orders' (every counted key is in exactly one row), so the
/// expensive join of items and keys is not run twice.
const TOTALS_BUT_COST: &str = "\
SELECT o.currency AS label, o.currency, count(*) AS orders, sum(o.total) AS revenue, \
  sum(o.refunded_amount) AS refunds, coalesce(sum(l.amount), 0) AS disputes_lost, 0::numeric AS cost \
FROM orders o \
LEFT JOIN (SELECT d.order_id, d.currency, sum(d.amount) AS amount FROM disputes d \
           WHERE d.outcome IN ('lost', 'accepted') GROUP BY 1, 2) l \
  ON l.order_id = o.id AND l.currency = o.currency \
WHERE o.paid_at >= $1 AND o.paid_at < $2 \
GROUP BY o.currency ORDER BY o.currency";

fn statement(group: GroupBy) -> &'static str {
    match group {
        GroupBy::Day => BY_DAY,
        GroupBy::Week => BY_WEEK,
        GroupBy::Month => BY_MONTH,
        GroupBy::Gateway => BY_GATEWAY,
        GroupBy::Currency => BY_CURRENCY,
        GroupBy::Product => BY_PRODUCT,
        GroupBy::Supplier => BY_SUPPLIER,
    }
}

fn group_row(r: &sqlx::postgres::PgRow, group: GroupBy) -> Result<Group, DbError> {
    Ok(Group {
        group: r.try_get("label")?,
        product_name: match group {
            GroupBy::Product => r.try_get("product_name")?,
            _ => None,
        },
        keys: match group {
            GroupBy::Supplier => Some(r.try_get("keys")?),
            _ => None,
        },
        sums: Sums {
            currency: r.try_get::<String, _>("currency")?.trim_end().to_owned(),
            orders: r.try_get("orders")?,
            revenue: r.try_get("revenue")?,
            refunds: r.try_get("refunds")?,
            disputes_lost: r.try_get("disputes_lost")?,
            cost: r.try_get("cost")?,
        },
    })
}

/// The rows of `sql` (one of the statements above) over `[from, to)`.
async fn fetch(
    conn: &mut PgConnection,
    sql: &'static str,
    group: GroupBy,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Group>, DbError> {
    let rows = sqlx::query(sql)
        .bind(from)
        .bind(to)
        .persistent(false)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| group_row(r, group)).collect()
}

/// The totals of rows that split orders: the orders' own figures, and the
/// cost the rows add up to per currency.
async fn split_totals(
    conn: &mut PgConnection,
    rows: &[Group],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Sums>, DbError> {
    let mut orders = totals(&fetch(conn, TOTALS_BUT_COST, GroupBy::Currency, from, to).await?);
    for cost in totals(rows) {
        if let Some(t) = orders.iter_mut().find(|t| t.currency == cost.currency) {
            t.cost = cost.cost;
        }
    }
    Ok(orders)
}

/// How the summary's statements are planned, for their transaction only.
/// JIT compiles for longer than these aggregates run. The default
/// `random_page_cost` (4, for spinning disks) makes the planner hash every
/// order item rather than look up a month's by order, which measured
/// slower on a million orders (the pages a report walks are mostly cached).
/// Per-order groups of a month (about 40,000) fit a hash in 64 MiB, not in
/// the default 4 MiB, which sorts them on disk instead.
const PLANNER: &[&str] = &[
    "SET LOCAL jit = off",
    "SET LOCAL random_page_cost = 1.1",
    "SET LOCAL work_mem = '64MB'",
];

/// Adds the rows up per currency (the rows of an order-level grouping hold
/// each order once).
fn totals(rows: &[Group]) -> Vec<Sums> {
    let mut totals: Vec<Sums> = Vec::new();
    for row in rows {
        let at = match totals.iter().position(|t| t.currency == row.sums.currency) {
            Some(i) => i,
            None => {
                totals.push(Sums::zero(&row.sums.currency));
                totals.len() - 1
            }
        };
        totals[at].add(&row.sums);
    }
    totals.sort_by(|a, b| a.currency.cmp(&b.currency));
    totals
}

/// The summary of the orders paid in `[from, to)`, grouped by `group`: rows
/// and totals from one snapshot.
pub async fn summary(
    conn: &mut PgConnection,
    group: GroupBy,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Summary, DbError> {
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    for setting in PLANNER {
        sqlx::query(*setting).execute(&mut *tx).await?;
    }
    let rows = fetch(&mut tx, statement(group), group, from, to).await?;
    let totals = if group.by_order() {
        totals(&rows)
    } else {
        split_totals(&mut tx, &rows, from, to).await?
    };
    tx.commit().await?;
    Ok(Summary { rows, totals })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(currency: &str, revenue: &str, cost: &str) -> Sums {
        Sums {
            currency: currency.into(),
            orders: 1,
            revenue: revenue.parse().expect("decimal"),
            refunds: Decimal::ZERO,
            disputes_lost: Decimal::ZERO,
            cost: cost.parse().expect("decimal"),
        }
    }

    #[test]
    fn group_names_round_trip() {
        for g in GroupBy::ALL {
            assert_eq!(g.as_str().parse::<GroupBy>(), Ok(*g));
        }
        assert!("year".parse::<GroupBy>().is_err());
    }

    #[test]
    fn margin_is_profit_over_revenue_and_none_without_revenue() {
        let mut s = sums("USD", "10.00", "2.50");
        s.refunds = "1.00".parse().expect("decimal");
        s.disputes_lost = "0.50".parse().expect("decimal");
        assert_eq!(s.profit(), "6.00".parse::<Decimal>().expect("decimal"));
        assert_eq!(s.margin(), Some("0.6".parse().expect("decimal")));
        assert_eq!(sums("JPY", "0", "0").margin(), None);
    }

    #[test]
    fn totals_add_up_per_currency_never_across() {
        let row = |g: &str, s: Sums| Group {
            group: g.into(),
            product_name: None,
            keys: None,
            sums: s,
        };
        let t = totals(&[
            row("2026-11-01", sums("USD", "1.10", "0.10")),
            row("2026-11-01", sums("JPY", "500", "100")),
            row("2026-11-02", sums("USD", "2.20", "0")),
        ]);
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].currency.as_str(), t[0].orders, t[0].revenue),
            ("JPY", 1, Decimal::from(500))
        );
        assert_eq!((t[1].currency.as_str(), t[1].orders), ("USD", 2));
        assert_eq!(t[1].revenue, "3.30".parse::<Decimal>().expect("decimal"));
        assert_eq!(t[1].cost, "0.10".parse::<Decimal>().expect("decimal"));
    }
}
