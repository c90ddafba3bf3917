//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the types they take and answer, served at
//! `GET /openapi.json`.
//!
//! Two things come from the route table instead of the annotations, so they
//! cannot drift from what the router enforces: the security requirement of
//! every operation (the scope its route layer checks) and the error
//! responses (`4XX` and `503`, in the one error shape). The suite checks that
//! every route in the table is in the document with its method.

use axum::Json;
use axum::http::Method;
use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::schema::{AnyOfBuilder, Schema};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, Ref, RefOr, ResponseBuilder, SecurityRequirement, path::Operation,
};

use crate::auth::Access;
use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{
    self, admin, alerts, catalog, downloads, emails, export, health, keys, manual, notes,
    order_list, orders, payments, reports, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Courier",
        description = "Fulfilment of paid orders for stores that sell game-related digital goods: \
            accept an order, deliver every item (RCON commands, Discord roles, CD keys), read or \
            wait for its status, and work failures, refunds and disputes.",
        license(name = "Proprietary"),
    ),
    paths(
        orders::create, order_list::list, export::export, orders::get, payments::refund, payments::cancel,
        payments::accept_payment, payments::stripe, payments::generic,
        notes::list, notes::add, notes::edit, notes::delete,
        manual::deliver_item, manual::complete, manual::process, manual::process_many,
        emails::resend,
        catalog::list_game_servers, catalog::put_game_server, catalog::test_game_server,
        catalog::list_products, catalog::put_product,
        admin::retry_item, admin::list, admin::retry_bulk, admin::show, admin::retry,
        admin::discard, admin::held, admin::waiting, admin::count, admin::payment_events, admin::payment_event,
        admin::retry_delivery, admin::discard_delivery,
        keys::upload, keys::enter,
        downloads::upload, downloads::list, downloads::withdraw, downloads::order_links, downloads::serve, alerts::list, alerts::acknowledge, alerts::resolve, keys::supplier_webhook,
        health::alive, health::ready, health::metrics, document,
        reports::summary,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::delete,
        webhooks::rotate, webhooks::test, webhooks::log, webhooks::resend,
    ),
    components(schemas(ErrorBody, ErrorDetail, alerts::AlertState)),
    modifiers(&FromRouteTable),
    tags(
        (name = "orders", description = "Accept orders and read their status"),
        (name = "payments", description = "Refunds, accepted payments, stored gateway events"),
        (name = "catalog", description = "Game servers and products"),
        (name = "keys", description = "CD key stock and keys entered by hand"),
        (name = "failures", description = "Dead letters, held deliveries, alerts, retries"),
        (name = "webhooks", description = "Signed calls from gateways and suppliers"),
        (name = "webhook-endpoints", description = "Where Courier sends signed order events (Standard Webhooks), their delivery logs, resends and test events"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "reports", description = "Sales, refunds, costs and profit over a range"),
    ),
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)),
    security(()))]
/// The document itself.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Security schemes, each operation's requirement and its error responses,
/// from [`routes::route_table`].
struct FromRouteTable;

impl Modify for FromRouteTable {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`courier-api create-key`). Each operation lists the scope \
                         it needs: orders:write, orders:read, orders:keys, orders:refund or \
                         admin; a key with `admin` may call every operation.",
                    ))
                    .build(),
            ),
        );
        let header = |name: &str, what: &str| {
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(name, what)))
        };
        components.add_security_scheme(
            "stripe_signature",
            header(
                "Stripe-Signature",
                "Stripe's signature of the raw body (payments.stripe_webhook_secret)",
            ),
        );
        components.add_security_scheme(
            "standard_webhook_signature",
            header(
                "webhook-signature",
                "Standard Webhooks signature with webhook-id and webhook-timestamp \
                 (payments.generic_webhook_secret)",
            ),
        );
        components.add_security_scheme(
            "supplier_api_key",
            header(
                "X-Api-Key",
                "The supplier's API key (suppliers.<name>.api_key)",
            ),
        );
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        // The order read answers one of two shapes, and the full view also
        // has every field of the row: `anyOf`, since a full view would match
        // both branches of a `oneOf`.
        if let Some(RefOr::T(Schema::OneOf(one))) = components.schemas.get("OrderRead") {
            let mut any = AnyOfBuilder::new().description(one.description.clone());
            for item in one.items.clone() {
                any = any.item(item);
            }
            components
                .schemas
                .insert("OrderRead".into(), RefOr::T(Schema::AnyOf(any.build())));
        }
        for route in routes::route_table() {
            let Some(op) = operation(doc, &route.method, route.path) else {
                continue;
            };
            if let Access::Scope(scope) = route.access {
                op.security = Some(vec![SecurityRequirement::new("bearer", [scope])]);
            }
            let responses = &mut op.responses.responses;
            responses.entry("4XX".into()).or_insert_with(|| {
                error("Refused: the error names what is wrong (`code`, `field`)")
            });
            responses
                .entry("503".into())
                .or_insert_with(|| error("A dependency (the database) does not answer; retry"));
        }
    }
}

fn operation<'a>(
    doc: &'a mut utoipa::openapi::OpenApi,
    method: &Method,
    path: &str,
) -> Option<&'a mut Operation> {
    let item = doc.paths.paths.get_mut(path)?;
    match *method {
        Method::GET => item.get.as_mut(),
        Method::POST => item.post.as_mut(),
        Method::PUT => item.put.as_mut(),
        Method::PATCH => item.patch.as_mut(),
        Method::DELETE => item.delete.as_mut(),
        _ => None,
    }
}
