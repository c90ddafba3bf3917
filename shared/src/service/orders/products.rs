//! The products an API process accepts orders for, kept between orders.
//!
//! Every accept needs the products its items name; read per order, that was
//! one statement (and its planning) per order for rows that change a few
//! times a day. The cache keeps what it read while the process listens on
//! `courier_catalog`, which a trigger on `products` and `product_actions`
//! announces at every commit that changes them; each announcement empties
//! it. While the listening connection is down nothing is kept (every accept
//! reads, as before), and a (re)connect empties it, since announcements may
//! have been missed meanwhile.
//!
//! What this allows: an order accepted in the moment between another
//! process's catalog commit and its announcement reaching this one (a few
//! milliseconds) is planned from the product as it was — as if it had been
//! accepted just before the edit. Edits made through this process empty the
//! cache before they answer (`invalidate`). A product saved anew gets new
//! action ids; an order planned from the old ones is refused by the
//! deliveries' foreign key, and `create_order` empties the cache and plans
//! it again from what is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;

use crate::db::catalog::{self, Product};
use crate::db::listen::Heard;
use crate::error::DbError;

/// The channel the `catalog_notify` trigger announces on.
pub const CHANNEL: &str = "courier_catalog";

#[derive(Default)]
struct State {
    /// True while the process listens on `CHANNEL`.
    listening: bool,
    /// Moves on every change and every (re)connect: a read that started
    /// before a move is not kept.
    generation: u64,
    products: HashMap<String, Product>,
}

/// See the module documentation.
#[derive(Default)]
pub struct ProductCache {
    state: Mutex<State>,
}

impl ProductCache {
    /// A cache kept up to date by its own `LISTEN` connection, which stops
    /// when `shutdown` turns true.
    pub fn start(pool: PgPool, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Arc<Self> {
        let cache = Arc::new(ProductCache::default());
        let listener = tokio::spawn(listen(pool, cache.clone()));
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            listener.abort();
        });
        cache
    }

    /// A cache that keeps what it reads and hears of no change: only
    /// `invalidate` empties it (for tests of what a stale cache does).
    pub fn deaf() -> Self {
        let cache = ProductCache::default();
        cache.lock().listening = true;
        cache
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets everything kept; the next accepts read again.
    pub fn invalidate(&self) {
        let mut state = self.lock();
        state.generation += 1;
        state.products.clear();
    }

    fn set_listening(&self, listening: bool) {
        let mut state = self.lock();
        state.listening = listening;
        state.generation += 1;
        state.products.clear();
    }

    /// The products of `skus` (unknown SKUs are simply absent), read from
    /// Postgres only for the ones not kept.
    pub async fn products(
        &self,
        pool: &PgPool,
        skus: &[String],
    ) -> Result<HashMap<String, Product>, DbError> {
        let (mut found, missing, generation) = {
            let state = self.lock();
            let mut found = HashMap::new();
            let mut missing = Vec::new();
            for sku in skus {
                // Nothing is kept while not listening (`set_listening`).
                match state.products.get(sku) {
                    Some(p) => {
                        found.insert(sku.clone(), p.clone());
                    }
                    None if !missing.contains(sku) => missing.push(sku.clone()),
                    None => {}
                }
            }
            (found, missing, state.generation)
        };
        if missing.is_empty() {
            return Ok(found);
        }
        let mut conn = pool.acquire().await?;
        let read = catalog::products_by_sku(&mut conn, &missing).await?;
        drop(conn);
        let mut state = self.lock();
        // Kept only if nothing changed (and the listener did not drop)
        // since the read began.
        let keep = state.listening && state.generation == generation;
        for product in read {
            if keep {
                state.products.insert(product.sku.clone(), product.clone());
            }
            found.insert(product.sku.clone(), product);
        }
        Ok(found)
    }

    /// How many products are kept (for tests).
    pub fn kept(&self) -> usize {
        self.lock().products.len()
    }
}

async fn listen(pool: PgPool, cache: Arc<ProductCache>) {
    crate::db::listen::listen(pool, CHANNEL, |heard| match heard {
        Heard::Listening => cache.set_listening(true),
        Heard::Notified(_) => cache.invalidate(),
        Heard::Lost => cache.set_listening(false),
    })
    .await;
}
