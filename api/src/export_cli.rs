//! `courier-api export --format csv|xlsx --out FILE [the list's filters]`:
//! the order export of `GET /v1/orders/export` written to a file by an
//! operator with database access, admin columns included (refunded, cost,
//! profit), with the same columns and cells (`export_format`).
//!
//! The matching orders are counted first, in the same read-only snapshot as
//! the rows, so the progress bar's length is exact. The bar is drawn on
//! stderr, and not at all when stderr is not a terminal (a log stays clean).
//! The file is written beside its destination as `FILE.partial` and renamed
//! at the end, so a failed export never leaves a short file under the name
//! asked for. The last line says how many orders went to which file.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use courier_shared::config::Settings;
use courier_shared::db::{self, export};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rust_decimal::Decimal;
use sqlx::Connection;
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;
use crate::export_format::{self, CsvSink, ExportError};
use crate::routes::order_list::ListQuery;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Xlsx,
}

/// The export's file and the list's filters and sort (as in `GET /v1/orders`).
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum)]
    pub format: Format,
    /// The file to write (replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Order statuses, comma-separated.
    #[arg(long)]
    pub status: Option<String>,
    /// Payment statuses, comma-separated.
    #[arg(long)]
    pub payment_status: Option<String>,
    /// RFC 3339; `from` inclusive, `to` exclusive (also paid and completed).
    #[arg(long)]
    pub created_from: Option<DateTime<Utc>>,
    #[arg(long)]
    pub created_to: Option<DateTime<Utc>>,
    #[arg(long)]
    pub paid_from: Option<DateTime<Utc>>,
    #[arg(long)]
    pub paid_to: Option<DateTime<Utc>>,
    #[arg(long)]
    pub completed_from: Option<DateTime<Utc>>,
    #[arg(long)]
    pub completed_to: Option<DateTime<Utc>>,
    #[arg(long)]
    pub gateway: Option<String>,
    /// Orders with an item of this product.
    #[arg(long)]
    pub sku: Option<String>,
    /// Orders with a key bought from this supplier.
    #[arg(long)]
    pub supplier: Option<String>,
    /// Orders with an RCON delivery on this game server (its name).
    #[arg(long)]
    pub game_server: Option<String>,
    #[arg(long)]
    pub min_total: Option<Decimal>,
    #[arg(long)]
    pub max_total: Option<Decimal>,
    /// ISO 4217, e.g. EUR.
    #[arg(long)]
    pub currency: Option<String>,
    /// failures, held, waiting; comma-separated.
    #[arg(long)]
    pub has: Option<String>,
    /// Paid orders that wait to be processed: manual, delayed (comma-separated).
    #[arg(long)]
    pub process_hold: Option<String>,
    /// A substring of the order number, e-mail, name, username, transaction
    /// id or a product name (at least 3 characters).
    #[arg(long)]
    pub q: Option<String>,
    /// created (default), total, order_number, payment_status or status.
    #[arg(long)]
    pub sort: Option<String>,
    /// desc (default) or asc.
    #[arg(long)]
    pub order: Option<String>,
}

impl ExportArgs {
    /// The list's query, so the filters are checked exactly as the API checks them.
    fn list_query(&self) -> ListQuery {
        ListQuery {
            status: self.status.clone(),
            payment_status: self.payment_status.clone(),
            created_from: self.created_from,
            created_to: self.created_to,
            paid_from: self.paid_from,
            paid_to: self.paid_to,
            completed_from: self.completed_from,
            completed_to: self.completed_to,
            gateway: self.gateway.clone(),
            sku: self.sku.clone(),
            supplier: self.supplier.clone(),
            game_server: self.game_server.clone(),
            min_total: self.min_total,
            max_total: self.max_total,
            currency: self.currency.clone(),
            has: self.has.clone(),
            process_hold: self.process_hold.clone(),
            q: self.q.clone(),
            sort: self.sort.clone(),
            order: self.order.clone(),
            ..ListQuery::default()
        }
    }
}

/// A refused filter as a command-line error naming its flag.
fn flag_error(e: ApiError) -> anyhow::Error {
    match e.field {
        Some(f) => anyhow::anyhow!("--{}: {}", f.replace('_', "-"), e.message),
        None => anyhow::anyhow!("{}", e.message),
    }
}

/// A bar of `len` orders on stderr; hidden when stderr is not a terminal.
fn progress(len: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {human_pos}/{human_len} orders, {eta} left {msg}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar
}

/// `out` with `.partial` added to its name.
fn partial(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

pub async fn run(settings: &Settings, args: ExportArgs) -> anyhow::Result<()> {
    let query = args.list_query();
    let (sort, desc) = query.sort().map_err(flag_error)?;
    let pool = db::connect_lazy_with(&settings.database, &settings.session())?;
    let mut conn = pool.acquire().await?;
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let filter = query.resolve(&mut tx).await.map_err(flag_error)?;
    let total = export::count(&mut tx, &filter).await?;
    // Known before a row is read: refused now, not after a million rows.
    if matches!(args.format, Format::Xlsx) && total > i64::from(crate::export_format::SHEET_ROWS) {
        anyhow::bail!(
            "--format xlsx: {}",
            crate::export_format::ExportError::TooManyRows
        );
    }
    let bar = progress(u64::try_from(total).unwrap_or(0));
    let part = partial(&args.out);
    let mut rows = export::query(&filter, sort, desc);
    let written = {
        let rows = export::stream(&mut tx, &mut rows);
        match args.format {
            Format::Csv => write_csv(rows, &part, &bar).await,
            Format::Xlsx => write_xlsx(rows, &part, &bar).await,
        }
    };
    let written = match written {
        Ok(n) => n,
        Err(e) => {
            bar.abandon();
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
    };
    let finished = async {
        tx.commit().await?;
        tokio::fs::rename(&part, &args.out)
            .await
            .with_context(|| format!("renaming {} to {}", part.display(), args.out.display()))
    }
    .await;
    if let Err(e) = finished {
        bar.abandon();
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    bar.finish_and_clear();
    println!("wrote {written} orders to {}", args.out.display());
    Ok(())
}

/// The CLI's file, as the CSV writer's sink: each chunk moves the bar.
struct FileSink<'a> {
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: &'a Path,
    bar: &'a ProgressBar,
}

impl CsvSink for FileSink<'_> {
    async fn put(&mut self, chunk: Vec<u8>, rows: u64) -> Result<(), ExportError> {
        self.file
            .write_all(&chunk)
            .await
            .map_err(|e| ExportError::Sink(format!("writing {}: {e}", self.path.display())))?;
        self.bar.inc(rows);
        Ok(())
    }
}

async fn write_csv(
    rows: impl futures_util::Stream<Item = Result<export::ExportRow, courier_shared::error::DbError>>,
    path: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let file = tokio::fs::File::create(path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    let mut sink = FileSink {
        file: tokio::io::BufWriter::new(file),
        path,
        bar,
    };
    let written = export_format::write_csv(rows, true, &mut sink).await?;
    sink.file.flush().await?;
    sink.file.get_ref().sync_all().await?;
    Ok(written)
}

async fn write_xlsx(
    rows: impl futures_util::Stream<Item = Result<export::ExportRow, courier_shared::error::DbError>>,
    path: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let mut written = 0u64;
    let mut book = export_format::fill_xlsx(rows, true, || {
        written += 1;
        bar.inc(1);
    })
    .await?;
    // Compressing the workbook takes a while after the last row.
    bar.set_message("saving the workbook…");
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || book.save(&path)).await??;
    Ok(written)
}
