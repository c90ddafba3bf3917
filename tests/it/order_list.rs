//! `GET /v1/orders` and staff notes: every filter and sort against the same
//! question asked of Postgres directly, partial search, keyset pages under
//! inserts, refusals that name the parameter, and notes with their history.

use std::collections::HashSet;

use courier_tests::stack::{TestStack, sample_order};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Posts an order of `[sku, name, email, username, price, currency, gateway]`;
/// returns (id, number).
async fn order(stack: &TestStack, spec: [&str; 7]) -> (String, String) {
    let [sku, name, email, username, price, currency, gateway] = spec;
    let mut body = sample_order(sku, username);
    body["customer"] = json!({ "name": name, "email": email });
    body["items"][0]["unit_price"] = json!(price);
    body["currency"] = json!(currency);
    body["gateway"] = json!(gateway);
    body["transaction_id"] = json!(format!("tx_{}", uuid::Uuid::new_v4().simple()));
    let (status, o) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{o}");
    (
        o["id"].as_str().expect("id").to_owned(),
        o["order_number"].as_str().expect("number").to_owned(),
    )
}

async fn ids(stack: &TestStack, query: &str) -> Vec<String> {
    let (status, page) = stack
        .call(Method::GET, &format!("/v1/orders?limit=500&{query}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{query}: {page}");
    page["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn expected(stack: &TestStack, sql: &str) -> Vec<String> {
    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
        "SELECT id::text FROM orders o {sql}"
    )))
    .fetch_all(&stack.pool)
    .await
    .expect("expected ids")
}

/// 24 orders across two products, three customers, two currencies and gateways.
async fn seed(stack: &TestStack) -> Vec<(String, String)> {
    let game = courier_tests::fakes::rcon::FakeGameServer::start(
        "pw",
        courier_shared::rcon::Dialect::Minecraft,
    )
    .await
    .expect("fake");
    stack.add_game_server("survival", &game).await;
    stack.add_game_server("creative", &game).await;
    stack
        .add_rcon_product("vip", "survival", "give {username} vip")
        .await;
    stack
        .add_rcon_product("kit", "creative", "give {username} kit")
        .await;
    let people = [
        ("Zoë Ångström", "zoe@example.org", "ZoeMC"),
        ("Bob O'Brien", "bob@shop.test", "bobby"),
        ("Chloé, Dupont", "chloe@example.org", "chl0e"),
    ];
    let mut made = Vec::new();
    for n in 0..24 {
        let (name, email, user) = people[n % 3];
        let sku = if n % 2 == 0 { "vip" } else { "kit" };
        let price = format!("{}.{:02}", 1 + n % 7, (n * 13) % 100);
        let currency = if n % 4 == 0 { "EUR" } else { "USD" };
        let gateway = if n % 5 == 0 { "paypal" } else { "stripe" };
        made.push(order(stack, [sku, name, email, user, &price, currency, gateway]).await);
    }
    // Spread the creation times and set a few statuses as life would.
    sqlx::query(
        "UPDATE orders SET created_at = now() - (row_number * interval '1 hour') \
         FROM (SELECT id AS oid, row_number() OVER (ORDER BY id) FROM orders) r WHERE orders.id = r.oid",
    )
    .execute(&stack.pool)
    .await
    .expect("spread");
    sqlx::query(
        "UPDATE orders SET status = 'failed' WHERE id IN (SELECT id FROM orders ORDER BY id LIMIT 3)",
    )
    .execute(&stack.pool)
    .await
    .expect("failed");
    sqlx::query(
        "UPDATE deliveries SET status = 'dead' WHERE order_id IN \
         (SELECT id FROM orders WHERE status = 'failed' ORDER BY id LIMIT 2)",
    )
    .execute(&stack.pool)
    .await
    .expect("dead");
    sqlx::query(
        "UPDATE orders SET payment_status = 'refunded' WHERE id IN \
         (SELECT id FROM orders ORDER BY id DESC LIMIT 2)",
    )
    .execute(&stack.pool)
    .await
    .expect("refunded");
    made
}

#[tokio::test]
async fn every_filter_and_sort_answers_what_postgres_says() {
    let stack = TestStack::start_with(|_| {}, false).await;
    let made = seed(&stack).await;

    // Sorts, both directions, against the same ORDER BY in SQL.
    for (sort, column) in [
        ("created", "created_at"),
        ("total", "total"),
        ("order_number", "order_number"),
        ("payment_status", "payment_status"),
        ("status", "status"),
    ] {
        for dir in ["asc", "desc"] {
            assert_eq!(
                ids(&stack, &format!("sort={sort}&order={dir}")).await,
                expected(&stack, &format!("ORDER BY {column} {dir}, id {dir}")).await,
                "sort={sort}&order={dir}"
            );
        }
    }
    let by = |w: &str| format!("WHERE {w} ORDER BY created_at DESC, id DESC");
    let cases = [
        ("status=failed", by("status = 'failed'")),
        (
            "status=failed,processing,pending",
            by("status IN ('failed', 'processing', 'pending')"),
        ),
        ("payment_status=refunded", by("payment_status = 'refunded'")),
        ("gateway=paypal", by("gateway = 'paypal'")),
        ("currency=eur", by("currency = 'EUR'")),
        (
            "min_total=5&max_total=9.5",
            by("total >= 5 AND total <= 9.5"),
        ),
        (
            "sku=kit",
            by("id IN (SELECT order_id FROM order_items WHERE sku = 'kit')"),
        ),
        (
            "game_server=survival",
            by("id IN (SELECT order_id FROM order_items WHERE sku = 'vip')"),
        ),
        (
            "has=failures",
            by("id IN (SELECT order_id FROM deliveries WHERE status = 'dead')"),
        ),
        ("has=held", by("false")),
        ("q=zoemc", by("game_username = 'ZoeMC'")),
        ("q=EXAMPLE.ORG", by("customer_email LIKE '%example.org'")),
        ("q=Ångström", by("customer_name = 'Zoë Ångström'")),
        ("q=O'Bri", by("customer_name = 'Bob O''Brien'")),
        (
            "q=vip",
            by("id IN (SELECT order_id FROM order_items WHERE sku = 'vip')"),
        ),
        ("q=100%25", by("false")),
    ];
    for (query, sql) in &cases {
        assert_eq!(
            ids(&stack, query).await,
            expected(&stack, sql).await,
            "{query}"
        );
    }
    // A search whose page fills within the walked window, and one paged
    // through with cursors (each page found either way gives the same rows).
    let all = expected(&stack, &by("customer_email LIKE '%example.org'")).await;
    let (_, page) = stack
        .call(Method::GET, "/v1/orders?q=example.org&limit=3", None)
        .await;
    let first: Vec<String> = page["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(first, all[..3].to_vec());
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = stack
            .call(
                Method::GET,
                &format!("/v1/orders?q=example.org&limit=4{cursor}"),
                None,
            )
            .await;
        for o in page["orders"].as_array().expect("orders") {
            paged.push(o["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, all);
    // Dates: the newest 5 hours.
    let from = (chrono::Utc::now() - chrono::Duration::minutes(5 * 60 + 30)).to_rfc3339();
    let q = format!("created_from={}", urlencode(&from));
    assert_eq!(ids(&stack, &q).await.len(), 5, "{q}");
    // Partial order numbers, in either case.
    let number = &made[7].1;
    let part = &number[..8];
    let found = ids(&stack, &format!("q={}", part.to_lowercase())).await;
    assert!(found.contains(&made[7].0), "{part}");
    assert_eq!(
        ids(&stack, &format!("q={number}")).await,
        vec![made[7].0.clone()]
    );

    // A row carries what the dashboard shows.
    let (_, page) = stack
        .call(Method::GET, "/v1/orders?has=failures&limit=1", None)
        .await;
    let row = &page["orders"][0];
    for field in [
        "order_number",
        "created_at",
        "customer_name",
        "customer_email",
        "total",
        "currency",
        "status",
        "payment_status",
        "gateway",
    ] {
        assert!(!row[field].is_null(), "{field}: {row}");
    }
    assert_eq!(row["item_count"], 1);
    assert_eq!(row["deliveries"]["dead"], 1, "{row}");
    stack.teardown().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn pages_neither_skip_nor_repeat_while_orders_arrive() {
    let stack = TestStack::start_with(|_| {}, false).await;
    let made = seed(&stack).await;
    let all: Vec<String> = ids(&stack, "sort=created").await;
    for sort in ["created", "total", "status"] {
        let everything = ids(&stack, &format!("sort={sort}")).await;
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                None => format!("/v1/orders?sort={sort}&limit=5"),
                Some(c) => format!("/v1/orders?sort={sort}&limit=5&cursor={c}"),
            };
            let (status, page) = stack.call(Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            for o in page["orders"].as_array().expect("orders") {
                seen.push(o["id"].as_str().expect("id").to_owned());
            }
            pages += 1;
            if pages == 2 {
                // New orders arrive while paging: they sort first (newest),
                // or anywhere by total, and must not shift what follows.
                order(
                    &stack,
                    [
                        "vip",
                        "Late",
                        "late@x.test",
                        "late",
                        "0.01",
                        "USD",
                        "stripe",
                    ],
                )
                .await;
                order(
                    &stack,
                    [
                        "kit",
                        "Later",
                        "later@x.test",
                        "later",
                        "99.00",
                        "USD",
                        "stripe",
                    ],
                )
                .await;
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "sort={sort}: no order twice");
        for id in &everything {
            assert!(seen.contains(id), "sort={sort}: {id} was skipped");
        }
        if sort == "created" {
            assert_eq!(seen[..all.len()], all[..], "newest first, in order");
        }
    }
    assert_eq!(made.len(), 24);
    stack.teardown().await;
}

#[tokio::test]
async fn bad_list_parameters_are_refused_by_name_and_readers_may_list() {
    let stack = TestStack::start_with(|_| {}, false).await;
    seed(&stack).await;
    for (query, field) in [
        ("status=shipped", "status"),
        ("payment_status=maybe", "payment_status"),
        ("has=problems", "has"),
        ("q=ab", "q"),
        ("q=%40%40%40", "q"),
        ("q=a-b-c", "q"),
        ("created_from=-05000-01-01T00:00:00Z", "created_from"),
        ("sort=customer", "sort"),
        ("order=up", "order"),
        ("currency=euro", "currency"),
        ("min_total=5&max_total=1", "max_total"),
        ("game_server=nowhere", "game_server"),
        ("limit=501", "limit"),
        ("cursor=bm9wZQ", "cursor"),
    ] {
        let (status, body) = stack
            .call(Method::GET, &format!("/v1/orders?{query}"), None)
            .await;
        assert!(status.is_client_error(), "{query}: {status} {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    // A forged cursor whose key is not of its sort's type is a 400, not a
    // database error.
    use base64::Engine;
    for forged in [
        format!("created|desc|{}|not a time", uuid::Uuid::nil()),
        format!("total|desc|{}|1e999999", uuid::Uuid::nil()),
        format!("status|desc|{}|a\u{0}b", uuid::Uuid::nil()),
    ] {
        let c = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&forged);
        let sort = forged.split('|').next().expect("sort");
        let (status, body) = stack
            .call(
                Method::GET,
                &format!("/v1/orders?sort={sort}&cursor={c}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{forged}: {body}");
        assert_eq!(body["error"]["field"], "cursor", "{forged}: {body}");
    }
    // A cursor of one sort is refused by another.
    let (_, page) = stack
        .call(Method::GET, "/v1/orders?sort=total&limit=2", None)
        .await;
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
    let (status, body) = stack
        .call(
            Method::GET,
            &format!("/v1/orders?sort=created&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let reader = "ck_test_reader_list_0123456789";
    courier_shared::db::api_keys::insert(&stack.pool, "reader", reader, &["orders:read".into()])
        .await
        .expect("key");
    let writer = "ck_test_writer_list_0123456789";
    courier_shared::db::api_keys::insert(&stack.pool, "writer", writer, &["orders:write".into()])
        .await
        .expect("key");
    let (status, _) = stack
        .call_as(reader, Method::GET, "/v1/orders", None, &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = stack
        .call_as(writer, Method::GET, "/v1/orders", None, &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    stack.teardown().await;
}

#[tokio::test]
async fn notes_are_added_edited_with_history_and_deleted_by_staff_only() {
    let stack = TestStack::start_with(|_| {}, false).await;
    let made = seed(&stack).await;
    let (_, number) = &made[0];
    let path = format!("/v1/orders/{number}/notes");
    let (status, note) = stack
        .call(
            Method::POST,
            &path,
            Some(&json!({ "body": "Customer asked for a resend, =cmd|' /C calc'!A0" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{note}");
    let id = note["id"].as_i64().expect("id");
    assert_eq!(note["author"], "api:bootstrap-admin");
    let (status, edited) = stack
        .call(
            Method::PATCH,
            &format!("{path}/{id}"),
            Some(&json!({ "body": "Resent on Monday" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["body"], "Resent on Monday");
    assert_eq!(edited["revisions"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        edited["revisions"][0]["body"],
        "Customer asked for a resend, =cmd|' /C calc'!A0"
    );
    let (_, second) = stack
        .call(Method::POST, &path, Some(&json!({ "body": "Second" })))
        .await;
    let (_, list) = stack.call(Method::GET, &path, None).await;
    assert_eq!(list["notes"].as_array().map(Vec::len), Some(2), "{list}");
    let (status, _) = stack
        .call(Method::DELETE, &format!("{path}/{}", second["id"]), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = stack.call(Method::GET, &path, None).await;
    assert_eq!(list["notes"].as_array().map(Vec::len), Some(1), "{list}");
    let (status, _) = stack
        .call(Method::DELETE, &format!("{path}/{}", second["id"]), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Kept for the record, with who deleted it.
    assert_eq!(
        stack
            .count("SELECT count(*) FROM order_notes WHERE deleted_by = 'api:bootstrap-admin'")
            .await,
        1
    );
    // Empty or too long, another order's note: refused.
    let (status, body) = stack
        .call(Method::POST, &path, Some(&json!({ "body": "  " })))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "body");
    let other = format!("/v1/orders/{}/notes/{id}", made[1].1);
    let (status, _) = stack
        .call(Method::PATCH, &other, Some(&json!({ "body": "x" })))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // In the order's detail for staff; not in what API clients read, and
    // not for readers.
    let detail = format!("/v1/orders/{number}?expand=full");
    let (_, view) = stack.call(Method::GET, &detail, None).await;
    assert!(
        view["notes"].to_string().contains("Resent on Monday"),
        "{view}"
    );
    let reader = "ck_test_reader_notes_0123456789";
    courier_shared::db::api_keys::insert(&stack.pool, "reader", reader, &["orders:read".into()])
        .await
        .expect("key");
    let (_, view) = stack.call_as(reader, Method::GET, &detail, None, &[]).await;
    assert!(view.get("status").is_some(), "{view}");
    assert!(!view.to_string().contains("Resent on Monday"), "{view}");
    let (status, _) = stack.call_as(reader, Method::GET, &path, None, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let _ = Value::Null;
    stack.teardown().await;
}
