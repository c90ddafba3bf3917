//! RabbitMQ delivers at least once; a delivery runs at most once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use courier_tests::stack::TestStack;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_message_of_a_done_delivery_does_not_run_again() {
    let (stack, game) = TestStack::with_rcon_product("give {username} cake").await;
    let (_, order) = stack.post_order("p", "alex", None).await;
    let done = stack
        .wait_for_order(
            order["id"].as_str().expect("id"),
            "completed",
            Duration::from_secs(20),
        )
        .await;
    let delivery_id = done["deliveries"][0]["id"].clone();

    // The same job arrives again (a redelivery after a lost ack looks exactly like this).
    for _ in 0..2 {
        stack
            .publish_raw(
                "courier.rcon",
                json!({ "delivery_id": delivery_id, "kind": "rcon" })
                    .to_string()
                    .as_bytes(),
            )
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stack.worker().stats().skipped.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the duplicates were never consumed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(game.commands(), vec!["give alex cake".to_owned()]);
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_attempts")
        .fetch_one(&stack.pool)
        .await
        .expect("count");
    assert_eq!(attempts, 1);
    stack.teardown().await;
}
