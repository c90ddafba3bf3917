//! Limits shared across worker processes through Redis, and the local
//! fallback when Redis is unreachable.

use std::time::{Duration, Instant};

use courier_shared::limits::Limits;
use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::{Behaviour, FakeGameServer};
use courier_tests::stack::TestStack;
use reqwest::Method;
use serde_json::json;

/// Game server `s` on `game`, allowing `max_connections` sessions, and
/// product `p` running one command on it.
async fn serve_rcon(stack: &TestStack, game: &FakeGameServer, max_connections: u32) {
    let server = json!({ "host": "127.0.0.1", "port": game.addr.port(), "password": "pw", "dialect": "minecraft", "max_connections": max_connections });
    stack
        .call(Method::PUT, "/v1/game-servers/s", Some(&server))
        .await;
    stack
        .add_rcon_product("p", "s", "give {username} apple")
        .await;
}

/// `n` orders of `p` (for players u0, u1, …), each waited for until completed.
async fn order_and_complete(stack: &TestStack, n: usize) {
    let mut ids = Vec::new();
    for i in 0..n {
        let (_, o) = stack.post_order("p", &format!("u{i}"), None).await;
        ids.push(o["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        stack
            .wait_for_order(id, "completed", Duration::from_secs(60))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rcon_connection_limit_holds_across_two_worker_processes() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    game.set(Behaviour {
        delay: Duration::from_millis(150),
        ..Behaviour::default()
    });
    let stack = TestStack::start_with(|_| {}, false).await;
    serve_rcon(&stack, &game, 1).await;
    let mut workers: Vec<_> = (0..2)
        .map(|_| crate::spawn_worker_process(&stack))
        .collect();
    // Four times the stack's `worker.concurrency` (4): a process holds at
    // most its prefetch window (twice its concurrency), so however the two
    // start, the one that attaches first cannot take every order.
    order_and_complete(&stack, 16).await;
    // Both processes took jobs and competed for the one slot (the loser's
    // attempts end `busy`, transient, and are retried).
    let workers_used: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT worker) FROM delivery_attempts")
            .fetch_one(&stack.pool)
            .await
            .expect("count");
    assert_eq!(workers_used, 2, "both processes took part");
    assert_eq!(
        game.max_concurrent_sessions(),
        1,
        "one session at a time across both processes"
    );
    for w in &mut workers {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
    stack.teardown().await;
}

#[tokio::test]
async fn without_redis_limits_fall_back_to_local_ones_and_keep_working() {
    // Nothing listens on port 1: every Redis call fails at once.
    let limits = Limits::new("redis://127.0.0.1:1/", "t-noredis.");
    let started = Instant::now();
    let permit = limits.acquire("rcon:x", 5, Duration::from_secs(5)).await;
    assert!(matches!(permit, courier_shared::limits::Permit::Local(_)));
    // The local fallback allows one at a time (a conservative limit).
    assert!(
        limits
            .acquire_within(
                "rcon:x",
                5,
                Duration::from_secs(5),
                Duration::from_millis(100)
            )
            .await
            .is_none()
    );
    limits.release(permit).await;
    assert!(
        limits
            .acquire_within(
                "rcon:x",
                5,
                Duration::from_secs(5),
                Duration::from_millis(100)
            )
            .await
            .is_some()
    );
    // Rates fall to a quarter: 8/s becomes 2/s locally, so the 5th call waits for the next second.
    for _ in 0..5 {
        limits.throttle("supplier:y", 8).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no call hung on the missing Redis"
    );
    limits.block("discord:z", Duration::from_millis(300)).await;
    assert!(
        limits.blocked_for("discord:z").await.is_some(),
        "pauses still apply locally"
    );
}

#[tokio::test]
async fn a_window_is_shared_by_two_limiters_through_redis() {
    let prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
    let a = Limits::new("redis://127.0.0.1:6379/", &prefix);
    let b = Limits::new("redis://127.0.0.1:6379/", &prefix);
    // Align to the start of a second so the 6 calls share one window.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    tokio::time::sleep(Duration::from_millis(
        1000 - u64::from(now.subsec_millis()) + 20,
    ))
    .await;
    let started = Instant::now();
    for _ in 0..3 {
        a.throttle("supplier:shared", 4).await;
        b.throttle("supplier:shared", 4).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the fifth call across both waited for the next second"
    );
    a.block("discord:route", Duration::from_millis(500)).await;
    assert!(
        b.blocked_for("discord:route").await.is_some(),
        "a pause set by one replica is seen by the other"
    );
}

/// `worker.concurrency` bounds the jobs of a kind a process runs at once,
/// although its prefetch window holds twice as many messages: with a game
/// server that allows 32 sessions and answers slowly, no more than the
/// stack's 4 are ever open, and they are all used.
#[tokio::test]
async fn a_worker_runs_no_more_jobs_at_once_than_its_concurrency() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    game.set(Behaviour {
        delay: Duration::from_millis(300),
        ..Behaviour::default()
    });
    let stack = TestStack::start().await;
    serve_rcon(&stack, &game, 32).await;
    order_and_complete(&stack, 16).await;
    assert_eq!(game.commands().len(), 16);
    assert_eq!(
        game.max_concurrent_sessions(),
        4,
        "as many sessions at once as worker.concurrency, never more"
    );
    stack.teardown().await;
}

/// A message claimed ahead of a free driver slot does not eat its lease
/// waiting: after a quarter of the lease it is put back as `waiting` (no
/// retry budget spent) and runs once a slot is free, exactly once.
#[tokio::test]
async fn a_job_that_waits_too_long_for_a_driver_slot_comes_back_later() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    game.set(Behaviour {
        delay: Duration::from_millis(1500),
        ..Behaviour::default()
    });
    // One slot, a 5 s lease: a job may wait 1.25 s for the slot.
    let stack = TestStack::start_with(
        |s| {
            s.worker.concurrency = 1;
            s.worker.lease_seconds = 5;
            s.rcon.slot_wait_ms = 500;
            s.rcon.connect_timeout_ms = 500;
            s.rcon.command_timeout_ms = 2500;
        },
        true,
    )
    .await;
    serve_rcon(&stack, &game, 4).await;
    order_and_complete(&stack, 3).await;
    let mut commands = game.commands();
    commands.sort();
    assert_eq!(
        commands,
        ["give u0 apple", "give u1 apple", "give u2 apple"],
        "each command ran once"
    );
    let put_back: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM delivery_attempts \
         WHERE outcome = 'waiting' AND error LIKE '%job slots stayed busy%'",
    )
    .fetch_one(&stack.pool)
    .await
    .expect("count");
    assert!(
        put_back >= 1,
        "a job waited past a quarter of its lease and was put back"
    );
    let failures: i64 = sqlx::query_scalar("SELECT coalesce(sum(failures), 0) FROM deliveries")
        .fetch_one(&stack.pool)
        .await
        .expect("sum");
    assert_eq!(failures, 0, "no retry budget spent on waiting for a slot");
    assert_eq!(game.max_concurrent_sessions(), 1, "one driver at a time");
    stack.teardown().await;
}
