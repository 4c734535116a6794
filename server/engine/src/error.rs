//! The engine's error type.

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A database URL that parses as neither a postgres:// URL nor key=value conninfo.
    #[error("invalid database URL {url}: {source}")]
    InvalidDatabaseUrl {
        /// The URL, password redacted.
        url: String,
        /// Why it does not parse.
        #[source]
        source: tokio_postgres::Error,
    },
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
}
