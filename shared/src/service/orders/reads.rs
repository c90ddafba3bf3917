//! Status reads in batches: the `GET /v1/orders/{id}` reads that arrive at
//! the same moment are answered by one statement (`db::orders::
//! load_statuses`), as accepts are written by one (`commit`). A status read
//! is one indexed row; alone, its cost is almost all round trip, pool and
//! protocol — per statement, not per row.
//!
//! No timer, as in `commit`: a batch is whatever arrived while the lanes
//! were busy (up to `MAX_BATCH`), so an idle API reads each order at once.
//! Every read sees a snapshot taken after it was asked for, so a batch
//! never answers with a state older than a read alone would.

use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::db::orders::{self, OrderStatusView};
use crate::error::{DbError, same_sqlx_error};

/// Most orders read in one statement.
const MAX_BATCH: usize = 128;

/// Batches read at the same time (each on its own connection).
const LANES: usize = 2;

/// An order as a client names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OrderRef {
    Id(Uuid),
    Number(String),
}

type Answer = Result<Option<OrderStatusView>, DbError>;

struct Job {
    order: OrderRef,
    reply: oneshot::Sender<Answer>,
}

/// A handle to the process's status-read lanes; they end when every handle
/// is dropped.
#[derive(Clone)]
pub struct StatusReads {
    tx: mpsc::Sender<Job>,
}

impl StatusReads {
    /// Starts the lanes (on the current Tokio runtime); `sizes` observes the
    /// size of every batch read.
    pub fn start(pool: PgPool, sizes: Histogram) -> Self {
        let tx = crate::lanes::start(LANES, MAX_BATCH, sizes, move |batch| {
            read_and_answer(pool.clone(), batch)
        });
        StatusReads { tx }
    }

    /// The order's own row, read with the next batch; `None` if there is no
    /// such order.
    pub async fn read(&self, order: OrderRef) -> Answer {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Job { order, reply }).await.is_err() {
            return Err(sqlx::Error::PoolClosed.into());
        }
        // No answer: the lane ended with the runtime (shutting down).
        answer
            .await
            .unwrap_or(Err(sqlx::Error::WorkerCrashed.into()))
    }
}

async fn read_and_answer(pool: PgPool, batch: Vec<Job>) {
    match read_batch(&pool, &batch).await {
        Ok(rows) => {
            let mut by_id: HashMap<Uuid, &OrderStatusView> = HashMap::new();
            let mut by_number: HashMap<&str, &OrderStatusView> = HashMap::new();
            for row in &rows {
                by_id.insert(row.id, row);
                by_number.insert(row.order_number.as_str(), row);
            }
            for job in batch {
                let found = match &job.order {
                    OrderRef::Id(id) => by_id.get(id),
                    OrderRef::Number(n) => by_number.get(n.as_str()),
                };
                let _ = job.reply.send(Ok(found.map(|r| (*r).clone())));
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.reply.send(Err(same_error(&e)));
            }
        }
    }
}

/// The batch's failure again, for each of its callers.
fn same_error(e: &DbError) -> DbError {
    match e {
        DbError::Sqlx(e) => same_sqlx_error(e).into(),
        other => DbError::Corrupt(other.to_string()),
    }
}

async fn read_batch(pool: &PgPool, batch: &[Job]) -> Result<Vec<OrderStatusView>, DbError> {
    let mut ids = Vec::new();
    let mut numbers = Vec::new();
    for job in batch {
        match &job.order {
            OrderRef::Id(id) => ids.push(*id),
            OrderRef::Number(n) => numbers.push(n.clone()),
        }
    }
    let mut conn = pool.acquire().await?;
    orders::load_statuses(&mut conn, &ids, &numbers).await
}
