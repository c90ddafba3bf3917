//! `/healthz` (the process answers) and `/readyz` (its dependencies answer).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::startup::AppState;

/// The process answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alive {
    /// Always `ok`.
    pub status: &'static str,
}

/// Whether the dependencies answer, each named.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// The API can take orders: Postgres answers.
    pub ready: bool,
    pub postgres: bool,
    /// The relay holds a broker connection.
    pub rabbitmq: bool,
    pub redis: bool,
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Prometheus series in the OpenMetrics text format",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)),
    security(()))]
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

#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = Alive)),
    security(()))]
pub async fn alive() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations",
    responses(
        (status = 200, description = "Postgres answers: orders and webhooks are taken (the broker and Redis are reported, not required)", body = Readiness),
        (status = 503, description = "Postgres does not answer", body = Readiness),
    ),
    security(()))]
/// 200 when Postgres answers, 503 when it does not; RabbitMQ (the relay's
/// connection) and Redis are reported but do not make the API unready: orders
/// are accepted into the outbox while the broker is away, and the API uses
/// Redis for nothing else. Taking every API pod out of its Service because the
/// broker blinked would refuse the orders the outbox exists to keep.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
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
    let ok = postgres;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready: ok,
            postgres,
            rabbitmq,
            redis,
        }),
    )
}
