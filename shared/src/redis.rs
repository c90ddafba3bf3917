//! Redis holds only coordination state across replicas; losing it costs no data.

use redis::aio::ConnectionManager;

use crate::config::RedisSettings;

/// A reconnecting connection. Creation fails only on an invalid URL or when
/// Redis is unreachable at start-up; afterwards the manager reconnects by itself.
pub async fn connect(settings: &RedisSettings) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(settings.url.expose())?;
    ConnectionManager::new(client).await
}

/// `PING`, for readiness checks.
pub async fn ping(conn: &mut ConnectionManager) -> Result<(), redis::RedisError> {
    redis::cmd("PING")
        .query_async::<String>(conn)
        .await
        .map(|_| ())
}
