//! The outbox: an order accepted while RabbitMQ is unreachable is delivered
//! once it is back; an accepted order's job message is published directly by
//! the API that wrote it, and the relays' sweep leaves such rows alone until
//! their lease ends or is given back.

use std::time::Duration;

use courier_shared::config::Secret;
use courier_shared::rcon::Dialect;
use courier_tests::fakes::proxy::Proxy;
use courier_tests::fakes::rcon::FakeGameServer;
use courier_tests::stack::TestStack;
use reqwest::StatusCode;

/// The condition that picks the outbox row of an order's (one) delivery.
fn row_of_order(order: impl std::fmt::Display) -> String {
    format!(
        "payload->>'delivery_id' = (SELECT id::text FROM deliveries WHERE order_id = '{order}')"
    )
}

/// Orders product `p` for `alex` and returns the order's id once it
/// completed (within `limit`).
async fn complete_one_order(stack: &TestStack, limit: Duration) -> String {
    let (status, order) = stack.post_order("p", "alex", None).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let id = order["id"].as_str().expect("id").to_owned();
    stack.wait_for_order(&id, "completed", limit).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_accepted_while_rabbitmq_is_down_is_delivered_after_it_returns() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    // The API reaches RabbitMQ only through the proxy; the worker directly.
    let proxy = Proxy::start("127.0.0.1:5672").await.expect("proxy");
    let proxy_url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let mut stack = TestStack::start_with(|s| s.amqp.url = Secret::new(proxy_url), false).await;
    stack.settings.amqp.url = Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f");
    stack.start_worker().await;
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("p", "s", "give {username} apple")
        .await;

    proxy.cut();
    let (status, order) = stack.post_order("p", "alex", None).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "accepting must not need RabbitMQ: {order}"
    );
    let id = order["id"].as_str().expect("id").to_owned();

    // Several relay sweeps pass with the broker unreachable: the row waits,
    // longer than its direct lease (`outbox::DIRECT_LEASE`), so the direct
    // lane it was handed to at commit leaves it to a sweep once the broker is
    // back (and it still goes out).
    tokio::time::sleep(courier_shared::db::outbox::DIRECT_LEASE + Duration::from_millis(1000))
        .await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&stack.pool)
        .await
        .expect("count");
    assert_eq!(pending, 1);
    assert!(game.commands().is_empty());
    let (ready_status, ready) = stack.call(reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(ready["rabbitmq"], false, "{ready}");
    // Still ready: orders are taken into the outbox while the broker is away.
    assert_eq!(ready_status, StatusCode::OK, "{ready}");

    proxy.restore();
    stack
        .wait_for_order(&id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(game.commands(), vec!["give alex apple".to_owned()]);
    stack.teardown().await;
}

/// The API that accepted an order publishes its job message itself, before
/// the row's lease ends (a sweep cannot take a leased row, so a message sent
/// before then was sent directly); its row is marked sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_orders_message_is_published_by_the_api_that_wrote_it() {
    let (stack, game) = TestStack::with_rcon_product("give {username} pear").await;
    let id = complete_one_order(&stack, Duration::from_secs(10)).await;
    // The mark comes up to `relay.mark_linger_ms` after the confirm, which
    // may be after the order completed.
    stack
        .wait_until(
            "the row is marked sent",
            &format!(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NOT NULL AND {})",
                row_of_order(&id)
            ),
            Duration::from_secs(10),
        )
        .await;
    let (leased, directly, attempts): (bool, bool, i32) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT publishing_until IS NOT NULL, published_at < publishing_until, attempts \
             FROM outbox WHERE {}",
            row_of_order(&id)
        )))
        .fetch_one(&stack.pool)
        .await
        .expect("outbox row");
    assert!(leased, "the accept leases its rows to its own process");
    assert!(directly, "published before the lease ended: not by a sweep");
    assert_eq!(attempts, 1);
    assert_eq!(game.commands(), vec!["give alex pear".to_owned()]);
    stack.teardown().await;
}

/// Rows published directly are marked sent together, after
/// `relay.mark_linger_ms` — not one statement per publish — each as of its
/// broker's confirm rather than of the mark; a relay that stops marks what
/// it holds first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directly_published_rows_are_marked_later_as_of_their_confirm_and_at_the_latest_on_stop() {
    let (mut stack, game) = TestStack::with_rcon_product_and(
        "give {username} fig",
        |s| s.relay.mark_linger_ms = 4000,
        true,
    )
    .await;
    // Every command takes 300 ms, so the confirm comes well before the
    // attempt ends.
    game.set(courier_tests::fakes::rcon::Behaviour {
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    let id = complete_one_order(&stack, Duration::from_secs(3)).await;
    let unmarked = stack
        .count(&format!(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND {}",
            row_of_order(&id)
        ))
        .await;
    assert_eq!(
        unmarked, 1,
        "delivered, and its mark still gathered with others to come"
    );

    if let Some(api) = stack.api.take() {
        api.stop().await;
    }
    let (attempts, before_the_attempt_ended): (i32, bool) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT x.attempts, x.published_at < a.finished_at \
             FROM outbox x, delivery_attempts a, deliveries d \
             WHERE d.order_id = '{id}' AND a.delivery_id = d.id AND x.{}",
            row_of_order(&id)
        )))
        .fetch_one(&stack.pool)
        .await
        .expect("the row is marked when its relay stops");
    assert_eq!(attempts, 1);
    assert!(
        before_the_attempt_ended,
        "published_at is the confirm's moment, not the mark's"
    );
    stack.teardown().await;
}

/// The direct lanes' mark keeps a mark already written (a sweep sent the
/// row again after its lease ended) and writes each row's own moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_writes_each_rows_confirm_time_and_keeps_an_earlier_mark() {
    use courier_shared::db::outbox;
    let stack = TestStack::start_with(|_| {}, false).await;
    let mut ids = Vec::new();
    for published in ["NULL", "NULL", "now() - interval '1 hour'"] {
        let id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO outbox (queue, payload, publishing_until, published_at) \
             VALUES ('courier.rcon', jsonb_build_object('delivery_id', gen_random_uuid()), \
             now() + interval '1 hour', {published}) RETURNING id"
        )))
        .fetch_one(&stack.pool)
        .await
        .expect("insert");
        ids.push(id);
    }
    outbox::mark_confirmed(&stack.pool, &ids, &[0, 60_000_000, 0])
        .await
        .expect("mark");
    let ages: Vec<(f64, i32)> = sqlx::query_as(
        "SELECT extract(epoch FROM now() - published_at)::float8, attempts \
         FROM outbox WHERE id = ANY($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(&stack.pool)
    .await
    .expect("rows");
    assert!(ages[0].0 < 5.0, "confirmed just now: {ages:?}");
    assert!((55.0..65.0).contains(&ages[1].0), "a minute ago: {ages:?}");
    assert!(ages[2].0 > 3000.0, "the earlier mark stays: {ages:?}");
    assert_eq!(ages.iter().map(|a| a.1).collect::<Vec<_>>(), vec![1, 1, 0]);
    stack.teardown().await;
}

/// A sweep takes unleased rows and rows whose lease ended, never one whose
/// lease is running, and publishes a row as soon as its lease is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_leaves_a_row_being_published_directly_until_its_lease_ends_or_is_given_back() {
    use courier_shared::db::outbox;
    let stack = TestStack::start_with(|_| {}, false).await;
    let insert = "INSERT INTO outbox (queue, payload, publishing_until) \
                  VALUES ('courier.rcon', jsonb_build_object('delivery_id', gen_random_uuid()), \
                  now() + $1::int8 * interval '1 second') RETURNING id";
    // Written and locked in one transaction, out of the stack's relay's sight.
    let mut tx = stack.pool.begin().await.expect("tx");
    let mut ids = Vec::new();
    for lease in [Some(3600_i64), Some(-1), None] {
        let id: i64 = sqlx::query_scalar(insert)
            .bind(lease)
            .fetch_one(&mut *tx)
            .await
            .expect("row");
        ids.push(id);
    }
    let locked: Vec<i64> = outbox::lock_batch(&mut tx, 100)
        .await
        .expect("lock")
        .into_iter()
        .map(|r| r.id)
        .filter(|id| ids.contains(id))
        .collect();
    assert_eq!(locked, ids[1..].to_vec(), "a running lease is left alone");
    tx.rollback().await.expect("rollback");

    // Committed with an hour's lease: sweeps (every 200 ms here) pass it by...
    let id: i64 = sqlx::query_scalar(insert)
        .bind(3600_i64)
        .fetch_one(&stack.pool)
        .await
        .expect("row");
    let published = || async {
        sqlx::query_scalar::<_, bool>("SELECT published_at IS NOT NULL FROM outbox WHERE id = $1")
            .bind(id)
            .fetch_one(&stack.pool)
            .await
            .expect("row")
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!published().await, "a sweep took a leased row");
    // ...until it is given back.
    outbox::release(&stack.pool, &[id]).await.expect("release");
    stack
        .wait_until(
            "the given-back row published",
            &format!("SELECT published_at IS NOT NULL FROM outbox WHERE id = {id}"),
            Duration::from_secs(5),
        )
        .await;
    stack.teardown().await;
}

/// When the accept's handoff cannot take the rows (the relay's queue is
/// gone or full), they are given back to the sweep at once rather than
/// waiting out their lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_relay_cannot_take_at_commit_are_given_back_to_the_sweep() {
    use courier_shared::service::orders::NewOrder;
    let stack = TestStack::start_with(|_| {}, false).await;
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    stack.add_game_server("s", &game).await;
    stack.add_rcon_product("p", "s", "say {username}").await;
    // A handoff whose relay is gone.
    let (rows, relay) = tokio::sync::mpsc::channel(1);
    drop(relay);
    let handoff = courier_shared::db::outbox::Handoff {
        rows: Some(rows),
        sweep: std::sync::Arc::new(tokio::sync::Notify::new()),
    };
    let own = courier_tests::stack::OwnAccepts::new(&stack, Some(handoff));
    let with = own.with(&stack.pool);
    let order: NewOrder =
        serde_json::from_value(courier_tests::stack::sample_order("p", "sam")).expect("order");
    let accepted = courier_shared::service::orders::create_order(&with, order, None, "test")
        .await
        .expect("accepted");
    stack
        .wait_until(
            "the lease given back",
            &format!(
                "SELECT publishing_until IS NULL FROM outbox WHERE {}",
                row_of_order(accepted.order.id)
            ),
            Duration::from_secs(5),
        )
        .await;
    stack.teardown().await;
}

/// With `relay.publish_directly` off, an accept leases nothing and wakes the
/// sweep, which publishes its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_direct_publishing_off_the_sweep_publishes_accepted_orders() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    // No periodic sweep within the test: only the accept's wake-up.
    let stack = TestStack::start_with(
        |s| {
            s.relay.publish_directly = false;
            s.relay.sweep_interval_ms = 600_000;
        },
        true,
    )
    .await;
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("p", "s", "give {username} plum")
        .await;
    let (status, order) = stack.post_order("p", "alex", None).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let id = order["id"].as_str().expect("id").to_owned();
    stack
        .wait_for_order(&id, "completed", Duration::from_secs(10))
        .await;
    let leased: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT publishing_until IS NOT NULL FROM outbox WHERE {}",
        row_of_order(&id)
    )))
    .fetch_one(&stack.pool)
    .await
    .expect("outbox row");
    assert!(!leased, "nothing is leased with direct publishing off");
    assert_eq!(game.commands(), vec!["give alex plum".to_owned()]);
    stack.teardown().await;
}
