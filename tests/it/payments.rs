//! Payment webhooks (Stripe, Standard Webhooks), refunds with revocation,
//! disputes and cancellation, against fake Stripe, Discord and game servers.

use std::time::Duration;

use courier_tests::fakes::discord::FakeDiscord;
use courier_tests::fakes::rcon::{Behaviour, FakeGameServer};
use courier_tests::fakes::stripe::{FakeStripe, StripeBehaviour};
use courier_tests::signing::{self, now};
use courier_tests::stack::{GENERIC_SECRET, STRIPE_SECRET, TestStack};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn post_stripe(stack: &TestStack, body: &str, header: Option<String>) -> (StatusCode, Value) {
    stack.post_stripe(body, header).await
}

/// Sends `event` correctly signed; expects 200 and returns the answer.
async fn send_stripe(stack: &TestStack, event: &Value) -> Value {
    stack.send_stripe(event).await
}

async fn post_generic(
    stack: &TestStack,
    id: &str,
    ts: i64,
    body: &str,
    signature: &str,
) -> (StatusCode, Value) {
    stack.post_generic(id, ts, body, signature).await
}

/// A stack (settings adjusted by `tweak`, with or without a worker) and a fake
/// Minecraft server registered as game server `s`.
async fn game_stack(
    tweak: impl FnOnce(&mut courier_shared::config::Settings),
    worker: bool,
) -> (TestStack, FakeGameServer) {
    let game = FakeGameServer::start("pw", courier_shared::rcon::Dialect::Minecraft)
        .await
        .expect("fake game server");
    let stack = TestStack::start_with(tweak, worker).await;
    stack.add_game_server("s", &game).await;
    (stack, game)
}

/// Posts a paid order of product `p` for `steve`, paid through Stripe with
/// PaymentIntent `pi` (`tweak` adjusts the body); returns its id.
async fn post_stripe_order(stack: &TestStack, pi: &str, tweak: impl FnOnce(&mut Value)) -> String {
    let mut body = courier_tests::stack::sample_order("p", "steve");
    body["gateway"] = json!("stripe");
    body["transaction_id"] = json!(pi);
    tweak(&mut body);
    let (status, created) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().expect("id").to_owned()
}

async fn count(stack: &TestStack, sql: &str) -> i64 {
    stack.count(sql).await
}

async fn refund(stack: &TestStack, id: &str, body: Value) -> (StatusCode, Value) {
    stack
        .call(
            Method::POST,
            &format!("/v1/orders/{id}/refunds"),
            Some(&body),
        )
        .await
}

/// Polls until `check` holds for the order; panics with the order after 20 s.
async fn wait_order(
    stack: &TestStack,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    stack.wait_order_until(id, what, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_signatures_are_checked_on_the_raw_body_before_anything_happens() {
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_discord_product("vip").await;
    let event = signing::stripe_event(
        "evt_sig",
        "checkout.session.completed",
        signing::checkout_session(
            "cs_sig",
            "pi_sig",
            json!({ "courier_items": "vip:1", "discord_user_id": "333" }),
        ),
    );
    let body = event.to_string();
    let t = now();

    let wrong = signing::stripe_header("whsec_someone_else", t, &body);
    let (status, e) = post_stripe(&stack, &body, Some(wrong)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{e}");
    assert_eq!(e["error"]["code"], "invalid_signature");

    let tampered = body.replace("vip:1", "vip:9");
    let signed_original = signing::stripe_header(STRIPE_SECRET, t, &body);
    let (status, e) = post_stripe(&stack, &tampered, Some(signed_original)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{e}");

    let old = signing::stripe_header(STRIPE_SECRET, t - 301, &body);
    let (status, e) = post_stripe(&stack, &body, Some(old)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{e}");
    assert_eq!(e["error"]["code"], "signature_expired");

    let (status, e) = post_stripe(&stack, &body, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{e}");
    let (status, e) = post_stripe(&stack, &body, Some("v1=nothex".into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["code"], "malformed_signature");

    assert_eq!(
        count(&stack, "SELECT count(*) FROM payment_events").await,
        0
    );
    assert_eq!(count(&stack, "SELECT count(*) FROM orders").await, 0);

    // Two v1 signatures (Stripe during a secret roll), one of them valid.
    let both = format!(
        "t={t},v1={},v1={}",
        signing::stripe_v1("whsec_retired", t, &body),
        signing::stripe_v1(STRIPE_SECRET, t, &body)
    );
    let (status, answer) = post_stripe(&stack, &body, Some(both)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "applied", "{answer}");
    let o = stack
        .order(answer["order_id"].as_str().expect("order id"))
        .await;
    assert_eq!(o["payment_status"], "paid");
    assert_eq!(o["gateway"], "stripe");
    assert_eq!(o["transaction_id"], "pi_sig");
    assert_eq!(o["total"], "10.48");
    assert_eq!(o["deliveries"].as_array().map(Vec::len), Some(1));

    // Verified but unusable (no such product): kept as failed, with the reason.
    let unknown = signing::stripe_event(
        "evt_unknown_sku",
        "checkout.session.completed",
        signing::checkout_session(
            "cs_unknown",
            "pi_unknown",
            json!({ "courier_items": "nope:1" }),
        ),
    );
    assert_eq!(send_stripe(&stack, &unknown).await["status"], "failed");
    let (_, listed) = stack
        .call(Method::GET, "/v1/admin/payment-events?status=failed", None)
        .await;
    let failed = &listed["events"][0];
    assert_eq!(failed["event_id"], "evt_unknown_sku", "{listed}");
    assert!(
        failed["note"].as_str().is_some_and(|n| n.contains("nope")),
        "{failed}"
    );
    let (_, alerts) = stack.call(Method::GET, "/v1/admin/alerts", None).await;
    assert!(
        alerts["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["kind"] == "payment_event_failed")),
        "{alerts}"
    );
    assert_eq!(count(&stack, "SELECT count(*) FROM orders").await, 1);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_delivered_ten_times_at_once_makes_one_order_and_one_command() {
    let (stack, game) = TestStack::with_rcon_product("give {username} diamond").await;
    let event = signing::stripe_event(
        "evt_dup",
        "checkout.session.completed",
        signing::checkout_session(
            "cs_dup",
            "pi_dup",
            json!({ "courier_items": "p:1", "game_username": "steve" }),
        ),
    );
    let answers =
        futures_util::future::join_all((0..10).map(|_| send_stripe(&stack, &event))).await;
    let applied: Vec<&Value> = answers
        .iter()
        .filter(|a| a["status"] == "applied")
        .collect();
    let duplicates = answers
        .iter()
        .filter(|a| a["status"] == "duplicate")
        .count();
    assert_eq!((applied.len(), duplicates), (1, 9), "{answers:?}");
    let id = applied[0]["order_id"]
        .as_str()
        .expect("order id")
        .to_owned();
    stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(count(&stack, "SELECT count(*) FROM orders").await, 1);
    assert_eq!(count(&stack, "SELECT count(*) FROM deliveries").await, 1);
    assert_eq!(
        count(&stack, "SELECT count(*) FROM payment_events").await,
        1
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(game.commands(), vec!["give steve diamond".to_owned()]);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_webhook_takes_a_signed_order_once() {
    let (stack, game) = TestStack::with_rcon_product("give {username} cake").await;
    let body = courier_tests::stack::sample_order("p", "alex").to_string();
    let ts = now();
    let good = signing::standard_signature(GENERIC_SECRET, "msg_1", ts, &body);
    let (status, first) = post_generic(&stack, "msg_1", ts, &body, &good).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["status"], "applied");
    let (status, again) = post_generic(&stack, "msg_1", ts, &body, &good).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["order_id"], first["order_id"]);

    let other = signing::standard_signature(
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "msg_2",
        ts,
        &body,
    );
    let (status, e) = post_generic(&stack, "msg_2", ts, &body, &other).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{e}");
    // Signed for another id: the id is part of what is signed.
    let (status, _) = post_generic(&stack, "msg_3", ts, &body, &good).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let id = first["order_id"].as_str().expect("id");
    stack
        .wait_for_order(id, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(count(&stack, "SELECT count(*) FROM orders").await, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(game.commands(), vec!["give alex cake".to_owned()]);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_arrives_before_the_payment_is_applied_after_it() {
    let (stack, game) = TestStack::with_rcon_product("give {username} diamond").await;
    let mut pending = courier_tests::stack::sample_order("p", "steve");
    pending["payment_status"] = json!("pending");
    pending.as_object_mut().map(|o| o.remove("transaction_id"));
    pending["gateway"] = json!(null);
    let (status, created) = stack.call(Method::POST, "/v1/orders", Some(&pending)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["total"], "10.48");

    let early = signing::stripe_event(
        "evt_refund_early",
        "charge.refunded",
        signing::refunded_charge("pi_early", 1048, 1048, json!({ "order_id": id })),
    );
    let answer = send_stripe(&stack, &early).await;
    assert_eq!(answer["status"], "pending", "{answer}");
    let o = stack.order(&id).await;
    assert_eq!(o["payment_status"], "pending");
    assert!(o["refunds"].as_array().is_some_and(Vec::is_empty), "{o}");

    let paid = signing::stripe_event(
        "evt_paid_late",
        "checkout.session.completed",
        signing::checkout_session("cs_late", "pi_early", json!({ "order_id": id })),
    );
    let answer = send_stripe(&stack, &paid).await;
    assert_eq!(answer["status"], "applied", "{answer}");

    let o = stack.order(&id).await;
    assert_eq!(o["payment_status"], "refunded", "{o:#}");
    assert_eq!(o["status"], "refunded");
    assert_eq!(o["refunded_amount"], "10.48");
    assert_eq!(o["refunds"][0]["source"], "gateway");
    assert!(
        o["deliveries"]
            .as_array()
            .is_some_and(|d| !d.is_empty() && d.iter().all(|d| d["status"] == "cancelled")),
        "{o:#}"
    );
    assert_eq!(o["items"][0]["delivery_status"], "revoked");
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM payment_events WHERE status = 'applied'"
        )
        .await,
        2
    );
    // The job was published and skipped: nothing reached the game server.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(game.commands().is_empty(), "{:?}", game.commands());
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refund_removes_the_role_runs_the_revoke_command_and_refunds_at_stripe_once() {
    let discord = FakeDiscord::start().await.expect("fake discord");
    let stripe = FakeStripe::start().await.expect("fake stripe");
    let (d, s) = (discord.base.clone(), stripe.base.clone());
    let (stack, game) = game_stack(
        |settings| {
            settings.discord.api_base = d;
            settings.payments.stripe_api_base = s;
        },
        true,
    )
    .await;
    stack
        .add_product(
            "vip",
            json!([
                { "kind": "rcon", "game_server": "s", "command": "lp user {username} parent add vip",
                  "revoke_command": "lp user {username} parent remove vip" },
                { "kind": "discord_role", "guild_id": "111", "role_id": "222" },
            ]),
        )
        .await;
    let body = json!({
        "currency": "EUR", "gateway": "stripe", "transaction_id": "pi_full",
        "game": { "username": "steve" }, "discord_user_id": "333",
        "items": [{ "product": "vip", "quantity": 1, "unit_price": "12.34" }],
    });
    let (status, created) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;

    // Stripe fails once; the job retries under the same idempotency key.
    stripe.set(StripeBehaviour {
        fail_next: 1,
        ..StripeBehaviour::default()
    });
    let (status, r) = refund(&stack, &id, json!({ "reason": "requested_by_customer" })).await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    assert_eq!(r["amount"], "12.34");
    assert_eq!(r["status"], "pending");

    let o = wait_order(
        &stack,
        &id,
        "the refund succeeded and both revoke jobs done",
        |o| {
            o["refunds"][0]["status"] == "succeeded"
                && o["deliveries"].as_array().is_some_and(|d| {
                    d.iter()
                        .filter(|d| d["purpose"] == "revoke" && d["status"] == "succeeded")
                        .count()
                        == 2
                })
        },
    )
    .await;
    assert_eq!(o["status"], "refunded");
    assert_eq!(o["payment_status"], "refunded");
    assert_eq!(o["refunds"][0]["external_id"], "re_fake_1");
    assert!(
        o["items"]
            .as_array()
            .is_some_and(|i| i.iter().all(|i| i["delivery_status"] == "revoked"))
    );

    assert_eq!(
        game.commands(),
        vec![
            "lp user steve parent add vip".to_owned(),
            "lp user steve parent remove vip".to_owned()
        ]
    );
    let calls = discord.calls();
    assert_eq!(
        calls
            .iter()
            .map(|c| (c.method.as_str(), c.path.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("PUT", "/guilds/111/members/333/roles/222"),
            ("DELETE", "/guilds/111/members/333/roles/222")
        ]
    );
    let refunds = stripe.calls();
    assert_eq!(refunds.len(), 2, "one 500, then the retry");
    assert_eq!(refunds[0].idempotency_key, refunds[1].idempotency_key);
    assert_eq!(refunds[1].authorization, "Bearer sk_test_courier");
    assert_eq!(refunds[1].form["payment_intent"], "pi_full");
    assert_eq!(refunds[1].form["amount"], "1234");
    assert_eq!(refunds[1].form["reason"], "requested_by_customer");
    assert_eq!(stripe.refunds_made(), 1);

    // Stripe then reports the refund Courier made: it is not counted again.
    let echo = signing::stripe_event("evt_echo", "charge.refunded", {
        let mut c = signing::refunded_charge("pi_full", 1234, 1234, json!({}));
        c["currency"] = json!("eur");
        c["refunds"] = json!({ "data": [{ "id": "re_fake_1", "amount": 1234 }] });
        c
    });
    let answer = send_stripe(&stack, &echo).await;
    assert_eq!(answer["status"], "applied", "{answer}");
    let o = stack.order(&id).await;
    assert_eq!(o["refunded_amount"], "12.34");
    assert_eq!(o["refunds"].as_array().map(Vec::len), Some(1));
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_add_up_to_the_total_and_no_further_and_need_a_paid_order() {
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_discord_product("vip").await;
    let mut body = json!({
        "currency": "USD", "discord_user_id": "333",
        "items": [{ "product": "vip", "quantity": 1, "unit_price": "10.00" }],
    });
    let (_, paid) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    let id = paid["id"].as_str().expect("id").to_owned();

    let (status, e) = refund(&stack, &id, json!({ "amount": "0", "reason": "duplicate" })).await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("validation_failed")),
        "{e}"
    );
    let (status, e) = refund(&stack, &id, json!({ "reason": "other" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["field"], "reason_text");
    let (status, e) = refund(&stack, &id, json!({ "reason": "changed_mind" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");

    let (status, r) = refund(
        &stack,
        &id,
        json!({ "amount": "4.00", "reason": "not_as_described" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    assert_eq!(
        r["status"], "recorded",
        "not a Stripe payment: recorded only"
    );
    let o = stack.order(&id).await;
    assert_eq!(
        (o["status"].clone(), o["payment_status"].clone()),
        (json!("partially_refunded"), json!("partially_refunded"))
    );
    assert!(
        o["revoked_at"].is_null(),
        "a partial refund keeps access: {o}"
    );
    let (status, _) = refund(
        &stack,
        &id,
        json!({ "amount": "5.00", "reason": "other", "reason_text": "late" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, e) = refund(
        &stack,
        &id,
        json!({ "amount": "2.00", "reason": "duplicate" }),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["code"], "refund_exceeds_remaining");
    assert_eq!(e["error"]["field"], "amount");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1.00")),
        "{e}"
    );

    let (status, last) = refund(&stack, &id, json!({ "reason": "requested_by_customer" })).await;
    assert_eq!(status, StatusCode::CREATED, "{last}");
    assert_eq!(last["amount"], "1.00");
    let o = stack.order(&id).await;
    assert_eq!(
        (o["status"].clone(), o["payment_status"].clone()),
        (json!("refunded"), json!("refunded"))
    );
    assert_eq!(o["refunded_amount"], "10.00");
    assert!(
        !o["revoked_at"].is_null(),
        "the full refund withdrew access: {o}"
    );
    assert_eq!(o["deliveries"][0]["status"], "cancelled");
    let (status, e) = refund(&stack, &id, json!({ "reason": "duplicate" })).await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("already_refunded"))
    );

    body["payment_status"] = json!("pending");
    let (_, unpaid) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    let unpaid = unpaid["id"].as_str().expect("id");
    let (status, e) = refund(&stack, unpaid, json!({ "reason": "duplicate" })).await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("order_not_paid")),
        "{e}"
    );

    let (status, e) = refund(&stack, "ORD-0000000000", json!({ "reason": "duplicate" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(count(&stack, "SELECT count(*) FROM refunds").await, 3);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_dispute_runs_the_chargeback_command_and_shows_outcome_and_evidence() {
    let (stack, game) = game_stack(|_| {}, true).await;
    stack
        .add_product(
            "p",
            json!([{ "kind": "rcon", "game_server": "s", "command": "give {username} diamond",
                     "chargeback_command": "ban {username} chargeback" }]),
        )
        .await;
    let id = post_stripe_order(&stack, "pi_disputed", |body| {
        body["customer"]["ip"] = json!("203.0.113.7");
    })
    .await;
    stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;

    let opened = signing::stripe_event(
        "evt_dp_open",
        "charge.dispute.created",
        signing::dispute("dp_1", "pi_disputed", 1048, "needs_response", 0),
    );
    assert_eq!(send_stripe(&stack, &opened).await["status"], "applied");
    game.wait_for_commands(2, Duration::from_secs(20)).await;
    assert_eq!(
        game.commands(),
        vec![
            "give steve diamond".to_owned(),
            "ban steve chargeback".to_owned()
        ]
    );
    let o = stack.order(&id).await;
    let d = &o["disputes"][0];
    assert_eq!(
        (
            d["external_id"].clone(),
            d["amount"].clone(),
            d["reason"].clone()
        ),
        (json!("dp_1"), json!("10.48"), json!("fraudulent"))
    );
    assert!(
        !d["evidence_due_by"].is_null() && d["outcome"].is_null(),
        "{d}"
    );

    let closed = signing::stripe_event(
        "evt_dp_closed",
        "charge.dispute.closed",
        signing::dispute("dp_1", "pi_disputed", 1048, "lost", 1),
    );
    assert_eq!(send_stripe(&stack, &closed).await["status"], "applied");
    let o = stack.order(&id).await;
    assert_eq!(o["disputes"][0]["outcome"], "lost", "{o:#}");
    assert_eq!(o["payment_status"], "refunded");
    assert_eq!(o["status"], "refunded");
    let evidence = &o["evidence"];
    assert_eq!(evidence["customer_ip"], "203.0.113.7");
    assert_eq!(
        evidence["proof_of_delivery"][0]["action"]["command"],
        "give steve diamond"
    );
    let attempt = &evidence["proof_of_delivery"][0]["attempts"][0];
    assert_eq!(attempt["outcome"], "succeeded");
    assert!(
        !attempt["response"].is_null() && !attempt["finished_at"].is_null(),
        "{attempt}"
    );
    assert!(
        evidence["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["kind"] == "dispute.lost")),
        "{evidence}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_queued_deliveries_and_refuses_a_completed_order() {
    let (mut stack, game) = game_stack(|_| {}, false).await;
    stack
        .add_rcon_product("p", "s", "give {username} diamond")
        .await;
    let (_, first) = stack.post_order("p", "early", None).await;
    let first = first["id"].as_str().expect("id").to_owned();
    let (status, done) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{first}/cancel"),
            Some(&json!({ "reason": "customer changed their mind" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["result"]["cancelled"], 1);

    stack.start_worker().await;
    let (_, second) = stack.post_order("p", "late", None).await;
    let second = second["id"].as_str().expect("id").to_owned();
    stack
        .wait_for_order(&second, "completed", Duration::from_secs(20))
        .await;
    let (status, e) = stack
        .call(Method::POST, &format!("/v1/orders/{second}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "order_not_cancellable");

    let o = stack.order(&first).await;
    assert_eq!(o["status"], "cancelled");
    assert_eq!(o["deliveries"][0]["status"], "cancelled");
    assert!(
        o["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["message"]
                .as_str()
                .is_some_and(|m| m.contains("customer changed their mind")))),
        "{o:#}"
    );
    assert_eq!(game.commands(), vec!["give late diamond".to_owned()]);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_returns_an_unseen_stock_key_but_not_a_revealed_one() {
    let stack = TestStack::start().await;
    stack
        .add_product(
            "gift",
            json!([{ "kind": "supplier_key", "stock_only": true }]),
        )
        .await;
    let (status, _) = stack
        .call(
            Method::POST,
            "/v1/products/gift/keys",
            Some(&json!({ "keys": ["KEY-A", "KEY-B"] })),
        )
        .await;
    assert!(status.is_success());
    let body = json!({
        "currency": "USD",
        "items": [{ "product": "gift", "quantity": 1, "unit_price": "5.00" }],
    });
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, o) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
        ids.push(o["id"].as_str().expect("id").to_owned());
    }
    // Polled in SQL: reading the order with the admin key would reveal the codes.
    stack
        .wait_until(
            "both key orders completed",
            "SELECT count(*) = 2 FROM orders WHERE status = 'completed'",
            Duration::from_secs(20),
        )
        .await;
    let seen = stack.order(&ids[1]).await;
    assert!(seen["items"][0]["keys"][0]["code"].is_string(), "{seen}");

    for id in &ids {
        let (status, r) = refund(&stack, id, json!({ "reason": "requested_by_customer" })).await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
    }
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM key_stock WHERE taken_by IS NULL"
        )
        .await,
        1,
        "only the unseen key is back in stock"
    );
    let unseen = stack.order(&ids[0]).await;
    assert_eq!(unseen["items"][0]["keys"][0]["released"], true, "{unseen}");
    let revealed = stack.order(&ids[1]).await;
    assert_eq!(revealed["items"][0]["keys"][0]["released"], false);
    assert!(
        revealed["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["message"]
                .as_str()
                .is_some_and(|m| m.contains("already shown")))),
        "{revealed:#}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_asynchronous_payment_the_customer_can_pay_again() {
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_discord_product("vip").await;
    let body = json!({
        "currency": "USD", "payment_status": "pending", "discord_user_id": "333",
        "items": [{ "product": "vip", "quantity": 1, "unit_price": "10.00" }],
    });
    let (_, created) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let number = created["order_number"].as_str().expect("number").to_owned();
    // An asynchronous method (SEPA, say): completed but not yet paid.
    let mut session =
        signing::checkout_session("cs_async", "pi_async", json!({ "order_id": number }));
    session["payment_status"] = json!("unpaid");
    let answer = send_stripe(
        &stack,
        &signing::stripe_event("evt_async_1", "checkout.session.completed", session.clone()),
    )
    .await;
    assert_eq!(answer["status"], "ignored", "{answer}");
    assert_eq!(stack.order(&id).await["payment_status"], "pending");

    let answer = send_stripe(
        &stack,
        &signing::stripe_event(
            "evt_async_2",
            "checkout.session.async_payment_failed",
            session,
        ),
    )
    .await;
    assert_eq!(answer["status"], "applied", "{answer}");
    let o = stack.order(&id).await;
    assert_eq!(
        (o["status"].clone(), o["payment_status"].clone()),
        (json!("pending"), json!("failed"))
    );
    assert!(
        o["deliveries"].as_array().is_some_and(Vec::is_empty),
        "nothing was ever queued: {o}"
    );

    // The customer tries again, by card this time: the session pays the
    // order's 10.00 exactly.
    let mut again =
        signing::checkout_session("cs_async_2", "pi_async_2", json!({ "order_id": number }));
    again["amount_subtotal"] = json!(1000);
    again["amount_total"] = json!(1000);
    again["total_details"] = json!({ "amount_tax": 0 });
    let answer = send_stripe(
        &stack,
        &signing::stripe_event("evt_async_3", "checkout.session.completed", again),
    )
    .await;
    assert_eq!(answer["status"], "applied", "{answer}");
    let o = stack.order(&id).await;
    assert_eq!(o["payment_status"], "paid", "{o:#}");
    assert_eq!(o["transaction_id"], "pi_async_2");
    assert_eq!(o["deliveries"].as_array().map(Vec::len), Some(1));
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_partially_refunded_before_delivery_is_still_delivered() {
    let (mut stack, game) = game_stack(|_| {}, false).await;
    stack
        .add_rcon_product("p", "s", "give {username} diamond")
        .await;
    let (_, created) = stack.post_order("p", "steve", None).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let (status, r) = refund(
        &stack,
        &id,
        json!({ "amount": "1.00", "reason": "other", "reason_text": "goodwill" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");

    // The worker claims and delivers; the claim must not trip over the status.
    stack.start_worker().await;
    stack
        .wait_until(
            "the item delivered",
            "SELECT count(*) = 1 FROM order_items WHERE delivery_status = 'delivered'",
            Duration::from_secs(20),
        )
        .await;
    let o = stack.order(&id).await;
    assert_eq!(o["status"], "partially_refunded", "{o:#}");
    assert_eq!(o["deliveries"][0]["status"], "succeeded");
    assert_eq!(game.commands(), vec!["give steve diamond".to_owned()]);
    stack.teardown().await;
}

/// A stack with a fake Stripe and an RCON product `p` on a fake game server;
/// returns an order paid through Stripe (PaymentIntent `pi`) and completed.
async fn stripe_order(pi: &str) -> (TestStack, FakeStripe, FakeGameServer, String) {
    let stripe = FakeStripe::start().await.expect("fake stripe");
    let base = stripe.base.clone();
    let (stack, game) = game_stack(|s| s.payments.stripe_api_base = base, true).await;
    stack
        .add_rcon_product("p", "s", "give {username} diamond")
        .await;
    let id = post_stripe_order(&stack, pi, |_| {}).await;
    stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;
    (stack, stripe, game, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_stripe_refuses_is_failed_and_refundable_again() {
    let (stack, stripe, _game, id) = stripe_order("pi_refused").await;
    stripe.set(StripeBehaviour {
        refuse: true,
        ..StripeBehaviour::default()
    });
    let (status, r) = refund(
        &stack,
        &id,
        json!({ "amount": "3.00", "reason": "duplicate" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    let o = wait_order(&stack, &id, "the refund failed", |o| {
        o["refunds"][0]["status"] == "failed"
    })
    .await;
    assert_eq!(
        o["refunded_amount"]
            .as_str()
            .and_then(|a| a.parse::<rust_decimal::Decimal>().ok()),
        Some(rust_decimal::Decimal::ZERO),
        "{o:#}"
    );
    assert_eq!(o["payment_status"], "paid");
    let (_, alerts) = stack.call(Method::GET, "/v1/admin/alerts", None).await;
    assert!(
        alerts["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["kind"] == "refund_failed")),
        "{alerts}"
    );
    let (_, dead) = stack
        .call(
            Method::GET,
            "/v1/admin/dead-letters?kind=gateway_refund",
            None,
        )
        .await;
    assert_eq!(
        dead["dead_letters"].as_array().map(Vec::len),
        Some(1),
        "{dead}"
    );
    // Stripe reports later that it made this refund after all (the job had
    // given up): the same refund counts again, not a second one.
    let made = signing::stripe_event("evt_made_after_all", "charge.refunded", {
        let mut c = signing::refunded_charge("pi_refused", 1048, 300, json!({}));
        c["refunds"] = json!({ "data": [
            { "id": "re_late", "amount": 300, "metadata": { "courier_refund_id": r["id"] } },
        ] });
        c
    });
    assert_eq!(send_stripe(&stack, &made).await["status"], "applied");
    let o = stack.order(&id).await;
    assert_eq!(o["refunds"].as_array().map(Vec::len), Some(1), "{o:#}");
    assert_eq!(o["refunds"][0]["status"], "succeeded");
    assert_eq!(o["refunds"][0]["external_id"], "re_late");
    assert_eq!(o["refunded_amount"], "3.00");
    assert_eq!(o["payment_status"], "partially_refunded");
    stripe.set(StripeBehaviour::default());
    let (status, rest) = refund(&stack, &id, json!({ "reason": "duplicate" })).await;
    assert_eq!(status, StatusCode::CREATED, "{rest}");
    assert_eq!(rest["amount"], "7.48");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_retried_with_its_idempotency_key_is_made_once() {
    let (stack, stripe, _game, id) = stripe_order("pi_retry").await;
    let body = json!({ "amount": "2.00", "reason": "requested_by_customer" });
    let path = format!("/v1/orders/{id}/refunds");
    let headers = [("Idempotency-Key", "refund-1")];
    // Two at once (a client retrying after a timeout), the second as "2.0".
    let same = json!({ "amount": "2.0", "reason": "requested_by_customer" });
    let ((first, a), (second, b)) = tokio::join!(
        stack.call_as(&stack.admin_key, Method::POST, &path, Some(&body), &headers),
        stack.call_as(&stack.admin_key, Method::POST, &path, Some(&same), &headers),
    );
    let mut codes = [first, second];
    codes.sort();
    assert_eq!(codes, [StatusCode::OK, StatusCode::CREATED], "{a} {b}");
    assert_eq!(a["id"], b["id"]);
    let other = json!({ "amount": "3.00", "reason": "requested_by_customer" });
    let (status, e) = stack
        .call_as(
            &stack.admin_key,
            Method::POST,
            &path,
            Some(&other),
            &headers,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "idempotency_key_reused");
    let o = wait_order(&stack, &id, "the refund made", |o| {
        o["refunds"][0]["status"] == "succeeded"
    })
    .await;
    assert_eq!(o["refunded_amount"], "2.00");
    assert_eq!(o["refunds"].as_array().map(Vec::len), Some(1));
    assert_eq!(stripe.refunds_made(), 1);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refund_waits_for_an_order_paid_through_the_api() {
    let (stack, game) = TestStack::with_rcon_product("give {username} diamond").await;
    let early = signing::stripe_event(
        "evt_early_api",
        "charge.refunded",
        signing::refunded_charge("pi_api", 1048, 1048, json!({})),
    );
    assert_eq!(send_stripe(&stack, &early).await["status"], "pending");
    // The store then posts the order, paid, with the PaymentIntent.
    let id = post_stripe_order(&stack, "pi_api", |_| {}).await;
    // The rescuer's sweep applies the waiting refund.
    let o = stack
        .wait_for_order(&id, "refunded", Duration::from_secs(20))
        .await;
    assert_eq!(o["payment_status"], "refunded");
    assert_eq!(o["refunds"][0]["source"], "gateway");
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM payment_events WHERE status = 'pending'"
        )
        .await,
        0
    );
    // Whether the command ran before the refund or not, nothing is left to
    // run. The refund may land while the worker is mid-command (the
    // delivery `running`): its outcome is recorded, and revoked, when the
    // attempt ends, so wait for that rather than read the moment.
    assert_eq!(o["items"][0]["delivery_status"], "revoked", "{o:#}");
    wait_order(&stack, &id, "no delivery left to run", |o| {
        o["deliveries"].as_array().is_some_and(|d| {
            d.iter()
                .all(|d| d["status"] == "cancelled" || d["status"] == "succeeded")
        })
    })
    .await;
    assert!(game.commands().iter().all(|c| c == "give steve diamond"));
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispute_events_arriving_out_of_order_do_not_reopen_a_closed_dispute() {
    let (stack, _stripe, _game, id) = stripe_order("pi_ooo").await;
    let mut closed = signing::stripe_event(
        "evt_ooo_closed",
        "charge.dispute.closed",
        signing::dispute("dp_ooo", "pi_ooo", 1048, "won", 1),
    );
    closed["created"] = json!(now() - 60);
    let mut update = signing::stripe_event(
        "evt_ooo_updated",
        "charge.dispute.updated",
        signing::dispute("dp_ooo", "pi_ooo", 1048, "under_review", 1),
    );
    update["created"] = json!(now() - 10);
    let mut opened = signing::stripe_event(
        "evt_ooo_created",
        "charge.dispute.created",
        signing::dispute("dp_ooo", "pi_ooo", 1048, "needs_response", 0),
    );
    opened["created"] = json!(now() - 120);
    // The newest (an update) first, then the closing one, then the oldest.
    for e in [&update, &closed, &opened] {
        assert_eq!(send_stripe(&stack, e).await["status"], "applied");
    }
    let o = stack.order(&id).await;
    let d = &o["disputes"][0];
    assert_eq!(d["outcome"], "won", "{o:#}");
    assert_eq!(d["gateway_status"], "won");
    assert!(!d["closed_at"].is_null(), "{d}");
    // First seen open (the update), so access was withdrawn then; a won
    // dispute does not give it back, and the payment stays paid.
    assert!(!o["revoked_at"].is_null(), "{o:#}");
    assert_eq!(o["payment_status"], "paid");
    let opened_events = o["timeline"].as_array().map_or(0, |t| {
        t.iter().filter(|e| e["kind"] == "dispute.created").count()
    });
    assert_eq!(opened_events, 1, "the late `created` changed nothing");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_runs_chargeback_commands_without_withdrawing_when_so_configured() {
    let (stack, game) = game_stack(|s| s.payments.revoke_on_dispute = false, true).await;
    stack
        .add_product(
            "p",
            json!([{ "kind": "rcon", "game_server": "s", "command": "give {username} diamond",
                     "revoke_command": "clear {username} diamond",
                     "chargeback_command": "ban {username} chargeback" }]),
        )
        .await;
    let id = post_stripe_order(&stack, "pi_keep", |_| {}).await;
    stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;
    let opened = signing::stripe_event(
        "evt_keep_open",
        "charge.dispute.created",
        signing::dispute("dp_keep", "pi_keep", 1048, "needs_response", 0),
    );
    assert_eq!(send_stripe(&stack, &opened).await["status"], "applied");
    game.wait_for_commands(2, Duration::from_secs(20)).await;
    assert_eq!(
        game.commands(),
        vec![
            "give steve diamond".to_owned(),
            "ban steve chargeback".to_owned()
        ]
    );
    let o = stack.order(&id).await;
    assert!(o["revoked_at"].is_null(), "access kept: {o:#}");
    assert_eq!(o["items"][0]["delivery_status"], "delivered");

    // The same order paid a second time (another session): alerted, and a
    // refund of that second payment does not touch this order.
    let twice = signing::stripe_event(
        "evt_twice",
        "checkout.session.completed",
        signing::checkout_session("cs_twice", "pi_second", json!({ "order_id": id })),
    );
    assert_eq!(send_stripe(&stack, &twice).await["status"], "applied");
    let refunded_second = signing::stripe_event(
        "evt_second_refunded",
        "charge.refunded",
        signing::refunded_charge("pi_second", 1048, 1048, json!({ "order_id": id })),
    );
    let answer = send_stripe(&stack, &refunded_second).await;
    assert_eq!(answer["status"], "ignored", "{answer}");
    let o = stack.order(&id).await;
    assert_eq!(o["payment_status"], "paid", "{o:#}");
    assert_eq!(o["transaction_id"], "pi_keep");
    let (_, alerts) = stack.call(Method::GET, "/v1/admin/alerts", None).await;
    let kinds: Vec<&str> = alerts["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"paid_twice") && kinds.contains(&"other_payment_event"),
        "{kinds:?}"
    );
    stack.teardown().await;
}

/// An order of product `p` (command `give`, revoke command `clear`) on the
/// fake game server of `game_stack`.
async fn revocable_order(stack: &TestStack, username: &str) -> String {
    stack
        .add_product(
            "p",
            json!([{ "kind": "rcon", "game_server": "s", "command": "give {username} diamond",
                     "revoke_command": "clear {username} diamond" }]),
        )
        .await;
    let (_, created) = stack.post_order("p", username, None).await;
    created["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_running_when_the_order_is_refunded_is_revoked_when_it_ends() {
    let (stack, game) = game_stack(|_| {}, true).await;
    game.set(Behaviour {
        delay: Duration::from_millis(1500),
        ..Behaviour::default()
    });
    let id = revocable_order(&stack, "steve").await;
    stack
        .wait_until(
            "the delivery running",
            "SELECT count(*) = 1 FROM deliveries WHERE status = 'running'",
            Duration::from_secs(20),
        )
        .await;
    let (status, r) = refund(&stack, &id, json!({ "reason": "fraudulent" })).await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    game.set(Behaviour::default());
    let commands = game.wait_for_commands(2, Duration::from_secs(20)).await;
    assert_eq!(
        commands,
        vec![
            "give steve diamond".to_owned(),
            "clear steve diamond".to_owned()
        ]
    );
    let o = wait_order(&stack, &id, "the revoke job done", |o| {
        o["deliveries"].as_array().is_some_and(|d| {
            d.iter()
                .any(|d| d["purpose"] == "revoke" && d["status"] == "succeeded")
        })
    })
    .await;
    assert_eq!(o["status"], "refunded");
    assert_eq!(o["items"][0]["delivery_status"], "revoked");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_delivery_that_may_have_run_is_revoked_on_refund() {
    let (stack, game) = game_stack(|_| {}, true).await;
    // The server takes the command and drops the connection: it may have run.
    game.set(Behaviour {
        drop_after_command: true,
        ..Behaviour::default()
    });
    let id = revocable_order(&stack, "alex").await;
    stack
        .wait_until(
            "the delivery held as ambiguous",
            "SELECT count(*) = 1 FROM deliveries WHERE status = 'held'",
            Duration::from_secs(20),
        )
        .await;
    game.set(Behaviour::default());
    let (status, r) = refund(&stack, &id, json!({ "reason": "requested_by_customer" })).await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    let commands = game.wait_for_commands(2, Duration::from_secs(20)).await;
    assert_eq!(
        commands,
        vec![
            "give alex diamond".to_owned(),
            "clear alex diamond".to_owned()
        ]
    );
    let o = stack.order(&id).await;
    let deliver = o["deliveries"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["purpose"] == "deliver").cloned())
        .expect("the delivery");
    assert_eq!(deliver["status"], "cancelled", "{o:#}");
    let (_, held) = stack.call(Method::GET, "/v1/admin/held", None).await;
    let held_id = deliver["id"].as_str().expect("id");
    assert!(
        !held.to_string().contains(held_id),
        "no longer held: {held}"
    );
    stack.teardown().await;
}
