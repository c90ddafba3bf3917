//! The console's pages and actions. Each calls the JSON API's handler for
//! the same thing, with the session's key as the caller.

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use courier_shared::db::orders::OrderView;
use maud::{Markup, html};
use serde_json::{Value, json};
use uuid::Uuid;

use super::session::{self, Staff};
use super::{Form, PageError, Path, badge, bare, csrf_field, layout, read_form};
use crate::auth::{ADMIN, ORDERS_KEYS, ORDERS_REFUND, ORDERS_WRITE};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::routes;
use crate::startup::AppState;

pub(super) type Page = Result<Response, PageError>;

pub(super) fn page(markup: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A query string without empty fields (a form's unfilled inputs), with
/// date-only values (`<input type=date>`) as midnight UTC.
fn clean_query(uri: &Uri, drop: &[&str]) -> String {
    let Some(q) = uri.query() else {
        return String::new();
    };
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        if v.trim().is_empty() || drop.contains(&k.as_ref()) {
            continue;
        }
        let v = if k.ends_with("_from") || k.ends_with("_to") {
            if v.len() == 10 && v.as_bytes()[4] == b'-' {
                format!("{v}T00:00:00Z")
            } else {
                v.into_owned()
            }
        } else {
            v.into_owned()
        };
        out.append_pair(&k, &v);
    }
    out.finish()
}

fn parse_query<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, PageError> {
    let uri: Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "bad query"))?;
    Query::<T>::try_from_uri(&uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()).into())
}

fn value(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

pub(super) fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

// --- sign-in ---------------------------------------------------------------------

#[derive(serde::Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Only a console path may be a `next`: no open redirect.
fn safe_next(next: Option<&str>) -> &str {
    next.filter(|n| n.starts_with("/admin/") && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or("/admin/orders")
}

pub async fn login_form(Query(q): Query<NextQuery>) -> Response {
    login_page(q.next.as_deref(), None, StatusCode::OK)
}

fn login_page(next: Option<&str>, error: Option<&str>, status: StatusCode) -> Response {
    let markup = bare(
        "Sign in",
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/admin/login" {
                input type="hidden" name="next" value=(safe_next(next));
                label for="key" { "API key" }
                input id="key" name="key" type="password" autocomplete="current-password" required autofocus;
                p.hint { "An admin key, or a staff key with the scopes you need (a read-only key can look but not act)." }
                button type="submit" { "Sign in" }
            }
        },
    );
    (status, page(markup)).into_response()
}

/// `POST /admin/login`: the key becomes a session cookie. No CSRF token yet
/// (there is no session); `SameSite=Strict` and the `Origin` check guard it.
pub async fn login(State(state): State<AppState>, req: Request) -> Page {
    let headers = req.headers().clone();
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if origin
            .split_once("://")
            .is_none_or(|(_, rest)| rest != host)
        {
            return Err(PageError::Csrf);
        }
    }
    let axum::Form(fields) = <axum::Form<Vec<(String, String)>> as axum::extract::FromRequest<
        AppState,
    >>::from_request(req, &state)
    .await
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_form", e.body_text()))?;
    let get = |n: &str| {
        fields
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.trim().to_owned())
    };
    let next = get("next");
    let key = get("key").unwrap_or_default();
    if key.is_empty() || key.len() > 200 || key.chars().any(char::is_control) {
        return Ok(login_page(
            next.as_deref(),
            Some("Enter an API key."),
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    }
    match session::open(&state, &key, &headers).await? {
        Some(cookie) => {
            let mut resp = Redirect::to(safe_next(next.as_deref())).into_response();
            resp.headers_mut().insert(header::SET_COOKIE, cookie);
            Ok(resp)
        }
        None => Ok(login_page(
            next.as_deref(),
            Some("That key is unknown or revoked."),
            StatusCode::UNAUTHORIZED,
        )),
    }
}

pub async fn logout(State(state): State<AppState>, staff: Staff, req: Request) -> Page {
    read_form(&staff, req, &state).await?;
    let cookie = session::close(&state, &staff).await?;
    let mut resp = Redirect::to("/admin/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

// --- orders -------------------------------------------------------------------------

const STATUSES: &[&str] = &[
    "pending",
    "processing",
    "completed",
    "failed",
    "partially_refunded",
    "refunded",
    "cancelled",
];

pub async fn orders(State(state): State<AppState>, staff: Staff, uri: Uri) -> Page {
    let query = clean_query(&uri, &[]);
    let q: routes::order_list::ListQuery = parse_query(&query)?;
    let axum::Json(list) =
        routes::order_list::list(State(state.clone()), staff.caller.clone(), ApiQuery(q)).await?;
    let filters = clean_query(&uri, &["cursor"]);
    let field = |name: &str| value(&query, name).unwrap_or_default();
    let admin = staff.caller.has(ADMIN);
    let body = html! {
        h1 { "Orders" }
        form.filters method="get" action="/admin/orders" role="search" {
            label { "Search " input name="q" type="search" value=(field("q")) placeholder="order number, e-mail, name, player…" minlength="3"; }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s) selected[field("status") == *s] { (s.replace('_', " ")) } }
                }
            }
            label { "Payment "
                select name="payment_status" {
                    option value="" { "any" }
                    @for s in ["pending", "paid", "mismatched", "refunded", "partially_refunded", "disputed"] {
                        option value=(s) selected[field("payment_status") == s] { (s.replace('_', " ")) }
                    }
                }
            }
            label { "Needs attention "
                select name="has" {
                    option value="" { "—" }
                    @for s in ["failures", "held", "waiting"] { option value=(s) selected[field("has") == s] { (s) } }
                }
            }
            label { "Product " input name="sku" value=(field("sku")) size="10"; }
            label { "Gateway " input name="gateway" value=(field("gateway")) size="8"; }
            @for (name, label) in [("created", "Created"), ("paid", "Paid"), ("completed", "Completed")] {
                @let from = format!("{name}_from");
                @let to = format!("{name}_to");
                label { (label) " from " input name=(from) type="date" value=(field(&from).get(..10).unwrap_or_default()); }
                label { "to " input name=(to) type="date" value=(field(&to).get(..10).unwrap_or_default()); }
            }
            label { "Supplier " input name="supplier" value=(field("supplier")) size="8"; }
            label { "Game server " input name="game_server" value=(field("game_server")) size="8"; }
            label { "Total from " input name="min_total" inputmode="decimal" value=(field("min_total")) size="6"; }
            label { "to " input name="max_total" inputmode="decimal" value=(field("max_total")) size="6"; }
            label { "Currency " input name="currency" value=(field("currency")) size="3" maxlength="3"; }
            label { "Waiting to start "
                select name="process_hold" {
                    option value="" { "—" }
                    @for s in ["manual", "delayed"] { option value=(s) selected[field("process_hold") == s] { (s) } }
                }
            }
            label { "Sort "
                select name="sort" {
                    // Not by status: that sort has no index (status changes stay
                    // HOT updates), about 0.26 s over a million orders; filter
                    // by status instead (indexed, milliseconds).
                    @for s in ["created", "total", "order_number", "payment_status"] {
                        option value=(s) selected[field("sort") == s] { (s.replace('_', " ")) }
                    }
                }
            }
            label { "Order "
                select name="order" {
                    option value="desc" selected[field("order") != "asc"] { "newest / largest first" }
                    option value="asc" selected[field("order") == "asc"] { "oldest / smallest first" }
                }
            }
            button type="submit" { "Filter" }
            a href="/admin/orders" { "Clear" }
        }
        p.exports {
            "Export the filter: "
            a href={"/admin/orders/export?format=csv&" (filters)} { "CSV" } " · "
            a href={"/admin/orders/export?format=xlsx&" (filters)} { "Excel" }
        }
        form id="bulk" method="post" action="/admin/orders/process" {
            (csrf_field(&staff))
            table.orders {
                thead { tr {
                    th { span.sr { "Select" } }
                    th { "Order" } th { "Created" } th { "Customer" } th.num { "Total" }
                    th { "Status" } th { "Payment" } th { "Deliveries" }
                } }
                tbody {
                    @for o in &list.orders {
                        tr {
                            td { input type="checkbox" name="ids" value=(o.id) aria-label={"Select " (o.order_number)}; }
                            td { a href={"/admin/orders/" (o.order_number)} { (o.order_number) } }
                            td { (when(o.created_at)) }
                            td { (o.customer_name.as_deref().unwrap_or("")) br; small { (o.customer_email.as_deref().unwrap_or("")) } }
                            td.num { (o.total) " " (o.currency) }
                            td { (badge(o.status.as_str())) @if let Some(h) = &o.process_hold { " " span.badge.s-held { "waits: " (h.as_str()) } } }
                            td { (badge(o.payment_status.as_str())) }
                            td {
                                (o.deliveries.succeeded) "/" (o.deliveries.total) " done"
                                @if o.deliveries.dead > 0 { ", " span.bad { (o.deliveries.dead) " dead" } }
                                @if o.deliveries.held > 0 { ", " span.bad { (o.deliveries.held) " held" } }
                                @if o.deliveries.waiting > 0 { ", " (o.deliveries.waiting) " waiting" }
                            }
                        }
                    }
                    @if list.orders.is_empty() { tr { td colspan="8" { "No orders match." } } }
                }
            }
            p.bulk {
                @if admin {
                    button type="submit" data-confirm="Process the selected orders that are waiting?" { "Process selected" } " "
                }
                "Export the selection: "
                button type="submit" formaction="/admin/orders/export" name="format" value="csv" { "CSV" } " "
                button type="submit" formaction="/admin/orders/export" name="format" value="xlsx" { "Excel" }
            }
        }
        @if let Some(c) = &list.next_cursor {
            p { a rel="next" href={"/admin/orders?" (filters) "&cursor=" (c)} { "Next page →" } }
        }
    };
    Ok(page(layout(&staff, "Orders", "orders", body)))
}

pub async fn export(State(state): State<AppState>, staff: Staff, uri: Uri) -> Page {
    let q: routes::order_list::ListQuery = parse_query(&clean_query(&uri, &["cursor"]))?;
    Ok(routes::export::export(State(state), staff.caller.clone(), ApiQuery(q)).await?)
}

/// The ticked orders of a posted list form (at least one).
fn ticked(form: &Form) -> Result<Vec<Uuid>, PageError> {
    let ids = form
        .all("ids")
        .map(|s| Uuid::parse_str(s).map_err(|_| ApiError::invalid("ids", "not an order id")))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err(ApiError::invalid("ids", "tick at least one order").into());
    }
    Ok(ids)
}

/// `POST /admin/orders/export`: the ticked orders as CSV or Excel (the
/// API's export with its `ids` filter).
pub async fn export_selected(State(state): State<AppState>, staff: Staff, req: Request) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let ids = ticked(&form)?;
    let q = routes::order_list::ListQuery {
        format: Some(form.get("format").unwrap_or("csv").to_owned()),
        ids: Some(
            ids.iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        ..Default::default()
    };
    Ok(routes::export::export(State(state), staff.caller.clone(), ApiQuery(q)).await?)
}

pub async fn process_selected(State(state): State<AppState>, staff: Staff, req: Request) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let ids = ticked(&form)?;
    let body: routes::manual::BulkProcess = serde_json::from_value(json!({ "ids": ids }))
        .map_err(|e| ApiError::invalid("ids", e.to_string()))?;
    let axum::Json(done) = routes::manual::process_many(
        State(state),
        staff.caller.clone(),
        crate::json::ValidJson(body),
    )
    .await?;
    let reasons: Vec<String> = done
        .skipped_by_reason
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    let body = html! {
        h1 { "Process selected" }
        p.notice role="status" {
            (done.started) " of " (done.matched) " orders started"
            @if done.skipped > 0 { "; " (done.skipped) " skipped (" (reasons.join(", ")) ")" }
            "."
        }
        p { a href="/admin/orders" { "Back to orders" } }
    };
    Ok(page(layout(&staff, "Process selected", "orders", body)))
}

#[derive(serde::Deserialize)]
pub struct OrderQuery {
    done: Option<String>,
    reveal: Option<String>,
}

/// What a finished action says at the top of the order (fixed texts: a
/// link cannot put words on the page).
fn notice(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "retried" => "Retry queued: the deliveries run again.",
        "delivered" => "The item is marked delivered.",
        "completed" => "The order is marked completed.",
        "refunded" => "Refund recorded.",
        "cancelled" => "The order is cancelled.",
        "resent" => "The delivery instructions are on their way by e-mail.",
        "noted" => "Note added.",
        "processed" => "The order is processing.",
        "keyed" => "The key is entered and the item delivered.",
        "discarded" => "Delivery discarded.",
        _ => return None,
    })
}

async fn order_id(state: &AppState, reference: &str) -> Result<Uuid, PageError> {
    Ok(routes::payments::order_id(state, reference).await?)
}

pub async fn order(
    State(state): State<AppState>,
    staff: Staff,
    Path(reference): Path<String>,
    Query(q): Query<OrderQuery>,
) -> Page {
    let caller = &staff.caller;
    caller.require(crate::auth::ORDERS_READ)?;
    let id = order_id(&state, &reference).await?;
    let reveal = q.reveal.as_deref() == Some("keys");
    let o = routes::orders::full_view(&state, caller, id, reveal).await?;
    let body = order_body(&staff, &o, notice(q.done.as_deref()), reveal);
    Ok(page(layout(&staff, &o.order_number, "orders", body)))
}

/// `GET /admin/orders/{reference}/status`: the order's status for the live
/// script (JSON), held until it changes (`?wait_for=`) like the API's read.
pub async fn order_status(
    State(state): State<AppState>,
    staff: Staff,
    Path(reference): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Page {
    let q: routes::orders::GetQuery = parse_query(uri.query().unwrap_or_default())?;
    Ok(routes::orders::get(
        State(state),
        staff.caller.clone(),
        ApiPath(reference),
        ApiQuery(q),
        headers,
    )
    .await?)
}

fn order_body(staff: &Staff, o: &OrderView, notice: Option<&str>, revealed: bool) -> Markup {
    let admin = staff.caller.has(ADMIN);
    let refund = staff.caller.has(ORDERS_REFUND);
    let write = staff.caller.has(ORDERS_WRITE);
    let base = format!("/admin/orders/{}", o.order_number);
    let live = matches!(o.status.as_str(), "pending" | "processing");
    html! {
        div.order data-order=(o.id) data-status=(o.status.as_str()) data-live=[live.then_some("1")] {
            h1 { "Order " (o.order_number) " " (badge(o.status.as_str())) " " (badge(o.payment_status.as_str())) }
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            p.live-note hidden { "This order changed; " a href=(base) { "reload" } "." }
            section.summary {
                dl {
                    dt { "Customer" } dd { (o.customer.name.as_deref().unwrap_or("—")) " " (o.customer.email.as_deref().unwrap_or("")) }
                    dt { "Player" } dd { (o.game.username.as_deref().unwrap_or("—")) }
                    @if let Some(d) = &o.discord_user_id { dt { "Discord" } dd { (d) } }
                    dt { "Total" } dd { (o.total) " " (o.currency) @if !o.refunded_amount.is_zero() { " (refunded " (o.refunded_amount) ")" } }
                    dt { "Paid" } dd { (o.paid_at.map(when).unwrap_or_else(|| "—".into())) " " (o.gateway.as_deref().unwrap_or("")) " " (o.transaction_id.as_deref().unwrap_or("")) }
                    dt { "Created" } dd { (when(o.created_at)) }
                    @if let Some(issue) = &o.payment_issue { dt { "Payment issue" } dd.bad { (issue) } }
                }
            }
            section {
                h2 { "Items" }
                table {
                    thead { tr { th { "Item" } th.num { "Qty" } th.num { "Total" } th { "Delivery" } th { "Actions" } } }
                    tbody {
                        @for item in &o.items {
                            tr {
                                td { (item.product_name) " " small { (item.product) } }
                                td.num { (item.quantity) }
                                td.num { (item.total) }
                                td {
                                    (badge(item.delivery_status.as_str()))
                                    @for k in &item.keys {
                                        div.key {
                                            "Key (" (k.source) "): "
                                            @match &k.code { Some(c) => code { (c) }, None => span { "hidden" } }
                                        }
                                    }
                                }
                                td.actions {
                                    @if admin && matches!(item.delivery_status.as_str(), "failed" | "waiting") {
                                        form method="post" action={(base) "/items/" (item.id) "/retry"} {
                                            (csrf_field(staff))
                                            button type="submit" data-confirm="Retry this item's failed deliveries?" { "Retry delivery" }
                                        }
                                    }
                                    @if admin && !matches!(item.delivery_status.as_str(), "delivered" | "revoked") {
                                        details {
                                            summary { "Mark as delivered" }
                                            form method="post" action={(base) "/items/" (item.id) "/deliver"} {
                                                (csrf_field(staff))
                                                label { "Code (optional) " input name="code" maxlength="500"; }
                                                label { "Notes for the customer " textarea name="notes" rows="2" maxlength="2000" {} }
                                                button type="submit" data-confirm="Mark this item delivered? Its deliveries will not run again." { "Mark as delivered" }
                                            }
                                        }
                                    }
                                    @if admin && o.deliveries.iter().any(|d| d.item_id == Some(item.id) && d.kind.as_str() == "supplier_key" && matches!(d.status.as_str(), "dead" | "waiting")) {
                                        details {
                                            summary { "Enter key manually" }
                                            form method="post" action={(base) "/items/" (item.id) "/key"} {
                                                (csrf_field(staff))
                                                label { "Code " input name="code" required maxlength="500"; }
                                                button type="submit" { "Enter key" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if o.items.iter().any(|i| !i.keys.is_empty()) && staff.caller.has(ORDERS_KEYS) && !revealed {
                    p { a href={(base) "?reveal=keys"} data-confirm="Show the codes? Revealing them is recorded, and a revealed stock key can no longer go back to stock." { "Reveal keys" } }
                }
            }
            section {
                h2 { "Deliveries" }
                @for d in &o.deliveries {
                    article.delivery id={"d-" (d.id)} {
                        h3 { (d.kind.as_str()) " → " (d.target) " " (badge(d.status.as_str())) " " small { (d.purpose.as_str()) ", " (d.attempts) " attempts" } }
                        @if let Some(e) = &d.last_error { p.bad { (e) } }
                        @if let Some(cmd) = d.payload.get("command").and_then(Value::as_str) { p { "Command: " code { (cmd) } } }
                        @if !d.attempt_history.is_empty() {
                            table.attempts {
                                thead { tr { th { "#" } th { "Started" } th { "Worker" } th { "Outcome" } th { "Answer / error" } } }
                                tbody {
                                    @for a in &d.attempt_history {
                                        tr {
                                            td { (a.attempt) }
                                            td { (when(a.started_at)) }
                                            td { (a.worker) }
                                            td { (a.outcome.map(|x| x.as_str()).unwrap_or("running")) }
                                            td { pre { (a.response.as_deref().or(a.error.as_deref()).unwrap_or("")) } }
                                        }
                                    }
                                }
                            }
                        }
                        @if admin && matches!(d.status.as_str(), "dead" | "held") {
                            form.inline method="post" action={(base) "/deliveries/" (d.id)} {
                                (csrf_field(staff))
                                input type="hidden" name="do" value="retry";
                                button type="submit" data-confirm="Run this delivery again?" { "Retry" }
                            }
                            form.inline method="post" action={(base) "/deliveries/" (d.id)} {
                                (csrf_field(staff))
                                input type="hidden" name="do" value="discard";
                                label { "Reason " input name="reason" required maxlength="500"; }
                                button type="submit" data-confirm="Discard this delivery? It will not run." { "Discard" }
                            }
                        }
                    }
                }
            }
            @if !o.downloads.is_empty() {
                section {
                    h2 { "Download links" }
                    table {
                        thead { tr { th { "File" } th { "Downloads (by bytes sent)" } th { "Expires" } th { "State" } } }
                        tbody {
                            @for l in &o.downloads {
                                tr {
                                    td { (l.file_name) }
                                    td { (l.downloads) " started, " (l.downloads_left()) " of " (l.max_downloads) " left" }
                                    td { (when(l.expires_at)) }
                                    td {
                                        @if l.revoked_at.is_some() { span.bad { "revoked" } }
                                        @else if l.usable(chrono::Utc::now()) { "live" }
                                        @else if l.expires_at <= chrono::Utc::now() { span.bad { "expired" } }
                                        @else { span.bad { "used up" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !o.refunds.is_empty() {
                section {
                    h2 { "Refunds" }
                    ul { @for r in &o.refunds { li { (r.amount) " " (r.currency) " — " (r.reason.as_str()) " — " (r.status.as_str()) " by " (r.requested_by) ", " (when(r.created_at)) } } }
                }
            }
            @if !o.disputes.is_empty() {
                section {
                    h2 { "Disputes" }
                    ul { @for d in &o.disputes { li { (d.external_id) ": " (d.amount) " " (d.currency) ", " (d.reason) ", " (d.gateway_status) @if let Some(out) = &d.outcome { " — " (out.as_str()) } } } }
                    @if let Some(e) = &o.evidence {
                        details {
                            summary { "Evidence bundle" }
                            p { (e.proof_of_delivery.len()) " proofs of delivery, " (e.download_logs.len()) " downloads logged, " (e.timeline.len()) " timeline entries." }
                            pre { (serde_json::to_string_pretty(e).unwrap_or_default()) }
                        }
                    }
                }
            }
            @if admin || refund || write {
                section.actions {
                    h2 { "Actions" }
                    @if admin {
                        form method="post" action={(base) "/complete"} {
                            (csrf_field(staff))
                            label { "Notes " input name="notes" maxlength="2000"; }
                            button type="submit" data-confirm="Mark the whole order completed?" { "Mark as completed" }
                        }
                        form method="post" action={(base) "/resend"} {
                            (csrf_field(staff))
                            label { "New address (optional) " input name="email" type="email" maxlength="254"; }
                            button type="submit" { "Resend email" }
                        }
                        @if o.process_hold.is_some() {
                            form method="post" action={(base) "/process"} {
                                (csrf_field(staff))
                                button type="submit" { "Process now" }
                            }
                        }
                    }
                    @if refund {
                        form method="post" action={(base) "/refund"} {
                            (csrf_field(staff))
                            label { "Amount (empty: all that remains) " input name="amount" inputmode="decimal" size="8"; }
                            label { "Reason "
                                select name="reason" {
                                    option value="requested_by_customer" { "requested by customer" }
                                    option value="duplicate" { "duplicate" }
                                    option value="fraudulent" { "fraudulent" }
                                    option value="not_as_described" { "not as described" }
                                    option value="other" { "other" }
                                }
                            }
                            label { "Details " input name="reason_text" maxlength="500"; }
                            button type="submit" data-confirm="Refund this order?" { "Refund" }
                        }
                    }
                    @if write && matches!(o.status.as_str(), "pending" | "processing" | "failed") {
                        form method="post" action={(base) "/cancel"} {
                            (csrf_field(staff))
                            label { "Reason " input name="reason" maxlength="500"; }
                            button type="submit" data-confirm="Cancel this order? Its deliveries stop and what was delivered is taken back." { "Cancel order" }
                        }
                    }
                }
            }
            @if let Some(notes) = &o.notes {
                section {
                    h2 { "Notes" }
                    @for n in notes { blockquote { p { (n.body) } footer { (n.author) ", " (when(n.created_at)) } } }
                    form method="post" action={(base) "/notes"} {
                        (csrf_field(staff))
                        label for="note" { "Add a note" }
                        textarea id="note" name="body" rows="3" required maxlength="10000" {}
                        button type="submit" { "Add note" }
                    }
                }
            }
            section {
                h2 { "Timeline" }
                ol.timeline {
                    @for e in o.timeline.iter().rev() {
                        li { time { (when(e.at)) } " " strong { (e.kind) } " " (e.message) " " small { (e.actor) } }
                    }
                }
            }
        }
    }
}

/// Calls an API handler that takes a JSON body, with `body` as that JSON.
fn json_parts(body: Value) -> (HeaderMap, axum::body::Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (headers, axum::body::Bytes::from(body.to_string()))
}

pub(super) fn typed<T: serde::de::DeserializeOwned>(
    body: Value,
) -> Result<crate::json::ValidJson<T>, PageError> {
    serde_json::from_value(body)
        .map(crate::json::ValidJson)
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                e.to_string(),
            )
            .into()
        })
}

fn opt(form: &Form, name: &str) -> Value {
    form.get(name)
        .map_or(Value::Null, |v| Value::String(v.to_owned()))
}

fn back(reference: &str, done: &str) -> Response {
    Redirect::to(&format!("/admin/orders/{reference}?done={done}")).into_response()
}

/// `POST /admin/orders/{reference}/{action}`.
pub async fn order_action(
    State(state): State<AppState>,
    staff: Staff,
    Path((reference, action)): Path<(String, String)>,
    req: Request,
) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let caller = staff.caller.clone();
    let st = || State(state.clone());
    let path = || ApiPath(reference.clone());
    let done = match action.as_str() {
        "complete" => {
            let (h, b) = json_parts(json!({ "notes": opt(&form, "notes") }));
            let _ = routes::manual::complete(st(), caller, path(), h, b).await?;
            "completed"
        }
        "resend" => {
            let body = match form.get("email") {
                Some(e) => json!({ "email": e }),
                None => json!({}),
            };
            let (h, b) = json_parts(body);
            let _ = routes::emails::resend(st(), caller, path(), h, b).await?;
            "resent"
        }
        "process" => {
            let _ = routes::manual::process(st(), caller, path()).await?;
            "processed"
        }
        "refund" => {
            let body = typed(json!({
                "amount": opt(&form, "amount"),
                "reason": form.get("reason").unwrap_or("requested_by_customer"),
                "reason_text": opt(&form, "reason_text"),
            }))?;
            let _ = routes::payments::refund(st(), caller, path(), HeaderMap::new(), body).await?;
            "refunded"
        }
        "cancel" => {
            let (h, b) = json_parts(json!({ "reason": opt(&form, "reason") }));
            let _ = routes::payments::cancel(st(), caller, path(), h, b).await?;
            "cancelled"
        }
        "notes" => {
            let body = typed(json!({ "body": form.get("body").unwrap_or_default() }))?;
            let _ = routes::notes::add(st(), caller, path(), body).await?;
            "noted"
        }
        _ => return Err(ApiError::not_found("action").into()),
    };
    Ok(back(&reference, done))
}

/// `POST /admin/orders/{reference}/items/{item_id}/{action}`, and the
/// deliveries' retry and discard (`/deliveries/{id}` with `do`).
pub async fn item_action(
    State(state): State<AppState>,
    staff: Staff,
    Path((reference, item_id, action)): Path<(String, Uuid, String)>,
    req: Request,
) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let caller = staff.caller.clone();
    let done = match action.as_str() {
        "retry" => {
            let id = order_id(&state, &reference).await?;
            let _ = routes::admin::retry_item(State(state.clone()), caller, ApiPath((id, item_id)))
                .await?;
            "retried"
        }
        "deliver" => {
            let (h, b) =
                json_parts(json!({ "code": opt(&form, "code"), "notes": opt(&form, "notes") }));
            let _ = routes::manual::deliver_item(
                State(state.clone()),
                caller,
                ApiPath((reference.clone(), item_id)),
                h,
                b,
            )
            .await?;
            "delivered"
        }
        "key" => {
            let body = typed(json!({ "code": form.get("code").unwrap_or_default() }))?;
            let _ =
                routes::keys::enter(State(state.clone()), caller, ApiPath(item_id), body).await?;
            "keyed"
        }
        _ => return Err(ApiError::not_found("action").into()),
    };
    Ok(back(&reference, done))
}

/// `POST /admin/orders/{reference}/deliveries/{id}`: `do` = `retry` or `discard`.
pub async fn delivery_action(
    State(state): State<AppState>,
    staff: Staff,
    Path((reference, id)): Path<(String, Uuid)>,
    req: Request,
) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let caller = staff.caller.clone();
    let done = match form.get("do") {
        Some("retry") => {
            let _ =
                routes::admin::retry_delivery(State(state.clone()), caller, ApiPath(id)).await?;
            "retried"
        }
        Some("discard") => {
            let body = typed(json!({ "reason": form.get("reason").unwrap_or_default() }))?;
            let _ =
                routes::admin::discard_delivery(State(state.clone()), caller, ApiPath(id), body)
                    .await?;
            "discarded"
        }
        _ => return Err(ApiError::invalid("do", "retry or discard").into()),
    };
    Ok(back(&reference, done))
}

// --- failures --------------------------------------------------------------------------

pub async fn failures(State(state): State<AppState>, staff: Staff, uri: Uri) -> Page {
    let query = clean_query(&uri, &["done"]);
    let q: routes::admin::ListQuery = parse_query(&query)?;
    let axum::Json(list) =
        routes::admin::list(State(state.clone()), staff.caller.clone(), ApiQuery(q)).await?;
    let field = |name: &str| value(&query, name).unwrap_or_default();
    let filters = clean_query(&uri, &["cursor", "done"]);
    let done = value(uri.query().unwrap_or_default(), "done");
    let axum::Json(held) = routes::admin::held(
        State(state.clone()),
        staff.caller.clone(),
        ApiQuery(routes::admin::PageQuery {
            limit: Some(100),
            cursor: None,
        }),
    )
    .await?;
    let axum::Json(waiting) = routes::admin::waiting(
        State(state.clone()),
        staff.caller.clone(),
        ApiQuery(routes::admin::PageQuery {
            limit: Some(100),
            cursor: None,
        }),
    )
    .await?;
    let body = html! {
        h1 { "Failures" }
        @if let Some(d) = done.as_deref().and_then(|d| match d { "retried" => Some("Retry queued."), "discarded" => Some("Discarded."), _ => None }) {
            p.notice role="status" { (d) }
        }
        form.filters method="get" action="/admin/failures" {
            label { "Kind "
                select name="kind" {
                    option value="" { "any" }
                    @for k in ["rcon", "discord_role", "supplier_key", "gateway_refund", "webhook", "email", "alert", "download"] {
                        option value=(k) selected[field("kind") == k] { (k) }
                    }
                }
            }
            label { "Target " input name="target" value=(field("target")) size="12"; }
            label { "Error contains " input name="error" value=(field("error")) size="16"; }
            button type="submit" { "Filter" }
            a href="/admin/failures" { "Clear" }
        }
        @if !list.dead_letters.is_empty() {
            // A GET to a page that counts them all first and asks.
            form method="get" action="/admin/failures/retry" {
                @for (k, v) in url::form_urlencoded::parse(filters.as_bytes()) { input type="hidden" name=(k) value=(v); }
                button type="submit" { "Retry all matching…" }
            }
        }
        table {
            thead { tr { th { "When" } th { "Order" } th { "Kind" } th { "Target" } th { "Reason" } th { "Actions" } } }
            tbody {
                @for d in &list.dead_letters {
                    tr {
                        td { (when(d.created_at)) }
                        td { @if let Some(n) = &d.order_number { a href={"/admin/orders/" (n)} { (n) } } }
                        td { (d.kind.as_deref().unwrap_or("")) }
                        td { (d.target.as_deref().unwrap_or("")) }
                        td { (d.reason) }
                        td.actions {
                            form.inline method="post" action={"/admin/failures/" (d.id) "/retry"} {
                                (csrf_field(&staff))
                                button type="submit" { "Retry" }
                            }
                            form.inline method="post" action={"/admin/failures/" (d.id) "/discard"} {
                                (csrf_field(&staff))
                                label { "Reason " input name="reason" required maxlength="500" size="12"; }
                                button type="submit" data-confirm="Discard this dead letter? Its delivery will not run." { "Discard" }
                            }
                        }
                    }
                }
                @if list.dead_letters.is_empty() { tr { td colspan="6" { "No open dead letters." } } }
            }
        }
        @if let Some(c) = &list.next_cursor {
            p { a rel="next" href={"/admin/failures?" (filters) "&cursor=" (c)} { "Next page →" } }
        }
        h2 { "Waiting deliveries" }
        p.hint { "They wait for something outside Courier (a player to come online, a supplier's stock) and are checked again on their own, without using up attempts. "
            a href="/admin/orders?has=waiting" { "Their orders" } }
        table {
            thead { tr { th { "Waiting since" } th { "Order" } th { "Kind" } th { "Target" } th { "Why (the last check)" } th { "Next check" } } }
            tbody {
                @for w in &waiting.waiting {
                    tr {
                        td { (w.waiting_since.map(when).unwrap_or_default()) }
                        td { a href={"/admin/orders/" (w.order_number)} { (w.order_number) } }
                        td { (w.kind) }
                        td { (w.target) }
                        td { (w.reason.as_deref().unwrap_or("")) " (" (w.attempts) " checks)" }
                        td { (w.next_check_at.map(when).unwrap_or_default()) }
                    }
                }
                @if waiting.waiting.is_empty() { tr { td colspan="6" { "Nothing is waiting." } } }
            }
        }
        @if waiting.next_cursor.is_some() { p.hint { "The first 100 are shown." } }
        h2 { "Held deliveries" }
        p.hint { "A worker stopped while the command may have reached the game server: run it again only if it did not arrive; discard it if it did." }
        table {
            thead { tr { th { "Held since" } th { "Order" } th { "Kind" } th { "Target" } th { "What is known" } th { "Actions" } } }
            tbody {
                @for d in &held.held {
                    tr {
                        td { (when(d.held_since)) }
                        td { a href={"/admin/orders/" (d.order_number)} { (d.order_number) } }
                        td { (d.kind) }
                        td { (d.target) }
                        td { (d.reason.as_deref().unwrap_or("")) " (" (d.attempts) " attempts)"
                             @if let Some(c) = d.payload.get("command").and_then(Value::as_str) { br; code { (c) } } }
                        td.actions {
                            form.inline method="post" action={"/admin/orders/" (d.order_number) "/deliveries/" (d.delivery_id)} {
                                (csrf_field(&staff))
                                input type="hidden" name="do" value="retry";
                                button type="submit" data-confirm="Run it again? Only if it did not arrive." { "Retry" }
                            }
                            form.inline method="post" action={"/admin/orders/" (d.order_number) "/deliveries/" (d.delivery_id)} {
                                (csrf_field(&staff))
                                input type="hidden" name="do" value="discard";
                                label { "Reason " input name="reason" required maxlength="500" size="12"; }
                                button type="submit" { "Discard" }
                            }
                        }
                    }
                }
                @if held.held.is_empty() { tr { td colspan="6" { "Nothing is held." } } }
            }
        }
    };
    Ok(page(layout(&staff, "Failures", "failures", body)))
}

/// `GET /admin/failures/retry?…filter`: how many open dead letters the
/// filter matches, counted now, and a button to retry exactly those (the
/// count's instant becomes the retry's `older_than`, so a dead letter that
/// arrives after the count is not swept in).
pub async fn confirm_retry(State(state): State<AppState>, staff: Staff, uri: Uri) -> Page {
    let query = clean_query(&uri, &["cursor", "done", "limit"]);
    let q: courier_shared::db::dead_letters::Filter = parse_query(&query)?;
    let user_older = q.older_than;
    let axum::Json(count) =
        routes::admin::count(State(state), staff.caller.clone(), ApiQuery(q)).await?;
    let older = user_older.map_or(count.as_of, |t| t.min(count.as_of));
    let body = html! {
        h1 { "Retry all matching" }
        @if count.matched == 0 {
            p { "No open dead letter matches this filter now." }
        } @else {
            p.notice role="status" { strong { (count.matched) } " open dead letters match this filter (counted " (when(count.as_of)) ")." }
            form method="post" action="/admin/failures/retry" {
                (csrf_field(&staff))
                @for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                    @if k != "older_than" { input type="hidden" name=(k) value=(v); }
                }
                input type="hidden" name="older_than" value=(older.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
                button type="submit" { "Retry these " (count.matched) }
            }
        }
        p { a href={"/admin/failures?" (query)} { "Back to failures" } }
    };
    Ok(page(layout(&staff, "Retry all matching", "failures", body)))
}

/// `POST /admin/failures/retry`: the API's bulk retry, and what it did.
pub async fn retry_matching(State(state): State<AppState>, staff: Staff, req: Request) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let mut filter = serde_json::Map::new();
    for (k, v) in form.pairs() {
        if k == "include_resolved" {
            filter.insert(k.clone(), Value::Bool(v == "true"));
        } else if k != "csrf" && !v.trim().is_empty() {
            filter.insert(k.clone(), Value::String(v.clone()));
        }
    }
    let body = typed(Value::Object(filter))?;
    let axum::Json(done) =
        routes::admin::retry_bulk(State(state), staff.caller.clone(), body).await?;
    let body = html! {
        h1 { "Retry all matching" }
        p.notice role="status" { (done.requeued) " of " (done.matched) " re-queued." }
        @if !done.skipped.is_empty() {
            p { (done.skipped.len()) " skipped:" }
            ul { @for (id, why) in &done.skipped { li { "dead letter " (id) ": " (why) } } }
        }
        p { a href="/admin/failures" { "Back to failures" } }
    };
    Ok(page(layout(&staff, "Retry all matching", "failures", body)))
}

pub async fn dead_letter_action(
    State(state): State<AppState>,
    staff: Staff,
    Path((id, action)): Path<(i64, String)>,
    req: Request,
) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let caller = staff.caller.clone();
    match action.as_str() {
        "retry" => {
            let _ = routes::admin::retry(State(state), caller, ApiPath(id)).await?;
            Ok(Redirect::to("/admin/failures?done=retried").into_response())
        }
        "discard" => {
            let body = typed(json!({ "reason": form.get("reason").unwrap_or_default() }))?;
            let _ = routes::admin::discard(State(state), caller, ApiPath(id), body).await?;
            Ok(Redirect::to("/admin/failures?done=discarded").into_response())
        }
        _ => Err(ApiError::not_found("action").into()),
    }
}

// --- alerts ------------------------------------------------------------------------------

pub async fn alerts(State(state): State<AppState>, staff: Staff, uri: Uri) -> Page {
    let query = clean_query(&uri, &["done"]);
    let q: routes::alerts::AlertQuery = parse_query(&query)?;
    let axum::Json(list) =
        routes::alerts::list(State(state.clone()), staff.caller.clone(), ApiQuery(q)).await?;
    let shown = value(&query, "state").unwrap_or_else(|| "open".into());
    let filters = clean_query(&uri, &["cursor", "done"]);
    let body = html! {
        h1 { "Alerts" }
        @if value(uri.query().unwrap_or_default(), "done").is_some() { p.notice role="status" { "Done." } }
        nav.tabs aria-label="Alert state" {
            @for s in ["open", "acknowledged", "resolved", "all"] {
                a href={"/admin/alerts?state=" (s)} aria-current=[(shown == s).then_some("page")] { (s) }
            }
        }
        table {
            thead { tr { th { "When" } th { "Kind" } th { "Message" } th { "State" } th { "Actions" } } }
            tbody {
                @for a in &list.alerts {
                    tr {
                        td { (when(a.created_at)) }
                        td { (badge(&a.kind)) }
                        td { (a.message) }
                        td {
                            @if let Some(at) = a.resolved_at { "resolved " (when(at)) " by " (a.resolved_by.as_deref().unwrap_or("?")) }
                            @else if let Some(at) = a.acknowledged_at { "acknowledged " (when(at)) " by " (a.acknowledged_by.as_deref().unwrap_or("?")) }
                            @else { "open" }
                            @if a.notified_at.is_some() { br; small { "sent to the alert channels" } }
                        }
                        td.actions {
                            @if a.acknowledged_at.is_none() {
                                form.inline method="post" action={"/admin/alerts/" (a.id) "/acknowledge"} {
                                    (csrf_field(&staff))
                                    button type="submit" { "Acknowledge" }
                                }
                            }
                            @if a.resolved_at.is_none() {
                                form.inline method="post" action={"/admin/alerts/" (a.id) "/resolve"} {
                                    (csrf_field(&staff))
                                    button type="submit" { "Resolve" }
                                }
                            }
                        }
                    }
                }
                @if list.alerts.is_empty() { tr { td colspan="5" { "No alerts here." } } }
            }
        }
        @if let Some(c) = &list.next_cursor {
            p { a rel="next" href={"/admin/alerts?" (filters) "&cursor=" (c)} { "Next page →" } }
        }
    };
    Ok(page(layout(&staff, "Alerts", "alerts", body)))
}

pub async fn alert_action(
    State(state): State<AppState>,
    staff: Staff,
    Path((id, action)): Path<(i64, String)>,
    req: Request,
) -> Page {
    read_form(&staff, req, &state).await?;
    let caller = staff.caller.clone();
    match action.as_str() {
        "acknowledge" => {
            let _ = routes::alerts::acknowledge(State(state), caller, ApiPath(id)).await?;
        }
        "resolve" => {
            let _ = routes::alerts::resolve(State(state), caller, ApiPath(id)).await?;
        }
        _ => return Err(ApiError::not_found("action").into()),
    }
    Ok(Redirect::to("/admin/alerts?done=1").into_response())
}

// --- reports -----------------------------------------------------------------------------

/// Revenue and profit per group as an inline SVG bar chart (one currency),
/// drawn on the server: no script, no external image.
fn chart(rows: &[routes::reports::SummaryRow], currency: &str) -> Markup {
    use rust_decimal::prelude::ToPrimitive;
    let rows: Vec<_> = rows
        .iter()
        .filter(|r| r.figures.currency == currency)
        .collect();
    let top = rows
        .iter()
        .flat_map(|r| [r.figures.revenue, r.figures.profit])
        .filter_map(|d| d.to_f64())
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let (w, h, pad) = (720.0_f64, 220.0_f64, 30.0_f64);
    let step = if rows.is_empty() {
        w
    } else {
        (w - pad) / rows.len() as f64
    };
    let bar = (step / 2.5).clamp(1.0, 28.0);
    let y = |v: f64| h - pad - (v.max(0.0) / top) * (h - 2.0 * pad);
    html! {
        figure.chart {
            svg viewBox={"0 0 " (w) " " (h)} role="img" aria-label={"Revenue and profit in " (currency)} {
                line x1=(pad) y1=(h - pad) x2=(w) y2=(h - pad) stroke="#9aa3b2" {}
                text x="0" y=(pad - 8.0) font-size="11" fill="#5b6575" { (format!("{top:.0}")) " " (currency) }
                @for (i, r) in rows.iter().enumerate() {
                    @let x = pad + i as f64 * step + step / 2.0;
                    @let rev = r.figures.revenue.to_f64().unwrap_or(0.0);
                    @let pro = r.figures.profit.to_f64().unwrap_or(0.0);
                    rect x=(x - bar) y=(y(rev)) width=(bar) height=(h - pad - y(rev)) fill="#2457c5" {
                        title { (r.group) ": revenue " (r.figures.revenue) " " (currency) }
                    }
                    rect x=(x) y=(y(pro)) width=(bar) height=(h - pad - y(pro)) fill="#137333" {
                        title { (r.group) ": profit " (r.figures.profit) " " (currency) }
                    }
                    @if rows.len() <= 16 || i % (rows.len() / 8).max(1) == 0 {
                        text x=(x) y=(h - 10.0) font-size="10" text-anchor="middle" fill="#5b6575" { (r.group.get(..10).unwrap_or(&r.group)) }
                    }
                }
            }
            figcaption { span.key-rev { "■" } " revenue " span.key-pro { "■" } " profit (" (currency) ")" }
        }
    }
}

/// A margin (a fraction) as `45.0%`.
fn percent(m: Option<rust_decimal::Decimal>) -> String {
    m.map_or_else(
        || "—".into(),
        |m| format!("{}%", (m * rust_decimal::Decimal::from(100)).round_dp(1)),
    )
}

pub async fn reports(State(state): State<AppState>, staff: Staff, uri: Uri) -> Page {
    let query = clean_query(&uri, &[]);
    let q: routes::reports::SummaryQuery = parse_query(&query)?;
    let axum::Json(report) =
        routes::reports::summary(State(state.clone()), staff.caller.clone(), ApiQuery(q)).await?;
    let field = |name: &str| value(&query, name).unwrap_or_default();
    let body = html! {
        h1 { "Reports" }
        form.filters method="get" action="/admin/reports" {
            label { "From " input name="from" type="date" value=(report.from.format("%Y-%m-%d").to_string()); }
            label { "To " input name="to" type="date" value=(report.to.format("%Y-%m-%d").to_string()); }
            label { "Group by "
                select name="group_by" {
                    @for g in ["day", "week", "month", "product", "supplier", "gateway", "currency"] {
                        option value=(g) selected[report.group_by == g || (field("group_by").is_empty() && g == "day")] { (g) }
                    }
                }
            }
            button type="submit" { "Show" }
        }
        @for t in &report.totals { (chart(&report.rows, &t.currency)) }
        table {
            thead { tr {
                th { (report.group_by) } th { "Currency" } th.num { "Orders" } th.num { "Revenue" } th.num { "Refunds" }
                th.num { "Disputes lost" } th.num { "Cost" } th.num { "Profit" } th.num { "Margin" }
            } }
            tbody {
                @for r in &report.rows {
                    tr {
                        td { (r.group) @if let Some(n) = &r.product_name { " " small { (n) } } }
                        td { (r.figures.currency) }
                        td.num { (r.figures.orders) }
                        td.num { (r.figures.revenue) }
                        td.num { (r.figures.refunds) }
                        td.num { (r.figures.disputes_lost) }
                        td.num { (r.figures.cost) }
                        td.num { (r.figures.profit) }
                        td.num { (percent(r.figures.margin)) }
                    }
                }
                @for t in &report.totals {
                    tr.total {
                        td { strong { "Total" } } td { (t.currency) } td.num { (t.orders) } td.num { (t.revenue) }
                        td.num { (t.refunds) } td.num { (t.disputes_lost) } td.num { (t.cost) } td.num { strong { (t.profit) } }
                        td.num { (percent(t.margin)) }
                    }
                }
                @if report.rows.is_empty() { tr { td colspan="9" { "No paid orders in this range." } } }
            }
        }
    };
    Ok(page(layout(&staff, "Reports", "reports", body)))
}

// --- catalog -------------------------------------------------------------------------------

fn action_summary(
    a: &courier_shared::domain::action::ActionConfig,
    servers: &[courier_shared::db::catalog::GameServer],
) -> String {
    use courier_shared::domain::action::ActionConfig as A;
    match a {
        A::Rcon {
            game_server_id,
            command,
            ..
        } => {
            let server = servers
                .iter()
                .find(|s| s.id == *game_server_id)
                .map_or("?", |s| s.name.as_str());
            format!("RCON on {server}: {command}")
        }
        A::DiscordRole { guild_id, role_id } => {
            format!("Discord role {role_id} in guild {guild_id}")
        }
        A::SupplierKey {
            candidates,
            stock_only,
            ..
        } => {
            if *stock_only {
                "CD key from own stock".into()
            } else {
                let names: Vec<&str> = candidates.iter().map(|c| c.supplier.as_str()).collect();
                format!("CD key: own stock, then {}", names.join(", "))
            }
        }
        A::Download { .. } => "Download links to the product's files".into(),
    }
}

pub async fn products(State(state): State<AppState>, staff: Staff, uri: Uri) -> Page {
    let axum::Json(products) =
        routes::catalog::list_products(State(state.clone()), staff.caller.clone()).await?;
    let axum::Json(servers) =
        routes::catalog::list_game_servers(State(state.clone()), staff.caller.clone()).await?;
    // The list gave each product's id: its stock and files are read by it,
    // on one connection (not a product lookup by SKU per product).
    let mut conn = state.pool.acquire().await?;
    let mut rows = Vec::with_capacity(products.len());
    for p in &products {
        let keys = p.actions.iter().any(|a| {
            matches!(
                a.config,
                courier_shared::domain::action::ActionConfig::SupplierKey { .. }
            )
        });
        let files = p.actions.iter().any(|a| {
            matches!(
                a.config,
                courier_shared::domain::action::ActionConfig::Download { .. }
            )
        });
        let stock = if keys {
            Some(courier_shared::db::keys::stock_left(&mut conn, p.id).await?)
        } else {
            None
        };
        let file_list = if files {
            courier_shared::db::downloads::files_of(&mut conn, p.id).await?
        } else {
            Vec::new()
        };
        rows.push((p, stock, files, file_list));
    }
    let done = value(uri.query().unwrap_or_default(), "done");
    let body = html! {
        h1 { "Products" }
        @if let Some(d) = done.as_deref().and_then(|d| match d { "keys" => Some("Keys added to stock."), "file" => Some("File uploaded."), "saved" => Some("Product saved."), "server" => Some("Game server saved."), _ => None }) {
            p.notice role="status" { (d) }
        }
        p { a.button href="/admin/products/edit" { "New product" } " " a.button href="/admin/game-servers/edit" { "New game server" } }
        @for (p, stock, files, file_list) in &rows {
            section.product id={"p-" (p.sku)} {
                h2 { (p.name) " " small { (p.sku) } }
                p { a href={"/admin/products/edit?sku=" (p.sku)} { "Edit " (p.name) } }
                @if p.actions.is_empty() { p { "No actions: fulfilled by hand." } }
                ul { @for a in &p.actions { li { (action_summary(&a.config, &servers)) } } }
                @if let Some(n) = stock {
                    p { "Stock: " strong { (n) } " keys available" }
                    details {
                        summary { "Add keys" }
                        form method="post" action={"/admin/products/" (p.sku) "/keys"} {
                            (csrf_field(&staff))
                            label { "One code per line " textarea name="codes" rows="4" required {} }
                            button type="submit" { "Add to stock" }
                        }
                    }
                }
                @if *files {
                    p { "Files:" }
                    ul {
                        @for f in file_list { li { (f.name) " — " (f.size_bytes) " bytes, SHA-256 " code { (f.sha256.get(..12).unwrap_or_default()) "…" } } }
                        @if file_list.is_empty() { li.bad { "none yet: orders will fail until a file is uploaded" } }
                    }
                    form.upload data-sku=(p.sku) {
                        (csrf_field(&staff))
                        label { "Upload a file " input type="file" name="file" required; }
                        button type="submit" { "Upload" }
                        span.progress role="status" {}
                    }
                }
            }
        }
        h2 id="game-servers" { "Game servers" }
        table {
            thead { tr { th { "Name" } th { "Address" } th { "Dialect" } th { "Connections" } th { "" } } }
            tbody {
                @for s in &servers {
                    tr {
                        td { (s.name) } td { (s.host) ":" (s.port) } td { (format!("{:?}", s.dialect).to_lowercase()) } td { (s.max_connections) }
                        td.actions {
                            a href={"/admin/game-servers/edit?name=" (s.name)} { "Edit" } " "
                            form.inline method="post" action={"/admin/game-servers/" (s.name) "/test"} {
                                (csrf_field(&staff))
                                button type="submit" { "Test connection" }
                            }
                        }
                    }
                }
                @if servers.is_empty() { tr { td colspan="5" { "None." } } }
            }
        }
    };
    Ok(page(layout(&staff, "Products", "products", body)))
}

/// `POST /admin/products/{sku}/keys`: codes from a textarea, to stock.
pub async fn add_keys(
    State(state): State<AppState>,
    staff: Staff,
    Path(sku): Path<String>,
    req: Request,
) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
    let body = axum::body::Bytes::from(form.get("codes").unwrap_or_default().to_owned());
    let _ = routes::keys::upload(
        State(state),
        staff.caller.clone(),
        ApiPath(sku),
        headers,
        body,
    )
    .await?;
    Ok(Redirect::to("/admin/products?done=keys").into_response())
}

/// `POST /admin/products/{sku}/files?name=…`: the raw file, sent by the
/// page's script (a browser form would send multipart); the CSRF token
/// travels in an `X-CSRF-Token` header, as the body is the file.
pub async fn upload_file(
    State(state): State<AppState>,
    staff: Staff,
    Path(sku): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Page {
    let token = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if !session::csrf_ok(&staff, token) {
        return Err(PageError::Csrf);
    }
    let q = parse_query(&clean_query(&uri, &[]))?;
    let resp = routes::downloads::upload(
        State(state),
        staff.caller.clone(),
        ApiPath(sku),
        ApiQuery(q),
        headers,
        body,
    )
    .await?;
    Ok(resp)
}

/// `POST /admin/game-servers/{name}/test`: the API's connection test, shown.
pub async fn test_server(
    State(state): State<AppState>,
    staff: Staff,
    Path(name): Path<String>,
    req: Request,
) -> Page {
    read_form(&staff, req, &state).await?;
    let axum::Json(t) = routes::catalog::test_game_server(
        State(state),
        staff.caller.clone(),
        ApiPath(name.clone()),
    )
    .await?;
    let body = html! {
        h1 { "Test connection: " (name) }
        @if t.ok {
            p.notice role="status" { "Connected, logged in and ran " code { (t.command) } " in " (t.latency_ms) " ms." }
            pre { (t.response.as_deref().unwrap_or("")) }
        } @else {
            p.error role="alert" { "The test failed after " (t.latency_ms) " ms: " (t.error.as_deref().unwrap_or("unknown error")) }
        }
        p { a href="/admin/products" { "Back to products" } }
    };
    Ok(page(layout(&staff, "Test connection", "products", body)))
}

// --- webhook endpoints -------------------------------------------------------------------

pub async fn webhooks(State(state): State<AppState>, staff: Staff, uri: Uri) -> Page {
    let overlap = state.webhooks.secret_overlap_hours;
    let axum::Json(list) = routes::webhooks::list(State(state), staff.caller.clone()).await?;
    let done = value(uri.query().unwrap_or_default(), "done");
    let body = html! {
        h1 { "Webhook endpoints" }
        @if let Some(d) = done.as_deref().and_then(|d| match d { "saved" => Some("Endpoint saved."), "deleted" => Some("Endpoint deleted; its messages not yet sent are cancelled."), _ => None }) {
            p.notice role="status" { (d) }
        }
        p { a.button href="/admin/webhooks/edit" { "New endpoint" } }
        table {
            thead { tr { th { "URL" } th { "Events" } th { "State" } th { "" } } }
            tbody {
                @for e in &list.endpoints {
                    tr {
                        td { (e.url) br; small { (e.description) } }
                        td { (e.events.join(", ")) }
                        td {
                            @if e.enabled { (badge("succeeded")) " enabled" } @else { (badge("dead")) " disabled" }
                            @if let Some(r) = &e.disabled_reason { br; small.bad { (r) } }
                            @if let Some(f) = e.failing_since { br; small.bad { "failing since " (when(f)) } }
                        }
                        td.actions {
                            a href={"/admin/webhooks/" (e.id)} { "Delivery log" } " · "
                            a href={"/admin/webhooks/edit?id=" (e.id)} { "Edit" }
                            form.inline method="post" action={"/admin/webhooks/" (e.id) "/rotate"} {
                                (csrf_field(&staff))
                                label { "Old secret signs on (hours) " input name="overlap_hours" inputmode="numeric" size="3" placeholder=(overlap); }
                                button type="submit" data-confirm="Rotate the signing secret? Receivers need the new one before the overlap ends." { "Rotate secret" }
                            }
                            form.inline method="post" action={"/admin/webhooks/" (e.id) "/delete"} {
                                (csrf_field(&staff))
                                button type="submit" data-confirm="Delete this endpoint? Its messages not yet sent are cancelled." { "Delete" }
                            }
                        }
                    }
                }
                @if list.endpoints.is_empty() { tr { td colspan="4" { "No endpoints." } } }
            }
        }
    };
    Ok(page(layout(&staff, "Webhook endpoints", "webhooks", body)))
}

pub async fn webhook_log(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<Uuid>,
    uri: Uri,
) -> Page {
    let axum::Json(endpoint) =
        routes::webhooks::get(State(state.clone()), staff.caller.clone(), ApiPath(id)).await?;
    let axum::Json(log) = routes::webhooks::log(
        State(state),
        staff.caller.clone(),
        ApiPath(id),
        ApiQuery(routes::webhooks::LogQuery { limit: Some(100) }),
    )
    .await?;
    let done = value(uri.query().unwrap_or_default(), "done").is_some();
    let body = html! {
        h1 { "Delivery log" }
        p { code { (endpoint.url) } " — " (endpoint.events.join(", ")) }
        @if done { p.notice role="status" { "Queued." } }
        form.inline method="post" action={"/admin/webhooks/" (id) "/test"} {
            (csrf_field(&staff))
            button type="submit" { "Send test event" }
        }
        @for d in &log.deliveries {
            article.delivery {
                h3 { (d.event) " " (badge(d.status.as_str())) " " small { (when(d.created_at)) " · " code { (d.message_id) } } }
                @if let Some(e) = &d.last_error { p.bad { (e) } }
                table.attempts {
                    thead { tr { th { "#" } th { "Started" } th { "Status" } th { "Latency" } th { "Answer / error" } } }
                    tbody {
                        @for a in &d.attempts {
                            tr {
                                td { (a.attempt) }
                                td { (when(a.started_at)) }
                                td { (a.status_code.map(|c| c.to_string()).unwrap_or_else(|| "—".into())) }
                                td { (a.latency_ms.map(|l| format!("{l} ms")).unwrap_or_default()) }
                                td { pre { (a.response.as_deref().or(a.error.as_deref()).unwrap_or("")) } }
                            }
                        }
                    }
                }
                form.inline method="post" action={"/admin/webhooks/" (id) "/resend/" (d.id)} {
                    (csrf_field(&staff))
                    button type="submit" { "Resend" }
                }
                details { summary { "Body" } pre { (serde_json::to_string_pretty(&d.body).unwrap_or_default()) } }
            }
        }
        @if log.deliveries.is_empty() { p { "Nothing sent yet." } }
    };
    Ok(page(layout(&staff, "Delivery log", "webhooks", body)))
}

pub async fn webhook_test(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<Uuid>,
    req: Request,
) -> Page {
    read_form(&staff, req, &state).await?;
    let body = typed(json!({}))?;
    let _ = routes::webhooks::test(State(state), staff.caller.clone(), ApiPath(id), body).await?;
    Ok(Redirect::to(&format!("/admin/webhooks/{id}?done=1")).into_response())
}

pub async fn webhook_resend(
    State(state): State<AppState>,
    staff: Staff,
    Path((id, delivery)): Path<(Uuid, Uuid)>,
    req: Request,
) -> Page {
    read_form(&staff, req, &state).await?;
    let _ = routes::webhooks::resend(State(state), staff.caller.clone(), ApiPath((id, delivery)))
        .await?;
    Ok(Redirect::to(&format!("/admin/webhooks/{id}?done=1")).into_response())
}
