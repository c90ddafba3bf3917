//! A store's webhook receiver: it verifies each call's Standard Webhooks
//! signature with its own code (HMAC-SHA256 over `id.timestamp.body`, the
//! timestamp within five minutes, any of the space-separated `v1,`
//! signatures), records what arrived, and misbehaves on demand: answer a
//! status for the next calls or always (`410 Gone` included), or be slow.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use tokio::task::JoinHandle;

/// One call as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: i64,
    /// The `webhook-signature` header as sent.
    pub signature: String,
    pub body: Value,
    /// Which of the receiver's secrets (by position) a signature verified with.
    pub verified_by: Vec<usize>,
    /// The status answered.
    pub answered: u16,
}

#[derive(Default)]
struct Behaviour {
    /// Answer these statuses to the next calls, in order.
    next: Vec<u16>,
    /// Answer this to every call (after `next`).
    always: Option<u16>,
    slow: Duration,
}

#[derive(Default)]
struct St {
    /// Takes calls without a signature (Discord's and Slack's incoming webhooks).
    plain: bool,
    secrets: Mutex<Vec<String>>,
    behaviour: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
}

pub struct FakeReceiver {
    pub url: String,
    state: Arc<St>,
    task: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeReceiver {
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(false).await
    }

    /// A receiver that checks no signature: an incoming webhook of a chat
    /// service (Discord, Slack), which authenticates by its secret URL.
    pub async fn start_plain() -> std::io::Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(plain: bool) -> std::io::Result<Self> {
        let state = Arc::new(St {
            plain,
            ..St::default()
        });
        let router = Router::new()
            .route("/hooks", post(receive))
            .with_state(state.clone());
        let (addr, task) = super::http::serve(router).await?;
        Ok(FakeReceiver {
            url: format!("http://{addr}/hooks"),
            state,
            task,
        })
    }

    /// The secrets it verifies with (`whsec_…`), in order.
    pub fn set_secrets(&self, secrets: &[&str]) {
        *lock(&self.state.secrets) = secrets.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Answer `statuses` to the next calls, one each.
    pub fn answer_next(&self, statuses: &[u16]) {
        lock(&self.state.behaviour).next = statuses.to_vec();
    }

    /// Answer `status` to every call (None: 200).
    pub fn answer_always(&self, status: Option<u16>) {
        lock(&self.state.behaviour).always = status;
    }

    pub fn set_slow(&self, d: Duration) {
        lock(&self.state.behaviour).slow = d;
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    /// Waits until `pred` holds of what arrived, up to `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.received();
            if pred(&got) || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for FakeReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The receiver's own check: which secrets sign `id.timestamp.body`.
fn verify(secrets: &[String], id: &str, ts: &str, signatures: &str, body: &[u8]) -> Vec<usize> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut signed = Vec::new();
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(ts.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let mut ok = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        let Some(key) = secret
            .strip_prefix("whsec_")
            .and_then(|k| b64.decode(k).ok())
        else {
            continue;
        };
        let matched = signatures.split(' ').any(|sig| {
            let Some(raw) = sig.strip_prefix("v1,").and_then(|s| b64.decode(s).ok()) else {
                return false;
            };
            let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&key) else {
                return false;
            };
            mac.update(&signed);
            mac.verify_slice(&raw).is_ok()
        });
        if matched {
            ok.push(i);
        }
    }
    ok
}

async fn receive(State(st): State<Arc<St>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let (answer, slow) = {
        let mut b = lock(&st.behaviour);
        let answer = if b.next.is_empty() {
            b.always.unwrap_or(200)
        } else {
            b.next.remove(0)
        };
        (answer, b.slow)
    };
    if !slow.is_zero() {
        tokio::time::sleep(slow).await;
    }
    let secrets = lock(&st.secrets).clone();
    let timestamp: i64 = ts.parse().unwrap_or_default();
    let fresh = (crate::signing::now() - timestamp).abs() <= 300;
    let verified_by = if fresh {
        verify(&secrets, &id, &ts, &sig, &body)
    } else {
        Vec::new()
    };
    // A real receiver refuses what it cannot verify.
    let answer = if verified_by.is_empty() && !st.plain {
        401
    } else {
        answer
    };
    lock(&st.received).push(Received {
        id,
        timestamp,
        signature: sig,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified_by,
        answered: answer,
    });
    StatusCode::from_u16(answer).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
