//! `courier-api` stops gracefully on SIGTERM, as Kubernetes sends it: a
//! request in flight (here, a read waiting for a status) is answered, the
//! process exits 0, and nothing listens afterwards.

use std::time::Duration;

use courier_tests::stack::{TestStack, process_env};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn the_api_answers_requests_in_flight_then_exits_on_sigterm() {
    let mut stack = TestStack::start_with(|_| {}, false).await;
    let game = courier_tests::fakes::rcon::FakeGameServer::start(
        "pw",
        courier_shared::rcon::Dialect::Minecraft,
    )
    .await
    .expect("fake server");
    stack.add_game_server("s", &game).await;
    stack.add_rcon_product("p", "s", "say hi {username}").await;
    // Only the child serves from here on: its relay alone publishes.
    if let Some(api) = stack.api.take() {
        api.stop().await;
    }

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier-api-process"))
        .envs(process_env(&stack.settings))
        .env("COURIER__API__BIND", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("api process starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the api says where it listens")
        .expect("stdout")
        .and_then(|l| l.strip_prefix("listening ").map(str::to_owned))
        .expect("listening <addr>");
    let base = format!("http://{addr}");

    // No worker: the order stays pending, so a read waiting for `completed` waits.
    let order: serde_json::Value = stack
        .http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(&stack.admin_key)
        .json(&courier_tests::stack::sample_order("p", "Steve"))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let id = order["id"].as_str().expect("id").to_owned();
    let waiting = {
        let http = stack.http.clone();
        let url = format!("{base}/v1/orders/{id}?wait_for=completed&timeout=30s");
        let key = stack.admin_key.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let r = http.get(url).bearer_auth(key).send().await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the read is waiting");

    let pid = child.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());

    let (answer, took) = waiting.await.expect("task");
    let answer = answer.expect("the request in flight is answered, not cut off");
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["id"], id.as_str());
    assert!(
        took < Duration::from_secs(10),
        "answered at shutdown, not at its timeout: {took:?}"
    );

    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits promptly")
        .expect("status");
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "nothing listens after the stop"
    );
    // The child's relay published the order's job before it stopped.
    let unpublished = stack
        .count("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .await;
    assert_eq!(unpublished, 0);
    stack.teardown().await;
}
