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
use courier_shared::db::export;
use tokio::sync::mpsc;

use crate::auth::{ADMIN, Caller, ORDERS_READ};
use crate::error::ApiError;
use crate::export_format::{self, CHUNK, CsvSink, ExportError};
use crate::extract::ApiQuery;
use crate::routes::order_list::ListQuery;
use crate::startup::AppState;

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
                let rows = export::stream(&mut conn, &mut query);
                let done = export_format::write_csv(rows, money, &mut Download(&tx)).await;
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
                export_format::fill_xlsx(export::stream(&mut conn, &mut query), money, || {}).await
            };
            let book = match book {
                Ok(b) => b,
                Err(e) => {
                    drop(conn.detach());
                    return Err(refusal(e));
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
) -> Result<(), ExportError> {
    match tokio::time::timeout(STALL, tx.send(Ok(Bytes::from(chunk)))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ExportError::Sink("the client went away".into())),
        Err(_) => Err(ExportError::Sink(format!(
            "the client stopped reading for {} s",
            STALL.as_secs()
        ))),
    }
}

/// The client of a download, as the CSV writer's sink.
struct Download<'a>(&'a mpsc::Sender<Result<Bytes, std::io::Error>>);

impl CsvSink for Download<'_> {
    fn put(
        &mut self,
        chunk: Vec<u8>,
        _rows: u64,
    ) -> impl Future<Output = Result<(), ExportError>> + Send {
        send(self.0, chunk)
    }
}

/// An export that could not be built, as an answer: too many rows for a
/// worksheet names `format`; anything else is the database's or internal.
fn refusal(e: ExportError) -> ApiError {
    match e {
        ExportError::TooManyRows => ApiError::invalid("format", e.to_string()),
        ExportError::Db(e) => e.into(),
        other => ApiError::internal(&other),
    }
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
