//! Every route, walked from the router's own table, answered as a hostile
//! client would be: wrong methods, bad and non-text path segments, non-text
//! query values, oversize bodies, NUL in bodies, no key, a wrong key, a key
//! without the scope. Each answer is the one JSON error shape with a stable
//! code, and nothing is written.

use courier_api::auth::Access;
use courier_api::routes::{Route, route_table};
use courier_tests::signing;
use courier_tests::stack::TestStack;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const UUID: &str = "00000000-0000-4000-8000-000000000000";

/// A well-formed value for each path parameter.
fn good(route: &Route, param: &str) -> &'static str {
    match param {
        "id" if route.path.contains("/deliveries/")
            || route.path.contains("/webhook-endpoints/") =>
        {
            UUID
        }
        "delivery_id" => UUID,
        "id" => "1",
        "order_id" | "item_id" => UUID,
        "note_id" => "1",
        "reference" => "ORD-AAAAAAAAAA",
        _ => "x",
    }
}

/// The route's path with each `{param}` replaced by `value(param)`.
fn fill(route: &Route, value: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = route.path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        out.push_str(&value(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

fn params(route: &Route) -> Vec<&str> {
    route
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// Routes whose handler reads a JSON body.
fn takes_json(route: &Route) -> bool {
    let p = route.path;
    route.method != Method::GET
        && route.method != Method::DELETE
        && !p.starts_with("/webhooks/")
        && !(p.ends_with("/retry") && p != "/v1/admin/dead-letters/retry")
        && p != "/v1/orders/{reference}/process"
        && !(p.ends_with("/resend") && p.starts_with("/v1/webhook-endpoints"))
        && !p.ends_with("/acknowledge")
        && !p.ends_with("/resolve")
        // A file upload takes raw bytes of any type, capped by downloads.max_file_bytes.
        && !p.ends_with("/files")
        && p != "/v1/game-servers/{name}/test"
}

/// A client that opens a connection per request: a server may close a
/// connection after answering without reading the body (an oversize body,
/// or a route that takes none), and a pooled client would then send the
/// next request into the closed connection.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

async fn send(
    stack: &TestStack,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    thread_local! {
        static CLIENT: reqwest::Client = client();
    }
    let http = CLIENT.with(Clone::clone);
    let mut req = http.request(method, stack.url(path));
    if let Some(k) = key {
        req = req.header("authorization", k);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.expect("sent");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{path}: not JSON ({status}): {text:?}"));
    (status, headers, json)
}

/// The error shape: `{"error": {"code", "message"}}` with a non-empty message.
fn shape(what: &str, status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

async fn written(stack: &TestStack) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "orders",
        "order_items",
        "deliveries",
        "outbox",
        "products",
        "game_servers",
        "payment_events",
        "refunds",
        "admin_alerts",
        "api_keys",
        "order_events",
        "order_notes",
        "webhook_endpoints",
        "product_files",
        "download_links",
        "download_log",
    ] {
        counts.push(stack.count(&format!("SELECT count(*) FROM {table}")).await);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_hostile_input_in_the_error_shape_and_writes_nothing() {
    let stack = TestStack::start_with(|_| {}, false).await;
    let reader = "ck_test_reader_0123456789abcdef";
    courier_shared::db::api_keys::insert(&stack.pool, "reader", reader, &["orders:read".into()])
        .await
        .expect("reader key");
    let admin = format!("Bearer {}", stack.admin_key);
    let before = written(&stack).await;
    let routes = route_table();
    assert!(routes.len() >= 28, "the table lists every route");

    for route in &routes {
        let path = fill(route, |p| good(route, p).to_owned());
        let what = format!("{} {}", route.method, route.path);

        // A method the path does not take: 405 with Allow.
        let taken: Vec<&Method> = routes
            .iter()
            .filter(|r| r.path == route.path)
            .map(|r| &r.method)
            .collect();
        let other = [Method::DELETE, Method::PUT, Method::PATCH]
            .into_iter()
            .find(|m| !taken.contains(&m))
            .expect("a method the path does not take");
        let (status, headers, body) = send(&stack, other, &path, Some(&admin), None).await;
        shape(
            &what,
            status,
            &body,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
        let allow = headers
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            allow.contains(route.method.as_str()),
            "{what}: Allow {allow}"
        );

        // A query value that is not text, and one that is not UTF-8.
        for (query, want, code) in [
            (
                "q=a%00b",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            ("q=%ff", StatusCode::BAD_REQUEST, "invalid_query"),
        ] {
            let url = format!("{path}?{query}");
            let (status, _, body) =
                send(&stack, route.method.clone(), &url, Some(&admin), None).await;
            shape(&what, status, &body, want, code);
            assert_eq!(body["error"]["field"], "q", "{what}");
        }

        // Path segments: NUL, invalid UTF-8, and a value of the wrong type.
        for param in params(route) {
            let with = |bad: &str| {
                fill(route, |p| {
                    if p == param {
                        bad.to_owned()
                    } else {
                        good(route, p).to_owned()
                    }
                })
            };
            let typed = good(route, param) != "x" && param != "reference";
            for (bad, want, code) in [
                (
                    "a%00b",
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                ),
                ("%ff", StatusCode::BAD_REQUEST, "invalid_path"),
                ("abc", StatusCode::BAD_REQUEST, "invalid_path"),
            ] {
                if bad == "abc" && !typed {
                    continue;
                }
                let (status, _, body) =
                    send(&stack, route.method.clone(), &with(bad), Some(&admin), None).await;
                shape(&what, status, &body, want, code);
                if bad == "a%00b" {
                    assert_eq!(body["error"]["field"], "path", "{what}");
                }
            }
        }

        if let Access::Scope(scope) = route.access {
            for (key, code) in [
                (None, "unauthorized"),
                (Some("Bearer ck_nobody_0123456789"), "unauthorized"),
                (Some(&*format!("Basic {}", stack.admin_key)), "unauthorized"),
            ] {
                let (status, _, body) = send(&stack, route.method.clone(), &path, key, None).await;
                shape(&what, status, &body, StatusCode::UNAUTHORIZED, code);
            }
            if scope != "orders:read" {
                // Refused before the body is read, whatever the body.
                let (status, _, body) = send(
                    &stack,
                    route.method.clone(),
                    &path,
                    Some(&format!("Bearer {reader}")),
                    Some(b"{\"name\": \"a\\u0000\"}".to_vec()),
                )
                .await;
                shape(&what, status, &body, StatusCode::FORBIDDEN, "forbidden");
            }
            // The scheme is case-insensitive.
            let (status, _, body) = send(
                &stack,
                route.method.clone(),
                &path,
                Some(&format!("bEaReR {}", stack.admin_key)),
                None,
            )
            .await;
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        }

        if route.method != Method::GET {
            // Over api.body_limit_bytes (256 KiB).
            let (status, _, body) = send(
                &stack,
                route.method.clone(),
                &path,
                Some(&admin),
                Some(vec![b' '; 300 * 1024]),
            )
            .await;
            assert!(status.is_client_error(), "{what}: {status} {body}");
            assert!(body["error"]["code"].is_string(), "{what}: {body}");
            if takes_json(route) || route.path.starts_with("/webhooks/") {
                shape(
                    &what,
                    status,
                    &body,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                );
            }
        }
        if takes_json(route) {
            let (status, _, body) = send(
                &stack,
                route.method.clone(),
                &path,
                Some(&admin),
                Some(b"{\"name\": \"a\\u0000b\"}".to_vec()),
            )
            .await;
            shape(
                &what,
                status,
                &body,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            );
            assert_eq!(body["error"]["field"], "name", "{what}");
            let (status, _, body) = send(
                &stack,
                route.method.clone(),
                &path,
                Some(&admin),
                Some(b"{,}".to_vec()),
            )
            .await;
            shape(
                &what,
                status,
                &body,
                StatusCode::BAD_REQUEST,
                "malformed_json",
            );
        }
    }

    let (status, _, body) = send(&stack, Method::GET, "/v1/nowhere", Some(&admin), None).await;
    shape(
        "unknown route",
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (status, _, body) = send(&stack, Method::GET, "/v1/orders/%ff", Some(&admin), None).await;
    shape(
        "GET /v1/orders/%ff",
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    );

    assert_eq!(written(&stack).await, before, "nothing was written");
    stack.teardown().await;
}

/// Named fields of `POST /v1/orders`, `PUT /v1/products` and
/// `PUT /v1/game-servers` with NUL, over-long values, wrong types and
/// oversize quantities: 4xx naming the field, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_fields_refuse_nul_and_over_long_values() {
    let game = courier_tests::fakes::rcon::FakeGameServer::start(
        "pw",
        courier_shared::rcon::Dialect::Minecraft,
    )
    .await
    .expect("fake game server");
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("p", "s", "give {username} apple")
        .await;
    stack
        .add_product(
            "key",
            json!([{ "kind": "supplier_key", "stock_only": true }]),
        )
        .await;
    let before = written(&stack).await;
    let long = "x".repeat(10_000);
    let order = courier_tests::stack::sample_order("p", "steve");
    let with = |path: &[&str], v: Value| {
        let mut o = order.clone();
        let mut at = &mut o;
        for (i, k) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at[*k] = v.clone();
            } else if let Ok(n) = k.parse::<usize>() {
                at = &mut at[n];
            } else {
                at = &mut at[*k];
            }
        }
        o
    };
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "POST /v1/orders",
            with(&["customer", "name"], json!("a\u{0}b")),
            "validation_failed",
            "customer.name",
        ),
        (
            "POST /v1/orders",
            with(&["items", "0", "product"], json!("p\u{0}")),
            "validation_failed",
            "items[0].product",
        ),
        (
            "POST /v1/orders",
            with(&["items", "0", "custom_fields"], json!({ "k\u{0}": "v" })),
            "validation_failed",
            "items[0].custom_fields.k",
        ),
        (
            "POST /v1/orders",
            with(
                &["items", "0", "custom_fields"],
                json!({ "note": "a\u{0}" }),
            ),
            "validation_failed",
            "items[0].custom_fields.note",
        ),
        (
            "POST /v1/orders",
            with(&["items", "0", "custom_fields"], json!({ "note": long })),
            "validation_failed",
            "items[0].custom_fields.note",
        ),
        (
            "POST /v1/orders",
            with(&["customer", "name"], json!(long)),
            "validation_failed",
            "customer.name",
        ),
        (
            "POST /v1/orders",
            with(&["items", "0", "quantity"], json!(1_000_000_000)),
            "validation_failed",
            "items[0].quantity",
        ),
        (
            "POST /v1/orders",
            with(&["items", "0", "quantity"], json!("2")),
            "invalid_body",
            "items[0].quantity",
        ),
        (
            "POST /v1/orders",
            with(&["discount"], json!("100.00")),
            "validation_failed",
            "discount",
        ),
        (
            "POST /v1/orders",
            json!({ "currency": "USD", "game": { "username": "steve" }, "items": (0..100).map(|_| json!({ "product": "key", "quantity": 10_000, "unit_price": "1.00" })).collect::<Vec<_>>() }),
            "too_many_deliveries",
            "items",
        ),
        (
            "PUT /v1/products/vip",
            json!({ "name": long, "actions": [{ "kind": "rcon", "game_server": "s", "command": "say hi" }] }),
            "validation_failed",
            "name",
        ),
        (
            "PUT /v1/products/vip",
            json!({ "name": "VIP\u{0}", "actions": [{ "kind": "rcon", "game_server": "s", "command": "say hi" }] }),
            "validation_failed",
            "name",
        ),
        (
            "PUT /v1/products/vip",
            json!({ "name": "VIP", "actions": (0..21).map(|_| json!({ "kind": "rcon", "game_server": "s", "command": "say hi" })).collect::<Vec<_>>() }),
            "validation_failed",
            "actions",
        ),
        (
            "PUT /v1/products/vip",
            json!({ "name": "VIP", "actions": [{ "kind": "rcon", "game_server": "s", "command": format!("say {long}") }] }),
            "validation_failed",
            "actions[0].command",
        ),
        (
            "PUT /v1/products/vip",
            // 4 + 1,200 + an e-mail of up to 255 bytes > 1,446 for Minecraft.
            json!({ "name": "VIP", "actions": [{ "kind": "rcon", "game_server": "s", "command": format!("say {}{{email}}", "x".repeat(1200)) }] }),
            "validation_failed",
            "actions[0].command",
        ),
        (
            "PUT /v1/products/vip",
            json!({ "name": "VIP", "actions": [{ "kind": "rcon", "game_server": "nowhere", "command": "say hi" }] }),
            "not_deliverable",
            "actions[0].game_server",
        ),
        (
            "PUT /v1/products/vip",
            json!({ "name": "VIP", "actions": [{ "kind": "supplier_key" }] }),
            "validation_failed",
            "actions[0].candidates",
        ),
        (
            "PUT /v1/products/vip",
            json!({ "name": "VIP", "actions": [{ "kind": "supplier_key", "candidates": [{ "supplier": "nobody", "supplier_product_id": "g", "max_price": "9" }] }] }),
            "not_deliverable",
            "actions[0]",
        ),
        (
            "PUT /v1/game-servers/g",
            json!({ "host": "127.0.0.1\nfoo", "port": 25575, "password": "pw", "dialect": "minecraft" }),
            "validation_failed",
            "host",
        ),
        (
            "PUT /v1/game-servers/g",
            json!({ "host": long, "port": 25575, "password": "pw", "dialect": "minecraft" }),
            "validation_failed",
            "host",
        ),
        (
            "PUT /v1/game-servers/g",
            json!({ "host": "127.0.0.1", "port": 25575, "password": "p\u{0}w", "dialect": "minecraft" }),
            "validation_failed",
            "password",
        ),
        (
            "PUT /v1/game-servers/g",
            json!({ "host": "h\u{0}", "port": 25575, "password": "pw", "dialect": "minecraft" }),
            "validation_failed",
            "host",
        ),
        (
            "PUT /v1/game-servers/g",
            json!({ "host": "127.0.0.1", "port": 70000, "password": "pw", "dialect": "minecraft" }),
            "invalid_body",
            "port",
        ),
    ];
    for (route, body, code, field) in cases {
        let (method, path) = route.split_once(' ').expect("method and path");
        let (status, err) = stack
            .call(method.parse().expect("method"), path, Some(&body))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{route} {field}: {err}"
        );
        assert_eq!(err["error"]["code"], code, "{route} {field}: {err}");
        assert_eq!(err["error"]["field"], field, "{route}: {err}");
    }
    assert_eq!(written(&stack).await, before, "nothing was written");
    stack.teardown().await;
}

/// A correctly signed Stripe event with a NUL anywhere is stored `failed`
/// (its text made storable) and answered 200, so Stripe stops re-sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_stripe_event_with_a_nul_is_kept_failed_and_answered_200() {
    let stack = TestStack::start_with(|_| {}, false).await;
    let events = [
        signing::stripe_event("evt_nul_name", "checkout.session.completed", {
            let mut s =
                signing::checkout_session("cs_n", "pi_n", json!({ "courier_items": "p:1" }));
            s["customer_details"]["name"] = json!("Al\u{0}ex");
            s
        }),
        signing::stripe_event(
            "evt_nul\u{0}id",
            "customer.created",
            json!({ "id": "cus_1" }),
        ),
        signing::stripe_event(
            "evt_nul_type",
            "customer.\u{0}created",
            json!({ "id": "cus_1" }),
        ),
    ];
    for event in &events {
        let answer = stack.send_stripe(event).await;
        assert_eq!(answer["status"], "failed", "{answer}");
        assert!(
            answer["note"].as_str().is_some_and(|n| n.contains("NUL")),
            "{answer}"
        );
        // Re-sent, it is taken again (a failed event always is) and fails
        // the same way: still one row, still 200.
        assert_eq!(stack.send_stripe(event).await["status"], "failed");
    }
    assert_eq!(
        stack
            .count("SELECT count(*) FROM payment_events WHERE status = 'failed'")
            .await,
        3
    );
    assert_eq!(stack.count("SELECT count(*) FROM orders").await, 0);
    assert_eq!(stack.alerts("payment_event_failed").await.len(), 3);
    stack.teardown().await;
}
