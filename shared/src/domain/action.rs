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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    },
}

impl ActionConfig {
    pub fn kind(&self) -> DeliveryKind {
        match self {
            ActionConfig::Rcon { .. } => DeliveryKind::Rcon,
        }
    }
}

/// What a worker needs to run an RCON delivery; fixed when the order is accepted,
/// so later edits to the product do not change an order already paid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RconPayload {
    pub game_server_id: Uuid,
    pub command: String,
    pub on_ambiguous: OnAmbiguous,
    /// The player to find online first, when the action requires it.
    #[serde(default)]
    pub require_online: Option<String>,
}
