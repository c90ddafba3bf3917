//! Requests waiting for an order to change (`GET /v1/orders/{id}?wait_for=…`).
//!
//! One `LISTEN courier_orders` per API process (a trigger announces every
//! change of an order's status at commit); each notification wakes only the
//! requests waiting on that order, which then read its row once. Nothing
//! polls: an idle waiter costs no query. If the listening connection is lost,
//! every waiter is woken to read again (a notification may have been missed
//! while it was down).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use courier_shared::db::listen::Heard;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

/// The channel the `orders_status_notify` trigger announces on.
pub const CHANNEL: &str = "courier_orders";

#[derive(Default)]
pub struct Waiters {
    /// Per order being waited on: its wake-up and how many wait.
    orders: Mutex<HashMap<Uuid, (Arc<Notify>, usize)>>,
    /// The process is stopping: waiting reads answer at once.
    closing: std::sync::atomic::AtomicBool,
}

/// A registration; waiting ends (and the order is forgotten once nobody
/// waits on it) when it is dropped.
pub struct Waiting {
    waiters: Arc<Waiters>,
    order_id: Uuid,
    pub notify: Arc<Notify>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut orders = self.waiters.lock();
        if let Some((_, count)) = orders.get_mut(&self.order_id) {
            *count -= 1;
            if *count == 0 {
                orders.remove(&self.order_id);
            }
        }
    }
}

impl Waiters {
    /// Starts the process's listener; it stops, and every waiting read
    /// answers with the order as it is, when `shutdown` turns true (so a
    /// graceful stop never waits for a long-poll's timeout).
    pub fn start(pool: PgPool, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Arc<Self> {
        let waiters = Arc::new(Waiters::default());
        let listener = tokio::spawn(listen(pool, waiters.clone()));
        let w = waiters.clone();
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            w.closing.store(true, std::sync::atomic::Ordering::SeqCst);
            listener.abort();
            w.wake_all();
        });
        waiters
    }

    /// True once the process is stopping.
    pub fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Arc<Notify>, usize)>> {
        self.orders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers interest in `order_id`. Enable a `notified()` future of
    /// `notify` before reading the order, so a change between the read and
    /// the wait is not missed.
    pub fn watch(self: &Arc<Self>, order_id: Uuid) -> Waiting {
        let mut orders = self.lock();
        let entry = orders
            .entry(order_id)
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Waiting {
            waiters: self.clone(),
            order_id,
            notify: entry.0.clone(),
        }
    }

    fn wake(&self, order_id: Uuid) {
        if let Some((notify, _)) = self.lock().get(&order_id) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for (notify, _) in self.lock().values() {
            notify.notify_waiters();
        }
    }

    /// How many orders are being waited on (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.lock().len()
    }
}

async fn listen(pool: PgPool, waiters: Arc<Waiters>) {
    courier_shared::db::listen::listen(pool, CHANNEL, |heard| match heard {
        Heard::Notified(payload) => {
            if let Ok(id) = payload.parse() {
                waiters.wake(id);
            }
        }
        // Anything missed while not listening: read again.
        Heard::Listening | Heard::Lost => waiters.wake_all(),
    })
    .await;
}
