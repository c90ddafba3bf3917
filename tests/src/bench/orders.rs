//! `courier-bench orders`: the staff's order list on a store's history.
//!
//! Seeds `--orders` orders (default 1,000,000) into a database of its own,
//! `courier_bench_orders`, kept between runs (seeding takes minutes; `--reseed`
//! starts again), generated in SQL with a realistic spread: two years of
//! orders, 90 % completed, a few failed, refunded, pending; five products on
//! two game servers; names, e-mails and game usernames from small pools.
//! Then, against an in-process API on that database, it times `GET
//! /v1/orders` one request after another: every sort in both directions,
//! each filter, and searches by partial order number, e-mail and name (a
//! different value each time), and prints p50/p99/max per case and the
//! slowest single request. Then `GET /v1/reports/summary` for one whole
//! month by day and by product (a different month of the last twelve each
//! time). For the reports the seed also gives two products' items a key
//! each (two suppliers with a cost, and own stock without one) and a
//! closed dispute to one paid order in 500 (two in three lost); a database
//! seeded before that gets them once, on its next run.

use std::time::Instant;

use chrono::Datelike;
use courier_shared::config::Secret;
use serde::Serialize;
use sqlx::{Connection, PgConnection};

use super::percentile;
use crate::stack::{replace_db, test_settings};

const DB: &str = "courier_bench_orders";

#[derive(Debug, Clone, Serialize)]
pub struct OrdersArgs {
    pub orders: i64,
    pub samples: usize,
    pub reseed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub name: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub rows: usize,
}

/// One whole export through a separate API process.
#[derive(Debug, Clone, Serialize)]
pub struct ExportFigure {
    pub format: String,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub rows_per_s: f64,
    /// The API process's peak RSS (VmHWM) once this export ended.
    pub api_peak_rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrdersReport {
    pub params: OrdersArgs,
    pub orders_in_table: i64,
    pub seed_seconds: Option<f64>,
    pub cases: Vec<Case>,
    pub worst_p99_ms: f64,
    pub export: Vec<ExportFigure>,
    /// `GET /v1/reports/summary` for one month.
    pub reports: Vec<Case>,
    /// The query of the slowest single request (EXPLAIN it by hand).
    pub slowest_case: String,
    /// The console's pages (`rows`: the page's size in KiB).
    pub console: Vec<Case>,
    pub console_worst_p99_ms: f64,
}

impl OrdersReport {
    pub fn print(&self) {
        println!(
            "orders in the table: {}{}",
            self.orders_in_table,
            self.seed_seconds
                .map(|s| format!(" (seeded in {s:.0} s)"))
                .unwrap_or_default()
        );
        println!(
            "{:<52} {:>8} {:>8} {:>8} {:>5}",
            "GET /v1/orders?…", "p50 ms", "p99 ms", "max ms", "rows"
        );
        for c in &self.cases {
            println!(
                "{:<52} {:>8.2} {:>8.2} {:>8.2} {:>5}",
                c.name, c.p50_ms, c.p99_ms, c.max_ms, c.rows
            );
        }
        println!("worst p99: {:.2} ms", self.worst_p99_ms);
        println!(
            "{:<52} {:>8} {:>8} {:>8} {:>5}",
            "GET /v1/reports/summary?…", "p50 ms", "p99 ms", "max ms", "rows"
        );
        for c in &self.reports {
            println!(
                "{:<52} {:>8.2} {:>8.2} {:>8.2} {:>5}",
                c.name, c.p50_ms, c.p99_ms, c.max_ms, c.rows
            );
        }
        for e in &self.export {
            println!(
                "export {}: {} rows, {:.1} MiB in {:.1} s = {:.0} rows/s; api peak RSS {:.1} MiB",
                e.format,
                e.rows,
                e.bytes as f64 / 1048576.0,
                e.seconds,
                e.rows_per_s,
                e.api_peak_rss_mib
            );
        }
        println!("slowest single request: {}", self.slowest_case);
        println!(
            "{:<52} {:>8} {:>8} {:>8} {:>5}",
            "console page (signed in)", "p50 ms", "p99 ms", "max ms", "KiB"
        );
        for c in &self.console {
            println!(
                "{:<52} {:>8.2} {:>8.2} {:>8.2} {:>5}",
                c.name, c.p50_ms, c.p99_ms, c.max_ms, c.rows
            );
        }
        println!("console worst p99: {:.2} ms", self.console_worst_p99_ms);
    }
}

/// The seed: orders, one item each (a fifth with two), one delivery per item.
/// `$1` first order number, `$2` last, `$3` how many in all (the newest is
/// now, one order every 63 s before it: two years for a million); the
/// catalog is created before.
const SEED_BATCH: &str = "\
WITH names AS (SELECT ARRAY['Alex','Sam','Jordan','Taylor','Morgan','Casey','Riley','Jamie','Avery','Quinn',\
    'Zoë','Chloé','Mateo','Lukas','Ingrid','Aiko','Priya','Omar','Fatima','Chen'] AS first, \
    ARRAY['Smith','Jones','García','Müller','Rossi','Dubois','Kowalski','Nakamura','Singh','Okafor',\
    'Silva','Novak','Larsen','Ivanova','Kim','Haddad','Murphy','Schmidt','Moreau','Santos',\
    'Andersen','Petrov','Yilmaz','Costa','Nguyen'] AS last, \
    ARRAY['example.com','mail.test','gamers.example','shop.test'] AS domain), \
gen AS (SELECT i, \
    'ORD-' || upper(lpad(to_hex((i * 2654435761) % 1099511627776), 10, '0')) AS number, \
    first[1 + i % 20] AS f, last[1 + (i / 20) % 25] AS l, domain[1 + i % 4] AS d, \
    (ARRAY['completed','completed','completed','completed','completed','completed','completed','completed', \
      'completed','failed','refunded','processing','pending','partially_refunded','cancelled'])[1 + (i * 7) % 15] AS status, \
    round((1 + (i * 37) % 9900) / 100.0, 2) AS price, \
    (ARRAY['USD','USD','USD','EUR','GBP'])[1 + (i * 31 % 97) % 5] AS currency, \
    (ARRAY['stripe','stripe','stripe','paypal','tebex'])[1 + (i * 17 % 89) % 5] AS gateway, \
    now() - (($3::bigint - i) * interval '63 seconds') AS at \
  FROM names, generate_series($1::bigint, $2::bigint) AS i), \
o AS (INSERT INTO orders (id, order_number, status, payment_status, gateway, transaction_id, customer_name, \
    customer_email, game_username, currency, subtotal, tax, total, created_at, updated_at, paid_at, completed_at, \
    item_names, refunded_amount) \
  SELECT md5('o' || i)::uuid, number, status, \
    CASE status WHEN 'refunded' THEN 'refunded' WHEN 'partially_refunded' THEN 'partially_refunded' \
      WHEN 'pending' THEN 'pending' ELSE 'paid' END, \
    gateway, 'tx_' || md5('t' || i), f || ' ' || l, lower(f || '.' || l || (i % 1000)) || '@' || d, \
    lower(f) || '_' || (i % 5000), currency, price, 0, price, at, at, \
    CASE WHEN status <> 'pending' THEN at + interval '2 seconds' END, \
    CASE WHEN status IN ('completed','refunded','partially_refunded') THEN at + interval '3 seconds' END, \
    (SELECT name FROM products WHERE sku = 'sku-' || (i % 5)), \
    CASE status WHEN 'refunded' THEN price WHEN 'partially_refunded' THEN round(price / 2, 2) ELSE 0 END \
  FROM gen RETURNING id, status, total), \
it AS (INSERT INTO order_items (id, order_id, position, product_id, sku, product_name, quantity, unit_price, total, \
    delivery_status) \
  SELECT md5('i' || o.id)::uuid, o.id, 0, p.id, p.sku, p.name, 1, o.total, o.total, \
    CASE o.status WHEN 'completed' THEN 'delivered' WHEN 'failed' THEN 'failed' WHEN 'pending' THEN 'pending' \
      WHEN 'processing' THEN 'processing' ELSE 'revoked' END \
  FROM o JOIN gen g ON md5('o' || g.i)::uuid = o.id JOIN products p ON p.sku = 'sku-' || (g.i % 5) \
  RETURNING id, order_id, product_id, delivery_status) \
INSERT INTO deliveries (id, order_id, item_id, kind, target, payload, status, attempts, purpose, created_at, updated_at) \
SELECT md5('d' || it.id)::uuid, it.order_id, it.id, 'rcon', (pa.config->>'game_server_id'), '{}'::jsonb, \
  CASE it.delivery_status WHEN 'delivered' THEN 'succeeded' WHEN 'failed' THEN 'dead' WHEN 'pending' THEN 'queued' \
    WHEN 'processing' THEN 'running' ELSE 'succeeded' END, 1, 'deliver', now(), now() \
FROM it JOIN product_actions pa ON pa.product_id = it.product_id AND pa.position = 0";

/// What the reports need besides orders: a key for each item of `sku-1`
/// and `sku-3` (a third from stock without a cost, the rest bought from
/// `kinguin` or `g2a` at 55 % of the price, obtained just after payment),
/// and a dispute closed 40 days after payment on one paid order in 500,
/// two in three lost.
const SEED_REPORTS: &[&str] = &[
    "INSERT INTO item_keys (item_id, code_enc, source, supplier, cost, created_at) \
     SELECT i.id, '\\x00'::bytea, \
       CASE WHEN abs(hashtext(i.id::text)) % 3 = 0 THEN 'stock' ELSE 'supplier' END, \
       (ARRAY[NULL, 'kinguin', 'g2a'])[1 + abs(hashtext(i.id::text)) % 3], \
       CASE WHEN abs(hashtext(i.id::text)) % 3 <> 0 THEN round(i.unit_price * 0.55, 2) END, \
       coalesce(o.paid_at, o.created_at) + interval '5 seconds' \
     FROM order_items i JOIN orders o ON o.id = i.order_id WHERE i.sku IN ('sku-1', 'sku-3')",
    "INSERT INTO disputes (id, order_id, external_id, amount, currency, reason, gateway_status, \
       outcome, created_at, closed_at) \
     SELECT md5('dp' || o.id)::uuid, o.id, 'dp_' || o.order_number, o.total, o.currency, 'fraudulent', \
       CASE WHEN abs(hashtext(o.id::text)) % 3 = 0 THEN 'won' ELSE 'lost' END, \
       CASE WHEN abs(hashtext(o.id::text)) % 3 = 0 THEN 'won' ELSE 'lost' END, \
       o.paid_at + interval '20 days', o.paid_at + interval '40 days' \
     FROM orders o WHERE o.paid_at IS NOT NULL AND abs(hashtext(o.id::text)) % 500 = 0",
    "ANALYZE item_keys",
    "ANALYZE disputes",
];

/// Adds the reports' keys and disputes once (a database seeded before
/// they existed gets them on its next run).
async fn seed_reports(conn: &mut PgConnection) -> anyhow::Result<()> {
    let have: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM item_keys)")
        .fetch_one(&mut *conn)
        .await?;
    if have {
        return Ok(());
    }
    eprintln!("  adding keys and disputes for the reports");
    for sql in SEED_REPORTS {
        sqlx::query(*sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The first instant of each of the last `n` whole months (UTC), newest first.
fn months(n: u32) -> Vec<(String, String)> {
    let today = chrono::Utc::now().date_naive();
    let this = today.with_day(1).unwrap_or(today);
    (1..=n)
        .filter_map(|k| {
            let from = this.checked_sub_months(chrono::Months::new(k))?;
            let to = this.checked_sub_months(chrono::Months::new(k - 1))?;
            Some((from.to_string(), to.to_string()))
        })
        .collect()
}

/// p50/p99 of a one-month summary per grouping, one request after another.
async fn report_cases(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    samples: usize,
) -> anyhow::Result<Vec<Case>> {
    let months = months(12);
    anyhow::ensure!(!months.is_empty(), "no month to report on");
    let mut cases = Vec::new();
    for group in ["day", "product"] {
        let mut took = Vec::with_capacity(samples);
        let mut rows = 0;
        for (i, (from, to)) in months.iter().cycle().take(samples + 1).enumerate() {
            let url = format!("{base}/v1/reports/summary?from={from}&to={to}&group_by={group}");
            let t = Instant::now();
            let r = http.get(&url).bearer_auth(key).send().await?;
            anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
            let body: serde_json::Value = r.json().await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if i == 0 {
                continue; // warm
            }
            took.push(ms);
            rows = rows.max(body["rows"].as_array().map_or(0, Vec::len));
        }
        took.sort_by(f64::total_cmp);
        cases.push(Case {
            name: format!("group_by={group} (one month)"),
            p50_ms: percentile(&took, 0.5),
            p99_ms: percentile(&took, 0.99),
            max_ms: took.last().copied().unwrap_or(0.0),
            rows,
        });
    }
    Ok(cases)
}

async fn seed(conn: &mut PgConnection, n: i64) -> anyhow::Result<()> {
    let batch = 50_000;
    let mut from = 1;
    let started = Instant::now();
    while from <= n {
        let to = (from + batch - 1).min(n);
        sqlx::query(SEED_BATCH)
            .bind(from)
            .bind(to)
            .bind(n)
            .execute(&mut *conn)
            .await?;
        eprintln!(
            "  seeded {to} of {n} orders ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        from = to + 1;
    }
    sqlx::query("ANALYZE").execute(&mut *conn).await?;
    Ok(())
}

pub async fn run(args: OrdersArgs) -> anyhow::Result<OrdersReport> {
    let (mut settings, _) = test_settings();
    let url = replace_db(settings.database.url.expose(), DB);
    let admin_url = replace_db(&url, "postgres");
    let mut admin = PgConnection::connect(&admin_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DB)
            .fetch_one(&mut admin)
            .await?;
    if args.reseed && exists {
        sqlx::query(concat!(
            "DROP DATABASE ",
            "courier_bench_orders",
            " WITH (FORCE)"
        ))
        .execute(&mut admin)
        .await?;
    }
    if args.reseed || !exists {
        sqlx::query(concat!("CREATE DATABASE ", "courier_bench_orders"))
            .execute(&mut admin)
            .await?;
    }
    settings.database.url = Secret::new(url.clone());
    settings.database.max_connections = 4;
    // The in-process API migrates the database and registers the admin key.
    let api = courier_api::startup::start(&settings).await?;
    let key = settings
        .api
        .bootstrap_admin_key
        .as_ref()
        .map(|k| k.expose().to_owned())
        .unwrap_or_default();
    let base = format!("http://{}", api.addr);
    let http = reqwest::Client::new();
    let mut conn = PgConnection::connect(&url).await?;
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut conn)
        .await?;
    let mut seed_seconds = None;
    if have < args.orders {
        let started = Instant::now();
        let catalog = serde_json::json!({
            "game_servers": {
                "survival": { "host": "127.0.0.1", "port": 25575, "password": "pw", "dialect": "minecraft" },
                "creative": { "host": "127.0.0.1", "port": 25576, "password": "pw", "dialect": "minecraft" },
            }
        });
        for (name, body) in catalog["game_servers"].as_object().into_iter().flatten() {
            http.put(format!("{base}/v1/game-servers/{name}"))
                .bearer_auth(&key)
                .json(body)
                .send()
                .await?
                .error_for_status()?;
        }
        for (i, name) in [
            "VIP rank",
            "Diamond kit",
            "Starter pack",
            "Pet dragon",
            "Island upgrade",
        ]
        .iter()
        .enumerate()
        {
            let server = if i % 2 == 0 { "survival" } else { "creative" };
            http.put(format!("{base}/v1/products/sku-{i}"))
                .bearer_auth(&key)
                .json(&serde_json::json!({
                    "name": name,
                    "actions": [{ "kind": "rcon", "game_server": server, "command": "give {username} x" }]
                }))
                .send()
                .await?
                .error_for_status()?;
        }
        sqlx::query("TRUNCATE orders CASCADE")
            .execute(&mut conn)
            .await?;
        seed(&mut conn, args.orders).await?;
        seed_seconds = Some(started.elapsed().as_secs_f64());
    }
    seed_reports(&mut conn).await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut conn)
        .await?;
    // Values for searches: real order numbers, e-mails and names, cut.
    let picks: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT order_number, customer_email, customer_name FROM orders TABLESAMPLE SYSTEM (1) LIMIT 2000",
    )
    .fetch_all(&mut conn)
    .await?;
    anyhow::ensure!(!picks.is_empty(), "no orders to search for");

    let week_ago = (chrono::Utc::now() - chrono::Duration::days(7))
        .to_rfc3339()
        .replace('+', "%2B");
    let mut fixed: Vec<(String, String)> = Vec::new();
    for sort in [
        "created",
        "total",
        "order_number",
        "payment_status",
        "status",
    ] {
        for dir in ["desc", "asc"] {
            fixed.push((
                format!("sort={sort}&order={dir}"),
                format!("sort={sort}&order={dir}"),
            ));
        }
    }
    for q in [
        "status=failed".to_owned(),
        "status=pending,processing".to_owned(),
        "payment_status=refunded".to_owned(),
        "has=failures".to_owned(),
        "gateway=tebex".to_owned(),
        "currency=GBP".to_owned(),
        "sku=sku-3".to_owned(),
        "game_server=creative".to_owned(),
        "min_total=50&max_total=60".to_owned(),
        "min_total=98&sort=total".to_owned(),
        format!("created_from={week_ago}"),
        "status=failed&sort=total&order=asc".to_owned(),
        "currency=EUR&gateway=paypal&status=completed".to_owned(),
    ] {
        fixed.push((q.clone(), q));
    }
    let mut cases = Vec::new();
    let mut slowest: Option<(f64, String)> = None;
    let time = |path: String| {
        let http = http.clone();
        let url = format!("{base}/v1/orders?limit=50&{path}");
        let key = key.clone();
        async move {
            let t = Instant::now();
            let r = http.get(&url).bearer_auth(&key).send().await?;
            anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
            let body: serde_json::Value = r.json().await?;
            Ok::<_, anyhow::Error>((
                t.elapsed().as_secs_f64() * 1000.0,
                body["orders"].as_array().map_or(0, Vec::len),
            ))
        }
    };
    for (name, path) in &fixed {
        let mut took = Vec::with_capacity(args.samples);
        let mut rows = 0;
        time(path.clone()).await?; // warm
        for _ in 0..args.samples {
            let (ms, n) = time(path.clone()).await?;
            took.push(ms);
            rows = n;
        }
        took.sort_by(f64::total_cmp);
        let case = Case {
            name: name.clone(),
            p50_ms: percentile(&took, 0.5),
            p99_ms: percentile(&took, 0.99),
            max_ms: took.last().copied().unwrap_or(0.0),
            rows,
        };
        if slowest.as_ref().is_none_or(|(p, _)| case.p99_ms > *p) {
            slowest = Some((case.p99_ms, path.clone()));
        }
        cases.push(case);
    }
    for (what, cut) in [
        ("q=<part of an order number>", 0usize),
        ("q=<part of an e-mail>", 1),
        ("q=<part of a name>", 2),
    ] {
        let mut took = Vec::with_capacity(args.samples);
        let mut rows = 0;
        for (i, (number, email, name)) in picks.iter().cycle().take(args.samples + 1).enumerate() {
            let q = match cut {
                0 => number[4..11].to_lowercase(),
                1 => email.split('@').next().unwrap_or(email).to_owned(),
                _ => name.split(' ').next_back().unwrap_or(name).to_owned(),
            };
            let path = format!("q={}", urlencode(&q));
            let (ms, n) = time(path.clone()).await?;
            if i == 0 {
                continue; // warm
            }
            took.push(ms);
            rows = rows.max(n);
            if slowest.as_ref().is_none_or(|(p, _)| ms > *p) {
                slowest = Some((ms, path));
            }
        }
        took.sort_by(f64::total_cmp);
        cases.push(Case {
            name: what.to_owned(),
            p50_ms: percentile(&took, 0.5),
            p99_ms: percentile(&took, 0.99),
            max_ms: took.last().copied().unwrap_or(0.0),
            rows,
        });
    }
    let worst = cases.iter().map(|c| c.p99_ms).fold(0.0, f64::max);
    let slowest_case = match slowest {
        Some((ms, path)) => format!("GET /v1/orders?limit=50&{path} ({ms:.1} ms)"),
        None => String::new(),
    };
    let reports = report_cases(&http, &base, &key, args.samples).await?;
    let console = super::console_pages::cases(&base, &key, &picks, args.samples).await?;
    let console_worst = console.iter().map(|c| c.p99_ms).fold(0.0, f64::max);
    api.stop().await;
    let export = export_figures(&settings, &key, total).await?;
    Ok(OrdersReport {
        params: args,
        orders_in_table: total,
        seed_seconds,
        cases,
        worst_p99_ms: worst,
        export,
        reports,
        slowest_case,
        console,
        console_worst_p99_ms: console_worst,
    })
}

/// Both formats, whole, from a separate `courier-api` process (so the peak
/// RSS is the API's own), reading the body as it streams.
async fn export_figures(
    settings: &courier_shared::config::Settings,
    key: &str,
    total: i64,
) -> anyhow::Result<Vec<ExportFigure>> {
    use tokio::io::AsyncBufReadExt;
    let bin = super::procs::binary(&super::procs::bin_dir()?, "courier-api-process")?;
    let mut child = tokio::process::Command::new(bin)
        .envs(crate::stack::process_env(settings))
        .env("COURIER__API__BIND", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or_default();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        match lines.next_line().await? {
            Some(l) => {
                if let Some(a) = l.strip_prefix("listening ") {
                    break a.to_owned();
                }
            }
            None => anyhow::bail!("the api process exited before listening"),
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http = reqwest::Client::new();
    let mut figures = Vec::new();
    for format in ["csv", "xlsx"] {
        let started = Instant::now();
        let mut r = http
            .get(format!("http://{addr}/v1/orders/export?format={format}"))
            .bearer_auth(key)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "export {format}: {}", r.status());
        let (mut bytes, mut newlines) = (0u64, 0u64);
        while let Some(chunk) = r.chunk().await? {
            bytes += chunk.len() as u64;
            newlines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
        let seconds = started.elapsed().as_secs_f64();
        let rows = if format == "csv" {
            newlines.saturating_sub(1)
        } else {
            total as u64
        };
        figures.push(ExportFigure {
            format: format.to_owned(),
            rows,
            bytes,
            seconds,
            rows_per_s: rows as f64 / seconds,
            api_peak_rss_mib: super::procs::peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
        });
    }
    let _ = child.kill().await;
    Ok(figures)
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
