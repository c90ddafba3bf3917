//! An order accepted while RabbitMQ is unreachable is delivered once it is back.

use std::time::Duration;

use courier_shared::config::Secret;
use courier_shared::rcon::Dialect;
use courier_tests::fakes::proxy::Proxy;
use courier_tests::fakes::rcon::FakeGameServer;
use courier_tests::stack::TestStack;
use reqwest::StatusCode;

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

    // Several relay sweeps pass with the broker unreachable: the row waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
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
