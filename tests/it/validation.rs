//! Bad input gets a 4xx naming what is wrong, and never reaches the queue.

use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::FakeGameServer;
use courier_tests::stack::{TestStack, sample_order};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn with(mut body: Value, path: &[&str], value: Value) -> Value {
    let mut at = &mut body;
    for (i, key) in path.iter().enumerate() {
        if i + 1 == path.len() {
            at[*key] = value;
            break;
        }
        at = if let Ok(idx) = key.parse::<usize>() {
            &mut at[idx]
        } else {
            &mut at[*key]
        };
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_orders_are_rejected_with_the_field_and_queue_nothing() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("vip", "s", "lp user {username} parent add vip")
        .await;
    let good = sample_order("vip", "Notch");

    let cases: Vec<(Value, StatusCode, &str, &str)> = vec![
        (
            with(good.clone(), &["items"], json!([])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "items",
        ),
        (
            with(good.clone(), &["items", "0", "quantity"], json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "items[0].quantity",
        ),
        (
            with(good.clone(), &["items", "0", "quantity"], json!("two")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "items[0].quantity",
        ),
        (
            with(good.clone(), &["items", "0", "unit_price"], json!("-1.00")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "items[0].unit_price",
        ),
        (
            with(good.clone(), &["items", "0", "product"], json!("nope")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "items[0].product",
        ),
        (
            with(good.clone(), &["currency"], json!("usd")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "currency",
        ),
        (
            with(good.clone(), &["customer", "email"], json!("not-an-email")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "customer.email",
        ),
        (
            with(good.clone(), &["game", "username"], json!("bob; op bob")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "game.username",
        ),
        (
            with(good.clone(), &["game"], json!({})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "game.username",
        ),
        (
            with(good.clone(), &["colour"], json!("red")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            ".",
        ),
    ];
    for (body, status, code, field) in cases {
        let (got, err) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
        assert_eq!(got, status, "{body} → {err}");
        assert_eq!(err["error"]["code"], code, "{err}");
        if field != "." {
            assert_eq!(err["error"]["field"], field, "{err}");
        }
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    // Malformed JSON.
    let resp = stack
        .http
        .post(stack.url("/v1/orders"))
        .bearer_auth(&stack.admin_key)
        .body("{\"currency\": ")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["code"], "malformed_json");

    let counts: (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox)")
            .fetch_one(&stack.pool)
            .await
            .expect("counts");
    assert_eq!(
        counts,
        (0, 0),
        "rejected requests must leave nothing behind"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_scopes_are_enforced() {
    let stack = TestStack::start_with(|_| {}, false).await;
    let (status, err) = stack
        .call_as("", Method::GET, "/v1/products", None, &[])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    let (status, _) = stack
        .call_as("ck_wrong", Method::GET, "/v1/products", None, &[])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let reader = "ck_reader_key_for_tests_0123456789";
    courier_shared::db::api_keys::insert(
        &stack.pool,
        "reader",
        reader,
        &["orders:read".to_owned()],
    )
    .await
    .expect("key");
    let (status, err) = stack
        .call_as(
            reader,
            Method::POST,
            "/v1/orders",
            Some(&sample_order("x", "y")),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(err["error"]["code"], "forbidden");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("orders:write")
    );
    let (status, _) = stack
        .call_as(reader, Method::GET, "/v1/game-servers", None, &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, err) = stack
        .call_as(reader, Method::GET, "/v1/orders/ORD-0000000000", None, &[])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");

    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE name = 'reader'")
        .fetch_one(&stack.pool)
        .await
        .expect("row");
    assert_ne!(stored, reader.as_bytes(), "keys are stored hashed");
    assert_eq!(stored.len(), 32);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_with_unknown_placeholders_or_servers_are_rejected_when_saved() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_game_server("s", &game).await;
    let product = |server: &str, command: &str| json!({ "name": "VIP", "actions": [{ "kind": "rcon", "game_server": server, "command": command }] });
    let (status, err) = stack
        .call(
            Method::PUT,
            "/v1/products/vip",
            Some(&product("s", "lp user {usrname} parent add vip")),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["field"], "actions[0].command");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("{usrname}"),
        "{err}"
    );

    let (status, err) = stack
        .call(
            Method::PUT,
            "/v1/products/vip",
            Some(&product("nowhere", "say hi")),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["field"], "actions[0].game_server");

    let (status, err) = stack
        .call(
            Method::PUT,
            "/v1/products/vip",
            Some(&json!({ "name": "VIP", "actions": [{ "kind": "teleport" }] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["code"], "invalid_body");

    let (status, err) = stack
        .call(
            Method::PUT,
            "/v1/game-servers/bad",
            Some(&json!({ "host": "h", "port": 25575, "password": "x", "dialect": "quake" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "dialect");

    let (status, products) = stack.call(Method::GET, "/v1/products", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(products, json!([]), "nothing was saved");
    stack.teardown().await;
}

/// A product that became undeliverable (here: the API lost its Discord bot
/// token after the product was saved) is refused at accept time on the API,
/// and a paid webhook's deliveries are held with one alert instead of
/// dying; an admin retries them once the configuration is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_product_is_refused_or_held_never_dead() {
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_discord_product("vip").await;
    // Saving one needs the token, too.
    let mut tokenless = stack.settings.clone();
    tokenless.discord.bot_token = None;
    tokenless.database.migrate_on_start = false;
    let other = courier_api::startup::start(&tokenless)
        .await
        .expect("second api starts");
    let base = format!("http://{}", other.addr);
    let put = stack
        .http
        .put(format!("{base}/v1/products/vip2"))
        .bearer_auth(&stack.admin_key)
        .json(&json!({ "name": "VIP", "actions": [{ "kind": "discord_role", "guild_id": "111", "role_id": "222" }] }))
        .send()
        .await
        .expect("sent");
    assert_eq!(put.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = put.json().await.expect("json");
    assert_eq!(err["error"]["code"], "not_deliverable", "{err}");
    assert_eq!(err["error"]["field"], "actions[0]");

    let mut order = sample_order("vip", "steve");
    order["discord_user_id"] = json!("333");
    let resp = stack
        .http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(&stack.admin_key)
        .json(&order)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["code"], "not_deliverable", "{err}");
    assert_eq!(err["error"]["field"], "items[0].product");

    // Paid through Stripe, on the API without the token: held, alerted.
    let event = courier_tests::signing::stripe_event(
        "evt_held",
        "checkout.session.completed",
        courier_tests::signing::checkout_session(
            "cs_held",
            "pi_held",
            json!({ "courier_items": "vip:1", "discord_user_id": "333" }),
        ),
    );
    let body = event.to_string();
    let header = courier_tests::signing::stripe_header(
        courier_tests::stack::STRIPE_SECRET,
        courier_tests::signing::now(),
        &body,
    );
    let resp = stack
        .http
        .post(format!("{base}/webhooks/stripe"))
        .header("Stripe-Signature", header)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: Value = resp.json().await.expect("json");
    let id = answer["order_id"].as_str().expect("order id").to_owned();
    let o = stack.order(&id).await;
    assert_eq!(o["payment_status"], "paid", "{o:#}");
    let delivery = &o["deliveries"][0];
    assert_eq!(delivery["status"], "held", "{o:#}");
    assert!(
        delivery["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("discord.bot_token")),
        "{delivery}"
    );
    assert_eq!(stack.count("SELECT count(*) FROM outbox").await, 0);
    assert_eq!(stack.count("SELECT count(*) FROM dead_letters").await, 0);
    assert_eq!(stack.alerts("undeliverable_order").await.len(), 1);
    other.stop().await;

    // With the configuration back, an admin retries it.
    let (status, retried) = stack
        .call(
            Method::POST,
            &format!(
                "/v1/admin/deliveries/{}/retry",
                delivery["id"].as_str().expect("id")
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(stack.count("SELECT count(*) FROM outbox").await, 1);
    stack.teardown().await;
}

/// Every admin list pages the same way and refuses the same things.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_take_limit_and_cursor_the_same_way() {
    let stack = TestStack::start_with(|_| {}, false).await;
    for list in [
        "/v1/admin/dead-letters",
        "/v1/admin/held",
        "/v1/admin/payment-events",
        "/v1/admin/alerts",
    ] {
        for (query, code, field) in [
            ("limit=0", "invalid_query", Some("limit")),
            ("limit=-1", "invalid_query", Some("limit")),
            ("limit=501", "invalid_query", Some("limit")),
            ("limit=ten", "invalid_query", None),
            ("cursor=%21%21", "invalid_query", Some("cursor")),
            ("colour=red", "invalid_query", None),
        ] {
            let (status, err) = stack
                .call(Method::GET, &format!("{list}?{query}"), None)
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{list}?{query}: {err}");
            assert_eq!(err["error"]["code"], code, "{list}?{query}: {err}");
            if let Some(f) = field {
                assert_eq!(err["error"]["field"], f, "{list}?{query}: {err}");
            }
        }
        let (status, page) = stack
            .call(Method::GET, &format!("{list}?limit=500"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{list}: {page}");
        assert!(page["next_cursor"].is_null(), "{list}: {page}");
    }
    // Three failed events (each raises an alert): pages of two, then one,
    // newest first, none twice.
    for n in 0..3 {
        let event = courier_tests::signing::stripe_event(
            &format!("evt_page_{n}"),
            "checkout.session.completed",
            courier_tests::signing::checkout_session(
                &format!("cs_page_{n}"),
                &format!("pi_page_{n}"),
                json!({ "courier_items": "nope:1" }),
            ),
        );
        stack.send_stripe(&event).await;
    }
    for list in ["/v1/admin/payment-events", "/v1/admin/alerts"] {
        let (_, first) = stack
            .call(Method::GET, &format!("{list}?limit=2"), None)
            .await;
        let key = if list.ends_with("alerts") {
            "alerts"
        } else {
            "events"
        };
        let cursor = first["next_cursor"]
            .as_str()
            .expect("a next page")
            .to_owned();
        let (status, second) = stack
            .call(
                Method::GET,
                &format!("{list}?limit=2&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{second}");
        let ids = |page: &Value| -> Vec<i64> {
            page[key]
                .as_array()
                .map(|a| a.iter().filter_map(|r| r["id"].as_i64()).collect())
                .unwrap_or_default()
        };
        let (a, b) = (ids(&first), ids(&second));
        assert_eq!((a.len(), b.len()), (2, 1), "{first} {second}");
        assert!(
            a[0] > a[1] && a[1] > b[0],
            "newest first, no overlap: {a:?} {b:?}"
        );
        assert!(second["next_cursor"].is_null());
    }
    stack.teardown().await;
}
