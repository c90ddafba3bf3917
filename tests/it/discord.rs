//! Discord roles against the fake Discord API.

use std::collections::HashSet;
use std::time::Duration;

use courier_tests::fakes::discord::{DiscordBehaviour, FakeDiscord};
use courier_tests::stack::TestStack;
use reqwest::Method;
use serde_json::{Value, json};

async fn stack_with(discord: &FakeDiscord, workers: usize) -> TestStack {
    let base = discord.base.clone();
    let mut stack = TestStack::start_with(|s| s.discord.api_base = base, workers > 0).await;
    for n in 1..workers {
        // Another replica in the same test: its own Limits, the same Redis.
        let mut settings = stack.settings.clone();
        settings.worker.id = Some(format!("replica-{n}"));
        let extra = courier_worker::startup::start(&settings)
            .await
            .expect("second worker");
        stack.extra_workers.push(extra);
    }
    stack
        .add_product(
            "vip",
            json!([{ "kind": "discord_role", "guild_id": "111", "role_id": "222" }]),
        )
        .await;
    stack
}

async fn order(stack: &TestStack, user: &str) -> String {
    let body = json!({
        "currency": "EUR", "discord_user_id": user,
        "items": [{ "product": "vip", "quantity": 1, "unit_price": "5.00" }],
    });
    let (status, o) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert!(status.is_success(), "{o}");
    o["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_is_assigned_with_the_bot_token() {
    let discord = FakeDiscord::start().await.expect("fake discord");
    let stack = stack_with(&discord, 1).await;
    let id = order(&stack, "333").await;
    let done = stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;
    let calls = discord.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "PUT");
    assert_eq!(calls[0].path, "/guilds/111/members/333/roles/222");
    assert_eq!(calls[0].authorization, "Bot test-bot-token");
    assert_eq!(done["deliveries"][0]["kind"], "discord_role");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_every_replica_until_the_window_ends() {
    let discord = FakeDiscord::start().await.expect("fake discord");
    discord.set(DiscordBehaviour {
        rate_limit_next: 1,
        retry_after: 1.5,
        ..DiscordBehaviour::default()
    });
    let stack = stack_with(&discord, 2).await;
    let first = order(&stack, "1000").await;
    // Once Discord has said 429, more orders arrive for both replicas.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while discord.calls().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call reached the fake"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ids = vec![first];
    for u in 1001..1009 {
        ids.push(order(&stack, &u.to_string()).await);
    }
    for id in &ids {
        stack
            .wait_for_order(id, "completed", Duration::from_secs(30))
            .await;
    }
    assert_eq!(
        discord.requests_during_window(),
        0,
        "no replica sent a request inside the 429 window"
    );
    let workers: HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT DISTINCT worker FROM delivery_attempts")
            .fetch_all(&stack.pool)
            .await
            .expect("workers")
            .into_iter()
            .collect();
    assert_eq!(workers.len(), 2, "both replicas took part: {workers:?}");
    let calls = discord.calls();
    let first_ok = calls
        .iter()
        .filter(|c| c.status == 204)
        .map(|c| c.at)
        .min()
        .expect("a success");
    let limited = calls.iter().find(|c| c.status == 429).expect("the 429").at;
    assert!(
        first_ok.duration_since(limited) >= Duration::from_millis(1400),
        "waited out retry_after"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_discord_errors_are_dead_with_their_code() {
    let discord = FakeDiscord::start().await.expect("fake discord");
    let stack = stack_with(&discord, 1).await;
    stack
        .add_product(
            "mod",
            json!([{ "kind": "discord_role", "guild_id": "111", "role_id": "999" }]),
        )
        .await;
    stack
        .add_product(
            "ghost",
            json!([{ "kind": "discord_role", "guild_id": "111", "role_id": "404" }]),
        )
        .await;
    discord.set(DiscordBehaviour {
        forbidden_roles: HashSet::from(["999".to_owned()]),
        unknown_roles: HashSet::from(["404".to_owned()]),
        ..DiscordBehaviour::default()
    });
    for (sku, code) in [("mod", "50013"), ("ghost", "10011")] {
        let body = json!({ "currency": "EUR", "discord_user_id": "5",
            "items": [{ "product": sku, "quantity": 1, "unit_price": "1.00" }] });
        let (_, o) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
        let failed = stack
            .wait_for_order(
                o["id"].as_str().expect("id"),
                "failed",
                Duration::from_secs(20),
            )
            .await;
        let reason = failed["deliveries"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(reason.contains(code), "{reason}");
        assert_eq!(
            failed["deliveries"][0]["attempts"], 1,
            "no retries for {code}"
        );
    }
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_member_waits_until_they_join() {
    let discord = FakeDiscord::start().await.expect("fake discord");
    discord.set(DiscordBehaviour {
        members: Some(HashSet::new()),
        ..DiscordBehaviour::default()
    });
    let stack = stack_with(&discord, 1).await;
    let id = order(&stack, "777").await;
    stack
        .wait_until(
            "waiting",
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE status = 'waiting' AND attempts >= 2)",
            Duration::from_secs(20),
        )
        .await;
    let o = stack.order(&id).await;
    assert!(
        o["deliveries"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("10007"),
        "{o}"
    );
    discord.update(|b| b.members = Some(HashSet::from(["777".to_owned()])));
    stack
        .wait_for_order(&id, "completed", Duration::from_secs(20))
        .await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_stops_further_calls() {
    let discord = FakeDiscord::start().await.expect("fake discord");
    discord.set(DiscordBehaviour {
        unauthorized: true,
        ..DiscordBehaviour::default()
    });
    let stack = stack_with(&discord, 1).await;
    let a = order(&stack, "1").await;
    stack
        .wait_for_order(&a, "failed", Duration::from_secs(20))
        .await;
    let b = order(&stack, "2").await;
    let failed: Value = stack
        .wait_for_order(&b, "failed", Duration::from_secs(20))
        .await;
    assert!(
        failed["deliveries"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("401")
    );
    assert_eq!(
        discord.calls().len(),
        1,
        "after a 401 the bot stops calling Discord"
    );
    stack.teardown().await;
}
