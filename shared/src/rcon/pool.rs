//! Connection pools per game server, bounded by the server's `max_connections`
//! in this process and, through a Redis semaphore (`Limits`), across every
//! worker: each open connection holds one slot for its whole life (an idle
//! pooled connection is a session the game server sees), refreshed on every
//! use and released when the connection closes; a dead worker's slots expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use uuid::Uuid;

use super::client::{ExecError, RconConnection, RconTarget, Timeouts};
use crate::limits::{Limits, Permit};

/// The cross-replica slot settings of a pool.
#[derive(Clone)]
pub struct GlobalSlots {
    pub limits: Arc<Limits>,
    /// Semaphore name, e.g. `rcon:<server id>`.
    pub name: String,
}

impl std::fmt::Debug for GlobalSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GlobalSlots({})", self.name)
    }
}

/// Connections to one server. At most `max_connections` exist at once; a
/// connection that failed in any way is dropped rather than reused.
#[derive(Debug)]
pub struct RconPool {
    target: RconTarget,
    timeouts: Timeouts,
    idle_timeout: Duration,
    permits: Semaphore,
    max_connections: usize,
    global: Option<GlobalSlots>,
    idle: Mutex<Vec<(RconConnection, Instant, Option<Permit>)>>,
    /// Tokens of the global slots this pool holds, refreshed by a background task.
    held: Arc<Mutex<Vec<String>>>,
    refresher: std::sync::Once,
}

/// A global slot lives this long unless refreshed; the holder refreshes it
/// every third of that, so a dead worker's slots free up within seconds.
const SLOT_TTL: Duration = Duration::from_secs(6);

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Permit::Redis { .. } => "Permit::Redis",
            Permit::Local(_) => "Permit::Local",
        })
    }
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
            max_connections: max_connections.max(1),
            global: None,
            idle: Mutex::new(Vec::new()),
            held: Arc::new(Mutex::new(Vec::new())),
            refresher: std::sync::Once::new(),
        }
    }

    /// Also bound connections across replicas with `global`.
    pub fn with_global_slots(mut self, global: GlobalSlots) -> Self {
        self.global = Some(global);
        self
    }

    fn release_later(&self, permit: Option<Permit>) {
        if let (Some(permit), Some(global)) = (permit, &self.global) {
            if let Permit::Redis { token, .. } = &permit {
                self.held
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|t| t != token);
            }
            let limits = global.limits.clone();
            tokio::spawn(async move { limits.release(permit).await });
        }
    }

    /// Starts (once) the task that keeps this pool's slots alive; it ends when
    /// the pool is dropped.
    fn start_refresher(&self, global: &GlobalSlots) {
        self.refresher.call_once(|| {
            let held = Arc::downgrade(&self.held);
            let (limits, name) = (global.limits.clone(), global.name.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SLOT_TTL / 3).await;
                    let Some(held) = held.upgrade() else { return };
                    let tokens = held.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    limits.refresh(&name, &tokens, SLOT_TTL).await;
                }
            });
        });
    }

    /// A global slot, waiting at most the connect timeout for one.
    async fn global_slot(&self) -> Result<Option<Permit>, ExecError> {
        let Some(g) = &self.global else {
            return Ok(None);
        };
        self.start_refresher(g);
        match g
            .limits
            .acquire_within(
                &g.name,
                self.max_connections,
                SLOT_TTL,
                self.timeouts.connect,
            )
            .await
        {
            Some(permit) => {
                if let Permit::Redis { token, .. } = &permit {
                    self.held
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(token.clone());
                }
                Ok(Some(permit))
            }
            None => Err(ExecError::before_sending(super::RconError::Busy(
                self.max_connections,
            ))),
        }
    }

    pub fn target(&self) -> &RconTarget {
        &self.target
    }

    fn take_idle(&self) -> Option<(RconConnection, Option<Permit>)> {
        let mut expired = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            // Close every expired or dead connection, not only those above the
            // first live one, so their slots go back to the other workers.
            let mut live = Vec::with_capacity(idle.len());
            for (mut conn, since, permit) in idle.drain(..) {
                if since.elapsed() < self.idle_timeout && !conn.is_closed() {
                    live.push((conn, since, permit));
                } else {
                    expired.push(permit);
                }
            }
            let found = live.pop().map(|(conn, _, permit)| (conn, permit));
            *idle = live;
            found
        };
        for permit in expired {
            self.release_later(permit);
        }
        found
    }

    /// Runs `command` on a pooled (or new) connection.
    pub async fn exec(&self, command: &str) -> Result<String, ExecError> {
        // The semaphore is never closed, so acquire only fails if it were.
        // Bounded wait: a job queued behind a slow server reports it busy (and is
        // retried) rather than outliving its lease and sending late.
        let _local = match tokio::time::timeout(self.timeouts.connect, self.permits.acquire()).await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(ExecError::before_sending(super::RconError::Busy(
                    self.max_connections,
                )));
            }
        };
        let (mut conn, permit) = match self.take_idle() {
            Some(pair) => pair,
            None => {
                let permit = self.global_slot().await?;
                match RconConnection::connect(&self.target, self.timeouts).await {
                    Ok(conn) => (conn, permit),
                    Err(error) => {
                        self.release_later(permit);
                        return Err(ExecError::before_sending(error));
                    }
                }
            }
        };
        match conn.exec(command).await {
            Ok(out) => {
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).push((
                    conn,
                    Instant::now(),
                    permit,
                ));
                Ok(out)
            }
            Err(e) => {
                self.release_later(permit);
                Err(e)
            }
        }
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
        global: Option<GlobalSlots>,
    ) -> Arc<RconPool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, max, pool)) = pools.get(&server_id)
            && *t == target
            && *max == max_connections
        {
            return pool.clone();
        }
        let mut pool = RconPool::new(target.clone(), max_connections, timeouts, idle_timeout);
        if let Some(g) = global {
            pool = pool.with_global_slots(g);
        }
        let pool = Arc::new(pool);
        pools.insert(server_id, (target, max_connections, pool.clone()));
        pool
    }
}
