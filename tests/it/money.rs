//! A payment is applied only when it pays the order: events signed by the
//! tests' own code (not Courier's) with the wrong amount or currency deliver
//! nothing, raise an alert and wait for an admin.

use std::time::Duration;

use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::FakeGameServer;
use courier_tests::fakes::stripe::{FakeStripe, StripeBehaviour};
use courier_tests::signing::{self, now};
use courier_tests::stack::{GENERIC_SECRET, TestStack, sample_order};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A pending order of product `p` for `user` (2 × 4.99 + 0.50 tax = 10.48 USD).
async fn pending_order(stack: &TestStack, user: &str) -> (String, String) {
    let mut body = sample_order("p", user);
    body["payment_status"] = json!("pending");
    body["gateway"] = json!(null);
    body.as_object_mut().map(|o| o.remove("transaction_id"));
    let (status, created) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["total"], "10.48");
    (
        created["id"].as_str().expect("id").to_owned(),
        created["order_number"].as_str().expect("number").to_owned(),
    )
}

/// A paid Checkout Session for order `number` taking `amount` minor units of `currency`.
fn paying(session: &str, number: &str, amount: i64, currency: &str) -> Value {
    let mut s = signing::checkout_session(
        session,
        &format!("pi_{session}"),
        json!({ "order_id": number }),
    );
    s["amount_total"] = json!(amount);
    s["currency"] = json!(currency);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_amount_or_currency_delivers_nothing_until_an_admin_accepts_or_refunds() {
    let stripe = FakeStripe::start().await.expect("fake stripe");
    let stripe_base = stripe.base.clone();
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake game server");
    let stack = TestStack::start_with(|s| s.payments.stripe_api_base = stripe_base, true).await;
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("p", "s", "give {username} diamond")
        .await;
    let cases = [
        ("under", 1, "usd", "underpaid"),
        ("over", 5000, "usd", "overpaid"),
        ("euro", 1048, "eur", "EUR"),
    ];
    let mut held = Vec::new();
    for (user, amount, currency, why) in cases {
        let (id, number) = pending_order(&stack, user).await;
        let event = signing::stripe_event(
            &format!("evt_{user}"),
            "checkout.session.completed",
            paying(&format!("cs_{user}"), &number, amount, currency),
        );
        let answer = stack.send_stripe(&event).await;
        assert_eq!(answer["status"], "applied", "{answer}");
        let o = stack.order(&id).await;
        assert_eq!(o["payment_status"], "mismatched", "{o:#}");
        assert_eq!(o["status"], "pending");
        assert!(
            o["payment_issue"].as_str().is_some_and(|i| i.contains(why)),
            "{o:#}"
        );
        assert_eq!(o["payment_received"]["currency"], currency.to_uppercase());
        assert!(
            o["deliveries"].as_array().is_some_and(Vec::is_empty),
            "{o:#}"
        );
        assert!(
            stack
                .alerts("payment_mismatch")
                .await
                .iter()
                .any(|a| a["message"].as_str().is_some_and(|m| m.contains(&number))),
            "an alert names {number}"
        );
        held.push((id, number));
    }
    // The same event again changes nothing.
    let again = signing::stripe_event(
        "evt_under",
        "checkout.session.completed",
        paying("cs_under", &held[0].1, 1, "usd"),
    );
    assert_eq!(stack.send_stripe(&again).await["status"], "duplicate");

    // A matching payment is applied as before.
    let (ok_id, ok_number) = pending_order(&stack, "exact").await;
    let exact = signing::stripe_event(
        "evt_exact",
        "checkout.session.completed",
        paying("cs_exact", &ok_number, 1048, "usd"),
    );
    stack.send_stripe(&exact).await;
    stack
        .wait_for_order(&ok_id, "completed", Duration::from_secs(20))
        .await;

    // An admin accepts the underpaid one: delivered, once, with who and why.
    let (under_id, _) = &held[0];
    let path = format!("/v1/orders/{under_id}/payment/accept");
    let (status, e) = stack
        .call(Method::POST, &path, Some(&json!({ "reason": "" })))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (status, accepted) = stack
        .call(
            Method::POST,
            &path,
            Some(&json!({ "reason": "customer paid the rest by bank transfer" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["deliveries_queued"], 1, "{accepted}");
    let (status, e) = stack
        .call(Method::POST, &path, Some(&json!({ "reason": "twice" })))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "no_mismatched_payment");
    let o = stack
        .wait_for_order(under_id, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(o["payment_status"], "paid");
    assert!(o["payment_issue"].is_null(), "{o:#}");
    let accepted_event = o["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|e| e["kind"] == "payment.accepted").cloned())
        .expect("timeline entry");
    assert!(
        accepted_event["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("api:")),
        "{accepted_event}"
    );

    // The overpaid one is given back whole; a part of it is refused.
    let (over_id, _) = &held[1];
    let (status, e) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{over_id}/refunds"),
            Some(&json!({ "reason": "requested_by_customer", "amount": "10.00" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (status, refund) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{over_id}/refunds"),
            Some(&json!({ "reason": "requested_by_customer" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{refund}");
    assert_eq!(
        (refund["amount"].clone(), refund["currency"].clone()),
        (json!("50.00"), json!("USD"))
    );
    let o = stack.order(over_id).await;
    assert_eq!(o["payment_status"], "refunded");
    assert_eq!(o["status"], "refunded");
    let o = stack
        .wait_order_until(over_id, "the refund succeeded", |o| {
            o["refunds"][0]["status"] == "succeeded"
        })
        .await;
    assert_eq!(o["payment_status"], "refunded");
    let call = stripe.calls().pop().expect("Stripe was asked");
    assert_eq!(call.form.get("amount").map(String::as_str), Some("5000"));
    assert_eq!(
        call.form.get("payment_intent").map(String::as_str),
        Some("pi_cs_over")
    );
    // Stripe's own word on that refund is the same refund, not a second one.
    let charge =
        signing::refunded_charge("pi_cs_over", 5000, 5000, json!({ "order_id": held[1].1 }));
    let answer = stack
        .send_stripe(&signing::stripe_event(
            "evt_over_refunded",
            "charge.refunded",
            charge,
        ))
        .await;
    assert_eq!(answer["status"], "applied", "{answer}");
    let o = stack.order(over_id).await;
    assert_eq!(o["refunds"].as_array().map(Vec::len), Some(1), "{o:#}");
    assert!(stack.alerts("refunded_over_total").await.is_empty());
    // The euro payment goes back in euros; Stripe refuses it, so the
    // payment is the admin's to decide again (the order stays refunded).
    stripe.set(StripeBehaviour {
        refuse: true,
        ..StripeBehaviour::default()
    });
    let (status, refund) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{}/refunds", held[2].0),
            Some(&json!({ "reason": "other", "reason_text": "paid in the wrong currency" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{refund}");
    assert_eq!(refund["currency"], "EUR");
    let o = stack
        .wait_order_until(&held[2].0, "the refund failed", |o| {
            o["refunds"][0]["status"] == "failed"
        })
        .await;
    assert_eq!(o["payment_status"], "mismatched", "{o:#}");
    assert_eq!(o["status"], "refunded");
    let (status, e) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{}/payment/accept", held[2].0),
            Some(&json!({ "reason": "deliver anyway" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "order_closed");

    // Only two deliveries exist and both completed: nothing else can run.
    let mut commands = game.commands();
    commands.sort();
    assert_eq!(
        commands,
        vec![
            "give exact diamond".to_owned(),
            "give under diamond".to_owned()
        ],
        "only the matching and the accepted order were delivered"
    );
    assert_eq!(
        stack
            .count("SELECT count(*) FROM deliveries WHERE purpose = 'deliver'")
            .await,
        2
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_made_from_a_session_is_priced_by_stripe_not_by_metadata() {
    let (stack, game) = TestStack::with_rcon_product("give {username} apple").await;
    let session = |id: &str, items: &str, user: &str| {
        signing::checkout_session(
            id,
            &format!("pi_{id}"),
            json!({ "courier_items": items, "game_username": user }),
        )
    };
    // No amount_subtotal: a price in metadata is not trusted alone.
    let mut bare = session("cs_bare", "p:1:10.48", "bare");
    bare.as_object_mut().map(|o| o.remove("amount_subtotal"));
    // Metadata prices that do not add up to what Stripe charged.
    let cheap = session("cs_cheap", "p:2:0.01", "cheap");
    // No price at all and no subtotal: would have been a free order.
    let mut free = session("cs_free", "p:1", "free");
    free.as_object_mut().map(|o| o.remove("amount_subtotal"));
    for (n, s) in [bare, cheap, free].into_iter().enumerate() {
        let answer = stack
            .send_stripe(&signing::stripe_event(
                &format!("evt_meta_{n}"),
                "checkout.session.completed",
                s,
            ))
            .await;
        assert_eq!(answer["status"], "applied", "{answer}");
        let o = stack.order(answer["order_id"].as_str().expect("id")).await;
        assert_eq!(o["payment_status"], "mismatched", "{o:#}");
        assert!(
            o["deliveries"].as_array().is_some_and(Vec::is_empty),
            "{o:#}"
        );
    }
    assert_eq!(stack.alerts("payment_mismatch").await.len(), 3);

    // amount_subtotal as a string is not a Stripe session: failed, no order.
    let mut stringy = session("cs_str", "p:1", "stringy");
    stringy["amount_subtotal"] = json!("998");
    let answer = stack
        .send_stripe(&signing::stripe_event(
            "evt_str",
            "checkout.session.completed",
            stringy,
        ))
        .await;
    assert_eq!(answer["status"], "failed", "{answer}");
    assert!(
        answer["note"]
            .as_str()
            .is_some_and(|n| n.contains("amount_subtotal")),
        "{answer}"
    );
    assert_eq!(stack.count("SELECT count(*) FROM orders").await, 3);

    // Stripe's own figures: 9.98 for two, 0.50 tax, 10.48 paid → delivered.
    let answer = stack
        .send_stripe(&signing::stripe_event(
            "evt_good",
            "checkout.session.completed",
            session("cs_good", "p:2", "good"),
        ))
        .await;
    let id = answer["order_id"].as_str().expect("id").to_owned();
    let o = stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(o["items"][0]["unit_price"], "4.99");
    assert_eq!(o["total"], "10.48");
    assert_eq!(o["payment_received"]["amount"], "10.48");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(game.commands(), vec!["give good apple".to_owned()]);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_past_the_total_raise_one_alert_and_a_foreign_currency_refund_is_not_applied() {
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_discord_product("p").await;
    let mut body = sample_order("p", "steve");
    body["gateway"] = json!("stripe");
    body["transaction_id"] = json!("pi_over");
    body["discord_user_id"] = json!("333");
    let (status, created) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();

    let euro = {
        let mut c = signing::refunded_charge("pi_over", 1048, 500, json!({}));
        c["currency"] = json!("eur");
        signing::stripe_event("evt_ref_eur", "charge.refunded", c)
    };
    assert_eq!(stack.send_stripe(&euro).await["status"], "failed");
    assert_eq!(stack.order(&id).await["refunded_amount"], "0");

    for (n, refunded) in [5000, 6000].into_iter().enumerate() {
        let event = signing::stripe_event(
            &format!("evt_ref_over_{n}"),
            "charge.refunded",
            signing::refunded_charge("pi_over", 1048, refunded, json!({})),
        );
        assert_eq!(stack.send_stripe(&event).await["status"], "applied");
    }
    let o = stack.order(&id).await;
    assert_eq!(o["refunded_amount"], "10.48");
    assert_eq!(o["payment_status"], "refunded");
    assert_eq!(stack.alerts("refunded_over_total").await.len(), 1);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amount_paid_must_pay_the_order_on_the_api_and_the_generic_webhook() {
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_discord_product("p").await;
    let mut body = sample_order("p", "steve");
    body["discord_user_id"] = json!("333");
    body["amount_paid"] = json!("1.00");
    let (status, e) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["field"], "amount_paid");
    assert_eq!(stack.count("SELECT count(*) FROM orders").await, 0);

    let text = body.to_string();
    let ts = now();
    let sig = signing::standard_signature(GENERIC_SECRET, "msg_under", ts, &text);
    let (status, answer) = stack.post_generic("msg_under", ts, &text, &sig).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let o = stack.order(answer["order_id"].as_str().expect("id")).await;
    assert_eq!(o["payment_status"], "mismatched", "{o:#}");
    assert!(o["deliveries"].as_array().is_some_and(Vec::is_empty));
    assert_eq!(stack.alerts("payment_mismatch").await.len(), 1);

    body["amount_paid"] = json!("10.48");
    let (status, created) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["payment_status"], "paid");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_payment_reprices_the_order_and_releases_what_waited_for_it() {
    let (stack, game) = TestStack::with_rcon_product("give {username} diamond").await;
    // One cent for 10.48; Stripe then refunds that cent while it waits.
    let (id, number) = pending_order(&stack, "cent").await;
    let paid = signing::stripe_event(
        "evt_cent",
        "checkout.session.completed",
        paying("cs_cent", &number, 1, "usd"),
    );
    stack.send_stripe(&paid).await;
    let refund = signing::stripe_event(
        "evt_cent_refund",
        "charge.refunded",
        signing::refunded_charge("pi_cs_cent", 1, 1, json!({ "order_id": number })),
    );
    assert_eq!(stack.send_stripe(&refund).await["status"], "pending");
    let (status, accepted) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{id}/payment/accept"),
            Some(&json!({ "reason": "a friend of the shop" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    let o = stack.order(&id).await;
    assert_eq!(o["total"], "0.01", "re-priced to what was paid: {o:#}");
    // The refund that waited is applied against the cent: full, withdrawn.
    assert_eq!(o["payment_status"], "refunded", "{o:#}");
    assert_eq!(o["refunded_amount"], "0.01");
    assert_eq!(o["status"], "refunded");
    assert_eq!(
        stack
            .count("SELECT count(*) FROM payment_events WHERE status = 'pending'")
            .await,
        0
    );

    // Underpaid, then paid again correctly by another session: the second
    // payment is the order's, the first is left to refund, with an alert.
    let (id, number) = pending_order(&stack, "again").await;
    stack
        .send_stripe(&signing::stripe_event(
            "evt_again_1",
            "checkout.session.completed",
            paying("cs_again_1", &number, 1, "usd"),
        ))
        .await;
    let answer = stack
        .send_stripe(&signing::stripe_event(
            "evt_again_2",
            "checkout.session.completed",
            paying("cs_again_2", &number, 1048, "usd"),
        ))
        .await;
    assert_eq!(answer["status"], "applied", "{answer}");
    let o = stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(o["transaction_id"], "pi_cs_again_2");
    assert_eq!(o["payment_status"], "paid");
    assert_eq!(o["payment_received"]["amount"], "10.48");
    assert!(
        stack
            .alerts("superseded_payment")
            .await
            .iter()
            .any(|a| a["message"]
                .as_str()
                .is_some_and(|m| m.contains("pi_cs_again_1"))),
        "the first payment is named for a refund"
    );
    assert_eq!(game.commands(), vec!["give again diamond".to_owned()]);
    stack.teardown().await;
}
