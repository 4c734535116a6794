//! `PooledConnection`: a checked-out connection whose queries go through the
//! statement cache and the pool's counters; `Transaction` on top of it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement, ToStatement};

use super::gate::Permit;
use super::manager::PoolManager;
use super::statement_cache::Lookup;
use super::stats::Counters;
use crate::Error;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One way to run a statement (`query`, `query_one`, `query_opt`, `execute`)
/// and what it gives: the one generic path for the cache, the retry and the
/// counters.
trait Op: Copy + Send {
    type Out: Send;

    async fn call<T>(
        self,
        client: &Client,
        statement: &T,
        params: Params<'_>,
    ) -> Result<Self::Out, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement + Sync;
}

/// Declares an [`Op`] for one of tokio-postgres' client methods.
macro_rules! op {
    ($name:ident, $method:ident, $out:ty) => {
        #[derive(Clone, Copy)]
        struct $name;

        impl Op for $name {
            type Out = $out;

            async fn call<T>(
                self,
                client: &Client,
                statement: &T,
                params: Params<'_>,
            ) -> Result<$out, tokio_postgres::Error>
            where
                T: ?Sized + ToStatement + Sync,
            {
                client.$method(statement, params).await
            }
        }
    };
}

op!(Query, query, Vec<Row>);
op!(QueryOne, query_one, Row);
op!(QueryOpt, query_opt, Option<Row>);
op!(Execute, execute, u64);

/// The statement methods `PooledConnection` and `Transaction` share, each through
/// the one generic `run` of the connection `$conn` (with `$retry`: whether a stale
/// cached statement is prepared again and retried).
macro_rules! statement_methods {
    ($(#[$doc:meta])* $self:ident $(. $conn:ident)?, $retry:expr) => {
        /// Runs `sql` (a cached prepared statement) and returns its rows.
        $(#[$doc])*
        pub async fn query(&mut $self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
            $self$(.$conn)?.run(sql, params, Query, $retry).await
        }

        /// Runs `sql` and returns its one row (an error if it gives not exactly one).
        pub async fn query_one(&mut $self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
            $self$(.$conn)?.run(sql, params, QueryOne, $retry).await
        }

        /// Runs `sql` and returns its row, if any (an error if more than one).
        pub async fn query_opt(
            &mut $self,
            sql: &str,
            params: Params<'_>,
        ) -> Result<Option<Row>, Error> {
            $self$(.$conn)?.run(sql, params, QueryOpt, $retry).await
        }

        /// Runs `sql` and returns how many rows it affected.
        pub async fn execute(&mut $self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
            $self$(.$conn)?.run(sql, params, Execute, $retry).await
        }
    };
}

/// Whether the server rejected a cached statement because the schema under it
/// changed (or it no longer exists): evict and prepare again.
fn is_stale_statement(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        Some(db) => {
            (*db.code() == SqlState::FEATURE_NOT_SUPPORTED && db.message().contains("cached plan"))
                || *db.code() == SqlState::INVALID_SQL_STATEMENT_NAME
        }
        None => false,
    }
}

/// A connection checked out of an [`super::AdvancedConnectionPool`]. Returned to the
/// pool on drop (or closed, if it is broken, due for recycling, or surplus).
pub struct PooledConnection {
    // Field order matters: the connection goes back before the permit, so that the
    // next caller through the gate finds it idle.
    pub(super) conn: bb8::PooledConnection<'static, PoolManager>,
    /// The gate's permit, held with the pool it belongs to.
    pub(super) shared: Permit,
    checked_out_at: Instant,
    /// A statement was sent and its answer not yet read: if the connection is
    /// dropped now, the statement is cancelled in PostgreSQL and the connection
    /// closed, never handed to the next caller mid-statement.
    pub(super) in_flight: bool,
}

impl std::fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConnection")
            .field("pool", &self.shared.name)
            .field("conn", &*self.conn)
            .finish()
    }
}

impl PooledConnection {
    pub(crate) fn new(
        conn: bb8::PooledConnection<'static, PoolManager>,
        shared: Permit,
        now: Instant,
    ) -> Self {
        shared.checked_out.fetch_add(1, Ordering::Relaxed);
        conn.info.in_use.store(true, Ordering::Relaxed);
        Self {
            conn,
            shared,
            checked_out_at: now,
            in_flight: false,
        }
    }

    /// The underlying tokio-postgres client, for what this type does not wrap.
    /// Queries run on it bypass the statement cache and the query counters.
    pub fn client(&self) -> &Client {
        &self.conn.client
    }

    /// Queries this connection has run (toward recycle_threshold_queries).
    pub fn queries_run(&self) -> u64 {
        self.conn.queries
    }

    /// The prepared statement for `sql`: from this connection's cache, or prepared
    /// now (and cached, evicting the least recently used beyond capacity). With
    /// prepared statements off, prepared and not cached.
    pub async fn prepare_cached(&mut self, sql: &str) -> Result<Statement, Error> {
        let counters = &self.shared.counters;
        if self.shared.cache_capacity() == 0 {
            return self.conn.client.prepare(sql).await.map_err(Error::Database);
        }
        if let Lookup::Hit(statement) = self.conn.cache.get(sql) {
            Counters::add(&counters.cache_hits, 1);
            return Ok(statement);
        }
        Counters::add(&counters.cache_misses, 1);
        let statement = self
            .conn
            .client
            .prepare(sql)
            .await
            .map_err(Error::Database)?;
        let evicted = self.conn.cache.insert(sql, statement.clone()) as u64;
        Counters::add(&counters.cache_evictions, evicted);
        counters
            .cached_statements
            .fetch_add(1 - evicted, Ordering::Relaxed);
        Ok(statement)
    }

    fn forget_statement(&mut self, sql: &str) {
        if self.conn.cache.remove(sql) {
            self.shared
                .counters
                .cached_statements
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    async fn run<O: Op>(
        &mut self,
        sql: &str,
        params: Params<'_>,
        op: O,
        retry: bool,
    ) -> Result<O::Out, Error> {
        let started = Instant::now();
        let span = tracing::debug_span!(
            "db.query",
            db.system.name = "postgresql",
            db.client.connection.pool.name = %self.shared.name,
        );
        self.in_flight = true;
        let statement = async {
            self.conn.queries += 1;
            Counters::add(&self.shared.counters.total_queries, 1);
            if self.shared.cache_capacity() == 0 {
                return op
                    .call(&self.conn.client, sql, params)
                    .await
                    .map_err(Error::Database);
            }
            let statement = self.prepare_cached(sql).await?;
            match op.call(&self.conn.client, &statement, params).await {
                Err(e) if is_stale_statement(&e) => {
                    drop(statement);
                    self.forget_statement(sql);
                    if !retry {
                        return Err(Error::Database(e));
                    }
                    let statement = self.prepare_cached(sql).await?;
                    op.call(&self.conn.client, &statement, params)
                        .await
                        .map_err(Error::Database)
                }
                result => result.map_err(Error::Database),
            }
        };
        let result = if span.is_disabled() {
            statement.await
        } else {
            tracing::Instrument::instrument(statement, span).await
        };
        self.in_flight = false;
        self.shared
            .counters
            .operation_time
            .record(started.elapsed());
        self.counted(result)
    }

    statement_methods!(
        /// A statement the server rejects after a schema change is prepared again and
        /// retried once.
        self, true
    );

    /// Runs `sql` (no parameters) in a read-only transaction that is then rolled
    /// back, with `statement_timeout` set to `timeout` for it: nothing it does
    /// persists, not even a session `SET`. BEGIN, statement and ROLLBACK go out
    /// pipelined, in one round trip. Returns the rows it affected.
    pub async fn execute_read_only(&mut self, sql: &str, timeout: Duration) -> Result<u64, Error> {
        let started = Instant::now();
        self.conn.queries += 1;
        Counters::add(&self.shared.counters.total_queries, 1);
        let statement = self.prepare_cached(sql).await?;
        // Rounded up: the timeout never fires before the time given.
        let millis = timeout
            .as_micros()
            .div_ceil(1000)
            .clamp(1, i32::MAX as u128);
        let begin = format!("BEGIN READ ONLY; SET LOCAL statement_timeout = {millis}");
        let client = &self.conn.client;
        self.in_flight = true;
        let (begun, ran, ended) = tokio::join!(
            client.batch_execute(&begin),
            client.execute(&statement, &[]),
            client.batch_execute("ROLLBACK"),
        );
        self.in_flight = false;
        self.shared
            .counters
            .operation_time
            .record(started.elapsed());
        if let Err(e) = begun.and(ended) {
            // The session's state is unknown: do not reuse it.
            self.conn.broken = true;
            return Err(Error::Database(e));
        }
        let result = match ran {
            Err(e) if is_stale_statement(&e) => {
                drop(statement);
                self.forget_statement(sql);
                Err(Error::Database(e))
            }
            result => result.map_err(Error::Database),
        };
        self.counted(result)
    }

    /// Counts a failed statement in the pool's query_errors.
    pub(super) fn counted<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_err() {
            Counters::add(&self.shared.counters.query_errors, 1);
        }
        result
    }

    /// Runs one or more statements with the simple protocol (no parameters, no
    /// cache).
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.conn.queries += 1;
        Counters::add(&self.shared.counters.total_queries, 1);
        self.in_flight = true;
        let result = self.conn.client.batch_execute(sql).await;
        self.in_flight = false;
        self.counted(result.map_err(Error::Database))
    }

    /// Starts a transaction. It rolls back unless committed; one dropped without
    /// commit or rollback closes the connection (which rolls it back).
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, Error> {
        self.batch_execute("BEGIN").await?;
        Ok(Transaction {
            conn: self,
            done: false,
        })
    }
}

/// How long a cancel request may take to reach PostgreSQL.
pub const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if self.in_flight {
            // Abandoned mid-statement: cancel it in PostgreSQL (on a connection of
            // its own, as the protocol wants) and close this one. Its outcome is
            // never known here: counted as failed, not as done.
            self.conn.broken = true;
            Counters::add(&self.shared.counters.query_errors, 1);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let target = std::sync::Arc::clone(&self.conn.cancel);
                runtime.spawn(async move { target.send().await });
            }
        }
        let now = Instant::now();
        self.conn.last_used = now;
        self.conn.info.in_use.store(false, Ordering::Relaxed);
        self.shared
            .counters
            .use_time
            .record(now.saturating_duration_since(self.checked_out_at));
        if self.shared.checked_out.fetch_sub(1, Ordering::AcqRel) == 1 && self.shared.is_closed() {
            // The last one back: a graceful close waits for this.
            self.shared.all_returned.notify_waiters();
        }
    }
}

/// A transaction on a pooled connection. Statements use the cache; a statement
/// invalidated by a schema change is evicted but not retried (the transaction is
/// aborted by then), so the caller sees the error and a retry of the transaction
/// works.
#[derive(Debug)]
pub struct Transaction<'a> {
    conn: &'a mut PooledConnection,
    done: bool,
}

impl Transaction<'_> {
    statement_methods!(
        /// A statement invalidated by a schema change is not retried (the
        /// transaction is aborted by then).
        self.conn, false
    );

    /// Commits.
    pub async fn commit(mut self) -> Result<(), Error> {
        self.done = true;
        self.conn.batch_execute("COMMIT").await
    }

    /// Rolls back.
    pub async fn rollback(mut self) -> Result<(), Error> {
        self.done = true;
        self.conn.batch_execute("ROLLBACK").await
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Cannot await a ROLLBACK here: closing the session rolls back.
            self.conn.conn.broken = true;
        }
    }
}
