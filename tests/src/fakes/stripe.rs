//! A fake Stripe API: `POST /v1/refunds`. It records each call (authorization,
//! idempotency key, form fields), answers a refund object, replays the first
//! answer for a repeated `Idempotency-Key` as Stripe does, and on demand fails
//! the next N calls with 500 or refuses everything with 400.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Default)]
pub struct StripeBehaviour {
    /// Answer this many calls with 500 (nothing refunded).
    pub fail_next: usize,
    /// Answer 400 `charge_already_refunded` to every call.
    pub refuse: bool,
}

#[derive(Debug, Clone)]
pub struct RefundCall {
    pub authorization: String,
    pub idempotency_key: String,
    pub form: HashMap<String, String>,
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    behaviour: Mutex<StripeBehaviour>,
    calls: Mutex<Vec<RefundCall>>,
    /// Idempotency key → the refund created under it.
    refunds: Mutex<HashMap<String, Value>>,
}

pub struct FakeStripe {
    pub base: String,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn refunds(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: String) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let key = header("idempotency-key");
    let (status, answer) = {
        let mut b = inner.behaviour.lock().expect("lock");
        if b.refuse {
            (
                StatusCode::BAD_REQUEST,
                json!({ "error": { "code": "charge_already_refunded", "message": "Charge has already been refunded." } }),
            )
        } else if b.fail_next > 0 {
            b.fail_next -= 1;
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": { "message": "An unknown error occurred" } }),
            )
        } else {
            let mut refunds = inner.refunds.lock().expect("lock");
            let n = refunds.len() + 1;
            let refund = refunds
                .entry(key.clone())
                .or_insert_with(|| {
                    json!({
                        "id": format!("re_fake_{n}"), "object": "refund", "status": "succeeded",
                        "amount": form.get("amount").and_then(|a| a.parse::<i64>().ok()),
                        "payment_intent": form.get("payment_intent"),
                    })
                })
                .clone();
            (StatusCode::OK, refund)
        }
    };
    inner.calls.lock().expect("lock").push(RefundCall {
        authorization: header("authorization"),
        idempotency_key: key,
        form,
        status: status.as_u16(),
    });
    (status, axum::Json(answer)).into_response()
}

impl FakeStripe {
    pub async fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Inner::default());
        let router = Router::new()
            .route("/v1/refunds", post(refunds))
            .with_state(inner.clone());
        let (addr, task) = super::http::serve(router).await?;
        Ok(FakeStripe {
            base: format!("http://{addr}"),
            inner,
            task,
        })
    }

    pub fn set(&self, b: StripeBehaviour) {
        *self.inner.behaviour.lock().expect("lock") = b;
    }

    pub fn calls(&self) -> Vec<RefundCall> {
        self.inner.calls.lock().expect("lock").clone()
    }

    /// Refunds actually made (distinct idempotency keys that succeeded).
    pub fn refunds_made(&self) -> usize {
        self.inner.refunds.lock().expect("lock").len()
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.task.abort();
    }
}
