//! Admin alerts that reach someone: a failed order is sent to a Discord and a
//! Slack incoming webhook (fake receivers) and e-mailed (fake SMTP), once;
//! the same condition within the cool-down is listed but not sent again;
//! acknowledge and resolve.

use std::time::Duration;

use courier_shared::config::Secret;
use courier_shared::rcon::Dialect;
use courier_tests::fakes::rcon::{Behaviour, FakeGameServer};
use courier_tests::fakes::receiver::FakeReceiver;
use courier_tests::fakes::smtp::FakeSmtp;
use courier_tests::stack::TestStack;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_order_reaches_discord_slack_and_email_once_then_is_acknowledged_and_resolved() {
    let game = FakeGameServer::start("pw", Dialect::Minecraft)
        .await
        .expect("fake server");
    game.set(Behaviour {
        unknown_command: true,
        ..Behaviour::default()
    });
    let discord = FakeReceiver::start_plain().await.expect("discord");
    let slack = FakeReceiver::start_plain().await.expect("slack");
    let smtp = FakeSmtp::start().await.expect("smtp");
    let (d, s, port) = (discord.url.clone(), slack.url.clone(), smtp.port);
    let stack = TestStack::start_with(
        move |c| {
            c.alerts.discord_webhook_url = Some(Secret::new(d));
            c.alerts.slack_webhook_url = Some(Secret::new(s));
            c.alerts.email_to = Some("ops@store.test, owner@store.test".into());
            c.email.enabled = true;
            c.email.send_confirmation = false;
            c.email.smtp_host = "127.0.0.1".into();
            c.email.smtp_port = port;
            c.email.smtp_security = "none".into();
            c.email.from = "Courier <courier@store.test>".into();
        },
        true,
    )
    .await;
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("p", "s", "giv {username} apple")
        .await;
    let (_, order) = stack.post_order("p", "alex", None).await;
    let number = order["order_number"].as_str().expect("number").to_owned();
    stack
        .wait_for_order(order["id"].as_str().expect("id"), "failed", WAIT)
        .await;

    let on_discord = discord.wait_for(WAIT, |r| !r.is_empty()).await;
    let content = on_discord[0].body["content"].as_str().unwrap_or_default();
    assert!(
        content.starts_with("[Courier] order_failed: order ") && content.contains(&number),
        "{content}"
    );
    assert_eq!(
        on_discord[0].body["allowed_mentions"]["parse"],
        serde_json::json!([])
    );
    let on_slack = slack.wait_for(WAIT, |r| !r.is_empty()).await;
    assert!(
        on_slack[0].body["text"]
            .as_str()
            .unwrap_or_default()
            .contains(&number),
        "{:?}",
        on_slack[0].body
    );
    let mails = smtp.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, ["ops@store.test", "owner@store.test"]);
    assert!(
        mails[0]
            .data
            .contains("Subject: [Courier alert] order_failed"),
        "{}",
        mails[0].data
    );

    let (status, page) = stack.call(Method::GET, "/v1/admin/alerts", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let alert = page["alerts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["kind"] == "order_failed"))
        .cloned()
        .expect("the order_failed alert");
    assert!(alert["notified_at"].is_string(), "{alert}");
    let id = alert["id"].as_i64().expect("id");

    // Acknowledged: no longer open. The same condition raised again within
    // the cool-down is listed but not sent.
    let (status, a) = stack
        .call(
            Method::POST,
            &format!("/v1/admin/alerts/{id}/acknowledge"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert!(
        a["acknowledged_by"]
            .as_str()
            .unwrap_or_default()
            .starts_with("api:"),
        "{a}"
    );
    let order_id = order["id"].as_str().unwrap_or_default();
    stack
        .count(&format!(
            "SELECT count(*) FROM (SELECT courier_alert('order_failed', 'again', '{order_id}', '{{}}')) x"
        ))
        .await;
    let (_, open) = stack.call(Method::GET, "/v1/admin/alerts", None).await;
    let again: Vec<&Value> = open["alerts"]
        .as_array()
        .map(|a| a.iter().filter(|a| a["kind"] == "order_failed").collect())
        .unwrap_or_default();
    assert_eq!(again.len(), 1, "{open}");
    assert!(again[0]["notified_at"].is_null(), "cooled down: {open}");
    assert_eq!(
        stack
            .count("SELECT count(*) FROM deliveries WHERE kind = 'alert'")
            .await,
        3,
        "one delivery per channel, once"
    );

    let (status, r) = stack
        .call(
            Method::POST,
            &format!("/v1/admin/alerts/{id}/resolve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert!(r["resolved_at"].is_string());
    let (_, resolved) = stack
        .call(Method::GET, "/v1/admin/alerts?state=resolved", None)
        .await;
    assert!(
        resolved["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["id"] == id)),
        "{resolved}"
    );
    let (status, e) = stack
        .call(Method::GET, "/v1/admin/alerts?state=sideways", None)
        .await;
    assert!(status.is_client_error(), "{e}");
    let (status, _) = stack
        .call(Method::POST, "/v1/admin/alerts/999999/resolve", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    stack.teardown().await;
}
