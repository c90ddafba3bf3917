//! HTTP routes. Handlers extract, call one `service::` function, and map the result.
//!
//! Every route is added through [`Table`], which records its method and path:
//! [`route_table`] is that list, and the suite walks it so that no route can
//! escape the error shape or the input checks.

pub mod admin;
pub mod alerts;
pub mod catalog;
pub mod downloads;
pub mod emails;
pub mod export;
pub mod health;
pub mod keys;
pub mod manual;
pub mod notes;
pub mod order_list;
pub mod orders;
pub mod payments;
pub mod reports;
pub mod webhooks;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, on};

use crate::auth::{self, Access};
use crate::error::ApiError;
use crate::extract;
use crate::startup::AppState;

/// One route: method, path and who may call it.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// The router being built (when there is a state to build it with), and
/// every route in it.
struct Table {
    state: Option<AppState>,
    router: Router<AppState>,
    list: Vec<Route>,
}

impl Table {
    fn add<H, T>(mut self, method: Method, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        if let Some(state) = &self.state {
            let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
            let mut route = on(filter, handler);
            if let Access::Scope(scope) = access {
                route = route.route_layer(axum::middleware::from_fn_with_state(
                    (state.clone(), scope),
                    auth::authorize,
                ));
            }
            self.router = self.router.route(path, route);
        }
        self.list.push(Route {
            method,
            path,
            access,
        });
        self
    }
}

fn table(state: Option<AppState>) -> Table {
    use Method as M;
    const PUBLIC: Access = Access::Public;
    const ADMIN: Access = Access::Scope(auth::ADMIN);
    Table {
        state,
        router: Router::new(),
        list: Vec::new(),
    }
    .add(
        M::POST,
        "/v1/orders",
        Access::Scope(auth::ORDERS_WRITE),
        orders::create,
    )
    .add(
        M::GET,
        "/v1/orders",
        Access::Scope(auth::ORDERS_READ),
        order_list::list,
    )
    .add(
        M::GET,
        "/v1/orders/export",
        Access::Scope(auth::ORDERS_READ),
        export::export,
    )
    .add(
        M::GET,
        "/v1/orders/{reference}",
        Access::Scope(auth::ORDERS_READ),
        orders::get,
    )
    .add(
        M::POST,
        "/v1/orders/{reference}/refunds",
        Access::Scope(auth::ORDERS_REFUND),
        payments::refund,
    )
    .add(
        M::POST,
        "/v1/orders/{reference}/cancel",
        Access::Scope(auth::ORDERS_WRITE),
        payments::cancel,
    )
    .add(
        M::POST,
        "/v1/orders/{reference}/payment/accept",
        ADMIN,
        payments::accept_payment,
    )
    .add(M::GET, "/v1/orders/{reference}/notes", ADMIN, notes::list)
    .add(M::POST, "/v1/orders/{reference}/notes", ADMIN, notes::add)
    .add(
        M::PATCH,
        "/v1/orders/{reference}/notes/{note_id}",
        ADMIN,
        notes::edit,
    )
    .add(
        M::DELETE,
        "/v1/orders/{reference}/notes/{note_id}",
        ADMIN,
        notes::delete,
    )
    .add(
        M::POST,
        "/v1/orders/{reference}/items/{item_id}/deliver",
        ADMIN,
        manual::deliver_item,
    )
    .add(
        M::POST,
        "/v1/orders/{reference}/complete",
        ADMIN,
        manual::complete,
    )
    .add(
        M::POST,
        "/v1/orders/{reference}/process",
        ADMIN,
        manual::process,
    )
    .add(M::POST, "/v1/orders/process", ADMIN, manual::process_many)
    .add(
        M::POST,
        "/v1/orders/{reference}/resend",
        ADMIN,
        emails::resend,
    )
    .add(M::POST, "/webhooks/stripe", PUBLIC, payments::stripe)
    .add(M::POST, "/webhooks/generic", PUBLIC, payments::generic)
    .add(
        M::GET,
        "/v1/game-servers",
        ADMIN,
        catalog::list_game_servers,
    )
    .add(
        M::PUT,
        "/v1/game-servers/{name}",
        ADMIN,
        catalog::put_game_server,
    )
    .add(
        M::POST,
        "/v1/game-servers/{name}/test",
        ADMIN,
        catalog::test_game_server,
    )
    .add(M::GET, "/v1/products", ADMIN, catalog::list_products)
    .add(M::PUT, "/v1/products/{sku}", ADMIN, catalog::put_product)
    .add(
        M::POST,
        "/v1/orders/{order_id}/items/{item_id}/retry",
        ADMIN,
        admin::retry_item,
    )
    .add(M::GET, "/v1/admin/dead-letters", ADMIN, admin::list)
    .add(
        M::POST,
        "/v1/admin/dead-letters/retry",
        ADMIN,
        admin::retry_bulk,
    )
    .add(M::GET, "/v1/admin/dead-letters/count", ADMIN, admin::count)
    .add(M::GET, "/v1/admin/dead-letters/{id}", ADMIN, admin::show)
    .add(
        M::POST,
        "/v1/admin/dead-letters/{id}/retry",
        ADMIN,
        admin::retry,
    )
    .add(
        M::POST,
        "/v1/admin/dead-letters/{id}/discard",
        ADMIN,
        admin::discard,
    )
    .add(M::GET, "/v1/admin/held", ADMIN, admin::held)
    .add(M::GET, "/v1/admin/waiting", ADMIN, admin::waiting)
    .add(
        M::GET,
        "/v1/admin/payment-events",
        ADMIN,
        admin::payment_events,
    )
    .add(
        M::GET,
        "/v1/admin/payment-events/{id}",
        ADMIN,
        admin::payment_event,
    )
    .add(
        M::POST,
        "/v1/admin/deliveries/{id}/retry",
        ADMIN,
        admin::retry_delivery,
    )
    .add(
        M::POST,
        "/v1/admin/deliveries/{id}/discard",
        ADMIN,
        admin::discard_delivery,
    )
    .add(M::POST, "/v1/products/{sku}/keys", ADMIN, keys::upload)
    .add(
        M::POST,
        "/v1/products/{sku}/files",
        ADMIN,
        downloads::upload,
    )
    .add(M::GET, "/v1/products/{sku}/files", ADMIN, downloads::list)
    .add(
        M::DELETE,
        "/v1/products/{sku}/files/{file_id}",
        ADMIN,
        downloads::withdraw,
    )
    .add(
        M::GET,
        "/v1/orders/{reference}/downloads",
        Access::Scope(auth::ORDERS_KEYS),
        downloads::order_links,
    )
    .add(M::GET, "/downloads/{token}", PUBLIC, downloads::serve)
    .add(M::POST, "/v1/admin/items/{item_id}/key", ADMIN, keys::enter)
    .add(M::GET, "/v1/admin/alerts", ADMIN, alerts::list)
    .add(
        M::POST,
        "/v1/admin/alerts/{id}/acknowledge",
        ADMIN,
        alerts::acknowledge,
    )
    .add(
        M::POST,
        "/v1/admin/alerts/{id}/resolve",
        ADMIN,
        alerts::resolve,
    )
    .add(
        M::POST,
        "/webhooks/supplier/{name}",
        PUBLIC,
        keys::supplier_webhook,
    )
    .add(M::GET, "/healthz", PUBLIC, health::alive)
    .add(M::GET, "/readyz", PUBLIC, health::ready)
    .add(M::GET, "/metrics", PUBLIC, health::metrics)
    .add(M::GET, "/openapi.json", PUBLIC, crate::openapi::document)
    .add(M::GET, "/v1/reports/summary", ADMIN, reports::summary)
    .add(M::POST, "/v1/webhook-endpoints", ADMIN, webhooks::create)
    .add(M::GET, "/v1/webhook-endpoints", ADMIN, webhooks::list)
    .add(M::GET, "/v1/webhook-endpoints/{id}", ADMIN, webhooks::get)
    .add(
        M::PATCH,
        "/v1/webhook-endpoints/{id}",
        ADMIN,
        webhooks::update,
    )
    .add(
        M::DELETE,
        "/v1/webhook-endpoints/{id}",
        ADMIN,
        webhooks::delete,
    )
    .add(
        M::POST,
        "/v1/webhook-endpoints/{id}/rotate-secret",
        ADMIN,
        webhooks::rotate,
    )
    .add(
        M::POST,
        "/v1/webhook-endpoints/{id}/test",
        ADMIN,
        webhooks::test,
    )
    .add(
        M::GET,
        "/v1/webhook-endpoints/{id}/deliveries",
        ADMIN,
        webhooks::log,
    )
    .add(
        M::POST,
        "/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/resend",
        ADMIN,
        webhooks::resend,
    )
}

/// Every route, in the order they were added.
pub fn route_table() -> Vec<Route> {
    table(None).list
}

pub fn router(state: AppState) -> Router {
    let api = table(Some(state.clone()))
        .router
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn(extract::json_errors))
        .layer(axum::middleware::from_fn(extract::check_uri));
    // The console answers HTML, so it sits beside the JSON error shape, not in it.
    crate::console::router().merge(api).with_state(state)
}
