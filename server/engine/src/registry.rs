//! `ConnectionPoolService`: the named pools of a server, kept in step with their
//! stored definitions, and one broadcast of every pool's events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::allowlist::TargetAllowlist;
use crate::conninfo::{ConnInfo, ServerKey};
use crate::events::{self, PoolEvent, PoolEventKind};
use crate::optimizer::{self, Headroom, OptimizationReport, OptimizerInput, PoolOptimization};
use crate::pool::ServerBudget;
use crate::store::config_changes::ChangeOrigin;
use crate::store::history::{HourSummary, ScalingRecord};
use crate::{AdvancedConnectionPool, AdvancedPoolConfig, ControlStore, Error, PoolStats};

/// Pools one registry holds by default (`--max-pools`).
pub const DEFAULT_MAX_POOLS: usize = 1000;

/// The window of history the optimizer reads.
const OPTIMIZER_WINDOW: Duration = Duration::from_secs(3600);

/// How long CreatePool's allocation round for a server its replica has just
/// read may take (its group's control database answering slowly: the pool is
/// returned without, and gets it with the heartbeat's next round).
const FIRST_ALLOCATION_WITHIN: Duration = Duration::from_secs(2);

/// Scaling events a performance summary carries.
const RECENT_SCALING_EVENTS: u32 = 10;

/// A pool's performance now and over its last recorded hour (
/// `get_pool_performance_summary`).
#[derive(Debug, Clone, PartialEq)]
pub struct PerformanceSummary {
    /// The pool.
    pub pool_name: String,
    /// The live stats.
    pub current: PoolStats,
    /// Current utilization (active / size).
    pub utilization_rate: f64,
    /// The last hour from the pool_performance_summary view; `None` before the
    /// first sample was recorded.
    pub last_hour: Option<HourSummary>,
    /// The statement cache's hit rate.
    pub cache_hit_rate: f64,
    /// The latest scaling decisions, newest first.
    pub recent_scaling_events: Vec<ScalingRecord>,
}

/// What the registry knows of one pool.
#[derive(Debug, Clone)]
pub struct PoolInfo {
    /// The pool's name.
    pub name: String,
    /// Its database, password redacted.
    pub database_url: String,
    /// Its effective config.
    pub config: AdvancedPoolConfig,
    /// When it was created.
    pub created_at: SystemTime,
    /// When its definition last changed.
    pub updated_at: SystemTime,
    /// Whether its database passes health checks.
    pub is_healthy: bool,
    /// How its open connections are secured and where they are.
    pub security: crate::pool::ConnectionSecurity,
}

/// How a config change reaches the registry.
enum Change {
    /// Made here: stored if the definition is still at this version.
    Store(i64),
    /// Made by another replica: stored already, at this version and time.
    Follow(i64, SystemTime),
}

struct Entry {
    pool: Arc<AdvancedConnectionPool>,
    target: Arc<ConnInfo>,
    created_at: SystemTime,
    updated_at: SystemTime,
    /// The stored definition's version this pool runs.
    version: i64,
    /// Stops the task forwarding this pool's events.
    forwarder: CancellationToken,
}

/// The registry of named pools (`ConnectionPoolService`). Every change
/// goes to the control database and the registry together: a change the database
/// refuses leaves the registry as it was.
pub struct ConnectionPoolService {
    store: ControlStore,
    pools: RwLock<BTreeMap<String, Entry>>,
    /// Names with a create, update or delete under way: one change per name at a
    /// time, changes of different names independent (no lock across I/O).
    changing: std::sync::Mutex<HashSet<String>>,
    events: broadcast::Sender<PoolEvent>,
    token: CancellationToken,
    tasks: TaskTracker,
    close_grace: Duration,
    allowlist: TargetAllowlist,
    max_pools: usize,
    /// Connections left free on each PostgreSQL server by its pools' budget
    /// (besides its reserved connections); the optimizer's cap uses it too.
    connection_reserve: u32,
    last_load_tests: std::sync::Mutex<HashMap<String, crate::LoadTestResults>>,
    running_load_tests: std::sync::Mutex<HashSet<String>>,
    /// The connection budget of each server the pools point at.
    budgets: std::sync::Mutex<HashMap<ServerKey, std::sync::Weak<ServerBudget>>>,
    /// Whether this server leads the group's singleton jobs (automated tuning,
    /// the recorder's retention).
    leadership: Arc<crate::leadership::Leadership>,
    /// A replica of a group: budgets come from the group's allocation.
    grouped: std::sync::atomic::AtomicBool,
    /// The group's live replicas as last read (each holds every pool's min).
    live_replicas: std::sync::atomic::AtomicU32,
    budgets_changed: Arc<tokio::sync::Notify>,
}

/// A name held in a set (a change under way, a load test running) until dropped.
struct Held<'a> {
    set: &'a std::sync::Mutex<HashSet<String>>,
    name: String,
}

impl<'a> Held<'a> {
    /// Holds `name` in `set`; `None` if it is held already.
    fn take(set: &'a std::sync::Mutex<HashSet<String>>, name: &str) -> Option<Self> {
        let inserted = set.lock().expect("name set lock").insert(name.to_owned());
        inserted.then(|| Self {
            set,
            name: name.to_owned(),
        })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("name set lock").remove(&self.name);
    }
}

/// A pool reserved for one load test ([`ConnectionPoolService::reserve_load_test`]);
/// the reservation ends when the test has run or the slot is dropped.
pub struct LoadTestSlot {
    registry: Arc<ConnectionPoolService>,
    name: String,
    pool: Arc<AdvancedConnectionPool>,
}

impl std::fmt::Debug for LoadTestSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadTestSlot")
            .field("pool", &self.name)
            .finish_non_exhaustive()
    }
}

impl LoadTestSlot {
    /// Runs the test (see [`crate::PoolLoadTester::run`]); a test that was not
    /// cancelled is kept as the pool's last and stored.
    pub async fn run(
        self,
        options: crate::LoadTestOptions,
        progress: Option<tokio::sync::mpsc::Sender<crate::LoadTestProgress>>,
        cancel: CancellationToken,
    ) -> Result<crate::LoadTestResults, Error> {
        let results = crate::PoolLoadTester::new(Arc::clone(&self.pool))
            .run(options, progress, cancel.clone())
            .await?;
        if !cancel.is_cancelled() {
            self.registry.keep_load_test(&self.name, &results).await;
        }
        Ok(results)
    }
}

impl Drop for LoadTestSlot {
    fn drop(&mut self) {
        self.registry
            .running_load_tests
            .lock()
            .expect("name set lock")
            .remove(&self.name);
    }
}

impl std::fmt::Debug for ConnectionPoolService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPoolService")
            .finish_non_exhaustive()
    }
}

/// Checks a new pool's name, database URL and config together: the one place a
/// create request is validated. One kind of fault gives its own error; several
/// give [`Error::InvalidRequest`] naming every field at fault. Returns the
/// parsed target.
pub fn check_new_pool(
    name: &str,
    database_url: &str,
    config: &AdvancedPoolConfig,
) -> Result<ConnInfo, Error> {
    let mut errors: Vec<Error> = Vec::new();
    errors.extend(validate_pool_name(name).err());
    let target = ConnInfo::parse(database_url).map_err(Error::InvalidDatabaseUrl);
    let target = match target {
        Ok(target) => Some(target),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    errors.extend(config.validate().err().map(Error::InvalidConfig));
    match (target, errors.len()) {
        (Some(target), 0) => Ok(target),
        (_, 1) => Err(errors.remove(0)),
        _ => Err(Error::InvalidRequest(
            errors.iter().flat_map(Error::request_violations).collect(),
        )),
    }
}

/// Checks a pool name against `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn validate_pool_name(name: &str) -> Result<(), Error> {
    let invalid = |reason| Error::InvalidPoolName {
        name: name.chars().take(80).collect(),
        reason,
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(invalid("must not be empty")),
        Some(c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
            return Err(invalid("must start with a lowercase letter or a digit"));
        }
        Some(_) => {}
    }
    if name.len() > 63 {
        return Err(invalid("must be at most 63 characters"));
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
        return Err(invalid(
            "may hold only lowercase letters, digits, '_' and '-'",
        ));
    }
    Ok(())
}

impl ConnectionPoolService {
    /// A registry over the control database. `close_grace`: how long a deleted or
    /// replaced pool's checked-out connections may finish.
    pub fn new(store: ControlStore, close_grace: Duration) -> Self {
        Self {
            store,
            pools: RwLock::new(BTreeMap::new()),
            changing: std::sync::Mutex::new(HashSet::new()),
            events: events::channel(),
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
            close_grace,
            allowlist: TargetAllowlist::unset(),
            max_pools: DEFAULT_MAX_POOLS,
            connection_reserve: 5,
            last_load_tests: std::sync::Mutex::new(HashMap::new()),
            running_load_tests: std::sync::Mutex::new(HashSet::new()),
            budgets: std::sync::Mutex::new(HashMap::new()),
            leadership: Arc::default(),
            grouped: std::sync::atomic::AtomicBool::new(false),
            live_replicas: std::sync::atomic::AtomicU32::new(1),
            budgets_changed: Arc::default(),
        }
    }

    /// Makes the singleton jobs follow `leadership` (a server in a group leads
    /// only while it holds the group's lock; default: it leads).
    pub fn with_leadership(mut self, leadership: Arc<crate::leadership::Leadership>) -> Self {
        self.leadership = leadership;
        self
    }

    /// Whether this server leads the group's singleton jobs.
    pub fn leadership(&self) -> &Arc<crate::leadership::Leadership> {
        &self.leadership
    }

    /// The connection budget of `target`'s server, shared by every pool there.
    fn budget_for(&self, target: &ConnInfo) -> Arc<ServerBudget> {
        let key = target.server_key();
        let mut budgets = self.budgets.lock().expect("budgets lock");
        budgets.retain(|_, b| b.strong_count() > 0);
        if let Some(budget) = budgets.get(&key).and_then(std::sync::Weak::upgrade) {
            return budget;
        }
        let budget = ServerBudget::new(key.clone(), self.connection_reserve);
        if self.grouped.load(std::sync::atomic::Ordering::Acquire) {
            // In a group, a server's budget is what the group's allocation
            // round gives (from what another replica read of the server, or
            // as soon as this one's first connection has read it).
            budget.join_group(Arc::clone(&self.budgets_changed));
            budget.set_live_replicas(
                self.live_replicas
                    .load(std::sync::atomic::Ordering::Acquire),
            );
            self.budgets_changed.notify_one();
        }
        budgets.insert(key, Arc::downgrade(&budget));
        budget
    }

    /// The budget of every PostgreSQL server this registry's pools point at.
    pub fn budgets(&self) -> Vec<Arc<ServerBudget>> {
        let budgets = self.budgets.lock().expect("budgets lock");
        budgets
            .values()
            .filter_map(std::sync::Weak::upgrade)
            .collect()
    }

    /// Marks this registry as a replica of a group: each server's budget is
    /// what the group allocates to it.
    pub fn join_group(&self) {
        self.grouped
            .store(true, std::sync::atomic::Ordering::Release);
        for budget in self.budgets() {
            budget.join_group(Arc::clone(&self.budgets_changed));
        }
        self.budgets_changed.notify_one();
    }

    /// Reads how many replicas of the group are alive (each holds every
    /// pool's min_connections: a new min is checked against the budget
    /// divided among them). Outside a group, or when the control database
    /// does not answer, the last count stays.
    pub async fn refresh_live_replicas(&self) {
        if !self.grouped.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let read = tokio::time::timeout(Duration::from_secs(2), self.store.live_replicas()).await;
        let Ok(Ok(live)) = read else {
            return;
        };
        self.live_replicas
            .store(live, std::sync::atomic::Ordering::Release);
        for budget in self.budgets() {
            budget.set_live_replicas(live);
        }
    }

    /// One allocation round of `budget` for `replica` (also run by CreatePool for
    /// a server this replica has just read, so that the new pool is sized by its
    /// allocation); true if the budget is given nothing while it has demand.
    pub(crate) async fn allocate_budget(
        &self,
        budget: &ServerBudget,
        replica: &str,
        may_forget: bool,
    ) -> bool {
        let server = budget.server().to_string();
        let ask = crate::store::group::Ask {
            server: &server,
            replica,
            // Unknown until a first connection read the server's settings.
            available: budget.available(),
            demand: budget.demand(),
            min_total: budget.min_total(),
            in_use: budget.in_use(),
            may_forget,
        };
        match self.store.allocate(&ask).await {
            // Nobody has read the server's budget: this replica's first
            // connection (the one it may then open) reads it.
            Ok(crate::store::group::Round::Unread) => {
                budget.probe();
                false
            }
            Ok(crate::store::group::Round::NotLive) => false,
            Ok(crate::store::group::Round::Given(given)) => {
                if budget.allocation() != Some(given.allocation) {
                    tracing::debug!(%server, allocation = given.allocation, replicas = given.replicas, "connection budget allocation");
                }
                budget.set_allocation(given.allocation, given.replicas);
                given.allocation == 0 && ask.min_total + ask.demand > 0
            }
            Err(error) => {
                tracing::warn!(%server, %error, "allocation round failed; the last allocation stays");
                false
            }
        }
    }

    /// In a group, a budget without an allocation yet gets one now (bounded:
    /// a control database answering slowly leaves it to the heartbeat's next
    /// round).
    async fn allocate_now(&self, budget: &ServerBudget) {
        if budget.awaits_allocation() {
            let replica = self.store.replica().to_owned();
            let round = self.allocate_budget(budget, &replica, false);
            let _ = tokio::time::timeout(FIRST_ALLOCATION_WITHIN, round).await;
        }
    }

    /// Woken when a server's budget appears (its allocation is wanted).
    pub fn budgets_changed(&self) -> &tokio::sync::Notify {
        &self.budgets_changed
    }

    /// The budgets of every server with pools, for the optimizer.
    pub fn budget_of(&self, name: &str) -> Option<Arc<ServerBudget>> {
        let target = Arc::clone(&self.pools.read().expect("pools lock").get(name)?.target);
        Some(self.budget_for(&target))
    }

    /// Stops the registry's work (and its pools' tasks) when `parent` is cancelled.
    pub fn with_parent_token(mut self, parent: &CancellationToken) -> Self {
        self.token = parent.child_token();
        self
    }

    /// Claims `name` for one change; a change already under way for it is
    /// [`Error::PoolBusy`].
    fn claim(&self, name: &str) -> Result<Held<'_>, Error> {
        Held::take(&self.changing, name).ok_or_else(|| Error::PoolBusy(name.to_owned()))
    }

    /// Sets how many connections the pools of each server leave free (its budget;
    /// default 5).
    pub fn with_connection_reserve(mut self, reserve: u32) -> Self {
        self.connection_reserve = reserve;
        self
    }

    /// Restricts the targets pools may connect to (default: every TCP host, no
    /// Unix socket).
    pub fn with_allowlist(mut self, allowlist: TargetAllowlist) -> Self {
        self.allowlist = allowlist;
        self
    }

    /// Caps how many pools the registry holds (default [`DEFAULT_MAX_POOLS`]).
    pub fn with_max_pools(mut self, max_pools: usize) -> Self {
        self.max_pools = max_pools;
        self
    }

    /// The targets pools may connect to.
    pub fn allowlist(&self) -> &TargetAllowlist {
        &self.allowlist
    }

    /// Checks a target against the allowlist, before any connection.
    pub fn check_target(&self, target: &ConnInfo) -> Result<(), Error> {
        self.allowlist
            .check(target)
            .map_err(|target| Error::TargetNotAllowed { target })
    }

    /// Whether a load test is running on `name` now.
    pub fn is_load_testing(&self, name: &str) -> bool {
        self.running_load_tests
            .lock()
            .expect("load tests lock")
            .contains(name)
    }

    /// Runs a load test on a pool (one at a time per pool: a second one fails with
    /// [`Error::LoadTestRunning`]). A test that finishes (is not cancelled) is kept
    /// as the pool's last test for the optimizer and stored in
    /// pool_load_test_results.
    pub async fn run_load_test(
        &self,
        name: &str,
        options: crate::LoadTestOptions,
        progress: Option<tokio::sync::mpsc::Sender<crate::LoadTestProgress>>,
        cancel: CancellationToken,
    ) -> Result<crate::LoadTestResults, Error> {
        let pool = self.pool(name)?;
        let _running = Held::take(&self.running_load_tests, name)
            .ok_or_else(|| Error::LoadTestRunning(name.to_owned()))?;
        let results = crate::PoolLoadTester::new(pool)
            .run(options, progress, cancel.clone())
            .await?;
        if !cancel.is_cancelled() {
            self.keep_load_test(name, &results).await;
        }
        Ok(results)
    }

    /// Reserves pool `name` for one load test, at once (no await): a second test
    /// of the pool is refused (`LoadTestRunning`) until the reservation is run
    /// or dropped.
    pub fn reserve_load_test(self: &Arc<Self>, name: &str) -> Result<LoadTestSlot, Error> {
        let pool = self.pool(name)?;
        if !self
            .running_load_tests
            .lock()
            .expect("name set lock")
            .insert(name.to_owned())
        {
            return Err(Error::LoadTestRunning(name.to_owned()));
        }
        Ok(LoadTestSlot {
            registry: Arc::clone(self),
            name: name.to_owned(),
            pool,
        })
    }

    /// Logs a finished test, keeps it as the pool's last and stores it.
    async fn keep_load_test(&self, name: &str, results: &crate::LoadTestResults) {
        tracing::info!(
            pool = %name, grade = results.grade.letter(), rps = results.requests_per_second,
            p95_ms = results.p95_response_time_ms, "load test finished"
        );
        self.last_load_tests
            .lock()
            .expect("load tests lock")
            .insert(name.to_owned(), results.clone());
        if let Err(error) = self.store.insert_load_test(results).await {
            tracing::warn!(pool = %name, %error, "load test result not stored");
        }
    }

    /// The last finished load test of a pool (kept across restarts, dropped when the
    /// pool is deleted).
    pub fn last_load_test(&self, name: &str) -> Option<crate::LoadTestResults> {
        self.last_load_tests
            .lock()
            .expect("load tests lock")
            .get(name)
            .cloned()
    }

    /// `optimize_all_pools`: recommendations for every pool, and with
    /// `apply` the applicable ones applied (live or by rebuild) and stored.
    pub async fn optimize_all_pools(&self, apply: bool) -> Result<OptimizationReport, Error> {
        self.optimize_pools(&[], apply).await
    }

    /// [`optimize_all_pools`](Self::optimize_all_pools) for the named pools (empty:
    /// all). Growth of max_connections is capped so that the pools on one server
    /// never add up to more than its budget (see [`Headroom`]).
    pub async fn optimize_pools(
        &self,
        names: &[String],
        apply: bool,
    ) -> Result<OptimizationReport, Error> {
        self.optimize_pools_as(names, apply, "embedded").await
    }

    /// [`optimize_pools`](Self::optimize_pools) on behalf of `source` (the
    /// caller's role, or `optimizer` for automated tuning): applied changes are
    /// recorded in pool_config_changes with it and the recommendations' reasons.
    pub async fn optimize_pools_as(
        &self,
        names: &[String],
        apply: bool,
        source: &str,
    ) -> Result<OptimizationReport, Error> {
        let names = if names.is_empty() {
            self.pool_names()
        } else {
            for name in names {
                self.pool(name)?;
            }
            names.to_vec()
        };
        let mut optimizations = Vec::with_capacity(names.len());
        for name in &names {
            optimizations.push(self.optimize_pool(name, apply, source).await?);
        }
        Ok(OptimizationReport::of(optimizations, apply))
    }

    /// The optimizer's pass over one pool (see [`optimize_pools_as`](Self::optimize_pools_as)).
    async fn optimize_pool(
        &self,
        name: &str,
        apply: bool,
        source: &str,
    ) -> Result<PoolOptimization, Error> {
        let pool = self.pool(name)?;
        let live = pool.pool_stats();
        let input = self.optimizer_input(name, &pool, &live).await?;
        let mut recommendations = optimizer::recommend(&input);
        if let Some(headroom) = self.headroom(name) {
            headroom.cap_growth(&input.config, &mut recommendations);
        }
        let mut applied_changes = Vec::new();
        if apply {
            let plan = optimizer::plan(&input.config, &recommendations);
            if plan.config != input.config {
                // Applied to the config in force when the pool's claim is taken:
                // a change made meanwhile (the window above reads the control
                // database) is kept, and the audit diff is against it.
                let origin = ChangeOrigin::new(source, plan.reason);
                self.update_pool_config_with(name, &origin, |current| {
                    let plan = optimizer::plan(current, &recommendations);
                    applied_changes = plan.applied_changes;
                    Ok(plan.config)
                })
                .await?;
                tracing::info!(pool = %name, changes = ?applied_changes, "optimizer applied changes");
            }
        }
        Ok(PoolOptimization {
            pool_name: name.to_owned(),
            current_utilization: live.utilization_rate,
            recommendations,
            applied_changes,
        })
    }

    /// What the optimizer reads for one pool: the last hour of its history with
    /// the live figures folded in, its health, cache and last load test.
    async fn optimizer_input(
        &self,
        name: &str,
        pool: &AdvancedConnectionPool,
        live: &PoolStats,
    ) -> Result<OptimizerInput, Error> {
        let since = SystemTime::now() - OPTIMIZER_WINDOW;
        let (mut window, failed_health_checks) = self.store.stats_window(name, since).await?;
        window.peak_utilization = window.peak_utilization.max(live.utilization_rate);
        window.peak_demand = window
            .peak_demand
            .max(live.active_connections + live.waiting_requests);
        window.peak_size = window.peak_size.max(live.current_size);
        Ok(OptimizerInput {
            config: pool.config(),
            window,
            health: pool.get_health_status().await,
            failed_health_checks,
            cache: pool.get_statement_cache_stats().await,
            last_load_test: self.last_load_test(name),
            held_back_by_budget: live.budget.as_ref().is_some_and(|b| b.held_back),
        })
    }

    /// The room the budget of `name`'s server leaves its max_connections beside
    /// the other pools there; `None` while the server's settings are not known.
    fn headroom(&self, name: &str) -> Option<Headroom> {
        let (target, others) = {
            let pools = self.pools.read().expect("pools lock");
            let target = Arc::clone(&pools.get(name)?.target);
            let key = target.server_key();
            let others = pools
                .iter()
                .filter(|(other, entry)| *other != name && entry.target.server_key() == key)
                .map(|(_, entry)| entry.pool.config().max_connections)
                .fold(0u32, u32::saturating_add);
            (target, others)
        };
        let limits = self.budget_for(&target).limits()?;
        Some(Headroom {
            limits,
            reserve: self.connection_reserve,
            others,
        })
    }

    /// Automated tuning: every `interval`, applies the optimizer's applicable
    /// recommendations to every pool (source `optimizer` in pool_config_changes),
    /// until `stop`. A round that fails (a pool busy with another change, the
    /// control database away) is logged and the next one tries again; a pool
    /// under a load test is left alone (a rebuild would close the pool it runs on).
    pub async fn auto_tune(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            // One replica of a group tunes (its changes reach the others).
            if !self.leadership.leads() {
                continue;
            }
            // Pool by pool: one that cannot be tuned now does not hold the others.
            for name in self.pool_names() {
                if self.is_load_testing(&name) {
                    continue;
                }
                let round = self.optimize_pools_as(std::slice::from_ref(&name), true, "optimizer");
                let report = tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    report = round => report,
                };
                if let Err(error) = report {
                    tracing::warn!(pool = %name, %error, "automated tuning skipped the pool this round");
                }
            }
        }
    }

    /// Recreates every stored pool without waiting for any database: each starts
    /// unhealthy and connects in the background (a dead or blackholed database
    /// delays nothing else). One whose stored definition no longer parses is
    /// skipped and logged. Returns how many pools were restored.
    pub async fn restore(&self) -> Result<usize, Error> {
        let mut restored = 0;
        let mut created = Vec::new();
        for definition in self.store.list_pool_definitions().await? {
            let (name, created_at) = (definition.name.clone(), definition.created_at);
            if self.restore_one(definition).await {
                created.push((name, created_at));
                restored += 1;
            }
        }
        // Each pool's last load test, for the optimizer (one stored before the
        // pool was recreated under its name does not count).
        match self.store.last_load_tests(&created).await {
            Ok(tests) => {
                let mut last = self.last_load_tests.lock().expect("load tests lock");
                for test in tests {
                    last.insert(test.pool_name.clone(), test);
                }
            }
            Err(error) => tracing::warn!(%error, "last load tests not reloaded"),
        }
        Ok(restored)
    }

    /// Recreates one stored pool (at startup, or one another replica created);
    /// false if it was skipped (logged).
    async fn restore_one(&self, definition: crate::store::PoolDefinition) -> bool {
        let config: AdvancedPoolConfig = match serde_json::from_value(definition.config.clone()) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(pool = %definition.name, %error, "stored config does not parse; pool skipped");
                return false;
            }
        };
        if let Err(error) = self.check_target(&definition.target) {
            tracing::error!(pool = %definition.name, %error, "stored pool's target is not allowed; skipped");
            return false;
        }
        let target = Arc::new(definition.target);
        let Ok(_claim) = self.claim(&definition.name) else {
            return false;
        };
        if self
            .pools
            .read()
            .expect("pools lock")
            .contains_key(&definition.name)
        {
            return false;
        }
        match AdvancedConnectionPool::for_target_under(
            &definition.name,
            Arc::clone(&target),
            config,
            false,
            &self.token,
            Some(self.budget_for(&target)),
        )
        .await
        {
            Ok(pool) => {
                self.insert(
                    &definition.name,
                    Entry {
                        pool: Arc::new(pool),
                        target,
                        created_at: definition.created_at,
                        updated_at: definition.updated_at,
                        version: definition.version,
                        forwarder: self.token.child_token(),
                    },
                );
                true
            }
            Err(error) => {
                tracing::error!(pool = %definition.name, %error, "stored pool cannot be restored; skipped");
                false
            }
        }
    }

    /// Creates a pool (`create_pool`): validates, checks the target
    /// against the allowlist, connects (at least one connection must open), stores
    /// the definition (password sealed), then registers it.
    pub async fn create_pool(
        &self,
        name: String,
        database_url: &str,
        config: AdvancedPoolConfig,
    ) -> Result<Arc<AdvancedConnectionPool>, Error> {
        let target = check_new_pool(&name, database_url, &config)?;
        self.create_checked(name, target, config).await
    }

    /// Creates a pool whose name and config were checked.
    async fn create_checked(
        &self,
        name: String,
        target: ConnInfo,
        config: AdvancedPoolConfig,
    ) -> Result<Arc<AdvancedConnectionPool>, Error> {
        self.check_target(&target)?;
        let target = Arc::new(target);
        let _claim = self.claim(&name)?;
        {
            let pools = self.pools.read().expect("pools lock");
            if pools.contains_key(&name) {
                return Err(Error::PoolAlreadyExists(name));
            }
            // Pools being created count too.
            let creating = self
                .changing
                .lock()
                .expect("changing lock")
                .iter()
                .filter(|n| !pools.contains_key(*n))
                .count();
            if pools.len() + creating > self.max_pools {
                return Err(Error::TooManyPools {
                    max: self.max_pools,
                });
            }
        }
        // A known budget is checked before connecting; the first pool on a server
        // learns it with its first connection and is checked right after.
        self.refresh_live_replicas().await;
        let budget = self.budget_for(&target);
        // In a group: this replica's first allocation (or, when no replica has
        // read the server yet, leave to open the connection that reads it).
        self.allocate_now(&budget).await;
        budget
            .check_min(&name, config.min_connections)
            .map_err(Error::BudgetExceeded)?;
        let pool = AdvancedConnectionPool::for_target_under(
            &name,
            Arc::clone(&target),
            config.clone(),
            true,
            &self.token,
            Some(Arc::clone(&budget)),
        )
        .await;
        let pool = Arc::new(self.unless_shutting_down(pool)?);
        // The server's settings are known now: the pool is sized by this
        // replica's allocation of them once this round has run.
        self.allocate_now(&budget).await;
        if let Err(refusal) = budget.check_min(&name, config.min_connections) {
            pool.close().await;
            return Err(Error::BudgetExceeded(refusal));
        }
        let stored = match self
            .store
            .insert_pool_definition(&name, &target, &config_json(&config))
            .await
        {
            Ok(stored) => stored,
            Err(error) => {
                pool.close().await;
                return Err(error);
            }
        };
        self.insert(
            &name,
            Entry {
                pool: Arc::clone(&pool),
                target: Arc::clone(&target),
                created_at: stored.created_at,
                updated_at: stored.updated_at,
                version: stored.version,
                forwarder: self.token.child_token(),
            },
        );
        tracing::info!(pool = %name, database = %target, "pool created");
        Ok(pool)
    }

    /// Registers a pool; after shutdown began, closes it instead.
    fn insert(&self, name: &str, entry: Entry) {
        if self.token.is_cancelled() {
            let pool = Arc::clone(&entry.pool);
            self.tasks.spawn(async move { pool.close().await });
            return;
        }
        self.spawn_forwarder(&entry.pool, entry.forwarder.clone());
        self.pools
            .write()
            .expect("pools lock")
            .insert(name.to_owned(), entry);
        let _ = self
            .events
            .send(events::event(name, PoolEventKind::PoolCreated));
    }

    /// Forwards a pool's events to the registry's broadcast until `stop`.
    fn spawn_forwarder(&self, pool: &AdvancedConnectionPool, stop: CancellationToken) {
        let from = pool.subscribe();
        let to = self.events.clone();
        let name = pool.name().to_owned();
        self.tasks
            .spawn(async move { forward(&name, from, &to, &stop).await });
    }

    /// The pool named `name` (`get_pool`).
    pub async fn get_pool(&self, name: &str) -> Option<Arc<AdvancedConnectionPool>> {
        self.pool(name).ok()
    }

    /// The pool named `name`, or [`Error::PoolNotFound`].
    pub fn pool(&self, name: &str) -> Result<Arc<AdvancedConnectionPool>, Error> {
        self.pools
            .read()
            .expect("pools lock")
            .get(name)
            .map(|entry| Arc::clone(&entry.pool))
            .ok_or_else(|| Error::PoolNotFound(name.to_owned()))
    }

    /// What the registry knows of `name`.
    pub fn pool_info(&self, name: &str) -> Result<PoolInfo, Error> {
        let pools = self.pools.read().expect("pools lock");
        let entry = pools
            .get(name)
            .ok_or_else(|| Error::PoolNotFound(name.to_owned()))?;
        Ok(info(name, entry))
    }

    /// Every pool, ordered by name.
    pub fn list_pools(&self) -> Vec<PoolInfo> {
        self.pools
            .read()
            .expect("pools lock")
            .iter()
            .map(|(name, entry)| info(name, entry))
            .collect()
    }

    /// The names of every pool, ordered.
    pub fn pool_names(&self) -> Vec<String> {
        self.pools
            .read()
            .expect("pools lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Replaces a pool's config: live when the pool allows it, else by building a
    /// new pool, swapping it in and closing the old one gracefully. The stored
    /// definition changes with it. Invalid: nothing changes. Recorded in
    /// pool_config_changes with the source `embedded`.
    pub async fn update_pool_config(
        &self,
        name: &str,
        config: AdvancedPoolConfig,
    ) -> Result<PoolInfo, Error> {
        let origin = ChangeOrigin::new("embedded", "update_pool_config");
        self.update_pool_config_from(name, config, &origin).await
    }

    /// [`update_pool_config`](Self::update_pool_config) on behalf of `origin`:
    /// every changed field is recorded in pool_config_changes and broadcast as a
    /// [`PoolEventKind::ConfigChanged`] event, and so is a change the connection
    /// budget refused (as not applied).
    pub async fn update_pool_config_from(
        &self,
        name: &str,
        config: AdvancedPoolConfig,
        origin: &ChangeOrigin,
    ) -> Result<PoolInfo, Error> {
        self.update_pool_config_with(name, origin, |_| Ok(config))
            .await
    }

    /// Changes a pool's config by `patch`, which gets the config in force and
    /// returns the new one. It runs under the pool's claim, so a change that
    /// landed since the caller last looked is patched, never reverted, and the
    /// recorded changes are a diff against the config really replaced. An error
    /// from `patch` changes nothing.
    pub async fn update_pool_config_with(
        &self,
        name: &str,
        origin: &ChangeOrigin,
        patch: impl FnOnce(&AdvancedPoolConfig) -> Result<AdvancedPoolConfig, Error>,
    ) -> Result<PoolInfo, Error> {
        let mut changes = Vec::new();
        let result = self
            .replace_config(name, |current| {
                let config = patch(current)?;
                changes = crate::config::diff(current, &config);
                Ok(config)
            })
            .await;
        match &result {
            Ok(_) => {
                self.record_changes(name, changes, origin.clone(), true)
                    .await
            }
            Err(Error::ConcurrentChange(_)) => {
                // Another replica's change won: follow it now (the claim is
                // free again), not at the next reconcile.
                if let Err(error) = self.reconcile(name).await {
                    tracing::warn!(pool = %name, %error, "the winning change not followed yet; the next reconcile retries");
                }
            }
            Err(Error::BudgetExceeded(refusal)) => {
                let origin = ChangeOrigin::new(
                    origin.source.clone(),
                    format!("{}; refused: {refusal}", origin.reason),
                );
                self.record_changes(name, changes, origin, false).await;
            }
            Err(_) => {}
        }
        result
    }

    /// Stores and broadcasts the changes of one update (a store that fails is
    /// logged: the change itself has happened).
    async fn record_changes(
        &self,
        name: &str,
        changes: Vec<crate::config::FieldChange>,
        origin: ChangeOrigin,
        applied: bool,
    ) {
        if changes.is_empty() {
            return;
        }
        if let Err(error) = self
            .store
            .insert_config_changes(name, &changes, &origin, applied)
            .await
        {
            tracing::warn!(pool = %name, %error, "config change not recorded");
        }
        tracing::info!(
            pool = %name, source = %origin.source, applied,
            fields = ?changes.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(),
            reason = %origin.reason, "pool config changed"
        );
        let _ = self.events.send(events::event(
            name,
            PoolEventKind::ConfigChanged {
                changes,
                source: origin.source,
                reason: origin.reason,
                applied,
            },
        ));
    }

    /// Replaces a pool's config with what `make` makes of the config in force,
    /// read under the pool's claim.
    async fn replace_config(
        &self,
        name: &str,
        make: impl FnOnce(&AdvancedPoolConfig) -> Result<AdvancedPoolConfig, Error>,
    ) -> Result<PoolInfo, Error> {
        let _claim = self.claim(name)?;
        let (pool, target, version) = self.entry_parts(name)?;
        let config = make(&pool.config())?;
        config.validate()?;
        self.refresh_live_replicas().await;
        self.swap_config(name, &pool, target, config, Change::Store(version))
            .await
    }

    /// The pool, target and definition version of `name`.
    fn entry_parts(
        &self,
        name: &str,
    ) -> Result<(Arc<AdvancedConnectionPool>, Arc<ConnInfo>, i64), Error> {
        let pools = self.pools.read().expect("pools lock");
        let entry = pools
            .get(name)
            .ok_or_else(|| Error::PoolNotFound(name.to_owned()))?;
        Ok((
            Arc::clone(&entry.pool),
            Arc::clone(&entry.target),
            entry.version,
        ))
    }

    /// Puts `config` in force for `name` (live, or by a rebuilt pool): stored
    /// first (`Change::Store`, if the definition is still at that version), or
    /// as stored already by another replica (`Change::Follow`). Under the
    /// pool's claim.
    async fn swap_config(
        &self,
        name: &str,
        pool: &Arc<AdvancedConnectionPool>,
        target: Arc<ConnInfo>,
        config: AdvancedPoolConfig,
        change: Change,
    ) -> Result<PoolInfo, Error> {
        let budget = self.budget_for(&target);
        self.allocate_now(&budget).await;
        budget
            .check_min(name, config.min_connections)
            .map_err(Error::BudgetExceeded)?;
        let rebuilt = !pool.can_apply_live(&config);
        let replacement = if rebuilt {
            let pool = AdvancedConnectionPool::for_target_under(
                name,
                target,
                config.clone(),
                true,
                &self.token,
                Some(budget),
            )
            .await;
            Some(Arc::new(self.unless_shutting_down(pool)?))
        } else {
            None
        };
        let (version, updated_at) = match change {
            Change::Store(version) => match self
                .store
                .update_pool_config(name, &config_json(&config), version)
                .await
            {
                Ok(stored) => (stored.version, stored.updated_at),
                Err(error) => {
                    if let Some(new) = replacement {
                        new.close().await;
                    }
                    return Err(error);
                }
            },
            Change::Follow(version, updated_at) => (version, updated_at),
        };
        match replacement {
            None => pool.apply_config(config)?,
            Some(new) => {
                new.inherit_wire_counters(pool);
                let forwarder = self.token.child_token();
                self.spawn_forwarder(&new, forwarder.clone());
                let old = {
                    let mut pools = self.pools.write().expect("pools lock");
                    let entry = pools.get_mut(name).expect("the claim keeps it");
                    entry.forwarder.cancel();
                    entry.forwarder = forwarder;
                    std::mem::replace(&mut entry.pool, new)
                };
                let grace = self.close_grace;
                self.tasks
                    .spawn(async move { old.close_gracefully(grace).await });
            }
        }
        {
            let mut pools = self.pools.write().expect("pools lock");
            if let Some(entry) = pools.get_mut(name) {
                entry.updated_at = updated_at;
                entry.version = version;
            }
        }
        let _ = self
            .events
            .send(events::event(name, PoolEventKind::PoolUpdated { rebuilt }));
        tracing::info!(pool = %name, rebuilt, version, "pool config updated");
        self.pool_info(name)
    }

    /// Deletes a pool: removes its definition, stops new checkouts, lets checked-out
    /// connections finish within the grace period and closes everything.
    pub async fn delete_pool(&self, name: &str) -> Result<(), Error> {
        let _claim = self.claim(name)?;
        if !self.pools.read().expect("pools lock").contains_key(name) {
            return Err(Error::PoolNotFound(name.to_owned()));
        }
        self.store.delete_pool_definition(name).await?;
        self.remove_local(name).await;
        Ok(())
    }

    /// Removes a pool from this server (its definition is gone): under the
    /// pool's claim.
    async fn remove_local(&self, name: &str) {
        let Some(entry) = self.pools.write().expect("pools lock").remove(name) else {
            return;
        };
        entry.forwarder.cancel();
        self.last_load_tests
            .lock()
            .expect("load tests lock")
            .remove(name);
        let _ = self
            .events
            .send(events::event(name, PoolEventKind::PoolDeleted));
        entry.pool.close_gracefully(self.close_grace).await;
        tracing::info!(pool = %name, "pool deleted");
    }

    /// Brings pool `name` in line with its stored definition, which another
    /// replica of the group created, changed or deleted. A pool busy with a
    /// change of this server's is left to it (the next reconcile looks again).
    pub async fn reconcile(&self, name: &str) -> Result<(), Error> {
        let stored = self.store.get_pool_definition(name).await?;
        let local = self
            .pools
            .read()
            .expect("pools lock")
            .get(name)
            .map(|e| e.version);
        match (stored, local) {
            (Some(definition), None) => {
                let created = self.restore_one(definition).await;
                tracing::info!(pool = %name, created, "a pool another replica created");
            }
            (Some(definition), Some(version)) if definition.version > version => {
                let Ok(_claim) = self.claim(name) else {
                    return Ok(());
                };
                let (pool, target, version) = self.entry_parts(name)?;
                if definition.version <= version {
                    return Ok(());
                }
                let config: AdvancedPoolConfig = match serde_json::from_value(definition.config) {
                    Ok(config) => config,
                    Err(error) => {
                        tracing::error!(pool = %name, %error, "stored config does not parse; not followed");
                        return Ok(());
                    }
                };
                let change = Change::Follow(definition.version, definition.updated_at);
                self.swap_config(name, &pool, target, config, change)
                    .await?;
            }
            (None, Some(_)) => {
                let Ok(_claim) = self.claim(name) else {
                    return Ok(());
                };
                if self.store.get_pool_definition(name).await?.is_none() {
                    self.remove_local(name).await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// [`reconcile`](Self::reconcile) for every pool whose stored version
    /// differs from the one this server runs (a missed announcement caught up).
    pub async fn reconcile_all(&self) -> Result<(), Error> {
        let stored = self.store.definition_versions().await?;
        let local: HashMap<String, i64> = self
            .pools
            .read()
            .expect("pools lock")
            .iter()
            .map(|(name, e)| (name.clone(), e.version))
            .collect();
        let mut differ: Vec<&String> = stored
            .iter()
            .filter(|(name, version)| local.get(name) != Some(version))
            .map(|(name, _)| name)
            .collect();
        differ.extend(
            local
                .keys()
                .filter(|name| !stored.iter().any(|(n, _)| n == *name)),
        );
        for name in differ {
            if let Err(error) = self.reconcile(name).await {
                tracing::warn!(pool = %name, %error, "pool not brought in line with its definition; will retry");
            }
        }
        Ok(())
    }

    /// The control database.
    pub fn store(&self) -> &ControlStore {
        &self.store
    }

    /// `get_pool_performance_summary`: live stats, the last hour from
    /// the history, the cache hit rate and the recent scaling events.
    pub async fn get_pool_performance_summary(
        &self,
        name: &str,
    ) -> Result<PerformanceSummary, Error> {
        let pool = self.pool(name)?;
        let current = pool.get_pool_stats().await;
        let cache = pool.get_statement_cache_stats().await;
        Ok(PerformanceSummary {
            pool_name: name.to_owned(),
            utilization_rate: current.utilization_rate,
            current,
            last_hour: self.store.hour_summary(name).await?,
            cache_hit_rate: cache.hit_rate,
            recent_scaling_events: self
                .store
                .scaling_events(name, RECENT_SCALING_EVENTS)
                .await?,
        })
    }

    /// Every pool's events (and pools being created, updated, deleted). A
    /// subscriber that falls behind gets `RecvError::Lagged(missed)`.
    pub fn subscribe(&self) -> broadcast::Receiver<PoolEvent> {
        self.events.subscribe()
    }

    /// Closes every pool and stops the registry's tasks.
    pub async fn shutdown(&self) {
        let entries: Vec<Entry> = std::mem::take(&mut *self.pools.write().expect("pools lock"))
            .into_values()
            .collect();
        // Creates under way give up, pool tasks stop; pools close together, their
        // checked-out connections given the grace period.
        self.token.cancel();
        let mut closing = tokio::task::JoinSet::new();
        for entry in entries {
            entry.forwarder.cancel();
            let grace = self.close_grace;
            closing.spawn(async move { entry.pool.close_gracefully(grace).await });
        }
        while closing.join_next().await.is_some() {}
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// A pool built while shutdown began is closed, and the caller told so.
    fn unless_shutting_down(
        &self,
        pool: Result<AdvancedConnectionPool, Error>,
    ) -> Result<AdvancedConnectionPool, Error> {
        if self.token.is_cancelled() {
            if let Ok(pool) = pool {
                let pool = Arc::new(pool);
                self.tasks.spawn(async move { pool.close().await });
            }
            return Err(Error::ShuttingDown);
        }
        pool
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shut_down(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// Forwards the events of pool `name` from its own broadcast to the registry's
/// until `stop` or the pool's sender goes; events the forwarder fell behind on
/// become one MissedEvents event, so that watchers know their view has a gap.
async fn forward(
    name: &str,
    mut from: broadcast::Receiver<PoolEvent>,
    to: &broadcast::Sender<PoolEvent>,
    stop: &CancellationToken,
) {
    loop {
        let received = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            received = from.recv() => received,
        };
        let event = match received {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(count)) => {
                events::event(name, PoolEventKind::MissedEvents { count })
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let _ = to.send(event);
    }
}

fn info(name: &str, entry: &Entry) -> PoolInfo {
    PoolInfo {
        name: name.to_owned(),
        database_url: entry.target.to_string(),
        config: entry.pool.config(),
        created_at: entry.created_at,
        updated_at: entry.updated_at,
        is_healthy: entry.pool.is_healthy(),
        security: entry.pool.pool_stats().security,
    }
}

fn config_json(config: &AdvancedPoolConfig) -> serde_json::Value {
    serde_json::to_value(config).expect("AdvancedPoolConfig serializes")
}

#[cfg(test)]
mod tests {
    use super::{CancellationToken, PoolEventKind, broadcast, events, forward, validate_pool_name};

    #[tokio::test]
    async fn a_forwarder_that_falls_behind_says_how_many_events_it_missed() {
        let (pool_events, from) = broadcast::channel(2);
        let (to, mut watcher) = broadcast::channel(16);
        for queries in 1..=5 {
            pool_events
                .send(events::event(
                    "p",
                    PoolEventKind::ConnectionRecycled { queries },
                ))
                .expect("a receiver");
        }
        drop(pool_events);
        let stop = CancellationToken::new();
        forward("p", from, &to, &stop).await; // returns once the pool's sender is gone
        let kinds: Vec<PoolEventKind> = std::iter::from_fn(|| watcher.try_recv().ok())
            .map(|e| {
                assert_eq!(e.pool_name, "p");
                e.kind
            })
            .collect();
        assert_eq!(
            kinds,
            [
                PoolEventKind::MissedEvents { count: 3 },
                PoolEventKind::ConnectionRecycled { queries: 4 },
                PoolEventKind::ConnectionRecycled { queries: 5 },
            ]
        );
    }

    #[test]
    fn pool_names_at_their_boundaries() {
        for ok in ["a", "0", "primary", "cache_2", "a-b", &"a".repeat(63)] {
            assert!(validate_pool_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "_a",
            "-a",
            "A",
            "prim ary",
            "pool/x",
            "é",
            &"a".repeat(64),
        ] {
            assert!(validate_pool_name(bad).is_err(), "{bad}");
        }
    }
}
