//! `GET /v1/orders`: the staff's order list (`orders:read`; `admin` too).
//!
//! Filters are query parameters; lists of values are comma-separated
//! (`status=failed,pending`). Dates are RFC 3339; a range is `from`
//! inclusive, `to` exclusive. `q` is a case-insensitive substring of the order
//! number, customer e-mail or name, game username, transaction id or a
//! product name, at least 3 characters. `sort` is `created` (default),
//! `total`, `order_number`, `payment_status` or `status` (statuses sort by
//! name), `order` is `desc` (default) or `asc`; pages are keyset pages:
//! `limit` 1–500 (default 50) and the previous page's `next_cursor`, which
//! carries its sort (a cursor of another sort is refused).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use courier_shared::db::order_list::{
    self, After, Attention, ListFilter, OrderRow, SortKey, SortValue,
};
use courier_shared::domain::order::{OrderStatus, PaymentStatus};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Caller, ORDERS_READ};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::routes::admin::page;
use crate::startup::AppState;

/// Query of `GET /v1/orders`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Order statuses, comma-separated.
    pub status: Option<String>,
    /// Payment statuses, comma-separated.
    pub payment_status: Option<String>,
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
    /// Orders with an RCON delivery on this game server (its name).
    pub game_server: Option<String>,
    #[param(value_type = Option<String>)]
    pub min_total: Option<Decimal>,
    #[param(value_type = Option<String>)]
    pub max_total: Option<Decimal>,
    /// ISO 4217, e.g. `EUR`.
    pub currency: Option<String>,
    /// `failures` (a dead delivery), `held`, `waiting`; comma-separated.
    pub has: Option<String>,
    /// Paid orders that wait to be processed: `manual`, `delayed`; comma-separated.
    pub process_hold: Option<String>,
    /// At least 3 characters.
    pub q: Option<String>,
    /// `created`, `total`, `order_number`, `payment_status` or `status`.
    pub sort: Option<String>,
    /// `desc` (default) or `asc`.
    pub order: Option<String>,
    /// Page size, 1–500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `csv` or `xlsx`: for `GET /v1/orders/export` only (the list refuses it).
    pub format: Option<String>,
    /// Only these orders: order ids, comma-separated, at most 500 (a
    /// selection to export or page through).
    pub ids: Option<String>,
}

/// A page of orders.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub orders: Vec<OrderRow>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Most order ids one `ids` filter may name.
pub const MAX_IDS: usize = 500;

fn clip(s: &str) -> &str {
    courier_shared::domain::clip(s, 40)
}

fn list_of<T: std::str::FromStr>(
    field: &str,
    value: &Option<String>,
    known: &[&str],
) -> Result<Vec<T>, ApiError> {
    let Some(v) = value else {
        return Ok(Vec::new());
    };
    v.split(',')
        .map(|s| {
            s.trim().parse().map_err(|_| {
                ApiError::invalid(
                    field,
                    format!("`{}` is not one of: {}", clip(s), known.join(", ")),
                )
            })
        })
        .collect()
}

fn text(field: &str, value: &Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.is_empty() || v.chars().count() > 255 => {
            Err(ApiError::invalid(field, "must be 1 to 255 characters"))
        }
        other => Ok(other.clone()),
    }
}

impl ListQuery {
    /// The filter, with `game_server` resolved to its id.
    pub async fn resolve(&self, conn: &mut sqlx::PgConnection) -> Result<ListFilter, ApiError> {
        let mut filter = self.filter()?;
        if let Some(name) = text("game_server", &self.game_server)? {
            let server = courier_shared::db::catalog::find_game_server_by_name(conn, &name)
                .await?
                .ok_or_else(|| {
                    ApiError::invalid("game_server", format!("no game server `{}`", clip(&name)))
                })?;
            filter.game_server_id = Some(server.id);
        }
        Ok(filter)
    }

    fn filter(&self) -> Result<ListFilter, ApiError> {
        let statuses = list_of::<OrderStatus>(
            "status",
            &self.status,
            &OrderStatus::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
        )?;
        let payment_statuses = list_of::<PaymentStatus>(
            "payment_status",
            &self.payment_status,
            &PaymentStatus::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
        )?;
        let process_holds = list_of::<courier_shared::domain::order::ProcessHold>(
            "process_hold",
            &self.process_hold,
            &["manual", "delayed"],
        )?;
        let attention = match &self.has {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(|s| match s.trim() {
                    "failures" => Ok(Attention::Failures),
                    "held" => Ok(Attention::Held),
                    "waiting" => Ok(Attention::Waiting),
                    other => Err(ApiError::invalid(
                        "has",
                        format!("`{}` is not one of: failures, held, waiting", clip(other)),
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        let search = match &self.q {
            None => None,
            Some(q) => {
                let q = q.trim();
                let n = q.chars().count();
                if !(3..=255).contains(&n) {
                    return Err(ApiError::invalid("q", "search with 3 to 255 characters"));
                }
                // The trigram index needs three letters or digits in a row;
                // without them every search would read the whole table.
                let run = q.chars().fold((0, 0), |(best, cur), c| {
                    let cur = if c.is_alphanumeric() { cur + 1 } else { 0 };
                    (best.max(cur), cur)
                });
                if run.0 < 3 {
                    return Err(ApiError::invalid(
                        "q",
                        "a search needs at least three letters or digits in a row",
                    ));
                }
                Some(q.to_owned())
            }
        };
        let currency = match &self.currency {
            None => None,
            Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Some(c.to_ascii_uppercase())
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "currency",
                    "a three-letter ISO 4217 code",
                ));
            }
        };
        for (field, value) in [
            ("created_from", self.created_from),
            ("created_to", self.created_to),
            ("paid_from", self.paid_from),
            ("paid_to", self.paid_to),
            ("completed_from", self.completed_from),
            ("completed_to", self.completed_to),
        ] {
            if value.is_some_and(|v| !(1970..=9999).contains(&chrono::Datelike::year(&v))) {
                return Err(ApiError::invalid(
                    field,
                    "a date between the years 1970 and 9999",
                ));
            }
        }
        for (field, from, to) in [
            ("created_to", self.created_from, self.created_to),
            ("paid_to", self.paid_from, self.paid_to),
            ("completed_to", self.completed_from, self.completed_to),
        ] {
            if let (Some(f), Some(t)) = (from, to)
                && t < f
            {
                return Err(ApiError::invalid(field, "the range ends before it starts"));
            }
        }
        if let (Some(min), Some(max)) = (self.min_total, self.max_total)
            && max < min
        {
            return Err(ApiError::invalid("max_total", "is below min_total"));
        }
        Ok(ListFilter {
            statuses,
            payment_statuses,
            created_from: self.created_from,
            created_to: self.created_to,
            paid_from: self.paid_from,
            paid_to: self.paid_to,
            completed_from: self.completed_from,
            completed_to: self.completed_to,
            gateway: text("gateway", &self.gateway)?,
            sku: text("sku", &self.sku)?,
            supplier: text("supplier", &self.supplier)?,
            game_server_id: None,
            min_total: self.min_total,
            max_total: self.max_total,
            currency,
            attention,
            process_holds,
            search,
            ids: self.ids()?,
        })
    }

    fn ids(&self) -> Result<Vec<Uuid>, ApiError> {
        let Some(v) = &self.ids else {
            return Ok(Vec::new());
        };
        let ids = v
            .split(',')
            .map(|s| {
                Uuid::parse_str(s.trim()).map_err(|_| {
                    ApiError::invalid("ids", format!("`{}` is not an order id", clip(s)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ids.len() > MAX_IDS {
            return Err(ApiError::invalid(
                "ids",
                format!("at most {MAX_IDS} order ids"),
            ));
        }
        Ok(ids)
    }

    pub fn sort(&self) -> Result<(SortKey, bool), ApiError> {
        let key = match &self.sort {
            None => SortKey::Created,
            Some(s) => SortKey::ALL
                .iter()
                .find(|(n, _)| n == s)
                .map(|(_, k)| *k)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "sort",
                        format!(
                            "`{}` is not one of: created, total, order_number, payment_status, status",
                            clip(s)
                        ),
                    )
                })?,
        };
        let desc = match self.order.as_deref() {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(o) => {
                return Err(ApiError::invalid(
                    "order",
                    format!("`{}`: asc or desc", clip(o)),
                ));
            }
        };
        Ok((key, desc))
    }
}

/// A cursor: the sort it belongs to, then the last row's key and id.
fn cursor_text(sort: SortKey, desc: bool, row: &OrderRow) -> String {
    format!(
        "{}|{}|{}|{}",
        sort.name(),
        if desc { "desc" } else { "asc" },
        row.id,
        row.sort_value(sort).to_text()
    )
}

fn parse_cursor(sort: SortKey, desc: bool, text: &str) -> Option<After> {
    let mut parts = text.splitn(4, '|');
    let (s, d, id, key) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (s == sort.name() && d == if desc { "desc" } else { "asc" }).then_some(())?;
    Some(After {
        key: SortValue::parse(sort, key)?,
        id: Uuid::parse_str(id).ok()?,
    })
}

#[utoipa::path(get, path = "/v1/orders", operation_id = "list_orders", tag = "orders",
    params(ListQuery),
    responses((status = 200, description = "A page of orders, with what the dashboard shows", body = OrderPage)))]
/// Finds orders: filters, search, sort and keyset pages.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    caller.require(ORDERS_READ)?;
    if q.format.is_some() {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            "format is a parameter of GET /v1/orders/export",
        )
        .with_field("format"));
    }
    let limit = page::limit(q.limit)?;
    let (sort, desc) = q.sort()?;
    let after = page::decode(q.cursor.as_deref(), |c| parse_cursor(sort, desc, c))?;
    let mut conn = state.pool.acquire().await?;
    let filter = q.resolve(&mut conn).await?;
    let rows = order_list::list(&mut conn, &filter, sort, desc, after.as_ref(), limit).await?;
    let next = page::next(
        rows.len(),
        limit,
        rows.last().map(|r| cursor_text(sort, desc, r)),
    );
    Ok(Json(OrderPage {
        orders: rows,
        next_cursor: next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_belongs_to_its_sort() {
        let id = Uuid::new_v4();
        let text = format!("total|asc|{id}|9.99");
        let after = parse_cursor(SortKey::Total, false, &text).expect("parses");
        assert_eq!(
            after.key,
            SortValue::Number("9.99".parse().expect("decimal"))
        );
        assert_eq!(after.id, id);
        assert!(parse_cursor(SortKey::Total, true, &text).is_none());
        assert!(parse_cursor(SortKey::Created, false, &text).is_none());
        // A key that is not of its sort's type is no cursor (never a cast in SQL).
        for (sort, key) in [
            (SortKey::Created, "not a time"),
            (SortKey::Total, "12abc"),
            (SortKey::Status, "nul\0byte"),
        ] {
            let text = format!("{}|asc|{id}|{key}", sort.name());
            assert!(parse_cursor(sort, false, &text).is_none(), "{key}");
        }
    }
}
