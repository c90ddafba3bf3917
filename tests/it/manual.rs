//! Fulfilment by hand and orders that wait: Mark as Delivered (with a code
//! stored encrypted), Mark as Completed with deliveries queued, dead and
//! running, products fulfilled by hand, Process / Process Selected with a
//! snapshot, process delays, and the order detail's additions.

use std::time::Duration;

use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::{Behaviour, FakeGameServer};
use courier_tests::stack::{TestStack, sample_order};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn fake(behaviour: Behaviour) -> FakeGameServer {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake game server");
    game.set(behaviour);
    game
}

/// Posts `body`; returns the answer, which must be 201.
async fn post(stack: &TestStack, body: &Value) -> Value {
    let (status, o) = stack.call(Method::POST, "/v1/orders", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{o}");
    o
}

fn id(o: &Value) -> String {
    o["id"].as_str().expect("id").to_owned()
}

async fn deliveries_of(stack: &TestStack, order: &str) -> i64 {
    stack
        .count(&format!(
            "SELECT count(*) FROM deliveries WHERE order_id = '{order}'"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_fulfilled_by_hand_waits_until_marked_delivered_with_its_code() {
    let stack = TestStack::start().await;
    let (status, product) = stack
        .call(
            Method::PUT,
            "/v1/products/tshirt",
            Some(&json!({ "name": "Server T-shirt", "actions": [] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{product}");
    let mut body = sample_order("tshirt", "Steve");
    body["customer"]["account_ref"] = json!("cus_42");
    body["billing_address"] =
        json!({ "name": "Alex Doe", "line1": "1 Main St", "city": "Springfield", "country": "US" });
    body["shipping_address"] =
        json!({ "line1": "Lagerstraße 5", "postal_code": "10115", "country": "DE" });
    let o = post(&stack, &body).await;
    let order = id(&o);
    let item = o["items"][0]["id"].as_str().expect("item").to_owned();
    assert_eq!(o["deliveries_queued"], 0, "{o}");
    // Nothing runs by itself: it stays pending.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let view = stack.order(&order).await;
    assert_eq!(view["status"], "pending", "{view}");
    assert_eq!(view["items"][0]["delivery_status"], "pending");
    assert_eq!(view["customer"]["account_ref"], "cus_42");
    assert_eq!(view["billing_address"]["city"], "Springfield");
    assert_eq!(view["shipping_address"]["line1"], "Lagerstraße 5");
    assert!(view["items"][0]["delivered_by_hand"].is_null());

    // A code with a control character is refused, naming the field.
    let path = format!("/v1/orders/{order}/items/{item}/deliver");
    let (status, err) = stack
        .call(Method::POST, &path, Some(&json!({ "code": "AB\u{7}C" })))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "code", "{err}");
    let (status, err) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{order}/items/{}/deliver", uuid::Uuid::new_v4()),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");

    let (status, marked) = stack
        .call(
            Method::POST,
            &path,
            Some(&json!({ "code": "SHIRT-0042", "notes": "Shipped with DHL\nTracking 123" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{marked}");
    assert_eq!(marked["status"], "completed", "{marked}");
    let view = stack.order(&order).await;
    assert_eq!(view["status"], "completed");
    let it = &view["items"][0];
    assert_eq!(it["delivery_status"], "delivered");
    assert_eq!(it["delivered_by_hand"]["by"], "api:bootstrap-admin");
    assert_eq!(
        it["delivered_by_hand"]["notes"],
        "Shipped with DHL\nTracking 123"
    );
    assert_eq!(it["keys"][0]["code"], "SHIRT-0042", "{it}");
    assert_eq!(it["keys"][0]["source"], "manual");
    // Stored encrypted, never as text.
    assert_eq!(
        stack
            .count("SELECT count(*) FROM item_keys WHERE position('SHIRT-0042' in encode(code_enc, 'escape')) > 0")
            .await,
        0
    );
    let manual = view["manual_actions"].as_array().expect("manual actions");
    assert!(
        manual
            .iter()
            .any(|e| e["kind"] == "item.delivered_by_hand" && e["actor"] == "api:bootstrap-admin"),
        "{manual:?}"
    );
    let (status, err) = stack.call(Method::POST, &path, Some(&json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_delivery_of_an_item_marked_delivered_never_runs() {
    let mut stack = TestStack::start_with(|_| {}, false).await;
    let game = fake(Behaviour::default()).await;
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("vip", "s", "give {username} vip")
        .await;
    stack
        .add_rcon_product("coins", "s", "give {username} coins")
        .await;
    let mut body = sample_order("vip", "Steve");
    body["items"]
        .as_array_mut()
        .expect("items")
        .push(json!({ "product": "coins", "quantity": 1, "unit_price": "1.00" }));
    let o = post(&stack, &body).await;
    let order = id(&o);
    let coins = o["items"][1]["id"].as_str().expect("item").to_owned();
    // No worker yet: both deliveries are queued.
    let (status, marked) = stack
        .call(
            Method::POST,
            &format!(
                "/v1/orders/{}/items/{coins}/deliver",
                o["order_number"].as_str().expect("number")
            ),
            Some(&json!({ "notes": "given in game by a moderator" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{marked}");
    assert_eq!(marked["cancelled"].as_array().expect("cancelled").len(), 1);
    assert_eq!(marked["left_running"], json!([]));
    assert_eq!(
        marked["status"], "processing",
        "accepted processing; the other item is not delivered yet"
    );
    stack.start_worker().await;
    stack
        .wait_for_order(&order, "completed", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        game.commands(),
        vec!["give Steve vip".to_owned()],
        "the cancelled delivery never ran"
    );
    let view = stack.order(&order).await;
    assert_eq!(view["delivery_summary"][0]["label"], "RCON executions");
    assert_eq!(view["delivery_summary"][0]["by_status"]["succeeded"], 1);
    assert_eq!(view["delivery_summary"][0]["by_status"]["cancelled"], 1);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_as_completed_cancels_what_is_not_running_and_leaves_the_running_one_to_finish() {
    // A command that runs for 5 s: time enough to see it running beside the
    // dead one on a loaded machine.
    let stack = TestStack::start_with(
        |s| {
            s.rcon.command_timeout_ms = 8000;
            s.worker.lease_seconds = 30;
        },
        true,
    )
    .await;
    let slow = fake(Behaviour {
        delay: Duration::from_secs(5),
        ..Behaviour::default()
    })
    .await;
    let locked = fake(Behaviour {
        refuse_auth: true,
        ..Behaviour::default()
    })
    .await;
    stack.add_game_server("slow", &slow).await;
    stack.add_game_server("locked", &locked).await;
    stack
        .add_rcon_product("rank", "slow", "rank {username}")
        .await;
    stack
        .add_rcon_product("kit", "locked", "kit {username}")
        .await;
    let mut body = sample_order("rank", "Steve");
    body["items"]
        .as_array_mut()
        .expect("items")
        .push(json!({ "product": "kit", "quantity": 1, "unit_price": "1.00" }));
    let o = post(&stack, &body).await;
    let order = id(&o);
    stack
        .wait_until(
            "one delivery running and the other dead",
            &format!(
                "SELECT count(*) FILTER (WHERE status = 'running') = 1 AND count(*) FILTER (WHERE status = 'dead') = 1 \
                 FROM deliveries WHERE order_id = '{order}'"
            ),
            Duration::from_secs(15),
        )
        .await;
    let running: String = sqlx::query_scalar(
        "SELECT id::text FROM deliveries WHERE order_id = $1::uuid AND status = 'running'",
    )
    .bind(&order)
    .fetch_one(&stack.pool)
    .await
    .expect("running delivery");
    let (status, marked) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{order}/complete"),
            Some(&json!({ "notes": "customer confirmed on Discord" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{marked}");
    assert_eq!(marked["status"], "completed");
    assert_eq!(marked["items"].as_array().expect("items").len(), 2);
    assert_eq!(marked["left_running"], json!([running]), "{marked}");
    assert_eq!(marked["cancelled"].as_array().expect("cancelled").len(), 1);
    assert_eq!(
        stack
            .count("SELECT count(*) FROM dead_letters WHERE resolved_at IS NULL")
            .await,
        0,
        "the cancelled dead delivery's letter is resolved"
    );
    // The running one finishes and is recorded; the order stays completed.
    slow.wait_for_commands(1, Duration::from_secs(10)).await;
    stack
        .wait_until(
            "the running delivery recorded",
            &format!("SELECT status = 'succeeded' FROM deliveries WHERE id = '{running}'"),
            Duration::from_secs(10),
        )
        .await;
    let view = stack.order(&order).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert!(
        view["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["delivery_status"] == "delivered")
    );
    let entry = view["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["kind"] == "order.completed_by_hand")
        .cloned()
        .expect("timeline entry");
    assert!(
        entry["message"]
            .as_str()
            .expect("message")
            .contains(&running),
        "the running delivery is named: {entry}"
    );
    assert_eq!(entry["data"]["notes"], "customer confirmed on Discord");
    let (status, err) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{order}/complete"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auto_processing_off_paid_orders_wait_and_are_processed_alone_or_by_a_snapshot() {
    let stack = TestStack::start_with(|s| s.orders.auto_process = false, true).await;
    let game = fake(Behaviour::default()).await;
    stack.add_game_server("s", &game).await;
    stack.add_rcon_product("vip", "s", "vip {username}").await;
    // This product starts by itself whatever the store-wide setting.
    let (status, p) = stack
        .call(
            Method::PUT,
            "/v1/products/auto",
            Some(&json!({
                "name": "Auto",
                "auto_process": true,
                "actions": [{ "kind": "rcon", "game_server": "s", "command": "auto {username}" }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["auto_process"], true);
    let auto = post(&stack, &sample_order("auto", "Zed")).await;
    let mut waiting = Vec::new();
    for name in ["Ann", "Bob", "Cid", "Eve"] {
        let o = post(&stack, &sample_order("vip", name)).await;
        assert_eq!(o["process_hold"], "manual", "{o}");
        assert_eq!(o["deliveries_queued"], 0);
        waiting.push(id(&o));
    }
    let mut unpaid = sample_order("vip", "Dan");
    unpaid["payment_status"] = json!("pending");
    let unpaid = id(&post(&stack, &unpaid).await);
    stack
        .wait_for_order(&id(&auto), "completed", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for o in &waiting {
        assert_eq!(
            deliveries_of(&stack, o).await,
            0,
            "nothing starts by itself"
        );
        assert_eq!(stack.order(o).await["status"], "pending");
    }

    // Eve's is cancelled while it waits: it never starts, and no longer waits.
    let eve = waiting.pop().expect("eve");
    let (status, c) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{eve}/cancel"),
            Some(&json!({ "reason": "asked" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    // Cid's is partly refunded, keeping access: it still waits, to be delivered.
    let (status, r) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{}/refunds", waiting[2]),
            Some(&json!({ "amount": "1.00", "reason": "requested_by_customer", "revoke": false })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");

    // Staff find them in the list.
    let (status, page) = stack
        .call(
            Method::GET,
            "/v1/orders?process_hold=manual&sort=created&order=asc",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<String> = page["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| {
            assert_eq!(o["process_hold"], "manual", "{o}");
            o["id"].as_str().expect("id").to_owned()
        })
        .collect();
    assert_eq!(listed, waiting);
    let (status, err) = stack
        .call(Method::GET, "/v1/orders?process_hold=soon", None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "process_hold");

    let (status, err) = stack
        .call(Method::POST, &format!("/v1/orders/{eve}/process"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], "not_waiting", "{err}");

    // [Process] one.
    let (status, one) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{}/process", waiting[0]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["started"], 1);
    let (status, again) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{}/process", waiting[0]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["error"]["code"], "not_waiting", "{again}");

    // [Process Selected] by a filter: a snapshot of the pending orders.
    let (status, bulk) = stack
        .call(
            Method::POST,
            "/v1/orders/process",
            Some(&json!({ "filter": { "sku": "vip" } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{bulk}");
    // The snapshot takes the orders that wait: not the unpaid one, nor Ann's
    // (started), nor Eve's (cancelled).
    assert_eq!(bulk["matched"], 2, "{bulk}");
    assert_eq!(bulk["started"], 2, "{bulk}");
    let taken: Vec<&str> = bulk["outcomes"]
        .as_array()
        .expect("outcomes")
        .iter()
        .filter_map(|o| o["order_id"].as_str())
        .collect();
    assert_eq!(taken, [waiting[1].as_str(), waiting[2].as_str()]);
    assert!(!taken.contains(&unpaid.as_str()));
    for o in &waiting[..2] {
        stack
            .wait_for_order(o, "completed", Duration::from_secs(20))
            .await;
    }
    stack
        .wait_until(
            "the partly refunded order delivered",
            &format!(
                "SELECT delivery_status = 'delivered' FROM order_items WHERE order_id = '{}'",
                waiting[2]
            ),
            Duration::from_secs(20),
        )
        .await;
    // By ids: one done, one unknown.
    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, bulk) = stack
        .call(
            Method::POST,
            "/v1/orders/process",
            Some(&json!({ "ids": [waiting[1], unknown] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{bulk}");
    assert_eq!(bulk["started"], 0);
    assert_eq!(
        bulk["skipped_by_reason"],
        json!({ "not_found": 1, "not_waiting": 1 })
    );
    let (status, err) = stack
        .call(
            Method::POST,
            "/v1/orders/process",
            Some(&json!({ "ids": [], "filter": {} })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let (status, err) = stack
        .call(
            Method::POST,
            "/v1/orders/process",
            Some(&json!({ "filter": { "sort": "total" } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "filter.sort");
    let (status, err) = stack
        .call(
            Method::POST,
            "/v1/orders/process",
            Some(&json!({ "filter": { "q": "ab" } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "filter.q");
    let mut commands = game.commands();
    commands.sort();
    assert_eq!(
        commands,
        ["auto Zed", "vip Ann", "vip Bob", "vip Cid"].map(String::from),
        "each processed order delivered once"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_a_process_delay_starts_by_itself_once_it_is_over() {
    let stack = TestStack::start().await;
    let game = fake(Behaviour::default()).await;
    stack.add_game_server("s", &game).await;
    let (status, p) = stack
        .call(
            Method::PUT,
            "/v1/products/later",
            Some(&json!({
                "name": "Later",
                "process_delay_secs": 2,
                "actions": [{ "kind": "rcon", "game_server": "s", "command": "later {username}" }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    let (status, err) = stack
        .call(
            Method::PUT,
            "/v1/products/never",
            Some(&json!({ "name": "Never", "process_delay_secs": 99_999_999, "actions": [] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "process_delay_secs");
    let o = post(&stack, &sample_order("later", "Steve")).await;
    let order = id(&o);
    assert_eq!(o["process_hold"], "delayed", "{o}");
    let after = chrono::DateTime::parse_from_rfc3339(o["process_after"].as_str().expect("after"))
        .expect("time");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        deliveries_of(&stack, &order).await,
        0,
        "not before its time"
    );
    let view = stack
        .wait_for_order(&order, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(game.commands(), vec!["later Steve".to_owned()]);
    let started = view["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["kind"] == "order.processed")
        .cloned()
        .expect("processed entry");
    assert_eq!(started["actor"], "courier:process-delay");
    let at = chrono::DateTime::parse_from_rfc3339(started["at"].as_str().expect("at")).expect("at");
    assert!(at >= after, "started at {at}, due {after}");
    assert!(view["process_hold"].is_null());
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_notes_are_in_the_detail_for_admins_only_and_unpaid_orders_are_not_fulfilled_by_hand()
{
    let stack = TestStack::start_with(|_| {}, false).await;
    stack
        .call(
            Method::PUT,
            "/v1/products/poster",
            Some(&json!({ "name": "Poster", "actions": [] })),
        )
        .await;
    let mut body = sample_order("poster", "Steve");
    body["payment_status"] = json!("pending");
    let o = post(&stack, &body).await;
    let order = id(&o);
    let item = o["items"][0]["id"].as_str().expect("item").to_owned();
    let (status, err) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{order}/items/{item}/deliver"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("message")
            .contains("payment")
    );
    let (status, _) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{order}/notes"),
            Some(&json!({ "body": "called the customer" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let admin = stack.order(&order).await;
    assert_eq!(admin["notes"][0]["body"], "called the customer");
    let reader = "ck_test_reader_manual_0123456789";
    courier_shared::db::api_keys::insert(&stack.pool, "reader", reader, &["orders:read".into()])
        .await
        .expect("reader key");
    let (status, view) = stack
        .call_as(
            reader,
            Method::GET,
            &format!("/v1/orders/{order}?expand=full"),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert!(view.get("notes").is_none(), "{view}");
    let (status, _) = stack
        .call_as(
            reader,
            Method::POST,
            &format!("/v1/orders/{order}/complete"),
            Some(&json!({})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut bad = sample_order("poster", "Steve");
    bad["shipping_address"] = json!({ "street": "?" });
    let (status, err) = stack.call(Method::POST, "/v1/orders", Some(&bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    stack.teardown().await;
}
