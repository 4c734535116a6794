//! Optimization recommendations: a pure function of a pool's config, a window of
//! its stats, its health and its last load test, one function per rule; the cap
//! that keeps the pools on one PostgreSQL server within its connection budget; and
//! the plan that turns applicable recommendations into a new config. The registry
//! gathers the inputs and applies the plan.

use serde::Serialize;

use crate::budget::ServerLimits;
use crate::loadtest::LoadTestResults;
pub use crate::store::history::StatsWindow;
use crate::{AdvancedPoolConfig, HealthStatus, StatementCacheStats};

/// The utilization a resized pool is aimed at.
const TARGET_UTILIZATION: f64 = 0.7;

/// How much a recommendation matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Hurts performance now.
    Warning,
    /// Failing requests or about to.
    Critical,
}

/// A change `apply` can make: one AdvancedPoolConfig field and its new value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "field", content = "value", rename_all = "snake_case")]
pub enum ConfigChange {
    /// `max_connections`.
    MaxConnections(u32),
    /// `min_connections`.
    MinConnections(u32),
    /// `statement_cache_capacity`.
    StatementCacheCapacity(u32),
    /// `recycle_threshold_queries`.
    RecycleThresholdQueries(u64),
    /// `idle_timeout_secs`.
    IdleTimeoutSecs(u64),
}

impl ConfigChange {
    /// The field's name in AdvancedPoolConfig.
    pub fn field(&self) -> &'static str {
        match self {
            Self::MaxConnections(_) => "max_connections",
            Self::MinConnections(_) => "min_connections",
            Self::StatementCacheCapacity(_) => "statement_cache_capacity",
            Self::RecycleThresholdQueries(_) => "recycle_threshold_queries",
            Self::IdleTimeoutSecs(_) => "idle_timeout_secs",
        }
    }

    /// The new value, as text.
    pub fn value(&self) -> String {
        match *self {
            Self::MaxConnections(v) | Self::MinConnections(v) | Self::StatementCacheCapacity(v) => {
                v.to_string()
            }
            Self::RecycleThresholdQueries(v) | Self::IdleTimeoutSecs(v) => v.to_string(),
        }
    }

    /// The field's value in `config`, as text.
    pub fn current(&self, config: &AdvancedPoolConfig) -> String {
        match self {
            Self::MaxConnections(_) => config.max_connections.to_string(),
            Self::MinConnections(_) => config.min_connections.to_string(),
            Self::StatementCacheCapacity(_) => config.statement_cache_capacity.to_string(),
            Self::RecycleThresholdQueries(_) => config.recycle_threshold_queries.to_string(),
            Self::IdleTimeoutSecs(_) => config.idle_timeout_secs.to_string(),
        }
    }

    /// Sets the field in `config`.
    pub fn apply_to(&self, config: &mut AdvancedPoolConfig) {
        match *self {
            Self::MaxConnections(v) => config.max_connections = v,
            Self::MinConnections(v) => config.min_connections = v,
            Self::StatementCacheCapacity(v) => config.statement_cache_capacity = v,
            Self::RecycleThresholdQueries(v) => config.recycle_threshold_queries = v,
            Self::IdleTimeoutSecs(v) => config.idle_timeout_secs = v,
        }
    }
}

/// One recommendation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// The AdvancedPoolConfig field (or `queries` / `database` for advice).
    pub parameter: String,
    /// Its value now.
    pub current_value: String,
    /// The value suggested (empty for advice without a number).
    pub suggested_value: String,
    /// Why, with the figures that prompted it.
    pub reason: String,
    /// How much it matters.
    pub severity: Severity,
    /// The recommendation in a sentence (e.g. "Increase max_connections").
    pub sentence: String,
    /// The change `apply` makes; `None` for advice a person acts on.
    pub change: Option<ConfigChange>,
}

impl Recommendation {
    /// A recommendation `apply` can carry out: `change` to `config`.
    pub fn change(
        change: ConfigChange,
        config: &AdvancedPoolConfig,
        reason: String,
        severity: Severity,
        sentence: &str,
    ) -> Self {
        Self {
            parameter: change.field().to_owned(),
            current_value: change.current(config),
            suggested_value: change.value(),
            reason,
            severity,
            sentence: sentence.to_owned(),
            change: Some(change),
        }
    }

    /// Advice for a person (not applied): `suggested` may be empty.
    pub fn advice(
        parameter: &str,
        current: impl ToString,
        suggested: impl ToString,
        reason: String,
        severity: Severity,
        sentence: &str,
    ) -> Self {
        Self {
            parameter: parameter.to_owned(),
            current_value: current.to_string(),
            suggested_value: suggested.to_string(),
            reason,
            severity,
            sentence: sentence.to_owned(),
            change: None,
        }
    }

    /// Whether `apply` can carry it out.
    pub fn applicable(&self) -> bool {
        self.change.is_some()
    }

    /// Replaces the change with `change` (its value shown as suggested).
    fn retarget(&mut self, change: ConfigChange) {
        self.suggested_value = change.value();
        self.change = Some(change);
    }
}

/// A recommendation as a line of a report: the sentence, then the figures.
impl std::fmt::Display for Recommendation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.sentence)?;
        if !self.suggested_value.is_empty() {
            write!(
                f,
                " ({}: {} -> {})",
                self.parameter, self.current_value, self.suggested_value
            )?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What the optimizer looks at, for one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerInput {
    /// The pool's config.
    pub config: AdvancedPoolConfig,
    /// Stats over a recent window (the last hour of history plus now).
    pub window: StatsWindow,
    /// The pool's health now.
    pub health: HealthStatus,
    /// Health checks that failed in the window.
    pub failed_health_checks: u64,
    /// The statement cache's counters.
    pub cache: StatementCacheStats,
    /// The pool's last load test, if one ran.
    pub last_load_test: Option<LoadTestResults>,
    /// Whether its server's connection budget holds it below its max now.
    pub held_back_by_budget: bool,
}

/// The figures every rule reads, worked out once from the input.
struct Facts<'a> {
    input: &'a OptimizerInput,
    config: &'a AdvancedPoolConfig,
    window: &'a StatsWindow,
    test: Option<&'a LoadTestResults>,
    /// The highest utilization seen in the window or the last load test.
    peak_utilization: f64,
    error_rate: f64,
    p95_ms: f64,
    /// The most callers wanting a connection at once, seen in the window or
    /// driven by the last load test when it saturated the pool.
    demand: u32,
}

impl<'a> Facts<'a> {
    fn of(input: &'a OptimizerInput) -> Self {
        let window = &input.window;
        let test = input.last_load_test.as_ref();
        Self {
            input,
            config: &input.config,
            window,
            test,
            peak_utilization: window
                .peak_utilization
                .max(test.map_or(0.0, |t| t.peak_utilization)),
            error_rate: test.map_or(0.0, |t| t.error_rate).max(window.error_rate()),
            p95_ms: test.map_or(0.0, |t| t.p95_response_time_ms),
            demand: window.peak_demand.max(match test {
                Some(t) if t.peak_utilization >= 0.85 => t.concurrency,
                _ => 0,
            }),
        }
    }

    fn peak_percent(&self) -> f64 {
        self.peak_utilization * 100.0
    }
}

/// One rule: what it recommends (possibly nothing).
type Rule = fn(&Facts<'_>, &mut Vec<Recommendation>);

/// The rules, in the order the README lists them.
const RULES: [Rule; 9] = [
    high_utilization,
    high_error_rate,
    slow_responses,
    low_cache_hit_rate,
    frequent_acquire_timeouts,
    slow_acquisition,
    failing_health_checks,
    connection_churn,
    low_utilization,
];

/// The recommendations for one pool, most severe first.
pub fn recommend(input: &OptimizerInput) -> Vec<Recommendation> {
    let facts = Facts::of(input);
    let mut out = Vec::new();
    for rule in RULES {
        rule(&facts, &mut out);
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.severity));
    out
}

/// High utilization (> 85%). A larger max helps only a pool that has been at its
/// max: below it, dynamic sizing still has room; held back by the budget, the
/// server has none.
fn high_utilization(f: &Facts<'_>, out: &mut Vec<Recommendation>) {
    let c = f.config;
    if f.peak_utilization <= 0.85 {
        return;
    }
    if f.input.held_back_by_budget {
        out.push(Recommendation::advice(
            "database",
            "connection budget",
            "",
            format!(
                "peak utilization {:.0}% > 85%, and the server's connection budget holds the pool \
                 below max_connections {}",
                f.peak_percent(),
                c.max_connections
            ),
            Severity::Warning,
            "Raise the database's max_connections, lower other pools' demand or move pools to another server",
        ));
        return;
    }
    let at_max = f.window.peak_size >= c.max_connections
        || !c.enable_dynamic_sizing
        || f.test.is_some_and(|t| t.peak_utilization > 0.85);
    if !at_max {
        return;
    }
    let demand = f.demand;
    let wanted = ((f64::from(demand.max(c.max_connections)) / TARGET_UTILIZATION).ceil() as u32)
        .max(c.max_connections.saturating_add(1))
        .min(crate::config::MAX_CONNECTIONS.max(c.max_connections));
    out.push(Recommendation::change(
        ConfigChange::MaxConnections(wanted),
        c,
        format!(
            "peak utilization {:.0}% > 85% with demand for {demand} connections; {wanted} puts it near {:.0}%",
            f.peak_percent(),
            TARGET_UTILIZATION * 100.0
        ),
        if f.peak_utilization >= 0.95 { Severity::Critical } else { Severity::Warning },
        "Increase max_connections",
    ));
    if !c.enable_dynamic_sizing {
        out.push(Recommendation::advice(
            "enable_dynamic_sizing",
            false,
            true,
            "the pool is saturated at a fixed size".into(),
            Severity::Info,
            "Enable dynamic scaling",
        ));
    }
    if c.acquire_timeout_secs > 5 {
        out.push(Recommendation::advice(
            "acquire_timeout_secs",
            c.acquire_timeout_secs,
            (c.acquire_timeout_secs / 2).max(5),
            "a saturated pool should fail callers fast rather than queue them".into(),
            Severity::Info,
            "Decrease acquire_timeout_secs",
        ));
    }
}

/// High error rate (> 5%).
fn high_error_rate(f: &Facts<'_>, out: &mut Vec<Recommendation>) {
    if f.error_rate > 0.05 {
        out.push(Recommendation::advice(
            "max_connections",
            f.config.max_connections,
            "",
            format!("error rate {:.1}% > 5%", f.error_rate * 100.0),
            Severity::Critical,
            "Increase pool size; check connection validation; review database capacity",
        ));
    }
}

/// Slow responses (p95 > 100 ms).
fn slow_responses(f: &Facts<'_>, out: &mut Vec<Recommendation>) {
    let p95_ms = f.p95_ms;
    if p95_ms > 100.0 {
        out.push(Recommendation::advice(
            "queries",
            format!("p95 {p95_ms:.0} ms"),
            "",
            format!("p95 response time {p95_ms:.0} ms > 100 ms"),
            Severity::Warning,
            "Optimize queries; increase statement cache capacity; review connection lifecycle settings",
        ));
    }
}

/// Low cache hit rate, with enough lookups to tell.
fn low_cache_hit_rate(f: &Facts<'_>, out: &mut Vec<Recommendation>) {
    let (c, cache) = (f.config, &f.input.cache);
    if c.enable_prepared_statements
        && cache.hits + cache.misses >= 1_000
        && cache.hit_rate < 0.8
        && cache.evictions > 0
    {
        let wanted = c.statement_cache_capacity.saturating_mul(2).max(100);
        out.push(Recommendation::change(
            ConfigChange::StatementCacheCapacity(wanted),
            c,
            format!(
                "hit rate {:.0}% with {} evictions: the working set does not fit",
                cache.hit_rate * 100.0,
                cache.evictions
            ),
            Severity::Warning,
            "Increase statement cache capacity",
        ));
    }
}

/// Frequent acquire timeouts (> 1% of checkouts) without saturation.
fn frequent_acquire_timeouts(f: &Facts<'_>, out: &mut Vec<Recommendation>) {
    let w = f.window;
    if w.acquires > 0
        && w.acquire_timeouts as f64 / w.acquires as f64 > 0.01
        && f.peak_utilization <= 0.85
    {
        out.push(Recommendation::advice(
            "acquire_timeout_secs",
            f.config.acquire_timeout_secs,
            "",
            format!(
                "{} of {} checkouts timed out while utilization stayed at or under 85%: connections are slow to open",
                w.acquire_timeouts, w.acquires
            ),
            Severity::Warning,
            "Check connection establishment (network, authentication, database capacity)",
        ));
    }
}

/// Slow acquisition while the pool is mostly idle: connections are slow to open
/// (network latency, TLS, authentication) or the database is.
fn slow_acquisition(f: &Facts<'_>, out: &mut Vec<Recommendation>) {
    let w = f.window;
    if w.acquires > 0 && w.avg_acquire_time_ms > 10.0 && w.avg_utilization < 0.5 {
        out.push(Recommendation::advice(
            "database",
            format!("acquire {:.1} ms", w.avg_acquire_time_ms),
            "",
            format!(
                "checkouts took {:.1} ms on average while utilization averaged {:.0}%: the wait is \
                 not for a free connection",
                w.avg_acquire_time_ms,
                w.avg_utilization * 100.0
            ),
            Severity::Warning,
            "Check network latency and the database's connection cost (TLS, authentication, load)",
        ));
    }
}

/// Frequent health failures, or unhealthy now.
fn failing_health_checks(f: &Facts<'_>, out: &mut Vec<Recommendation>) {
    let (input, health) = (f.input, &f.input.health);
    if input.failed_health_checks < u64::from(f.config.max_failed_health_checks)
        && health.is_healthy
    {
        return;
    }
    let last = health
        .last_error
        .as_ref()
        .map(|e| format!(", last: {e}"))
        .unwrap_or_default();
    out.push(Recommendation::advice(
        "database",
        if health.is_healthy {
            "healthy"
        } else {
            "unhealthy"
        },
        "",
        format!(
            "{} failed health checks in the window{last}",
            input.failed_health_checks
        ),
        Severity::Critical,
        "Check network connectivity; verify database availability",
    ));
}

/// Connection churn: recycling or lifetime too short.
fn connection_churn(f: &Facts<'_>, out: &mut Vec<Recommendation>) {
    let (c, w) = (f.config, f.window);
    if w.connections_created <= u64::from(c.max_connections) * 4 {
        return;
    }
    if c.enable_connection_recycling && w.connections_recycled * 2 > w.connections_created {
        out.push(Recommendation::change(
            ConfigChange::RecycleThresholdQueries(c.recycle_threshold_queries.saturating_mul(4)),
            c,
            format!(
                "{} of {} connections opened in the window replaced recycled ones",
                w.connections_recycled, w.connections_created
            ),
            Severity::Warning,
            "Recycle connections less often",
        ));
    } else if c.max_lifetime_secs < 600 {
        out.push(Recommendation::advice(
            "max_lifetime_secs",
            c.max_lifetime_secs,
            1800,
            format!(
                "{} connections opened in the window for a pool of {}",
                w.connections_created, c.max_connections
            ),
            Severity::Warning,
            "Increase max_lifetime_secs",
        ));
    }
}

/// Low utilization (< 30%): too many connections held, idle ones churning, a
/// floor above the need.
fn low_utilization(f: &Facts<'_>, out: &mut Vec<Recommendation>) {
    let (c, w, demand) = (f.config, f.window, f.demand);
    let saw_load = w.acquires > 0 || f.test.is_some();
    if !saw_load || f.peak_utilization >= 0.30 || f.error_rate > 0.05 {
        return;
    }
    let need = ((f64::from(demand) / TARGET_UTILIZATION).ceil() as u32)
        .max(c.min_connections)
        .max(1);
    if need < c.max_connections {
        out.push(Recommendation::change(
            ConfigChange::MaxConnections(need),
            c,
            format!(
                "peak utilization {:.0}% < 30% (demand {demand})",
                f.peak_percent()
            ),
            Severity::Info,
            "Decrease max_connections; consider pool consolidation",
        ));
    }
    // Under-used and churning: connections closed idle are opened again.
    if w.connections_created > u64::from(c.min_connections.max(1)) * 2 && c.idle_timeout_secs < 3600
    {
        out.push(Recommendation::change(
            ConfigChange::IdleTimeoutSecs(c.idle_timeout_secs.saturating_mul(2).clamp(60, 3600)),
            c,
            format!(
                "{} connections opened in the window at {:.0}% peak utilization: idle ones \
                 close and open again",
                w.connections_created,
                f.peak_percent()
            ),
            Severity::Info,
            "Increase idle_timeout_secs",
        ));
    }
    // min_connections above the observed need.
    let floor = ((f64::from(demand) * 1.2).ceil() as u32).max(1);
    if c.min_connections > floor {
        out.push(Recommendation::change(
            ConfigChange::MinConnections(floor),
            c,
            format!("at most {demand} connections were in use at once"),
            Severity::Info,
            "Decrease min_connections",
        ));
    }
}

/// The room a server's connection budget leaves one pool's max_connections: the
/// budget (max_connections − reserved − reserve) minus what the other pools on
/// that server hold as their max_connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// The server's settings.
    pub limits: ServerLimits,
    /// Connections poolplane leaves for everything else (`--connection-reserve`).
    pub reserve: u32,
    /// The max_connections the other pools on the server hold.
    pub others: u32,
}

impl Headroom {
    /// Caps `wanted` so that it plus the others fits; returns the capped value and
    /// whether it was capped.
    pub fn cap(&self, wanted: u32) -> (u32, bool) {
        let room = self
            .limits
            .available(self.reserve)
            .saturating_sub(self.others)
            .max(1);
        if wanted > room {
            (room, true)
        } else {
            (wanted, false)
        }
    }

    /// Caps every growth of max_connections in `recommendations` (whose pool has
    /// `config`); one left with no room to grow is no longer applicable.
    pub fn cap_growth(&self, config: &AdvancedPoolConfig, recommendations: &mut [Recommendation]) {
        for rec in recommendations.iter_mut() {
            let Some(ConfigChange::MaxConnections(wanted)) = rec.change else {
                continue;
            };
            if wanted <= config.max_connections {
                continue;
            }
            let (capped, was_capped) = self.cap(wanted);
            if !was_capped {
                continue;
            }
            rec.retarget(ConfigChange::MaxConnections(capped));
            rec.reason.push_str(&format!(
                "; capped at {capped} by the server's budget: {} connections for pools \
                 (max_connections {} - {} reserved - {} reserve), {} held by other pools",
                self.limits.available(self.reserve),
                self.limits.max_connections,
                self.limits.reserved_connections,
                self.reserve,
                self.others
            ));
            if capped <= config.max_connections {
                rec.change = None;
                rec.reason.push_str("; no room to grow");
            }
        }
    }
}

/// What applying a pool's recommendations makes of its config.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The config with every applicable change (the first per field) made.
    pub config: AdvancedPoolConfig,
    /// The changes, as `field: old -> new`.
    pub applied_changes: Vec<String>,
    /// Why: the recommendations' sentences and reasons.
    pub reason: String,
}

/// The config `recommendations` lead to from `config`: each field takes the first
/// applicable change for it; min_connections never ends above max_connections.
pub fn plan(config: &AdvancedPoolConfig, recommendations: &[Recommendation]) -> Plan {
    let mut changed = config.clone();
    let mut fields = Vec::new();
    let mut applied_changes = Vec::new();
    let mut reasons = Vec::new();
    for rec in recommendations {
        let Some(change) = rec.change else { continue };
        if fields.contains(&change.field()) {
            continue;
        }
        fields.push(change.field());
        change.apply_to(&mut changed);
        applied_changes.push(format!(
            "{}: {} -> {}",
            change.field(),
            change.current(config),
            change.value()
        ));
        reasons.push(format!("{}: {}", rec.sentence, rec.reason));
    }
    changed.min_connections = changed.min_connections.min(changed.max_connections);
    Plan {
        config: changed,
        applied_changes,
        reason: reasons.join("; "),
    }
}

/// What the optimizer found (and changed) for one pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolOptimization {
    /// The pool.
    pub pool_name: String,
    /// Its utilization now.
    pub current_utilization: f64,
    /// The recommendations, most severe first.
    pub recommendations: Vec<Recommendation>,
    /// The changes made (with apply), as `field: old -> new`.
    pub applied_changes: Vec<String>,
}

/// What an optimizer round found and changed, for every pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptimizationReport {
    /// Pools looked at.
    pub total_pools: usize,
    /// Pools changed (with apply), or pools with recommendations (without).
    pub optimized_pools: usize,
    /// One entry per pool.
    pub optimizations: Vec<PoolOptimization>,
}

impl OptimizationReport {
    /// The report of `optimizations`, counted as applied or as advised.
    pub fn of(optimizations: Vec<PoolOptimization>, apply: bool) -> Self {
        let optimized_pools = optimizations
            .iter()
            .filter(|o| {
                if apply {
                    !o.applied_changes.is_empty()
                } else {
                    !o.recommendations.is_empty()
                }
            })
            .count();
        Self {
            total_pools: optimizations.len(),
            optimized_pools,
            optimizations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recommendation_displays_its_sentence_change_and_reason() {
        let r = Recommendation::change(
            ConfigChange::MaxConnections(15),
            &AdvancedPoolConfig {
                max_connections: 10,
                ..AdvancedPoolConfig::default()
            },
            "peak utilization 95% > 85%".into(),
            Severity::Warning,
            "Increase max_connections",
        );
        assert!(r.applicable());
        assert_eq!(
            format!("  - {r}"),
            "  - Increase max_connections (max_connections: 10 -> 15): peak utilization 95% > 85%"
        );
    }
    use crate::loadtest::Grade;
    use std::time::{Duration, SystemTime};

    fn input(config: AdvancedPoolConfig) -> OptimizerInput {
        OptimizerInput {
            config,
            window: StatsWindow::default(),
            health: crate::HealthStatus {
                is_healthy: true,
                response_time_ms: 1.0,
                consecutive_failures: 0,
                last_check_at: None,
                last_success_at: None,
                last_error: None,
            },
            failed_health_checks: 0,
            cache: StatementCacheStats {
                hits: 0,
                misses: 0,
                hit_rate: 0.0,
                evictions: 0,
                prepared_statements: 0,
                capacity: 100,
            },
            last_load_test: None,
            held_back_by_budget: false,
        }
    }

    fn load_test(concurrency: u32, peak: f64, p95: f64, error_rate: f64) -> LoadTestResults {
        LoadTestResults {
            pool_name: "p".into(),
            concurrency,
            query: "SELECT 1".into(),
            target_rps: None,
            total_requests: 1000,
            successful_requests: 1000,
            failed_requests: 0,
            error_rate,
            requests_per_second: 100.0,
            avg_response_time_ms: p95 / 2.0,
            p50_response_time_ms: p95 / 2.0,
            p95_response_time_ms: p95,
            p99_response_time_ms: p95,
            max_response_time_ms: p95,
            avg_utilization: peak,
            peak_utilization: peak,
            capacity: 10,
            grade: Grade::F,
            started_at: SystemTime::now(),
            duration: Duration::from_secs(5),
        }
    }

    fn config(min: u32, max: u32) -> AdvancedPoolConfig {
        AdvancedPoolConfig {
            min_connections: min,
            max_connections: max,
            enable_dynamic_sizing: false,
            ..AdvancedPoolConfig::default()
        }
    }

    #[test]
    fn a_saturated_pool_is_told_to_grow_toward_70_percent() {
        let mut i = input(config(1, 2));
        i.last_load_test = Some(load_test(32, 1.0, 1600.0, 0.0));
        let recs = recommend(&i);
        let grow = recs
            .iter()
            .find(|r| r.parameter == "max_connections" && r.applicable())
            .unwrap();
        assert_eq!(grow.suggested_value, "46", "32 / 0.7 = 45.7");
        assert_eq!(grow.severity, Severity::Critical);
        assert_eq!(grow.sentence, "Increase max_connections");
        assert!(recs.iter().any(|r| r.sentence == "Enable dynamic scaling"));
        assert!(
            recs.iter().any(|r| r.parameter == "queries"),
            "p95 1600 ms > 100 ms"
        );
        assert_eq!(recs[0].severity, Severity::Critical, "most severe first");
    }

    fn dynamic(min: u32, max: u32) -> AdvancedPoolConfig {
        AdvancedPoolConfig {
            enable_dynamic_sizing: true,
            ..config(min, max)
        }
    }

    fn grows_max(i: &OptimizerInput) -> bool {
        recommend(i)
            .iter()
            .any(|r| r.sentence == "Increase max_connections")
    }

    #[test]
    fn max_grows_only_for_a_pool_that_reached_it() {
        // A dynamically sized pool busy at size 4 of max 10: sizing has room.
        let mut i = input(dynamic(2, 10));
        i.window = StatsWindow {
            peak_utilization: 1.0,
            peak_size: 4,
            peak_demand: 4,
            acquires: 1000,
            ..Default::default()
        };
        assert!(!grows_max(&i), "below its max");
        i.window.peak_size = 10;
        i.window.peak_demand = 12;
        assert!(grows_max(&i), "at its max");
        // Held back by the budget: advice about the server, not a larger max.
        i.held_back_by_budget = true;
        let recs = recommend(&i);
        assert!(!grows_max(&i));
        assert!(
            recs.iter()
                .any(|r| r.parameter == "database" && r.sentence.contains("max_connections")),
            "{recs:?}"
        );
    }

    #[test]
    fn the_error_rate_counts_every_failure_over_attempts() {
        let w = StatsWindow {
            acquires: 90,
            acquire_timeouts: 10,
            connection_errors: 5,
            query_errors: 5,
            ..Default::default()
        };
        assert!((w.error_rate() - 0.2).abs() < 1e-12, "{}", w.error_rate());
        assert_eq!(StatsWindow::default().error_rate(), 0.0);
        let mut i = input(dynamic(2, 10));
        i.window = StatsWindow {
            acquires: 100,
            query_errors: 6,
            peak_utilization: 0.5,
            peak_size: 4,
            ..Default::default()
        };
        assert!(
            recommend(&i)
                .iter()
                .any(|r| r.severity == Severity::Critical && r.reason.contains("error rate 6.0%")),
            "query errors alone count"
        );
    }

    #[test]
    fn the_other_rules() {
        // Under-used and churning: raise idle_timeout_secs.
        let mut i = input(AdvancedPoolConfig {
            idle_timeout_secs: 60,
            ..dynamic(1, 10)
        });
        i.window = StatsWindow {
            peak_utilization: 0.1,
            avg_utilization: 0.05,
            peak_demand: 1,
            peak_size: 1,
            acquires: 500,
            connections_created: 30,
            ..Default::default()
        };
        let recs = recommend(&i);
        let idle = recs
            .iter()
            .find(|r| r.parameter == "idle_timeout_secs")
            .expect("raise idle_timeout_secs");
        assert_eq!(
            (idle.suggested_value.as_str(), idle.applicable()),
            ("120", true)
        );
        // Slow acquisition at low utilization points at the connection cost.
        i.window.avg_acquire_time_ms = 40.0;
        assert!(
            recommend(&i)
                .iter()
                .any(|r| r.sentence.starts_with("Check network latency")),
        );
        i.window.avg_acquire_time_ms = 2.0;
        assert!(
            !recommend(&i)
                .iter()
                .any(|r| r.sentence.starts_with("Check network latency")),
        );
    }

    #[test]
    fn thresholds_are_strict() {
        let mut i = input(config(1, 10));
        i.window = StatsWindow {
            peak_utilization: 0.85,
            acquires: 100,
            peak_demand: 8,
            ..Default::default()
        };
        assert!(
            !recommend(&i)
                .iter()
                .any(|r| r.sentence == "Increase max_connections")
        );
        i.window.peak_utilization = 0.851;
        assert!(
            recommend(&i)
                .iter()
                .any(|r| r.sentence == "Increase max_connections")
        );

        let mut i = input(config(1, 10));
        i.last_load_test = Some(load_test(4, 0.5, 100.0, 0.05));
        let recs = recommend(&i);
        assert!(
            !recs.iter().any(|r| r.parameter == "queries"),
            "p95 exactly 100 ms is fine"
        );
        assert!(
            !recs.iter().any(|r| r.severity == Severity::Critical),
            "5% errors is fine"
        );
        i.last_load_test = Some(load_test(4, 0.5, 100.1, 0.0501));
        let recs = recommend(&i);
        assert!(recs.iter().any(|r| r.parameter == "queries"));
        assert!(
            recs.iter()
                .any(|r| r.sentence.starts_with("Increase pool size"))
        );
    }

    #[test]
    fn an_idle_pool_is_told_to_shrink_and_lower_its_floor() {
        let mut i = input(config(20, 100));
        i.window = StatsWindow {
            peak_utilization: 0.05,
            peak_demand: 5,
            acquires: 1000,
            ..Default::default()
        };
        let recs = recommend(&i);
        let max = recs
            .iter()
            .find(|r| r.parameter == "max_connections")
            .unwrap();
        assert_eq!(
            max.suggested_value, "20",
            "demand 5 / 0.7 = 8, but not below min 20"
        );
        let min = recs
            .iter()
            .find(|r| r.parameter == "min_connections")
            .unwrap();
        assert_eq!(min.suggested_value, "6", "5 x 1.2");
        // Without any load seen there is nothing to judge.
        let quiet = input(config(20, 100));
        assert!(recommend(&quiet).is_empty());
    }

    #[test]
    fn cache_churn_and_health_are_covered() {
        let mut i = input(AdvancedPoolConfig {
            statement_cache_capacity: 50,
            max_lifetime_secs: 60,
            ..config(1, 4)
        });
        i.cache = StatementCacheStats {
            hits: 500,
            misses: 600,
            hit_rate: 500.0 / 1100.0,
            evictions: 550,
            prepared_statements: 50,
            capacity: 50,
        };
        i.window = StatsWindow {
            connections_created: 40,
            connections_recycled: 30,
            acquires: 2000,
            peak_utilization: 0.5,
            peak_demand: 2,
            ..Default::default()
        };
        i.failed_health_checks = 3;
        let params: Vec<String> = recommend(&i).into_iter().map(|r| r.parameter).collect();
        assert!(
            params.contains(&"statement_cache_capacity".to_owned()),
            "{params:?}"
        );
        assert!(
            params.contains(&"recycle_threshold_queries".to_owned()),
            "{params:?}"
        );
        assert!(params.contains(&"database".to_owned()), "{params:?}");
        i.window.connections_recycled = 0;
        let params: Vec<String> = recommend(&i).into_iter().map(|r| r.parameter).collect();
        assert!(
            params.contains(&"max_lifetime_secs".to_owned()),
            "{params:?}"
        );
    }

    #[test]
    fn the_budget_caps_the_sum_of_pools() {
        let room = |others| Headroom {
            limits: ServerLimits {
                max_connections: 20,
                reserved_connections: 3,
            },
            reserve: 2,
            others,
        };
        assert_eq!(room(0).limits.available(2), 15);
        assert_eq!(room(5).cap(10), (10, false));
        assert_eq!(room(5).cap(11), (10, true));
        assert_eq!(room(14).cap(46), (1, true));
    }
}
