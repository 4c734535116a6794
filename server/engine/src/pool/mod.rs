//! `AdvancedConnectionPool`: a bb8 pool built at max_connections behind a resizable
//! admission gate (the pool's current size), with stats, a statement cache per
//! connection, health monitoring and dynamic sizing in background tasks it owns.
//! Each connection's socket can be lent to the wire front door (`lend`, `wire`)
//! while its tokio-postgres driver is parked.

mod connection;
mod gate;
pub(crate) mod health;
mod lend;
mod maintenance;
pub(crate) mod manager;
pub mod sizing;
pub mod sql;
pub mod statement_cache;
pub mod stats;
pub mod wire;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use tokio::sync::broadcast;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget;
pub use crate::budget::{BudgetRefusal, BudgetStats, ServerBudget};
pub use crate::events::ScaleDirection;
pub use connection::{CANCEL_TIMEOUT, PooledConnection, Transaction};
pub use health::HealthStatus;
pub use lend::{BackendIo, BoxIo, LendError};
pub use sizing::ScalingDecision;
pub use stats::{Backend, ConnectionSecurity, Histogram, PoolStats, StatementCacheStats};
pub use wire::{WireBackend, WireCounters, WireSettings, WireState, WireStats};

use crate::conninfo::ConnInfo;
use crate::error::AcquireLimit;
use crate::events::{EventSender, PoolEvent};
use crate::{AdvancedPoolConfig, Error};
use maintenance::{maintain, open_connections, retire_idle};
use manager::PoolManager;
use stats::Counters;

/// `secs` seconds, `None` for 0 (off).
fn secs(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Who a checkout is for: the typed API (QueryService, load tests, embedding)
/// or the wire front door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaker {
    Typed,
    Wire,
}

/// State shared by the pool, its connections and its tasks.
pub(crate) struct Shared {
    name: String,
    /// The pool's target, for scrubbing messages that might quote its password.
    target: Option<Arc<ConnInfo>>,
    /// How its connections (and health checks, and cancel requests) are made.
    tls: crate::tls::PgTls,
    /// How its open connections are secured, and where they are.
    security: Mutex<stats::ConnectionSecurity>,
    settings: RwLock<Arc<AdvancedPoolConfig>>,
    /// Hot-path copies of settings (0 = off).
    recycle_threshold: AtomicU64,
    /// Bumped by `reconnect`: connections opened before it are replaced.
    generation: AtomicU64,
    cache_capacity: AtomicU32,
    validation_idle_ms: AtomicU64,
    /// The pool's current size: the gate's permits (plus pending forgets).
    target_size: AtomicU32,
    /// Open connections that still count toward the size.
    open: AtomicU32,
    checked_out: AtomicU32,
    /// Woken when the last checked-out connection of a closed pool comes back.
    all_returned: tokio::sync::Notify,
    gate: gate::Gate,
    counters: Counters,
    health: Mutex<HealthStatus>,
    last_connect_error: Mutex<Option<(Instant, String)>>,
    events: EventSender,
    closed: AtomicBool,
    /// The connection budget of the pool's server, when it shares one.
    budget: Option<budget::Membership>,
    /// The size the budget allows now (`u32::MAX`: no limit known).
    budget_share: AtomicU32,
    /// The size the pool's demand needs (its claim on the budget).
    need: AtomicU32,
    /// The wire front door's counters of the pool's name.
    wire: Mutex<Arc<WireCounters>>,
    /// Its open connections, by id (what an operator lists).
    backends: Mutex<std::collections::BTreeMap<u64, Arc<stats::BackendInfo>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn settings(&self) -> Arc<AdvancedPoolConfig> {
        Arc::clone(&self.settings.read().expect("settings lock"))
    }

    fn cache_capacity(&self) -> usize {
        self.cache_capacity.load(Ordering::Relaxed) as usize
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn redact(&self, text: &str) -> String {
        match &self.target {
            Some(target) => target.scrub(text),
            None => text.to_owned(),
        }
    }

    fn record_connect_error(&self, error: &manager::OpenError) {
        Counters::add(&self.counters.connection_errors, 1);
        let text = self.redact(&error.describe());
        tracing::debug!(pool = %self.name, error = %text, "opening a connection failed");
        *self.last_connect_error.lock().expect("connect error lock") = Some((Instant::now(), text));
    }

    /// A connection that could not open because every slot of the server's
    /// budget stayed taken until the acquire deadline.
    fn record_budget_wait(&self) {
        let Some(m) = &self.budget else { return };
        let text = format!(
            "the connection budget of {} ({} connections) stayed in use by its pools",
            m.budget.server(),
            m.budget.limit().unwrap_or(0)
        );
        m.held_back.store(true, Ordering::Relaxed);
        tracing::debug!(pool = %self.name, error = %text, "no budget for a connection");
        *self.last_connect_error.lock().expect("connect error lock") = Some((Instant::now(), text));
    }

    /// The last connect error if it happened within `window`.
    fn recent_connect_error(&self, window: Duration) -> Option<String> {
        let last = self.last_connect_error.lock().expect("connect error lock");
        last.as_ref()
            .filter(|(at, _)| at.elapsed() <= window)
            .map(|(_, e)| e.clone())
    }

    /// The size the pool may reach now: max_connections, or its share of the
    /// server's budget if smaller.
    fn share(&self) -> u32 {
        let settings = self.settings();
        self.budget_share
            .load(Ordering::Acquire)
            .min(settings.max_connections)
            .max(settings.min_connections.max(1))
    }

    /// Marks the pool closed; its budget's other pools get its share.
    fn mark_closed(&self) {
        if !self.closed.swap(true, Ordering::AcqRel)
            && let Some(m) = &self.budget
        {
            m.budget.rebalance();
        }
        self.gate.close();
    }

    fn set_held_back(&self, held: bool) {
        if let Some(m) = &self.budget {
            m.held_back.store(held, Ordering::Relaxed);
        }
    }

    fn budget_server(&self) -> Option<String> {
        self.budget.as_ref().map(|m| m.budget.server().to_string())
    }

    /// Records the demand's need; a change rebalances the budget.
    fn claim_need(&self, need: u32) {
        if self.need.swap(need, Ordering::AcqRel) != need
            && let Some(m) = &self.budget
        {
            m.budget.rebalance();
        }
    }

    fn apply_hot_settings(&self, config: &AdvancedPoolConfig) {
        let recycle = if config.enable_connection_recycling {
            config.recycle_threshold_queries
        } else {
            0
        };
        self.recycle_threshold.store(recycle, Ordering::Relaxed);
        let cache = if config.enable_prepared_statements {
            config.statement_cache_capacity
        } else {
            0
        };
        self.cache_capacity.store(cache, Ordering::Relaxed);
        let validation = if config.enable_connection_validation {
            config.validation_idle_threshold_ms
        } else {
            u64::MAX
        };
        self.validation_idle_ms.store(validation, Ordering::Relaxed);
    }
}

impl budget::Member for Shared {
    fn pool_name(&self) -> &str {
        &self.name
    }

    fn min_connections(&self) -> u32 {
        self.settings().min_connections
    }

    fn claim(&self) -> budget::Claim {
        let settings = self.settings();
        let need = self.need.load(Ordering::Acquire);
        budget::Claim {
            // A pool with demand gets at least one connection.
            min: settings.min_connections.max(need.min(1)),
            max: settings.max_connections,
            size: self.open.load(Ordering::Acquire),
            need,
        }
    }

    fn set_share(&self, share: u32) {
        self.budget_share.store(share, Ordering::Release);
    }

    fn is_closed(&self) -> bool {
        Shared::is_closed(self)
    }

    fn demand(&self) -> u32 {
        self.checked_out.load(Ordering::Acquire) + self.gate.waiting()
    }
}

/// How a pool starts: what it connects to, whether it must connect now, what
/// stops it and the budget it shares.
struct Start {
    target: Option<Arc<ConnInfo>>,
    tls: crate::tls::PgTls,
    require_connection: bool,
    token: CancellationToken,
    budget: Option<Arc<ServerBudget>>,
}

/// Histograms (seconds) and counters of a pool, for telemetry.
#[derive(Debug, Clone, Copy)]
pub struct PoolTelemetry<'a> {
    /// Time to check out a connection (`db.client.connection.wait_time`).
    pub acquire_time: &'a Histogram,
    /// Time a connection stays checked out (`db.client.connection.use_time`).
    pub use_time: &'a Histogram,
    /// Time to open a connection, warmup included (`db.client.connection.create_time`).
    pub create_time: &'a Histogram,
    /// Time of one statement (`db.client.operation.duration`).
    pub operation_time: &'a Histogram,
    /// Time of one health check.
    pub health_check_time: &'a Histogram,
    /// Scaling decisions taken.
    pub scaling_events: u64,
    /// Requests made by load tests.
    pub load_test_requests: u64,
    /// Statements abandoned mid-flight and cancelled in PostgreSQL.
    pub statements_cancelled: u64,
}

/// An advanced PostgreSQL connection pool (`AdvancedConnectionPool`).
/// Share it with `Arc`; dropping it (or [`close`](Self::close)) stops its tasks.
pub struct AdvancedConnectionPool {
    shared: Arc<Shared>,
    /// bb8's connection_timeout, fixed when bb8 was built.
    acquire_timeout: Duration,
    bb8: bb8::Pool<PoolManager>,
    token: CancellationToken,
    tasks: TaskTracker,
    login: (Option<String>, Option<crate::Secret>),
}

impl std::fmt::Debug for AdvancedConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdvancedConnectionPool")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl AdvancedConnectionPool {
    /// Creates a pool named `default` on `database_url` (postgres:// URL or
    /// key=value conninfo): validates the config, opens min_connections (at least
    /// one, to prove the database is reachable) and starts the pool's tasks.
    pub async fn new(database_url: &str, config: AdvancedPoolConfig) -> Result<Self, Error> {
        Self::named("default", database_url, config).await
    }

    /// [`new`](Self::new) with a name (used in events, logs and application_name).
    pub async fn named(
        name: &str,
        database_url: &str,
        config: AdvancedPoolConfig,
    ) -> Result<Self, Error> {
        let target = ConnInfo::parse(database_url).map_err(Error::InvalidDatabaseUrl)?;
        Self::for_target(name, Arc::new(target), config, true).await
    }

    /// A pool on a parsed target. With `require_connection`, at least one
    /// connection must open (else the error says why); without, the pool opens no
    /// connection here: it starts unhealthy and its tasks connect in the
    /// background (a check at once, then min_connections).
    pub async fn for_target(
        name: &str,
        target: Arc<ConnInfo>,
        config: AdvancedPoolConfig,
        require_connection: bool,
    ) -> Result<Self, Error> {
        let root = CancellationToken::new();
        Self::for_target_under(name, target, config, require_connection, &root, None).await
    }

    /// [`for_target`](Self::for_target) with the pool's tasks stopped by `parent`
    /// too (the registry's token, itself a child of the server's).
    pub(crate) async fn for_target_under(
        name: &str,
        target: Arc<ConnInfo>,
        config: AdvancedPoolConfig,
        require_connection: bool,
        parent: &CancellationToken,
        budget: Option<Arc<ServerBudget>>,
    ) -> Result<Self, Error> {
        let pg = target.pg_config().map_err(Error::InvalidDatabaseUrl)?;
        let tls = crate::tls::PgTls::for_target(&target).map_err(Error::InvalidDatabaseUrl)?;
        let start = Start {
            target: Some(target),
            tls,
            require_connection,
            token: parent.child_token(),
            budget,
        };
        Self::start(name, pg, config, start).await
    }

    /// Creates a pool from a tokio-postgres config (checked like `new`).
    pub async fn from_config(
        name: &str,
        pg: tokio_postgres::Config,
        config: AdvancedPoolConfig,
    ) -> Result<Self, Error> {
        let start = Start {
            target: None,
            tls: crate::tls::PgTls::unverified(),
            require_connection: true,
            token: CancellationToken::new(),
            budget: None,
        };
        Self::start(name, pg, config, start).await
    }

    /// Creates a pool without connecting: it starts unhealthy and its tasks connect
    /// in the background, retrying while the database is down (used when restoring
    /// stored pools at server start).
    pub async fn named_unchecked(
        name: &str,
        database_url: &str,
        config: AdvancedPoolConfig,
    ) -> Result<Self, Error> {
        let target = ConnInfo::parse(database_url).map_err(Error::InvalidDatabaseUrl)?;
        Self::for_target(name, Arc::new(target), config, false).await
    }

    async fn start(
        name: &str,
        mut pg: tokio_postgres::Config,
        config: AdvancedPoolConfig,
        start: Start,
    ) -> Result<Self, Error> {
        let Start {
            target,
            tls,
            require_connection,
            token,
            budget,
        } = start;
        config.validate()?;
        if pg.get_application_name().is_none() {
            pg.application_name(format!("poolplane:{name}"));
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.acquire_timeout());
        }
        let size = config.initial_size();
        let login = (
            pg.get_user().map(str::to_owned),
            pg.get_password().map(crate::Secret::new),
        );
        let shared = Shared::new(
            name,
            target.clone(),
            tls,
            &config,
            require_connection,
            budget,
        );
        shared.apply_hot_settings(&config);
        if let Some(m) = &shared.budget {
            m.budget
                .join(Arc::downgrade(&shared) as std::sync::Weak<dyn budget::Member>);
            let share = shared.share().max(1);
            if size > share {
                shared.set_target(share);
            }
        }
        let manager = PoolManager {
            pg: pg.clone(),
            shared: Arc::clone(&shared),
        };
        let bb8 = build_bb8(&config, manager.clone());

        if require_connection {
            prove_target(&manager, &bb8, &config, &token).await?;
        }

        let tasks = TaskTracker::new();
        // Health checks are told apart from the pool's own connections.
        let mut health_pg = pg;
        health_pg.application_name(format!("poolplane-health:{name}"));
        tasks.spawn(health::monitor(
            Arc::clone(&shared),
            health_pg,
            bb8.clone(),
            token.clone(),
        ));
        tasks.spawn(maintain(
            Arc::clone(&shared),
            manager,
            bb8.clone(),
            token.clone(),
        ));
        tasks.close();
        tracing::debug!(pool = name, size, "pool started");
        Ok(Self {
            shared,
            acquire_timeout: config.acquire_timeout(),
            bb8,
            token,
            tasks,
            login,
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The pool's configuration.
    pub fn config(&self) -> AdvancedPoolConfig {
        (*self.shared.settings()).clone()
    }

    /// Checks out a connection: waits at the admission gate (the pool's current
    /// size), then takes an idle connection or opens one; a connection idle longer
    /// than validation_idle_threshold_ms is validated first. Fails with
    /// [`Error::AcquireTimeout`] after acquire_timeout_secs.
    pub fn get(&self) -> impl Future<Output = Result<PooledConnection, Error>> + Send + '_ {
        self.get_as(Speaker::Typed)
    }

    /// [`get`](Self::get) for the wire front door: the session settings a wire
    /// client left on the connection stay (the front door keeps track of them).
    pub fn get_for_wire(
        &self,
    ) -> impl Future<Output = Result<PooledConnection, Error>> + Send + '_ {
        self.get_as(Speaker::Wire)
    }

    fn get_as(
        &self,
        speaker: Speaker,
    ) -> impl Future<Output = Result<PooledConnection, Error>> + Send + '_ {
        // Not an async fn around checkout's: a checkout's future is large (bb8's
        // own is 1.2 KB), and every layer around it is a copy of it on every call.
        // Traced, it is boxed into the span instead.
        if tracing::span_enabled!(tracing::Level::DEBUG) {
            let span = tracing::debug_span!(
                "db.checkout",
                db.system.name = "postgresql",
                db.client.connection.pool.name = %self.shared.name,
            );
            Either::Right(Box::pin(tracing::Instrument::instrument(
                self.checkout(speaker),
                span,
            )))
        } else {
            Either::Left(self.checkout(speaker))
        }
    }

    async fn checkout(&self, speaker: Speaker) -> Result<PooledConnection, Error> {
        let shared = &self.shared;
        let timeout = self.acquire_timeout;
        // The clock is read when a wait begins, not before: a checkout served at
        // once takes well under the histogram's 1 µs resolution and records 0.
        let mut waiting_since = None;
        let admitted = noting_wait(pin!(shared.gate.admit(timeout)), &mut waiting_since).await;
        match admitted {
            Ok(_) => {}
            Err(gate::Refused::Closed) => return Err(Error::PoolClosed),
            Err(gate::Refused::TimedOut) => return Err(self.timed_out(timeout, true)),
        }
        let permit = gate::Permit::new(Arc::clone(shared));
        loop {
            // bb8 applies acquire_timeout itself; after a wait (or a connection
            // found dead) only the rest of it is left: one deadline for the whole
            // checkout.
            let got = match waiting_since {
                Some(since) => {
                    let remaining = timeout.saturating_sub(since.elapsed());
                    // Boxed, as the validation below: what only some checkouts
                    // do stays out of every checkout's future.
                    Box::pin(tokio::time::timeout(remaining, self.bb8.get_owned()))
                        .await
                        .unwrap_or(Err(bb8::RunError::TimedOut))
                }
                None => noting_wait(pin!(self.bb8.get_owned()), &mut waiting_since).await,
            };
            let mut conn = match got {
                Ok(conn) => conn,
                Err(bb8::RunError::User(manager::OpenError::Postgres(e))) => {
                    return Err(Error::Database(e));
                }
                Err(bb8::RunError::User(_)) => return Err(self.timed_out(timeout, false)),
                Err(bb8::RunError::TimedOut) => return Err(self.timed_out(timeout, false)),
            };
            if shared.is_closed() {
                return Err(Error::PoolClosed);
            }
            let now = Instant::now();
            if conn.client.is_closed()
                || conn.generation < shared.generation.load(Ordering::Relaxed)
            {
                // Closed, or opened before a reconnect: another try, within
                // what is left of the one deadline.
                conn.broken = true;
                waiting_since.get_or_insert(now);
                continue;
            }
            // Validation and the reset count against acquire_timeout too.
            let left =
                || timeout.saturating_sub(waiting_since.map_or(Duration::ZERO, |s| s.elapsed()));
            match make_ready(shared, &mut conn, now, speaker, left).await {
                Readiness::Ready => {}
                Readiness::Retry => {
                    conn.broken = true;
                    waiting_since.get_or_insert(now);
                    continue;
                }
                Readiness::TimedOut => {
                    conn.broken = true;
                    return Err(self.timed_out(timeout, false));
                }
            }
            let capacity = shared.cache_capacity();
            if capacity > 0 && capacity != conn.cache.capacity() {
                let evicted = conn.cache.resize(capacity) as u64;
                Counters::add(&shared.counters.cache_evictions, evicted);
                shared
                    .counters
                    .cached_statements
                    .fetch_sub(evicted, Ordering::Relaxed);
            }
            let acquire_time = waiting_since.map_or(Duration::ZERO, |since| now - since);
            shared.counters.acquire_time.record(acquire_time);
            return Ok(PooledConnection::new(conn, permit, now));
        }
    }

    /// The timeout error, naming the limit the caller met: the gate (every
    /// connection of the current size, or of max_connections, in use) or the
    /// opening of a connection.
    fn timed_out(&self, timeout: Duration, at_gate: bool) -> Error {
        let shared = &self.shared;
        Counters::add(&shared.counters.acquire_timeouts, 1);
        let size = shared.target_size.load(Ordering::Acquire);
        let max = shared.settings().max_connections;
        let limit = match (at_gate, size < max) {
            (false, _) => AcquireLimit::Opening,
            (true, true) => AcquireLimit::CurrentSize { size, max },
            (true, false) => AcquireLimit::MaxConnections(max),
        };
        Error::AcquireTimeout {
            timeout,
            limit,
            last_connect_error: shared.recent_connect_error(timeout + Duration::from_secs(1)),
        }
    }

    /// Checks out a connection, runs `sql` (cached as a prepared statement) and
    /// returns the rows.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.get().await?.query(sql, params).await
    }

    /// Checks out a connection, runs `sql` and returns exactly one row.
    pub async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        self.get().await?.query_one(sql, params).await
    }

    /// Checks out a connection, runs `sql` and returns the rows it affected.
    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        self.get().await?.execute(sql, params).await
    }

    /// `get_pool_stats()`: a snapshot of sizes, latencies and counters.
    pub async fn get_pool_stats(&self) -> PoolStats {
        self.pool_stats()
    }

    /// [`get_pool_stats`](Self::get_pool_stats) without `async`.
    pub fn pool_stats(&self) -> PoolStats {
        let shared = &self.shared;
        let c = &shared.counters;
        let state = self.bb8.state();
        let settings = shared.settings();
        let current_size = shared.target_size.load(Ordering::Acquire);
        let active = shared.checked_out.load(Ordering::Relaxed);
        let [p50, p95, p99] = c.acquire_time.quantiles_ms([0.5, 0.95, 0.99]);
        PoolStats {
            connections: state.connections,
            idle_connections: state.idle_connections,
            active_connections: active,
            waiting_requests: shared.gate.waiting(),
            current_size,
            min_connections: settings.min_connections,
            max_connections: settings.max_connections,
            utilization_rate: stats::utilization(active, current_size),
            avg_acquire_time_ms: c.acquire_time.mean_ms(),
            p50_acquire_time_ms: p50,
            p95_acquire_time_ms: p95,
            p99_acquire_time_ms: p99,
            total_acquires: c.acquire_time.count(),
            acquire_timeouts: Counters::get(&c.acquire_timeouts),
            connection_errors: Counters::get(&c.connection_errors),
            connections_created: Counters::get(&c.connections_created),
            connections_closed: Counters::get(&c.connections_closed),
            connections_recycled: Counters::get(&c.connections_recycled),
            total_queries: Counters::get(&c.total_queries),
            query_errors: Counters::get(&c.query_errors),
            security: shared.security.lock().expect("security lock").clone(),
            budget: shared.budget.as_ref().map(|m| {
                m.budget.stats_for(
                    shared.budget_share.load(Ordering::Acquire),
                    m.held_back.load(Ordering::Relaxed),
                )
            }),
            wire: self.wire_counters().snapshot(),
        }
    }

    /// The pool's open connections now, oldest first.
    pub fn backends(&self) -> Vec<stats::Backend> {
        let all = self.shared.backends.lock().expect("backends lock");
        all.values().map(|b| b.snapshot()).collect()
    }

    /// How long a front-door client holds a backend (cheap: no copy of the config).
    pub fn pool_mode(&self) -> crate::PoolMode {
        self.shared.settings().pool_mode
    }

    /// The front door's settings of this pool (cheap: no copy of the config).
    pub fn wire_settings(&self) -> WireSettings {
        let c = self.shared.settings();
        WireSettings {
            pool_mode: c.pool_mode,
            max_client_connections: c.max_client_connections,
            client_idle_timeout: secs(c.client_idle_timeout_secs),
            idle_in_transaction_timeout: secs(c.idle_in_transaction_timeout_secs),
            query_timeout: secs(c.query_timeout_secs),
            session_state: c.session_state,
        }
    }

    /// The wire front door's counters of this pool's name.
    pub fn wire_counters(&self) -> Arc<WireCounters> {
        Arc::clone(&self.shared.wire.lock().expect("wire counters lock"))
    }

    /// Keeps `previous`'s wire counters (a pool rebuilt under the same name:
    /// its clients stay connected).
    pub fn inherit_wire_counters(&self, previous: &AdvancedConnectionPool) {
        let counters = previous.wire_counters();
        *self.shared.wire.lock().expect("wire counters lock") = counters;
    }

    /// The user the pool connects as and its password, if the target has one:
    /// what a wire client may log in with.
    pub fn login(&self) -> (Option<String>, Option<crate::Secret>) {
        self.login.clone()
    }

    /// Replaces every connection: each one in use after its current use, each
    /// idle one before its next (a rotated password, a failover behind a DNS
    /// name). Returns how many were open.
    pub fn reconnect(&self) -> u32 {
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.bb8.state().connections
    }

    /// Cancelled once the pool is closing (deleted, rebuilt or shut down).
    pub fn closing_token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether the pool is closing.
    pub fn is_closing(&self) -> bool {
        self.shared.is_closed() || self.token.is_cancelled()
    }

    /// Whether the pool was closed to new checkouts (deleted, or replaced by a
    /// rebuild): one atomic load.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// The size the pool may reach now: max_connections, or its share of its
    /// server's connection budget if smaller (never below min_connections).
    pub fn capacity(&self) -> u32 {
        self.shared.share()
    }

    /// `get_health_status()`: the pool's health.
    pub async fn get_health_status(&self) -> HealthStatus {
        self.health_snapshot()
    }

    /// [`get_health_status`](Self::get_health_status) without `async`.
    pub fn health_snapshot(&self) -> HealthStatus {
        self.shared.health.lock().expect("health lock").clone()
    }

    /// `get_statement_cache_stats()`: the statement cache's counters.
    pub async fn get_statement_cache_stats(&self) -> StatementCacheStats {
        self.statement_cache_stats()
    }

    /// [`get_statement_cache_stats`](Self::get_statement_cache_stats) without `async`.
    pub fn statement_cache_stats(&self) -> StatementCacheStats {
        let c = &self.shared.counters;
        let hits = Counters::get(&c.cache_hits);
        let misses = Counters::get(&c.cache_misses);
        StatementCacheStats {
            hits,
            misses,
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            evictions: Counters::get(&c.cache_evictions),
            prepared_statements: Counters::get(&c.cached_statements),
            capacity: self.shared.cache_capacity() as u32,
        }
    }

    /// The pool's telemetry: histograms and counters beyond [`PoolStats`].
    pub fn telemetry(&self) -> PoolTelemetry<'_> {
        let c = &self.shared.counters;
        PoolTelemetry {
            acquire_time: &c.acquire_time,
            use_time: &c.use_time,
            create_time: &c.create_time,
            operation_time: &c.operation_time,
            health_check_time: &c.health_check_time,
            scaling_events: Counters::get(&c.scaling_events),
            load_test_requests: Counters::get(&c.load_test_requests),
            statements_cancelled: Counters::get(&c.statements_cancelled),
        }
    }

    /// Counts a request a load test made (for telemetry).
    pub fn count_load_test_request(&self) {
        Counters::add(&self.shared.counters.load_test_requests, 1);
    }

    /// Subscribes to the pool's events. A subscriber that falls more than
    /// [`crate::events::POOL_EVENT_BUFFER`] behind gets `RecvError::Lagged(missed)`.
    pub fn subscribe(&self) -> broadcast::Receiver<PoolEvent> {
        self.shared.events.subscribe()
    }

    /// Whether the pool's database passes its health checks.
    pub fn is_healthy(&self) -> bool {
        self.shared.health.lock().expect("health lock").is_healthy
    }

    /// Whether callers are refused at once: unhealthy after a check that
    /// failed. A pool not connected yet (just restored, or created by another
    /// replica of the group and still waiting for its first connection or
    /// allocation) is not: its callers wait for a connection within
    /// acquire_timeout like any other.
    pub fn refuses_callers(&self) -> bool {
        let health = self.shared.health.lock().expect("health lock");
        !health.is_healthy && health.last_check_at.is_some()
    }

    /// Whether `config` can be applied to this pool live; if not (the ceiling, the
    /// acquire timeout, idle timeout or max lifetime change: bb8 fixes them at
    /// build), the pool must be rebuilt.
    pub fn can_apply_live(&self, config: &AdvancedPoolConfig) -> bool {
        self.fields_fixed_at_build(config).is_empty()
    }

    /// The fields of `config` that differ from the pool's and that bb8 fixes at
    /// build.
    fn fields_fixed_at_build(&self, config: &AdvancedPoolConfig) -> Vec<&'static str> {
        let current = self.shared.settings();
        [
            (
                current.max_connections == config.max_connections,
                "max_connections",
            ),
            (
                current.acquire_timeout_secs == config.acquire_timeout_secs,
                "acquire_timeout_secs",
            ),
            (
                current.idle_timeout_secs == config.idle_timeout_secs,
                "idle_timeout_secs",
            ),
            (
                current.max_lifetime_secs == config.max_lifetime_secs,
                "max_lifetime_secs",
            ),
        ]
        .into_iter()
        .filter_map(|(same, field)| (!same).then_some(field))
        .collect()
    }

    /// Applies `config` live: sizes, thresholds, intervals, cache capacity, health
    /// and lifecycle settings take effect at once (cache capacity at each
    /// connection's next checkout, warmup queries on new connections). Fails if it
    /// is invalid or [`can_apply_live`](Self::can_apply_live) says no.
    pub fn apply_config(&self, config: AdvancedPoolConfig) -> Result<(), Error> {
        config.validate()?;
        let fixed = self.fields_fixed_at_build(&config);
        if !fixed.is_empty() {
            // Each field that changed and cannot change live, named as itself.
            return Err(Error::InvalidConfig(crate::ConfigErrors(
                fixed
                    .into_iter()
                    .map(|field| crate::FieldViolation {
                        field,
                        description: "cannot change on a live pool: it needs a rebuilt pool".into(),
                    })
                    .collect(),
            )));
        }
        self.shared.apply_hot_settings(&config);
        *self.shared.settings.write().expect("settings lock") = Arc::new(config);
        if let Some(m) = &self.shared.budget {
            m.budget.rebalance();
        }
        // The maintenance task brings the size into the new [min, max] at its next
        // tick; with dynamic sizing switched off it moves it to max.
        Ok(())
    }

    /// Closes gracefully: new checkouts fail at once, checked-out connections may
    /// finish for up to `grace`, then everything is closed.
    pub async fn close_gracefully(&self, grace: Duration) {
        let shared = &self.shared;
        shared.mark_closed();
        let returned = shared.all_returned.notified();
        tokio::pin!(returned);
        returned.as_mut().enable();
        if shared.checked_out.load(Ordering::Acquire) > 0 {
            let _ = tokio::time::timeout(grace, returned).await;
        }
        self.close().await;
    }

    /// Stops the pool's tasks and closes every connection: idle ones now, checked
    /// out ones when they come back. `get()` then fails with [`Error::PoolClosed`].
    pub async fn close(&self) {
        self.shared.mark_closed();
        self.token.cancel();
        self.tasks.wait().await;
        retire_idle(&self.bb8, |_| {}).await;
    }
}

impl Drop for AdvancedConnectionPool {
    fn drop(&mut self) {
        self.shared.mark_closed();
        self.token.cancel();
    }
}

impl Shared {
    /// The state of a new pool named `name` at its initial size (healthy when its
    /// target was proven by a checked start).
    fn new(
        name: &str,
        target: Option<Arc<ConnInfo>>,
        tls: crate::tls::PgTls,
        config: &AdvancedPoolConfig,
        require_connection: bool,
        budget: Option<Arc<ServerBudget>>,
    ) -> Arc<Self> {
        let size = config.initial_size();
        Arc::new(Self {
            name: name.to_owned(),
            target,
            tls,
            security: Mutex::new(stats::ConnectionSecurity::default()),
            recycle_threshold: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            cache_capacity: AtomicU32::new(0),
            validation_idle_ms: AtomicU64::new(0),
            target_size: AtomicU32::new(size),
            open: AtomicU32::new(0),
            checked_out: AtomicU32::new(0),
            all_returned: tokio::sync::Notify::new(),
            gate: gate::Gate::new(size),
            counters: Counters::default(),
            wire: Mutex::default(),
            backends: Mutex::default(),
            health: Mutex::new(if require_connection {
                HealthStatus::new(true, None)
            } else {
                HealthStatus::new(false, Some("not connected yet".into()))
            }),
            last_connect_error: Mutex::new(None),
            events: EventSender::new(name.to_owned()),
            closed: AtomicBool::new(false),
            settings: RwLock::new(Arc::new(config.clone())),
            budget: budget.map(|budget| budget::Membership {
                budget,
                held_back: AtomicBool::new(false),
            }),
            budget_share: AtomicU32::new(budget::UNKNOWN),
            // Until its first second of demand, a pool claims what it opens at start.
            need: AtomicU32::new(config.initial_size()),
        })
    }
}

/// What a connection just taken from bb8 came to after the round trips it
/// may need before use.
enum Readiness {
    Ready,
    /// It failed: closed, and another is taken.
    Retry,
    /// The checkout's deadline passed.
    TimedOut,
}

/// Validates a connection idle past the threshold and, for a typed checkout,
/// resets the settings a wire client's startup put on it (its TimeZone,
/// DateStyle…: not the typed API's), each within what is `left` of the
/// checkout's deadline.
async fn make_ready(
    shared: &Shared,
    conn: &mut manager::Connection,
    now: Instant,
    speaker: Speaker,
    left: impl Fn() -> Duration,
) -> Readiness {
    let idle_ms = now.saturating_duration_since(conn.last_used).as_millis() as u64;
    if idle_ms >= shared.validation_idle_ms.load(Ordering::Relaxed) {
        let settings = shared.settings();
        let valid = Box::pin(still_valid(&conn.client, &settings));
        match tokio::time::timeout(left(), valid).await {
            Ok(true) => {}
            Ok(false) => return Readiness::Retry,
            Err(_) => return Readiness::TimedOut,
        }
    }
    if speaker == Speaker::Typed && !conn.wire.params.is_empty() {
        let reset: String = conn
            .wire
            .params
            .keys()
            .map(|name| format!("RESET {name}; "))
            .collect();
        conn.wire.params.clear();
        match tokio::time::timeout(left(), Box::pin(conn.client.batch_execute(&reset))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Readiness::Retry,
            Err(_) => return Readiness::TimedOut,
        }
    }
    Readiness::Ready
}

/// Whether a connection answers the validation query within the health check
/// timeout.
async fn still_valid(client: &tokio_postgres::Client, settings: &AdvancedPoolConfig) -> bool {
    let answer = tokio::time::timeout(
        settings.health_check_timeout(),
        client.simple_query(&settings.validation_query),
    )
    .await;
    matches!(answer, Ok(Ok(_)))
}

/// Awaits `future` (pinned where it is: no copy of it), noting in `since` when it
/// first had to wait (if it did and `since` is not set yet).
async fn noting_wait<F: Future>(mut future: Pin<&mut F>, since: &mut Option<Instant>) -> F::Output {
    std::future::poll_fn(|cx| {
        let poll = future.as_mut().poll(cx);
        if poll.is_pending() && since.is_none() {
            *since = Some(Instant::now());
        }
        poll
    })
    .await
}

/// The bb8 pool at max_connections (the gate holds the pool to its size): no
/// idle timeout of bb8's own (the maintenance task closes idle connections above
/// min_connections only), connect errors recorded by the manager. LIFO, as
/// PgBouncer reuses server connections: a checkout gets the connection returned
/// last, so under light load the same few stay hot (no validation round trip,
/// which an idle one needs) and the rest go idle and are closed after
/// idle_timeout; FIFO would rotate through all of them and keep every one warm.
fn build_bb8(config: &AdvancedPoolConfig, manager: PoolManager) -> bb8::Pool<PoolManager> {
    let reaper_rate = [
        config.idle_timeout() / 2,
        config.max_lifetime() / 2,
        Duration::from_secs(30),
    ]
    .into_iter()
    .min()
    .unwrap_or(Duration::from_secs(1))
    // At most a second: bb8's reaper task notices a dropped pool only when it
    // wakes, so a deleted pool leaves no task behind for longer than this.
    .min(Duration::from_secs(1))
    .max(Duration::from_millis(100));
    bb8::Pool::builder()
        .max_size(config.max_connections)
        .min_idle(None)
        .test_on_check_out(false)
        .max_lifetime(Some(config.max_lifetime()))
        // Idle connections are closed by the maintenance task, above
        // min_connections only (bb8 would close the floor too, and the pool
        // would reopen it: churn every idle_timeout).
        .idle_timeout(None)
        .reaper_rate(reaper_rate)
        .connection_timeout(config.acquire_timeout())
        .queue_strategy(bb8::QueueStrategy::Lifo)
        .error_sink(Box::new(SilentSink))
        .build_unchecked(manager)
}

/// A checked start opens min_connections now, in parallel (each within the
/// acquire timeout); at least one must work.
async fn prove_target(
    manager: &PoolManager,
    bb8: &bb8::Pool<PoolManager>,
    config: &AdvancedPoolConfig,
    token: &CancellationToken,
) -> Result<(), Error> {
    let wanted = config.min_connections.max(1);
    if let Some(e) = open_connections(manager, bb8, wanted, token).await {
        let shared = &manager.shared;
        return Err(Error::Connect {
            url: shared
                .target
                .as_ref()
                .map_or_else(String::new, |t| t.to_string()),
            reason: shared.redact(&e.describe()),
            sqlstate: e.sqlstate(),
        });
    }
    if token.is_cancelled() {
        return Err(Error::PoolClosed);
    }
    // With min_connections 0 the connection that proved the target is not kept:
    // an idle pool holds no backend.
    if config.min_connections == 0 {
        retire_idle(bb8, |conn| conn.broken = true).await;
    }
    Ok(())
}

/// bb8 reports connect errors here; ours are recorded by the manager already.
#[derive(Debug, Clone, Copy)]
struct SilentSink;

impl bb8::ErrorSink<manager::OpenError> for SilentSink {
    fn sink(&self, _error: manager::OpenError) {}

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<manager::OpenError>> {
        Box::new(*self)
    }
}
