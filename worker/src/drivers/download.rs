//! The download driver: gives the item a signed, expiring link to each file
//! its product sells (`db::downloads::make_links`; a second run makes none).
//! Nothing leaves Courier here: the links reach the customer in the
//! `downloads` e-mail (the item is `fulfilled` until the SMTP server accepts
//! it) or through `GET /v1/orders/{id}/downloads` when e-mail is off.

use courier_shared::config::DownloadSettings;
use courier_shared::domain::action::DownloadPayload;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{DriverOutcome, transient};

pub struct DownloadDriver {
    ttl_hours: u32,
    max_downloads: u32,
}

impl DownloadDriver {
    pub fn new(settings: &DownloadSettings) -> Self {
        DownloadDriver {
            ttl_hours: settings.link_ttl_hours,
            max_downloads: settings.max_downloads,
        }
    }

    pub async fn run(&self, db: &PgPool, delivery_id: Uuid, payload: &Value) -> DriverOutcome {
        let p: DownloadPayload = match serde_json::from_value(payload.clone()) {
            Ok(p) => p,
            Err(e) => return DriverOutcome::permanent(format!("invalid download payload: {e}")),
        };
        let mut conn = match db.acquire().await {
            Ok(c) => c,
            Err(e) => return transient(format!("database: {e}")),
        };
        let made = courier_shared::db::downloads::make_links(
            &mut conn,
            delivery_id,
            p.product_id,
            p.item_id,
            p.expires_hours.unwrap_or(self.ttl_hours),
            p.max_downloads.unwrap_or(self.max_downloads),
        )
        .await;
        match made {
            Ok(0) => DriverOutcome::permanent(
                "the product has no files: upload one (POST /v1/products/{sku}/files), then retry",
            ),
            Ok(1) => DriverOutcome::Succeeded {
                response: "1 download link".into(),
            },
            Ok(n) => DriverOutcome::Succeeded {
                response: format!("{n} download links"),
            },
            Err(e) => transient(format!("database: {e}")),
        }
    }
}
