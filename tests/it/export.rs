//! `GET /v1/orders/export`: a few hundred orders with awkward names round
//! trip through CSV (the `csv` crate) and XLSX (`calamine`, an independent
//! reader): every order once, in the list's order, formula-like cells
//! neutralised, money as numbers with the currency's decimals, dates as
//! dates, and the cost columns only for admins.

use std::io::Cursor;

use calamine::{Data, Reader, Xlsx};
use courier_tests::stack::{TestStack, sample_order};
use reqwest::{Method, StatusCode};
use serde_json::json;

const NAMES: &[&str] = &[
    "Zoë Ångström",
    "Bob \"The Builder\", Jr.",
    "=cmd|' /C calc'!A0",
    "+SUM(1,2)",
    "@import",
    "-42",
    "李小龍",
];

async fn seed(stack: &TestStack, n: usize) {
    let game = courier_tests::fakes::rcon::FakeGameServer::start(
        "pw",
        courier_shared::rcon::Dialect::Minecraft,
    )
    .await
    .expect("fake");
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("vip", "s", "give {username} vip")
        .await;
    for i in 0..n {
        let mut body = sample_order("vip", &format!("player{i}"));
        body["customer"] =
            json!({ "name": NAMES[i % NAMES.len()], "email": format!("c{i}@example.org") });
        body["currency"] = json!(if i % 3 == 0 { "JPY" } else { "EUR" });
        body["items"][0]["unit_price"] = json!(if i % 3 == 0 { "500" } else { "4.99" });
        body["tax"] = json!("0");
        let (status, o) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
        assert_eq!(status, StatusCode::CREATED, "{o}");
    }
}

async fn get(stack: &TestStack, key: &str, query: &str) -> (StatusCode, String, Vec<u8>) {
    let r = stack
        .http
        .get(stack.url(&format!("/v1/orders/export?{query}")))
        .bearer_auth(key)
        .send()
        .await
        .expect("export");
    let status = r.status();
    let kind = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, kind, r.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn csv_and_xlsx_exports_round_trip_every_order() {
    let stack = TestStack::start_with(|_| {}, false).await;
    // Enough that the CSV leaves in more than one 64 KiB chunk.
    let n = 480;
    seed(&stack, n).await;
    let expected: Vec<String> =
        sqlx::query_scalar("SELECT order_number FROM orders ORDER BY created_at DESC, id DESC")
            .fetch_all(&stack.pool)
            .await
            .expect("numbers");

    // CSV, as an admin: the cost columns are there.
    let (status, kind, body) = get(&stack, &stack.admin_key, "format=csv").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/csv"), "{kind}");
    let mut reader = csv::Reader::from_reader(body.as_slice());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header.last().map(String::as_str), Some("profit"));
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
    assert_eq!(rows.len(), n);
    let numbers: Vec<String> = rows.iter().map(|r| r[0].to_owned()).collect();
    assert_eq!(numbers, expected, "every order once, in the list's order");
    let names: Vec<&str> = rows.iter().map(|r| r.get(2).expect("name")).collect();
    for name in NAMES {
        let shown = if name.starts_with(['=', '+', '-', '@']) {
            format!("'{name}")
        } else {
            (*name).to_owned()
        };
        assert!(names.contains(&shown.as_str()), "{name:?} as {shown:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with('=')), "no live formula");
    let jpy = rows.iter().find(|r| &r[10] == "JPY").expect("a JPY order");
    assert_eq!(&jpy[9], "1000");
    assert_eq!(&jpy[11], "Product vip × 2");

    // A reader sees no money columns; filters apply.
    let reader_key = "ck_test_reader_export_0123456789";
    courier_shared::db::api_keys::insert(
        &stack.pool,
        "reader",
        reader_key,
        &["orders:read".into()],
    )
    .await
    .expect("key");
    let (status, _, body) = get(&stack, reader_key, "format=csv&currency=JPY").await;
    assert_eq!(status, StatusCode::OK);
    let mut reader = csv::Reader::from_reader(body.as_slice());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    assert!(
        !header.iter().any(|h| h == "cost" || h == "profit"),
        "{header:?}"
    );
    assert_eq!(reader.records().count(), n / 3);

    // XLSX, read back by calamine.
    let (status, kind, body) = get(
        &stack,
        &stack.admin_key,
        "format=xlsx&sort=order_number&order=asc",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.contains("spreadsheetml"), "{kind}");
    let mut book: Xlsx<_> = Xlsx::new(Cursor::new(body)).expect("an xlsx file");
    let sheet = book.worksheet_range("Orders").expect("sheet Orders");
    let rows: Vec<&[Data]> = sheet.rows().collect();
    assert_eq!(rows.len(), n + 1, "header and every order");
    assert_eq!(rows[0][0], Data::String("order_number".into()));
    let mut sorted = expected.clone();
    sorted.sort();
    let numbers: Vec<String> = rows[1..].iter().map(|r| r[0].to_string()).collect();
    assert_eq!(numbers, sorted);
    for row in &rows[1..] {
        assert!(
            matches!(row[1], Data::DateTime(_)),
            "a date cell: {:?}",
            row[1]
        );
        assert!(matches!(row[9], Data::Float(_)), "a number: {:?}", row[9]);
        assert!(
            matches!(row[2], Data::String(_)),
            "a text cell: {:?}",
            row[2]
        );
    }
    // String cells are never evaluated, so XLSX keeps the text as it was…
    assert!(
        rows[1..]
            .iter()
            .any(|r| r[2] == Data::String("=cmd|' /C calc'!A0".into())),
        "the name kept as text"
    );
    // …and holds no formula at all.
    let formulas = book.worksheet_formula("Orders").expect("formulas");
    assert!(
        formulas.used_cells().all(|(_, _, f)| f.is_empty()),
        "no formula cells"
    );
    let jpy = rows[1..]
        .iter()
        .find(|r| r[10] == Data::String("JPY".into()))
        .expect("JPY");
    assert_eq!(jpy[9], Data::Float(1000.0));

    // Refusals name the parameter.
    for (query, field) in [
        ("format=pdf", "format"),
        ("", "format"),
        ("format=csv&limit=5", "limit"),
        ("format=csv&cursor=abc", "cursor"),
        ("format=csv&q=%40%40%40", "q"),
    ] {
        let (status, _, body) = get(&stack, &stack.admin_key, query).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    stack.teardown().await;
}

#[tokio::test]
async fn exports_beyond_the_limit_are_refused_with_429() {
    let stack = TestStack::start_with(|s| s.api.max_exports = 0, false).await;
    let r = stack
        .http
        .get(stack.url("/v1/orders/export?format=csv"))
        .bearer_auth(&stack.admin_key)
        .send()
        .await
        .expect("export");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "10");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_exports");
    stack.teardown().await;
}

#[tokio::test]
async fn the_export_command_writes_the_admin_csv_to_a_file() {
    let stack = TestStack::start_with(|_| {}, false).await;
    seed(&stack, 30).await;
    let dir =
        std::env::temp_dir().join(format!("courier-export-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let out = dir.join("orders.csv");
    let run = |args: Vec<String>| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_courier-api-export"))
            .envs(courier_tests::stack::process_env(&stack.settings))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
    };
    let filters = [
        "--currency",
        "EUR",
        "--sort",
        "order_number",
        "--order",
        "asc",
    ];
    let mut args: Vec<String> = vec!["--format".into(), "csv".into(), "--out".into()];
    args.push(out.display().to_string());
    args.extend(filters.iter().map(|s| (*s).to_owned()));
    let done = run(args).await.expect("courier-api export runs");
    let stdout = String::from_utf8_lossy(&done.stdout);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stdout}\n{stderr}");
    let expected: Vec<String> = sqlx::query_scalar(
        "SELECT order_number FROM orders WHERE currency = 'EUR' ORDER BY order_number, id",
    )
    .fetch_all(&stack.pool)
    .await
    .expect("numbers");
    assert_eq!(expected.len(), 20);
    assert_eq!(
        stdout.lines().last(),
        Some(format!("wrote {} orders to {}", expected.len(), out.display()).as_str()),
        "{stdout}"
    );
    // stderr is a pipe here, not a terminal: no bar was drawn.
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains("orders,"),
        "{stderr}"
    );

    let file = std::fs::read(&out).expect("the file");
    let mut reader = csv::Reader::from_reader(file.as_slice());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header.iter().rev().take(3).collect::<Vec<_>>(),
        ["profit", "cost", "refunded"],
        "admin columns"
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
    let numbers: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(numbers, expected, "the filtered orders, in the asked order");
    assert!(rows.iter().all(|r| &r[10] == "EUR" && &r[9] == "9.98"));
    // Byte for byte what an admin downloads with the same filters.
    let (status, _, body) = get(
        &stack,
        &stack.admin_key,
        "format=csv&currency=EUR&sort=order_number&order=asc",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(file, body, "the same columns and cells as the download");
    assert!(
        !dir.join("orders.csv.partial").exists(),
        "nothing left beside it"
    );

    // A refused filter names its flag and writes nothing.
    let bad = dir.join("bad.csv");
    let refused = run(vec![
        "--format".into(),
        "csv".into(),
        "--out".into(),
        bad.display().to_string(),
        "--currency".into(),
        "EURO".into(),
    ])
    .await
    .expect("courier-api export runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--currency"), "{stderr}");
    assert!(!bad.exists());
    let _ = std::fs::remove_dir_all(&dir);
    stack.teardown().await;
}
