//! The admin console under `/admin`: server-rendered HTML (maud, checked
//! at compile time) for the store's staff, served by `courier-api` itself.
//!
//! It is a face on the JSON API, never a second implementation: every page
//! and action calls the same route handler (and so the same `service::`
//! function, the same validation and the same scope check) with the
//! session's API key as the caller. A read-only key sees no action buttons
//! and is refused (403) if it posts anyway.
//!
//! Security: a session cookie (see `session`), a CSRF token in every form
//! (checked before anything else; a POST whose `Origin` is another site is
//! refused too), a strict `Content-Security-Policy` (no inline script or
//! style: the one stylesheet and the one script are embedded in the binary
//! and served from `/admin/assets/` with a content hash in their URL and a
//! year's cache), `X-Frame-Options: DENY`, `Referrer-Policy: same-origin`,
//! and `Cache-Control: no-store` on pages.

pub mod catalog;
pub mod pages;
pub mod session;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::error::ApiError;
use crate::startup::AppState;
use session::{SignedOut, Staff};

const CSS: &str = include_str!("../../assets/console.css");
const JS: &str = include_str!("../../assets/console.js");

/// `name.<first 12 hex of its SHA-256>.ext`: a new build with a changed
/// asset gets a new URL, so the year-long cache is never stale.
fn asset_path(name: &str, ext: &str, body: &str) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    format!("/admin/assets/{name}.{}.{ext}", &h[..12])
}

/// The console's routes (merged beside the JSON API's, outside its JSON
/// error shape: the console answers HTML).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/orders") }))
        .route("/admin/login", get(pages::login_form).post(pages::login))
        .route("/admin/logout", post(pages::logout))
        .route("/admin/orders", get(pages::orders))
        .route("/admin/orders/process", post(pages::process_selected))
        .route(
            "/admin/orders/export",
            get(pages::export).post(pages::export_selected),
        )
        .route("/admin/orders/{reference}", get(pages::order))
        .route("/admin/orders/{reference}/status", get(pages::order_status))
        .route(
            "/admin/orders/{reference}/{action}",
            post(pages::order_action),
        )
        .route(
            "/admin/orders/{reference}/items/{item_id}/{action}",
            post(pages::item_action),
        )
        .route(
            "/admin/orders/{reference}/deliveries/{id}",
            post(pages::delivery_action),
        )
        .route("/admin/failures", get(pages::failures))
        .route(
            "/admin/failures/retry",
            get(pages::confirm_retry).post(pages::retry_matching),
        )
        .route(
            "/admin/failures/{id}/{action}",
            post(pages::dead_letter_action),
        )
        .route("/admin/alerts", get(pages::alerts))
        .route("/admin/alerts/{id}/{action}", post(pages::alert_action))
        .route("/admin/reports", get(pages::reports))
        .route("/admin/products", get(pages::products))
        .route("/admin/products/edit", get(catalog::edit_product))
        .route("/admin/products/save", post(catalog::save_product))
        .route("/admin/game-servers/edit", get(catalog::edit_server))
        .route("/admin/game-servers/save", post(catalog::save_server))
        .route("/admin/products/{sku}/keys", post(pages::add_keys))
        .route("/admin/products/{sku}/files", post(pages::upload_file))
        .route("/admin/game-servers/{name}/test", post(pages::test_server))
        .route("/admin/webhooks", get(pages::webhooks))
        .route("/admin/webhooks/edit", get(catalog::edit_endpoint))
        .route("/admin/webhooks/save", post(catalog::save_endpoint))
        .route("/admin/webhooks/{id}", get(pages::webhook_log))
        .route(
            "/admin/webhooks/{id}/rotate",
            post(catalog::rotate_endpoint),
        )
        .route(
            "/admin/webhooks/{id}/delete",
            post(catalog::delete_endpoint),
        )
        .route("/admin/webhooks/{id}/test", post(pages::webhook_test))
        .route(
            "/admin/webhooks/{id}/resend/{delivery_id}",
            post(pages::webhook_resend),
        )
        .route("/admin/assets/{file}", get(asset))
        .layer(axum::middleware::from_fn(headers))
        // The same refusal of non-text paths and queries as the API's.
        .layer(axum::middleware::from_fn(crate::extract::check_uri))
}

/// Security headers on every console answer.
async fn headers(req: Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) =
        if file == asset_path("console", "css", CSS).trim_start_matches("/admin/assets/") {
            (CSS, "text/css; charset=utf-8")
        } else if file == asset_path("console", "js", JS).trim_start_matches("/admin/assets/") {
            (JS, "text/javascript; charset=utf-8")
        } else {
            return (StatusCode::NOT_FOUND, "no such asset").into_response();
        };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// A path parameter, refused with the console's error page (an id that is
/// not one is a 400 page naming the parameter, not axum's plain text).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        crate::extract::ApiPath::<T>::from_request_parts(parts, state)
            .await
            .map(|crate::extract::ApiPath(v)| Path(v))
            .map_err(PageError::Api)
    }
}

/// What a console page can fail with.
#[derive(Debug)]
pub enum PageError {
    SignedOut(SignedOut),
    /// The API's own error, shown as a page with its status and message.
    Api(ApiError),
    /// A form without the session's CSRF token, or posted from another origin.
    Csrf,
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError::Api(e)
    }
}

impl From<courier_shared::error::DbError> for PageError {
    fn from(e: courier_shared::error::DbError) -> Self {
        PageError::Api(e.into())
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        PageError::Api(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignedOut(s) => {
                let next = percent_encoding::utf8_percent_encode(
                    &s.next,
                    percent_encoding::NON_ALPHANUMERIC,
                );
                Redirect::to(&format!("/admin/login?next={next}")).into_response()
            }
            PageError::Csrf => (
                StatusCode::FORBIDDEN,
                pages::page(bare(
                    "Refused",
                    html! { p { "This form was not sent from a page of this console (its security token is missing or wrong). Reload the page and try again." } },
                )),
            )
                .into_response(),
            PageError::Api(e) => (
                e.status,
                pages::page(bare(
                    "Error",
                    html! {
                        p.error { (e.message) }
                        p { code { (e.code) } }
                        p { a href="/admin/orders" { "Back to orders" } }
                    },
                )),
            )
                .into_response(),
        }
    }
}

/// A posted form: its fields, after the CSRF token and the `Origin` were
/// checked and every value was found to be text.
pub struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.fields
    }
}

/// Whether a POST came from this site: no `Origin` (not a browser's
/// cross-site request), or an `Origin` whose host is the request's `Host`
/// or, behind a proxy that rewrites it, its `X-Forwarded-Host`.
pub fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some((_, host)) = origin.to_str().ok().and_then(|o| o.split_once("://")) else {
        return false;
    };
    [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .any(|h| h.split(',').any(|h| h.trim() == host))
}

/// Reads a form posted by `staff`, refusing it unless it carries the
/// session's CSRF token and (when the browser says) comes from this origin.
pub async fn read_form(staff: &Staff, req: Request, state: &AppState) -> Result<Form, PageError> {
    if !same_origin(req.headers()) {
        return Err(PageError::Csrf);
    }
    let axum::Form(fields): axum::Form<Vec<(String, String)>> =
        axum::Form::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_form", e.body_text()))?;
    let form = Form { fields };
    if !session::csrf_ok(staff, form.get("csrf")) {
        return Err(PageError::Csrf);
    }
    if let Some((k, _)) = form.fields.iter().find(|(_, v)| {
        v.chars()
            .any(|c| courier_shared::domain::is_non_text(c, true))
    }) {
        return Err(ApiError::invalid(k, "contains a control character (such as NUL)").into());
    }
    Ok(form)
}

/// The `<head>` of every page; the script only where there are forms to confirm.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Courier" }
            link rel="stylesheet" href=(asset_path("console", "css", CSS));
            // No favicon request (it would be a 404).
            link rel="icon" href="data:,";
            @if script { script src=(asset_path("console", "js", JS)) defer {} }
        }
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body.bare {
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A page of the console, with its navigation and the signed-in key.
pub fn layout(staff: &Staff, title: &str, current: &str, body: Markup) -> Markup {
    let nav = [
        ("orders", "Orders", "/admin/orders"),
        ("failures", "Failures", "/admin/failures"),
        ("alerts", "Alerts", "/admin/alerts"),
        ("reports", "Reports", "/admin/reports"),
        ("products", "Products", "/admin/products"),
        ("webhooks", "Webhooks", "/admin/webhooks"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                header.top {
                    a.brand href="/admin/orders" { "Courier" }
                    nav aria-label="Main" {
                        @for (id, label, href) in nav {
                            a href=(href) aria-current=[(id == current).then_some("page")] { (label) }
                        }
                    }
                    form.signout method="post" action="/admin/logout" {
                        input type="hidden" name="csrf" value=(staff.csrf);
                        span.who { (staff.caller.name) }
                        button type="submit" { "Sign out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden CSRF field of a form.
pub fn csrf_field(staff: &Staff) -> Markup {
    html! { input type="hidden" name="csrf" value=(staff.csrf); }
}

/// A status badge, coloured by status.
pub fn badge(status: &str) -> Markup {
    html! { span class={"badge s-" (status)} { (status.replace('_', " ")) } }
}
