//! Connection pools per game server, bounded by the server's `max_connections`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use uuid::Uuid;

use super::client::{ExecError, RconConnection, RconTarget, Timeouts};

/// Connections to one server. At most `max_connections` exist at once; a
/// connection that failed in any way is dropped rather than reused.
#[derive(Debug)]
pub struct RconPool {
    target: RconTarget,
    timeouts: Timeouts,
    idle_timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<(RconConnection, Instant)>>,
}

impl RconPool {
    pub fn new(
        target: RconTarget,
        max_connections: usize,
        timeouts: Timeouts,
        idle_timeout: Duration,
    ) -> Self {
        RconPool {
            target,
            timeouts,
            idle_timeout,
            permits: Semaphore::new(max_connections.max(1)),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn target(&self) -> &RconTarget {
        &self.target
    }

    fn take_idle(&self) -> Option<RconConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((mut conn, since)) = idle.pop() {
            if since.elapsed() < self.idle_timeout && !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// Runs `command` on a pooled (or new) connection.
    pub async fn exec(&self, command: &str) -> Result<String, ExecError> {
        // The semaphore is never closed, so acquire only fails if it were.
        let _permit = self.permits.acquire().await.map_err(|_| ExecError {
            error: super::RconError::Closed,
            maybe_sent: false,
        })?;
        let mut conn = match self.take_idle() {
            Some(conn) => conn,
            None => RconConnection::connect(&self.target, self.timeouts)
                .await
                .map_err(|error| ExecError {
                    error,
                    maybe_sent: false,
                })?,
        };
        let out = conn.exec(command).await?;
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((conn, Instant::now()));
        Ok(out)
    }
}

/// The pools of one worker process, keyed by game server id and rebuilt when the
/// server's settings change.
#[derive(Debug, Default)]
pub struct RconPools {
    pools: Mutex<HashMap<Uuid, PoolEntry>>,
}

/// A pool with the settings it was built for.
type PoolEntry = (RconTarget, usize, Arc<RconPool>);

impl RconPools {
    pub fn get(
        &self,
        server_id: Uuid,
        target: RconTarget,
        max_connections: usize,
        timeouts: Timeouts,
        idle_timeout: Duration,
    ) -> Arc<RconPool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, max, pool)) = pools.get(&server_id)
            && *t == target
            && *max == max_connections
        {
            return pool.clone();
        }
        let pool = Arc::new(RconPool::new(
            target.clone(),
            max_connections,
            timeouts,
            idle_timeout,
        ));
        pools.insert(server_id, (target, max_connections, pool.clone()));
        pool
    }
}
