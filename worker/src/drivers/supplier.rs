//! The key driver: a CD key from the product's own stock, else bought from the
//! first supplier candidate that has stock within its `max_price` (a Kinguin
//! ESA-style API). The supplier order carries our delivery id as
//! `orderExternalId`, and the placed order is saved on the delivery before its
//! keys are fetched, so a retried or duplicated job never buys twice. Keys are
//! fetched until present; a supplier still processing leaves the delivery
//! waiting (re-checked on the waiting schedule, or at once when the
//! supplier's webhook says the order is complete).

use std::sync::Arc;
use std::time::Duration;

use courier_shared::config::SupplierSettings;
use courier_shared::crypto::KeyCipher;
use courier_shared::db::keys::{self, KeySource};
use courier_shared::domain::action::{SupplierCandidate, SupplierKeyPayload};
use courier_shared::error::ErrorClass;
use courier_shared::limits::Limits;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::DriverOutcome;

pub struct SupplierDriver {
    client: reqwest::Client,
    suppliers: std::collections::BTreeMap<String, SupplierSettings>,
    cipher: Option<KeyCipher>,
    limits: Arc<Limits>,
}

fn failed(class: ErrorClass, error: impl Into<String>) -> DriverOutcome {
    DriverOutcome::Failed {
        class,
        error: error.into(),
        response: None,
        maybe_sent: false,
    }
}

/// Why one candidate did not give a key.
enum Skip {
    /// Out of stock or too expensive: try the next one.
    Unavailable(String),
    /// The supplier failed (5xx, timeout): try the next one, retry later if none works.
    Error(String),
    /// Placing the order failed in a way that may still have created it: try
    /// no other supplier now; the retry asks this one first.
    Ambiguous(String),
}

impl SupplierDriver {
    pub fn new(
        suppliers: std::collections::BTreeMap<String, SupplierSettings>,
        cipher: Option<KeyCipher>,
        limits: Arc<Limits>,
    ) -> Self {
        SupplierDriver {
            client: reqwest::Client::new(),
            suppliers,
            cipher,
            limits,
        }
    }

    async fn call(
        &self,
        name: &str,
        s: &SupplierSettings,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, Value), String> {
        self.limits
            .throttle(&format!("supplier:{name}"), s.requests_per_second)
            .await;
        let resp = req
            .header("X-Api-Key", s.api_key.expose())
            .timeout(Duration::from_millis(s.timeout_ms))
            .send()
            .await
            .map_err(|e| format!("{name} unreachable: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub async fn run(&self, db: &PgPool, delivery_id: Uuid, payload: &Value) -> DriverOutcome {
        let p: SupplierKeyPayload = match serde_json::from_value(payload.clone()) {
            Ok(p) => p,
            Err(e) => return DriverOutcome::permanent(format!("invalid key payload: {e}")),
        };
        let Some(cipher) = &self.cipher else {
            return DriverOutcome::permanent(
                "keys.encryption_key is not configured, so keys cannot be stored",
            );
        };
        let mut conn = match db.acquire().await {
            Ok(c) => c,
            Err(e) => return failed(ErrorClass::Transient, format!("database: {e}")),
        };
        match keys::has_key(&mut conn, delivery_id).await {
            Ok(true) => {
                return DriverOutcome::Succeeded {
                    response: "key already obtained".into(),
                };
            }
            Ok(false) => {}
            Err(e) => return failed(ErrorClass::Transient, format!("database: {e}")),
        }
        // One connection at a time per job: the stock transaction below takes its own.
        drop(conn);

        // 1. A supplier order placed (or announced) by an earlier attempt comes
        // first: it is paid for, so it is collected before anything else.
        let placed: Option<Value> =
            match sqlx::query_scalar("SELECT supplier_order FROM deliveries WHERE id = $1")
                .bind(delivery_id)
                .fetch_one(db)
                .await
            {
                Ok(placed) => placed,
                // Not knowing whether an order was placed, do not place another.
                Err(e) => return failed(ErrorClass::Transient, format!("database: {e}")),
            };
        if let Some(order) = placed {
            if order["order_id"].is_string() {
                return self.collect(db, cipher, &p, delivery_id, &order).await;
            }
            // An earlier attempt stopped between announcing a purchase and
            // saving its order id: ask that supplier before trying any other.
            match self.resolve_placing(db, &order, delivery_id).await {
                Ok(Some(found)) => return self.collect(db, cipher, &p, delivery_id, &found).await,
                Ok(None) => {}
                Err(e) => return failed(ErrorClass::Transient, e),
            }
        }

        // 2. Own stock.
        let taken = async {
            let mut tx = db.begin().await?;
            let Some((stock_id, code)) =
                keys::take_from_stock(&mut tx, cipher, p.product_id, delivery_id).await?
            else {
                return Ok::<_, courier_shared::error::DbError>(None);
            };
            let src = KeySource {
                source: "stock",
                supplier: None,
                supplier_order_id: None,
                cost: None,
                stock_id: Some(stock_id),
            };
            keys::store_item_key(&mut tx, cipher, p.item_id, delivery_id, &code, &src).await?;
            let left = keys::stock_left(&mut tx, p.product_id).await?;
            if left < p.low_stock_threshold {
                keys::alert(
                    &mut tx,
                    "low_stock",
                    &format!("product {} has {left} keys left in stock", p.product_id),
                    &format!("low_stock:{}", p.product_id),
                )
                .await?;
            }
            tx.commit().await?;
            Ok(Some(left))
        }
        .await;
        match taken {
            Ok(Some(left)) => {
                return DriverOutcome::Succeeded {
                    response: format!("key taken from own stock ({left} left)"),
                };
            }
            Ok(None) => {}
            Err(e) => {
                return failed(
                    ErrorClass::Transient,
                    format!("taking a key from stock: {e}"),
                );
            }
        }

        // 3. Candidates in order.
        let mut skipped = Vec::new();
        let mut any_error = false;
        for c in &p.candidates {
            match self.buy(db, c, delivery_id).await {
                Ok(order) => return self.collect(db, cipher, &p, delivery_id, &order).await,
                Err(Skip::Unavailable(why)) => skipped.push(why),
                Err(Skip::Error(why)) => {
                    any_error = true;
                    skipped.push(why);
                }
                Err(Skip::Ambiguous(why)) => {
                    return failed(
                        ErrorClass::Transient,
                        format!("{why}; will ask this supplier again before any other"),
                    );
                }
            }
        }
        let summary = if skipped.is_empty() {
            "no supplier candidates and no stock".to_owned()
        } else {
            skipped.join("; ")
        };
        if any_error {
            return failed(ErrorClass::Transient, summary);
        }
        if let Ok(mut conn) = db.acquire().await {
            let _ = keys::alert(
                &mut conn,
                "no_key_available",
                &format!("delivery {delivery_id} is waiting for stock or manual action: {summary}"),
                &format!("no_key:{delivery_id}"),
            )
            .await;
        }
        failed(
            ErrorClass::Waiting,
            format!("awaiting stock or manual action: {summary}"),
        )
    }

    /// Checks stock and price, then places the order (idempotent by external id)
    /// and saves it on the delivery.
    async fn buy(
        &self,
        db: &PgPool,
        c: &SupplierCandidate,
        delivery_id: Uuid,
    ) -> Result<Value, Skip> {
        let Some(s) = self.suppliers.get(&c.supplier) else {
            return Err(Skip::Unavailable(format!(
                "{}: not configured (suppliers.{})",
                c.supplier, c.supplier
            )));
        };
        let base = s.base_url.trim_end_matches('/');
        let max: Decimal = c.max_price.parse().unwrap_or_default();
        let (status, product) = self
            .call(
                &c.supplier,
                s,
                self.client
                    .get(format!("{base}/v1/products/{}", c.supplier_product_id)),
            )
            .await
            .map_err(Skip::Error)?;
        match status {
            200 => {}
            404 => {
                return Err(Skip::Unavailable(format!(
                    "{}: product {} unknown",
                    c.supplier, c.supplier_product_id
                )));
            }
            s if s >= 500 || s == 429 => {
                return Err(Skip::Error(format!(
                    "{}: {s} checking the product",
                    c.supplier
                )));
            }
            s => {
                return Err(Skip::Unavailable(format!(
                    "{}: {s} checking the product",
                    c.supplier
                )));
            }
        }
        let qty = product["qty"].as_i64().unwrap_or(0);
        let price = product["price"]
            .as_f64()
            .and_then(|p| Decimal::try_from(p).ok())
            .or_else(|| product["price"].as_str().and_then(|p| p.parse().ok()));
        let Some(price) = price else {
            return Err(Skip::Error(format!(
                "{}: no price in the product answer",
                c.supplier
            )));
        };
        if qty < 1 {
            return Err(Skip::Unavailable(format!("{}: out of stock", c.supplier)));
        }
        if price > max {
            return Err(Skip::Unavailable(format!(
                "{}: price {price} above max {max}",
                c.supplier
            )));
        }
        // Announce the purchase first: should this worker die after the POST,
        // the next attempt asks this supplier before trying another one.
        let placing =
            json!({ "supplier": c.supplier, "order_id": null, "price": price.to_string() });
        sqlx::query("UPDATE deliveries SET supplier_order = $2 WHERE id = $1")
            .bind(delivery_id)
            .bind(&placing)
            .execute(db)
            .await
            .map_err(|e| Skip::Error(format!("saving the purchase intent: {e}")))?;
        let order_body = json!({
            "products": [{ "productId": c.supplier_product_id, "qty": 1, "price": price }],
            "orderExternalId": delivery_id.to_string(),
        });
        let (status, body) = self
            .call(
                &c.supplier,
                s,
                self.client
                    .post(format!("{base}/v2/order"))
                    .json(&order_body),
            )
            .await
            .map_err(Skip::Ambiguous)?;
        let order_id = match status {
            200 | 201 => body["orderId"].as_str().map(str::to_owned),
            409 => {
                // Already placed under our external id (a duplicate job): find it.
                let (_, found) = self
                    .call(
                        &c.supplier,
                        s,
                        self.client
                            .get(format!("{base}/v1/order"))
                            .query(&[("orderExternalId", delivery_id.to_string())]),
                    )
                    .await
                    .map_err(Skip::Ambiguous)?;
                found["results"][0]["orderId"].as_str().map(str::to_owned)
            }
            s if s >= 500 || s == 429 => {
                return Err(Skip::Ambiguous(format!(
                    "{}: {s} placing the order",
                    c.supplier
                )));
            }
            s => {
                return Err(Skip::Unavailable(format!(
                    "{}: {s} placing the order: {body}",
                    c.supplier
                )));
            }
        };
        let Some(order_id) = order_id else {
            return Err(Skip::Ambiguous(format!(
                "{}: no orderId in the answer",
                c.supplier
            )));
        };
        let placed =
            json!({ "supplier": c.supplier, "order_id": order_id, "price": price.to_string() });
        sqlx::query("UPDATE deliveries SET supplier_order = $2 WHERE id = $1")
            .bind(delivery_id)
            .bind(&placed)
            .execute(db)
            .await
            .map_err(|e| Skip::Error(format!("saving the supplier order: {e}")))?;
        Ok(placed)
    }

    /// For an announced purchase without an order id: the supplier's order under
    /// our external id (saved on the delivery), or `None` (intent cleared) when
    /// the supplier has none.
    async fn resolve_placing(
        &self,
        db: &PgPool,
        placing: &Value,
        delivery_id: Uuid,
    ) -> Result<Option<Value>, String> {
        let supplier = placing["supplier"].as_str().unwrap_or_default().to_owned();
        let Some(s) = self.suppliers.get(&supplier) else {
            return Err(format!(
                "supplier {supplier} (purchase in progress) is no longer configured"
            ));
        };
        let base = s.base_url.trim_end_matches('/');
        let (status, found) = self
            .call(
                &supplier,
                s,
                self.client
                    .get(format!("{base}/v1/order"))
                    .query(&[("orderExternalId", delivery_id.to_string())]),
            )
            .await?;
        if status != 200 {
            return Err(format!("{supplier}: {status} looking up our earlier order"));
        }
        let resolved = found["results"][0]["orderId"]
            .as_str()
            .map(|order_id| json!({ "supplier": supplier, "order_id": order_id, "price": placing["price"] }));
        sqlx::query("UPDATE deliveries SET supplier_order = $2 WHERE id = $1")
            .bind(delivery_id)
            .bind(&resolved)
            .execute(db)
            .await
            .map_err(|e| format!("database: {e}"))?;
        Ok(resolved)
    }

    /// Fetches the keys of a placed order, a few times with backoff; stores the key.
    async fn collect(
        &self,
        db: &PgPool,
        cipher: &KeyCipher,
        p: &SupplierKeyPayload,
        delivery_id: Uuid,
        order: &Value,
    ) -> DriverOutcome {
        let supplier = order["supplier"].as_str().unwrap_or_default().to_owned();
        let order_id = order["order_id"].as_str().unwrap_or_default().to_owned();
        let Some(s) = self.suppliers.get(&supplier) else {
            return DriverOutcome::permanent(format!(
                "supplier {supplier} (order {order_id}) is no longer configured"
            ));
        };
        let base = s.base_url.trim_end_matches('/');
        let mut pause = Duration::from_millis(200);
        // Bounded well inside the lease: keys not there by then are waited for
        // on the waiting schedule (or the supplier's webhook).
        let started = std::time::Instant::now();
        for _ in 0..5 {
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
            match self
                .call(
                    &supplier,
                    s,
                    self.client.get(format!("{base}/v2/order/{order_id}/keys")),
                )
                .await
            {
                Ok((200, keys_body)) => {
                    if let Some(code) = keys_body[0]["serial"].as_str() {
                        let src = KeySource {
                            source: "supplier",
                            supplier: Some(supplier.clone()),
                            supplier_order_id: Some(order_id.clone()),
                            cost: order["price"].as_str().and_then(|p| p.parse().ok()),
                            stock_id: None,
                        };
                        let stored = async {
                            let mut conn = db.acquire().await?;
                            keys::store_item_key(
                                &mut conn,
                                cipher,
                                p.item_id,
                                delivery_id,
                                code,
                                &src,
                            )
                            .await
                        }
                        .await;
                        return match stored {
                            Ok(()) => DriverOutcome::Succeeded {
                                response: format!("key bought from {supplier} (order {order_id})"),
                            },
                            Err(e) => {
                                failed(ErrorClass::Transient, format!("storing the key: {e}"))
                            }
                        };
                    }
                }
                Ok((s, _)) if s >= 500 => {}
                Ok(_) => {}
                Err(_) => {}
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        failed(
            ErrorClass::Waiting,
            format!("{supplier} order {order_id} placed; keys not delivered yet"),
        )
    }
}
