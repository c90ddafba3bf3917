//! What this installation can deliver, checked when a product is saved and
//! again when an order is accepted — never discovered by a worker as a
//! thousand dead letters.
//!
//! The API decides from its own configuration, so the API and the workers
//! must be given the same `keys.encryption_key`, `discord.bot_token`,
//! `downloads.signing_key` and `suppliers.*` (the Helm chart shares one secret between them).

use std::collections::BTreeSet;

use crate::config::Settings;
use crate::domain::action::{ActionConfig, SupplierCandidate};

/// The limits and capabilities an order is accepted under.
#[derive(Debug, Clone)]
pub struct AcceptRules {
    /// `keys.encryption_key` is set: CD keys can be stored.
    pub keys: bool,
    /// `discord.bot_token` is set.
    pub discord: bool,
    /// `downloads.signing_key` is set: download links can be made.
    pub downloads: bool,
    /// Suppliers configured under `suppliers.*`.
    pub suppliers: BTreeSet<String>,
    /// `api.max_deliveries_per_order`.
    pub max_deliveries: usize,
    /// `rcon.command_timeout_ms`: a game server's quiet time must be shorter.
    pub rcon_command_timeout_ms: u64,
    /// `orders.auto_process`: paid orders start by themselves.
    pub auto_process: bool,
    /// `orders.process_delay_secs`: how long after payment they start.
    pub process_delay_secs: u32,
}

impl AcceptRules {
    pub fn from_settings(s: &Settings) -> Self {
        AcceptRules {
            keys: s
                .keys
                .encryption_key
                .as_ref()
                .is_some_and(|k| !k.expose().is_empty()),
            discord: s
                .discord
                .bot_token
                .as_ref()
                .is_some_and(|t| !t.expose().is_empty()),
            downloads: s
                .downloads
                .signing_key
                .as_ref()
                .is_some_and(|k| !k.expose().is_empty()),
            suppliers: s.suppliers.keys().cloned().collect(),
            max_deliveries: s.api.max_deliveries_per_order,
            rcon_command_timeout_ms: s.rcon.command_timeout_ms,
            auto_process: s.orders.auto_process,
            process_delay_secs: s.orders.process_delay_secs,
        }
    }

    /// Everything allowed (unit tests and tools that only plan).
    pub fn permissive() -> Self {
        AcceptRules {
            keys: true,
            discord: true,
            downloads: true,
            suppliers: BTreeSet::new(),
            max_deliveries: usize::MAX,
            rcon_command_timeout_ms: u64::MAX,
            auto_process: true,
            process_delay_secs: 0,
        }
    }

    fn candidates(&self, candidates: &[SupplierCandidate]) -> Result<(), String> {
        if !self.keys {
            return Err(
                "CD keys need keys.encryption_key, which this installation does not have".into(),
            );
        }
        match candidates
            .iter()
            .find(|c| !self.suppliers.contains(&c.supplier))
        {
            Some(c) => Err(format!(
                "supplier `{}` has no configuration (suppliers.{}.*)",
                c.supplier, c.supplier
            )),
            None => Ok(()),
        }
    }

    /// Why this installation cannot run `action`, if it cannot.
    pub fn check_action(&self, action: &ActionConfig) -> Result<(), String> {
        match action {
            ActionConfig::Rcon { .. } => Ok(()),
            ActionConfig::DiscordRole { .. } if !self.discord => Err(
                "Discord roles need discord.bot_token, which this installation does not have"
                    .into(),
            ),
            ActionConfig::DiscordRole { .. } => Ok(()),
            ActionConfig::SupplierKey { candidates, .. } => self.candidates(candidates),
            ActionConfig::Download { .. } if !self.downloads => Err(
                "downloads need downloads.signing_key, which this installation does not have"
                    .into(),
            ),
            ActionConfig::Download { .. } => Ok(()),
        }
    }
}
