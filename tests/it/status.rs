//! Status reads: the order's own row by default (with an ETag), the whole
//! view on request, and waiting for a status without polling.

use std::time::{Duration, Instant};

use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::{Behaviour, FakeGameServer};
use courier_tests::stack::TestStack;
use reqwest::{Method, StatusCode};

async fn get(
    stack: &TestStack,
    path: &str,
    etag: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let mut req = stack
        .http
        .get(stack.url(path))
        .bearer_auth(&stack.admin_key);
    if let Some(tag) = etag {
        req = req.header("If-None-Match", tag);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    let tag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, tag, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_read_is_the_order_row_with_an_etag_and_the_full_view_loses_nothing() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    let stack = TestStack::start().await;
    stack.add_game_server("arena", &game).await;
    stack
        .add_rcon_product("vip", "arena", "vip {username}")
        .await;
    let (_, order) = stack.post_order("vip", "alex", None).await;
    let id = order["id"].as_str().expect("id").to_owned();
    stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;

    let (status, tag, body) = get(&stack, &format!("/v1/orders/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let slim: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(slim["status"], "completed");
    assert_eq!(slim["total"], "10.48");
    assert!(!slim["completed_at"].is_null());
    assert!(
        slim.get("items").is_none() && slim.get("timeline").is_none(),
        "{slim}"
    );
    let tag = tag.expect("an ETag");

    // Unchanged: 304 with the same tag, and no body.
    let (status, again, body) = get(&stack, &format!("/v1/orders/{id}"), Some(&tag)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.as_deref(), Some(tag.as_str()));
    assert!(body.is_empty());
    // By order number, the same row and tag.
    let number = slim["order_number"].as_str().expect("number");
    let (status, by_number, _) = get(&stack, &format!("/v1/orders/{number}"), Some(&tag)).await;
    assert_eq!(
        (status, by_number.as_deref()),
        (StatusCode::NOT_MODIFIED, Some(tag.as_str()))
    );
    // A change gives another tag.
    sqlx::query("UPDATE orders SET payment_issue = 'noted', updated_at = now() WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&id).expect("uuid"))
        .execute(&stack.pool)
        .await
        .expect("update");
    let (status, changed, _) = get(&stack, &format!("/v1/orders/{id}"), Some(&tag)).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(changed.as_deref(), Some(tag.as_str()));

    // The full view: one stored event per state change of the order; the
    // attempt's start and success come from the attempts table.
    let stored = stack
        .count(&format!(
            "SELECT count(*) FROM order_events WHERE order_id = '{id}'"
        ))
        .await;
    // Accepted `processing` (its delivery was queued at once): no move to
    // record at the claim.
    assert_eq!(stored, 2, "order.created, order.completed");
    let full = stack.order(&id).await;
    let kinds: Vec<&str> = full["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "order.created",
            "delivery.started",
            "delivery.succeeded",
            "order.completed"
        ],
        "in the order they happened"
    );
    let succeeded = full["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["kind"] == "delivery.succeeded")
        .expect("succeeded entry");
    assert_eq!(succeeded["data"]["response"], "ok: vip alex");
    assert_eq!(succeeded["delivery_id"], full["deliveries"][0]["id"]);
    assert_eq!(full["items"][0]["delivery_status"], "delivered");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waits_for_completion_and_a_timeout_answers_the_current_status() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    game.set(Behaviour {
        delay: Duration::from_millis(1500),
        ..Default::default()
    });
    let stack = TestStack::start().await;
    stack.add_game_server("arena", &game).await;
    stack
        .add_rcon_product("vip", "arena", "vip {username}")
        .await;

    // A short wait ends at its timeout with the status as it is.
    let (_, order) = stack.post_order("vip", "slow", None).await;
    let id = order["id"].as_str().expect("id").to_owned();
    let started = Instant::now();
    let (status, _, body) = get(
        &stack,
        &format!("/v1/orders/{id}?wait_for=completed&timeout=300ms"),
        None,
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    let o: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        o["status"] == "pending" || o["status"] == "processing",
        "{o}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );

    // A long one answers as soon as the order completes, not at its timeout.
    let started = Instant::now();
    let (status, _, body) = get(
        &stack,
        &format!("/v1/orders/{id}?wait_for=completed&timeout=20s&expand=full"),
        None,
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    let o: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(o["status"], "completed", "{o}");
    assert_eq!(o["deliveries"][0]["status"], "succeeded");
    assert!(
        waited < Duration::from_secs(10),
        "woken by the change: {waited:?}"
    );
    assert_eq!(game.commands(), vec!["vip slow".to_owned()]);

    // Already there: answered at once.
    let started = Instant::now();
    let (status, _, _) = get(
        &stack,
        &format!("/v1/orders/{id}?wait_for=completed&timeout=20s"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_read_parameters_are_named() {
    let stack = TestStack::start().await;
    let (_, order) = {
        let game = FakeGameServer::start("pw", Dialect::Minecraft)
            .await
            .expect("fake server");
        stack.add_game_server("arena", &game).await;
        stack
            .add_rcon_product("vip", "arena", "vip {username}")
            .await;
        stack.post_order("vip", "bad", None).await
    };
    let id = order["id"].as_str().expect("id").to_owned();
    for (query, field) in [
        ("expand=everything", "expand"),
        ("wait_for=shipped", "wait_for"),
        ("wait_for=completed&timeout=61s", "timeout"),
        ("wait_for=completed&timeout=soon", "timeout"),
        ("timeout=5s", "timeout"),
    ] {
        let (status, body) = stack
            .call(Method::GET, &format!("/v1/orders/{id}?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    let (status, body) = stack
        .call(Method::GET, &format!("/v1/orders/{id}?verbose=1"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_query");
    stack.teardown().await;
}

/// When Postgres ends the API's connections (a restart, a failover, a
/// proxy's idle timeout), a read that meets a dead connection answers 503
/// `unavailable` — never 500 — and the pool recovers within a few reads.
/// Pooled connections are pinged on acquire only after `db::PING_IF_IDLE`
/// idle, so one used a moment before it was cut may be met.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_the_databases_connections_were_cut_are_answered() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_game_server("arena", &game).await;
    stack
        .add_rcon_product("vip", "arena", "vip {username}")
        .await;
    let (_, order) = stack.post_order("vip", "steve", None).await;
    let path = format!("/v1/orders/{}", order["id"].as_str().expect("id"));
    for _ in 0..4 {
        assert_eq!(get(&stack, &path, None).await.0, StatusCode::OK);
    }
    let mut own =
        <sqlx::PgConnection as sqlx::Connection>::connect(stack.settings.database.url.expose())
            .await
            .expect("connect");
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
    )
    .fetch_one(&mut own)
    .await
    .expect("terminate");
    assert!(cut >= 1, "the API's connections were there to cut");
    let mut unavailable = 0;
    loop {
        let (status, _, body) = get(&stack, &path, None).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains(r#""code":"unavailable""#), "{body}");
        unavailable += 1;
        assert!(unavailable <= 8, "the pool (8 connections) recovers");
    }
    for _ in 0..4 {
        assert_eq!(get(&stack, &path, None).await.0, StatusCode::OK);
    }
    stack.teardown().await;
}

/// Status reads that arrive together are answered by one statement; each
/// still gets its own order — by id or by order number — or its own 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_at_the_same_moment_each_get_their_own_order() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_game_server("arena", &game).await;
    stack
        .add_rcon_product("vip", "arena", "vip {username}")
        .await;
    let mut orders = Vec::new();
    for name in ["alex", "sam", "kim"] {
        let (_, o) = stack.post_order("vip", name, None).await;
        let id = o["id"].as_str().expect("id").to_owned();
        let number = o["order_number"].as_str().expect("number").to_owned();
        orders.push((id, number));
    }
    let missing = uuid::Uuid::new_v4().to_string();
    let asks: Vec<(String, Option<String>)> = (0..48)
        .map(|i| match i % 4 {
            3 => (missing.clone(), None),
            k => {
                let (id, number) = &orders[i % 3];
                let by = if k == 1 { number } else { id };
                (by.clone(), Some(id.clone()))
            }
        })
        .collect();
    let paths: Vec<String> = asks
        .iter()
        .map(|(by, _)| format!("/v1/orders/{by}"))
        .collect();
    let answers = futures_util::future::join_all(paths.iter().map(|p| get(&stack, p, None))).await;
    for ((by, expected), (status, _, body)) in asks.iter().zip(answers) {
        match expected {
            Some(id) => {
                assert_eq!(status, StatusCode::OK, "{by}: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).expect("json");
                assert_eq!(v["id"].as_str(), Some(id.as_str()), "{by}");
            }
            None => assert_eq!(status, StatusCode::NOT_FOUND, "{by}: {body}"),
        }
    }
    stack.teardown().await;
}

/// Every writer of an order's status is announced to waiting reads by the
/// `orders_status_notify` trigger at commit, except one whose transaction
/// announces its orders itself after commit (`courier.announce =
/// after_commit`, the worker's batched writers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_change_is_announced_at_commit_unless_its_writer_announces_it_after() {
    // No worker: nothing else announces on the channel.
    let (stack, _game) = TestStack::with_rcon_product_and("vip {username}", |_| {}, false).await;
    let mut ids = Vec::new();
    for name in ["quiet", "heard"] {
        let (status, order) = stack.post_order("p", name, None).await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        ids.push(uuid::Uuid::parse_str(order["id"].as_str().expect("id")).expect("uuid"));
    }
    let mut listener = sqlx::postgres::PgListener::connect_with(&stack.pool)
        .await
        .expect("listener");
    listener.listen("courier_orders").await.expect("listen");
    let cancel = "UPDATE orders SET status = 'cancelled' WHERE id = $1";

    let mut tx = stack.pool.begin().await.expect("tx");
    sqlx::query("SELECT set_config('courier.announce', 'after_commit', true)")
        .execute(&mut *tx)
        .await
        .expect("setting");
    sqlx::query(cancel)
        .bind(ids[0])
        .execute(&mut *tx)
        .await
        .expect("update");
    tx.commit().await.expect("commit");
    sqlx::query(cancel)
        .bind(ids[1])
        .execute(&stack.pool)
        .await
        .expect("update");

    // Notifications arrive in commit order: had the first change been
    // announced, it would be heard first.
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the second change is announced")
        .expect("notification");
    assert_eq!(heard.payload(), ids[1].to_string());
    stack.teardown().await;
}
