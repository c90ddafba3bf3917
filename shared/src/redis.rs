//! Redis holds only coordination state across replicas; losing it costs no data.

use redis::aio::ConnectionManager;

use crate::config::RedisSettings;
use crate::tls::CaBundle;

/// A client for `url`; a `rediss://` URL is verified against `ca` when a
/// bundle is set, else against the built-in roots.
pub fn client(url: &str, ca: &CaBundle) -> Result<redis::Client, redis::RedisError> {
    match ca.pem() {
        Some(pem) if url.starts_with("rediss://") => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.as_bytes().to_vec()),
            },
        ),
        _ => redis::Client::open(url),
    }
}

/// A reconnecting connection. Creation fails only on an invalid URL or when
/// Redis is unreachable at start-up; afterwards the manager reconnects by itself.
pub async fn connect(
    settings: &RedisSettings,
    ca: &CaBundle,
) -> Result<ConnectionManager, redis::RedisError> {
    ConnectionManager::new(client(settings.url.expose(), ca)?).await
}

/// `PING`, for readiness checks.
pub async fn ping(conn: &mut ConnectionManager) -> Result<(), redis::RedisError> {
    redis::cmd("PING")
        .query_async::<String>(conn)
        .await
        .map(|_| ())
}
