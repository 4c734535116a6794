//! The bb8 `ManageConnection`: connect + warmup, the connection type with its
//! statement cache, and retire-on-return (broken, recycled, surplus after a shrink,
//! pool closed).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::task::JoinHandle;

use super::Shared;
use super::statement_cache::StatementCache;
use super::stats::Counters;
use crate::budget::ServerLimits;
use crate::events::PoolEventKind;

/// One pooled PostgreSQL connection.
pub(crate) struct Connection {
    pub client: tokio_postgres::Client,
    pub cache: StatementCache,
    /// Queries run on it (for recycling).
    pub queries: u64,
    /// When it was last returned to the pool (or opened).
    pub last_used: Instant,
    /// Set when a query showed it is unusable.
    pub broken: bool,
    /// The pool's reconnect generation when it opened.
    pub generation: u64,
    /// What cancels its running statement, made once when it opened.
    pub cancel: Arc<super::sql::CancelTarget>,
    /// Its socket, lendable to the wire front door.
    pub link: super::lend::Link,
    /// What the front door keeps per backend (its prepared statements, the
    /// session settings it applied).
    pub wire: super::wire::WireState,
    driver: JoinHandle<()>,
    shared: Arc<Shared>,
    /// Whether it still counts in `Shared::open` (a retired one no longer does).
    counted: bool,
    /// Its TLS and host, as the server saw it.
    security: super::stats::ConnSecurity,
    /// What operators see of it (listed while it is open).
    pub info: Arc<super::stats::BackendInfo>,
    /// Its slot in the server's connection budget.
    _slot: Option<crate::budget::BudgetSlot>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("queries", &self.queries)
            .field("cache", &self.cache)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Dropping the client ends the session (Terminate); the driver task then
        // finishes by itself. Abort it in case the socket hangs.
        self.driver.abort();
        let cached = self.cache.clear() as u64;
        self.shared
            .counters
            .cached_statements
            .fetch_sub(cached, Ordering::Relaxed);
        if self.counted {
            self.shared.open.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared
            .backends
            .lock()
            .expect("backends lock")
            .remove(&self.info.id);
        self.shared
            .security
            .lock()
            .expect("security lock")
            .remove(&self.security);
        Counters::add(&self.shared.counters.connections_closed, 1);
    }
}

/// Opens connections for one pool.
#[derive(Debug, Clone)]
pub(crate) struct PoolManager {
    pub pg: tokio_postgres::Config,
    pub shared: Arc<Shared>,
}

/// Aborts a connection's driver task if dropped before [`AbortOnDrop::keep`]: an
/// abandoned connection attempt leaves no task and no socket behind.
pub(crate) struct AbortOnDrop(pub(crate) Option<JoinHandle<()>>);

impl AbortOnDrop {
    pub(crate) fn keep(mut self) -> JoinHandle<()> {
        self.0.take().expect("kept once")
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(driver) = self.0.take() {
            driver.abort();
        }
    }
}

impl PoolManager {
    /// Opens a connection: TCP, startup, authentication and warmup queries, all
    /// within one deadline (the acquire timeout).
    /// First a slot of the server's connection budget, if the pool shares one.
    async fn open(&self) -> Result<Connection, OpenError> {
        let deadline = tokio::time::Instant::now() + self.shared.settings().acquire_timeout();
        let slot = match &self.shared.budget {
            Some(m) => match tokio::time::timeout_at(deadline, m.budget.slot()).await {
                Ok(slot) => Some(slot),
                Err(_) => return Err(OpenError::NoBudget),
            },
            None => None,
        };
        match tokio::time::timeout_at(deadline, self.open_unbounded(slot)).await {
            Ok(result) => result,
            Err(_) => Err(OpenError::TimedOut(
                self.shared.settings().acquire_timeout(),
            )),
        }
    }

    async fn open_unbounded(
        &self,
        slot: Option<crate::budget::BudgetSlot>,
    ) -> Result<Connection, OpenError> {
        let started = Instant::now();
        let opened = super::lend::connect(&self.shared.tls, &self.pg).await?;
        let (client, driver) = (opened.client, opened.driver);
        let warmup = self.shared.settings().connection_warmup_queries.clone();
        for query in &warmup {
            client
                .batch_execute(query)
                .await
                .map_err(OpenError::Postgres)?;
        }
        let (security, limits, pid) = server_facts(&client).await.map_err(OpenError::Postgres)?;
        if let (Some(m), Some(limits)) = (&self.shared.budget, limits) {
            m.budget.observe(limits);
        }
        self.shared
            .security
            .lock()
            .expect("security lock")
            .add(&security);
        let driver = driver.keep();
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        Counters::add(&self.shared.counters.connections_created, 1);
        self.shared.counters.create_time.record(started.elapsed());
        let cancel = Arc::new(super::sql::CancelTarget {
            token: client.cancel_token(),
            tls: self.shared.tls.connector.clone(),
            address: opened.address,
            shared: Arc::clone(&self.shared),
        });
        let info = Arc::new(super::stats::BackendInfo {
            id: NEXT_BACKEND.fetch_add(1, Ordering::Relaxed),
            pid,
            security: security.clone(),
            connected_at: std::time::SystemTime::now(),
            in_use: std::sync::atomic::AtomicBool::new(false),
        });
        self.shared
            .backends
            .lock()
            .expect("backends lock")
            .insert(info.id, Arc::clone(&info));
        Ok(Connection {
            info,
            client,
            cache: StatementCache::new(self.shared.cache_capacity()),
            queries: 0,
            last_used: Instant::now(),
            broken: false,
            generation: self.shared.generation.load(Ordering::Relaxed),
            cancel,
            link: opened.link,
            wire: super::wire::WireState::new(self.shared.cache_capacity()),
            driver,
            shared: Arc::clone(&self.shared),
            counted: true,
            security,
            _slot: slot,
        })
    }
}

/// Why a connection did not open: the pool's own error, so that a deadline of
/// ours is never dressed up as one of tokio-postgres's.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// PostgreSQL (or the network) failed.
    Postgres(tokio_postgres::Error),
    /// The socket could not be opened.
    Socket(std::io::Error),
    /// TCP, TLS, startup, authentication and warmup did not finish within the
    /// deadline (the acquire timeout).
    TimedOut(std::time::Duration),
    /// No slot of the server's connection budget was freed in time.
    NoBudget,
}

impl OpenError {
    /// The error in words (a PostgreSQL error with its SQLSTATE and message);
    /// the caller redacts it.
    pub(crate) fn describe(&self) -> String {
        match self {
            OpenError::Postgres(e) => crate::describe_pg_error(e),
            OpenError::Socket(e) => format!("error connecting to server: {e}"),
            OpenError::TimedOut(after) => format!(
                "the connection did not open within {} s (acquire_timeout_secs)",
                after.as_secs_f64()
            ),
            OpenError::NoBudget => {
                "no slot of the server's connection budget was freed in time".into()
            }
        }
    }

    /// The server's SQLSTATE, when PostgreSQL itself refused.
    pub(crate) fn sqlstate(&self) -> Option<String> {
        match self {
            OpenError::Postgres(e) => e.code().map(|code| code.code().to_owned()),
            OpenError::Socket(_) | OpenError::TimedOut(_) | OpenError::NoBudget => None,
        }
    }
}

/// The id of the next connection any pool opens.
static NEXT_BACKEND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What [`server_facts`] reads.
type Facts = (super::stats::ConnSecurity, Option<ServerLimits>, i32);

/// The connection's TLS (version, cipher) and server address, from pg_stat_ssl,
/// the server's connection limits (for its budget) and the backend's process
/// id, in one round trip.
async fn server_facts(client: &tokio_postgres::Client) -> Result<Facts, tokio_postgres::Error> {
    let rows = client
        .simple_query(
            "SELECT s.ssl, s.version, s.cipher, \
                    coalesce(host(inet_server_addr()) || ':' || inet_server_port(), 'socket'), \
                    current_setting('max_connections'), \
                    current_setting('superuser_reserved_connections')::int4 \
                      + coalesce(current_setting('reserved_connections', true)::int4, 0), \
                    pg_backend_pid() \
             FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()",
        )
        .await?;
    let row = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let Some(row) = row else {
        return Ok((super::stats::ConnSecurity::default(), None, 0));
    };
    let security = super::stats::ConnSecurity {
        tls: (row.get(0) == Some("t")).then(|| {
            (
                row.get(1).unwrap_or_default().to_owned(),
                row.get(2).unwrap_or_default().to_owned(),
            )
        }),
        host: row.get(3).unwrap_or("unknown").to_owned(),
    };
    let number = |i: usize| row.get(i).and_then(|v| v.parse::<u32>().ok());
    let limits = number(4)
        .zip(number(5))
        .map(|(max_connections, reserved_connections)| ServerLimits {
            max_connections,
            reserved_connections,
        });
    let pid = row.get(6).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((security, limits, pid))
}

impl bb8::ManageConnection for PoolManager {
    type Connection = Connection;
    type Error = OpenError;

    async fn connect(&self) -> Result<Connection, OpenError> {
        let span = tracing::debug_span!(
            "db.connection.create",
            db.system.name = "postgresql",
            db.client.connection.pool.name = %self.shared.name,
        );
        let opened = tracing::Instrument::instrument(self.open(), span).await;
        match &opened {
            Ok(_) => {}
            Err(OpenError::NoBudget) => self.shared.record_budget_wait(),
            Err(e) => self.shared.record_connect_error(e),
        }
        opened
    }

    /// Unused: checkout validation is done by the pool (only for connections idle
    /// longer than the threshold); bb8's test_on_check_out is off.
    async fn is_valid(&self, conn: &mut Connection) -> Result<(), OpenError> {
        let query = self.shared.settings().validation_query.clone();
        conn.client
            .simple_query(&query)
            .await
            .map(|_| ())
            .map_err(OpenError::Postgres)
    }

    /// Called when a connection comes back: true closes it.
    fn has_broken(&self, conn: &mut Connection) -> bool {
        if conn.broken
            || conn.client.is_closed()
            || self.shared.is_closed()
            || conn.generation < self.shared.generation.load(Ordering::Relaxed)
        {
            return true;
        }
        let recycle_after = self.shared.recycle_threshold.load(Ordering::Relaxed);
        if recycle_after > 0 && conn.queries >= recycle_after {
            Counters::add(&self.shared.counters.connections_recycled, 1);
            self.shared.events.send(PoolEventKind::ConnectionRecycled {
                queries: conn.queries,
            });
            return true;
        }
        // Shrink: retire while more are open than the pool's size. The decrement is
        // claimed atomically so that concurrent returns never retire too many.
        let target = self.shared.target_size.load(Ordering::Acquire);
        let retire = self
            .shared
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open > target).then(|| open - 1)
            })
            .is_ok();
        if retire {
            conn.counted = false;
        }
        retire
    }
}
