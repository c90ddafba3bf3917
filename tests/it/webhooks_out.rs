//! Outbound webhooks against a fake receiver that checks the Standard
//! Webhooks signature with its own code: the events of an order, retries
//! with one message id, 410 disabling the endpoint, secret rotation, resend,
//! test events, and URLs inside private networks refused.

use std::time::Duration;

use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::{Behaviour, FakeGameServer};
use courier_tests::fakes::receiver::{FakeReceiver, Received};
use courier_tests::stack::TestStack;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// Registers an endpoint for `events` at the receiver and tells the
/// receiver its secret; returns the endpoint's id and secret.
async fn endpoint(stack: &TestStack, receiver: &FakeReceiver, events: Value) -> (String, String) {
    let (status, created) = stack
        .call(
            Method::POST,
            "/v1/webhook-endpoints",
            Some(
                &json!({ "url": receiver.url, "events": events, "description": "the store's CRM" }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    receiver.set_secrets(&[&secret]);
    let id = created["endpoint"]["id"].as_str().expect("id").to_owned();
    (id, secret)
}

fn events(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.body["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn log(stack: &TestStack, endpoint: &str) -> Vec<Value> {
    let (status, log) = stack
        .call(
            Method::GET,
            &format!("/v1/webhook-endpoints/{endpoint}/deliveries"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{log}");
    log["deliveries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_events_arrive_signed_with_its_data_and_in_sequence() {
    let (stack, _game) = TestStack::with_rcon_product("give {username} apple").await;
    let receiver = FakeReceiver::start().await.expect("receiver");
    let (ep, _) = endpoint(
        &stack,
        &receiver,
        json!(["order.created", "order.completed", "order.refunded"]),
    )
    .await;
    let (status, order) = stack.post_order("p", "alex", None).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let id = order["id"].as_str().expect("id");
    stack.wait_for_order(id, "completed", WAIT).await;
    let got = receiver.wait_for(WAIT, |r| r.len() >= 2).await;
    assert_eq!(
        events(&got),
        ["order.created", "order.completed"],
        "{got:?}"
    );
    for r in &got {
        assert_eq!(r.verified_by, [0], "signature of {r:?}");
        assert_eq!(r.answered, 200);
        assert!(r.id.starts_with("msg_"), "{}", r.id);
        let data = &r.body["data"];
        assert_eq!(data["id"], order["id"]);
        assert_eq!(data["order_number"], order["order_number"]);
        assert_eq!(data["customer_email"], "alex@example.com");
        assert_eq!(data["currency"], "USD");
        assert_eq!(data["total"], order["total"]);
        assert_eq!(data["items"][0]["product_name"], "Product p");
        assert_eq!(data["items"][0]["quantity"], 2);
        assert_eq!(data["items"][0]["price"], "4.99");
    }
    assert_ne!(got[0].id, got[1].id);
    assert_eq!(got[1].body["data"]["status"], "completed");
    let (first, second) = (
        got[0].body["sequence"].as_i64().unwrap_or_default(),
        got[1].body["sequence"].as_i64().unwrap_or_default(),
    );
    assert!(first > 0 && second > first, "{first} then {second}");

    // A partial refund, then the rest.
    let (status, r) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{id}/refunds"),
            Some(&json!({ "amount": "1.00", "reason": "requested_by_customer", "revoke": false })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    let got = receiver.wait_for(WAIT, |r| r.len() >= 3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    let refunded = &got[2].body;
    assert_eq!(refunded["event"], "order.refunded");
    assert_eq!(refunded["data"]["refund"]["amount"], "1.00");
    assert_eq!(refunded["data"]["refund"]["full"], false);
    assert_eq!(refunded["data"]["refunded_total"], "1.00");

    // The log: every message, each call with its status and latency. The
    // receiver has the third call before the worker has recorded it.
    stack
        .wait_until(
            "the three calls recorded",
            "SELECT count(*) = 3 FROM deliveries WHERE kind = 'webhook' AND status = 'succeeded'",
            WAIT,
        )
        .await;
    let entries = log(&stack, &ep).await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    for e in &entries {
        assert_eq!(e["status"], "succeeded", "{e}");
        assert_eq!(e["attempts"][0]["status_code"], 200, "{e}");
        assert!(e["attempts"][0]["latency_ms"].is_i64(), "{e}");
    }
    assert_eq!(entries[0]["event"], "order.refunded");
    // Nothing was sent for events the endpoint does not want (processing).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), 3);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_one_message_id_until_it_answers_and_410_disables_it() {
    let (stack, _game) = TestStack::with_rcon_product("give {username} apple").await;
    let receiver = FakeReceiver::start().await.expect("receiver");
    let (ep, _) = endpoint(&stack, &receiver, json!(["order.completed"])).await;
    receiver.answer_next(&[500, 503]);
    stack.post_order("p", "alex", None).await;
    let got = receiver
        .wait_for(WAIT, |r| r.iter().any(|r| r.answered == 200))
        .await;
    let answered: Vec<u16> = got.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [500, 503, 200], "{got:?}");
    assert!(
        got.iter().all(|r| r.id == got[0].id),
        "one message id: {got:?}"
    );
    // Each call is signed at its own time.
    assert!(got.iter().all(|r| r.verified_by == [0]));
    stack
        .wait_until(
            "the webhook delivery is recorded as succeeded",
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE kind = 'webhook' AND status = 'succeeded')",
            WAIT,
        )
        .await;
    let entries = log(&stack, &ep).await;
    let codes: Vec<i64> = entries[0]["attempts"]
        .as_array()
        .map(|a| a.iter().filter_map(|a| a["status_code"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(codes, [500, 503, 200], "{entries:?}");
    assert_eq!(entries[0]["status"], "succeeded");

    // Resend: the same message id and body again.
    let delivery = entries[0]["id"].as_str().expect("delivery id");
    let (status, r) = stack
        .call(
            Method::POST,
            &format!("/v1/webhook-endpoints/{ep}/deliveries/{delivery}/resend"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    let got = receiver.wait_for(WAIT, |r| r.len() >= 4).await;
    assert_eq!(got[3].id, got[0].id);
    assert_eq!(got[3].body, got[0].body);

    // 410 Gone: the endpoint is disabled, the delivery dead, an alert raised.
    receiver.answer_always(Some(410));
    let (_, second) = stack.post_order("p", "bob", None).await;
    stack
        .wait_for_order(second["id"].as_str().expect("id"), "completed", WAIT)
        .await;
    stack
        .wait_until(
            "the endpoint is disabled",
            &format!(
                "SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = '{ep}' AND NOT enabled)"
            ),
            WAIT,
        )
        .await;
    let (_, e) = stack
        .call(Method::GET, &format!("/v1/webhook-endpoints/{ep}"), None)
        .await;
    assert!(
        e["disabled_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("410"),
        "{e}"
    );
    stack
        .wait_until(
            "the 410 delivery is dead with a dead letter",
            &format!(
                "SELECT EXISTS (SELECT 1 FROM deliveries d JOIN dead_letters l ON l.delivery_id = d.id \
                 WHERE d.kind = 'webhook' AND d.target = '{ep}' AND d.status = 'dead' AND l.resolved_at IS NULL)"
            ),
            WAIT,
        )
        .await;
    assert_eq!(stack.alerts("webhook_endpoint_disabled").await.len(), 1);
    assert_eq!(receiver.received().len(), 5);
    // A disabled endpoint gets no new messages.
    let (_, third) = stack.post_order("p", "carol", None).await;
    stack
        .wait_for_order(third["id"].as_str().expect("id"), "completed", WAIT)
        .await;
    let webhooks = stack
        .count(&format!(
            "SELECT count(*) FROM deliveries WHERE kind = 'webhook' AND order_id = '{}'",
            third["id"].as_str().unwrap_or_default()
        ))
        .await;
    assert_eq!(webhooks, 0);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_old_one_until_the_overlap_ends() {
    let (stack, _game) = TestStack::with_rcon_product("give {username} apple").await;
    let receiver = FakeReceiver::start().await.expect("receiver");
    let (ep, old) = endpoint(&stack, &receiver, json!(["order.failed"])).await;
    let (_, order) = stack.post_order("p", "alex", None).await;
    stack
        .wait_for_order(order["id"].as_str().expect("id"), "completed", WAIT)
        .await;

    let rotate = |hours: u32| {
        let stack = &stack;
        let ep = ep.clone();
        async move {
            let (status, r) = stack
                .call(
                    Method::POST,
                    &format!("/v1/webhook-endpoints/{ep}/rotate-secret"),
                    Some(&json!({ "overlap_hours": hours })),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{r}");
            r["secret"].as_str().expect("secret").to_owned()
        }
    };
    let test_event = || async {
        let (status, r) = stack
            .call(
                Method::POST,
                &format!("/v1/webhook-endpoints/{ep}/test"),
                Some(&json!({ "order": order["order_number"] })),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    };

    let new = rotate(1).await;
    assert_ne!(new, old);
    receiver.set_secrets(&[&old, &new]);
    test_event().await;
    let got = receiver.wait_for(WAIT, |r| !r.is_empty()).await;
    assert_eq!(got[0].body["event"], "endpoint.test");
    assert_eq!(got[0].body["data"]["order_number"], order["order_number"]);
    assert_eq!(
        got[0].signature.split(' ').count(),
        2,
        "{}",
        got[0].signature
    );
    assert_eq!(
        got[0].verified_by,
        [0, 1],
        "both secrets sign during the overlap"
    );

    // No overlap: only the newest secret signs.
    let newest = rotate(0).await;
    receiver.set_secrets(&[&new, &newest]);
    test_event().await;
    let got = receiver.wait_for(WAIT, |r| r.len() >= 2).await;
    assert_eq!(got[1].signature.split(' ').count(), 1);
    assert_eq!(got[1].verified_by, [1]);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_and_a_failed_order_are_told() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    game.set(Behaviour {
        unknown_command: true,
        ..Behaviour::default()
    });
    let stack = TestStack::start().await;
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("p", "s", "giv {username} apple")
        .await;
    let receiver = FakeReceiver::start().await.expect("receiver");
    endpoint(&stack, &receiver, json!(["*"])).await;
    let (_, order) = stack.post_order("p", "alex", None).await;
    stack
        .wait_for_order(order["id"].as_str().expect("id"), "failed", WAIT)
        .await;
    // Calls run concurrently, so they may arrive in any order; `sequence` orders them.
    let got = receiver.wait_for(WAIT, |r| r.len() >= 3).await;
    let mut by_sequence = got.clone();
    by_sequence.sort_by_key(|r| r.body["sequence"].as_i64());
    // Accepted `processing` (its delivery queued at once): no `order.updated`.
    assert_eq!(
        events(&by_sequence),
        ["order.received", "delivery.dead", "order.failed"],
        "{got:?}"
    );
    assert_eq!(by_sequence[0].body["data"]["status"], "processing");
    assert_eq!(by_sequence[2].body["data"]["status"], "failed");
    assert_eq!(by_sequence[2].body["data"]["previous_status"], "processing");
    let dead = got
        .iter()
        .find(|r| r.body["event"] == "delivery.dead")
        .expect("delivery.dead");
    assert_eq!(dead.body["data"]["delivery"]["kind"], "rcon");
    assert!(
        dead.body["data"]["delivery"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("Unknown"),
        "{}",
        dead.body
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_urls_inside_private_networks_are_refused_unless_allowed() {
    let mut stack =
        TestStack::start_with(|s| s.webhooks.allow_private_targets = false, false).await;
    for url in [
        "http://127.0.0.1:9/hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost:9/",
    ] {
        let (status, e) = stack
            .call(
                Method::POST,
                "/v1/webhook-endpoints",
                Some(&json!({ "url": url, "events": ["*"] })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {e}");
        assert_eq!(e["error"]["code"], "private_target", "{url}: {e}");
        assert_eq!(e["error"]["field"], "url");
    }
    for (body, field) in [
        (
            json!({ "url": "ftp://example.com/", "events": ["*"] }),
            "url",
        ),
        (
            json!({ "url": "https://u:p@example.com/", "events": ["*"] }),
            "url",
        ),
        (
            json!({ "url": "https://example.com/", "events": ["order.shipped"] }),
            "events",
        ),
        (
            json!({ "url": "https://example.com/", "events": [] }),
            "events",
        ),
    ] {
        let (status, e) = stack
            .call(Method::POST, "/v1/webhook-endpoints", Some(&body))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {e}");
        assert_eq!(e["error"]["field"], field, "{body}: {e}");
    }

    // A name that resolves into the private network later (saved while it
    // did not): the worker's resolver refuses to call it.
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("p", "s", "give {username} apple")
        .await;
    let receiver = FakeReceiver::start().await.expect("receiver");
    let port = receiver
        .url
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    stack
        .count(&format!(
            "WITH e AS (INSERT INTO webhook_endpoints (id, url, events, secret) VALUES \
             (gen_random_uuid(), 'http://localhost:{port}', ARRAY['*'], 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') RETURNING 1) \
             SELECT count(*) FROM e"
        ))
        .await;
    stack.start_worker().await;
    let (_, order) = stack.post_order("p", "alex", None).await;
    stack
        .wait_for_order(order["id"].as_str().expect("id"), "completed", WAIT)
        .await;
    stack
        .wait_until(
            "the webhook to localhost is dead",
            // order.received and order.completed (accepted `processing`).
            "SELECT count(*) = 2 FROM deliveries WHERE kind = 'webhook' AND status = 'dead' \
             AND last_error LIKE '%private network%'",
            WAIT,
        )
        .await;
    assert!(receiver.received().is_empty());
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_too_long_is_disabled_with_an_alert() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    // Any failure is "too long" with no hours allowed.
    let stack = TestStack::start_with(|s| s.webhooks.disable_after_hours = 0, true).await;
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("p", "s", "give {username} apple")
        .await;
    let receiver = FakeReceiver::start().await.expect("receiver");
    let (ep, _) = endpoint(&stack, &receiver, json!(["order.completed"])).await;
    receiver.answer_always(Some(500));
    let (_, order) = stack.post_order("p", "alex", None).await;
    stack
        .wait_for_order(order["id"].as_str().expect("id"), "completed", WAIT)
        .await;
    stack
        .wait_until(
            "the failing endpoint is disabled and its message dead",
            &format!(
                "SELECT EXISTS (SELECT 1 FROM webhook_endpoints e JOIN deliveries d ON d.target = e.id::text \
                 WHERE e.id = '{ep}' AND NOT e.enabled AND d.status = 'dead')"
            ),
            WAIT,
        )
        .await;
    let (_, e) = stack
        .call(Method::GET, &format!("/v1/webhook-endpoints/{ep}"), None)
        .await;
    assert!(
        e["disabled_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("without one success"),
        "{e}"
    );
    assert_eq!(stack.alerts("webhook_endpoint_disabled").await.len(), 1);
    assert_eq!(receiver.received().len(), 1, "one call, then no more");

    // Enabled again, the dead message is retried by an admin and arrives.
    receiver.answer_always(None);
    let (status, e) = stack
        .call(
            Method::PATCH,
            &format!("/v1/webhook-endpoints/{ep}"),
            Some(&json!({ "enabled": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!(e["disabled_reason"], Value::Null);
    assert_eq!(e["failing_since"], Value::Null);
    let delivery = log(&stack, &ep).await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, r) = stack
        .call(
            Method::POST,
            &format!("/v1/admin/deliveries/{delivery}/retry"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let got = receiver.wait_for(WAIT, |r| r.len() >= 2).await;
    assert_eq!(got[1].answered, 200);
    assert_eq!(got[1].id, got[0].id);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_endpoint_cancels_its_messages_not_yet_sent() {
    let stack = TestStack::start_with(|_| {}, false).await;
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("p", "s", "give {username} apple")
        .await;
    let receiver = FakeReceiver::start().await.expect("receiver");
    let (ep, _) = endpoint(&stack, &receiver, json!(["order.received"])).await;
    stack.post_order("p", "alex", None).await;
    let queued = format!(
        "SELECT count(*) FROM deliveries WHERE kind = 'webhook' AND target = '{ep}' AND status = 'queued'"
    );
    assert_eq!(stack.count(&queued).await, 1);
    let (status, _) = stack
        .call(Method::DELETE, &format!("/v1/webhook-endpoints/{ep}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(stack.count(&queued).await, 0);
    let cancelled = stack
        .count(&format!(
            "SELECT count(*) FROM deliveries WHERE kind = 'webhook' AND target = '{ep}' AND status = 'cancelled'"
        ))
        .await;
    assert_eq!(cancelled, 1);
    let (status, _) = stack
        .call(Method::GET, &format!("/v1/webhook-endpoints/{ep}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    stack.teardown().await;
}

/// An accepted order's job goes out directly, but the `order.received`
/// event its accept wrote (by trigger) is the relay sweep's: the accept
/// wakes the sweep, so the event does not wait for the next periodic one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_received_event_of_an_accepted_order_goes_out_without_waiting_for_a_sweep() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    // No periodic sweep within the test.
    let stack = TestStack::start_with(|s| s.relay.sweep_interval_ms = 600_000, true).await;
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("p", "s", "give {username} apple")
        .await;
    let receiver = FakeReceiver::start().await.expect("receiver");
    endpoint(&stack, &receiver, json!(["order.received"])).await;
    let (status, order) = stack.post_order("p", "alex", None).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let got = receiver
        .wait_for(Duration::from_secs(10), |r| !r.is_empty())
        .await;
    assert_eq!(events(&got), ["order.received"], "{got:?}");
    assert_eq!(got[0].body["data"]["id"], order["id"]);
    stack.teardown().await;
}
