//! CD keys: own stock (atomic under concurrency), supplier purchase with
//! fallback, exactly-once buying, waiting when nothing is available, keys
//! entered by hand, encryption at rest and the scope that reveals them.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use courier_shared::config::{Secret, SupplierSettings};
use courier_tests::fakes::supplier::{FakeSupplier, SupplierBehaviour};
use courier_tests::stack::TestStack;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn supplier_settings(fakes: &[(&str, &FakeSupplier)]) -> BTreeMap<String, SupplierSettings> {
    fakes
        .iter()
        .map(|(name, f)| {
            (
                (*name).to_owned(),
                SupplierSettings {
                    base_url: f.base.clone(),
                    api_key: Secret::new(f.api_key.clone()),
                    requests_per_second: 50,
                    timeout_ms: 2000,
                },
            )
        })
        .collect()
}

async fn key_order(stack: &TestStack, sku: &str, qty: i32) -> String {
    let body = json!({ "currency": "USD", "items": [{ "product": sku, "quantity": qty, "unit_price": "20.00" }] });
    let (status, o) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert!(status.is_success(), "{o}");
    o["id"].as_str().expect("id").to_owned()
}

fn codes(order: &Value) -> Vec<String> {
    order["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["keys"].as_array().cloned().unwrap_or_default())
        .filter_map(|k| k["code"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_the_second_supplier_and_buys_once() {
    let cheap = FakeSupplier::start("cheap").await.expect("supplier");
    let backup = FakeSupplier::start("backup").await.expect("supplier");
    cheap.set_product("g1", 30.0, 5); // above max price
    backup.set_product("g1-b", 12.5, 3);
    let map = supplier_settings(&[("cheap", &cheap), ("backup", &backup)]);
    let stack = TestStack::start_with(|s| s.suppliers = map, true).await;
    stack
        .add_product(
            "game",
            json!([{ "kind": "supplier_key", "candidates": [
                { "supplier": "cheap", "supplier_product_id": "g1", "max_price": "15.00" },
                { "supplier": "backup", "supplier_product_id": "g1-b", "max_price": "15.00" }
            ]}]),
        )
        .await;
    let id = key_order(&stack, "game", 1).await;
    let done = stack
        .wait_for_order(&id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(
        cheap.orders_placed().len(),
        0,
        "too expensive: never ordered"
    );
    let placed = backup.orders_placed();
    assert_eq!(
        placed,
        vec![done["deliveries"][0]["id"].as_str().expect("id").to_owned()],
        "external id is our delivery id"
    );
    let keys = codes(&done);
    assert_eq!(keys.len(), 1);
    assert!(keys[0].starts_with("KEY-g1-b-"));
    assert_eq!(done["items"][0]["keys"][0]["cost"], "12.5");
    // The key is obtained and shown: the item passed `fulfilled` on its way
    // to `delivered` (item moves are not timeline entries; the attempt is).
    assert_eq!(done["items"][0]["delivery_status"], "delivered");
    let messages: Vec<&str> = done["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    let succeeded = messages.iter().position(|m| *m == "attempt 1 succeeded");
    let completed = messages
        .iter()
        .position(|m| *m == "order processing → completed");
    assert!(
        succeeded.is_some() && succeeded < completed,
        "the attempt, then the completion: {messages:?}"
    );

    // The same job again (a duplicate message): nothing is bought twice.
    let delivery = done["deliveries"][0]["id"].clone();
    stack
        .publish_raw(
            "courier.supplier",
            json!({ "delivery_id": delivery, "kind": "supplier_key" })
                .to_string()
                .as_bytes(),
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stack
        .worker()
        .stats()
        .skipped
        .load(std::sync::atomic::Ordering::SeqCst)
        < 1
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backup.orders_placed().len(), 1);

    // Stored encrypted; shown only with the orders:keys scope.
    let raw: Vec<u8> = sqlx::query_scalar("SELECT code_enc FROM item_keys")
        .fetch_one(&stack.pool)
        .await
        .expect("row");
    assert!(!raw.windows(keys[0].len()).any(|w| w == keys[0].as_bytes()));
    let reader = "ck_reader_without_keys_scope_0123456789";
    courier_shared::db::api_keys::insert(
        &stack.pool,
        "reader",
        reader,
        &["orders:read".to_owned()],
    )
    .await
    .expect("key");
    let (_, seen) = stack
        .call_as(
            reader,
            Method::GET,
            &format!("/v1/orders/{id}?expand=full"),
            None,
            &[],
        )
        .await;
    assert!(
        seen["items"][0]["keys"][0]["source"].is_string(),
        "the key is listed: {seen}"
    );
    assert!(seen["items"][0]["keys"][0]["code"].is_null(), "{seen}");
    assert!(
        seen["items"][0]["keys"][0]["cost"].is_null(),
        "cost is for admins"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_supplier_is_slow_is_collected_later_without_a_second_purchase() {
    let sup = FakeSupplier::start("slowkeys").await.expect("supplier");
    sup.set_product("g", 5.0, 10);
    sup.set(SupplierBehaviour {
        keys_after: Duration::from_secs(4),
        ..SupplierBehaviour::default()
    });
    let map = supplier_settings(&[("slowkeys", &sup)]);
    let stack = TestStack::start_with(|s| s.suppliers = map, true).await;
    stack
        .add_product("game", json!([{ "kind": "supplier_key", "candidates": [{ "supplier": "slowkeys", "supplier_product_id": "g", "max_price": "9" }] }]))
        .await;
    let id = key_order(&stack, "game", 1).await;
    let done = stack
        .wait_for_order(&id, "completed", Duration::from_secs(30))
        .await;
    let attempts = done["deliveries"][0]["attempt_history"]
        .as_array()
        .expect("history")
        .len();
    assert!(
        attempts >= 2,
        "the first attempt waited for keys: {attempts}"
    );
    assert_eq!(
        sup.orders_placed().len(),
        1,
        "one purchase across all attempts"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_available_waits_with_an_alert_until_a_key_is_entered_by_hand() {
    let sup = FakeSupplier::start("empty").await.expect("supplier");
    sup.set_product("g", 5.0, 0);
    let map = supplier_settings(&[("empty", &sup)]);
    let stack = TestStack::start_with(|s| s.suppliers = map, true).await;
    stack
        .add_product("game", json!([{ "kind": "supplier_key", "candidates": [{ "supplier": "empty", "supplier_product_id": "g", "max_price": "9" }] }]))
        .await;
    let id = key_order(&stack, "game", 1).await;
    stack
        .wait_until(
            "waiting",
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE status = 'waiting')",
            Duration::from_secs(20),
        )
        .await;
    let (_, alerts) = stack.call(Method::GET, "/v1/admin/alerts", None).await;
    assert_eq!(alerts["alerts"][0]["kind"], "no_key_available", "{alerts}");
    let o = stack.order(&id).await;
    assert!(
        o["deliveries"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("out of stock"),
        "{o}"
    );
    let item = o["items"][0]["id"].as_str().expect("item").to_owned();
    let (status, body) = stack
        .call(
            Method::POST,
            &format!("/v1/admin/items/{item}/key"),
            Some(&json!({ "code": "HAND-ENTERED-1" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = stack
        .wait_for_order(&id, "completed", Duration::from_secs(10))
        .await;
    assert_eq!(codes(&done), vec!["HAND-ENTERED-1".to_owned()]);
    assert_eq!(done["items"][0]["keys"][0]["source"], "manual");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_stock_is_never_given_twice_under_fifty_concurrent_orders() {
    let stack = TestStack::start().await;
    stack
        .add_product(
            "gift",
            json!([{ "kind": "supplier_key", "stock_only": true, "low_stock_threshold": 5 }]),
        )
        .await;
    let csv: String = std::iter::once("code".to_owned())
        .chain((0..30).map(|i| format!("STOCK-{i:03}")))
        .collect::<Vec<_>>()
        .join("\n");
    let resp = stack
        .http
        .post(stack.url("/v1/products/gift/keys"))
        .bearer_auth(&stack.admin_key)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .expect("upload");
    let uploaded: Value = resp.json().await.expect("json");
    assert_eq!(uploaded, json!({ "added": 30, "duplicates": 0 }));
    let (_, again) = stack
        .call(
            Method::POST,
            "/v1/products/gift/keys",
            Some(&json!({ "keys": ["STOCK-000", "NEW-1"] })),
        )
        .await;
    assert_eq!(again, json!({ "added": 1, "duplicates": 1 }));

    let ids = futures_util::future::join_all((0..50).map(|_| key_order(&stack, "gift", 1))).await;
    stack
        .wait_until(
            "the 31 stock keys handed out",
            "SELECT count(*) = 31 FROM deliveries WHERE status = 'succeeded'",
            Duration::from_secs(60),
        )
        .await;
    // The other 19 wait for stock (re-checked, never succeeding).
    stack
        .wait_until(
            "the rest waiting",
            "SELECT count(*) = 19 FROM deliveries WHERE status IN ('waiting', 'running') AND attempts >= 1",
            Duration::from_secs(30),
        )
        .await;
    let mut seen = HashSet::new();
    let mut delivered = 0;
    for id in &ids {
        let o = stack.order(id).await;
        for code in codes(&o) {
            assert!(seen.insert(code.clone()), "key {code} given twice");
            delivered += 1;
        }
    }
    assert_eq!(delivered, 31, "every stock key used once, and no more");
    let (_, alerts) = stack.call(Method::GET, "/v1/admin/alerts", None).await;
    let kinds: Vec<&str> = alerts["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"low_stock"), "{kinds:?}");

    // A key released back to stock (by a refund) goes to the next order. The
    // reads above revealed every code, and a revealed code is never released:
    // this one is marked unseen, as if its order had not been read.
    let (key_id, stock_id, first_holder): (i64, i64, uuid::Uuid) =
        sqlx::query_as("SELECT id, stock_id, delivery_id FROM item_keys ORDER BY id LIMIT 1")
            .fetch_one(&stack.pool)
            .await
            .expect("key");
    sqlx::query("UPDATE item_keys SET revealed_at = NULL WHERE id = $1")
        .bind(key_id)
        .execute(&stack.pool)
        .await
        .expect("unseen");
    let mut conn = stack.pool.acquire().await.expect("conn");
    assert!(
        courier_shared::db::keys::release(&mut conn, key_id)
            .await
            .expect("release")
    );
    // The 19 waiting deliveries re-check every 300 ms: one of them takes it
    // (checking the stock count here instead would race with them).
    stack
        .wait_until(
            "the released key handed out again",
            "SELECT count(*) = 32 FROM deliveries WHERE status = 'succeeded'",
            Duration::from_secs(20),
        )
        .await;
    let holder: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT taken_by FROM key_stock WHERE id = $1")
            .bind(stock_id)
            .fetch_one(&mut *conn)
            .await
            .expect("stock row");
    assert!(
        holder.is_some_and(|h| h != first_holder),
        "taken by another delivery: {holder:?}"
    );
    assert_eq!(
        courier_shared::db::keys::stock_left(&mut conn, uuid_of(&stack, "gift").await)
            .await
            .expect("left"),
        0
    );
    drop(conn); // teardown closes the pool, which waits for every connection
    stack.teardown().await;
}

async fn uuid_of(stack: &TestStack, sku: &str) -> uuid::Uuid {
    sqlx::query_scalar("SELECT id FROM products WHERE sku = $1")
        .bind(sku)
        .fetch_one(&stack.pool)
        .await
        .expect("product")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_order_answer_never_leads_to_buying_from_a_second_supplier() {
    let first = FakeSupplier::start("first").await.expect("supplier");
    let second = FakeSupplier::start("second").await.expect("supplier");
    first.set_product("g", 5.0, 10);
    second.set_product("g", 5.0, 10);
    // The first supplier creates the order but the answer is a 503.
    first.set(SupplierBehaviour {
        lose_next_order_answer: true,
        ..SupplierBehaviour::default()
    });
    let map = supplier_settings(&[("first", &first), ("second", &second)]);
    let stack = TestStack::start_with(|s| s.suppliers = map, true).await;
    stack
        .add_product(
            "game",
            json!([{ "kind": "supplier_key", "candidates": [
                { "supplier": "first", "supplier_product_id": "g", "max_price": "9" },
                { "supplier": "second", "supplier_product_id": "g", "max_price": "9" }
            ]}]),
        )
        .await;
    let id = key_order(&stack, "game", 1).await;
    let done = stack
        .wait_for_order(&id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(
        first.orders_placed().len(),
        1,
        "the order created despite the 503 is the one used"
    );
    assert!(
        second.orders_placed().is_empty(),
        "never bought a second key elsewhere"
    );
    assert_eq!(done["items"][0]["keys"][0]["supplier"], "first");
    stack.teardown().await;
}
