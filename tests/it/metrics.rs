//! `/metrics` of the API and of the worker's own listener: a delivered order
//! moves the series that describe it. Each process (here, each stack) has its
//! own registry, so the counts are exact.

use std::time::Duration;

use courier_tests::stack::TestStack;

/// The value of the sample `series` (name and labels exactly as encoded).
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub(crate) async fn scrape(http: &reqwest::Client, url: &str) -> String {
    let r = http.get(url).send().await.expect("scrape");
    assert_eq!(r.status(), 200, "{url}");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("test step")
            .starts_with("application/openmetrics-text"),
        "{url}"
    );
    r.text().await.expect("test step")
}

#[tokio::test]
async fn a_delivered_order_moves_the_api_and_worker_series() {
    let (stack, game) = TestStack::with_rcon_product("say hi {username}").await;
    let worker = format!("http://{}", stack.worker().http_addr);
    let before = scrape(&stack.http, &format!("{worker}/metrics")).await;
    assert_eq!(
        sample(
            &before,
            r#"courier_deliveries_total{kind="rcon",outcome="succeeded"}"#
        ),
        None
    );

    let (status, order) = stack.post_order("p", "Steve", None).await;
    assert_eq!(status, 201);
    let id = order["id"].as_str().expect("test step");
    stack
        .wait_for_order(id, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(game.commands(), vec!["say hi Steve".to_owned()]);

    // The attempt is counted right after its batch commits, so the order can
    // read `completed` a moment before the count moves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let w = loop {
        let w = scrape(&stack.http, &format!("{worker}/metrics")).await;
        let counted = w.contains(r#"courier_deliveries_total{kind="rcon",outcome="succeeded"}"#);
        if counted || tokio::time::Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        sample(
            &w,
            r#"courier_deliveries_total{kind="rcon",outcome="succeeded"}"#
        ),
        Some(1.0),
        "{w}"
    );
    // The target label is the delivery's target, as dead letters filter by
    // it: for RCON the game server's id (stable across renames).
    let server: String = sqlx::query_scalar("SELECT id::text FROM game_servers WHERE name = 's'")
        .fetch_one(&stack.pool)
        .await
        .expect("test step");
    assert_eq!(
        sample(
            &w,
            &format!(r#"courier_attempt_duration_seconds_count{{kind="rcon",target="{server}"}}"#)
        ),
        Some(1.0),
        "{w}"
    );
    let queue = stack.settings.amqp.prefix.clone() + "courier.rcon";
    assert_eq!(
        sample(
            &w,
            &format!(r#"courier_consumer_lag_seconds_count{{queue="{queue}"}}"#)
        ),
        Some(1.0),
        "{w}"
    );
    assert_eq!(sample(&w, "courier_completer_batch_size_count"), Some(1.0));
    assert_eq!(sample(&w, "courier_claim_batch_size_count"), Some(1.0));
    assert_eq!(sample(&w, "courier_redis_fallback_active"), Some(0.0));
    // One consumer per kind, and the dead-letter recorder.
    let consumers = courier_shared::domain::delivery::DeliveryKind::ALL.len() + 1;
    assert_eq!(
        sample(&w, "courier_consumers_connected"),
        Some(consumers as f64)
    );

    let a = scrape(&stack.http, &stack.url("/metrics")).await;
    assert_eq!(
        sample(
            &a,
            r#"courier_http_requests_total{method="POST",route="/v1/orders",status="201"}"#
        ),
        Some(1.0),
        "{a}"
    );
    assert!(
        sample(
            &a,
            r#"courier_http_request_duration_seconds_count{method="GET",route="/v1/orders/{reference}"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{a}"
    );
    assert_eq!(
        sample(&a, "courier_outbox_published_total"),
        Some(1.0),
        "{a}"
    );
    assert_eq!(
        sample(&a, "courier_outbox_publish_delay_seconds_count"),
        Some(1.0)
    );
    assert_eq!(sample(&a, "courier_outbox_backlog"), Some(0.0));
    assert_eq!(sample(&a, "courier_dead_letters_open"), Some(0.0));
    assert_eq!(
        sample(&a, &format!(r#"courier_queue_messages{{queue="{queue}"}}"#)),
        Some(0.0),
        "{a}"
    );
    assert_eq!(
        sample(
            &a,
            &format!(r#"courier_queue_consumers{{queue="{queue}"}}"#)
        ),
        Some(1.0),
        "{a}"
    );

    // The worker's probes.
    let ready = stack
        .http
        .get(format!("{worker}/readyz"))
        .send()
        .await
        .expect("test step");
    assert_eq!(ready.status(), 200);
    let alive = stack
        .http
        .get(format!("{worker}/healthz"))
        .send()
        .await
        .expect("test step");
    assert_eq!(alive.status(), 200);
    stack.teardown().await;
}
