//! Failures: transient ones retried through the delay tiers with growing
//! delays, permanent ones dead at once, waiting ones re-checked without
//! spending the failure budget.

use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::{Behaviour, FakeGameServer};
use courier_tests::stack::TestStack;
use reqwest::Method;
use serde_json::{Value, json};

fn started_at(order: &Value, attempt: usize) -> DateTime<Utc> {
    order["deliveries"][0]["attempt_history"][attempt]["started_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("started_at")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_twice_is_delivered_on_the_third_attempt_with_growing_delays() {
    let (stack, game) = TestStack::with_rcon_product("give {username} apple").await;
    game.set(Behaviour {
        reject_connections: 2,
        ..Behaviour::default()
    });

    let (_, order) = stack.post_order("p", "alex", None).await;
    let done = stack
        .wait_for_order(
            order["id"].as_str().expect("id"),
            "completed",
            Duration::from_secs(30),
        )
        .await;
    let history = done["deliveries"][0]["attempt_history"]
        .as_array()
        .expect("history")
        .clone();
    let outcomes: Vec<&str> = history
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["transient", "transient", "succeeded"]);
    // Closed or reset, depending on who is faster; either way the server is named.
    let error = history[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!("s (127.0.0.1:{}): ", game.addr.port())),
        "{error}"
    );
    assert_eq!(game.commands(), vec!["give alex apple".to_owned()]);

    // Test schedule: 200 ms then 400 ms, each scaled by a jitter factor in [0.8, 1].
    let gap1 = (started_at(&done, 1) - started_at(&done, 0)).num_milliseconds();
    let gap2 = (started_at(&done, 2) - started_at(&done, 1)).num_milliseconds();
    assert!(gap1 >= 160, "first retry waited {gap1} ms");
    assert!(gap2 >= 320, "second retry waited {gap2} ms");
    assert!(gap2 > gap1, "delays grow: {gap1} ms then {gap2} ms");
    let kinds: Vec<&str> = done["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "delivery.retrying").count(),
        2
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_server_ends_dead_with_the_reason_and_the_order_failed() {
    let (stack, game) = TestStack::with_rcon_product("give {username} apple").await;
    game.set(Behaviour {
        reject_connections: 1000,
        ..Behaviour::default()
    });

    let (_, order) = stack.post_order("p", "alex", None).await;
    let failed = stack
        .wait_for_order(
            order["id"].as_str().expect("id"),
            "failed",
            Duration::from_secs(30),
        )
        .await;
    let delivery = &failed["deliveries"][0];
    assert_eq!(delivery["status"], "dead");
    assert_eq!(
        delivery["attempts"], 4,
        "the test schedule allows 4 attempts"
    );
    assert_eq!(failed["items"][0]["delivery_status"], "failed");
    let reason = delivery["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("gave up after 4 failed attempts; last error:"),
        "{reason}"
    );

    // The message went through courier.dead and the recorder attached it.
    stack
        .wait_until(
            "dead letter with its message",
            "SELECT EXISTS (SELECT 1 FROM dead_letters WHERE body IS NOT NULL)",
            Duration::from_secs(20),
        )
        .await;
    let (_, list) = stack
        .call(Method::GET, "/v1/admin/dead-letters?kind=rcon", None)
        .await;
    let dl = &list["dead_letters"][0];
    assert_eq!(dl["delivery_id"], delivery["id"]);
    assert_eq!(dl["reason"], reason);
    assert_eq!(dl["x_death"][0]["reason"], "rejected", "{dl}");
    assert!(game.commands().is_empty());
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_dead_at_once_without_retries() {
    let game = FakeGameServer::start("right", Dialect::Source)
        .await
        .expect("fake server");
    let stack = TestStack::start().await;
    let mut wrong = json!({ "host": "127.0.0.1", "port": game.addr.port(), "password": "wrong", "dialect": "source" });
    let (status, _) = stack
        .call(Method::PUT, "/v1/game-servers/s", Some(&wrong))
        .await;
    assert!(status.is_success());
    stack.add_rcon_product("p", "s", "sm_give {username}").await;

    let (_, order) = stack.post_order("p", "alex", None).await;
    let id = order["id"].as_str().expect("id").to_owned();
    let failed = stack
        .wait_for_order(&id, "failed", Duration::from_secs(20))
        .await;
    let delivery = &failed["deliveries"][0];
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(delivery["attempt_history"][0]["outcome"], "permanent");
    assert!(
        delivery["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("rejected the RCON password"),
        "{delivery}"
    );

    // The admin fixes the password and retries the dead letter through the API.
    wrong["password"] = "right".into();
    let (status, _) = stack
        .call(Method::PUT, "/v1/game-servers/s", Some(&wrong))
        .await;
    assert!(status.is_success());
    let (_, list) = stack
        .call(Method::GET, "/v1/admin/dead-letters", None)
        .await;
    let dl_id = list["dead_letters"][0]["id"]
        .as_i64()
        .expect("dead letter id");
    let (_, shown) = stack
        .call(
            Method::GET,
            &format!("/v1/admin/dead-letters/{dl_id}"),
            None,
        )
        .await;
    assert_eq!(shown["attempts"][0]["outcome"], "permanent", "{shown}");
    let (status, body) = stack
        .call(
            Method::POST,
            &format!("/v1/admin/dead-letters/{dl_id}/retry"),
            None,
        )
        .await;
    assert!(status.is_success(), "{body}");
    let done = stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(done["deliveries"][0]["attempts"], 2);
    assert_eq!(game.commands(), vec!["sm_give alex".to_owned()]);
    let (_, after) = stack
        .call(
            Method::GET,
            &format!("/v1/admin/dead-letters/{dl_id}"),
            None,
        )
        .await;
    assert_eq!(after["dead_letter"]["resolution"], "retried");
    let (status, _) = stack
        .call(
            Method::POST,
            &format!("/v1/admin/dead-letters/{dl_id}/retry"),
            None,
        )
        .await;
    assert_eq!(
        status,
        reqwest::StatusCode::CONFLICT,
        "a resolved dead letter is not retried twice"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_player_waits_and_is_delivered_once_online() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    game.set(Behaviour {
        players: Some(vec!["someone".into()]),
        ..Behaviour::default()
    });
    let stack = TestStack::start().await;
    stack.add_game_server("s", &game).await;
    stack
        .add_product("p", json!([{ "kind": "rcon", "game_server": "s", "command": "give {username} cake", "require_online": true }]))
        .await;

    let (_, order) = stack.post_order("p", "Alex", None).await;
    let id = order["id"].as_str().expect("id").to_owned();
    stack
        .wait_until(
            "the delivery waits",
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE status = 'waiting' AND attempts >= 2)",
            Duration::from_secs(20),
        )
        .await;
    let waiting = stack.order(&id).await;
    assert_eq!(waiting["items"][0]["delivery_status"], "waiting");
    assert!(
        game.commands().is_empty(),
        "nothing runs while the player is offline"
    );

    game.set(Behaviour {
        players: Some(vec!["someone".into(), "alex".into()]),
        ..Behaviour::default()
    });
    let done = stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(game.commands(), vec!["give Alex cake".to_owned()]);
    let failures: i32 = sqlx::query_scalar("SELECT failures FROM deliveries")
        .fetch_one(&stack.pool)
        .await
        .expect("failures");
    assert_eq!(failures, 0, "waiting does not spend the failure budget");
    let outcomes: Vec<&str> = done["deliveries"][0]["attempt_history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert!(
        outcomes.len() >= 3
            && outcomes[..outcomes.len() - 1]
                .iter()
                .all(|o| *o == "waiting"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes.last(), Some(&"succeeded"));
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_command_is_a_permanent_failure() {
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
    let (_, order) = stack.post_order("p", "alex", None).await;
    let failed = stack
        .wait_for_order(
            order["id"].as_str().expect("id"),
            "failed",
            Duration::from_secs(20),
        )
        .await;
    let attempt = &failed["deliveries"][0]["attempt_history"][0];
    assert_eq!(attempt["outcome"], "permanent");
    assert!(
        attempt["response"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Unknown or incomplete command")
    );
    assert_eq!(game.commands().len(), 1);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_timed_out_after_sending_is_held_not_run_again() {
    let (stack, game) = TestStack::with_rcon_product("give {username} diamond 64").await;
    // Longer than the test's 3 s command timeout: the command was sent, no answer came.
    game.set(Behaviour {
        delay: Duration::from_secs(5),
        ..Behaviour::default()
    });
    let (_, order) = stack.post_order("p", "alex", None).await;
    stack
        .wait_until(
            "held",
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE status = 'held')",
            Duration::from_secs(20),
        )
        .await;
    let (_, o) = stack
        .call(
            Method::GET,
            &format!(
                "/v1/orders/{}?expand=full",
                order["id"].as_str().expect("id")
            ),
            None,
        )
        .await;
    let kinds: Vec<&str> = o["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"delivery.ambiguous"), "{kinds:?}");
    assert!(
        o["deliveries"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("on_ambiguous = hold")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(game.commands().len(), 1, "not sent a second time");
    stack.teardown().await;
}
