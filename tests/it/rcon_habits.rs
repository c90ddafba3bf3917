//! Real game servers' RCON habits, each through the whole stack: order →
//! delivery outcome → the stored answer, and how long it took to settle.

use std::time::{Duration, Instant};

use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::{Behaviour, FakeGameServer};
use courier_tests::stack::{TestStack, sample_order};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Registers `game` as game server `name` with extra settings.
async fn server(stack: &TestStack, name: &str, game: &FakeGameServer, extra: Value) {
    let mut body = json!({
        "host": game.addr.ip().to_string(), "port": game.addr.port(),
        "password": game.password, "dialect": game.dialect.as_str(), "max_connections": 2,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, resp) = stack
        .call(
            Method::PUT,
            &format!("/v1/game-servers/{name}"),
            Some(&body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

async fn fake(dialect: Dialect, behaviour: Behaviour) -> FakeGameServer {
    let game = FakeGameServer::start("pw", dialect)
        .await
        .expect("fake game server");
    game.set(behaviour);
    game
}

/// Posts an order of `sku` for `user`; returns its id.
async fn order(stack: &TestStack, sku: &str, user: &str) -> String {
    let (status, o) = stack
        .call(Method::POST, "/v1/orders", Some(&sample_order(sku, user)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{o}");
    o["id"].as_str().expect("id").to_owned()
}

/// Waits until the order's only delivery settles; returns it and how long.
async fn settled(stack: &TestStack, id: &str, started: Instant) -> (Value, Duration) {
    let o = stack
        .wait_order_until(id, "a settled delivery", |o| {
            matches!(
                o["deliveries"][0]["status"].as_str(),
                Some("succeeded" | "dead" | "held" | "waiting")
            )
        })
        .await;
    (o["deliveries"][0].clone(), started.elapsed())
}

/// A habit, the dialect, the fake's switches, the game server's settings,
/// the command, the delivery status expected and the answer kept (`None`:
/// `big N` answers N bytes).
type Habit = (
    &'static str,
    Dialect,
    Behaviour,
    Value,
    String,
    &'static str,
    Option<String>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_habit_delivers_with_its_answer_kept_and_no_timeout_waited() {
    let stack = TestStack::start().await;
    let long = format!("say {}", "x".repeat(1439));
    assert_eq!(long.len(), 1443);
    // (habit, dialect, switches, game-server settings, command, status, answer)
    let cases: Vec<Habit> = vec![
        (
            "vanilla",
            Dialect::Minecraft,
            Behaviour::default(),
            json!({}),
            "say hi".into(),
            "succeeded",
            Some("ok: say hi".into()),
        ),
        (
            "one request per read",
            Dialect::Minecraft,
            Behaviour {
                one_request_per_read: true,
                ..Behaviour::default()
            },
            json!({}),
            "say hi".into(),
            "succeeded",
            Some("ok: say hi".into()),
        ),
        (
            "non-EXEC is a login",
            Dialect::Minecraft,
            Behaviour {
                non_exec_is_login: true,
                ..Behaviour::default()
            },
            json!({}),
            "list".into(),
            "succeeded",
            Some("ok: list".into()),
        ),
        (
            "no reply without output",
            Dialect::Minecraft,
            Behaviour {
                silent: true,
                ..Behaviour::default()
            },
            json!({ "framing": "exec_quiet", "quiet_ms": 200 }),
            "say hi".into(),
            "succeeded",
            Some(String::new()),
        ),
        (
            "drops requests over 1,460 bytes",
            Dialect::Minecraft,
            Behaviour {
                max_request_bytes: Some(1460),
                ..Behaviour::default()
            },
            json!({}),
            long.clone(),
            "succeeded",
            Some(format!("ok: {long}")),
        ),
        (
            "Command not found",
            Dialect::Minecraft,
            Behaviour {
                error_answer: Some("Command not found".into()),
                ..Behaviour::default()
            },
            json!({}),
            "frobnicate".into(),
            "dead",
            Some("Command not found".into()),
        ),
        (
            "Invalid Syntax",
            Dialect::Minecraft,
            Behaviour {
                error_answer: Some("Invalid Syntax. Usage: /give <player> <item> [amount]".into()),
                ..Behaviour::default()
            },
            json!({}),
            "give".into(),
            "dead",
            Some("Invalid Syntax. Usage: /give <player> <item> [amount]".into()),
        ),
        (
            "vanilla unknown command",
            Dialect::Minecraft,
            Behaviour {
                unknown_command: true,
                ..Behaviour::default()
            },
            json!({}),
            "frobnicate".into(),
            "dead",
            Some("Unknown or incomplete command, see below for error".into()),
        ),
        (
            "a store's own error text",
            Dialect::Minecraft,
            Behaviour {
                error_answer: Some("Rank does not exist".into()),
                ..Behaviour::default()
            },
            json!({ "error_patterns": ["rank does not exist"] }),
            "lp user a parent add nope".into(),
            "dead",
            Some("Rank does not exist".into()),
        ),
        (
            "Source unknown command",
            Dialect::Source,
            Behaviour {
                error_answer: Some("Unknown command \"sm_x\"".into()),
                ..Behaviour::default()
            },
            json!({}),
            "sm_x".into(),
            "dead",
            Some("Unknown command \"sm_x\"".into()),
        ),
        (
            "a NUL in the answer",
            Dialect::Minecraft,
            Behaviour {
                error_answer: Some("Gave 1 [Apple]\u{0} to u".into()),
                ..Behaviour::default()
            },
            json!({}),
            "give u apple".into(),
            "succeeded",
            Some("Gave 1 [Apple]\u{FFFD} to u".into()),
        ),
        (
            "the player is offline",
            Dialect::Minecraft,
            Behaviour {
                error_answer: Some("No player was found".into()),
                ..Behaviour::default()
            },
            json!({}),
            "give u apple".into(),
            "waiting",
            Some("No player was found".into()),
        ),
        (
            "split over 4,096 bytes",
            Dialect::Minecraft,
            Behaviour::default(),
            json!({}),
            "big 10000".into(),
            "succeeded",
            None,
        ),
        (
            "split at exactly 8,192 bytes",
            Dialect::Minecraft,
            Behaviour::default(),
            json!({ "quiet_ms": 200 }),
            "big 8192".into(),
            "succeeded",
            None,
        ),
        (
            "Source with its extra packet",
            Dialect::Source,
            Behaviour::default(),
            json!({}),
            "big 9000".into(),
            "succeeded",
            None,
        ),
        (
            "Source that never splits",
            Dialect::Source,
            Behaviour {
                never_split: true,
                ..Behaviour::default()
            },
            json!({}),
            "big 9000".into(),
            "succeeded",
            None,
        ),
    ];
    let mut games = Vec::new();
    for (i, (habit, dialect, behaviour, settings, command, want, answer)) in
        cases.into_iter().enumerate()
    {
        let game = fake(dialect, behaviour).await;
        let (name, sku) = (format!("s{i}"), format!("p{i}"));
        server(&stack, &name, &game, settings).await;
        stack.add_rcon_product(&sku, &name, &command).await;
        let started = Instant::now();
        let id = order(&stack, &sku, &format!("u{i}")).await;
        let (delivery, took) = settled(&stack, &id, started).await;
        assert_eq!(delivery["status"], want, "{habit}: {delivery:#}");
        assert_eq!(
            delivery["attempts"], 1,
            "{habit}: one attempt: {delivery:#}"
        );
        let stored = &delivery["attempt_history"][0]["response"];
        match answer {
            Some(a) => assert_eq!(stored, &json!(a), "{habit}: the answer is kept"),
            None => {
                let n: usize = command["big ".len()..].parse().expect("size");
                assert_eq!(
                    stored.as_str().map(str::len),
                    Some(n),
                    "{habit}: {delivery:#}"
                );
            }
        }
        if want == "dead" {
            assert!(
                delivery["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("refused")),
                "{habit}: {delivery:#}"
            );
        }
        eprintln!("habit {habit}: {want} in {took:?}");
        // Far below the 3 s command timeout of the test stack.
        assert!(
            took < Duration::from_millis(2500),
            "{habit}: settled in {took:?}"
        );
        games.push(game);
    }
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_online_reads_each_listing_and_says_when_it_cannot_tell() {
    let stack = TestStack::start().await;
    let cases = [
        (
            "There are no players online.",
            json!({}),
            "waiting",
            "not online",
        ),
        (
            "There are 0 of a max of 20 players online:",
            json!({}),
            "waiting",
            "not online",
        ),
        (
            "There are 2 of a max of 20 players online: Alex, Steve",
            json!({}),
            "succeeded",
            "",
        ),
        (
            "There are 1/20 players online:\n[VIP] Steve",
            json!({}),
            "succeeded",
            "",
        ),
        ("Players: none", json!({}), "dead", "online_command"),
    ];
    let mut games = Vec::new();
    for (i, (listing, settings, want, says)) in cases.into_iter().enumerate() {
        let game = fake(
            Dialect::Minecraft,
            Behaviour {
                list_answer: Some(listing.into()),
                ..Behaviour::default()
            },
        )
        .await;
        let (name, sku) = (format!("s{i}"), format!("p{i}"));
        server(&stack, &name, &game, settings).await;
        stack
            .add_product(
                &sku,
                json!([{ "kind": "rcon", "game_server": name, "command": "give {username} apple", "require_online": true }]),
            )
            .await;
        let started = Instant::now();
        let id = order(&stack, &sku, "Steve").await;
        let (delivery, took) = settled(&stack, &id, started).await;
        assert_eq!(delivery["status"], want, "{listing}: {delivery:#}");
        if !says.is_empty() {
            assert!(
                delivery["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(says)),
                "{listing}: {delivery:#}"
            );
            assert_eq!(
                delivery["attempt_history"][0]["response"], listing,
                "the listing is kept"
            );
        }
        assert!(took < Duration::from_millis(2500), "{listing}: {took:?}");
        games.push(game);
    }
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minus_one_after_login_says_what_happened_and_holds_what_may_have_run() {
    let stack = TestStack::start().await;
    let game = fake(
        Dialect::Minecraft,
        Behaviour {
            non_exec_is_login: true,
            ..Behaviour::default()
        },
    )
    .await;
    // The old framing on a server that takes the sentinel for a login.
    server(&stack, "s", &game, json!({ "framing": "sentinel" })).await;
    stack
        .add_rcon_product("p", "s", "give {username} apple")
        .await;
    let id = order(&stack, "p", "alex").await;
    let (delivery, _) = settled(&stack, &id, Instant::now()).await;
    assert_eq!(delivery["status"], "held", "{delivery:#}");
    let error = delivery["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("new login attempt"), "{error}");
    assert!(!error.contains("password"), "{error}");
    assert_eq!(game.commands(), vec!["give alex apple".to_owned()]);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_last_attempt_is_held_never_dead() {
    let stack = TestStack::start().await;
    let game = fake(
        Dialect::Minecraft,
        Behaviour {
            drop_after_command: true,
            ..Behaviour::default()
        },
    )
    .await;
    server(&stack, "s", &game, json!({})).await;
    stack
        .add_product(
            "p",
            json!([{ "kind": "rcon", "game_server": "s", "command": "give {username} apple", "on_ambiguous": "retry" }]),
        )
        .await;
    let id = order(&stack, "p", "alex").await;
    let o = stack
        .wait_order_until(&id, "held", |o| o["deliveries"][0]["status"] == "held")
        .await;
    let d = &o["deliveries"][0];
    // `retry` re-ran it (the test schedule allows 4 attempts), then held it.
    assert_eq!(d["attempts"], 4, "{d:#}");
    assert!(
        d["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("retry budget is spent")),
        "{d:#}"
    );
    assert_eq!(
        game.commands().len(),
        4,
        "retry runs it again, as docs/failures.md warns"
    );
    assert_eq!(stack.count("SELECT count(*) FROM dead_letters").await, 0);
    // A bulk retry of dead letters does not touch it.
    let (status, bulk) = stack
        .call(
            Method::POST,
            "/v1/admin/dead-letters/retry",
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{bulk}");
    assert_eq!(bulk["matched"], 0, "{bulk}");
    stack.teardown().await;
}

/// 500 orders at once on a server with `max_connections: 2` answering in
/// 20 ms, two worker processes: all delivered, none dead, never more than two
/// sessions open, and waiting for a slot never counted as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_orders_on_two_connections_wait_for_slots_and_all_arrive() {
    let game = fake(
        Dialect::Minecraft,
        Behaviour {
            delay: Duration::from_millis(20),
            ..Behaviour::default()
        },
    )
    .await;
    let stack = TestStack::start_with(|_| {}, false).await;
    server(&stack, "s", &game, json!({ "max_connections": 2 })).await;
    stack
        .add_rcon_product("p", "s", "give {username} apple")
        .await;
    let mut workers: Vec<_> = (0..2)
        .map(|_| crate::spawn_worker_process(&stack))
        .collect();
    let started = Instant::now();
    let posts = (0..500).map(|i| {
        let stack = &stack;
        async move { order(stack, "p", &format!("u{i}")).await }
    });
    futures_util::future::join_all(posts).await;
    stack
        .wait_until(
            "500 orders completed",
            "SELECT count(*) = 500 FROM orders WHERE status = 'completed'",
            Duration::from_secs(120),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(game.commands().len(), 500, "each command ran once");
    assert!(
        game.max_concurrent_sessions() <= 2,
        "{}",
        game.max_concurrent_sessions()
    );
    assert_eq!(
        stack
            .count("SELECT count(*) FROM deliveries WHERE status <> 'succeeded'")
            .await,
        0
    );
    assert_eq!(
        stack
            .count("SELECT count(*) FROM delivery_attempts WHERE outcome = 'transient'")
            .await,
        0,
        "no attempt was spent on waiting"
    );
    eprintln!(
        "500 orders on 2 connections: {took:?}, {} logins, {} waits for a slot re-queued",
        game.logins(),
        stack
            .count("SELECT count(*) FROM delivery_attempts WHERE outcome = 'waiting'")
            .await
    );
    for w in &mut workers {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_runs_the_player_list_and_says_what_failed() {
    let (stack, game) = TestStack::with_rcon_product("give {username} vip").await;
    let (status, t) = stack
        .call(Method::POST, "/v1/game-servers/s/test", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(
        (t["ok"].clone(), t["command"].clone()),
        (json!(true), json!("list")),
        "{t}"
    );
    assert!(t["response"].is_string() && t["latency_ms"].is_u64(), "{t}");
    game.set(courier_tests::fakes::rcon::Behaviour {
        refuse_auth: true,
        ..Default::default()
    });
    let (_, t) = stack
        .call(Method::POST, "/v1/game-servers/s/test", None)
        .await;
    assert_eq!(t["ok"], false, "{t}");
    assert!(
        t["error"]
            .as_str()
            .is_some_and(|e| e.contains("rejected the RCON password")),
        "{t}"
    );
    let (status, _) = stack
        .call(Method::POST, "/v1/game-servers/nope/test", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    stack.teardown().await;
}
