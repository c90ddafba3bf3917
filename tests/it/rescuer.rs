//! A worker process killed mid-job: its lease expires and the rescuer holds
//! or re-queues the delivery per `on_ambiguous`. And a graceful stop.

use std::time::Duration;

use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::{Behaviour, FakeGameServer};
use courier_tests::stack::TestStack;
use reqwest::Method;
use serde_json::json;

use crate::spawn_worker_process as spawn_worker;

async fn killed_mid_command(on_ambiguous: &str) -> (TestStack, FakeGameServer, String) {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    game.set(Behaviour {
        delay: Duration::from_secs(30),
        ..Behaviour::default()
    });
    let stack = TestStack::start_with(
        |s| {
            s.worker.lease_seconds = 5;
            s.rcon.connect_timeout_ms = 1000;
            s.rcon.command_timeout_ms = 2000;
            s.rcon.slot_wait_ms = 500;
        },
        false,
    )
    .await;
    stack.add_game_server("s", &game).await;
    stack
        .add_product("p", json!([{ "kind": "rcon", "game_server": "s", "command": "give {username} apple", "on_ambiguous": on_ambiguous }]))
        .await;
    let mut child = spawn_worker(&stack);
    let (_, order) = stack.post_order("p", "alex", None).await;
    game.wait_for_commands(1, Duration::from_secs(30)).await;
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    game.set(Behaviour::default());
    (stack, game, order["id"].as_str().expect("id").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_command_leaves_the_delivery_held_by_default() {
    let (mut stack, game, id) = killed_mid_command("hold").await;
    stack.start_worker().await; // its rescuer takes the expired lease
    stack
        .wait_until(
            "delivery held",
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE status = 'held')",
            Duration::from_secs(30),
        )
        .await;
    let order = stack.order(&id).await;
    assert_eq!(
        order["deliveries"][0]["attempt_history"][0]["outcome"],
        "abandoned"
    );
    let kinds: Vec<&str> = order["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"delivery.ambiguous") && kinds.contains(&"delivery.held"),
        "{kinds:?}"
    );
    let (_, held) = stack.call(Method::GET, "/v1/admin/held", None).await;
    assert_eq!(held["held"][0]["order_id"], order["id"]);
    assert_eq!(game.commands().len(), 1, "a held command is not run again");
    // Someone must decide: an alert says so.
    let alerts = stack.alerts("manual_action_required").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");

    // The admin decides it did not run, and retries it.
    let delivery = order["deliveries"][0]["id"]
        .as_str()
        .expect("delivery")
        .to_owned();
    let (status, _) = stack
        .call(
            Method::POST,
            &format!("/v1/admin/deliveries/{delivery}/retry"),
            None,
        )
        .await;
    assert!(status.is_success());
    stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(game.commands().len(), 2);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_ambiguous_retry_the_rescuer_requeues_and_nothing_is_lost() {
    let (mut stack, game, id) = killed_mid_command("retry").await;
    stack.start_worker().await;
    let done = stack
        .wait_for_order(&id, "completed", Duration::from_secs(30))
        .await;
    let outcomes: Vec<&str> = done["deliveries"][0]["attempt_history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["abandoned", "succeeded"]);
    assert_eq!(
        game.commands().len(),
        2,
        "run again, as configured, and visible as ambiguous"
    );
    let kinds: Vec<&str> = done["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"delivery.ambiguous"), "{kinds:?}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_job_finish_and_exits_zero() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    game.set(Behaviour {
        delay: Duration::from_millis(1500),
        ..Behaviour::default()
    });
    let stack = TestStack::start_with(|_| {}, false).await;
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("p", "s", "give {username} apple")
        .await;
    let mut child = spawn_worker(&stack);
    let (_, order) = stack.post_order("p", "alex", None).await;
    game.wait_for_commands(1, Duration::from_secs(30)).await;
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the grace")
        .expect("status");
    assert_eq!(status.code(), Some(0));
    // The job in flight was finished and recorded before the exit.
    let (_, o) = stack
        .call(
            Method::GET,
            &format!("/v1/orders/{}", order["id"].as_str().expect("id")),
            None,
        )
        .await;
    assert_eq!(o["status"], "completed", "{o}");
    stack.teardown().await;
}

/// Staff mark the item delivered while its worker is dead mid-command
/// (`on_ambiguous: retry`): the rescuer cancels the delivery instead of
/// running it again, the order stays completed, and a retry is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_left_running_by_mark_as_delivered_is_not_run_again_by_the_rescuer() {
    let (mut stack, game, id) = killed_mid_command("retry").await;
    let o = stack.order(&id).await;
    let item = o["items"][0]["id"].as_str().expect("item").to_owned();
    let (status, marked) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{id}/items/{item}/deliver"),
            Some(&json!({ "notes": "given by a moderator" })),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{marked}");
    let running = o["deliveries"][0]["id"].clone();
    assert_eq!(marked["left_running"], json!([running]), "{marked}");
    stack.start_worker().await; // its rescuer takes the expired lease
    stack
        .wait_until(
            "the delivery cancelled",
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE status = 'cancelled')",
            Duration::from_secs(30),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(game.commands().len(), 1, "not run a second time");
    let done = stack.order(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["items"][0]["delivery_status"], "delivered");
    let (status, err) = stack
        .call(
            Method::POST,
            &format!(
                "/v1/admin/deliveries/{}/retry",
                running.as_str().expect("id")
            ),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{err}");
    stack.teardown().await;
}
