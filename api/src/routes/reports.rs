//! `GET /v1/reports/summary?from&to&group_by` (`admin`): what the orders paid
//! in a range brought in, gave back and cost, per group and currency, with
//! totals per currency. See docs/reports.md for what each figure counts.
//!
//! `from` (inclusive) and `to` (exclusive) are RFC 3339 times or
//! `YYYY-MM-DD` dates, taken as midnight UTC; time buckets are UTC days,
//! ISO weeks (from Monday) and months. A missing bound is 30 days from the
//! other; with neither, the range is the 30 UTC days ending with today.
//! Money is never converted: every row and total carries its currency, and
//! amounts are decimal strings with that currency's decimals.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, Utc};
use courier_shared::db::reports::{self, GroupBy, Sums};
use courier_shared::domain::money::minor_unit_exponent;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{ADMIN, Caller};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::startup::AppState;

/// The range when a bound is missing.
const DEFAULT_DAYS: i64 = 30;
/// The longest range grouped by day: a year of rows per currency.
const MAX_DAYS_BY_DAY: i64 = 366;

/// Query of `GET /v1/reports/summary`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// Start, inclusive: an RFC 3339 time or a `YYYY-MM-DD` date (midnight
    /// UTC). Default: 30 days before `to`.
    pub from: Option<String>,
    /// End, exclusive: an RFC 3339 time or a `YYYY-MM-DD` date (midnight
    /// UTC). Default: 30 days after `from`; with neither, the end of today (UTC).
    pub to: Option<String>,
    /// `day` (default; at most 366 days), `week`, `month`, `product`,
    /// `supplier`, `gateway` or `currency`.
    pub group_by: Option<String>,
}

/// The figures of one group (or of the whole range) in one currency.
/// Amounts are decimal strings with the currency's decimals (`12.30`, JPY `1500`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Figures {
    /// ISO 4217; the amounts are in it, never converted.
    pub currency: String,
    /// Orders paid in the range (by product or supplier: those with such an
    /// item or key).
    pub orders: i64,
    /// Totals of the orders (by product: of the items; by supplier: the
    /// unit price of each key's item).
    pub revenue: Decimal,
    /// Refunded of those orders, whenever it was refunded (`0` by product or supplier).
    pub refunds: Decimal,
    /// Lost or accepted disputes of those orders (`0` by product or supplier).
    pub disputes_lost: Decimal,
    /// What their keys cost at the suppliers (keys without a cost count 0).
    pub cost: Decimal,
    /// revenue − refunds − disputes_lost − cost.
    pub profit: Decimal,
    /// profit ÷ revenue, four decimals; null without revenue.
    pub margin: Option<Decimal>,
}

/// One group in one currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryRow {
    /// `2026-11-01` (day; week: its Monday), `2026-11` (month), a SKU, a
    /// supplier (`stock` or `manual` for keys not bought), a gateway (`none`
    /// for orders without one) or a currency.
    pub group: String,
    /// Group by product: the product's name in the catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// Group by supplier: keys counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<i64>,
    #[serde(flatten)]
    pub figures: Figures,
}

/// The summary of a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportSummary {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: String,
    /// By group, then currency; groups without paid orders are absent.
    pub rows: Vec<SummaryRow>,
    /// Per currency over the whole range, by the orders' own figures.
    pub totals: Vec<Figures>,
}

/// `amount` with exactly `currency`'s decimals (half away from zero).
fn money(amount: Decimal, currency: &str) -> Decimal {
    shown(amount, minor_unit_exponent(currency))
}

/// `value` with `scale` decimals, rounded half away from zero; a value that
/// rounds to zero is shown as `0`, never `-0`.
fn shown(value: Decimal, scale: u32) -> Decimal {
    let mut shown = value;
    shown.rescale(scale);
    if shown.is_zero() {
        shown.set_sign_positive(true);
    }
    shown
}

fn figures(s: &Sums) -> Figures {
    let c = s.currency.as_str();
    Figures {
        currency: s.currency.clone(),
        orders: s.orders,
        revenue: money(s.revenue, c),
        refunds: money(s.refunds, c),
        disputes_lost: money(s.disputes_lost, c),
        cost: money(s.cost, c),
        profit: money(s.profit(), c),
        margin: s.margin().map(|m| shown(m, 4)),
    }
}

/// A bound: an RFC 3339 time, or a date taken as midnight UTC.
fn bound(field: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    let at = DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .or_else(|_| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(|d| d.and_time(NaiveTime::MIN).and_utc())
        })
        .map_err(|_| {
            ApiError::invalid(
                field,
                "an RFC 3339 time (2026-11-01T00:00:00Z) or a date (2026-11-01)",
            )
        })?;
    if !(1970..=9999).contains(&at.year()) {
        return Err(ApiError::invalid(
            field,
            "a date between the years 1970 and 9999",
        ));
    }
    Ok(at)
}

impl SummaryQuery {
    fn group_by(&self) -> Result<GroupBy, ApiError> {
        let Some(name) = self.group_by.as_deref() else {
            return Ok(GroupBy::Day);
        };
        name.parse::<GroupBy>().map_err(|_| {
            let known: Vec<&str> = GroupBy::ALL.iter().map(|g| g.as_str()).collect();
            ApiError::invalid(
                "group_by",
                format!(
                    "`{}` is not one of: {}",
                    courier_shared::domain::clip(name, 40),
                    known.join(", ")
                ),
            )
        })
    }

    /// `[from, to)`, with the defaults filled in and the range checked.
    fn range(&self, group: GroupBy) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
        let from = self.from.as_deref().map(|t| bound("from", t)).transpose()?;
        let to = self.to.as_deref().map(|t| bound("to", t)).transpose()?;
        let span = Duration::days(DEFAULT_DAYS);
        let (from, to) = match (from, to) {
            (Some(f), Some(t)) => (f, t),
            (Some(f), None) => (f, f + span),
            (None, Some(t)) => (t - span, t),
            (None, None) => {
                let tomorrow = Utc::now().date_naive() + Duration::days(1);
                let end = tomorrow.and_time(NaiveTime::MIN).and_utc();
                (end - span, end)
            }
        };
        // A bound filled in from the other stays within the years a given
        // bound may name (1970–9999).
        let from = from.max(DateTime::UNIX_EPOCH);
        let to = to.min(
            NaiveDate::from_ymd_opt(9999, 12, 31)
                .and_then(|d| d.and_hms_opt(23, 59, 59))
                .map_or(to, |t| t.and_utc()),
        );
        if to <= from {
            return Err(ApiError::invalid("to", "must be after `from`"));
        }
        if group == GroupBy::Day && to - from > Duration::days(MAX_DAYS_BY_DAY) {
            return Err(ApiError::invalid(
                "to",
                format!(
                    "group_by=day covers at most {MAX_DAYS_BY_DAY} days: group by week or month for a longer range"
                ),
            ));
        }
        Ok((from, to))
    }
}

#[utoipa::path(get, path = "/v1/reports/summary", operation_id = "report_summary", tag = "reports",
    params(SummaryQuery),
    responses((status = 200, description = "Per group and currency, with totals per currency", body = ReportSummary)))]
/// Revenue, refunds, lost disputes, key costs, profit and margin of the
/// orders paid in a range.
pub async fn summary(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SummaryQuery>,
) -> Result<Json<ReportSummary>, ApiError> {
    caller.require(ADMIN)?;
    let group = q.group_by()?;
    let (from, to) = q.range(group)?;
    let mut conn = state.pool.acquire().await?;
    let summary = reports::summary(&mut conn, group, from, to).await?;
    Ok(Json(ReportSummary {
        from,
        to,
        group_by: group.as_str().to_owned(),
        rows: summary
            .rows
            .iter()
            .map(|g| SummaryRow {
                group: g.group.clone(),
                product_name: g.product_name.clone(),
                keys: g.keys,
                figures: figures(&g.sums),
            })
            .collect(),
        totals: summary.totals.iter().map(figures).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(from: Option<&str>, to: Option<&str>) -> SummaryQuery {
        SummaryQuery {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            group_by: None,
        }
    }

    #[test]
    fn money_has_the_currency_decimals() {
        let d = |s: &str| s.parse::<Decimal>().expect("decimal");
        assert_eq!(money(d("12.3"), "USD").to_string(), "12.30");
        assert_eq!(money(d("1500"), "JPY").to_string(), "1500");
        assert_eq!(money(d("1500.00"), "JPY").to_string(), "1500");
        assert_eq!(money(d("0.125"), "EUR").to_string(), "0.13");
        assert_eq!(money(d("1.2345"), "KWD").to_string(), "1.235");
        assert_eq!(money(d("-0.001"), "USD").to_string(), "0.00");
        assert_eq!(shown(d("-0.00004"), 4).to_string(), "0.0000");
        assert_eq!(money(d("-0.001"), "USD").to_string(), "0.00");
    }

    #[test]
    fn dates_are_midnight_utc_and_bounds_default_to_thirty_days() {
        let (f, t) = query(Some("2026-11-01"), Some("2026-12-01T00:00:00+01:00"))
            .range(GroupBy::Day)
            .expect("range");
        assert_eq!(f.to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(t.to_rfc3339(), "2026-11-30T23:00:00+00:00");
        let (f, t) = query(Some("2026-11-01"), None)
            .range(GroupBy::Day)
            .expect("range");
        assert_eq!(t - f, Duration::days(30));
        let (f, t) = query(None, None).range(GroupBy::Day).expect("range");
        assert_eq!(t - f, Duration::days(30));
        assert!(t > Utc::now() && t - Utc::now() <= Duration::days(1));
    }

    #[test]
    fn bad_ranges_name_their_parameter() {
        let field = |q: SummaryQuery, g| q.range(g).err().and_then(|e| e.field);
        assert_eq!(
            field(query(Some("yesterday"), None), GroupBy::Day).as_deref(),
            Some("from")
        );
        assert_eq!(
            field(query(None, Some("2026-13-01")), GroupBy::Day).as_deref(),
            Some("to")
        );
        assert_eq!(
            field(query(Some("2026-11-02"), Some("2026-11-02")), GroupBy::Day).as_deref(),
            Some("to")
        );
        assert_eq!(
            field(query(Some("2025-01-01"), Some("2026-06-01")), GroupBy::Day).as_deref(),
            Some("to")
        );
        assert!(
            query(Some("2025-01-01"), Some("2026-06-01"))
                .range(GroupBy::Month)
                .is_ok()
        );
        assert_eq!(
            field(query(Some("0001-01-01"), None), GroupBy::Month).as_deref(),
            Some("from")
        );
        // A bound filled in from the other stays within 1970–9999.
        let (_, t) = query(Some("9999-12-31"), None)
            .range(GroupBy::Month)
            .expect("range");
        assert_eq!(t.to_rfc3339(), "9999-12-31T23:59:59+00:00");
        let (f, _) = query(None, Some("1970-01-02"))
            .range(GroupBy::Month)
            .expect("range");
        assert_eq!(f, DateTime::UNIX_EPOCH);
    }
}
