//! Digital downloads: files uploaded for a product (streamed, capped,
//! checksummed, nothing kept when refused), links e-mailed when an order is
//! paid, served whole and by byte range, counted and used up, expired and
//! renewed by a resend, revoked by a refund and by a dispute (whose evidence
//! shows the download log), and a product without files that dead-letters
//! until one is uploaded. Storage is the local directory of each stack, and
//! a fake S3-compatible store in one test.

use std::time::Duration;

use courier_tests::fakes::smtp::FakeSmtp;
use courier_tests::signing;
use courier_tests::stack::TestStack;
use mail_parser::MessageParser;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(20);

/// Bytes that are not all the same, so a wrong range cannot pass.
fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

async fn upload(
    stack: &TestStack,
    sku: &str,
    query: &str,
    body: Vec<u8>,
    content_type: &str,
) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(stack.url(&format!("/v1/products/{sku}/files?{query}")))
        .bearer_auth(&stack.admin_key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("upload sent");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Files in the stack's storage directory (refused uploads leave none).
fn stored_objects(stack: &TestStack) -> usize {
    fn walk(p: &std::path::Path) -> usize {
        std::fs::read_dir(p).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { walk(&p) } else { 1 }
                })
                .sum()
        })
    }
    walk(std::path::Path::new(&stack.settings.downloads.local_dir))
}

async fn mail_stack(
    smtp: &FakeSmtp,
    tweak: impl FnOnce(&mut courier_shared::config::Settings),
) -> TestStack {
    let port = smtp.port;
    TestStack::start_with(
        move |s| {
            courier_tests::stack::use_fake_smtp(s, port);
            s.email.send_confirmation = false;
            tweak(s);
        },
        true,
    )
    .await
}

/// The download URLs in the `n`th e-mail (text part), as `/downloads/<token>` paths.
fn links_in(mail: &courier_tests::fakes::smtp::Mail) -> (String, Vec<String>) {
    let m = MessageParser::default()
        .parse(mail.data.as_bytes())
        .expect("a MIME message");
    let text = m.body_text(0).map(|t| t.into_owned()).unwrap_or_default();
    let paths = text
        .split_whitespace()
        .filter_map(|w| w.find("/downloads/").map(|i| w[i..].to_owned()))
        .collect();
    (m.subject().unwrap_or_default().to_owned(), paths)
}

/// Product `book`, sold as one file `a.zip` of `content(size)`; returns
/// the file as the upload answered it.
async fn book_with_file(stack: &TestStack, size: usize) -> Value {
    stack
        .add_product("book", json!([{ "kind": "download" }]))
        .await;
    let (status, f) = upload(
        stack,
        "book",
        "name=a.zip",
        content(size),
        "application/zip",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{f}");
    f
}

/// The `/downloads/<token>` path of the order's first link, as the store reads it.
async fn link_path(stack: &TestStack, id: &str) -> String {
    let (_, links) = stack
        .call(Method::GET, &format!("/v1/orders/{id}/downloads"), None)
        .await;
    let url = links["links"][0]["url"].as_str().expect("url");
    url[url.find("/downloads/").expect("path")..].to_owned()
}

async fn get(stack: &TestStack, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .get(stack.url(path))
        .header("user-agent", "courier-test/1.0");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("download sent")
}

async fn error_code(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_streamed_capped_and_checksummed_and_nothing_refused_is_kept() {
    let stack = TestStack::start_with(|s| s.downloads.max_file_bytes = 1_000_000, false).await;
    stack
        .add_product("book", json!([{ "kind": "download" }]))
        .await;
    let bytes = content(300_000);
    let sha = hex::encode(Sha256::digest(&bytes));
    let (status, file) = upload(
        &stack,
        "book",
        &format!("name=Guide%20%C3%A9dition.pdf&sha256={sha}"),
        bytes,
        "application/pdf",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{file}");
    assert_eq!(
        (
            file["name"].clone(),
            file["size_bytes"].clone(),
            file["sha256"].clone(),
            file["content_type"].clone()
        ),
        (
            json!("Guide édition.pdf"),
            json!(300_000),
            json!(sha),
            json!("application/pdf")
        )
    );
    assert_eq!(stored_objects(&stack), 1);

    // A wrong checksum, an empty body and an oversized one are refused, and
    // none of them leaves an object behind.
    let wrong_sha = format!("name=x.bin&sha256={}", "0".repeat(64));
    for (query, body, status, code) in [
        (
            wrong_sha.as_str(),
            content(10),
            StatusCode::UNPROCESSABLE_ENTITY,
            "checksum_mismatch",
        ),
        (
            "name=x.bin",
            Vec::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_file",
        ),
        (
            "name=big.bin",
            content(1_500_000),
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
        ),
    ] {
        let (got, e) = upload(&stack, "book", query, body, "application/octet-stream").await;
        assert_eq!(
            (got, e["error"]["code"].clone()),
            (status, json!(code)),
            "{query}: {e}"
        );
    }
    // Streamed without a length: the cap is enforced while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..15).map(|_| Ok(content(100_000))).collect();
    let resp = reqwest::Client::new()
        .post(stack.url("/v1/products/book/files?name=stream.bin"))
        .bearer_auth(&stack.admin_key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        error_code(resp).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "file_too_large".into())
    );
    for (query, field) in [
        ("name=a%2Fb", "name"),
        ("name=%20", "name"),
        ("name=ok&sha256=xyz", "sha256"),
    ] {
        let (status, e) = upload(
            &stack,
            "book",
            query,
            content(10),
            "application/octet-stream",
        )
        .await;
        assert_eq!(
            (status, e["error"]["field"].clone()),
            (StatusCode::UNPROCESSABLE_ENTITY, json!(field)),
            "{query}: {e}"
        );
    }
    let (status, _) = upload(
        &stack,
        "nope",
        "name=a.bin",
        content(10),
        "application/octet-stream",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        stored_objects(&stack),
        1,
        "refused uploads left objects behind"
    );

    let (status, list) = stack
        .call(Method::GET, "/v1/products/book/files", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["files"].as_array().map(Vec::len), Some(1), "{list}");
    let id = file["id"].as_str().expect("id");
    let (status, _) = stack
        .call(
            Method::DELETE,
            &format!("/v1/products/book/files/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = stack
        .call(Method::GET, "/v1/products/book/files", None)
        .await;
    assert_eq!(list["files"], json!([]));
    let (status, _) = stack
        .call(
            Method::DELETE,
            &format!("/v1/products/book/files/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_gets_links_by_email_served_by_range_counted_and_used_up() {
    let smtp = FakeSmtp::start().await.expect("smtp");
    let stack = mail_stack(&smtp, |_| {}).await;
    stack
        .add_product("book", json!([{ "kind": "download", "max_downloads": 3 }]))
        .await;
    let bytes = content(100_000);
    let (status, f) = upload(
        &stack,
        "book",
        "name=book.epub",
        bytes.clone(),
        "application/epub+zip",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{f}");

    let (status, order) = stack.post_order("book", "alex", None).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let id = order["id"].as_str().expect("id").to_owned();
    let mails = smtp.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1, "the downloads e-mail");
    let (subject, paths) = links_in(&mails[0]);
    assert!(
        subject.contains("your download for Product book"),
        "{subject}"
    );
    assert_eq!(paths.len(), 1, "{paths:?}");
    let path = &paths[0];
    // Delivered once the SMTP server took the e-mail.
    let o = stack.wait_for_order(&id, "completed", WAIT).await;
    assert_eq!(o["items"][0]["delivery_status"], "delivered", "{o:#}");

    // Whole, with what a browser and a download manager need.
    let resp = get(&stack, path, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/epub+zip");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-length"], "100000");
    assert_eq!(
        h["content-disposition"],
        "attachment; filename=\"book.epub\"; filename*=UTF-8''book%2Eepub"
    );
    let etag = h["etag"].to_str().expect("etag").to_owned();
    assert_eq!(etag, format!("\"{}\"", f["sha256"].as_str().expect("sha")));
    assert_eq!(resp.bytes().await.expect("body").as_ref(), bytes.as_slice());

    // HEAD answers the headers and spends nothing.
    let resp = reqwest::Client::new()
        .head(stack.url(path))
        .send()
        .await
        .expect("head");
    assert_eq!(
        (resp.status(), resp.headers()["content-length"].clone()),
        (StatusCode::OK, "100000".parse().expect("value"))
    );
    assert_eq!(resp.headers()["content-security-policy"], "sandbox");

    // Ranges: a middle, an open end, a suffix; past the end is 416.
    let resp = get(&stack, path, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()["content-range"], "bytes 1000-1999/100000");
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        &bytes[1000..2000]
    );
    let resp = get(&stack, path, &[("range", "bytes=-10")]).await;
    assert_eq!(resp.headers()["content-range"], "bytes 99990-99999/100000");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &bytes[99_990..]);
    let resp = get(&stack, path, &[("range", "bytes=100000-")]).await;
    assert_eq!(resp.headers()["content-range"], "bytes */100000");
    assert_eq!(
        error_code(resp).await,
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable".into()
        )
    );
    // A range for other content (If-Range) gets the whole file.
    let resp = get(
        &stack,
        path,
        &[("range", "bytes=0-9"), ("if-range", "\"other\"")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("body").len(), 100_000);

    // Three downloads' worth of bytes: 2 × 100,000 + 1,000 + 10 are spent;
    // a whole file (100,000) no longer fits in the 98,990 left, a range does.
    let resp = get(&stack, path, &[]).await;
    assert_eq!(
        error_code(resp).await,
        (StatusCode::GONE, "download_limit_reached".into())
    );
    let resp = get(&stack, path, &[("range", "bytes=5000-5999")]).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        &bytes[5000..6000]
    );
    let o = stack.order(&id).await;
    let link = &o["downloads"][0];
    assert_eq!(
        (
            link["downloads"].clone(),
            link["bytes_served"].clone(),
            link["file_name"].clone()
        ),
        (json!(2), json!(202_010), json!("book.epub")),
        "{link}"
    );
    assert!(
        link.get("url").is_none(),
        "the order view shows no URL: {link}"
    );
    assert_eq!(
        stack.count("SELECT count(*) FROM download_log WHERE refused IS NULL AND user_agent = 'courier-test/1.0' AND ip = '127.0.0.1'").await,
        5
    );
    assert_eq!(
        stack.count("SELECT count(*) FROM download_log WHERE refused IN ('download_limit_reached', 'range_not_satisfiable')").await,
        2
    );

    // A forged token, an altered one: not found, and not logged. (A middle
    // character: the last one may carry only padding bits.)
    let token = &path["/downloads/".len()..];
    let mid = token.len() / 2;
    let swapped = if &token[mid..=mid] == "A" { "B" } else { "A" };
    let altered = format!("/downloads/{}{swapped}{}", &token[..mid], &token[mid + 1..]);
    assert_eq!(
        error_code(get(&stack, &altered, &[]).await).await,
        (StatusCode::NOT_FOUND, "link_not_found".into())
    );
    assert_eq!(
        error_code(get(&stack, "/downloads/nonsense", &[]).await).await,
        (StatusCode::NOT_FOUND, "link_not_found".into())
    );
    assert_eq!(stack.count("SELECT count(*) FROM download_log").await, 7);

    // The store's page: URLs for orders:keys, refused for orders:read.
    let reader = stack.reader_key().await;
    let (status, _) = stack
        .call_as(
            &reader,
            Method::GET,
            &format!("/v1/orders/{id}/downloads"),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, links) = stack
        .call(Method::GET, &format!("/v1/orders/{id}/downloads"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{links}");
    assert!(
        links["links"][0]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with(path.as_str())),
        "{links}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_is_refused_and_a_resend_renews_it() {
    let smtp = FakeSmtp::start().await.expect("smtp");
    let stack = mail_stack(&smtp, |_| {}).await;
    stack
        .add_product("book", json!([{ "kind": "download", "expires_hours": 24 }]))
        .await;
    upload(
        &stack,
        "book",
        "name=a.zip",
        content(5_000),
        "application/zip",
    )
    .await;
    let (_, order) = stack.post_order("book", "alex", None).await;
    let id = order["id"].as_str().expect("id").to_owned();
    let (_, paths) = links_in(&smtp.wait_for(1, WAIT).await[0]);
    stack.wait_for_order(&id, "completed", WAIT).await;
    assert_eq!(get(&stack, &paths[0], &[]).await.status(), StatusCode::OK);

    // Its time runs out (the row says so; the token's own expiry is later).
    sqlx::query("UPDATE download_links SET expires_at = now() - interval '1 second'")
        .execute(&stack.pool)
        .await
        .expect("expire");
    assert_eq!(
        error_code(get(&stack, &paths[0], &[]).await).await,
        (StatusCode::GONE, "link_expired".into())
    );

    let (status, r) = stack
        .call(Method::POST, &format!("/v1/orders/{id}/resend"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    let mails = smtp.wait_for(2, WAIT).await;
    let (subject, renewed) = links_in(&mails[1]);
    assert!(subject.contains("your order"), "{subject}");
    assert_eq!(renewed.len(), 1, "{renewed:?}");
    let resp = get(&stack, &renewed[0], &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("body").len(), 5_000);
    let hours: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - now())::float8 / 3600 FROM download_links",
    )
    .fetch_one(&stack.pool)
    .await
    .expect("expiry");
    assert!(
        (23.9..=24.0).contains(&hours),
        "renewed for the action's 24 h: {hours}"
    );
    let o = stack.order(&id).await;
    assert!(
        o["timeline"].as_array().is_some_and(|t| t
            .iter()
            .any(|e| e["kind"] == "email.resend" && e["data"]["links_renewed"] == 1)),
        "{o:#}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refund_revokes_the_links() {
    let stack = TestStack::start().await;
    book_with_file(&stack, 5_000).await;
    let (_, order) = stack.post_order("book", "alex", None).await;
    let id = order["id"].as_str().expect("id").to_owned();
    // E-mail is off: delivered when the link exists; the store shows it.
    let o = stack.wait_for_order(&id, "completed", WAIT).await;
    assert_eq!(o["items"][0]["delivery_status"], "delivered");
    let path = &link_path(&stack, &id).await;
    assert_eq!(get(&stack, path, &[]).await.status(), StatusCode::OK);

    // Serving checks the order itself: withdrawn, its links stop even
    // before (or without) their own rows being revoked.
    sqlx::query("UPDATE orders SET revoked_at = now()")
        .execute(&stack.pool)
        .await
        .expect("withdraw");
    assert_eq!(
        error_code(get(&stack, path, &[]).await).await,
        (StatusCode::GONE, "link_revoked".into())
    );
    sqlx::query("UPDATE orders SET revoked_at = NULL")
        .execute(&stack.pool)
        .await
        .expect("restore");
    let (status, r) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{id}/refunds"),
            Some(&json!({ "reason": "requested_by_customer" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    assert_eq!(
        error_code(get(&stack, path, &[]).await).await,
        (StatusCode::GONE, "link_revoked".into())
    );
    let o = stack.order(&id).await;
    assert!(!o["downloads"][0]["revoked_at"].is_null(), "{o:#}");
    assert!(
        o["timeline"].as_array().is_some_and(|t| t
            .iter()
            .any(|e| e["kind"] == "delivery.revoke" && e["message"] == "1 download link revoked")),
        "{o:#}"
    );
    let (_, links) = stack
        .call(Method::GET, &format!("/v1/orders/{id}/downloads"), None)
        .await;
    assert!(
        links["links"][0]["url"].is_null(),
        "a revoked link has no URL: {links}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_revokes_the_links_and_its_evidence_shows_the_download_log() {
    let stack = TestStack::start().await;
    book_with_file(&stack, 5_000).await;
    let mut body = courier_tests::stack::sample_order("book", "steve");
    body["gateway"] = json!("stripe");
    body["transaction_id"] = json!("pi_dl");
    let (status, order) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let id = order["id"].as_str().expect("id").to_owned();
    stack.wait_for_order(&id, "completed", WAIT).await;
    let path = &link_path(&stack, &id).await;
    let resp = get(&stack, path, &[("x-forwarded-for", "198.51.100.23")]).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let opened = signing::stripe_event(
        "evt_dl_dispute",
        "charge.dispute.created",
        signing::dispute("dp_dl", "pi_dl", 1048, "needs_response", 0),
    );
    assert_eq!(stack.send_stripe(&opened).await["status"], "applied");
    assert_eq!(
        error_code(get(&stack, path, &[]).await).await,
        (StatusCode::GONE, "link_revoked".into())
    );
    let o = stack.order(&id).await;
    let log = &o["evidence"]["download_logs"];
    assert_eq!(log.as_array().map(Vec::len), Some(2), "{o:#}");
    assert_eq!(
        (
            log[0]["status"].clone(),
            log[0]["bytes"].clone(),
            log[0]["ip"].clone(),
            log[0]["forwarded_for"].clone(),
            log[0]["user_agent"].clone(),
            log[0]["file_name"].clone()
        ),
        (
            json!(200),
            json!(5_000),
            json!("127.0.0.1"),
            json!("198.51.100.23"),
            json!("courier-test/1.0"),
            json!("a.zip")
        ),
    );
    assert_eq!(
        (log[1]["status"].clone(), log[1]["refused"].clone()),
        (json!(410), json!("link_revoked"))
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_without_files_dead_letters_until_one_is_uploaded() {
    let stack = TestStack::start().await;
    stack
        .add_product("book", json!([{ "kind": "download" }]))
        .await;
    let (_, order) = stack.post_order("book", "alex", None).await;
    let id = order["id"].as_str().expect("id").to_owned();
    let o = stack.wait_for_order(&id, "failed", WAIT).await;
    let d = &o["deliveries"][0];
    assert_eq!(
        (d["kind"].clone(), d["status"].clone()),
        (json!("download"), json!("dead")),
        "{o:#}"
    );
    assert!(
        d["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("has no files")),
        "{d}"
    );

    upload(
        &stack,
        "book",
        "name=late.zip",
        content(100),
        "application/zip",
    )
    .await;
    let delivery = d["id"].as_str().expect("delivery");
    let (status, r) = stack
        .call(
            Method::POST,
            &format!("/v1/admin/deliveries/{delivery}/retry"),
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {r}");
    let o = stack.wait_for_order(&id, "completed", WAIT).await;
    assert_eq!(o["downloads"][0]["file_name"], "late.zip", "{o:#}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_signing_key_download_actions_are_refused() {
    let stack = TestStack::start_with(|s| s.downloads.signing_key = None, false).await;
    let (status, e) = stack
        .call(
            Method::PUT,
            "/v1/products/book",
            Some(&json!({ "name": "Book", "actions": [{ "kind": "download" }] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("downloads.signing_key")),
        "{e}"
    );
    let (status, e) = stack
        .call(
            Method::PUT,
            "/v1/products/book",
            Some(
                &json!({ "name": "Book", "actions": [{ "kind": "download", "max_downloads": 0 }] }),
            ),
        )
        .await;
    assert_eq!(
        (status, e["error"]["field"].clone()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!("actions[0].max_downloads")
        ),
        "{e}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_can_live_in_s3_compatible_storage_and_an_outage_costs_the_customer_nothing() {
    let s3 = courier_tests::fakes::s3::FakeS3::start("courier-files")
        .await
        .expect("s3");
    let (endpoint, bucket, access_key) = (s3.url.clone(), s3.bucket.clone(), s3.access_key.clone());
    let stack = TestStack::start_with(
        move |s| {
            s.downloads.storage = "s3".into();
            s.downloads.s3_bucket = Some(bucket);
            s.downloads.s3_region = Some("us-east-1".into());
            s.downloads.s3_endpoint = Some(endpoint);
            s.downloads.s3_access_key_id = Some(access_key);
            s.downloads.s3_secret_access_key =
                Some(courier_shared::config::Secret::new("fake-secret"));
            s.downloads.s3_allow_http = true;
        },
        true,
    )
    .await;
    let bytes = content(300_000);
    let f = book_with_file(&stack, 300_000).await;
    let keys = s3.keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].starts_with("products/") && keys[0].ends_with(f["id"].as_str().expect("id")),
        "{keys:?}"
    );
    assert_eq!(s3.object(&keys[0]).as_deref(), Some(bytes.as_slice()));
    assert_eq!(s3.open_uploads(), 0);

    let (_, order) = stack.post_order("book", "alex", None).await;
    let id = order["id"].as_str().expect("id").to_owned();
    stack.wait_for_order(&id, "completed", WAIT).await;
    let path = link_path(&stack, &id).await;
    let resp = get(&stack, &path, &[("range", "bytes=299990-")]).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        &bytes[299_990..]
    );
    assert!(
        s3.requests()
            .iter()
            .any(|r| r.starts_with("GET /courier-files/products/")),
        "{:?}",
        s3.requests()
    );

    // The store is down: the download is refused with 503 and spends
    // nothing; an upload is refused and leaves nothing half-made.
    s3.set_down(true);
    let (status, code) = error_code(get(&stack, &path, &[]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable")
    );
    let (status, e) = upload(&stack, "book", "name=b.zip", content(10), "application/zip").await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!("storage_unavailable")
        ),
        "{e}"
    );
    s3.set_down(false);
    let o = stack.order(&id).await;
    assert_eq!(o["downloads"][0]["bytes_served"], 10, "{o:#}");
    let resp = get(&stack, &path, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("body").len(), 300_000);
    let (_, list) = stack
        .call(Method::GET, "/v1/products/book/files", None)
        .await;
    assert_eq!(list["files"].as_array().map(Vec::len), Some(1), "{list}");
    stack.teardown().await;
}
