//! Admin alerts to where someone reads them: e-mail (through the SMTP
//! settings of customer e-mail), a Discord incoming webhook (`content`), a
//! Slack incoming webhook (`text`). One delivery per alert and channel.
//! A 2xx is done; 429, 5xx, timeouts and broken connections are tried again;
//! any other 4xx (a deleted webhook: 404) is permanent.

use std::time::Duration;

use courier_shared::config::AlertSettings;
use courier_shared::error::ErrorClass;
use serde::Deserialize;
use serde_json::json;
use sqlx::{PgPool, Row};

use super::email::EmailDriver;
use super::{DriverOutcome, transient};

#[derive(Debug, Deserialize)]
struct Payload {
    alert_id: i64,
    channel: String,
}

pub struct AlertDriver {
    client: reqwest::Client,
    settings: AlertSettings,
}

/// Discord refuses `content` over 2,000 characters.
const DISCORD_MAX: usize = 2000;

impl AlertDriver {
    pub fn new(settings: AlertSettings) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        AlertDriver { client, settings }
    }

    pub async fn run(
        &self,
        pool: &PgPool,
        email: &EmailDriver,
        payload: &serde_json::Value,
    ) -> DriverOutcome {
        let p: Payload = match serde_json::from_value(payload.clone()) {
            Ok(p) => p,
            Err(e) => return DriverOutcome::permanent(format!("invalid alert payload: {e}")),
        };
        let row =
            match sqlx::query("SELECT kind, message, created_at FROM admin_alerts WHERE id = $1")
                .bind(p.alert_id)
                .fetch_optional(pool)
                .await
            {
                Ok(Some(r)) => r,
                Ok(None) => return DriverOutcome::permanent("the alert no longer exists"),
                Err(e) => return transient(format!("the alert could not be read: {e}")),
            };
        let (kind, message, at): (String, String, chrono::DateTime<chrono::Utc>) = match (
            row.try_get("kind"),
            row.try_get("message"),
            row.try_get("created_at"),
        ) {
            (Ok(k), Ok(m), Ok(t)) => (k, m, t),
            _ => return DriverOutcome::permanent("the alert row is unreadable"),
        };
        let line = format!("[Courier] {kind}: {message}");
        match p.channel.as_str() {
            "email" => {
                let to: Vec<&str> = self
                    .settings
                    .email_to
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .collect();
                let text = format!(
                    "{message}\n\nAlert {kind} (#{id}), raised {at}.\nAcknowledge it: POST /v1/admin/alerts/{id}/acknowledge\n",
                    id = p.alert_id,
                    at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                email
                    .send_text(&to, &format!("[Courier alert] {kind}"), &text)
                    .await
            }
            "discord" => {
                let Some(url) = &self.settings.discord_webhook_url else {
                    return DriverOutcome::permanent(
                        "alerts.discord_webhook_url is not set on this worker",
                    );
                };
                let content: String = line.chars().take(DISCORD_MAX).collect();
                self.post(
                    url.expose(),
                    json!({ "content": content, "allowed_mentions": { "parse": [] } }),
                )
                .await
            }
            "slack" => {
                let Some(url) = &self.settings.slack_webhook_url else {
                    return DriverOutcome::permanent(
                        "alerts.slack_webhook_url is not set on this worker",
                    );
                };
                self.post(url.expose(), json!({ "text": line })).await
            }
            other => DriverOutcome::permanent(format!("unknown alert channel `{other}`")),
        }
    }

    async fn post(&self, url: &str, body: serde_json::Value) -> DriverOutcome {
        let response = match self.client.post(url).json(&body).send().await {
            Ok(r) => r,
            Err(e) => return transient(format!("the webhook could not be reached: {e}")),
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let kept = format!(
            "HTTP {}: {}",
            status.as_u16(),
            courier_shared::domain::clip(&text, 500)
        );
        if status.is_success() {
            return DriverOutcome::Succeeded { response: kept };
        }
        let class = if status.as_u16() == 429 || status.is_server_error() {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        };
        DriverOutcome::Failed {
            class,
            error: format!("the webhook answered {status}"),
            response: Some(kept),
            maybe_sent: false,
        }
    }
}
