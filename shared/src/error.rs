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
    /// The database could not be used, rather than refused the statement:
    /// no connection in time, a connection that broke, or a server shutting
    /// down, restarting or starting up (SQLSTATE classes 08 and 57P). Trying
    /// again later can succeed; nothing about the request was wrong.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Sqlx(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            DbError::Sqlx(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    }
}

/// The Postgres constraint a query violated, if that is why it failed.
pub fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}
