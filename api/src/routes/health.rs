//! `/healthz` (the process answers) and `/readyz` (its dependencies answer).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::startup::AppState;

/// Prometheus series of this process (and installation-wide gauges); see `crate::metrics`.
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let body = state
        .metrics
        .render(&state.pool, &state.broker, &state.topology)
        .await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            courier_shared::metrics::CONTENT_TYPE,
        )],
        body,
    )
}

pub async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when Postgres, RabbitMQ (the relay's connection) and Redis answer; 503
/// naming the ones that do not.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let limit = Duration::from_secs(2);
    let postgres = matches!(
        tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(&state.pool)).await,
        Ok(Ok(_))
    );
    let rabbitmq = state.relay_connected.load(Ordering::Relaxed);
    let redis =
        match tokio::time::timeout(limit, state.redis.get_multiplexed_async_connection()).await {
            Ok(Ok(mut conn)) => redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok(),
            _ => false,
        };
    let ok = postgres && rabbitmq && redis;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": ok, "postgres": postgres, "rabbitmq": rabbitmq, "redis": redis })),
    )
}
