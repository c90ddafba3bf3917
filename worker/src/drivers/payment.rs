//! Gateway refunds. Stripe: `POST /v1/refunds` with the PaymentIntent and the
//! amount in minor units, under an `Idempotency-Key` derived from Courier's
//! refund id, so a retried or redelivered job never refunds twice.

use std::time::Duration;

use courier_shared::config::PaymentSettings;
use courier_shared::domain::action::GatewayRefundPayload;
use courier_shared::error::ErrorClass;

use super::DriverOutcome;

pub struct PaymentDriver {
    client: reqwest::Client,
    settings: PaymentSettings,
}

/// At most this much of an answer is kept on the attempt.
const KEEP: usize = 2000;

impl PaymentDriver {
    pub fn new(settings: PaymentSettings) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.stripe_timeout_ms))
            .build()
            .unwrap_or_default();
        PaymentDriver { client, settings }
    }

    pub async fn run(&self, payload: &serde_json::Value) -> DriverOutcome {
        let p: GatewayRefundPayload = match serde_json::from_value(payload.clone()) {
            Ok(p) => p,
            Err(e) => return DriverOutcome::permanent(format!("invalid refund payload: {e}")),
        };
        if p.gateway != "stripe" {
            return DriverOutcome::permanent(format!(
                "Courier cannot refund through `{}`",
                p.gateway
            ));
        }
        let Some(key) = &self.settings.stripe_secret_key else {
            return DriverOutcome::permanent(
                "payments.stripe_secret_key is not set: set it and retry this refund",
            );
        };
        let amount = p.amount_minor.to_string();
        let refund_id = p.refund_id.to_string();
        let mut form = vec![
            ("payment_intent", p.payment_ref.as_str()),
            ("amount", amount.as_str()),
            ("metadata[courier_refund_id]", refund_id.as_str()),
        ];
        // Stripe knows three reasons; the others travel in the metadata only.
        if matches!(
            p.reason.as_str(),
            "requested_by_customer" | "duplicate" | "fraudulent"
        ) {
            form.push(("reason", p.reason.as_str()));
        }
        form.push(("metadata[courier_reason]", p.reason.as_str()));
        let url = format!(
            "{}/v1/refunds",
            self.settings.stripe_api_base.trim_end_matches('/')
        );
        let sent = self
            .client
            .post(&url)
            .bearer_auth(key.expose())
            .header("Idempotency-Key", format!("courier-refund-{refund_id}"))
            .form(&form)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return DriverOutcome::Failed {
                    class: ErrorClass::Transient,
                    error: format!("Stripe could not be reached: {e}"),
                    response: None,
                    // Safe to repeat: the idempotency key makes it one refund.
                    maybe_sent: false,
                };
            }
        };
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let kept = courier_shared::domain::clip(&body, KEEP).to_owned();
        if status.is_success() {
            return DriverOutcome::Succeeded { response: kept };
        }
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {status}"));
        let class = if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 409
        {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        };
        DriverOutcome::Failed {
            class,
            error: format!("Stripe refused the refund ({status}): {message}"),
            response: Some(kept),
            maybe_sent: false,
        }
    }
}
