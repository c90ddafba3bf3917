//! A fake key supplier modelled on Kinguin's ESA API: product stock and price,
//! orders idempotent by `orderExternalId` (a repeat answers 409), keys that
//! appear after a configurable delay, and switches for out of stock, 5xx and
//! slowness. It records every order placed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct Product {
    pub price: f64,
    pub qty: i64,
}

#[derive(Debug, Clone, Default)]
pub struct SupplierBehaviour {
    /// Answer everything 503.
    pub down: bool,
    /// Delay before every answer.
    pub slow: Duration,
    /// Keys become available this long after the order.
    pub keys_after: Duration,
    /// Create orders but answer 503, once (a crash after the commit).
    pub lose_next_order_answer: bool,
}

#[derive(Default)]
struct St {
    api_key: String,
    products: Mutex<HashMap<String, Product>>,
    behaviour: Mutex<SupplierBehaviour>,
    /// orderId → (external id, placed at, key)
    orders: Mutex<HashMap<String, (String, Instant, String)>>,
    posts: Mutex<Vec<String>>,
}

pub struct FakeSupplier {
    pub base: String,
    pub api_key: String,
    state: Arc<St>,
    task: JoinHandle<()>,
}

impl FakeSupplier {
    pub async fn start(name: &str) -> std::io::Result<Self> {
        let state = Arc::new(St {
            api_key: format!("key-{name}"),
            ..St::default()
        });
        let router = Router::new()
            .route("/v1/products/{id}", get(product))
            .route("/v2/order", post(place))
            .route("/v1/order", get(find))
            .route("/v2/order/{id}/keys", get(keys))
            .with_state(state.clone());
        let (addr, task) = super::http::serve(router).await?;
        Ok(FakeSupplier {
            base: format!("http://{addr}"),
            api_key: state.api_key.clone(),
            state,
            task,
        })
    }

    pub fn set_product(&self, id: &str, price: f64, qty: i64) {
        self.state
            .products
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), Product { price, qty });
    }

    pub fn set(&self, b: SupplierBehaviour) {
        *self
            .state
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = b;
    }

    /// The `orderExternalId` of every `POST /v2/order` that created an order.
    pub fn orders_placed(&self) -> Vec<String> {
        self.state
            .posts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for FakeSupplier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn gate(st: &St, headers: &HeaderMap) -> Option<Response> {
    let b = st
        .behaviour
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if !b.slow.is_zero() {
        tokio::time::sleep(b.slow).await;
    }
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(st.api_key.as_str()) {
        return Some((StatusCode::UNAUTHORIZED, "bad api key").into_response());
    }
    b.down
        .then(|| (StatusCode::SERVICE_UNAVAILABLE, "down").into_response())
}

async fn product(
    State(st): State<Arc<St>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = gate(&st, &headers).await {
        return r;
    }
    match st
        .products
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
    {
        Some(p) => {
            axum::Json(json!({ "productId": id, "price": p.price, "qty": p.qty })).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn place(
    State(st): State<Arc<St>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = gate(&st, &headers).await {
        return r;
    }
    let external = body["orderExternalId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut orders = st.orders.lock().unwrap_or_else(|e| e.into_inner());
    if orders.values().any(|(e, _, _)| *e == external) {
        return (
            StatusCode::CONFLICT,
            axum::Json(json!({ "code": "DUPLICATE_EXTERNAL_ID" })),
        )
            .into_response();
    }
    let pid = body["products"][0]["productId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(p) = st
        .products
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&pid)
    {
        p.qty -= 1;
    }
    let order_id = format!("ord-{}", orders.len() + 1);
    let key = format!("KEY-{}-{}", pid, uuid::Uuid::new_v4().simple());
    orders.insert(order_id.clone(), (external.clone(), Instant::now(), key));
    st.posts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(external);
    (
        StatusCode::CREATED,
        axum::Json(json!({ "orderId": order_id, "status": "processing" })),
    )
        .into_response()
}

async fn find(
    State(st): State<Arc<St>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&st, &headers).await {
        return r;
    }
    let external = q.get("orderExternalId").cloned().unwrap_or_default();
    let orders = st.orders.lock().unwrap_or_else(|e| e.into_inner());
    let results: Vec<Value> = orders
        .iter()
        .filter(|(_, (e, _, _))| *e == external)
        .map(|(id, _)| json!({ "orderId": id }))
        .collect();
    axum::Json(json!({ "results": results })).into_response()
}

async fn keys(State(st): State<Arc<St>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = gate(&st, &headers).await {
        return r;
    }
    let after = st
        .behaviour
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys_after;
    match st.orders.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        Some((_, at, key)) if at.elapsed() >= after => {
            axum::Json(json!([{ "serial": key, "type": "text/plain" }])).into_response()
        }
        Some(_) => axum::Json(json!([])).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
