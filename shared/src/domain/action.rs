//! Fulfilment actions as an admin configures them on a product, and as they are
//! rendered into a delivery's payload when an order is accepted.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::delivery::DeliveryKind;
use super::text_enum;

text_enum!(
    /// What the rescuer does with an RCON delivery whose worker died after the
    /// command may have been sent: run it again, or park it for an admin.
    OnAmbiguous, "on_ambiguous" {
        Retry => "retry",
        Hold => "hold",
    }
);

// The enum comes from `text_enum!`, which cannot mark a `#[default]` variant.
#[allow(clippy::derivable_impls)]
impl Default for OnAmbiguous {
    fn default() -> Self {
        OnAmbiguous::Hold
    }
}

/// An action as stored on the product (`product_actions.config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionConfig {
    /// Run one console command on a game server.
    Rcon {
        game_server_id: Uuid,
        /// A template; see `domain::template`.
        command: String,
        #[serde(default)]
        on_ambiguous: OnAmbiguous,
        /// Check the player is online (over RCON) before running the command;
        /// if not, the delivery waits and is re-checked on the waiting schedule.
        #[serde(default)]
        require_online: bool,
        /// A template run to take the item back (refund, cancel, chargeback).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revoke_command: Option<String>,
        /// A template run in addition when the payment is disputed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chargeback_command: Option<String>,
    },
    /// Give the customer's Discord account a role (removed again on revoke).
    DiscordRole { guild_id: String, role_id: String },
    /// A CD key: from the product's own stock first (when it has any), then
    /// bought from the first supplier candidate in stock within its max price.
    SupplierKey {
        #[serde(default)]
        candidates: Vec<SupplierCandidate>,
        /// Alert admins when the product's own stock falls below this.
        #[serde(default)]
        low_stock_threshold: i64,
        /// Sold only from the product's own stock (no candidates needed).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stock_only: bool,
    },
    /// The product's files, as signed, expiring links for the order (one per
    /// file the product has when the delivery runs).
    Download {
        /// Hours a link works (default `downloads.link_ttl_hours`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_hours: Option<u32>,
        /// Full downloads per link (default `downloads.max_downloads`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_downloads: Option<u32>,
    },
}

/// One supplier to try, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupplierCandidate {
    /// A name under `suppliers.*` in the configuration.
    pub supplier: String,
    pub supplier_product_id: String,
    /// Never pay more than this (decimal string, supplier's currency).
    pub max_price: String,
}

impl ActionConfig {
    pub fn kind(&self) -> DeliveryKind {
        match self {
            ActionConfig::Rcon { .. } => DeliveryKind::Rcon,
            ActionConfig::DiscordRole { .. } => DeliveryKind::DiscordRole,
            ActionConfig::SupplierKey { .. } => DeliveryKind::SupplierKey,
            ActionConfig::Download { .. } => DeliveryKind::Download,
        }
    }
}

/// A Discord snowflake: digits, not zero, fits in u64.
pub fn parse_snowflake(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|n| *n != 0)
}

/// What a worker needs to run a Discord role delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiscordPayload {
    pub guild_id: String,
    pub role_id: String,
    pub user_id: String,
    /// Remove the role instead of adding it (refunds, expiries).
    #[serde(default)]
    pub revoke: bool,
}

/// What a worker needs to deliver a CD key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SupplierKeyPayload {
    pub product_id: Uuid,
    pub item_id: Uuid,
    pub candidates: Vec<SupplierCandidate>,
    #[serde(default)]
    pub low_stock_threshold: i64,
}

/// What a worker needs to make an item's download links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DownloadPayload {
    pub product_id: Uuid,
    pub item_id: Uuid,
    /// The action's own limits; absent: the worker's `downloads.*` defaults.
    #[serde(default)]
    pub expires_hours: Option<u32>,
    #[serde(default)]
    pub max_downloads: Option<u32>,
}

/// What a worker needs to run an RCON delivery; fixed when the order is accepted,
/// so later edits to the product do not change an order already paid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RconPayload {
    pub game_server_id: Uuid,
    pub command: String,
    pub on_ambiguous: OnAmbiguous,
    /// The player to find online first, when the action requires it.
    #[serde(default)]
    pub require_online: Option<String>,
    /// The action's revoke command, rendered at accept time like `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_command: Option<String>,
    /// The action's chargeback command, rendered at accept time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chargeback_command: Option<String>,
}

/// What a worker needs to refund a payment at the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GatewayRefundPayload {
    pub refund_id: Uuid,
    /// `stripe`; the only gateway Courier refunds through so far.
    pub gateway: String,
    /// The gateway's payment reference (Stripe: the PaymentIntent id).
    pub payment_ref: String,
    /// In the currency's minor unit (cents), as gateways take it.
    pub amount_minor: i64,
    pub currency: String,
    /// Courier's reason word; mapped to what the gateway knows.
    pub reason: String,
}
