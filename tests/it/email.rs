//! Customer e-mail through a fake SMTP server: the confirmation of a paid
//! order, the refund's, the resend of delivery instructions (codes included,
//! to a new address, in the timeline), an SMTP outage that recovers, and a
//! refusal that ends dead. Messages are checked as parsed MIME.

use std::time::Duration;

use courier_tests::fakes::smtp::{Answer, FakeSmtp, Mail};
use courier_tests::stack::TestStack;
use mail_parser::{MessageParser, MimeHeaders};
use reqwest::{Method, StatusCode};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn mail_stack(smtp: &FakeSmtp) -> TestStack {
    mail_stack_with(smtp, |_| {}).await
}

async fn mail_stack_with(
    smtp: &FakeSmtp,
    tweak: impl FnOnce(&mut courier_shared::config::Settings),
) -> TestStack {
    let port = smtp.port;
    let stack = TestStack::start_with(
        move |s| {
            tweak(s);
            courier_tests::stack::use_fake_smtp(s, port);
        },
        true,
    )
    .await;
    stack.add_product("p", json!([])).await;
    stack
}

/// Subject, plain text, HTML and the recipients of a message.
fn parsed(mail: &Mail) -> (String, String, String, Vec<String>) {
    let m = MessageParser::default()
        .parse(mail.data.as_bytes())
        .expect("a MIME message");
    let to = m
        .to()
        .map(|a| {
            a.iter()
                .filter_map(|a| a.address().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        m.from().and_then(|f| f.first()).and_then(|a| a.address()),
        Some("shop@store.test")
    );
    assert_eq!(
        m.from().and_then(|f| f.first()).and_then(|a| a.name()),
        Some("Test Store")
    );
    assert!(
        m.content_type()
            .is_some_and(|c| c.subtype() == Some("alternative")),
        "multipart/alternative"
    );
    (
        m.subject().unwrap_or_default().to_owned(),
        m.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
        m.body_html(0).map(|t| t.into_owned()).unwrap_or_default(),
        to,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_is_confirmed_and_a_refund_is_told() {
    let smtp = FakeSmtp::start().await.expect("smtp");
    let stack = mail_stack(&smtp).await;
    let (status, order) = stack.post_order("p", "alex", None).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let number = order["order_number"].as_str().expect("number").to_owned();
    let mails = smtp.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, ["alex@example.com"]);
    let (subject, text, html, to) = parsed(&mails[0]);
    assert_eq!(to, ["alex@example.com"]);
    assert_eq!(subject, format!("Test Store: order {number} received"));
    assert!(text.contains("Hello Alex"), "{text}");
    assert!(text.contains("2 × Product p: 4.99 USD"), "{text}");
    assert!(text.contains("Total: 10.48 USD"), "{text}");
    assert!(
        html.contains(&format!("<strong>{number}</strong>")),
        "{html}"
    );

    let id = order["id"].as_str().expect("id");
    let (status, r) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{id}/refunds"),
            Some(&json!({ "amount": "2.00", "reason": "requested_by_customer", "revoke": false })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    let mails = smtp.wait_for(2, WAIT).await;
    assert_eq!(mails.len(), 2);
    let (subject, text, _, _) = parsed(&mails[1]);
    assert_eq!(subject, format!("Test Store: refund for order {number}"));
    assert!(text.contains("refunded 2.00 USD"), "{text}");
    assert!(
        text.contains("Refunded so far: 2.00 of 10.48 USD"),
        "{text}"
    );
    assert!(!text.contains("(the whole order)"), "{text}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_sends_the_codes_and_notes_to_a_new_address_recorded_in_the_timeline() {
    let smtp = FakeSmtp::start().await.expect("smtp");
    let stack = mail_stack(&smtp).await;
    let (_, order) = stack.post_order("p", "alex", None).await;
    let id = order["id"].as_str().expect("id");
    smtp.wait_for(1, WAIT).await;
    // Staff deliver the item by hand with a code and a note.
    let item = order["items"][0]["id"].as_str().expect("item").to_owned();
    let (status, r) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{id}/items/{item}/deliver"),
            Some(&json!({ "code": "GIFT-1234-ABCD", "notes": "Redeem at store.test/redeem" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");

    let (status, r) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{id}/resend"),
            Some(&json!({ "email": "alex.new@example.org" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    assert_eq!(r["to"], "alex.new@example.org");
    let mails = smtp.wait_for(2, WAIT).await;
    assert_eq!(mails.len(), 2);
    assert_eq!(mails[1].to, ["alex.new@example.org"]);
    let (subject, text, html, _) = parsed(&mails[1]);
    assert!(subject.contains("your order"), "{subject}");
    assert!(text.contains("Code: GIFT-1234-ABCD"), "{text}");
    assert!(text.contains("Redeem at store.test/redeem"), "{text}");
    assert!(html.contains("GIFT-1234-ABCD"), "{html}");
    assert!(text.contains("game account alex"), "{text}");
    let full = stack.order(id).await;
    let events: Vec<&str> = full["timeline"]
        .as_array()
        .map(|t| t.iter().filter_map(|e| e["message"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|m| m.contains("resent to a new address, alex.new@example.org")),
        "{events:?}"
    );

    // Bad addresses are refused before anything is written.
    for bad in [
        "not-an-address",
        "a@b@c",
        "x@y.z\r\nBcc: evil@example.com",
        "",
    ] {
        let (status, e) = stack
            .call(
                Method::POST,
                &format!("/v1/orders/{id}/resend"),
                Some(&json!({ "email": bad })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {e}");
        assert_eq!(e["error"]["field"], "email", "{bad}: {e}");
    }
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_outage_is_retried_until_it_recovers_and_a_refusal_is_dead() {
    let smtp = FakeSmtp::start().await.expect("smtp");
    smtp.answer_next(&[Answer::Code(451), Answer::Drop]);
    let stack = mail_stack(&smtp).await;
    let (_, order) = stack.post_order("p", "alex", None).await;
    let mails = smtp.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1, "delivered after the outage");
    assert_eq!(
        smtp.answers(),
        [Answer::Code(451), Answer::Drop, Answer::Code(250)]
    );
    stack
        .wait_until(
            "the e-mail delivery succeeded on its third attempt",
            "SELECT EXISTS (SELECT 1 FROM deliveries WHERE kind = 'email' AND status = 'succeeded' AND attempts = 3)",
            WAIT,
        )
        .await;

    // The server refuses the recipient: no retry helps.
    smtp.refuse_recipients(Some(550));
    let id = order["id"].as_str().expect("id");
    let (status, _) = stack
        .call(Method::POST, &format!("/v1/orders/{id}/resend"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    stack
        .wait_until(
            "the refused e-mail is dead with the server's reason",
            "SELECT EXISTS (SELECT 1 FROM deliveries d JOIN dead_letters l ON l.delivery_id = d.id \
             WHERE d.kind = 'email' AND d.status = 'dead' AND d.attempts = 1 \
               AND l.reason LIKE '%Recipient address rejected%')",
            WAIT,
        )
        .await;
    assert_eq!(smtp.mails().len(), 1);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_email_off_nothing_is_written_and_resend_says_so() {
    let stack = TestStack::start().await;
    stack.add_product("p", json!([])).await;
    let (_, order) = stack.post_order("p", "alex", None).await;
    let id = order["id"].as_str().expect("id");
    assert_eq!(
        stack
            .count("SELECT count(*) FROM deliveries WHERE kind = 'email'")
            .await,
        0
    );
    let (status, e) = stack
        .call(Method::POST, &format!("/v1/orders/{id}/resend"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "email_disabled");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_fulfilled_until_their_email_is_accepted_then_delivered() {
    let smtp = FakeSmtp::start().await.expect("smtp");
    // Enough attempts to outlast the outage the test makes.
    let stack = mail_stack_with(&smtp, |s| s.retry.email.max_attempts = 1000).await;
    stack
        .add_product(
            "gift",
            json!([{ "kind": "supplier_key", "stock_only": true }]),
        )
        .await;
    let (status, r) = stack
        .call(
            Method::POST,
            "/v1/products/gift/keys",
            Some(&json!({ "keys": ["KEY-AAAA-0001", "KEY-BBBB-0002"] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    // An SMTP outage holds the e-mails until the test has seen the item fulfilled.
    smtp.answer_always(Some(Answer::Code(451)));
    let (_, order) = stack.post_order("gift", "alex", None).await;
    let id = order["id"].as_str().expect("id");
    stack
        .wait_until(
            "the item is fulfilled while its keys e-mail waits",
            &format!(
                "SELECT EXISTS (SELECT 1 FROM order_items i JOIN deliveries d ON d.item_id = i.id \
                 WHERE i.order_id = '{id}' AND i.delivery_status = 'fulfilled' \
                   AND d.kind = 'email' AND d.attempts >= 2)"
            ),
            WAIT,
        )
        .await;
    let (_, row) = stack
        .call(Method::GET, &format!("/v1/orders/{id}"), None)
        .await;
    assert_eq!(row["status"], "processing", "{row}");

    smtp.answer_always(None);
    let done = stack.wait_for_order(id, "completed", WAIT).await;
    assert_eq!(done["items"][0]["delivery_status"], "delivered", "{done}");
    let mails = smtp.wait_for(2, WAIT).await;
    assert_eq!(mails.len(), 2, "the confirmation and the keys");
    let keys = mails
        .iter()
        .find(|m| parsed(m).0.contains("keys"))
        .expect("the keys e-mail");
    let (subject, text, html, to) = parsed(keys);
    assert_eq!(to, ["alex@example.com"]);
    assert!(subject.contains("your Product gift keys"), "{subject}");
    for code in ["KEY-AAAA-0001", "KEY-BBBB-0002"] {
        assert!(text.contains(code) && html.contains(code), "{code}: {text}");
    }
    // Sent means revealed: a refund cannot put them back in stock now.
    let revealed = stack
        .count("SELECT count(*) FROM item_keys WHERE revealed_at IS NOT NULL")
        .await;
    assert_eq!(revealed, 2);
    stack.teardown().await;
}
