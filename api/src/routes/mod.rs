//! HTTP routes. Handlers extract, call one `service::` function, and map the result.

pub mod admin;
pub mod catalog;
pub mod health;
pub mod keys;
pub mod orders;
pub mod payments;

use axum::Router;
use axum::routing::{get, post, put};

use crate::error::ApiError;
use crate::startup::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/orders", post(orders::create))
        .route("/v1/orders/{reference}", get(orders::get))
        .route("/v1/orders/{reference}/refunds", post(payments::refund))
        .route("/v1/orders/{reference}/cancel", post(payments::cancel))
        .route("/webhooks/stripe", post(payments::stripe))
        .route("/webhooks/generic", post(payments::generic))
        .route("/v1/game-servers", get(catalog::list_game_servers))
        .route("/v1/game-servers/{name}", put(catalog::put_game_server))
        .route("/v1/products", get(catalog::list_products))
        .route("/v1/products/{sku}", put(catalog::put_product))
        .route(
            "/v1/orders/{order_id}/items/{item_id}/retry",
            post(admin::retry_item),
        )
        .route("/v1/admin/dead-letters", get(admin::list))
        .route("/v1/admin/dead-letters/retry", post(admin::retry_bulk))
        .route("/v1/admin/dead-letters/{id}", get(admin::show))
        .route("/v1/admin/dead-letters/{id}/retry", post(admin::retry))
        .route("/v1/admin/dead-letters/{id}/discard", post(admin::discard))
        .route("/v1/admin/held", get(admin::held))
        .route("/v1/admin/payment-events", get(admin::payment_events))
        .route("/v1/admin/payment-events/{id}", get(admin::payment_event))
        .route(
            "/v1/admin/deliveries/{id}/retry",
            post(admin::retry_delivery),
        )
        .route(
            "/v1/admin/deliveries/{id}/discard",
            post(admin::discard_delivery),
        )
        .route("/v1/products/{sku}/keys", post(keys::upload))
        .route("/v1/admin/items/{item_id}/key", post(keys::enter))
        .route("/v1/admin/alerts", get(keys::alerts))
        .route("/webhooks/supplier/{name}", post(keys::supplier_webhook))
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}
