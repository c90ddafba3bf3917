//! Poison messages, bulk retry on a snapshot, discard, and "Retry delivery" on an item.

use std::time::Duration;

use courier_shared::db::dead_letters::Filter;
use courier_shared::rcon::Dialect;
use courier_shared::service::admin;
use courier_tests::fakes::rcon::FakeGameServer;
use courier_tests::stack::TestStack;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_recorded_and_the_worker_keeps_consuming() {
    let (stack, _game) = TestStack::with_rcon_product("give {username} apple").await;

    stack
        .publish_raw("courier.rcon", b"{ this is not a job")
        .await;
    stack
        .wait_until(
            "poison recorded",
            "SELECT EXISTS (SELECT 1 FROM dead_letters WHERE delivery_id IS NULL)",
            Duration::from_secs(20),
        )
        .await;
    let (_, list) = stack
        .call(Method::GET, "/v1/admin/dead-letters", None)
        .await;
    let dl = &list["dead_letters"][0];
    assert_eq!(dl["body"], "{ this is not a job");
    assert!(
        dl["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("rejected"),
        "{dl}"
    );
    assert_eq!(dl["source"], "recorder");

    let (_, order) = stack.post_order("p", "alex", None).await;
    stack
        .wait_for_order(
            order["id"].as_str().expect("id"),
            "completed",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(
        stack
            .worker()
            .stats()
            .poison
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // A poison dead letter cannot be retried, only discarded.
    let id = dl["id"].as_i64().expect("id");
    let (status, _) = stack
        .call(
            Method::POST,
            &format!("/v1/admin/dead-letters/{id}/retry"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = stack
        .call(
            Method::POST,
            &format!("/v1/admin/dead-letters/{id}/discard"),
            Some(&json!({ "reason": "garbage" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    stack.teardown().await;
}

async fn dead_order(stack: &TestStack, user: &str) -> String {
    let (_, order) = stack.post_order("p", user, None).await;
    let id = order["id"].as_str().expect("id").to_owned();
    stack
        .wait_for_order(&id, "failed", Duration::from_secs(20))
        .await;
    id
}

/// A stack whose game server `s` (a fake expecting password `right`) is
/// registered with the wrong password, so orders of product `p` die.
async fn misconfigured_stack() -> (TestStack, FakeGameServer) {
    let game = FakeGameServer::start("right", Dialect::Minecraft)
        .await
        .expect("fake server");
    let stack = TestStack::start().await;
    set_password(&stack, &game, "wrong").await;
    stack
        .add_rcon_product("p", "s", "give {username} apple")
        .await;
    (stack, game)
}

/// Registers game server `s` with `password`.
async fn set_password(stack: &TestStack, game: &FakeGameServer, password: &str) {
    let server = json!({ "host": "127.0.0.1", "port": game.addr.port(), "password": password, "dialect": "minecraft" });
    let (status, body) = stack
        .call(Method::PUT, "/v1/game-servers/s", Some(&server))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_retry_works_on_a_snapshot_and_discard_records_who_and_why() {
    let (stack, game) = misconfigured_stack().await;

    let a = dead_order(&stack, "alice").await;
    let b = dead_order(&stack, "bob").await;
    let mut conn = stack.pool.acquire().await.expect("conn");
    let filter = Filter {
        error: Some("RCON password".into()),
        ..Filter::default()
    };
    let snapshot = courier_shared::db::dead_letters::snapshot(&mut conn, &filter)
        .await
        .expect("snapshot");
    drop(conn);
    assert_eq!(snapshot.len(), 2);
    // This one dies after the snapshot was taken.
    let c = dead_order(&stack, "carol").await;

    set_password(&stack, &game, "right").await;
    let result = admin::retry_snapshot(&stack.pool, &snapshot, "test")
        .await
        .expect("bulk retry");
    assert_eq!((result.matched, result.requeued), (2, 2));
    stack
        .wait_for_order(&a, "completed", Duration::from_secs(20))
        .await;
    stack
        .wait_for_order(&b, "completed", Duration::from_secs(20))
        .await;
    let still = stack.order(&c).await;
    assert_eq!(
        still["status"], "failed",
        "a delivery that died after the snapshot is not swept in"
    );

    // Discard carol's through the API: cancelled, with who and why on the timeline.
    let (_, list) = stack
        .call(Method::GET, "/v1/admin/dead-letters?error=password", None)
        .await;
    let open = list["dead_letters"].as_array().expect("list");
    assert_eq!(open.len(), 1, "{list}");
    let dl = open[0]["id"].as_i64().expect("id");
    let (status, _) = stack
        .call(
            Method::POST,
            &format!("/v1/admin/dead-letters/{dl}/discard"),
            Some(&json!({ "reason": "customer refunded" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let order = stack.order(&c).await;
    assert_eq!(order["deliveries"][0]["status"], "cancelled");
    let event = order["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["kind"] == "delivery.cancelled")
        .expect("event")
        .clone();
    assert_eq!(event["actor"], "api:bootstrap-admin");
    assert!(
        event["message"]
            .as_str()
            .unwrap_or_default()
            .contains("customer refunded")
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_retry_through_the_api_and_retry_delivery_on_an_item() {
    let (stack, game) = misconfigured_stack().await;
    let a = dead_order(&stack, "alice").await;
    let b = dead_order(&stack, "bob").await;
    set_password(&stack, &game, "right").await;

    let (status, result) = stack
        .call(
            Method::POST,
            "/v1/admin/dead-letters/retry",
            Some(&json!({ "kind": "rcon", "error": "bob" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(
        result["matched"], 0,
        "the filter matches reasons, not usernames: {result}"
    );
    let (_, result) = stack
        .call(
            Method::POST,
            "/v1/admin/dead-letters/retry",
            Some(&json!({ "kind": "rcon" })),
        )
        .await;
    assert_eq!(
        (result["matched"].as_i64(), result["requeued"].as_i64()),
        (Some(2), Some(2)),
        "{result}"
    );
    stack
        .wait_for_order(&a, "completed", Duration::from_secs(20))
        .await;
    stack
        .wait_for_order(&b, "completed", Duration::from_secs(20))
        .await;

    // "Retry delivery" on a failed item.
    set_password(&stack, &game, "wrong").await;
    let c = dead_order(&stack, "carol").await;
    set_password(&stack, &game, "right").await;
    let order = stack.order(&c).await;
    let item = order["items"][0]["id"].as_str().expect("item");
    let (status, body) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{c}/items/{item}/retry"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    stack
        .wait_for_order(&c, "completed", Duration::from_secs(20))
        .await;
    let (status, _) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{c}/items/{item}/retry"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing left to retry");
    stack.teardown().await;
}
