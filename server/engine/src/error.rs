//! The engine's error type.

/// One field of a request at fault: `name`, `database_url`, `config.min_connections`,
/// `concurrency`…
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestViolation {
    /// The field, as the request names it.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl RequestViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl std::fmt::Display for RequestViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// The limit a checkout that timed out met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireLimit {
    /// Every connection of the pool's current size was in use (the pool may
    /// still grow toward max_connections).
    CurrentSize {
        /// The current size.
        size: u32,
        /// max_connections.
        max: u32,
    },
    /// Every connection up to max_connections was in use.
    MaxConnections(u32),
    /// A connection could not be opened in time.
    Opening,
}

impl std::fmt::Display for AcquireLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CurrentSize { size: 1, max } => write!(
                f,
                "the one connection of the pool's current size was in use \
                 (it grows toward max_connections {max} with demand)"
            ),
            Self::CurrentSize { size, max } => write!(
                f,
                "all {size} connections of the pool's current size were in use \
                 (it grows toward max_connections {max} with demand)"
            ),
            Self::MaxConnections(1) => {
                f.write_str("the pool's only connection (max_connections 1) was in use")
            }
            Self::MaxConnections(max) => {
                write!(f, "all {max} connections (max_connections) were in use")
            }
            Self::Opening => f.write_str("no connection could be opened in time"),
        }
    }
}

impl Error {
    /// The request fields this error is about, for a request made of a pool's
    /// name, database URL and config (empty for other errors).
    pub fn request_violations(&self) -> Vec<RequestViolation> {
        match self {
            Error::InvalidPoolName { .. } => vec![RequestViolation::new("name", self.to_string())],
            Error::InvalidDatabaseUrl(reason) => {
                vec![RequestViolation::new("database_url", reason.to_string())]
            }
            Error::InvalidConfig(errors) => errors
                .0
                .iter()
                .map(|v| {
                    RequestViolation::new(format!("config.{}", v.field), v.description.clone())
                })
                .collect(),
            Error::InvalidRequest(violations) => violations.clone(),
            _ => Vec::new(),
        }
    }
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A database URL that parses as neither a postgres:// URL nor key=value
    /// conninfo, or holds an option poolplane refuses.
    #[error("invalid database URL: {0}")]
    InvalidDatabaseUrl(#[source] crate::conninfo::ConnInfoError),
    /// A database target outside the server's allowlist (`--allowed-db-hosts`):
    /// refused before any connection is attempted.
    #[error("{target} is not in the allowed database hosts")]
    TargetNotAllowed {
        /// The refused target (`host:port` or the socket directory).
        target: String,
    },
    /// As many pools as the server allows exist already.
    #[error("the server holds its maximum of {max} pools")]
    TooManyPools {
        /// The limit.
        max: usize,
    },
    /// The secrets key or a stored secret is unusable (wrong or missing key).
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    /// The control database could not be reached.
    #[error("control database: {context}: {source}")]
    ControlDatabase {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// No control-database connection became free in time.
    #[error("control database: timed out waiting for a connection")]
    ControlDatabaseTimeout,
    /// A control-database query failed.
    #[error("control database: {context}: {source}")]
    ControlQuery {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Applying the control database's migrations failed.
    #[error("control database: migration failed: {0}")]
    Migration(#[source] Box<refinery::Error>),
    /// The embedded PostgreSQL failed.
    #[error(transparent)]
    EmbeddedPg(#[from] crate::embedded_pg::EmbeddedPgError),
    /// A pool config broke one or more rules (every violation is listed).
    #[error(transparent)]
    InvalidConfig(#[from] crate::config::ConfigErrors),
    /// A request's options (e.g. a load test's) broke one or more rules: every
    /// violation is listed, each naming the request's field.
    #[error("invalid request: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidRequest(Vec<RequestViolation>),
    /// No connection became available within acquire_timeout_secs.
    #[error("timed out after {timeout:?} waiting for a connection: {limit}{}", .last_connect_error.as_ref().map(|e| format!(" (last connection error: {e})")).unwrap_or_default())]
    AcquireTimeout {
        /// The timeout that passed.
        timeout: std::time::Duration,
        /// The limit the caller met.
        limit: AcquireLimit,
        /// Why the last attempt to open a connection failed, if one did recently
        /// (passwords redacted).
        last_connect_error: Option<String>,
    },
    /// The pool was closed.
    #[error("the pool is closed")]
    PoolClosed,
    /// The pool's database could not be reached when the pool was created.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The database, password redacted.
        url: String,
        /// Why (password redacted).
        reason: String,
        /// The server's SQLSTATE, when PostgreSQL itself refused (e.g. 3D000 for a
        /// database that does not exist, 28P01 for a wrong password).
        sqlstate: Option<String>,
    },
    /// No pool has this name.
    #[error("pool `{0}` not found")]
    PoolNotFound(String),
    /// A pool with this name exists already.
    #[error("pool `{0}` already exists")]
    PoolAlreadyExists(String),
    /// Another replica of the group changed the pool since this one last saw it.
    #[error(
        "pool `{0}` was changed by another replica meanwhile; nothing was applied (read it again and retry)"
    )]
    ConcurrentChange(String),
    /// A pool name that breaks `[a-z0-9][a-z0-9_-]{{0,62}}`.
    #[error("invalid pool name `{name}`: {reason}")]
    InvalidPoolName {
        /// The name as given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The server (the registry) is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Another create, update or delete of this pool is under way.
    #[error("another change to pool `{0}` is under way; retry when it is done")]
    PoolBusy(String),
    /// A load test is already running on this pool.
    #[error("a load test is already running on pool `{0}`")]
    LoadTestRunning(String),
    /// A pool's min_connections does not fit its server's connection budget.
    #[error("{0}")]
    BudgetExceeded(crate::budget::BudgetRefusal),
    /// A statement was cancelled in PostgreSQL: its deadline passed, or its
    /// caller went away.
    #[error("{}", if *.deadline_exceeded { "the statement's deadline passed; it was cancelled in PostgreSQL" } else { "the caller went away; the statement was cancelled in PostgreSQL" })]
    StatementCancelled {
        /// The deadline passed (else the caller went away).
        deadline_exceeded: bool,
    },
    /// A result column of a type QueryService does not map.
    #[error(
        "column `{column}` has type {type_name}, which is not mapped: cast it (e.g. `{column}::text`)"
    )]
    UnsupportedType {
        /// The column.
        column: String,
        /// Its PostgreSQL type.
        type_name: String,
    },
    /// A statement or its parameters do not fit together.
    #[error("{0}")]
    InvalidQuery(String),
    /// A call exceeded one of its limits.
    #[error("the call exceeds its limit of {limit} {what}")]
    QueryLimit {
        /// What was counted.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The pool's database fails its health checks: calls fail fast.
    #[error("pool `{pool}` is unhealthy: {reason}")]
    PoolUnhealthy {
        /// The pool.
        pool: String,
        /// Its last health-check error.
        reason: String,
    },
    /// PostgreSQL answered a query with an error (see [`Error::sqlstate`]).
    #[error("{}", describe_pg_error(.0))]
    Database(#[source] tokio_postgres::Error),
}

/// Which kind of error, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bad argument: config, URL.
    InvalidArgument,
    /// No connection in time.
    AcquireTimeout,
    /// The pool is closed.
    PoolClosed,
    /// The pool's database is unreachable.
    Unavailable,
    /// PostgreSQL reported an error.
    Database,
    /// No such pool.
    NotFound,
    /// The pool exists already.
    AlreadyExists,
    /// The pool is busy with something that runs one at a time.
    Busy,
    /// The target is not allowed.
    PermissionDenied,
    /// A server-wide limit is reached.
    ResourceExhausted,
    /// The request cannot be met in the system's present state.
    FailedPrecondition,
    /// The control database or the embedded PostgreSQL failed.
    Internal,
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidDatabaseUrl(_)
            | Error::InvalidConfig(_)
            | Error::InvalidRequest(_)
            | Error::InvalidPoolName { .. } => ErrorKind::InvalidArgument,
            Error::PoolNotFound(_) => ErrorKind::NotFound,
            Error::TargetNotAllowed { .. } => ErrorKind::PermissionDenied,
            Error::TooManyPools { .. } => ErrorKind::ResourceExhausted,
            Error::BudgetExceeded(_) => ErrorKind::FailedPrecondition,
            Error::StatementCancelled { .. } => ErrorKind::AcquireTimeout,
            Error::UnsupportedType { .. } | Error::InvalidQuery(_) => ErrorKind::InvalidArgument,
            Error::QueryLimit { .. } => ErrorKind::ResourceExhausted,
            Error::PoolUnhealthy { .. } => ErrorKind::Unavailable,
            Error::LoadTestRunning(_) | Error::PoolBusy(_) | Error::ConcurrentChange(_) => {
                ErrorKind::Busy
            }
            Error::PoolAlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::AcquireTimeout { .. } => ErrorKind::AcquireTimeout,
            Error::PoolClosed => ErrorKind::PoolClosed,
            Error::Connect { .. } | Error::ShuttingDown => ErrorKind::Unavailable,
            Error::Database(_) => ErrorKind::Database,
            Error::ControlDatabase { .. }
            | Error::ControlDatabaseTimeout
            | Error::ControlQuery { .. }
            | Error::Migration(_)
            | Error::Secrets(_)
            | Error::EmbeddedPg(_) => ErrorKind::Internal,
        }
    }

    /// The SQLSTATE of a database error, or of PostgreSQL refusing a connection.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Database(e) => e.code().map(tokio_postgres::error::SqlState::code),
            Error::Connect { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }
}

/// A tokio-postgres error in words: the server's SQLSTATE and message for a
/// database error (tokio-postgres's own Display says only "db error"), else the
/// error and its cause.
pub fn describe_pg_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acquire_timeout_names_the_limit_met() {
        let timeout = |limit| Error::AcquireTimeout {
            timeout: std::time::Duration::from_secs(2),
            limit,
            last_connect_error: None,
        };
        assert_eq!(
            timeout(AcquireLimit::CurrentSize { size: 3, max: 10 }).to_string(),
            "timed out after 2s waiting for a connection: all 3 connections of the pool's \
             current size were in use (it grows toward max_connections 10 with demand)"
        );
        assert_eq!(
            timeout(AcquireLimit::MaxConnections(1)).to_string(),
            "timed out after 2s waiting for a connection: the pool's only connection \
             (max_connections 1) was in use"
        );
        assert_eq!(
            timeout(AcquireLimit::MaxConnections(10)).to_string(),
            "timed out after 2s waiting for a connection: all 10 connections (max_connections) \
             were in use"
        );
        let opening = Error::AcquireTimeout {
            timeout: std::time::Duration::from_secs(2),
            limit: AcquireLimit::Opening,
            last_connect_error: Some("connection refused".into()),
        };
        assert_eq!(
            opening.to_string(),
            "timed out after 2s waiting for a connection: no connection could be opened in time \
             (last connection error: connection refused)"
        );
    }
}
