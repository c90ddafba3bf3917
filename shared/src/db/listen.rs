//! A `LISTEN` that stays up, for the processes that wait on notifications
//! (waiting reads, the relay's wake-up, the product cache).

use std::time::Duration;

use sqlx::PgPool;

/// What a listener hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard<'a> {
    /// The `LISTEN` is in place, first or again: anything sent before it
    /// may have been missed.
    Listening,
    /// A notification, with its payload.
    Notified(&'a str),
    /// The connection is gone; a new one follows a second later.
    Lost,
}

/// Listens on `channel` for as long as the task runs. After any failure it
/// waits a second and opens a new connection (it does not rely on sqlx's
/// own reconnect, so `Listening` always follows a gap in which
/// notifications may have been missed).
pub async fn listen(pool: PgPool, channel: &str, mut on: impl FnMut(Heard<'_>)) {
    loop {
        match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(channel).await {
                Ok(()) => {
                    on(Heard::Listening);
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(n)) => on(Heard::Notified(n.payload())),
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, channel, "listener failed; reconnecting");
                                break;
                            }
                        }
                    }
                    on(Heard::Lost);
                }
                Err(e) => tracing::warn!(error = %e, channel, "cannot LISTEN; retrying"),
            },
            Err(e) => tracing::debug!(error = %e, channel, "cannot connect to LISTEN"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
