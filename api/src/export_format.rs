//! The order export's columns and cells, shared by the download
//! (`GET /v1/orders/export`) and the operator's `courier-api export`, so the
//! two never disagree on a column, a number format or the CSV-injection rule.
//!
//! CSV is written in chunks of about 64 KiB handed to a sink (the download
//! sends them to the client, the CLI appends them to its file), one row at a
//! time as the rows stream from the database. XLSX is filled row by row into
//! a constant-memory workbook (`rust_xlsxwriter` keeps rows in a temporary
//! file), which the caller saves where it wants.
//!
//! CSV cells that a spreadsheet would run as a formula (starting `=`, `+`,
//! `-`, `@`, tab or carriage return) are prefixed with `'`; XLSX string cells
//! are never evaluated, so they keep their text.

use std::borrow::Cow;

use courier_shared::db::export::ExportRow;
use courier_shared::domain::money::minor_unit_exponent;
use courier_shared::error::DbError;
use futures_util::{Stream, StreamExt};
use rust_decimal::Decimal;
use rust_xlsxwriter::{Format, Workbook, XlsxError};

/// Bytes gathered before a CSV chunk goes to the sink.
pub const CHUNK: usize = 64 * 1024;

/// Rows a worksheet holds below its header.
pub const SHEET_ROWS: u32 = 1_048_575;

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
/// Shown to admins (and operators) only: what the orders cost and earned.
const ADMIN_COLUMNS: &[&str] = &["refunded", "cost", "profit"];

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "more than {SHEET_ROWS} orders do not fit one worksheet: export as csv or narrow the filters"
    )]
    TooManyRows,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Xlsx(#[from] XlsxError),
    #[error(transparent)]
    Csv(#[from] csv::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The sink refused a chunk (the client went away, the disk is full).
    #[error("{0}")]
    Sink(String),
}

/// The header: the admin columns too when `money`.
fn header(money: bool) -> Vec<&'static str> {
    let mut header = COLUMNS.to_vec();
    if money {
        header.extend_from_slice(ADMIN_COLUMNS);
    }
    header
}

/// A text cell a spreadsheet will not evaluate.
pub fn neutral(text: &str) -> Cow<'_, str> {
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

/// One order's CSV cells.
fn csv_record(r: &ExportRow, money: bool) -> Vec<Cow<'_, str>> {
    let mut record: Vec<Cow<'_, str>> = vec![
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
        record.push(profit(r).to_string().into());
    }
    record
}

fn chunk_writer() -> csv::Writer<Vec<u8>> {
    csv::Writer::from_writer(Vec::with_capacity(CHUNK * 2))
}

/// Where CSV chunks go: the client of a download, the CLI's file.
pub trait CsvSink {
    /// Takes the next chunk, which ends `rows` more rows.
    fn put(
        &mut self,
        chunk: Vec<u8>,
        rows: u64,
    ) -> impl Future<Output = Result<(), ExportError>> + Send;
}

/// Writes `rows` as CSV into `sink`, chunk by chunk (the header goes with
/// the first). Returns the rows written.
pub async fn write_csv(
    rows: impl Stream<Item = Result<ExportRow, DbError>>,
    money: bool,
    sink: &mut impl CsvSink,
) -> Result<u64, ExportError> {
    let mut rows = std::pin::pin!(rows);
    let mut out = chunk_writer();
    out.write_record(header(money))?;
    let (mut total, mut pending) = (0u64, 0u64);
    while let Some(r) = rows.next().await {
        let r = r?;
        out.write_record(csv_record(&r, money).iter().map(|c| c.as_ref()))?;
        total += 1;
        pending += 1;
        if out.get_ref().len() >= CHUNK {
            let full = std::mem::replace(&mut out, chunk_writer());
            let chunk = full.into_inner().map_err(|e| e.into_error())?;
            sink.put(chunk, std::mem::take(&mut pending)).await?;
        }
    }
    let rest = out.into_inner().map_err(|e| e.into_error())?;
    sink.put(rest, pending).await?;
    Ok(total)
}

/// Fills a workbook with `rows` (sheet `Orders`), calling `on_row` after
/// each. Refuses more rows than a worksheet holds.
pub async fn fill_xlsx(
    rows: impl Stream<Item = Result<ExportRow, DbError>>,
    money: bool,
    mut on_row: impl FnMut(),
) -> Result<Workbook, ExportError> {
    let mut rows = std::pin::pin!(rows);
    let mut book = Workbook::new();
    let sheet = book.add_worksheet_with_constant_memory()?;
    sheet.set_name("Orders")?;
    let bold = Format::new().set_bold();
    for (c, h) in header(money).iter().enumerate() {
        sheet.write_string_with_format(0, c as u16, *h, &bold)?;
    }
    let cells = Cells::new();
    let mut n: u32 = 0;
    while let Some(r) = rows.next().await {
        let r = r?;
        if n == SHEET_ROWS {
            return Err(ExportError::TooManyRows);
        }
        n += 1;
        cells.write(sheet, n, &r, money)?;
        on_row();
    }
    Ok(book)
}

/// The number formats of an XLSX row: dates, and money with its currency's
/// decimals (`#,##0.00`, JPY `#,##0`).
struct Cells {
    date: Format,
    amounts: [Format; 4],
}

impl Cells {
    fn new() -> Self {
        Cells {
            date: Format::new().set_num_format("yyyy-mm-dd hh:mm:ss"),
            amounts: [
                Format::new().set_num_format("#,##0"),
                Format::new().set_num_format("#,##0.0"),
                Format::new().set_num_format("#,##0.00"),
                Format::new().set_num_format("#,##0.000"),
            ],
        }
    }

    /// Row `n`: string cells as they are (never evaluated), money as numbers.
    fn write(
        &self,
        sheet: &mut rust_xlsxwriter::Worksheet,
        n: u32,
        r: &ExportRow,
        money: bool,
    ) -> Result<(), XlsxError> {
        let number =
            |d: Decimal| rust_decimal::prelude::ToPrimitive::to_f64(&d).unwrap_or(f64::NAN);
        let amount = &self.amounts[(minor_unit_exponent(&r.currency) as usize).min(3)];
        sheet.write_string(n, 0, &r.order_number)?;
        sheet.write_datetime_with_format(n, 1, r.created_at.naive_utc(), &self.date)?;
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
            sheet.write_number_with_format(n, 14, number(profit(r)), amount)?;
        }
        Ok(())
    }
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
