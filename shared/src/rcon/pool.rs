//! Connection pools per game server, bounded by the server's `max_connections`
//! in this process and, through a Redis semaphore (`Limits`), across every
//! worker: each open connection holds one slot for its whole life (an idle
//! pooled connection is a session the game server sees), refreshed while it
//! lives and released when the connection closes; a dead worker's slots expire.
//!
//! Waiting for a slot is backpressure, not failure: a command waits up to
//! `Timeouts::slot_wait` (within the lease), and only then is reported
//! `Busy`, which costs no attempt. So that idle connections of one worker do
//! not starve another, a worker that finds no free slot marks the semaphore
//! wanted; while it is, holders close their idle connections and hand a
//! connection back after each command instead of keeping it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
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

type Idle = Vec<(RconConnection, Instant, Option<Permit>)>;

/// What the pool and its background task share.
#[derive(Debug, Default)]
struct Shared {
    idle: Mutex<Idle>,
    /// Tokens of the global slots this pool holds, refreshed by the task.
    held: Mutex<Vec<String>>,
    /// Another worker is waiting for a slot of this server.
    contended: AtomicBool,
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
    shared: Arc<Shared>,
    refresher: std::sync::Once,
}

/// A global slot lives this long unless refreshed; the holder refreshes it
/// every third of that, so a dead worker's slots free up within seconds.
const SLOT_TTL: Duration = Duration::from_secs(6);
/// How often a pool looks whether another worker wants a slot.
const CONTENTION_CHECK: Duration = Duration::from_millis(250);

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Permit::Redis { .. } => "Permit::Redis",
            Permit::Local(_) => "Permit::Local",
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long closing waits for the server to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Retires a connection in the background: closes it (waiting for the
/// server's side), then gives back its global slot — in that order, so no
/// other worker opens a connection before this one is gone at the server.
fn retire(
    shared: &Shared,
    global: Option<&GlobalSlots>,
    conn: Option<RconConnection>,
    permit: Option<Permit>,
) {
    if let Some(Permit::Redis { token, .. }) = &permit {
        lock(&shared.held).retain(|t| t != token);
    }
    let limits = global.map(|g| g.limits.clone());
    tokio::spawn(async move {
        if let Some(conn) = conn {
            conn.close(CLOSE_WAIT).await;
        }
        if let (Some(limits), Some(permit)) = (limits, permit) {
            limits.release(permit).await;
        }
    });
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
            shared: Arc::new(Shared::default()),
            refresher: std::sync::Once::new(),
        }
    }

    /// Also bound connections across replicas with `global`.
    pub fn with_global_slots(mut self, global: GlobalSlots) -> Self {
        self.global = Some(global);
        self
    }

    /// Starts (once) the task that keeps this pool's slots alive and gives
    /// idle ones back while another worker wants them; it ends when the pool
    /// is dropped.
    fn start_refresher(&self, global: &GlobalSlots) {
        self.refresher.call_once(|| {
            let shared: Weak<Shared> = Arc::downgrade(&self.shared);
            let global = global.clone();
            tokio::spawn(async move {
                let mut ticks: u32 = 0;
                loop {
                    tokio::time::sleep(CONTENTION_CHECK).await;
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    ticks = ticks.wrapping_add(1);
                    let wanted = global.limits.wanted(&global.name).await;
                    shared.contended.store(wanted, Ordering::Relaxed);
                    if wanted {
                        let idle: Idle = std::mem::take(&mut *lock(&shared.idle));
                        for (conn, _, permit) in idle {
                            retire(&shared, Some(&global), Some(conn), permit);
                        }
                    }
                    if ticks.is_multiple_of(8) {
                        let tokens = lock(&shared.held).clone();
                        global.limits.refresh(&global.name, &tokens, SLOT_TTL).await;
                    }
                }
            });
        });
    }

    /// An idle connection, or a new one once a slot is free — looking at the
    /// idle ones again every so often while waiting, since a connection of
    /// this process may be handed back meanwhile (it keeps its slot).
    async fn connection(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(RconConnection, Option<Permit>), ExecError> {
        const LOOK_AGAIN: Duration = Duration::from_millis(50);
        loop {
            if let Some(found) = self.take_idle() {
                return Ok(found);
            }
            let now = tokio::time::Instant::now();
            let step = (now + LOOK_AGAIN).min(deadline);
            match self.global_slot(step).await {
                Ok(permit) => {
                    return match RconConnection::connect(&self.target, self.timeouts).await {
                        Ok(conn) => Ok((conn, permit)),
                        Err(error) => {
                            retire(&self.shared, self.global.as_ref(), None, permit);
                            Err(ExecError::before_sending(error))
                        }
                    };
                }
                Err(busy) if step >= deadline => return Err(busy),
                Err(_) => {}
            }
        }
    }

    /// A global slot, waiting until `deadline` at most.
    async fn global_slot(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Permit>, ExecError> {
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
                deadline.saturating_duration_since(tokio::time::Instant::now()),
            )
            .await
        {
            Some(permit) => {
                if let Permit::Redis { token, .. } = &permit {
                    lock(&self.shared.held).push(token.clone());
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
            let mut idle = lock(&self.shared.idle);
            // Close every expired or dead connection, not only those above the
            // first live one, so their slots go back to the other workers.
            let mut live = Vec::with_capacity(idle.len());
            for (mut conn, since, permit) in idle.drain(..) {
                if since.elapsed() < self.idle_timeout && !conn.is_closed() {
                    live.push((conn, since, permit));
                } else {
                    expired.push((conn, permit));
                }
            }
            let found = live.pop().map(|(conn, _, permit)| (conn, permit));
            *idle = live;
            found
        };
        for (conn, permit) in expired {
            retire(&self.shared, self.global.as_ref(), Some(conn), permit);
        }
        found
    }

    /// Runs `command` on a pooled (or new) connection.
    pub async fn exec(&self, command: &str) -> Result<String, ExecError> {
        self.exec_by(
            command,
            tokio::time::Instant::now() + self.timeouts.slot_wait + self.budget(),
        )
        .await
    }

    /// What one command may take once it has a slot: connecting, logging
    /// in, then the command (its quiet time included).
    fn budget(&self) -> Duration {
        self.timeouts.connect * 2 + self.timeouts.command
    }

    /// Runs `command`, waiting for a slot only as long as leaves time to
    /// connect and run it before `deadline` (then it is `Busy`: no attempt
    /// spent, re-queued).
    pub async fn exec_by(
        &self,
        command: &str,
        deadline: tokio::time::Instant,
    ) -> Result<String, ExecError> {
        // The semaphore is never closed, so acquire only fails if it were.
        // Bounded wait: a job queued behind a slow server reports it busy
        // (re-queued without spending an attempt) rather than outliving its
        // lease and sending late.
        // One deadline for the local permit and the global slot together.
        let deadline = (tokio::time::Instant::now() + self.timeouts.slot_wait)
            .min(deadline.checked_sub(self.budget()).unwrap_or(deadline));
        let _local = match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(ExecError::before_sending(super::RconError::Busy(
                    self.max_connections,
                )));
            }
        };
        let (mut conn, permit) = self.connection(deadline).await?;
        match conn.exec(command).await {
            Ok(out) => {
                if self.shared.contended.load(Ordering::Relaxed) {
                    // Another worker waits for this server: the slot goes back.
                    retire(&self.shared, self.global.as_ref(), Some(conn), permit);
                } else {
                    lock(&self.shared.idle).push((conn, Instant::now(), permit));
                }
                Ok(out)
            }
            Err(e) => {
                retire(&self.shared, self.global.as_ref(), Some(conn), permit);
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
        let mut pools = lock(&self.pools);
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
