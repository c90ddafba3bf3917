//! The worker's own small listener on `worker.http_bind`: `/healthz` (the
//! process answers), `/readyz` (Postgres answers and every consumer holds a
//! broker channel) and `/metrics` (Prometheus). It carries no API and no
//! authentication: bind it to an address only the cluster reaches.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use courier_shared::metrics::{CONTENT_TYPE, encode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::consume::Context;

/// Binds `bind` and serves until `shutdown`; returns the bound address.
pub async fn start(
    bind: &str,
    ctx: Arc<Context>,
    consumers: i64,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state((ctx, consumers));
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "worker listener failed");
        }
    });
    Ok((addr, task))
}

async fn ready(State((ctx, consumers)): State<(Arc<Context>, i64)>) -> impl IntoResponse {
    let postgres = sqlx::query("SELECT 1").execute(&ctx.pool).await.is_ok();
    let connected = ctx.metrics.consumers_connected.get();
    let ok = postgres && connected >= consumers;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({
            "ready": ok,
            "postgres": postgres,
            "consumers_connected": connected,
            "consumers": consumers,
        })),
    )
}

async fn metrics(State((ctx, _)): State<(Arc<Context>, i64)>) -> impl IntoResponse {
    ctx.metrics
        .redis_fallback
        .set(i64::from(ctx.limits.fallback_active()));
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        encode(ctx.metrics.registry()),
    )
}
