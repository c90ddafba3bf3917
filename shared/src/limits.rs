//! Limits shared by every worker replica, kept in Redis: a semaphore per game
//! server (at most `max_connections` RCON sessions across all workers),
//! requests-per-second windows (per supplier; Discord's 50/s per bot), and
//! pauses ("blocks") that one replica sets when a remote system says wait (a
//! Discord 429) and every replica honours.
//!
//! Redis holds only this coordination state. When it is unreachable each
//! process falls back to conservative local limits — one RCON session per
//! server per process, a quarter of each rate — and keeps working; it retries
//! Redis at most once a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a Redis call may take before the local fallback is used.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
redis.call('SET', KEYS[1] .. ':wanted', '1', 'PX', 1000)
return 0
";

const WINDOW: &str = r"
local t = redis.call('TIME')
local key = KEYS[1] .. ':' .. t[1]
local n = redis.call('INCR', key)
if n == 1 then redis.call('PEXPIRE', key, 2000) end
if n > tonumber(ARGV[1]) then return 1000 - math.floor(t[2] / 1000) end
return 0
";

pub struct Limits {
    client: Option<redis::Client>,
    prefix: String,
    conn: tokio::sync::Mutex<(Option<ConnectionManager>, Option<Instant>)>,
    local_sems: Mutex<HashMap<String, Arc<Semaphore>>>,
    local_windows: Mutex<HashMap<String, (u64, u32)>>,
    local_blocks: Mutex<HashMap<String, Instant>>,
    /// True since the last Redis call fell back to local limits.
    fallback: std::sync::atomic::AtomicBool,
}

/// A held semaphore slot; `release` it when done (it also expires on its own,
/// so a worker that dies cannot hold a slot for ever).
pub enum Permit {
    Redis { key: String, token: String },
    Local(#[allow(dead_code)] OwnedSemaphorePermit),
}

impl Limits {
    /// `prefix` namespaces the keys (the installation's queue prefix).
    pub fn new(redis_url: &str, prefix: &str) -> Self {
        Self::with_client(redis::Client::open(redis_url).ok(), prefix)
    }

    /// With a client built elsewhere (e.g. with a CA bundle); `None` means
    /// local limits only.
    pub fn with_client(client: Option<redis::Client>, prefix: &str) -> Self {
        Limits {
            client,
            prefix: format!("courier:{prefix}"),
            conn: tokio::sync::Mutex::new((None, None)),
            local_sems: Mutex::new(HashMap::new()),
            local_windows: Mutex::new(HashMap::new()),
            local_blocks: Mutex::new(HashMap::new()),
            fallback: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the local fallback is in use (for `/metrics`).
    pub fn fallback_active(&self) -> bool {
        self.fallback.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_fallback(&self, on: bool) {
        self.fallback
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// A connection, or `None` (then the caller falls back to local limits).
    async fn redis(&self) -> Option<ConnectionManager> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = &guard.0 {
            return Some(c.clone());
        }
        if guard
            .1
            .is_some_and(|last| last.elapsed() < Duration::from_secs(1))
        {
            self.set_fallback(true);
            return None;
        }
        guard.1 = Some(Instant::now());
        let Some(client) = self.client.clone() else {
            self.set_fallback(true);
            return None;
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        match tokio::time::timeout(
            Duration::from_secs(1),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(Ok(c)) => {
                guard.0 = Some(c.clone());
                self.set_fallback(false);
                Some(c)
            }
            _ => {
                tracing::warn!("Redis unreachable: using conservative local limits");
                self.set_fallback(true);
                None
            }
        }
    }

    async fn forget_redis(&self) {
        let mut guard = self.conn.lock().await;
        guard.0 = None;
        guard.1 = Some(Instant::now());
        self.set_fallback(true);
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Waits for one of `max` slots of `name` across all replicas; a slot
    /// expires after `ttl` if never released.
    pub async fn acquire(&self, name: &str, max: usize, ttl: Duration) -> Permit {
        let key = self.key(&format!("sem:{name}"));
        let token = uuid::Uuid::new_v4().to_string();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        loop {
            let Some(mut conn) = self.redis().await else {
                return self.local_permit(name).await;
            };
            let script = redis::Script::new(ACQUIRE);
            let got: Result<i64, _> = script
                .key(&key)
                .arg(max)
                .arg(ttl_ms)
                .arg(&token)
                .invoke_async(&mut conn)
                .await;
            match got {
                Ok(1) => return Permit::Redis { key, token },
                Ok(_) => {
                    tokio::time::sleep(Duration::from_millis(10 + rand::random::<u64>() % 20)).await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Redis semaphore failed: using a local one");
                    self.forget_redis().await;
                    return self.local_permit(name).await;
                }
            }
        }
    }

    async fn local_permit(&self, name: &str) -> Permit {
        let sem = self
            .local_sems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone();
        Permit::Local(
            sem.acquire_owned()
                .await
                .expect("local semaphores are never closed"),
        )
    }

    /// Like `acquire`, but gives up after `wait` (the caller then reports the
    /// target busy and retries later, rather than outliving its lease).
    pub async fn acquire_within(
        &self,
        name: &str,
        max: usize,
        ttl: Duration,
        wait: Duration,
    ) -> Option<Permit> {
        tokio::time::timeout(wait, self.acquire(name, max, ttl))
            .await
            .ok()
    }

    /// Whether some replica waited for a slot of `name` within the last
    /// second (holders then give back idle slots instead of keeping them).
    pub async fn wanted(&self, name: &str) -> bool {
        let Some(mut conn) = self.redis().await else {
            return false;
        };
        let key = self.key(&format!("sem:{name}:wanted"));
        redis::cmd("EXISTS")
            .arg(&key)
            .query_async::<i64>(&mut conn)
            .await
            .is_ok_and(|n| n > 0)
    }

    /// Pushes the expiry of held slots `tokens` of `name` to `ttl` from now; a
    /// process refreshes its slots while alive, so a dead one's expire soon.
    pub async fn refresh(&self, name: &str, tokens: &[String], ttl: Duration) {
        if tokens.is_empty() {
            return;
        }
        if let Some(mut conn) = self.redis().await {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let script = redis::Script::new(
                "local t = redis.call('TIME') \
                 local at = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1]) \
                 for i = 2, #ARGV do \
                   if redis.call('ZSCORE', KEYS[1], ARGV[i]) then redis.call('ZADD', KEYS[1], at, ARGV[i]) end \
                 end \
                 redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2) return 1",
            );
            let mut invocation = script.key(self.key(&format!("sem:{name}")));
            invocation.arg(ttl_ms);
            for t in tokens {
                invocation.arg(t);
            }
            let _: Result<i64, _> = invocation.invoke_async(&mut conn).await;
        }
    }

    pub async fn release(&self, permit: Permit) {
        if let Permit::Redis { key, token } = permit
            && let Some(mut conn) = self.redis().await
        {
            let _: Result<i64, _> = redis::cmd("ZREM")
                .arg(&key)
                .arg(&token)
                .query_async(&mut conn)
                .await;
        }
    }

    /// Waits until a request of `name` fits in `per_second` across all replicas.
    pub async fn throttle(&self, name: &str, per_second: u32) {
        let key = self.key(&format!("rate:{name}"));
        loop {
            let wait_ms = match self.redis().await {
                Some(mut conn) => {
                    let script = redis::Script::new(WINDOW);
                    match script
                        .key(&key)
                        .arg(per_second)
                        .invoke_async::<i64>(&mut conn)
                        .await
                    {
                        Ok(ms) => ms.max(0) as u64,
                        Err(e) => {
                            tracing::warn!(error = %e, "Redis rate limit failed: using a local one");
                            self.forget_redis().await;
                            self.local_window(name, (per_second / 4).max(1))
                        }
                    }
                }
                None => self.local_window(name, (per_second / 4).max(1)),
            };
            if wait_ms == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(wait_ms + 1)).await;
        }
    }

    fn local_window(&self, name: &str, limit: u32) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let second = now.as_secs();
        let mut windows = self.local_windows.lock().unwrap_or_else(|e| e.into_inner());
        let entry = windows.entry(name.to_owned()).or_insert((second, 0));
        if entry.0 != second {
            *entry = (second, 0);
        }
        entry.1 += 1;
        if entry.1 > limit {
            1000 - u64::from(now.subsec_millis())
        } else {
            0
        }
    }

    /// Pauses `name` for every replica for `duration`.
    pub async fn block(&self, name: &str, duration: Duration) {
        let ms = u64::try_from(duration.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.local_blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), Instant::now() + duration);
        if let Some(mut conn) = self.redis().await {
            let _: Result<(), _> = redis::cmd("SET")
                .arg(self.key(&format!("block:{name}")))
                .arg(1)
                .arg("PX")
                .arg(ms)
                .query_async(&mut conn)
                .await;
        }
    }

    /// How long `name` is still paused (by any replica), if it is.
    pub async fn blocked_for(&self, name: &str) -> Option<Duration> {
        let local = self
            .local_blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .and_then(|until| until.checked_duration_since(Instant::now()));
        let remote = match self.redis().await {
            Some(mut conn) => redis::cmd("PTTL")
                .arg(self.key(&format!("block:{name}")))
                .query_async::<i64>(&mut conn)
                .await
                .ok()
                .filter(|ms| *ms > 0)
                .map(|ms| Duration::from_millis(ms as u64)),
            None => None,
        };
        local.max(remote).filter(|d| !d.is_zero())
    }

    /// Sleeps while `name` is paused.
    pub async fn wait_unblocked(&self, name: &str) {
        while let Some(d) = self.blocked_for(name).await {
            tokio::time::sleep(d).await;
        }
    }
}
