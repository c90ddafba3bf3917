//! Outbound webhooks, signed per the Standard Webhooks specification:
//! `webhook-id` (the message id, the same on every retry), `webhook-timestamp`
//! (this call's time, in seconds) and `webhook-signature`: `v1,` and the
//! base64 HMAC-SHA256 of `id.timestamp.body` under each live secret (two,
//! space-separated, while a rotation overlaps).
//!
//! A 2xx answer is done. `410 Gone` disables the endpoint (and the delivery
//! is dead). Anything else — another status, a redirect, a timeout, a
//! refused connection — is tried again on the `retry.webhook` schedule.
//! Calls to one endpoint are limited across workers
//! (`webhooks.concurrency_per_endpoint`, `webhooks.per_second_per_endpoint`).
//! Unless `webhooks.allow_private_targets` is on, the client's resolver drops
//! private addresses, so a name that resolves into Courier's network (DNS
//! rebinding included) is never called.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use courier_shared::config::WebhookSettings;
use courier_shared::db::webhooks;
use courier_shared::domain::webhook::{is_private, parse_url};
use courier_shared::error::ErrorClass;
use courier_shared::limits::Limits;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{DriverOutcome, full_error, transient};

/// At most this much of an answer is kept on the attempt.
const KEEP: usize = 2000;

/// What a webhook delivery's payload holds (written by the migration's
/// `courier_webhook_emit` and by `db::webhooks`).
#[derive(Debug, Deserialize)]
struct Payload {
    endpoint_id: Uuid,
    message_id: String,
    body: serde_json::Value,
}

pub struct WebhookDriver {
    client: reqwest::Client,
    settings: WebhookSettings,
    limits: Arc<Limits>,
}

/// A resolver that leaves out private addresses.
struct PublicOnly;

/// Says why the resolver refused (found again in the error chain).
const PRIVATE: &str = "resolves only to addresses inside a private network";

#[derive(Debug, thiserror::Error)]
#[error("`{0}` {PRIVATE}")]
struct PrivateTarget(String);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| !is_private(a.ip())).collect();
            if public.is_empty() {
                return Err(
                    Box::new(PrivateTarget(host)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl WebhookDriver {
    pub fn new(settings: WebhookSettings, limits: Arc<Limits>) -> Self {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Courier-Webhooks/", env!("CARGO_PKG_VERSION")));
        if !settings.allow_private_targets {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        WebhookDriver {
            client: builder.build().unwrap_or_default(),
            settings,
            limits,
        }
    }

    pub async fn run(
        &self,
        pool: &PgPool,
        delivery: (Uuid, i32),
        payload: &serde_json::Value,
    ) -> DriverOutcome {
        let p: Payload = match serde_json::from_value(payload.clone()) {
            Ok(p) => p,
            Err(e) => return DriverOutcome::permanent(format!("invalid webhook payload: {e}")),
        };
        let endpoint = match webhooks::signing(pool, p.endpoint_id).await {
            Ok(Some(e)) => e,
            Ok(None) => return DriverOutcome::permanent("the webhook endpoint was deleted"),
            Err(e) => return transient(format!("the endpoint could not be read: {e}")),
        };
        if !endpoint.enabled {
            return DriverOutcome::permanent(format!(
                "the webhook endpoint is disabled ({}); enable it, then retry this delivery",
                endpoint.disabled_reason.as_deref().unwrap_or("by an admin")
            ));
        }
        if let Err(refused) = self.check_host(&endpoint.url) {
            return DriverOutcome::permanent(refused);
        }
        let name = format!("webhook:{}", p.endpoint_id);
        let permit = self
            .limits
            .acquire(
                &name,
                self.settings.concurrency_per_endpoint as usize,
                Duration::from_millis(self.settings.timeout_ms + 5_000),
            )
            .await;
        if self.settings.per_second_per_endpoint > 0 {
            self.limits
                .throttle(&name, self.settings.per_second_per_endpoint)
                .await;
        }
        let outcome = self.call(pool, delivery, &p, &endpoint).await;
        self.limits.release(permit).await;
        let noted = match &outcome {
            DriverOutcome::Succeeded { .. } => {
                webhooks::succeeded(pool, p.endpoint_id).await.map(|_| None)
            }
            DriverOutcome::Failed { .. } => {
                webhooks::failed(pool, p.endpoint_id, self.settings.disable_after_hours).await
            }
        };
        match (noted, outcome) {
            (
                Ok(Some(disabled)),
                DriverOutcome::Failed {
                    error, response, ..
                },
            ) => DriverOutcome::Failed {
                class: ErrorClass::Permanent,
                error: format!("{error}; the endpoint is now disabled: {disabled}"),
                response,
                maybe_sent: false,
            },
            (Err(e), outcome) => {
                tracing::warn!(error = %e, endpoint = %p.endpoint_id, "could not note the endpoint's health");
                outcome
            }
            (_, outcome) => outcome,
        }
    }

    /// An IP literal is not resolved, so the resolver cannot refuse it: it is
    /// checked here.
    fn check_host(&self, url: &str) -> Result<(), String> {
        let (_, host, _) =
            parse_url(url).map_err(|e| format!("the endpoint URL is invalid: {e}"))?;
        if !self.settings.allow_private_targets
            && let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>()
            && is_private(ip)
        {
            return Err(format!(
                "{ip} is inside a private network; set webhooks.allow_private_targets to call it"
            ));
        }
        Ok(())
    }

    async fn call(
        &self,
        pool: &PgPool,
        (delivery_id, attempt): (Uuid, i32),
        p: &Payload,
        endpoint: &webhooks::Signing,
    ) -> DriverOutcome {
        let body = p.body.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = endpoint
            .secrets
            .iter()
            .filter_map(|s| sign(s, &p.message_id, timestamp, &body))
            .collect::<Vec<_>>()
            .join(" ");
        let sent = self
            .client
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", &p.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                let why = full_error(&e);
                let private = why.contains(PRIVATE);
                if private {
                    return DriverOutcome::permanent(format!(
                        "refused: {why}; set webhooks.allow_private_targets to call it"
                    ));
                }
                return transient(format!("the receiver could not be reached: {why}"));
            }
        };
        let status = response.status();
        if let Err(e) = sqlx::query(
            "UPDATE delivery_attempts SET status_code = $3 WHERE delivery_id = $1 AND attempt = $2",
        )
        .bind(delivery_id)
        .bind(attempt)
        .bind(i32::from(status.as_u16()))
        .execute(pool)
        .await
        {
            tracing::warn!(error = %e, %delivery_id, "could not note the answer's status");
        }
        let text = response.text().await.unwrap_or_default();
        let kept = format!(
            "HTTP {}: {}",
            status.as_u16(),
            courier_shared::domain::clip(&text, KEEP)
        );
        if status.is_success() {
            return DriverOutcome::Succeeded { response: kept };
        }
        if status.as_u16() == 410 {
            let reason = "the receiver answered 410 Gone";
            if let Err(e) = webhooks::disable(pool, p.endpoint_id, reason).await {
                tracing::warn!(error = %e, endpoint = %p.endpoint_id, "could not disable the endpoint");
            }
            return DriverOutcome::Failed {
                class: ErrorClass::Permanent,
                error: format!("{reason}; the endpoint is disabled"),
                response: Some(kept),
                maybe_sent: false,
            };
        }
        DriverOutcome::Failed {
            class: ErrorClass::Transient,
            error: format!("the receiver answered {status}"),
            response: Some(kept),
            maybe_sent: false,
        }
    }
}

/// `v1,<base64 HMAC-SHA256 of id.timestamp.body>` under `secret`
/// (`whsec_<base64 key>`); None for a secret that is not base64.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.trim_start_matches("whsec_")).ok()?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Some(format!("v1,{}", b64.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signs_the_specifications_example() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }
}
