//! The RCON driver: runs the delivery's rendered command on its game server
//! through the process's connection pools.

use std::time::Duration;

use courier_shared::config::RconSettings;
use courier_shared::db::catalog;
use courier_shared::domain::action::RconPayload;
use courier_shared::error::ErrorClass;
use courier_shared::rcon::{Dialect, RconPools, RconTarget, Timeouts};
use sqlx::PgPool;

use super::DriverOutcome;

pub struct RconDriver {
    pub pools: RconPools,
    pub settings: RconSettings,
}

impl RconDriver {
    pub fn new(settings: RconSettings) -> Self {
        RconDriver {
            pools: RconPools::default(),
            settings,
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(self.settings.connect_timeout_ms),
            command: Duration::from_millis(self.settings.command_timeout_ms),
            max_response_bytes: self.settings.max_response_bytes,
        }
    }

    pub async fn run(
        &self,
        db: &PgPool,
        limits: &std::sync::Arc<courier_shared::limits::Limits>,
        payload: &serde_json::Value,
    ) -> DriverOutcome {
        let payload: RconPayload = match serde_json::from_value(payload.clone()) {
            Ok(p) => p,
            Err(e) => return DriverOutcome::permanent(format!("invalid RCON payload: {e}")),
        };
        let server = match db.acquire().await {
            Ok(mut conn) => catalog::get_game_server(&mut conn, payload.game_server_id).await,
            Err(e) => Err(e.into()),
        };
        let server = match server {
            Ok(Some(s)) => s,
            Ok(None) => {
                return DriverOutcome::permanent(format!(
                    "game server {} no longer exists; recreate it or discard this delivery",
                    payload.game_server_id
                ));
            }
            Err(e) => {
                return DriverOutcome::Failed {
                    class: ErrorClass::Transient,
                    error: format!("could not load the game server: {e}"),
                    response: None,
                    maybe_sent: false,
                };
            }
        };
        let target = RconTarget {
            host: server.host.clone(),
            port: server.port,
            password: server.password.clone(),
            dialect: server.dialect,
        };
        let pool = self.pools.get(
            server.id,
            target,
            usize::from(server.max_connections),
            self.timeouts(),
            Duration::from_millis(self.settings.idle_timeout_ms),
            Some(courier_shared::rcon::GlobalSlots {
                limits: limits.clone(),
                name: format!("rcon:{}", server.id),
            }),
        );
        let describe = |e: &dyn std::fmt::Display| {
            format!("{} ({}:{}): {e}", server.name, server.host, server.port)
        };
        if let Some(player) = &payload.require_online {
            let probe = match server.dialect {
                Dialect::Minecraft => "list",
                Dialect::Source => "status",
            };
            match pool.exec(probe).await {
                Ok(listing) if is_online(server.dialect, &listing, player) => {}
                Ok(_) => {
                    return DriverOutcome::Failed {
                        class: ErrorClass::Waiting,
                        error: format!("player {player} is not online on {}", server.name),
                        response: None,
                        maybe_sent: false,
                    };
                }
                Err(e) => {
                    return DriverOutcome::Failed {
                        class: e.error.class(),
                        error: describe(&format!(
                            "checking whether {player} is online: {}",
                            e.error
                        )),
                        response: None,
                        // Only the harmless probe may have been sent.
                        maybe_sent: false,
                    };
                }
            }
        }
        match pool.exec(&payload.command).await {
            Ok(response) if is_unknown_command(&response) => DriverOutcome::Failed {
                class: ErrorClass::Permanent,
                error: describe(&"the server does not know this command"),
                response: Some(response),
                maybe_sent: false,
            },
            Ok(response) => DriverOutcome::Succeeded { response },
            Err(e) => DriverOutcome::Failed {
                class: e.error.class(),
                error: describe(&e.error),
                response: None,
                maybe_sent: e.maybe_sent,
            },
        }
    }
}

/// Minecraft answers `Unknown or incomplete command…` (older: `Unknown command`),
/// Source `Unknown command "…"`: running it again will not help.
pub fn is_unknown_command(response: &str) -> bool {
    let r = response.trim_start();
    r.starts_with("Unknown or incomplete command") || r.starts_with("Unknown command")
}

/// Whether `player` appears in the answer to `list` (Minecraft:
/// `There are 1 of a max of 20 players online: Alex, Sam`) or `status`
/// (Source: one line per player with the name in double quotes).
pub fn is_online(dialect: Dialect, listing: &str, player: &str) -> bool {
    match dialect {
        Dialect::Minecraft => listing
            .rsplit_once(':')
            .map(|(_, names)| {
                names
                    .split(',')
                    .any(|n| n.trim().eq_ignore_ascii_case(player))
            })
            .unwrap_or(false),
        Dialect::Source => {
            let quoted = format!("\"{}\"", player.to_ascii_lowercase());
            listing.to_ascii_lowercase().contains(&quoted)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_players_in_both_listings() {
        let mc = "There are 2 of a max of 20 players online: Alex, Sam";
        assert!(is_online(Dialect::Minecraft, mc, "alex"));
        assert!(!is_online(Dialect::Minecraft, mc, "Ale"));
        assert!(!is_online(
            Dialect::Minecraft,
            "There are 0 of a max of 20 players online:",
            "Alex"
        ));
        let src =
            "hostname: x\n# userid name uniqueid\n#  2 \"Alex\" STEAM_1:0:1 00:10 50 0 active";
        assert!(is_online(Dialect::Source, src, "Alex"));
        assert!(!is_online(Dialect::Source, src, "Sam"));
    }

    #[test]
    fn recognises_unknown_commands() {
        assert!(is_unknown_command(
            "Unknown or incomplete command, see below for error"
        ));
        assert!(is_unknown_command("Unknown command \"sm_foo\""));
        assert!(!is_unknown_command("Gave 3 diamond to Alex"));
    }
}
