//! HTTP routes. Handlers extract, call one `service::` function, and map the result.
//!
//! Every route is added through [`Table`], which records its method and path:
//! [`route_table`] is that list, and the suite walks it so that no route can
//! escape the error shape or the input checks.

pub mod admin;
pub mod catalog;
pub mod health;
pub mod keys;
pub mod orders;
pub mod payments;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, on};

use crate::error::ApiError;
use crate::extract;
use crate::startup::AppState;

/// The router being built, and the (method, path) of every route in it.
struct Table {
    router: Router<AppState>,
    list: Vec<(Method, &'static str)>,
}

impl Table {
    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        self.router = self.router.route(path, on(filter, handler));
        self.list.push((method, path));
        self
    }
}

fn table() -> Table {
    use Method as M;
    Table {
        router: Router::new(),
        list: Vec::new(),
    }
    .add(M::POST, "/v1/orders", orders::create)
    .add(M::GET, "/v1/orders/{reference}", orders::get)
    .add(M::POST, "/v1/orders/{reference}/refunds", payments::refund)
    .add(M::POST, "/v1/orders/{reference}/cancel", payments::cancel)
    .add(
        M::POST,
        "/v1/orders/{reference}/payment/accept",
        payments::accept_payment,
    )
    .add(M::POST, "/webhooks/stripe", payments::stripe)
    .add(M::POST, "/webhooks/generic", payments::generic)
    .add(M::GET, "/v1/game-servers", catalog::list_game_servers)
    .add(M::PUT, "/v1/game-servers/{name}", catalog::put_game_server)
    .add(M::GET, "/v1/products", catalog::list_products)
    .add(M::PUT, "/v1/products/{sku}", catalog::put_product)
    .add(
        M::POST,
        "/v1/orders/{order_id}/items/{item_id}/retry",
        admin::retry_item,
    )
    .add(M::GET, "/v1/admin/dead-letters", admin::list)
    .add(M::POST, "/v1/admin/dead-letters/retry", admin::retry_bulk)
    .add(M::GET, "/v1/admin/dead-letters/{id}", admin::show)
    .add(M::POST, "/v1/admin/dead-letters/{id}/retry", admin::retry)
    .add(
        M::POST,
        "/v1/admin/dead-letters/{id}/discard",
        admin::discard,
    )
    .add(M::GET, "/v1/admin/held", admin::held)
    .add(M::GET, "/v1/admin/payment-events", admin::payment_events)
    .add(
        M::GET,
        "/v1/admin/payment-events/{id}",
        admin::payment_event,
    )
    .add(
        M::POST,
        "/v1/admin/deliveries/{id}/retry",
        admin::retry_delivery,
    )
    .add(
        M::POST,
        "/v1/admin/deliveries/{id}/discard",
        admin::discard_delivery,
    )
    .add(M::POST, "/v1/products/{sku}/keys", keys::upload)
    .add(M::POST, "/v1/admin/items/{item_id}/key", keys::enter)
    .add(M::GET, "/v1/admin/alerts", keys::alerts)
    .add(M::POST, "/webhooks/supplier/{name}", keys::supplier_webhook)
    .add(M::GET, "/healthz", health::alive)
    .add(M::GET, "/readyz", health::ready)
}

/// Every route's method and path, in the order they were added.
pub fn route_table() -> Vec<(Method, &'static str)> {
    table().list
}

pub fn router(state: AppState) -> Router {
    table()
        .router
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn(extract::json_errors))
        .layer(axum::middleware::from_fn(extract::check_uri))
        .with_state(state)
}
