//! A paid order flows API → outbox → RabbitMQ → worker → RCON → Postgres.

use std::time::Duration;

use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::FakeGameServer;
use courier_tests::stack::TestStack;
use reqwest::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_order_runs_the_command_and_completes() {
    let game = FakeGameServer::start("hunter2", Dialect::Minecraft)
        .await
        .expect("fake server");
    let stack = TestStack::start().await;
    stack.add_game_server("survival", &game).await;
    stack
        .add_rcon_product(
            "vip",
            "survival",
            "lp user {username} parent add vip {quantity} {order_number}",
        )
        .await;

    let (status, order) = stack.post_order("vip", "Notch", None).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["payment_status"], "paid");
    assert_eq!(order["total"], "10.48", "2 × 4.99 + 0.50 tax");
    // Paid, with a delivery queued: processing from the start.
    assert_eq!(order["status"], "processing", "{order}");
    assert_eq!(
        order["items"][0]["delivery_status"], "processing",
        "{order}"
    );
    let number = order["order_number"]
        .as_str()
        .expect("order number")
        .to_owned();
    assert!(number.starts_with("ORD-") && number.len() == 14, "{number}");

    let done = stack
        .wait_for_order(
            order["id"].as_str().expect("id"),
            "completed",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(
        game.commands(),
        vec![format!("lp user Notch parent add vip 2 {number}")]
    );
    assert_eq!(done["items"][0]["delivery_status"], "delivered");
    let delivery = &done["deliveries"][0];
    assert_eq!(delivery["status"], "succeeded");
    assert_eq!(delivery["attempts"], 1);
    let attempt = &delivery["attempt_history"][0];
    assert_eq!(attempt["outcome"], "succeeded");
    assert_eq!(
        attempt["response"],
        format!("ok: lp user Notch parent add vip 2 {number}")
    );
    assert!(attempt["finished_at"].is_string());
    let kinds: Vec<&str> = done["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for expected in [
        "order.created",
        "delivery.started",
        "delivery.succeeded",
        "order.completed",
    ] {
        assert!(
            kinds.contains(&expected),
            "timeline lacks {expected}: {kinds:?}"
        );
    }
    assert!(!done["completed_at"].is_null());

    // Readable by order number too.
    let (status, by_number) = stack
        .call(Method::GET, &format!("/v1/orders/{number}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_number["id"], done["id"]);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_idempotency_key_returns_the_same_order_and_another_body_conflicts() {
    let game = FakeGameServer::start("pw", Dialect::Source)
        .await
        .expect("fake server");
    let stack = TestStack::start().await;
    stack.add_game_server("arena", &game).await;
    stack
        .add_rcon_product("coins", "arena", "sm_givecoins {username} {quantity}")
        .await;

    let (first, a) = stack.post_order("coins", "gabe", Some("key-1")).await;
    let (second, b) = stack.post_order("coins", "gabe", Some("key-1")).await;
    assert_eq!(first, StatusCode::CREATED, "{a}");
    assert_eq!(second, StatusCode::OK, "{b}");
    assert_eq!(a["id"], b["id"]);
    let (conflict, err) = stack.post_order("coins", "other", Some("key-1")).await;
    assert_eq!(conflict, StatusCode::CONFLICT);
    assert_eq!(err["error"]["code"], "idempotency_key_reused");

    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&stack.pool)
        .await
        .expect("count");
    assert_eq!(orders, 1);
    stack
        .wait_for_order(
            a["id"].as_str().expect("id"),
            "completed",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(game.commands(), vec!["sm_givecoins gabe 2".to_owned()]);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_create_one_order() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_game_server("s", &game).await;
    stack.add_rcon_product("p", "s", "say {username}").await;
    let results = futures_util::future::join_all(
        (0..8).map(|_| stack.post_order("p", "steve", Some("race"))),
    )
    .await;
    let ids: std::collections::HashSet<String> =
        results.iter().map(|(_, o)| o["id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert_eq!(
        results
            .iter()
            .filter(|(s, _)| *s == StatusCode::CREATED)
            .count(),
        1
    );
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&stack.pool)
        .await
        .expect("count");
    assert_eq!(deliveries, 1);
    stack.teardown().await;
}

/// Orders accepted at the same moment are written together (group commit);
/// a batch Postgres refuses — here, two requests with one key in it — is
/// written order by order, so every caller still gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_accepted_together_each_get_their_own_answer() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    let stack = TestStack::start_with(|_| {}, true).await;
    stack.add_game_server("s", &game).await;
    stack.add_rcon_product("p", "s", "say {username}").await;
    // 20 keys, each sent twice at once: 40 requests, 20 orders.
    let keys: Vec<String> = (0..40).map(|i| format!("together-{}", i % 20)).collect();
    let users: Vec<String> = (0..40).map(|i| format!("player{}", i % 20)).collect();
    let results = futures_util::future::join_all(
        keys.iter()
            .zip(&users)
            .map(|(k, u)| stack.post_order("p", u, Some(k))),
    )
    .await;
    let mut by_key: std::collections::HashMap<&str, Vec<(StatusCode, String)>> =
        std::collections::HashMap::new();
    for (key, (status, order)) in keys.iter().zip(&results) {
        assert!(
            *status == StatusCode::CREATED || *status == StatusCode::OK,
            "{status} {order}"
        );
        by_key
            .entry(key)
            .or_default()
            .push((*status, order["id"].to_string()));
    }
    for (key, answers) in &by_key {
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0].1, answers[1].1, "{key}: two orders for one key");
        let created = answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CREATED)
            .count();
        assert_eq!(created, 1, "{key}: {answers:?}");
    }
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM deliveries), \
           (SELECT count(*) FROM order_events WHERE kind = 'order.created')",
    )
    .fetch_one(&stack.pool)
    .await
    .expect("counts");
    assert_eq!(counts, (20, 20, 20));
    for answers in by_key.values() {
        stack
            .wait_for_order(
                answers[0].1.trim_matches('"'),
                "completed",
                Duration::from_secs(30),
            )
            .await;
    }
    let mut commands = game.commands();
    commands.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("say player{i}")).collect();
    expected.sort();
    assert_eq!(commands, expected, "each order's command ran once");
    // Every request went through the lanes once; written alone only after a
    // refused batch (not counted again).
    let metrics = crate::metrics::scrape(&stack.http, &stack.url("/metrics")).await;
    let written = crate::metrics::sample(&metrics, "courier_accept_batch_size_sum")
        .expect("courier_accept_batch_size_sum");
    assert_eq!(written, 40.0, "{metrics}");
    let batches = crate::metrics::sample(&metrics, "courier_accept_batch_size_count")
        .expect("courier_accept_batch_size_count");
    // 40 requests at once share statements (5 to 8 batches seen here), so
    // pairs with one key met in a batch and were written one by one.
    assert!(batches < 40.0, "no batch held two orders: {metrics}");
    stack.teardown().await;
}

/// The worker keeps the game servers it loaded, but the claim of every job
/// says whether the row changed: a server moved (new address, password)
/// between two orders gets the second order at its new place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_server_changed_between_orders_is_used_by_the_next_one() {
    let old = FakeGameServer::start("old-pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    let new = FakeGameServer::start("new-pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    let stack = TestStack::start().await;
    stack.add_game_server("s", &old).await;
    stack.add_rcon_product("p", "s", "say {username}").await;
    let (_, first) = stack.post_order("p", "alex", None).await;
    stack
        .wait_for_order(
            first["id"].as_str().expect("id"),
            "completed",
            Duration::from_secs(20),
        )
        .await;
    stack.add_game_server("s", &new).await;
    let (_, second) = stack.post_order("p", "steve", None).await;
    stack
        .wait_for_order(
            second["id"].as_str().expect("id"),
            "completed",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(old.commands(), vec!["say alex".to_owned()]);
    assert_eq!(new.commands(), vec!["say steve".to_owned()]);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_payment_order_queues_nothing() {
    let (stack, _game) = TestStack::with_rcon_product("say {username}").await;
    let mut body = courier_tests::stack::sample_order("p", "steve");
    body["payment_status"] = "pending".into();
    let (status, order) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["status"], "pending");
    assert_eq!(order["payment_status"], "pending");
    assert_eq!(order["deliveries_queued"], 0, "{order}");
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&stack.pool)
        .await
        .expect("count");
    assert_eq!(outbox, 0);
    stack.teardown().await;
}
