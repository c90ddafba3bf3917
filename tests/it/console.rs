//! The admin console over HTTP, as a browser would speak to it: sign-in
//! and the session cookie, the CSRF token and the Origin check on every
//! form, the security headers, a read-only key that sees no actions and is
//! refused when it posts anyway, and actions that do what the API does.
//! (The clicks themselves are driven in Chromium by `console_browser`.)

use std::time::Duration;

use courier_tests::fakes::rcon::Behaviour;
use courier_tests::stack::TestStack;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};

const WAIT: Duration = Duration::from_secs(20);

/// A browser-like client: no redirects followed, cookies kept by hand.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(stack: &TestStack) -> Self {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: stack.url(""),
            cookie: None,
        }
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(c) = &self.cookie {
            h.insert("cookie", HeaderValue::from_str(c).expect("cookie"));
        }
        h
    }

    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .headers(self.headers())
            .send()
            .await
            .expect("get");
        let (s, h) = (r.status(), r.headers().clone());
        (s, h, r.text().await.unwrap_or_default())
    }

    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .headers(self.headers())
            .form(form);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.expect("post");
        let (s, h) = (r.status(), r.headers().clone());
        (s, h, r.text().await.unwrap_or_default())
    }

    async fn sign_in(&mut self, key: &str) -> HeaderMap {
        let (status, headers, body) = self
            .post(
                "/admin/login",
                &[("key", key), ("next", "/admin/orders")],
                None,
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let set = headers["set-cookie"].to_str().expect("cookie").to_owned();
        self.cookie = Some(set.split(';').next().expect("pair").to_owned());
        headers
    }
}

/// The CSRF token of the first form on a page.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + page[at..].find('"').expect("end")].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_csrf_headers_and_scopes_guard_every_page_and_action() {
    let (stack, _game) = TestStack::with_rcon_product("give {username} vip").await;
    let (_, order) = stack.post_order("p", "steve", None).await;
    let number = order["order_number"].as_str().expect("number").to_owned();
    stack
        .wait_for_order(order["id"].as_str().expect("id"), "completed", WAIT)
        .await;

    // Signed out: pages send to the sign-in, with the page to come back to.
    let mut admin = Browser::new(&stack);
    let (status, h, _) = admin.get("/admin/orders?status=completed").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        h["location"],
        "/admin/login?next=%2Fadmin%2Forders%3Fstatus%3Dcompleted"
    );
    let (status, h, page) = admin.get("/admin/login").await;
    assert_eq!(status, StatusCode::OK);
    let csp = h["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(
        !page.contains("<script>") && !page.contains(" style="),
        "no inline script or style"
    );
    let (status, _, page) = admin
        .post("/admin/login", &[("key", "ck_wrong_0123456789")], None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("unknown or revoked"), "{page}");
    // A sign-in posted from another site is refused.
    let (status, _, _) = admin
        .post(
            "/admin/login",
            &[("key", &stack.admin_key)],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let h = admin.sign_in(&stack.admin_key).await;
    let cookie = h["set-cookie"].to_str().expect("cookie");
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert_eq!(
        stack
            .count("SELECT count(*) FROM console_sessions WHERE ended_at IS NULL")
            .await,
        1
    );

    // The list finds the order by part of its number; the detail shows the
    // attempt log with what the game server answered.
    let (status, _, page) = admin
        .get(&format!("/admin/orders?q={}", &number[4..10]))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains(&format!("href=\"/admin/orders/{number}\"")),
        "{page}"
    );
    let (_, h, page) = admin.get(&format!("/admin/orders/{number}")).await;
    assert_eq!(h["cache-control"], "no-store");
    assert!(page.contains("give steve vip"), "the command");
    assert!(
        page.contains("Mark as completed") && page.contains("Refund"),
        "admin actions"
    );
    let token = csrf(&page);

    // A note, through the form: with the token it is added; without it, or
    // with another session's token, or from another origin, it is refused.
    let path = format!("/admin/orders/{number}/notes");
    let (status, _, _) = admin.post(&path, &[("body", "no token")], None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = admin
        .post(
            &path,
            &[
                ("csrf", "forged-token-of-the-right-length-0000000"),
                ("body", "forged"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = admin
        .post(
            &path,
            &[("csrf", &token), ("body", "cross-site")],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A file upload carries the token in a header: without it, refused.
    let (status, _, _) = admin
        .post("/admin/products/p/files?name=a.bin", &[("x", "y")], None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = admin
        .post(&path, &[("csrf", &token), ("body", "a\u{0}b")], None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(stack.count("SELECT count(*) FROM order_notes").await, 0);
    let origin = stack.url("");
    let (status, h, _) = admin
        .post(
            &path,
            &[("csrf", &token), ("body", "Customer asked on Discord")],
            Some(origin.trim_end_matches('/')),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], format!("/admin/orders/{number}?done=noted"));
    // Behind a proxy that rewrites Host, the forwarded host is the origin's.
    let resp = admin
        .http
        .post(format!("{}{path}", admin.base))
        .headers(admin.headers())
        .header("origin", "https://courier.example")
        .header("x-forwarded-host", "courier.example")
        .form(&[("csrf", token.as_str()), ("body", "via the proxy")])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, _, page) = admin
        .get(&format!("/admin/orders/{number}?done=noted"))
        .await;
    assert!(
        page.contains("Note added.") && page.contains("Customer asked on Discord"),
        "{page}"
    );
    assert_eq!(
        stack
            .count("SELECT count(*) FROM order_notes WHERE author LIKE 'api:%'")
            .await,
        2
    );

    // A read-only key: it sees the order and no action, and a forged POST
    // with its own valid token is refused by the API's scope check.
    let reader = stack.reader_key().await;
    let mut ro = Browser::new(&stack);
    ro.sign_in(&reader).await;
    let (status, _, page) = ro.get(&format!("/admin/orders/{number}")).await;
    assert_eq!(status, StatusCode::OK);
    for action in [
        "Mark as completed",
        "Refund",
        "Resend email",
        "Add note",
        "Cancel order",
        "Retry",
    ] {
        assert!(!page.contains(action), "a read-only key sees `{action}`");
    }
    let ro_token = csrf(&page);
    let (status, _, body) = ro
        .post(
            &format!("/admin/orders/{number}/complete"),
            &[("csrf", &ro_token)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("lacks the `admin` scope"), "{body}");
    let (_, _, page) = ro.get("/admin/failures").await;
    assert!(page.contains("lacks the `admin` scope"), "{page}");

    // Signing out ends the session; its cookie no longer works.
    let (_, _, page) = admin.get("/admin/orders").await;
    let (status, h, _) = admin
        .post("/admin/logout", &[("csrf", &csrf(&page))], None)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        h["set-cookie"]
            .to_str()
            .expect("cookie")
            .contains("Max-Age=0")
    );
    let (status, _, _) = admin.get("/admin/orders").await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    // Revoking the key ends its sessions at once.
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE name = 'reader'")
        .execute(&stack.pool)
        .await
        .expect("revoke");
    let (status, _, _) = ro.get("/admin/orders").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_is_retried_from_the_failures_page_and_completes() {
    let (stack, game) = TestStack::with_rcon_product("give {username} vip").await;
    // A wrong password is permanent: the delivery is dead at once.
    game.set(Behaviour {
        refuse_auth: true,
        ..Behaviour::default()
    });
    let (_, order) = stack.post_order("p", "steve", None).await;
    let id = order["id"].as_str().expect("id").to_owned();
    stack.wait_for_order(&id, "failed", WAIT).await;

    let mut admin = Browser::new(&stack);
    admin.sign_in(&stack.admin_key).await;
    let (status, _, page) = admin.get("/admin/failures?kind=rcon").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(order["order_number"].as_str().expect("number")),
        "{page}"
    );
    // The dead letter's own retry form: `/admin/failures/<id>/retry`.
    let dl: String = page
        .match_indices("action=\"/admin/failures/")
        .map(|(at, m)| &page[at + m.len()..])
        .find(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect())
        .expect("a retry form of a dead letter");
    game.set(Behaviour::default());
    let (status, h, body) = admin
        .post(
            &format!("/admin/failures/{dl}/retry"),
            &[("csrf", &csrf(&page))],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(h["location"], "/admin/failures?done=retried");
    stack.wait_for_order(&id, "completed", WAIT).await;
    let (_, _, page) = admin.get("/admin/failures?done=retried").await;
    assert!(
        page.contains("Retry queued.") && page.contains("No open dead letters."),
        "{page}"
    );
    stack.teardown().await;
}

/// playwright-core, fetched once from npm into the tools cache.
fn playwright() -> std::path::PathBuf {
    const VERSION: &str = "1.65.1";
    let cache = std::env::var("COURIER_TOOLS_CACHE").map_or_else(
        |_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/courier-tools")
        },
        std::path::PathBuf::from,
    );
    let prefix = cache.join(format!("playwright-core-{VERSION}"));
    let entry = prefix.join("node_modules/playwright-core/index.mjs");
    if !entry.exists() {
        let out = std::process::Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(&prefix)
            .arg(format!("playwright-core@{VERSION}"))
            .output()
            .expect("npm (./dev test installs it)");
        assert!(
            out.status.success(),
            "npm install playwright-core: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    entry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: ./dev test installs Debian's chromium"
    );
    let (stack, game) = TestStack::with_rcon_product("give {username} vip").await;
    let number = |o: &serde_json::Value| o["order_number"].as_str().expect("number").to_owned();
    let id = |o: &serde_json::Value| o["id"].as_str().expect("id").to_owned();

    // An order whose delivery is dead (the server refused the password).
    game.set(Behaviour {
        refuse_auth: true,
        ..Behaviour::default()
    });
    let (_, dead) = stack.post_order("p", "steve", None).await;
    stack.wait_for_order(&id(&dead), "failed", WAIT).await;
    game.set(Behaviour::default());
    // A completed one (to refund), one fulfilled by hand, three that wait.
    let (_, done) = stack.post_order("p", "steve", None).await;
    stack.wait_for_order(&id(&done), "completed", WAIT).await;
    stack.add_product("m", serde_json::json!([])).await;
    let (_, manual) = stack.post_order("m", "steve", None).await;
    let (status, r) = stack
        .call(
            reqwest::Method::PUT,
            "/v1/products/w",
            Some(&serde_json::json!({ "name": "Waits", "auto_process": false,
                "actions": [{ "kind": "rcon", "game_server": "s", "command": "give {username} w" }] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let (_, o) = stack.post_order("w", "steve", None).await;
        waiting.push(number(&o));
    }
    let reader = stack.reader_key().await;
    // The catalog page's products: one sold from stock, one sold as a file.
    stack
        .add_product(
            "k",
            serde_json::json!([{ "kind": "supplier_key", "stock_only": true }]),
        )
        .await;
    stack
        .add_product("book", serde_json::json!([{ "kind": "download" }]))
        .await;

    let shots =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console/flow.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .env("PLAYWRIGHT", format!("file://{}", playwright().display()))
        .env("CHROMIUM", &chromium)
        .env("BASE", stack.url("").trim_end_matches('/'))
        .env("SHOTS", &shots)
        .env("ADMIN_KEY", &stack.admin_key)
        .env("READER_KEY", &reader)
        .env("ORDER_DEAD", number(&dead))
        .env("ORDER_MANUAL", number(&manual))
        .env("ORDER_DONE", number(&done))
        .env("ORDERS_WAITING", waiting.join(","))
        .output()
        .await
        .expect("node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser flow failed:\n{text}");
    assert!(text.contains("all steps passed"), "{text}");
    // What the clicks did, read back from the database.
    stack.wait_for_order(&id(&dead), "completed", WAIT).await;
    let o = stack.order(&id(&done)).await;
    assert_eq!(
        (o["status"].clone(), o["refunded_amount"].clone()),
        (
            serde_json::json!("partially_refunded"),
            serde_json::json!("1.00")
        )
    );
    let o = stack.order(&id(&manual)).await;
    assert_eq!(
        o["items"][0]["delivered_by_hand"]["notes"], "Redeem at store.test/redeem",
        "{o:#}"
    );
    assert_eq!(
        stack.count("SELECT count(*) FROM orders WHERE process_hold IS NULL AND id IN (SELECT order_id FROM order_items WHERE sku = 'w')").await,
        3
    );
    assert_eq!(stack.count("SELECT count(*) FROM key_stock").await, 2);
    assert_eq!(
        stack.count("SELECT count(*) FROM product_files WHERE name = 'manual.pdf' AND content_type = 'application/pdf' AND size_bytes = 23").await,
        1
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_acknowledged_and_resolved_and_reports_draw_their_chart() {
    let (stack, _game) = TestStack::with_rcon_product("give {username} vip").await;
    let (_, order) = stack.post_order("p", "steve", None).await;
    stack
        .wait_for_order(order["id"].as_str().expect("id"), "completed", WAIT)
        .await;
    sqlx::query("SELECT courier_alert('order_failed', 'Order ORD-TEST failed: the server is down', 'console-test', '{}')")
        .execute(&stack.pool)
        .await
        .expect("alert");
    let mut admin = Browser::new(&stack);
    admin.sign_in(&stack.admin_key).await;

    let (status, _, page) = admin.get("/admin/alerts").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("Order ORD-TEST failed: the server is down"),
        "{page}"
    );
    let id: i64 =
        sqlx::query_scalar("SELECT id FROM admin_alerts WHERE message LIKE 'Order ORD-TEST%'")
            .fetch_one(&stack.pool)
            .await
            .expect("id");
    let token = csrf(&page);
    let (status, h, _) = admin
        .post(
            &format!("/admin/alerts/{id}/acknowledge"),
            &[("csrf", &token)],
            None,
        )
        .await;
    assert_eq!(
        (status, h["location"].to_str().expect("to")),
        (StatusCode::SEE_OTHER, "/admin/alerts?done=1")
    );
    let (_, _, page) = admin.get("/admin/alerts?state=acknowledged").await;
    assert!(
        page.contains("acknowledged") && page.contains("by api:bootstrap-admin"),
        "{page}"
    );
    admin
        .post(
            &format!("/admin/alerts/{id}/resolve"),
            &[("csrf", &token)],
            None,
        )
        .await;
    let by: Option<String> =
        sqlx::query_scalar("SELECT resolved_by FROM admin_alerts WHERE id = $1")
            .bind(id)
            .fetch_one(&stack.pool)
            .await
            .expect("row");
    assert_eq!(by.as_deref(), Some("api:bootstrap-admin"));
    let (_, _, page) = admin.get("/admin/alerts").await;
    assert!(page.contains("No alerts here."), "{page}");

    let (status, _, page) = admin.get("/admin/reports?group_by=day").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("<svg") && page.contains("aria-label=\"Revenue and profit in USD\""),
        "{page}"
    );
    assert!(page.contains("10.48"), "the day's revenue: {page}");
    let (status, _, page) = admin.get("/admin/reports?group_by=decade").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_endpoints_show_their_delivery_log_and_send_a_test_event() {
    let receiver = courier_tests::fakes::receiver::FakeReceiver::start_plain()
        .await
        .expect("receiver");
    let (stack, _game) = TestStack::with_rcon_product("give {username} vip").await;
    let (status, created) = stack
        .call(
            reqwest::Method::POST,
            "/v1/webhook-endpoints",
            Some(&serde_json::json!({ "url": receiver.url, "events": ["order.completed"], "description": "CRM" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["endpoint"]["id"].as_str().expect("id").to_owned();
    stack.post_order("p", "steve", None).await;
    receiver.wait_for(WAIT, |r| !r.is_empty()).await;
    stack
        .wait_until(
            "the call recorded",
            "SELECT count(*) = 1 FROM deliveries WHERE kind = 'webhook' AND status = 'succeeded'",
            WAIT,
        )
        .await;

    let mut admin = Browser::new(&stack);
    admin.sign_in(&stack.admin_key).await;
    let (status, _, page) = admin.get("/admin/webhooks").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains(&receiver.url) && page.contains("enabled"),
        "{page}"
    );
    let (status, _, page) = admin.get(&format!("/admin/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("order.completed") && page.contains("<td>200</td>"),
        "{page}"
    );
    let (status, h, _) = admin
        .post(
            &format!("/admin/webhooks/{id}/test"),
            &[("csrf", &csrf(&page))],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], format!("/admin/webhooks/{id}?done=1"));
    let got = receiver
        .wait_for(WAIT, |r| {
            r.iter().any(|m| m.body["event"] == "endpoint.test")
        })
        .await;
    assert!(
        got.iter().any(|m| m.body["event"] == "endpoint.test"),
        "{got:?}"
    );
    stack.teardown().await;
}

/// The text between `start` and the next `end` after it.
fn between<'a>(page: &'a str, start: &str, end: &str) -> &'a str {
    let at = page
        .find(start)
        .unwrap_or_else(|| panic!("`{start}` in {page}"))
        + start.len();
    &page[at..at + page[at..].find(end).expect("end")]
}

/// HTML text back to what was written (maud escapes these).
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The hidden fields of the form posting to `action`.
fn hidden_fields(page: &str, action: &str) -> Vec<(String, String)> {
    let form = between(page, &format!("action=\"{action}\""), "</form>");
    form.match_indices("<input type=\"hidden\" name=\"")
        .map(|(at, m)| {
            let rest = &form[at + m.len()..];
            let name = &rest[..rest.find('"').expect("name end")];
            let value = between(rest, "value=\"", "\"");
            (name.to_owned(), unescape(value))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_endpoints_are_created_changed_rotated_and_deleted_from_the_console() {
    let receiver = courier_tests::fakes::receiver::FakeReceiver::start_plain()
        .await
        .expect("receiver");
    let (stack, _game) = TestStack::with_rcon_product("give {username} vip").await;
    let mut admin = Browser::new(&stack);
    admin.sign_in(&stack.admin_key).await;
    let (status, _, form) = admin.get("/admin/webhooks/edit").await;
    assert_eq!(status, StatusCode::OK, "{form}");
    let token = csrf(&form);

    // A URL the API refuses: the form comes back with what was typed.
    let (status, _, page) = admin
        .post(
            "/admin/webhooks/save",
            &[
                ("csrf", &token),
                ("url", "ftp://crm.example/hook"),
                ("events", "order.completed"),
                ("enabled", "true"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    assert!(page.contains("value=\"ftp://crm.example/hook\""), "{page}");

    let (status, _, page) = admin
        .post(
            "/admin/webhooks/save",
            &[
                ("csrf", &token),
                ("url", &receiver.url),
                ("description", "CRM"),
                ("events", "order.completed"),
                ("events", "order.refunded"),
                ("enabled", "true"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let secret = between(&page, "<code class=\"secret\">", "</code>").to_owned();
    assert!(secret.starts_with("whsec_"), "{page}");
    let (id, stored): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, secret FROM webhook_endpoints WHERE url = $1")
            .bind(&receiver.url)
            .fetch_one(&stack.pool)
            .await
            .expect("endpoint");
    assert_eq!(stored, secret, "the secret shown is the one that signs");
    let (_, e) = stack
        .call(
            reqwest::Method::GET,
            &format!("/v1/webhook-endpoints/{id}"),
            None,
        )
        .await;
    assert_eq!(
        e["events"],
        serde_json::json!(["order.completed", "order.refunded"])
    );
    assert_eq!(e["description"], "CRM");

    // Edit: the form shows what is stored; unticking "enabled" disables it.
    let (status, _, form) = admin.get(&format!("/admin/webhooks/edit?id={id}")).await;
    assert_eq!(status, StatusCode::OK, "{form}");
    assert!(
        form.contains("value=\"order.refunded\" checked")
            && !form.contains("value=\"order.failed\" checked"),
        "{form}"
    );
    let id_s = id.to_string();
    let (status, h, page) = admin
        .post(
            "/admin/webhooks/save",
            &[
                ("csrf", &token),
                ("id", &id_s),
                ("url", &receiver.url),
                ("description", "CRM 2"),
                ("events", "order.failed"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    assert_eq!(h["location"], "/admin/webhooks?done=saved");
    let (_, e) = stack
        .call(
            reqwest::Method::GET,
            &format!("/v1/webhook-endpoints/{id}"),
            None,
        )
        .await;
    assert_eq!(e["events"], serde_json::json!(["order.failed"]));
    assert_eq!(e["enabled"], false);
    assert_eq!(e["description"], "CRM 2");

    // Rotate with no overlap: a new secret, the old one gone at once.
    let (status, _, page) = admin
        .post(
            &format!("/admin/webhooks/{id}/rotate"),
            &[("csrf", &token), ("overlap_hours", "0")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let rotated = between(&page, "<code class=\"secret\">", "</code>").to_owned();
    assert!(rotated.starts_with("whsec_") && rotated != secret, "{page}");
    let stored: String = sqlx::query_scalar("SELECT secret FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .fetch_one(&stack.pool)
        .await
        .expect("secret");
    assert_eq!(stored, rotated);

    // A read-only key cannot open the form or delete.
    let mut ro = Browser::new(&stack);
    ro.sign_in(&stack.reader_key().await).await;
    let (status, _, _) = ro.get("/admin/webhooks/edit").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, _, ro_page) = ro.get("/admin/orders").await;
    let (status, _, _) = ro
        .post(
            &format!("/admin/webhooks/{id}/delete"),
            &[("csrf", &csrf(&ro_page))],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, h, _) = admin
        .post(
            &format!("/admin/webhooks/{id}/delete"),
            &[("csrf", &token)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/admin/webhooks?done=deleted");
    let (status, _) = stack
        .call(
            reqwest::Method::GET,
            &format!("/v1/webhook-endpoints/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An id that is not one: the console's own error page, not plain text.
    let (status, h, page) = admin
        .post(
            "/admin/webhooks/not-an-id/delete",
            &[("csrf", &token)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(
        h["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/html"),
        "{page}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_and_game_servers_are_edited_from_the_console() {
    let (stack, game) = TestStack::with_rcon_product("give {username} vip").await;
    let mut admin = Browser::new(&stack);
    admin.sign_in(&stack.admin_key).await;
    let (_, before) = stack.call(reqwest::Method::GET, "/v1/products", None).await;

    let (status, _, form) = admin.get("/admin/products/edit?sku=p").await;
    assert_eq!(status, StatusCode::OK, "{form}");
    let token = csrf(&form);
    let actions = unescape(between(
        &form,
        "name=\"actions\" rows=\"14\" spellcheck=\"false\">",
        "</textarea>",
    ));
    assert!(actions.contains("\"game_server\": \"s\""), "{actions}");

    // Saved unchanged but for the name: the actions are what they were.
    let (status, h, page) = admin
        .post(
            "/admin/products/save",
            &[
                ("csrf", &token),
                ("sku", "p"),
                ("existing", "1"),
                ("name", "VIP rank"),
                ("auto_process", ""),
                ("process_delay_secs", ""),
                ("actions", &actions),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    assert_eq!(h["location"], "/admin/products?done=saved");
    let (_, after) = stack.call(reqwest::Method::GET, "/v1/products", None).await;
    assert_eq!(after[0]["name"], "VIP rank");
    let config = |v: &serde_json::Value| {
        let mut a = v[0]["actions"][0].clone();
        a.as_object_mut().expect("action").remove("id");
        a
    };
    assert_eq!(config(&after), config(&before), "{after}");

    // Actions that are not JSON: refused, and the form keeps the text.
    let (status, _, page) = admin
        .post(
            "/admin/products/save",
            &[
                ("csrf", &token),
                ("sku", "p"),
                ("existing", "1"),
                ("name", "VIP rank"),
                ("actions", "[{\"kind\": rcon}"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    assert!(
        page.contains("[{&quot;kind&quot;: rcon}") && page.contains("actions"),
        "{page}"
    );
    // A "new" product with a SKU that exists would replace it: refused.
    let (status, _, page) = admin
        .post(
            "/admin/products/save",
            &[
                ("csrf", &token),
                ("sku", "p"),
                ("name", "Other"),
                ("actions", "[]"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{page}");
    // A new hand-fulfilled product.
    let (status, _, page) = admin
        .post(
            "/admin/products/save",
            &[
                ("csrf", &token),
                ("sku", "tshirt"),
                ("name", "T-shirt"),
                ("auto_process", "false"),
                ("actions", "[]"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    let (_, list) = stack.call(reqwest::Method::GET, "/v1/products", None).await;
    let shirt = list
        .as_array()
        .expect("list")
        .iter()
        .find(|p| p["sku"] == "tshirt")
        .expect("tshirt")
        .clone();
    assert_eq!(shirt["auto_process"], false);

    // The game server: an empty password keeps the stored one.
    let (status, _, form) = admin.get("/admin/game-servers/edit?name=s").await;
    assert_eq!(status, StatusCode::OK, "{form}");
    assert!(
        form.contains("placeholder=\"unchanged\"") && !form.contains("value=\"pw\""),
        "{form}"
    );
    let port = game.addr.port().to_string();
    let (status, h, page) = admin
        .post(
            "/admin/game-servers/save",
            &[
                ("csrf", &token),
                ("name", "s"),
                ("existing", "1"),
                ("host", "127.0.0.1"),
                ("port", &port),
                ("password", ""),
                ("dialect", "minecraft"),
                ("max_connections", "3"),
                ("framing", "auto"),
                ("quiet_ms", "300"),
                ("error_patterns", "Unknown item\n\n"),
                ("online_command", ""),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    assert!(
        h["location"]
            .to_str()
            .expect("location")
            .starts_with("/admin/products?done=server")
    );
    let (password, quiet, patterns): (String, i32, Vec<String>) = sqlx::query_as(
        "SELECT password, quiet_ms, error_patterns FROM game_servers WHERE name = 's'",
    )
    .fetch_one(&stack.pool)
    .await
    .expect("server");
    assert_eq!((password.as_str(), quiet), ("pw", 300));
    assert_eq!(patterns, vec!["Unknown item".to_owned()]);
    let (_, order) = stack.post_order("p", "steve", None).await;
    stack
        .wait_for_order(order["id"].as_str().expect("id"), "completed", WAIT)
        .await;
    // A new game server needs its password.
    let (status, _, page) = admin
        .post(
            "/admin/game-servers/save",
            &[
                ("csrf", &token),
                ("name", "s2"),
                ("host", "127.0.0.1"),
                ("port", &port),
                ("dialect", "minecraft"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    assert!(
        page.contains("password") && page.contains("value=\"s2\""),
        "{page}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_retry_counts_first_export_takes_the_selection_and_waiting_is_listed() {
    let (stack, game) = TestStack::with_rcon_product("give {username} vip").await;
    game.set(Behaviour {
        refuse_auth: true,
        ..Behaviour::default()
    });
    let mut orders = Vec::new();
    for name in ["alex", "steve", "sam"] {
        let (_, o) = stack.post_order("p", name, None).await;
        stack
            .wait_for_order(o["id"].as_str().expect("id"), "failed", WAIT)
            .await;
        orders.push(o);
    }
    let mut admin = Browser::new(&stack);
    admin.sign_in(&stack.admin_key).await;
    let (status, _, confirm) = admin.get("/admin/failures/retry?kind=rcon").await;
    assert_eq!(status, StatusCode::OK, "{confirm}");
    assert!(
        confirm.contains("<strong>3</strong> open dead letters match"),
        "{confirm}"
    );
    // One more dies after the count: the confirmed retry leaves it alone.
    let (_, late) = stack.post_order("p", "kim", None).await;
    stack
        .wait_for_order(late["id"].as_str().expect("id"), "failed", WAIT)
        .await;
    game.set(Behaviour::default());
    let mut form = hidden_fields(&confirm, "/admin/failures/retry");
    assert!(
        form.iter().any(|(k, v)| k == "kind" && v == "rcon"),
        "{form:?}"
    );
    form.retain(|(k, _)| k != "csrf");
    let token = csrf(&confirm);
    let mut fields: Vec<(&str, &str)> =
        form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    fields.push(("csrf", &token));
    let (status, _, page) = admin.post("/admin/failures/retry", &fields, None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("3 of 3 re-queued."), "{page}");
    for o in &orders {
        stack
            .wait_for_order(o["id"].as_str().expect("id"), "completed", WAIT)
            .await;
    }
    let late_status = stack.order(late["id"].as_str().expect("id")).await;
    assert_eq!(late_status["status"], "failed", "not counted, not retried");

    // Export of a ticked selection: those orders, no others.
    let (_, _, list) = admin.get("/admin/orders").await;
    let (a, b) = (
        orders[0]["id"].as_str().expect("id"),
        orders[2]["id"].as_str().expect("id"),
    );
    let resp = admin
        .http
        .post(format!("{}/admin/orders/export", admin.base))
        .headers(admin.headers())
        .form(&[
            ("csrf", csrf(&list).as_str()),
            ("ids", a),
            ("ids", b),
            ("format", "csv"),
        ])
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), StatusCode::OK);
    let csv = resp.text().await.expect("csv");
    let number = |o: &serde_json::Value| o["order_number"].as_str().expect("number").to_owned();
    assert!(
        csv.contains(&number(&orders[0])) && csv.contains(&number(&orders[2])),
        "{csv}"
    );
    assert!(
        !csv.contains(&number(&orders[1])) && !csv.contains(&number(&late)),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 3, "a header and two rows: {csv}");

    // A delivery waiting for its player is listed with why.
    let online = courier_tests::fakes::rcon::FakeGameServer::start(
        "pw",
        courier_shared::rcon::Dialect::Minecraft,
    )
    .await
    .expect("fake server");
    online.set(Behaviour {
        players: Some(vec!["someone".into()]),
        ..Behaviour::default()
    });
    stack.add_game_server("w", &online).await;
    stack
        .add_product("wp", serde_json::json!([{ "kind": "rcon", "game_server": "w", "command": "give {username} cake", "require_online": true }]))
        .await;
    let (_, waits) = stack.post_order("wp", "Alex", None).await;
    stack
        .wait_until(
            "the delivery waits",
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE status = 'waiting')",
            WAIT,
        )
        .await;
    let (_, w) = stack
        .call(reqwest::Method::GET, "/v1/admin/waiting", None)
        .await;
    assert_eq!(
        w["waiting"][0]["order_number"], waits["order_number"],
        "{w}"
    );
    assert!(w["waiting"][0]["next_check_at"].is_string(), "{w}");
    let (_, _, page) = admin.get("/admin/failures").await;
    let table = between(&page, "Waiting deliveries", "Held deliveries");
    assert!(
        table.contains(waits["order_number"].as_str().expect("number")),
        "{table}"
    );
    assert!(!table.contains("Nothing is waiting."), "{table}");
    stack.teardown().await;
}
