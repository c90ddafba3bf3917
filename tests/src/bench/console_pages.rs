//! The admin console's pages on the `orders` data set (a million orders by
//! default): each page timed one request after another with a signed-in
//! session, as a member of staff clicks through them. The console issue's
//! budget is about 200 ms of server time per page.

use std::time::Instant;

use super::orders::Case;
use super::percentile;

/// A page to time: its name, and its path for the `i`-th sample.
type PagePath<'a> = (&'a str, Box<dyn Fn(usize) -> String + 'a>);

/// Signs in with `key` and times every console page `samples` times (after
/// one warm-up request each). `picks` are real orders: (number, e-mail, name).
pub async fn cases(
    base: &str,
    key: &str,
    picks: &[(String, String, String)],
    samples: usize,
) -> anyhow::Result<Vec<Case>> {
    anyhow::ensure!(!picks.is_empty(), "no orders to open");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = http
        .post(format!("{base}/admin/login"))
        .form(&[("key", key), ("next", "/admin/orders")])
        .send()
        .await?;
    anyhow::ensure!(
        login.status() == reqwest::StatusCode::SEE_OTHER,
        "console sign-in answered {}",
        login.status()
    );
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
        .to_owned();
    let pick = |i: usize| &picks[i % picks.len()];
    let pages: Vec<PagePath> = vec![
        ("/admin/orders", Box::new(|_| "/admin/orders".into())),
        (
            "/admin/orders?status=failed",
            Box::new(|_| "/admin/orders?status=failed".into()),
        ),
        (
            "/admin/orders?has=failures",
            Box::new(|_| "/admin/orders?has=failures".into()),
        ),
        (
            "/admin/orders?sort=total&order=asc",
            Box::new(|_| "/admin/orders?sort=total&order=asc".into()),
        ),
        (
            "/admin/orders?q=<part of an order number>",
            Box::new(move |i| format!("/admin/orders?q={}", pick(i).0[4..11].to_lowercase())),
        ),
        (
            "/admin/orders/<a number>",
            Box::new(move |i| format!("/admin/orders/{}", pick(i).0)),
        ),
        ("/admin/failures", Box::new(|_| "/admin/failures".into())),
        (
            "/admin/failures/retry (the count)",
            Box::new(|_| "/admin/failures/retry".into()),
        ),
        (
            "/admin/alerts",
            Box::new(|_| "/admin/alerts?state=all".into()),
        ),
        ("/admin/reports", Box::new(|_| "/admin/reports".into())),
        (
            "/admin/reports?group_by=product",
            Box::new(|_| "/admin/reports?group_by=product".into()),
        ),
        ("/admin/products", Box::new(|_| "/admin/products".into())),
        (
            "/admin/products/edit?sku=sku-0",
            Box::new(|_| "/admin/products/edit?sku=sku-0".into()),
        ),
        ("/admin/webhooks", Box::new(|_| "/admin/webhooks".into())),
    ];
    let mut out = Vec::with_capacity(pages.len());
    for (name, path) in &pages {
        let mut took = Vec::with_capacity(samples);
        let mut bytes = 0;
        for i in 0..=samples {
            let url = format!("{base}{}", path(i));
            let t = Instant::now();
            let r = http.get(&url).header("cookie", &cookie).send().await?;
            let status = r.status();
            let body = r.bytes().await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(status.is_success(), "{url}: {status}");
            if i == 0 {
                continue; // warm
            }
            took.push(ms);
            bytes = bytes.max(body.len());
        }
        took.sort_by(f64::total_cmp);
        out.push(Case {
            name: (*name).to_owned(),
            p50_ms: percentile(&took, 0.5),
            p99_ms: percentile(&took, 0.99),
            max_ms: took.last().copied().unwrap_or(0.0),
            // For a page: its size in KiB.
            rows: bytes / 1024,
        });
    }
    Ok(out)
}
