//! The lanes behind the group commit (`service::orders::commit`), the
//! batched status reads (`service::orders::reads`) and the worker's batch
//! completer: `lanes` tasks share one queue of jobs, and each takes whatever
//! is waiting (up to `max_batch`) whenever it is free. No timer: an idle
//! process handles each job at once, a busy one many per statement.

use std::future::Future;
use std::sync::Arc;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{Mutex, mpsc};

/// Starts `lanes` tasks (on the current Tokio runtime) that hand each batch
/// to `work`; `sizes` observes every batch's size. The lanes end when every
/// sender is dropped.
pub fn start<J, F, Fut>(
    lanes: usize,
    max_batch: usize,
    sizes: Histogram,
    work: F,
) -> mpsc::Sender<J>
where
    J: Send + 'static,
    F: Fn(Vec<J>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (tx, rx) = mpsc::channel(max_batch * lanes * 4);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..lanes {
        let (rx, sizes, work) = (rx.clone(), sizes.clone(), work.clone());
        tokio::spawn(async move {
            loop {
                let mut batch = Vec::with_capacity(max_batch);
                if rx.lock().await.recv_many(&mut batch, max_batch).await == 0 {
                    return;
                }
                sizes.observe(batch.len() as f64);
                work(batch).await;
            }
        });
    }
    tx
}
