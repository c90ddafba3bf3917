//! `GET /v1/orders/export?format=csv|xlsx&<the list's filters and sort>`
//! (`orders:read`; the refunded amount, cost and profit columns for `admin`).
//!
//! Every matching order, streamed: one statement's rows are written as they
//! arrive, CSV in 64 KiB chunks through a bounded channel (the client's pace
//! holds the query back), so memory does not grow with the export. XLSX is
//! written by `rust_xlsxwriter` in constant-memory mode into a temporary
//! file (a zip needs its end to write its directory), then streamed and
//! removed. Text cells that a spreadsheet would run as a formula (starting
//! `=`, `+`, `-`, `@`, tab or carriage return) are prefixed with `'` in both
//! formats. An error after the first bytes ends the download early (the
//! status was sent already); the log says why.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use courier_shared::db::export::{self, ExportRow};
use courier_shared::domain::money::minor_unit_exponent;
use futures_util::StreamExt;
use rust_decimal::Decimal;
use tokio::sync::mpsc;

use crate::auth::{ADMIN, Caller, ORDERS_READ};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::routes::order_list::ListQuery;
use crate::startup::AppState;

/// Bytes gathered before a CSV chunk is sent.
const CHUNK: usize = 64 * 1024;

const COLUMNS: &[&str] = &[
    "order_number",
    "created_at",
    "customer_name",
    "customer_email",
    "status",
    "payment_status",
    "gateway",
    "subtotal",
    "tax",
    "total",
    "currency",
    "products",
];
const ADMIN_COLUMNS: &[&str] = &["refunded", "cost", "profit"];

/// A text cell a spreadsheet will not evaluate.
pub fn neutral(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}").into()
    } else {
        text.into()
    }
}

/// What the order earned: total − refunded − cost of its keys.
fn profit(r: &ExportRow) -> Decimal {
    r.total - r.refunded - r.cost.unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Xlsx,
}

#[utoipa::path(get, path = "/v1/orders/export", operation_id = "export_orders", tag = "orders",
    params(ListQuery),
    responses(
        (status = 200, description = "Every matching order: CSV (`format=csv`) or an Excel workbook (`format=xlsx`)",
            content((String = "text/csv"), (Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"))),
    ))]
/// Exports the orders the list's filters select, in its sort.
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    caller.require(ORDERS_READ)?;
    let format = match q.format.as_deref() {
        Some("csv") => Format::Csv,
        Some("xlsx") => Format::Xlsx,
        other => {
            return Err(courier_shared::service::Invalid::new(
                "format",
                format!(
                    "`{}`: csv or xlsx",
                    courier_shared::domain::clip(other.unwrap_or(""), 20)
                ),
            )
            .into());
        }
    };
    if q.limit.is_some() || q.cursor.is_some() {
        return Err(courier_shared::service::Invalid::new(
            "limit",
            "an export has every matching order: no limit or cursor",
        )
        .into());
    }
    let (sort, desc) = q.sort()?;
    let mut conn = state.pool.acquire().await?;
    let filter = q.resolve(&mut conn).await?;
    let money = caller.has(ADMIN);
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (content_type, name) = match format {
        Format::Csv => ("text/csv; charset=utf-8", format!("orders-{stamp}.csv")),
        Format::Xlsx => (
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            format!("orders-{stamp}.xlsx"),
        ),
    };
    tokio::spawn(async move {
        let mut query = export::query(&filter, sort, desc);
        let rows = export::stream(&mut conn, &mut query);
        let done = match format {
            Format::Csv => write_csv(rows, money, &tx).await,
            Format::Xlsx => write_xlsx(rows, money, &tx).await,
        };
        if let Err(e) = done {
            tracing::error!(error = %e, "export ended early");
            let _ = tx.send(Err(std::io::Error::other(e))).await;
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

async fn write_csv(
    rows: impl futures_util::Stream<Item = Result<ExportRow, courier_shared::error::DbError>>,
    money: bool,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> anyhow::Result<()> {
    let mut rows = std::pin::pin!(rows);
    let mut out = csv::Writer::from_writer(Vec::with_capacity(CHUNK * 2));
    let mut header: Vec<&str> = COLUMNS.to_vec();
    if money {
        header.extend_from_slice(ADMIN_COLUMNS);
    }
    out.write_record(&header)?;
    while let Some(r) = rows.next().await {
        let r = r?;
        let mut record: Vec<std::borrow::Cow<'_, str>> = vec![
            neutral(&r.order_number),
            r.created_at.to_rfc3339().into(),
            neutral(r.customer_name.as_deref().unwrap_or("")),
            neutral(r.customer_email.as_deref().unwrap_or("")),
            r.status.as_str().into(),
            r.payment_status.as_str().into(),
            neutral(r.gateway.as_deref().unwrap_or("")),
            r.subtotal.to_string().into(),
            r.tax.to_string().into(),
            r.total.to_string().into(),
            r.currency.as_str().into(),
            neutral(&r.products),
        ];
        if money {
            record.push(r.refunded.to_string().into());
            record.push(r.cost.map(|c| c.to_string()).unwrap_or_default().into());
            record.push(profit(&r).to_string().into());
        }
        out.write_record(record.iter().map(|c| c.as_ref()))?;
        if out.get_ref().len() >= CHUNK {
            let full = std::mem::replace(
                &mut out,
                csv::Writer::from_writer(Vec::with_capacity(CHUNK * 2)),
            );
            let chunk = full.into_inner().map_err(|e| e.into_error())?;
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return Ok(()); // the client went away
            }
        }
    }
    let rest = out.into_inner().map_err(|e| e.into_error())?;
    let _ = tx.send(Ok(Bytes::from(rest))).await;
    Ok(())
}

async fn write_xlsx(
    rows: impl futures_util::Stream<Item = Result<ExportRow, courier_shared::error::DbError>>,
    money: bool,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> anyhow::Result<()> {
    use rust_xlsxwriter::{Format, Workbook};
    let mut rows = std::pin::pin!(rows);
    let mut book = Workbook::new();
    let sheet = book.add_worksheet_with_constant_memory()?;
    sheet.set_name("Orders")?;
    let bold = Format::new().set_bold();
    let date = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
    let amounts = [
        Format::new().set_num_format("#,##0"),
        Format::new().set_num_format("#,##0.0"),
        Format::new().set_num_format("#,##0.00"),
        Format::new().set_num_format("#,##0.000"),
    ];
    let mut header: Vec<&str> = COLUMNS.to_vec();
    if money {
        header.extend_from_slice(ADMIN_COLUMNS);
    }
    for (c, h) in header.iter().enumerate() {
        sheet.write_string_with_format(0, c as u16, *h, &bold)?;
    }
    let number =
        |d: Decimal| -> f64 { rust_decimal::prelude::ToPrimitive::to_f64(&d).unwrap_or(f64::NAN) };
    let mut n: u32 = 0;
    while let Some(r) = rows.next().await {
        let r = r?;
        n += 1;
        let amount = &amounts[(minor_unit_exponent(&r.currency) as usize).min(3)];
        sheet.write_string(n, 0, neutral(&r.order_number).as_ref())?;
        sheet.write_datetime_with_format(n, 1, r.created_at.naive_utc(), &date)?;
        sheet.write_string(
            n,
            2,
            neutral(r.customer_name.as_deref().unwrap_or("")).as_ref(),
        )?;
        sheet.write_string(
            n,
            3,
            neutral(r.customer_email.as_deref().unwrap_or("")).as_ref(),
        )?;
        sheet.write_string(n, 4, r.status.as_str())?;
        sheet.write_string(n, 5, r.payment_status.as_str())?;
        sheet.write_string(n, 6, neutral(r.gateway.as_deref().unwrap_or("")).as_ref())?;
        sheet.write_number_with_format(n, 7, number(r.subtotal), amount)?;
        sheet.write_number_with_format(n, 8, number(r.tax), amount)?;
        sheet.write_number_with_format(n, 9, number(r.total), amount)?;
        sheet.write_string(n, 10, r.currency.as_str())?;
        sheet.write_string(n, 11, neutral(&r.products).as_ref())?;
        if money {
            sheet.write_number_with_format(n, 12, number(r.refunded), amount)?;
            if let Some(c) = r.cost {
                sheet.write_number_with_format(n, 13, number(c), amount)?;
            }
            sheet.write_number_with_format(n, 14, number(profit(&r)), amount)?;
        }
    }
    let path = std::env::temp_dir().join(format!("courier-export-{}.xlsx", uuid::Uuid::new_v4()));
    let saved = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || book.save(&path)).await
    };
    let result = async {
        saved??;
        let mut file = tokio::fs::File::open(&path).await?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let read = tokio::io::AsyncReadExt::read(&mut file, &mut buf).await?;
            if read == 0 {
                break;
            }
            if tx
                .send(Ok(Bytes::copy_from_slice(&buf[..read])))
                .await
                .is_err()
            {
                break;
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    result
}

#[cfg(test)]
mod tests {
    use super::neutral;

    #[test]
    fn formula_like_cells_are_neutralised() {
        for bad in ["=cmd|' /C calc'!A0", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            assert!(neutral(bad).starts_with('\''), "{bad:?}");
        }
        for fine in ["Alex", "ORD-ABC", "a=b", "O'Brien"] {
            assert_eq!(neutral(fine), fine);
        }
    }
}
