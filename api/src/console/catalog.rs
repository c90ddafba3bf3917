//! The console's catalog editing: products (name, how paid orders start,
//! the actions), game servers, and webhook endpoints (create, change,
//! enable or disable, rotate the secret, delete).
//!
//! Each form posts to the API handler that does the same thing; a save the
//! API refuses shows the form again with what was typed and the API's
//! message, so nothing typed is lost. A product's actions are edited as the
//! JSON array `PUT /v1/products/{sku}` takes (game servers by name): four
//! kinds with their own fields and lists (supplier candidates) do not fit a
//! fixed form, and the API's message names the action and field at fault.

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Redirect, Response};
use courier_shared::db::catalog::{GameServer, Product};
use courier_shared::db::webhooks::Endpoint;
use courier_shared::rcon::{Dialect, Framing};
use maud::{Markup, html};
use serde_json::{Value, json};
use uuid::Uuid;

use super::pages::{Page, page, typed};
use super::session::Staff;
use super::{Form, PageError, Path, csrf_field, layout, read_form};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::routes;
use crate::startup::AppState;

/// A form shown again after the API refused it: the refusal, with its status.
fn refused(staff: &Staff, title: &str, section: &str, e: &ApiError, form: Markup) -> Response {
    let body = html! {
        h1 { (title) }
        p.error role="alert" { (e.message) " " code { (e.code) } }
        (form)
    };
    (e.status, page(layout(staff, title, section, body))).into_response()
}

fn text(form: &Form, name: &str) -> String {
    form.get(name).unwrap_or_default().to_owned()
}

fn number<T: std::str::FromStr>(form: &Form, name: &str) -> Result<Option<T>, ApiError> {
    form.get(name)
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::invalid(name, "must be a whole number"))
        })
        .transpose()
}

// --- products ----------------------------------------------------------------------------

#[derive(serde::Deserialize)]
pub struct SkuQuery {
    sku: Option<String>,
}

/// What a product form shows.
struct ProductFields {
    sku: String,
    name: String,
    /// `""` (the store's setting), `"true"` or `"false"`.
    auto_process: String,
    delay_secs: String,
    actions: String,
    existing: bool,
}

/// A stored product's actions as `PUT /v1/products/{sku}` takes them: the
/// game server by name, not id.
fn action_inputs(p: &Product, servers: &[GameServer]) -> String {
    let list: Vec<Value> = p
        .actions
        .iter()
        .map(|a| {
            let mut v = serde_json::to_value(&a.config).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut()
                && let Some(Value::String(id)) = o.remove("game_server_id")
            {
                let name = servers
                    .iter()
                    .find(|s| s.id.to_string() == id)
                    .map_or(id, |s| s.name.clone());
                o.insert("game_server".into(), Value::String(name));
            }
            v
        })
        .collect();
    serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into())
}

fn product_form(staff: &Staff, f: &ProductFields) -> Markup {
    html! {
        form.edit method="post" action="/admin/products/save" {
            (csrf_field(staff))
            @if f.existing {
                input type="hidden" name="sku" value=(f.sku);
                input type="hidden" name="existing" value="1";
                p { "SKU " code { (f.sku) } }
            } @else {
                label { "SKU (as orders name it) " input name="sku" value=(f.sku) required maxlength="64" pattern="[A-Za-z0-9._\\-]+"; }
            }
            label { "Name " input name="name" value=(f.name) required maxlength="200"; }
            label { "Paid orders start "
                select name="auto_process" {
                    option value="" selected[f.auto_process.is_empty()] { "as the store's setting says" }
                    option value="true" selected[f.auto_process == "true"] { "at once" }
                    option value="false" selected[f.auto_process == "false"] { "when staff process them" }
                }
            }
            label { "Delay after payment, seconds (empty: the store's setting) " input name="process_delay_secs" inputmode="numeric" value=(f.delay_secs) size="8"; }
            label { "Actions (JSON, as " code { "PUT /v1/products/{sku}" } " takes them; " code { "[]" } ": fulfilled by hand) "
                textarea name="actions" rows="14" spellcheck="false" { (f.actions) }
            }
            details.hint {
                summary { "Action kinds" }
                pre { (ACTION_EXAMPLES) }
            }
            button type="submit" data-confirm="Save this product? Orders accepted from now on use it." { "Save product" }
            " " a href="/admin/products" { "Cancel" }
        }
    }
}

const ACTION_EXAMPLES: &str = r#"{"kind": "rcon", "game_server": "survival", "command": "lp user {username} parent add vip",
 "on_ambiguous": "hold", "require_online": false, "revoke_command": "lp user {username} parent remove vip"}
{"kind": "discord_role", "guild_id": "…", "role_id": "…"}
{"kind": "supplier_key", "stock_only": false, "low_stock_threshold": 5,
 "candidates": [{"supplier": "kinguin", "supplier_product_id": "…", "max_price": "9.50"}]}
{"kind": "download", "expires_hours": 72, "max_downloads": 5}"#;

/// `GET /admin/products/edit?sku=…`: a product's form (without `sku`: a new one).
pub async fn edit_product(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<SkuQuery>,
) -> Page {
    let axum::Json(products) =
        routes::catalog::list_products(State(state.clone()), staff.caller.clone()).await?;
    let axum::Json(servers) =
        routes::catalog::list_game_servers(State(state), staff.caller.clone()).await?;
    let fields = match q.sku.as_deref().filter(|s| !s.is_empty()) {
        None => ProductFields {
            sku: String::new(),
            name: String::new(),
            auto_process: String::new(),
            delay_secs: String::new(),
            actions: "[]".into(),
            existing: false,
        },
        Some(sku) => {
            let p = products
                .iter()
                .find(|p| p.sku == sku)
                .ok_or_else(|| ApiError::not_found("product"))?;
            ProductFields {
                sku: p.sku.clone(),
                name: p.name.clone(),
                auto_process: p
                    .processing
                    .auto_process
                    .map(|b| b.to_string())
                    .unwrap_or_default(),
                delay_secs: p
                    .processing
                    .process_delay_secs
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                actions: action_inputs(p, &servers),
                existing: true,
            }
        }
    };
    let title = if fields.existing {
        "Edit product"
    } else {
        "New product"
    };
    let body = html! { h1 { (title) } (product_form(&staff, &fields)) };
    Ok(page(layout(&staff, title, "products", body)))
}

/// `POST /admin/products/save`: the API's `PUT /v1/products/{sku}`.
pub async fn save_product(State(state): State<AppState>, staff: Staff, req: Request) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let fields = ProductFields {
        sku: text(&form, "sku"),
        name: text(&form, "name"),
        auto_process: text(&form, "auto_process"),
        delay_secs: text(&form, "process_delay_secs"),
        actions: form.get("actions").unwrap_or("[]").to_owned(),
        existing: form.get("existing").is_some(),
    };
    let result = async {
        if !fields.existing && products_has(&state, &staff, &fields.sku).await {
            return Err(taken("sku", "product").into());
        }
        let actions: Value = serde_json::from_str(&fields.actions).map_err(|e| {
            ApiError::invalid("actions", format!("is not a JSON array of actions: {e}"))
        })?;
        let auto = match fields.auto_process.as_str() {
            "" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(ApiError::invalid("auto_process", "is true, false or empty").into()),
        };
        let body = typed(json!({
            "name": fields.name,
            "actions": actions,
            "auto_process": auto,
            "process_delay_secs": number::<u32>(&form, "process_delay_secs")?,
        }))?;
        routes::catalog::put_product(
            State(state.clone()),
            staff.caller.clone(),
            ApiPath(fields.sku.clone()),
            body,
        )
        .await
        .map_err(PageError::from)
    }
    .await;
    match result {
        Ok(_) => Ok(Redirect::to("/admin/products?done=saved").into_response()),
        Err(PageError::Api(e)) => Ok(refused(&staff, "Product not saved", "products", &e, {
            let existing = products_has(&state, &staff, &fields.sku).await;
            product_form(&staff, &ProductFields { existing, ..fields })
        })),
        Err(e) => Err(e),
    }
}

/// Whether `sku` is a product already (its SKU field is then fixed).
async fn products_has(state: &AppState, staff: &Staff, sku: &str) -> bool {
    routes::catalog::list_products(State(state.clone()), staff.caller.clone())
        .await
        .is_ok_and(|axum::Json(list)| list.iter().any(|p| p.sku == sku))
}

/// A "new" form naming something that exists: `PUT` would replace it, so
/// the console asks for its edit form instead.
fn taken(field: &str, what: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "already_exists",
        format!("a {what} with this {field} exists: edit it instead"),
    )
    .with_field(field)
}

// --- game servers ------------------------------------------------------------------------

/// Whether a game server of this name exists.
async fn servers_have(state: &AppState, staff: &Staff, name: &str) -> bool {
    routes::catalog::list_game_servers(State(state.clone()), staff.caller.clone())
        .await
        .is_ok_and(|axum::Json(l)| l.iter().any(|s| s.name == name))
}

#[derive(serde::Deserialize)]
pub struct NameQuery {
    name: Option<String>,
}

/// What a game server form shows (never the password).
struct ServerFields {
    name: String,
    host: String,
    port: String,
    dialect: String,
    max_connections: String,
    framing: String,
    quiet_ms: String,
    error_patterns: String,
    online_command: String,
    existing: bool,
}

fn server_form(staff: &Staff, f: &ServerFields) -> Markup {
    html! {
        form.edit method="post" action="/admin/game-servers/save" {
            (csrf_field(staff))
            @if f.existing {
                input type="hidden" name="name" value=(f.name);
                input type="hidden" name="existing" value="1";
                p { "Name " code { (f.name) } }
            } @else {
                label { "Name (products name it) " input name="name" value=(f.name) required maxlength="64" pattern="[A-Za-z0-9._\\-]+"; }
            }
            label { "Host " input name="host" value=(f.host) required maxlength="253"; }
            label { "RCON port " input name="port" inputmode="numeric" value=(f.port) required size="6"; }
            label {
                "RCON password "
                input name="password" type="password" autocomplete="new-password" required[!f.existing]
                    placeholder=[f.existing.then_some("unchanged")];
            }
            label { "Dialect "
                select name="dialect" {
                    @for d in Dialect::ALL { option value=(d.as_str()) selected[f.dialect == d.as_str()] { (d.as_str()) } }
                }
            }
            label { "Connections at most " input name="max_connections" inputmode="numeric" value=(f.max_connections) size="4"; }
            label { "Framing (see docs/rcon.md) "
                select name="framing" {
                    @for x in Framing::ALL { option value=(x.as_str()) selected[f.framing == x.as_str()] { (x.as_str()) } }
                }
            }
            label { "Quiet time, ms " input name="quiet_ms" inputmode="numeric" value=(f.quiet_ms) size="6"; }
            label { "Answers that mean refused, one per line " textarea name="error_patterns" rows="3" { (f.error_patterns) } }
            label { "Player list command (empty: list / status) " input name="online_command" value=(f.online_command) maxlength="64"; }
            button type="submit" data-confirm="Save this game server? Deliveries from now on use it." { "Save game server" }
            " " a href="/admin/products#game-servers" { "Cancel" }
        }
    }
}

/// `GET /admin/game-servers/edit?name=…`: a game server's form (without `name`: a new one).
pub async fn edit_server(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<NameQuery>,
) -> Page {
    let axum::Json(servers) =
        routes::catalog::list_game_servers(State(state), staff.caller.clone()).await?;
    let fields = match q.name.as_deref().filter(|s| !s.is_empty()) {
        None => ServerFields {
            name: String::new(),
            host: String::new(),
            port: "25575".into(),
            dialect: "minecraft".into(),
            max_connections: "2".into(),
            framing: "auto".into(),
            quiet_ms: "500".into(),
            error_patterns: String::new(),
            online_command: String::new(),
            existing: false,
        },
        Some(name) => {
            let s = servers
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| ApiError::not_found("game server"))?;
            ServerFields {
                name: s.name.clone(),
                host: s.host.clone(),
                port: s.port.to_string(),
                dialect: s.dialect.as_str().into(),
                max_connections: s.max_connections.to_string(),
                framing: s.framing.as_str().into(),
                quiet_ms: s.quiet_ms.to_string(),
                error_patterns: s.error_patterns.join("\n"),
                online_command: s.online_command.clone().unwrap_or_default(),
                existing: true,
            }
        }
    };
    let title = if fields.existing {
        "Edit game server"
    } else {
        "New game server"
    };
    let body = html! { h1 { (title) } (server_form(&staff, &fields)) };
    Ok(page(layout(&staff, title, "products", body)))
}

/// `POST /admin/game-servers/save`: the API's `PUT /v1/game-servers/{name}`
/// (an empty password keeps the stored one).
pub async fn save_server(State(state): State<AppState>, staff: Staff, req: Request) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let fields = ServerFields {
        name: text(&form, "name"),
        host: text(&form, "host"),
        port: text(&form, "port"),
        dialect: text(&form, "dialect"),
        max_connections: text(&form, "max_connections"),
        framing: text(&form, "framing"),
        quiet_ms: text(&form, "quiet_ms"),
        error_patterns: text(&form, "error_patterns"),
        online_command: text(&form, "online_command"),
        existing: form.get("existing").is_some(),
    };
    let result = async {
        if !fields.existing && servers_have(&state, &staff, &fields.name).await {
            return Err(taken("name", "game server").into());
        }
        let patterns: Vec<&str> = fields
            .error_patterns
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut body = json!({
            "host": fields.host,
            "port": number::<u16>(&form, "port")?,
            "password": form.get("password"),
            "dialect": fields.dialect,
            "framing": fields.framing,
            "error_patterns": patterns,
            "online_command": form.get("online_command"),
        });
        for (name, value) in [
            (
                "max_connections",
                number::<u16>(&form, "max_connections")?.map(u32::from),
            ),
            ("quiet_ms", number::<u32>(&form, "quiet_ms")?),
        ] {
            if let (Some(v), Some(o)) = (value, body.as_object_mut()) {
                o.insert(name.into(), json!(v));
            }
        }
        let body = typed(body)?;
        routes::catalog::put_game_server(
            State(state.clone()),
            staff.caller.clone(),
            ApiPath(fields.name.clone()),
            body,
        )
        .await
        .map_err(PageError::from)
    }
    .await;
    match result {
        Ok(_) => Ok(Redirect::to("/admin/products?done=server#game-servers").into_response()),
        Err(PageError::Api(e)) => {
            let existing = servers_have(&state, &staff, &fields.name).await;
            Ok(refused(
                &staff,
                "Game server not saved",
                "products",
                &e,
                server_form(&staff, &ServerFields { existing, ..fields }),
            ))
        }
        Err(e) => Err(e),
    }
}

// --- webhook endpoints -------------------------------------------------------------------

#[derive(serde::Deserialize)]
pub struct IdQuery {
    id: Option<String>,
}

/// What an endpoint form shows.
struct EndpointFields {
    id: Option<Uuid>,
    url: String,
    description: String,
    events: Vec<String>,
    enabled: bool,
}

fn endpoint_form(staff: &Staff, f: &EndpointFields) -> Markup {
    use courier_shared::domain::webhook::EVENTS;
    let all = f.events.iter().any(|e| e == "*");
    html! {
        form.edit method="post" action="/admin/webhooks/save" {
            (csrf_field(staff))
            @if let Some(id) = f.id { input type="hidden" name="id" value=(id); }
            label { "URL " input name="url" type="url" value=(f.url) required maxlength="2000" size="50"; }
            label { "Description " input name="description" value=(f.description) maxlength="500" size="40"; }
            fieldset {
                legend { "Events" }
                label.check { input type="checkbox" name="events" value="*" checked[all]; " every event" }
                @for e in EVENTS {
                    label.check { input type="checkbox" name="events" value=(e) checked[!all && f.events.iter().any(|x| x == e)]; " " code { (e) } }
                }
            }
            label.check { input type="checkbox" name="enabled" value="true" checked[f.enabled]; " Enabled (enabling clears why it was disabled and its failures)" }
            button type="submit" { "Save endpoint" }
            " " a href="/admin/webhooks" { "Cancel" }
        }
    }
}

/// `GET /admin/webhooks/edit?id=…`: an endpoint's form (without `id`: a new one).
pub async fn edit_endpoint(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<IdQuery>,
) -> Page {
    let fields = match q.id.as_deref().filter(|s| !s.is_empty()) {
        None => {
            staff.caller.require(crate::auth::ADMIN)?;
            EndpointFields {
                id: None,
                url: String::new(),
                description: String::new(),
                events: vec!["*".into()],
                enabled: true,
            }
        }
        Some(id) => {
            let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("webhook endpoint"))?;
            let axum::Json(e) =
                routes::webhooks::get(State(state), staff.caller.clone(), ApiPath(id)).await?;
            EndpointFields {
                id: Some(e.id),
                url: e.url,
                description: e.description,
                events: e.events,
                enabled: e.enabled,
            }
        }
    };
    let title = if fields.id.is_some() {
        "Edit endpoint"
    } else {
        "New endpoint"
    };
    let body = html! { h1 { (title) } (endpoint_form(&staff, &fields)) };
    Ok(page(layout(&staff, title, "webhooks", body)))
}

/// The secret, shown once (after a create or a rotation).
fn secret_page(staff: &Staff, title: &str, e: &Endpoint, secret: &str) -> Response {
    let body = html! {
        h1 { (title) }
        p.notice role="status" { "Copy the signing secret now: it is not shown again." }
        p { "Endpoint " code { (e.url) } }
        p { "Secret " code.secret { (secret) } }
        @if let Some(until) = e.previous_secret_until {
            p { "The previous secret also signs until " (super::pages::when(until)) "." }
        }
        p.hint { "Receivers verify the " code { "webhook-signature" } " header with it (any Standard Webhooks library does)." }
        p { a href={"/admin/webhooks/" (e.id)} { "To the endpoint's delivery log" } }
    };
    page(layout(staff, title, "webhooks", body))
}

/// `POST /admin/webhooks/save`: creates an endpoint (and shows its secret
/// once) or changes one.
pub async fn save_endpoint(State(state): State<AppState>, staff: Staff, req: Request) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let id = form
        .get("id")
        .map(|s| Uuid::parse_str(s).map_err(|_| ApiError::invalid("id", "not an endpoint id")))
        .transpose()?;
    let fields = EndpointFields {
        id,
        url: text(&form, "url"),
        description: text(&form, "description"),
        events: form.all("events").map(str::to_owned).collect(),
        enabled: form.get("enabled") == Some("true"),
    };
    // Ticking "every event" as well as some: every event.
    let events: Vec<String> = if fields.events.iter().any(|e| e == "*") {
        vec!["*".into()]
    } else {
        fields.events.clone()
    };
    let body = json!({
        "url": fields.url,
        "description": fields.description,
        "events": events,
        "enabled": fields.enabled,
    });
    let result = match id {
        None => match typed(body) {
            Ok(b) => routes::webhooks::create(State(state.clone()), staff.caller.clone(), b)
                .await
                .map(|(_, axum::Json(created))| Some(created))
                .map_err(PageError::from),
            Err(e) => Err(e),
        },
        Some(id) => match typed(body) {
            Ok(b) => {
                routes::webhooks::update(State(state.clone()), staff.caller.clone(), ApiPath(id), b)
                    .await
                    .map(|_| None)
                    .map_err(PageError::from)
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(Some(created)) => Ok(secret_page(
            &staff,
            "Endpoint created",
            &created.endpoint,
            &created.secret,
        )),
        Ok(None) => Ok(Redirect::to("/admin/webhooks?done=saved").into_response()),
        Err(PageError::Api(e)) => Ok(refused(
            &staff,
            "Endpoint not saved",
            "webhooks",
            &e,
            endpoint_form(&staff, &fields),
        )),
        Err(e) => Err(e),
    }
}

/// `POST /admin/webhooks/{id}/rotate`: a new secret (shown once); the old
/// one keeps signing for `overlap_hours`.
pub async fn rotate_endpoint(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<Uuid>,
    req: Request,
) -> Page {
    let form = read_form(&staff, req, &state).await?;
    let body = typed(json!({ "overlap_hours": number::<u32>(&form, "overlap_hours")? }))?;
    let axum::Json(r) =
        routes::webhooks::rotate(State(state), staff.caller.clone(), ApiPath(id), body).await?;
    Ok(secret_page(
        &staff,
        "Secret rotated",
        &r.endpoint,
        &r.secret,
    ))
}

/// `POST /admin/webhooks/{id}/delete`.
pub async fn delete_endpoint(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<Uuid>,
    req: Request,
) -> Page {
    read_form(&staff, req, &state).await?;
    let _ = routes::webhooks::delete(State(state), staff.caller.clone(), ApiPath(id)).await?;
    Ok(Redirect::to("/admin/webhooks?done=deleted").into_response())
}
