//! `GET /v1/orders/export?format=csv|xlsx&<the list's filters and sort>`
//! (`orders:read`; the refunded amount, cost and profit columns for `admin`).
//!
//! Every matching order, streamed: one statement's rows are written as they
//! arrive, CSV in 64 KiB chunks through a bounded channel (the client's pace
//! holds the query back), so memory does not grow with the export. XLSX is
//! written by `rust_xlsxwriter` in constant-memory mode, whole, before the
//! answer starts (so a failure is still an error answer, and the database
//! connection is given back before the file streams), into a temporary file
//! (a zip needs its end to write its directory), then streamed and removed.
//! CSV cells that a spreadsheet would run as a formula (starting `=`, `+`,
//! `-`, `@`, tab or carriage return) are prefixed with `'`; XLSX string cells
//! are never evaluated, so they keep their text. At most `api.max_exports`
//! run at once per process (`429` beyond); an export whose client stops
//! reading for 30 s is abandoned. An error after the first bytes ends the
//! download early (the status was sent already); the log says why.

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
            return Err(ApiError::invalid(
                "format",
                format!(
                    "`{}`: csv or xlsx",
                    courier_shared::domain::clip(other.unwrap_or(""), 20)
                ),
            ));
        }
    };
    for (field, set) in [("limit", q.limit.is_some()), ("cursor", q.cursor.is_some())] {
        if set {
            return Err(ApiError::invalid(
                field,
                "an export has every matching order: no limit or cursor",
            ));
        }
    }
    // A few at a time per process: each holds a database connection (and a
    // snapshot) while it reads.
    let Ok(permit) = state.exports.clone().try_acquire_owned() else {
        let mut busy = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_exports",
            "other exports are running on this process; try again shortly",
        )
        .into_response();
        busy.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return Ok(busy);
    };
    let (sort, desc) = q.sort()?;
    let mut conn = state.pool.acquire().await?;
    let filter = q.resolve(&mut conn).await?;
    let money = caller.has(ADMIN);
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (content_type, name) = match format {
        Format::Csv => {
            tokio::spawn(async move {
                let _permit = permit;
                let mut query = export::query(&filter, sort, desc);
                let done = write_csv(export::stream(&mut conn, &mut query), money, &tx).await;
                if let Err(e) = done {
                    tracing::warn!(error = %e, "CSV export ended early");
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    // Do not hand back a connection whose query still runs.
                    drop(conn.detach());
                }
            });
            ("text/csv; charset=utf-8", format!("orders-{stamp}.csv"))
        }
        Format::Xlsx => {
            // The workbook is complete before anything is sent, so a failure
            // (too many rows for a sheet, say) is still an error answer; the
            // connection is given back before the file streams.
            let book = {
                let mut query = export::query(&filter, sort, desc);
                fill_xlsx(export::stream(&mut conn, &mut query), money).await
            };
            let book = match book {
                Ok(b) => b,
                Err(e) => {
                    drop(conn.detach());
                    return Err(e);
                }
            };
            drop(conn);
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = send_xlsx(book, &tx).await {
                    tracing::warn!(error = %e, "XLSX export ended early");
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                }
            });
            (
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                format!("orders-{stamp}.xlsx"),
            )
        }
    };
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

/// How long an export waits for the client to take the next chunk.
const STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends a chunk; an error when the client went away or stopped reading.
async fn send(
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    chunk: Vec<u8>,
) -> anyhow::Result<()> {
    match tokio::time::timeout(STALL, tx.send(Ok(Bytes::from(chunk)))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => anyhow::bail!("the client went away"),
        Err(_) => anyhow::bail!("the client stopped reading for {} s", STALL.as_secs()),
    }
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
            send(tx, chunk).await?;
        }
    }
    let rest = out.into_inner().map_err(|e| e.into_error())?;
    send(tx, rest).await
}

/// Rows a worksheet holds below its header.
const SHEET_ROWS: u32 = 1_048_575;

async fn fill_xlsx(
    rows: impl futures_util::Stream<Item = Result<ExportRow, courier_shared::error::DbError>>,
    money: bool,
) -> Result<rust_xlsxwriter::Workbook, ApiError> {
    let internal = |e: rust_xlsxwriter::XlsxError| ApiError::internal(&e);
    use rust_xlsxwriter::{Format, Workbook};
    let mut rows = std::pin::pin!(rows);
    let mut book = Workbook::new();
    let sheet = book
        .add_worksheet_with_constant_memory()
        .map_err(internal)?;
    sheet.set_name("Orders").map_err(internal)?;
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
        sheet
            .write_string_with_format(0, c as u16, *h, &bold)
            .map_err(internal)?;
    }
    let number =
        |d: Decimal| -> f64 { rust_decimal::prelude::ToPrimitive::to_f64(&d).unwrap_or(f64::NAN) };
    let mut n: u32 = 0;
    while let Some(r) = rows.next().await {
        let r = r?;
        if n == SHEET_ROWS {
            return Err(ApiError::invalid(
                "format",
                format!(
                    "more than {SHEET_ROWS} orders do not fit one worksheet: export as csv or narrow the filters"
                ),
            ));
        }
        n += 1;
        // String cells are never evaluated by a spreadsheet: the text is kept as it is.
        let amount = &amounts[(minor_unit_exponent(&r.currency) as usize).min(3)];
        let mut write = || -> Result<(), rust_xlsxwriter::XlsxError> {
            sheet.write_string(n, 0, &r.order_number)?;
            sheet.write_datetime_with_format(n, 1, r.created_at.naive_utc(), &date)?;
            sheet.write_string(n, 2, r.customer_name.as_deref().unwrap_or(""))?;
            sheet.write_string(n, 3, r.customer_email.as_deref().unwrap_or(""))?;
            sheet.write_string(n, 4, r.status.as_str())?;
            sheet.write_string(n, 5, r.payment_status.as_str())?;
            sheet.write_string(n, 6, r.gateway.as_deref().unwrap_or(""))?;
            sheet.write_number_with_format(n, 7, number(r.subtotal), amount)?;
            sheet.write_number_with_format(n, 8, number(r.tax), amount)?;
            sheet.write_number_with_format(n, 9, number(r.total), amount)?;
            sheet.write_string(n, 10, r.currency.as_str())?;
            sheet.write_string(n, 11, &r.products)?;
            if money {
                sheet.write_number_with_format(n, 12, number(r.refunded), amount)?;
                if let Some(c) = r.cost {
                    sheet.write_number_with_format(n, 13, number(c), amount)?;
                }
                sheet.write_number_with_format(n, 14, number(profit(&r)), amount)?;
            }
            Ok(())
        };
        write().map_err(internal)?;
    }
    Ok(book)
}

/// Saves the workbook to a temporary file, streams it, removes it.
async fn send_xlsx(
    mut book: rust_xlsxwriter::Workbook,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> anyhow::Result<()> {
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
            send(tx, buf[..read].to_vec()).await?;
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
