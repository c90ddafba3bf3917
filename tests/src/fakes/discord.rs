//! A fake Discord API: the member-role routes. It records every call, answers
//! 204 with rate-limit headers, and on demand 429 (`retry_after`), 401, 50013
//! Missing Permissions, 10011 Unknown Role, or 10007 Unknown Member until the
//! user "joins". It counts requests that arrive while a 429 window it announced
//! is still open: a well-behaved client set never sends any.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use serde_json::json;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Default)]
pub struct DiscordBehaviour {
    /// Answer this many requests with 429 and this `retry_after`.
    pub rate_limit_next: usize,
    pub retry_after: f64,
    pub global: bool,
    /// Roles the bot may not manage (50013) and roles that do not exist (10011).
    pub forbidden_roles: HashSet<String>,
    pub unknown_roles: HashSet<String>,
    /// When set, only these user ids are guild members (others: 10007).
    pub members: Option<HashSet<String>>,
    /// Answer 401 to everything.
    pub unauthorized: bool,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub authorization: String,
    pub at: Instant,
    pub status: u16,
}

#[derive(Default)]
struct State_ {
    behaviour: Mutex<DiscordBehaviour>,
    calls: Mutex<Vec<Call>>,
    window_until: Mutex<Option<Instant>>,
    during_window: Mutex<usize>,
}

pub struct FakeDiscord {
    pub base: String,
    state: Arc<State_>,
    task: JoinHandle<()>,
}

impl FakeDiscord {
    pub async fn start() -> std::io::Result<Self> {
        let state = Arc::new(State_::default());
        let router = Router::new()
            .route(
                "/api/v10/guilds/{guild}/members/{user}/roles/{role}",
                put(handle).delete(handle),
            )
            .with_state(state.clone());
        let (addr, task) = super::http::serve(router).await?;
        Ok(FakeDiscord {
            base: format!("http://{addr}"),
            state,
            task,
        })
    }

    pub fn set(&self, b: DiscordBehaviour) {
        *self
            .state
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = b;
    }

    pub fn update(&self, f: impl FnOnce(&mut DiscordBehaviour)) {
        f(&mut self
            .state
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner()));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests that arrived while an announced 429 window was open.
    pub fn requests_during_window(&self) -> usize {
        *self
            .state
            .during_window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "code": code, "message": message })),
    )
        .into_response()
}

async fn handle(
    State(st): State<Arc<State_>>,
    method: Method,
    headers: HeaderMap,
    Path((guild, user, role)): Path<(String, String, String)>,
) -> Response {
    let now = Instant::now();
    let in_window = st
        .window_until
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|until| now < until);
    if in_window {
        *st.during_window.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }
    let b = st
        .behaviour
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let response = if b.unauthorized {
        error(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized")
    } else if b.rate_limit_next > 0 && !in_window {
        st.behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rate_limit_next -= 1;
        *st.window_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(now + Duration::from_secs_f64(b.retry_after));
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({ "message": "You are being rate limited.", "retry_after": b.retry_after, "global": b.global })),
        )
            .into_response();
        let h = r.headers_mut();
        h.insert(
            "retry-after",
            format!("{}", b.retry_after.ceil() as u64)
                .parse()
                .expect("header"),
        );
        h.insert(
            "x-ratelimit-scope",
            if b.global { "global" } else { "user" }
                .parse()
                .expect("header"),
        );
        if b.global {
            h.insert("x-ratelimit-global", "true".parse().expect("header"));
        }
        r
    } else if in_window {
        // A client that ignores the window gets another 429.
        error(
            StatusCode::TOO_MANY_REQUESTS,
            0,
            "You are being rate limited.",
        )
    } else if b.unknown_roles.contains(&role) {
        error(StatusCode::NOT_FOUND, 10011, "Unknown Role")
    } else if b.forbidden_roles.contains(&role) {
        error(StatusCode::FORBIDDEN, 50013, "Missing Permissions")
    } else if b.members.as_ref().is_some_and(|m| !m.contains(&user)) {
        error(StatusCode::NOT_FOUND, 10007, "Unknown Member")
    } else {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert("x-ratelimit-limit", "10".parse().expect("header"));
        h.insert("x-ratelimit-remaining", "9".parse().expect("header"));
        h.insert("x-ratelimit-reset-after", "1.0".parse().expect("header"));
        h.insert("x-ratelimit-bucket", "fake-bucket".parse().expect("header"));
        r
    };
    let _ = guild;
    st.calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Call {
            method: method.to_string(),
            path: format!("/guilds/{guild}/members/{user}/roles/{role}"),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            at: now,
            status: response.status().as_u16(),
        });
    response
}
