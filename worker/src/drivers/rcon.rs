//! The RCON driver: runs the delivery's rendered command on its game server
//! through the process's connection pools.

use std::time::Duration;

use courier_shared::config::RconSettings;
use courier_shared::db::catalog;
use courier_shared::domain::action::RconPayload;
use courier_shared::rcon::{RconPools, RconTarget, Timeouts};
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

    pub async fn run(&self, db: &PgPool, payload: &serde_json::Value) -> DriverOutcome {
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
                    class: courier_shared::error::ErrorClass::Transient,
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
        );
        match pool.exec(&payload.command).await {
            Ok(response) => DriverOutcome::Succeeded { response },
            Err(e) => DriverOutcome::Failed {
                class: e.error.class(),
                error: format!(
                    "{} ({}:{}): {}",
                    server.name, server.host, server.port, e.error
                ),
                response: None,
                maybe_sent: e.maybe_sent,
            },
        }
    }
}
