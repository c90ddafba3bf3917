//! The RCON driver: runs the delivery's rendered command on its game server
//! through the process's connection pools.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_shared::config::RconSettings;
use courier_shared::db::catalog::{self, GameServer};
use courier_shared::domain::action::RconPayload;
use courier_shared::error::DbError;
use courier_shared::error::ErrorClass;
use courier_shared::rcon::{RconPools, Timeouts, answers};
use sqlx::PgPool;
use uuid::Uuid;

use super::DriverOutcome;

pub struct RconDriver {
    pub pools: RconPools,
    /// Game servers loaded before, with their rows' versions: used while a
    /// claim shows the same version (so every change is seen by the next
    /// claim), instead of a read per command.
    servers: Mutex<HashMap<Uuid, (String, Arc<GameServer>)>>,
    pub settings: RconSettings,
    /// The worker's lease: one attempt (the online check and the command
    /// together) stays well within it.
    pub lease: Duration,
}

impl RconDriver {
    pub fn new(settings: RconSettings, lease: Duration) -> Self {
        RconDriver {
            pools: RconPools::default(),
            servers: Mutex::default(),
            settings,
            lease,
        }
    }

    /// The game server as of the claim: the one loaded before when the
    /// claim saw the same version of its row, else read again.
    async fn server(
        &self,
        db: &PgPool,
        id: Uuid,
        version: Option<&str>,
    ) -> Result<Option<Arc<GameServer>>, DbError> {
        if let Some(v) = version
            && let Some((cached, server)) = self.lock_servers().get(&id)
            && cached == v
        {
            return Ok(Some(server.clone()));
        }
        let mut conn = db.acquire().await?;
        let Some((server, version)) = catalog::get_game_server_versioned(&mut conn, id).await?
        else {
            self.lock_servers().remove(&id);
            return Ok(None);
        };
        let server = Arc::new(server);
        self.lock_servers().insert(id, (version, server.clone()));
        Ok(Some(server))
    }

    fn lock_servers(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (String, Arc<GameServer>)>> {
        // The map is only read and replaced whole per entry: a panic elsewhere
        // cannot leave it half-written.
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn timeouts(&self) -> Timeouts {
        self.settings.timeouts()
    }

    pub async fn run(
        &self,
        db: &PgPool,
        limits: &std::sync::Arc<courier_shared::limits::Limits>,
        payload: &serde_json::Value,
        (version, leased_at): (Option<&str>, tokio::time::Instant),
    ) -> DriverOutcome {
        // The whole attempt — waiting for a slot, the online check, the
        // command — ends within the lease that began at `leased_at` (less a
        // margin to record it).
        let deadline = leased_at + self.lease.saturating_sub(Duration::from_millis(250));
        let payload: RconPayload = match serde_json::from_value(payload.clone()) {
            Ok(p) => p,
            Err(e) => return DriverOutcome::permanent(format!("invalid RCON payload: {e}")),
        };
        let server = match self.server(db, payload.game_server_id, version).await {
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
        let target = server.rcon_target();
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
            let probe = server
                .online_command
                .clone()
                .unwrap_or_else(|| answers::default_online_command(server.dialect).to_owned());
            match pool.exec_by(&probe, deadline).await {
                Ok(listing) => match answers::players_online(server.dialect, &listing) {
                    Some(names) if names.iter().any(|n| n.eq_ignore_ascii_case(player)) => {}
                    Some(_) => {
                        return DriverOutcome::Failed {
                            class: ErrorClass::Waiting,
                            error: format!("player {player} is not online on {}", server.name),
                            response: Some(listing),
                            maybe_sent: false,
                        };
                    }
                    None => {
                        return DriverOutcome::Failed {
                            class: ErrorClass::Permanent,
                            error: describe(&format!(
                                "cannot tell whether {player} is online: the answer to `{probe}` is not a player listing Courier knows; set the game server's `online_command` to one that lists players, or turn off `require_online` on the product"
                            )),
                            response: Some(listing),
                            maybe_sent: false,
                        };
                    }
                },
                Err(e) => {
                    return DriverOutcome::Failed {
                        class: e.error.class(),
                        error: describe(&format!(
                            "checking whether {player} is online: {}",
                            e.error
                        )),
                        response: e.partial,
                        // Only the harmless probe may have been sent.
                        maybe_sent: false,
                    };
                }
            }
        }
        match pool.exec_by(&payload.command, deadline).await {
            Ok(response)
                if answers::is_refusal(server.dialect, &server.error_patterns, &response) =>
            {
                DriverOutcome::Failed {
                    class: ErrorClass::Permanent,
                    error: describe(&format!(
                        "the server refused the command: {}",
                        courier_shared::domain::clip(response.trim(), 300)
                    )),
                    response: Some(response),
                    maybe_sent: false,
                }
            }
            Ok(response) if answers::is_player_missing(server.dialect, &response) => {
                DriverOutcome::Failed {
                    class: ErrorClass::Waiting,
                    error: describe(&format!(
                        "the player is not on the server: {}",
                        courier_shared::domain::clip(response.trim(), 300)
                    )),
                    response: Some(response),
                    maybe_sent: false,
                }
            }
            Ok(response) => DriverOutcome::Succeeded { response },
            Err(e) => DriverOutcome::Failed {
                class: e.error.class(),
                error: describe(&e.error),
                response: e.partial,
                maybe_sent: e.maybe_sent,
            },
        }
    }
}
