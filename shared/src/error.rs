//! Error kinds shared across the crate.

/// How a driver failure should be handled: the retry decision comes from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Timeouts, refused or reset connections, 5xx, 429: try again later.
    Transient,
    /// Wrong password, invalid configuration, a command the server rejects: no retry helps.
    Permanent,
    /// Not a failure: the target is not ready (player offline, out of stock).
    Waiting,
    /// Not a failure either: a limit Courier itself keeps (a game server's
    /// connection slots across workers) had no room; tried again shortly,
    /// without spending the retry budget.
    Busy,
}

/// A database error, or a stored value the domain does not know.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Transition(#[from] crate::domain::IllegalTransition),
}

impl From<crate::domain::UnknownValue> for DbError {
    fn from(e: crate::domain::UnknownValue) -> Self {
        DbError::Corrupt(e.to_string())
    }
}

impl From<serde_json::Error> for DbError {
    fn from(e: serde_json::Error) -> Self {
        DbError::Corrupt(e.to_string())
    }
}

impl DbError {
    /// The database could not be used, rather than refused the statement
    /// (see `unavailable`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Sqlx(e) if unavailable(e))
    }
}

/// The database could not be used, rather than refused the statement: no
/// connection in time, a connection that broke, or a server shutting down,
/// restarting or starting up (SQLSTATE classes 08 and 57P). Trying again
/// later can succeed; nothing about the request was wrong.
pub fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// The same failure again, for each caller of a batch that failed as one
/// (`sqlx::Error` is not `Clone`): of the same kind where a caller tells
/// kinds apart — the pool, the connection, the database unavailable
/// (`DbError::is_unavailable`) — else a protocol error with its message.
pub fn same_sqlx_error(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::WorkerCrashed => sqlx::Error::WorkerCrashed,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        sqlx::Error::Tls(_) | sqlx::Error::Database(_) if unavailable(e) => sqlx::Error::Io(
            std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e.to_string()),
        ),
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// The Postgres constraint a query violated, if that is why it failed.
pub fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}
