//! `GET /v1/reports/summary`: orders of three products in USD and JPY (no
//! decimals), paid on three days of a month and just outside it, one still
//! pending, a partial and a full refund, a lost and a won dispute, keys bought
//! from a supplier and taken from stock. Every row, by day, product,
//! currency and supplier, equals what the test adds up itself from the
//! orders' own answers (`GET /v1/orders/{id}?expand=full`) and the times it
//! gave them, to the minor unit; then the refusals and the scope.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use courier_shared::config::{Secret, SupplierSettings};
use courier_tests::fakes::supplier::FakeSupplier;
use courier_tests::stack::TestStack;
use reqwest::{Method, StatusCode};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Map, Value, json};

const RANGE: &str = "from=2026-11-01&to=2026-12-01";

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("a decimal string: {v}"))
        .parse()
        .expect("decimal")
}

/// The currency's decimals, as ISO 4217 has them (only these two here).
fn decimals(currency: &str) -> u32 {
    if currency == "JPY" { 0 } else { 2 }
}

/// `d` rounded half away from zero to `places` and written with exactly that
/// many decimals, through integers (not the code under test's formatting).
fn show(d: Decimal, places: u32) -> String {
    let scale = Decimal::from(10_i64.pow(places));
    let minor = (d * scale)
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
        .to_i128()
        .expect("fits");
    let (sign, abs) = (if minor < 0 { "-" } else { "" }, minor.unsigned_abs());
    let unit = 10_u128.pow(places);
    if places == 0 {
        format!("{sign}{abs}")
    } else {
        format!(
            "{sign}{}.{:0w$}",
            abs / unit,
            abs % unit,
            w = places as usize
        )
    }
}

/// What one group in one currency adds up to.
#[derive(Default)]
struct Acc {
    orders: BTreeSet<String>,
    keys: i64,
    revenue: Decimal,
    refunds: Decimal,
    lost: Decimal,
    cost: Decimal,
}

impl Acc {
    fn figures(&self, currency: &str) -> Map<String, Value> {
        let p = decimals(currency);
        let profit = self.revenue - self.refunds - self.lost - self.cost;
        let margin = if self.revenue.is_zero() {
            Value::Null
        } else {
            json!(show(profit / self.revenue, 4))
        };
        let mut m = Map::new();
        m.insert("currency".into(), json!(currency));
        m.insert("orders".into(), json!(self.orders.len()));
        m.insert("revenue".into(), json!(show(self.revenue, p)));
        m.insert("refunds".into(), json!(show(self.refunds, p)));
        m.insert("disputes_lost".into(), json!(show(self.lost, p)));
        m.insert("cost".into(), json!(show(self.cost, p)));
        m.insert("profit".into(), json!(show(profit, p)));
        m.insert("margin".into(), margin);
        m
    }
}

/// An order as the API answered it, with when the test says it was paid.
struct Paid {
    view: Value,
    paid_at: &'static str,
    lost: Decimal,
}

impl Paid {
    fn id(&self) -> String {
        self.view["id"].as_str().expect("id").to_owned()
    }
    fn currency(&self) -> String {
        self.view["currency"].as_str().expect("currency").to_owned()
    }
    fn items(&self) -> Vec<Value> {
        self.view["items"].as_array().cloned().unwrap_or_default()
    }
    fn keys(item: &Value) -> Vec<Value> {
        item["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|k| k["released"] != true)
            .cloned()
            .collect()
    }
    fn cost(&self) -> Decimal {
        self.items()
            .iter()
            .flat_map(Paid::keys)
            .filter(|k| !k["cost"].is_null())
            .map(|k| dec(&k["cost"]))
            .sum()
    }
}

type Groups = BTreeMap<(String, String), Acc>;

fn rows(groups: &Groups, extra: impl Fn(&str, &Acc, &mut Map<String, Value>)) -> Value {
    Value::Array(
        groups
            .iter()
            .map(|((group, currency), acc)| {
                let mut m = acc.figures(currency);
                m.insert("group".into(), json!(group));
                extra(group, acc, &mut m);
                Value::Object(m)
            })
            .collect(),
    )
}

/// Order-level sums grouped by `key` (the day, or the currency).
fn by_order(paid: &[Paid], key: impl Fn(&Paid) -> String) -> Groups {
    let mut groups = Groups::new();
    for p in paid {
        let acc = groups.entry((key(p), p.currency())).or_default();
        acc.orders.insert(p.id());
        acc.revenue += dec(&p.view["total"]);
        acc.refunds += dec(&p.view["refunded_amount"]);
        acc.lost += p.lost;
        acc.cost += p.cost();
    }
    groups
}

fn by_product(paid: &[Paid]) -> Groups {
    let mut groups = Groups::new();
    for p in paid {
        for item in p.items() {
            let sku = item["product"].as_str().expect("sku").to_owned();
            let acc = groups.entry((sku, p.currency())).or_default();
            acc.orders.insert(p.id());
            acc.revenue += dec(&item["total"]);
            acc.cost += Paid::keys(&item)
                .iter()
                .filter(|k| !k["cost"].is_null())
                .map(|k| dec(&k["cost"]))
                .sum::<Decimal>();
        }
    }
    groups
}

fn by_supplier(paid: &[Paid]) -> Groups {
    let mut groups = Groups::new();
    for p in paid {
        for item in p.items() {
            for key in Paid::keys(&item) {
                let from = key["supplier"]
                    .as_str()
                    .or(key["source"].as_str())
                    .expect("supplier or source")
                    .to_owned();
                let acc = groups.entry((from, p.currency())).or_default();
                acc.orders.insert(p.id());
                acc.keys += 1;
                acc.revenue += dec(&item["unit_price"]);
                if !key["cost"].is_null() {
                    acc.cost += dec(&key["cost"]);
                }
            }
        }
    }
    groups
}

fn totals(paid: &[Paid]) -> Value {
    let groups = by_order(paid, |p| p.currency());
    Value::Array(
        groups
            .iter()
            .map(|((_, currency), acc)| Value::Object(acc.figures(currency)))
            .collect(),
    )
}

async fn summary(stack: &TestStack, query: &str) -> Value {
    let (status, body) = stack
        .call(Method::GET, &format!("/v1/reports/summary?{query}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

/// Posts an order of `items` (`[sku, quantity, unit price]`); returns its id.
async fn order(
    stack: &TestStack,
    currency: &str,
    items: &[(&str, i64, &str)],
    tweak: impl FnOnce(&mut Value),
) -> String {
    let mut body = json!({
        "currency": currency,
        "tax": "0",
        "gateway": "store",
        "transaction_id": format!("tx_{}", uuid::Uuid::new_v4().simple()),
        "customer": { "name": "Alex", "email": "alex@example.com" },
        "game": { "username": "Alex" },
        "items": items.iter().map(|(sku, q, price)|
            json!({ "product": sku, "quantity": q, "unit_price": price })).collect::<Vec<_>>(),
    });
    tweak(&mut body);
    let (status, o) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{o}");
    o["id"].as_str().expect("id").to_owned()
}

async fn refund(stack: &TestStack, id: &str, body: Value) {
    let (status, r) = stack
        .call(
            Method::POST,
            &format!("/v1/orders/{id}/refunds"),
            Some(&body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
}

async fn dispute(stack: &TestStack, id: &str, amount: &str, currency: &str, outcome: &str) {
    // Only a closed dispute's amount and outcome matter here; the Stripe
    // flow that records them is tested in payments.rs.
    sqlx::query(
        "INSERT INTO disputes (id, order_id, external_id, amount, currency, reason, gateway_status, outcome, closed_at) \
         VALUES ($1, $2::uuid, $3, $4::numeric, $5, 'fraudulent', $6, $6, now())",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(id)
    .bind(format!("dp_{}", uuid::Uuid::new_v4().simple()))
    .bind(amount)
    .bind(currency)
    .bind(outcome)
    .execute(&stack.pool)
    .await
    .expect("dispute");
}

async fn set_paid_at(stack: &TestStack, id: &str, at: &str) {
    sqlx::query("UPDATE orders SET paid_at = $2::timestamptz WHERE id = $1::uuid")
        .bind(id)
        .bind(at)
        .execute(&stack.pool)
        .await
        .expect("paid_at");
}

/// The stack: a supplier selling `g1` at 3.25, products `vip` (RCON),
/// `game` (a key bought from `acme`) and `gift` (a key from own stock).
async fn shop() -> (
    TestStack,
    FakeSupplier,
    courier_tests::fakes::rcon::FakeGameServer,
) {
    let acme = FakeSupplier::start("acme").await.expect("supplier");
    acme.set_product("g1", 3.25, 100);
    let settings = SupplierSettings {
        base_url: acme.base.clone(),
        api_key: Secret::new(acme.api_key.clone()),
        requests_per_second: 50,
        timeout_ms: 2000,
    };
    let stack = TestStack::start_with(
        |s| {
            s.suppliers.insert("acme".into(), settings);
        },
        true,
    )
    .await;
    let game = courier_tests::fakes::rcon::FakeGameServer::start(
        "pw",
        courier_shared::rcon::Dialect::Minecraft,
    )
    .await
    .expect("fake game server");
    stack.add_game_server("s", &game).await;
    stack
        .add_rcon_product("vip", "s", "give {username} vip")
        .await;
    stack
        .add_product(
            "game",
            json!([{ "kind": "supplier_key", "candidates": [
                { "supplier": "acme", "supplier_product_id": "g1", "max_price": "10.00" }
            ]}]),
        )
        .await;
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
            Some(&json!({ "keys": ["GIFT-1", "GIFT-2"] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    (stack, acme, game)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_rows_equal_the_orders_own_sums_by_day_product_currency_and_supplier() {
    let (stack, _acme, _game) = shop().await;
    let o1 = order(&stack, "USD", &[("vip", 2, "4.99")], |b| {
        b["tax"] = json!("0.50")
    })
    .await;
    let o2 = order(&stack, "USD", &[("game", 2, "20.00")], |b| {
        b["gateway"] = json!("paypal")
    })
    .await;
    let o3 = order(
        &stack,
        "USD",
        &[("vip", 1, "7.77"), ("gift", 1, "2.50")],
        |_| {},
    )
    .await;
    let o4 = order(&stack, "JPY", &[("vip", 3, "500")], |_| {}).await;
    let o5 = order(&stack, "JPY", &[("game", 1, "2000")], |_| {}).await;
    let pending = order(&stack, "USD", &[("vip", 1, "3.00")], |b| {
        b["payment_status"] = json!("pending")
    })
    .await;
    let at_the_end = order(&stack, "USD", &[("vip", 1, "9.99")], |_| {}).await;
    let before = order(&stack, "JPY", &[("vip", 1, "700")], |_| {}).await;
    for id in [&o1, &o2, &o3, &o4, &o5, &at_the_end, &before] {
        stack
            .wait_for_order(id, "completed", Duration::from_secs(30))
            .await;
    }
    refund(
        &stack,
        &o2,
        json!({ "amount": "5.00", "reason": "requested_by_customer" }),
    )
    .await;
    refund(&stack, &o4, json!({ "reason": "requested_by_customer" })).await;
    dispute(&stack, &o3, "10.27", "USD", "lost").await;
    dispute(&stack, &o1, "10.48", "USD", "won").await;
    // The API stamps `paid_at` with now: the test gives each order its day,
    // the range's edges included (`from` inclusive, `to` exclusive).
    let days = [
        (&o1, "2026-11-01T00:00:00Z"),
        (&o2, "2026-11-01T18:30:00Z"),
        (&o3, "2026-11-15T12:00:00Z"),
        (&o4, "2026-11-15T23:59:59Z"),
        (&o5, "2026-11-30T23:59:59.999Z"),
        (&at_the_end, "2026-12-01T00:00:00Z"),
        (&before, "2026-10-31T23:59:59.999Z"),
    ];
    for (id, at) in days {
        set_paid_at(&stack, id, at).await;
    }
    let mut paid = Vec::new();
    for (id, at) in days.into_iter().take(5) {
        let lost = if id == &o3 {
            "10.27".parse().expect("decimal")
        } else {
            Decimal::ZERO
        };
        paid.push(Paid {
            view: stack.order(id).await,
            paid_at: at,
            lost,
        });
    }
    assert_eq!(
        paid[1].view["refunded_amount"], "5.00",
        "{:#}",
        paid[1].view
    );
    assert!(paid[4].cost() > Decimal::ZERO, "the key was bought");
    let pending_view = stack.order(&pending).await;
    assert_eq!(pending_view["payment_status"], "pending");

    let day = summary(&stack, RANGE).await;
    assert_eq!(day["from"], "2026-11-01T00:00:00Z");
    assert_eq!(day["to"], "2026-12-01T00:00:00Z");
    assert_eq!(day["group_by"], "day");
    let expected = rows(
        &by_order(&paid, |p| p.paid_at[..10].to_owned()),
        |_, _, _| {},
    );
    assert_eq!(day["rows"], expected, "{:#}", day["rows"]);
    assert_eq!(day["rows"].as_array().map(Vec::len), Some(4));
    assert_eq!(day["totals"], totals(&paid));
    // A JPY cost of 3.25 is shown without decimals, the profit with it.
    let last = &day["rows"][3];
    assert_eq!(
        (&last["group"], &last["cost"], &last["profit"]),
        (&json!("2026-11-30"), &json!("3"), &json!("1997"))
    );

    let product = summary(&stack, &format!("{RANGE}&group_by=product")).await;
    let expected = rows(&by_product(&paid), |sku, _, m| {
        m.insert("product_name".into(), json!(format!("Product {sku}")));
    });
    assert_eq!(product["rows"], expected, "{:#}", product["rows"]);
    assert_eq!(product["totals"], totals(&paid));

    let currency = summary(&stack, &format!("{RANGE}&group_by=currency")).await;
    let expected = rows(&by_order(&paid, |p| p.currency()), |_, _, _| {});
    assert_eq!(currency["rows"], expected, "{:#}", currency["rows"]);

    let supplier = summary(&stack, &format!("{RANGE}&group_by=supplier")).await;
    let expected = rows(&by_supplier(&paid), |_, acc, m| {
        m.insert("keys".into(), json!(acc.keys));
    });
    assert_eq!(supplier["rows"], expected, "{:#}", supplier["rows"]);
    assert_eq!(supplier["totals"], totals(&paid));
    let groups: Vec<&str> = expected
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["group"].as_str())
        .collect();
    assert_eq!(
        groups,
        ["acme", "acme", "stock"],
        "bought in two currencies, and stock"
    );

    let week = summary(&stack, &format!("{RANGE}&group_by=week")).await;
    let weeks: Vec<&str> = week["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["group"].as_str())
        .collect();
    // Mondays (UTC): 1 November 2026 is a Sunday.
    assert_eq!(
        weeks,
        ["2026-10-26", "2026-11-09", "2026-11-09", "2026-11-30"]
    );
    assert_eq!(week["totals"], totals(&paid));
    stack.teardown().await;
}

#[tokio::test]
async fn bad_parameters_are_refused_by_name_and_the_summary_is_for_admins() {
    let stack = TestStack::start_with(|_| {}, false).await;
    for (query, field) in [
        ("group_by=year", "group_by"),
        ("from=yesterday", "from"),
        ("to=2026-02-30", "to"),
        ("from=2026-11-02&to=2026-11-01", "to"),
        ("from=2026-11-01&to=2026-11-01", "to"),
        ("from=2025-01-01&to=2026-06-01", "to"),
        ("from=0001-01-01&group_by=month", "from"),
    ] {
        let (status, body) = stack
            .call(Method::GET, &format!("/v1/reports/summary?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed", "{query}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    let (status, body) = stack
        .call(Method::GET, "/v1/reports/summary?year=2026", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_query");

    // Longer ranges by week or month; the default is the last 30 days.
    let long = summary(&stack, "from=2025-01-01&to=2026-06-01&group_by=month").await;
    assert_eq!(long["rows"], json!([]));
    assert_eq!(long["totals"], json!([]));
    let recent = summary(&stack, "").await;
    let bound = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("time")).expect("rfc 3339")
    };
    assert_eq!(
        bound(&recent["to"]) - bound(&recent["from"]),
        chrono::Duration::days(30)
    );
    assert_eq!(recent["group_by"], "day");

    let reader = "ck_test_reader_reports_0123456789";
    courier_shared::db::api_keys::insert(&stack.pool, "reader", reader, &["orders:read".into()])
        .await
        .expect("key");
    let (status, body) = stack
        .call_as(reader, Method::GET, "/v1/reports/summary", None, &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    stack.teardown().await;
}

/// `order_items.key_cost`, which the summary sums, follows the item's keys
/// through every change: a key bought, one from stock (no cost), a price
/// corrected, a key given back to stock, a key deleted, a key moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_items_key_cost_follows_its_keys() {
    let stack = TestStack::start_with(|_| {}, false).await;
    stack
        .add_product("k", json!([{ "kind": "supplier_key", "stock_only": true }]))
        .await;
    let mut body = courier_tests::stack::sample_order("k", "steve");
    body["items"]
        .as_array_mut()
        .expect("items")
        .push(json!({ "product": "k", "quantity": 1, "unit_price": "1.00" }));
    let (status, o) = stack.call(Method::POST, "/v1/orders", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{o}");
    let a = o["items"][0]["id"].as_str().expect("item").to_owned();
    let b = o["items"][1]["id"].as_str().expect("item").to_owned();
    let cost_of = |item: String| {
        let pool = stack.pool.clone();
        async move {
            sqlx::query_scalar::<_, Decimal>("SELECT key_cost FROM order_items WHERE id = $1::uuid")
                .bind(item)
                .fetch_one(&pool)
                .await
                .expect("key cost")
        }
    };
    let run = |sql: &'static str, item: &str| {
        let pool = stack.pool.clone();
        let item = item.to_owned();
        async move {
            sqlx::query(sql)
                .bind(item)
                .execute(&pool)
                .await
                .expect("statement");
        }
    };
    let d = |s: &str| s.parse::<Decimal>().expect("decimal");
    run("INSERT INTO item_keys (item_id, code_enc, source, cost) VALUES ($1::uuid, '\\x00', 'supplier', 4.25)", &a).await;
    run("INSERT INTO item_keys (item_id, code_enc, source, cost) VALUES ($1::uuid, '\\x01', 'supplier', 1.50)", &a).await;
    run(
        "INSERT INTO item_keys (item_id, code_enc, source) VALUES ($1::uuid, '\\x02', 'stock')",
        &a,
    )
    .await;
    assert_eq!(cost_of(a.clone()).await, d("5.75"));
    run(
        "UPDATE item_keys SET cost = 2.00 WHERE item_id = $1::uuid AND cost = 1.50",
        &a,
    )
    .await;
    assert_eq!(cost_of(a.clone()).await, d("6.25"));
    run(
        "UPDATE item_keys SET released_at = now() WHERE item_id = $1::uuid AND cost = 4.25",
        &a,
    )
    .await;
    assert_eq!(
        cost_of(a.clone()).await,
        d("2.00"),
        "a key given back costs nothing"
    );
    run(
        "UPDATE item_keys SET cost = 9.00 WHERE item_id = $1::uuid AND released_at IS NOT NULL",
        &a,
    )
    .await;
    assert_eq!(cost_of(a.clone()).await, d("2.00"));
    sqlx::query("UPDATE item_keys SET item_id = $2::uuid WHERE item_id = $1::uuid AND cost = 2.00")
        .bind(&a)
        .bind(&b)
        .execute(&stack.pool)
        .await
        .expect("move");
    assert_eq!(cost_of(a.clone()).await, d("0"));
    assert_eq!(cost_of(b.clone()).await, d("2.00"));
    run("DELETE FROM item_keys WHERE item_id = $1::uuid", &b).await;
    assert_eq!(cost_of(b.clone()).await, d("0"));
    stack.teardown().await;
}
