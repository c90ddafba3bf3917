//! Customer e-mail over SMTP (`lettre`, STARTTLS or implicit TLS with
//! rustls). A message is rendered when it is sent, from the order as it is
//! then, with the store's templates: plain text and HTML of
//! `order_confirmation`, `refund` and `delivery_instructions` (the resend:
//! codes, delivery notes, access instructions). Built-in templates are in
//! `worker/templates/email/`; `email.templates_dir` replaces any of them.
//!
//! The SMTP server's answer decides: accepted is done; a 5xx refusal is
//! permanent (dead, with the server's words); a 4xx, a timeout or a broken
//! connection is tried again on the `retry.email` schedule.

use std::time::Duration;

use anyhow::Context as _;
use courier_shared::config::EmailSettings;
use courier_shared::crypto::KeyCipher;
use courier_shared::domain::download::LinkSigner;
use courier_shared::error::ErrorClass;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{DriverOutcome, full_error, transient};

/// Every template, and its built-in subject, text and HTML.
const TEMPLATES: &[(&str, [&str; 3])] = &[
    (
        "order_confirmation",
        [
            include_str!("../../templates/email/order_confirmation.subject"),
            include_str!("../../templates/email/order_confirmation.txt"),
            include_str!("../../templates/email/order_confirmation.html"),
        ],
    ),
    (
        "refund",
        [
            include_str!("../../templates/email/refund.subject"),
            include_str!("../../templates/email/refund.txt"),
            include_str!("../../templates/email/refund.html"),
        ],
    ),
    (
        "keys",
        [
            include_str!("../../templates/email/keys.subject"),
            include_str!("../../templates/email/keys.txt"),
            include_str!("../../templates/email/keys.html"),
        ],
    ),
    (
        "downloads",
        [
            include_str!("../../templates/email/downloads.subject"),
            include_str!("../../templates/email/downloads.txt"),
            include_str!("../../templates/email/downloads.html"),
        ],
    ),
    (
        "delivery_instructions",
        [
            include_str!("../../templates/email/delivery_instructions.subject"),
            include_str!("../../templates/email/delivery_instructions.txt"),
            include_str!("../../templates/email/delivery_instructions.html"),
        ],
    ),
];

const PARTS: [&str; 3] = ["subject", "txt", "html"];

/// What an e-mail delivery's payload holds (written by the migration's
/// `courier_email_emit` and by the resend route).
#[derive(Debug, Deserialize)]
struct Payload {
    template: String,
    to: String,
    #[serde(default)]
    extra: Value,
}

pub struct EmailDriver {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Option<Mailbox>,
    reply_to: Option<Mailbox>,
    store: String,
    templates: minijinja::Environment<'static>,
    cipher: Option<KeyCipher>,
    /// Signs the download links put in e-mails; `None` without `downloads.signing_key`.
    signer: Option<LinkSigner>,
}

/// The templates: built-in, each part replaced by `<dir>/<name>.<part>` when
/// that file exists. Every one is parsed here, so a broken override stops
/// the worker at start, naming the file.
pub fn templates(dir: Option<&str>) -> anyhow::Result<minijinja::Environment<'static>> {
    let mut env = minijinja::Environment::new();
    // `.html` templates are escaped for HTML (minijinja's default by name).
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    for (name, parts) in TEMPLATES {
        for (part, builtin) in PARTS.iter().zip(parts) {
            let file = format!("{name}.{part}");
            let source = match dir {
                Some(d) => {
                    let path = std::path::Path::new(d).join(&file);
                    match std::fs::read_to_string(&path) {
                        Ok(s) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (*builtin).to_owned(),
                        Err(e) => {
                            return Err(e)
                                .with_context(|| format!("email template {}", path.display()));
                        }
                    }
                }
                None => (*builtin).to_owned(),
            };
            env.add_template_owned(file.clone(), source)
                .with_context(|| format!("email template {file}"))?;
        }
    }
    Ok(env)
}

impl EmailDriver {
    pub fn new(
        settings: &EmailSettings,
        cipher: Option<KeyCipher>,
        signer: Option<LinkSigner>,
    ) -> anyhow::Result<Self> {
        let templates = templates(settings.templates_dir.as_deref())?;
        if !settings.enabled {
            return Ok(EmailDriver {
                transport: None,
                from: None,
                reply_to: None,
                store: settings.store_name.clone(),
                templates,
                cipher,
                signer,
            });
        }
        let host = settings.smtp_host.as_str();
        let mut builder = match settings.smtp_security.as_str() {
            "tls" => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(host).context("email.smtp_host")?
            }
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .context("email.smtp_host")?,
            _ => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        }
        .port(settings.smtp_port)
        .timeout(Some(Duration::from_millis(settings.timeout_ms)));
        if let (Some(user), Some(password)) = (&settings.smtp_username, &settings.smtp_password) {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        let from: Mailbox = settings.from.parse().context("email.from")?;
        let reply_to = settings
            .reply_to
            .as_deref()
            .map(str::parse::<Mailbox>)
            .transpose()
            .context("email.reply_to")?;
        Ok(EmailDriver {
            transport: Some(builder.build()),
            from: Some(from),
            reply_to,
            store: settings.store_name.clone(),
            templates,
            cipher,
            signer,
        })
    }

    /// A plain-text message to `to` (admin alerts).
    pub async fn send_text(&self, to: &[&str], subject: &str, text: &str) -> DriverOutcome {
        let (Some(transport), Some(from)) = (&self.transport, &self.from) else {
            return DriverOutcome::permanent(
                "e-mail is off on this worker (email.enabled = false): turn it on, then retry",
            );
        };
        let mut builder = Message::builder().from(from.clone()).subject(subject);
        if to.is_empty() {
            return DriverOutcome::permanent("alerts.email_to names no address");
        }
        for address in to {
            match address.parse::<Mailbox>() {
                Ok(m) => builder = builder.to(m),
                Err(e) => {
                    return DriverOutcome::permanent(format!(
                        "`{}` is not an e-mail address: {e}",
                        courier_shared::domain::clip(address, 200)
                    ));
                }
            }
        }
        let message = match builder.body(text.to_owned()) {
            Ok(m) => m,
            Err(e) => return DriverOutcome::permanent(format!("the message cannot be built: {e}")),
        };
        send(transport, message).await
    }

    pub async fn run(&self, pool: &PgPool, order_id: Uuid, payload: &Value) -> DriverOutcome {
        let (Some(transport), Some(from)) = (&self.transport, &self.from) else {
            return DriverOutcome::permanent(
                "e-mail is off on this worker (email.enabled = false): turn it on, then retry",
            );
        };
        let p: Payload = match serde_json::from_value(payload.clone()) {
            Ok(p) => p,
            Err(e) => return DriverOutcome::permanent(format!("invalid e-mail payload: {e}")),
        };
        let to: Mailbox = match p.to.parse() {
            Ok(m) => m,
            Err(e) => {
                return DriverOutcome::permanent(format!(
                    "`{}` is not an e-mail address: {e}",
                    courier_shared::domain::clip(&p.to, 200)
                ));
            }
        };
        let context = match self.context(pool, order_id, &p).await {
            Ok(c) => c,
            Err(sqlx::Error::Configuration(e)) => return DriverOutcome::permanent(e.to_string()),
            Err(e) => return transient(format!("the order could not be read: {e}")),
        };
        let render = |part: &str| {
            self.templates
                .get_template(&format!("{}.{part}", p.template))
                .and_then(|t| t.render(&context))
        };
        let (subject, text, html) = match (render("subject"), render("txt"), render("html")) {
            (Ok(s), Ok(t), Ok(h)) => (s, t, h),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return DriverOutcome::permanent(format!(
                    "template `{}` cannot be rendered: {e}",
                    p.template
                ));
            }
        };
        let mut builder = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject.trim().replace(['\r', '\n'], " "));
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
        }
        let message = match builder.multipart(MultiPart::alternative_plain_html(text, html)) {
            Ok(m) => m,
            Err(e) => return DriverOutcome::permanent(format!("the message cannot be built: {e}")),
        };
        send(transport, message).await
    }

    /// What a template sees: `store`, `order` (the order as webhooks show it),
    /// `items` (for `delivery_instructions`: each item with its codes and
    /// notes), and whatever the event added (`refund`).
    async fn context(
        &self,
        pool: &PgPool,
        order_id: Uuid,
        p: &Payload,
    ) -> Result<Value, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let order: Value = sqlx::query_scalar("SELECT courier_webhook_order($1)")
            .bind(order_id)
            .fetch_one(&mut *conn)
            .await?;
        let mut context = json!({ "store": self.store, "order": order, "to": p.to });
        if let Value::Object(extra) = &p.extra {
            for (k, v) in extra {
                context[k] = v.clone();
            }
        }
        // `keys` and `downloads`: one item's codes and links;
        // `delivery_instructions`: every item's.
        let only: Option<Uuid> = match p.template.as_str() {
            "keys" | "downloads" => p
                .extra
                .get("item_id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok()),
            _ => None,
        };
        if p.template == "delivery_instructions" || only.is_some() {
            // The codes are shown to the customer now: from here on a refund
            // cannot put them back in stock.
            if self.cipher.is_some() {
                courier_shared::db::keys::mark_revealed_in(&mut conn, order_id, only).await?;
            }
            let now = chrono::Utc::now();
            let mut links = courier_shared::db::downloads::links_of(&mut conn, order_id, only)
                .await
                .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            links.retain(|l| l.usable(now));
            if !links.is_empty() && self.signer.is_none() {
                return Err(sqlx::Error::Configuration(
                    "downloads.signing_key is not set on this worker, so its links cannot be sent"
                        .into(),
                ));
            }
            let rows = sqlx::query(
                "SELECT id, product_name, quantity, delivery_status, delivery_notes FROM order_items \
                 WHERE order_id = $1 AND ($2::uuid IS NULL OR id = $2) ORDER BY position",
            )
            .bind(order_id)
            .bind(only)
            .fetch_all(&mut *conn)
            .await?;
            let mut items = Vec::with_capacity(rows.len());
            for r in rows {
                let item_id: Uuid = r.try_get("id")?;
                let codes: Vec<String> =
                    courier_shared::db::keys::item_keys(&mut conn, item_id, self.cipher.as_ref())
                        .await
                        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?
                        .into_iter()
                        .filter_map(|k| k.code)
                        .collect();
                let downloads: Vec<Value> = links
                    .iter()
                    .filter(|l| l.item_id == item_id)
                    .filter_map(|l| {
                        let signer = self.signer.as_ref()?;
                        Some(json!({
                            "name": l.file_name,
                            "size": human_size(l.size_bytes),
                            "url": signer.url(l.id, l.expires_at.timestamp()),
                            "expires_at": l.expires_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                            "downloads_left": l.downloads_left(),
                        }))
                    })
                    .collect();
                items.push(json!({
                    "downloads": downloads,
                    "product_name": r.try_get::<String, _>("product_name")?,
                    "quantity": r.try_get::<i32, _>("quantity")?,
                    "delivery_status": r.try_get::<String, _>("delivery_status")?,
                    "notes": r.try_get::<Option<String>, _>("delivery_notes")?,
                    "codes": codes,
                }));
            }
            context["items"] = Value::Array(items);
        }
        Ok(context)
    }
}

/// `1.5 MB`, for the e-mail.
fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Hands `message` to the SMTP server; its answer decides the outcome.
async fn send(transport: &AsyncSmtpTransport<Tokio1Executor>, message: Message) -> DriverOutcome {
    match transport.send(message).await {
        Ok(answer) => DriverOutcome::Succeeded {
            response: format!(
                "{} {}",
                answer.code(),
                answer.message().collect::<Vec<_>>().join(" ")
            ),
        },
        Err(e) => {
            let class = if e.is_permanent() {
                ErrorClass::Permanent
            } else {
                ErrorClass::Transient
            };
            DriverOutcome::Failed {
                class,
                error: format!(
                    "the SMTP server did not take the message: {}",
                    full_error(&e)
                ),
                response: None,
                maybe_sent: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_templates_render_and_escape_html() {
        let env = templates(None).unwrap_or_else(|e| panic!("{e:#}"));
        let ctx = json!({
            "store": "Shop",
            "order": { "order_number": "ORD-1", "customer_name": "<b>Al</b>", "currency": "EUR",
                       "total": "9.99", "items": [{ "quantity": 1, "product_name": "VIP", "price": "9.99" }] },
        });
        let html = env
            .get_template("order_confirmation.html")
            .and_then(|t| t.render(&ctx))
            .unwrap_or_default();
        assert!(
            html.contains("&lt;b&gt;Al&lt;&#x2f;b&gt;") || html.contains("&lt;b&gt;Al&lt;/b&gt;"),
            "{html}"
        );
        let text = env
            .get_template("order_confirmation.txt")
            .and_then(|t| t.render(&ctx))
            .unwrap_or_default();
        assert!(
            text.contains("<b>Al</b>") && text.contains("1 × VIP: 9.99 EUR"),
            "{text}"
        );
    }

    #[test]
    fn an_override_replaces_one_part_and_a_broken_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("courier-templates-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        std::fs::write(
            dir.join("refund.subject"),
            "Money back: {{ refund.amount }}",
        )
        .unwrap_or_default();
        let env = templates(dir.to_str()).unwrap_or_else(|e| panic!("{e:#}"));
        let subject = env
            .get_template("refund.subject")
            .and_then(|t| t.render(json!({ "refund": { "amount": "1.00" } })))
            .unwrap_or_default();
        assert_eq!(subject, "Money back: 1.00");
        std::fs::write(dir.join("refund.txt"), "{% if %}").unwrap_or_default();
        let err = templates(dir.to_str())
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("refund.txt"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
