//! Optimization recommendations: a pure function of a pool's config, a window of
//! its stats, its health and its last load test; and the cap that keeps the sum of
//! max_connections of the pools on one PostgreSQL server within that server's
//! budget.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::loadtest::LoadTestResults;
use crate::{AdvancedPoolConfig, ConnectionPoolService, Error, HealthStatus, StatementCacheStats};

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
    /// The seed's sentence (e.g. "Increase max_connections").
    pub sentence: String,
    /// A numeric change `apply` can make (`suggested_value` parses as the field).
    pub applicable: bool,
}

/// The seed's `println!("  - {}", recommendation)`: the sentence, then the figures.
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

/// A pool's stats summarized over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsWindow {
    /// Mean utilization.
    pub avg_utilization: f64,
    /// Highest utilization.
    pub peak_utilization: f64,
    /// Most connections in use plus callers waiting at once.
    pub peak_demand: u32,
    /// The largest size the pool had.
    pub peak_size: u32,
    /// Checkouts in the window.
    pub acquires: u64,
    /// Checkouts that timed out in the window.
    pub acquire_timeouts: u64,
    /// Connections opened in the window.
    pub connections_created: u64,
    /// Connections recycled in the window.
    pub connections_recycled: u64,
    /// Mean acquire time of the window's checkouts, ms.
    pub avg_acquire_time_ms: f64,
    /// Connections that failed to open in the window.
    pub connection_errors: u64,
    /// Statements that failed in the window.
    pub query_errors: u64,
}

impl StatsWindow {
    /// Failed attempts over attempts: acquire timeouts, connections that failed
    /// to open and statements that failed, over checkouts tried.
    pub fn error_rate(&self) -> f64 {
        let attempts = self.acquires + self.acquire_timeouts;
        if attempts == 0 {
            return 0.0;
        }
        let errors = self.acquire_timeouts + self.connection_errors + self.query_errors;
        (errors as f64 / attempts as f64).min(1.0)
    }
}

fn rec(
    parameter: &str,
    current: impl ToString,
    suggested: impl ToString,
    reason: String,
    severity: Severity,
    sentence: &str,
    applicable: bool,
) -> Recommendation {
    Recommendation {
        parameter: parameter.to_owned(),
        current_value: current.to_string(),
        suggested_value: suggested.to_string(),
        reason,
        severity,
        sentence: sentence.to_owned(),
        applicable,
    }
}

/// The recommendations for one pool, most severe first.
pub fn recommend(input: &OptimizerInput) -> Vec<Recommendation> {
    let c = &input.config;
    let w = &input.window;
    let test = input.last_load_test.as_ref();
    let mut out = Vec::new();

    let peak_utilization = w
        .peak_utilization
        .max(test.map_or(0.0, |t| t.peak_utilization));
    let error_rate = test.map_or(0.0, |t| t.error_rate).max(w.error_rate());
    let p95_ms = test.map_or(0.0, |t| t.p95_response_time_ms);
    // Demand: the most callers wanting a connection at once, seen in the window or
    // driven by the last load test when it saturated the pool.
    let demand = w.peak_demand.max(match test {
        Some(t) if t.peak_utilization >= 0.85 => t.concurrency,
        _ => 0,
    });

    // 1. High utilization (> 85%). A larger max helps only a pool that has been at
    // its max: below it, dynamic sizing still has room; held back by the budget,
    // the server has none.
    let at_max = w.peak_size >= c.max_connections
        || !c.enable_dynamic_sizing
        || test.is_some_and(|t| t.peak_utilization > 0.85);
    if peak_utilization > 0.85 && input.held_back_by_budget {
        out.push(rec(
            "database",
            "connection budget",
            "",
            format!(
                "peak utilization {:.0}% > 85%, and the server's connection budget holds the pool \
                 below max_connections {}",
                peak_utilization * 100.0,
                c.max_connections
            ),
            Severity::Warning,
            "Raise the database's max_connections, lower other pools' demand or move pools to another server",
            false,
        ));
    } else if peak_utilization > 0.85 && at_max {
        let wanted = ((f64::from(demand.max(c.max_connections)) / TARGET_UTILIZATION).ceil()
            as u32)
            .max(c.max_connections.saturating_add(1))
            .min(crate::config::MAX_CONNECTIONS.max(c.max_connections));
        out.push(rec(
            "max_connections",
            c.max_connections,
            wanted,
            format!(
                "peak utilization {:.0}% > 85% with demand for {demand} connections; {wanted} puts it near {:.0}%",
                peak_utilization * 100.0,
                TARGET_UTILIZATION * 100.0
            ),
            if peak_utilization >= 0.95 { Severity::Critical } else { Severity::Warning },
            "Increase max_connections",
            true,
        ));
        if !c.enable_dynamic_sizing {
            out.push(rec(
                "enable_dynamic_sizing",
                false,
                true,
                "the pool is saturated at a fixed size".into(),
                Severity::Info,
                "Enable dynamic scaling",
                false,
            ));
        }
        if c.acquire_timeout_secs > 5 {
            out.push(rec(
                "acquire_timeout_secs",
                c.acquire_timeout_secs,
                (c.acquire_timeout_secs / 2).max(5),
                "a saturated pool should fail callers fast rather than queue them".into(),
                Severity::Info,
                "Decrease acquire_timeout_secs",
                false,
            ));
        }
    }

    // 2. High error rate (> 5%).
    if error_rate > 0.05 {
        out.push(rec(
            "max_connections",
            c.max_connections,
            "",
            format!("error rate {:.1}% > 5%", error_rate * 100.0),
            Severity::Critical,
            "Increase pool size; check connection validation; review database capacity",
            false,
        ));
    }

    // 3. Slow responses (p95 > 100 ms).
    if p95_ms > 100.0 {
        out.push(rec(
            "queries",
            format!("p95 {p95_ms:.0} ms"),
            "",
            format!("p95 response time {p95_ms:.0} ms > 100 ms"),
            Severity::Warning,
            "Optimize queries; increase statement cache capacity; review connection lifecycle settings",
            false,
        ));
    }

    // 4. Low cache hit rate (with enough lookups to tell).
    let lookups = input.cache.hits + input.cache.misses;
    if c.enable_prepared_statements
        && lookups >= 1_000
        && input.cache.hit_rate < 0.8
        && input.cache.evictions > 0
    {
        let wanted = c.statement_cache_capacity.saturating_mul(2).max(100);
        out.push(rec(
            "statement_cache_capacity",
            c.statement_cache_capacity,
            wanted,
            format!(
                "hit rate {:.0}% with {} evictions: the working set does not fit",
                input.cache.hit_rate * 100.0,
                input.cache.evictions
            ),
            Severity::Warning,
            "Increase statement cache capacity",
            true,
        ));
    }

    // 5. Frequent acquire timeouts (> 1% of checkouts).
    if w.acquires > 0
        && w.acquire_timeouts as f64 / w.acquires as f64 > 0.01
        && peak_utilization <= 0.85
    {
        out.push(rec(
            "acquire_timeout_secs",
            c.acquire_timeout_secs,
            "",
            format!(
                "{} of {} checkouts timed out while utilization stayed at or under 85%: connections are slow to open",
                w.acquire_timeouts, w.acquires
            ),
            Severity::Warning,
            "Check connection establishment (network, authentication, database capacity)",
            false,
        ));
    }

    // 5b. Slow acquisition while the pool is mostly idle: connections are slow to
    // open (network latency, TLS, authentication) or the database is.
    if w.acquires > 0 && w.avg_acquire_time_ms > 10.0 && w.avg_utilization < 0.5 {
        out.push(rec(
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
            false,
        ));
    }

    // 6. Frequent health failures.
    if input.failed_health_checks >= u64::from(c.max_failed_health_checks)
        || !input.health.is_healthy
    {
        out.push(rec(
            "database",
            if input.health.is_healthy {
                "healthy"
            } else {
                "unhealthy"
            },
            "",
            format!(
                "{} failed health checks in the window{}",
                input.failed_health_checks,
                input
                    .health
                    .last_error
                    .as_ref()
                    .map(|e| format!(", last: {e}"))
                    .unwrap_or_default()
            ),
            Severity::Critical,
            "Check network connectivity; verify database availability",
            false,
        ));
    }

    // 7. Connection churn: recycling or lifetime too short.
    if w.connections_created > u64::from(c.max_connections) * 4 {
        if c.enable_connection_recycling && w.connections_recycled * 2 > w.connections_created {
            let wanted = c.recycle_threshold_queries.saturating_mul(4);
            out.push(rec(
                "recycle_threshold_queries",
                c.recycle_threshold_queries,
                wanted,
                format!(
                    "{} of {} connections opened in the window replaced recycled ones",
                    w.connections_recycled, w.connections_created
                ),
                Severity::Warning,
                "Recycle connections less often",
                true,
            ));
        } else if c.max_lifetime_secs < 600 {
            out.push(rec(
                "max_lifetime_secs",
                c.max_lifetime_secs,
                1800,
                format!(
                    "{} connections opened in the window for a pool of {}",
                    w.connections_created, c.max_connections
                ),
                Severity::Warning,
                "Increase max_lifetime_secs",
                false,
            ));
        }
    }

    // 8. Low utilization (< 30%): too many connections held.
    let saw_load = w.acquires > 0 || test.is_some();
    if saw_load && peak_utilization < 0.30 && error_rate <= 0.05 {
        let need = ((f64::from(demand) / TARGET_UTILIZATION).ceil() as u32)
            .max(c.min_connections)
            .max(1);
        if need < c.max_connections {
            out.push(rec(
                "max_connections",
                c.max_connections,
                need,
                format!(
                    "peak utilization {:.0}% < 30% (demand {demand})",
                    peak_utilization * 100.0
                ),
                Severity::Info,
                "Decrease max_connections; consider pool consolidation",
                true,
            ));
        }
        // 8b. Under-used and churning: connections closed idle are opened again.
        if w.connections_created > u64::from(c.min_connections.max(1)) * 2
            && c.idle_timeout_secs < 3600
        {
            let wanted = c.idle_timeout_secs.saturating_mul(2).clamp(60, 3600);
            out.push(rec(
                "idle_timeout_secs",
                c.idle_timeout_secs,
                wanted,
                format!(
                    "{} connections opened in the window at {:.0}% peak utilization: idle ones \
                     close and open again",
                    w.connections_created,
                    peak_utilization * 100.0
                ),
                Severity::Info,
                "Increase idle_timeout_secs",
                true,
            ));
        }
        // 9. min_connections above the observed need.
        let floor = ((f64::from(demand) * 1.2).ceil() as u32).max(1);
        if c.min_connections > floor {
            out.push(rec(
                "min_connections",
                c.min_connections,
                floor,
                format!("at most {demand} connections were in use at once"),
                Severity::Info,
                "Decrease min_connections",
                true,
            ));
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.severity));
    out
}

/// The most max_connections all pools on one server may add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerBudget {
    /// The server's max_connections.
    pub max_connections: u32,
    /// Its superuser_reserved_connections.
    pub superuser_reserved: u32,
    /// Connections poolplane leaves for everything else.
    pub reserve: u32,
}

impl ServerBudget {
    /// What the pools may use together.
    pub fn available(&self) -> u32 {
        self.max_connections
            .saturating_sub(self.superuser_reserved)
            .saturating_sub(self.reserve)
    }

    /// Caps a pool's wanted max_connections so that it plus `others` (the other
    /// pools' max_connections on this server) fits; returns the capped value and
    /// whether it was capped.
    pub fn cap(&self, wanted: u32, others: u32) -> (u32, bool) {
        let room = self.available().saturating_sub(others).max(1);
        if wanted > room {
            (room, true)
        } else {
            (wanted, false)
        }
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

/// The seed's OptimizationReport.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptimizationReport {
    /// Pools looked at.
    pub total_pools: usize,
    /// Pools changed (with apply), or pools with recommendations (without).
    pub optimized_pools: usize,
    /// One entry per pool.
    pub optimizations: Vec<PoolOptimization>,
}

/// Automated tuning: every `interval`, applies the optimizer's applicable
/// recommendations to every pool (source `optimizer` in pool_config_changes),
/// until `stop`. A round that fails (a pool busy with another change, the
/// control database away) is logged and the next one tries again.
pub async fn auto_tune(
    registry: std::sync::Arc<ConnectionPoolService>,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Pool by pool: one that cannot be tuned now does not hold the others.
        for name in registry.pool_names() {
            // A load test measures the pool as it is: never rebuilt under one.
            if registry.is_load_testing(&name) {
                continue;
            }
            let round = registry.optimize_pools_as(std::slice::from_ref(&name), true, "optimizer");
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

/// The window the optimizer reads from the history.
const WINDOW: Duration = Duration::from_secs(3600);

fn set_field(config: &mut AdvancedPoolConfig, parameter: &str, value: &str) -> bool {
    match parameter {
        "max_connections" => value.parse().map(|v| config.max_connections = v).is_ok(),
        "min_connections" => value.parse().map(|v| config.min_connections = v).is_ok(),
        "statement_cache_capacity" => value
            .parse()
            .map(|v| config.statement_cache_capacity = v)
            .is_ok(),
        "recycle_threshold_queries" => value
            .parse()
            .map(|v| config.recycle_threshold_queries = v)
            .is_ok(),
        "idle_timeout_secs" => value.parse().map(|v| config.idle_timeout_secs = v).is_ok(),
        _ => false,
    }
}

impl ConnectionPoolService {
    /// The seed's `optimize_all_pools`: recommendations for every pool, and with
    /// `apply` the numeric ones applied (live or by rebuild) and stored.
    pub async fn optimize_all_pools(&self, apply: bool) -> Result<OptimizationReport, Error> {
        self.optimize_pools(&[], apply).await
    }

    /// [`optimize_all_pools`](Self::optimize_all_pools) for the named pools (empty:
    /// all). Growth of max_connections is capped so that the pools on one server
    /// never add up to more than its max_connections minus
    /// superuser_reserved_connections minus the configured reserve.
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
        let since = SystemTime::now() - WINDOW;
        let mut optimizations = Vec::new();
        for name in &names {
            let pool = self.pool(name)?;
            let live = pool.pool_stats();
            let (mut window, failed_health_checks) = self.store().stats_window(name, since).await?;
            window.peak_utilization = window.peak_utilization.max(live.utilization_rate);
            window.peak_demand = window
                .peak_demand
                .max(live.active_connections + live.waiting_requests);
            window.peak_size = window.peak_size.max(live.current_size);
            let config = pool.config();
            let input = OptimizerInput {
                config: config.clone(),
                window,
                health: pool.get_health_status().await,
                failed_health_checks,
                cache: pool.get_statement_cache_stats().await,
                last_load_test: self
                    .last_load_tests
                    .lock()
                    .expect("load tests lock")
                    .get(name)
                    .cloned(),
                held_back_by_budget: live.budget.as_ref().is_some_and(|b| b.held_back),
            };
            let mut recommendations = recommend(&input);
            for rec in recommendations
                .iter_mut()
                .filter(|r| r.applicable && r.parameter == "max_connections")
            {
                let Ok(wanted) = rec.suggested_value.parse::<u32>() else {
                    continue;
                };
                if wanted <= config.max_connections {
                    continue;
                }
                let Some((budget, others)) = self.server_budget(name) else {
                    continue;
                };
                let (capped, was_capped) = budget.cap(wanted, others);
                if was_capped {
                    rec.suggested_value = capped.to_string();
                    rec.reason.push_str(&format!(
                        "; capped at {capped} by the server's budget: {} connections for pools \
                         (max_connections {} - {} superuser reserved - {} reserve), {others} held by other pools",
                        budget.available(),
                        budget.max_connections,
                        budget.superuser_reserved,
                        budget.reserve
                    ));
                    if capped <= config.max_connections {
                        rec.applicable = false;
                        rec.reason.push_str("; no room to grow");
                    }
                }
            }
            let mut applied_changes = Vec::new();
            if apply {
                let mut changed = config.clone();
                let mut seen = HashSet::new();
                let mut reasons = Vec::new();
                for rec in recommendations.iter().filter(|r| r.applicable) {
                    if seen.insert(rec.parameter.clone())
                        && set_field(&mut changed, &rec.parameter, &rec.suggested_value)
                    {
                        applied_changes.push(format!(
                            "{}: {} -> {}",
                            rec.parameter, rec.current_value, rec.suggested_value
                        ));
                        reasons.push(format!("{}: {}", rec.sentence, rec.reason));
                    }
                }
                changed.min_connections = changed.min_connections.min(changed.max_connections);
                if changed != config {
                    let origin = crate::ChangeOrigin::new(source, reasons.join("; "));
                    self.update_pool_config_from(name, changed, &origin).await?;
                    tracing::info!(pool = %name, changes = ?applied_changes, "optimizer applied changes");
                }
            }
            optimizations.push(PoolOptimization {
                pool_name: name.clone(),
                current_utilization: live.utilization_rate,
                recommendations,
                applied_changes,
            });
        }
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
        Ok(OptimizationReport {
            total_pools: optimizations.len(),
            optimized_pools,
            optimizations,
        })
    }

    /// The budget of the server `name` points at (as its connections read it)
    /// and the max_connections the other pools on that server hold; `None` while
    /// the server's settings are not known.
    fn server_budget(&self, name: &str) -> Option<(ServerBudget, u32)> {
        let limits = self.budget_of(name)?.limits()?;
        let budget = ServerBudget {
            max_connections: limits.max_connections,
            superuser_reserved: limits.reserved_connections,
            reserve: self.connection_reserve,
        };
        let key = self.target(name).map(|t| t.server_key());
        let others = self
            .pool_names()
            .iter()
            .filter(|other| *other != name)
            .filter(|other| self.target(other).map(|t| t.server_key()) == key)
            .filter_map(|other| self.pool(other).ok())
            .map(|p| p.config().max_connections)
            .fold(0u32, u32::saturating_add);
        Some((budget, others))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recommendation_displays_its_sentence_change_and_reason() {
        let r = Recommendation {
            parameter: "max_connections".into(),
            current_value: "10".into(),
            suggested_value: "15".into(),
            reason: "peak utilization 95% > 85%".into(),
            severity: Severity::Warning,
            sentence: "Increase max_connections".into(),
            applicable: true,
        };
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
            .find(|r| r.parameter == "max_connections" && r.applicable)
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
    fn the_seeds_other_rules() {
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
            (idle.suggested_value.as_str(), idle.applicable),
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
        let budget = ServerBudget {
            max_connections: 20,
            superuser_reserved: 3,
            reserve: 2,
        };
        assert_eq!(budget.available(), 15);
        assert_eq!(budget.cap(10, 5), (10, false));
        assert_eq!(budget.cap(11, 5), (10, true));
        assert_eq!(budget.cap(46, 14), (1, true));
    }
}
