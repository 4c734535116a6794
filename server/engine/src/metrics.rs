//! The one metric catalogue: every metric poolplane exports, with its name, unit,
//! instrument, description and how it is read from a pool. The Prometheus
//! endpoint, the OTLP exporter and an application's own prometheus-client
//! [`Registry`] (one call: [`register`]) all read this table, so their lists
//! cannot drift. The OpenTelemetry database semantic-convention metrics come
//! first, poolplane's own after; Prometheus names are the OpenTelemetry names
//! with `.` as `_` (plus `_seconds` for durations and `_total` for counters).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::pool::{Histogram, PoolTelemetry};
use crate::{AdvancedConnectionPool, ConnectionPoolService, Grade, PoolStats};

/// The label (attribute) that names the pool.
pub const POOL_LABEL: &str = "db.client.connection.pool.name";
/// The label (attribute) of a connection's state in `db.client.connection.count`.
pub const STATE_LABEL: &str = "db.client.connection.state";

/// What kind of instrument a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instrument {
    /// A value that goes up and down, summed over pools (OpenTelemetry
    /// UpDownCounter; a Prometheus gauge).
    UpDownCounter,
    /// A value sampled as it is (OpenTelemetry Gauge; a Prometheus gauge).
    Gauge,
    /// A monotonic count since the pool started (a Prometheus counter).
    Counter,
    /// A distribution of durations in seconds (a Prometheus histogram).
    Histogram,
}

/// One pool at the moment it is read.
#[derive(Debug)]
pub struct PoolReading<'a> {
    /// The pool.
    pub pool: &'a AdvancedConnectionPool,
    /// Its stats, read once for every metric.
    pub stats: PoolStats,
    /// The grade of its last load test, if one ran.
    pub last_grade: Option<Grade>,
}

/// How a metric's value is read from a pool.
#[derive(Clone, Copy)]
pub enum Reading {
    /// An integer.
    Int(fn(&PoolReading<'_>) -> i64),
    /// A fraction or other real number.
    Float(fn(&PoolReading<'_>) -> f64),
    /// Open connections by state: (idle, used).
    ByState(fn(&PoolReading<'_>) -> (i64, i64)),
    /// One of the pool's latency histograms.
    Histogram(fn(PoolTelemetry<'_>) -> &Histogram),
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reading::Int(_) => "Int",
            Reading::Float(_) => "Float",
            Reading::ByState(_) => "ByState",
            Reading::Histogram(_) => "Histogram",
        })
    }
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The OpenTelemetry name (`db.client.connection.wait_time`).
    pub name: &'static str,
    /// Its UCUM unit (`s`, `{connection}`, `1`).
    pub unit: &'static str,
    /// The instrument.
    pub instrument: Instrument,
    /// What it measures.
    pub description: &'static str,
    /// How it is read.
    pub reading: Reading,
}

impl MetricDef {
    /// The name on a Prometheus endpoint: `.` as `_`, `_seconds` for durations,
    /// `_total` for counters.
    pub fn prometheus_name(&self) -> String {
        let base = self.name.replace('.', "_");
        match (self.instrument, self.unit) {
            (Instrument::Counter, _) => format!("{base}_total"),
            (_, "s") => format!("{base}_seconds"),
            _ => base,
        }
    }
}

const fn metric(
    name: &'static str,
    unit: &'static str,
    instrument: Instrument,
    description: &'static str,
    reading: Reading,
) -> MetricDef {
    MetricDef {
        name,
        unit,
        instrument,
        description,
        reading,
    }
}

fn int(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

use Instrument::{Counter, Gauge, Histogram as Hist, UpDownCounter};

/// Every metric, semantic-convention ones first.
pub const CATALOGUE: &[MetricDef] = &[
    metric(
        "db.client.connection.count",
        "{connection}",
        UpDownCounter,
        "Connections open, by state (idle or used)",
        Reading::ByState(|r| {
            let used = r.stats.active_connections.min(r.stats.connections);
            (int(r.stats.connections - used), int(used))
        }),
    ),
    metric(
        "db.client.connection.idle.max",
        "{connection}",
        UpDownCounter,
        "The most idle connections allowed",
        Reading::Int(|r| int(r.stats.max_connections)),
    ),
    metric(
        "db.client.connection.idle.min",
        "{connection}",
        UpDownCounter,
        "The fewest idle connections kept",
        Reading::Int(|r| int(r.stats.min_connections)),
    ),
    metric(
        "db.client.connection.max",
        "{connection}",
        UpDownCounter,
        "The most open connections allowed",
        Reading::Int(|r| int(r.stats.max_connections)),
    ),
    metric(
        "db.client.connection.pending_requests",
        "{request}",
        UpDownCounter,
        "Callers waiting for a connection",
        Reading::Int(|r| int(r.stats.waiting_requests)),
    ),
    metric(
        "db.client.connection.timeouts",
        "{timeout}",
        Counter,
        "Checkouts that timed out",
        Reading::Int(|r| int(r.stats.acquire_timeouts)),
    ),
    metric(
        "db.client.connection.create_time",
        "s",
        Hist,
        "Time to open a connection (warmup included)",
        Reading::Histogram(|t| t.create_time),
    ),
    metric(
        "db.client.connection.wait_time",
        "s",
        Hist,
        "Time to obtain a connection from the pool",
        Reading::Histogram(|t| t.acquire_time),
    ),
    metric(
        "db.client.connection.use_time",
        "s",
        Hist,
        "Time a connection is checked out",
        Reading::Histogram(|t| t.use_time),
    ),
    metric(
        "db.client.operation.duration",
        "s",
        Hist,
        "Duration of database statements",
        Reading::Histogram(|t| t.operation_time),
    ),
    metric(
        "poolplane.connection_pool.size",
        "{connection}",
        Gauge,
        "The pool's current (target) size",
        Reading::Int(|r| int(r.stats.current_size)),
    ),
    metric(
        "poolplane.connection_pool.utilization",
        "1",
        Gauge,
        "Connections in use over the pool's current size",
        Reading::Float(|r| r.stats.utilization_rate),
    ),
    metric(
        "poolplane.connection_pool.healthy",
        "1",
        Gauge,
        "1 while the pool's database passes health checks",
        Reading::Int(|r| i64::from(r.pool.is_healthy())),
    ),
    metric(
        "poolplane.connection_pool.budget_share",
        "{connection}",
        Gauge,
        "The size the server's connection budget allows the pool now (max_connections without one)",
        Reading::Int(|r| int(r.pool.capacity())),
    ),
    metric(
        "poolplane.health_check.consecutive_failures",
        "{check}",
        Gauge,
        "Health checks failed in a row",
        Reading::Int(|r| int(r.pool.health_snapshot().consecutive_failures)),
    ),
    metric(
        "poolplane.health_check.duration",
        "s",
        Hist,
        "Duration of health checks",
        Reading::Histogram(|t| t.health_check_time),
    ),
    metric(
        "poolplane.connection.tls",
        "{connection}",
        Gauge,
        "Open connections of the pool that use TLS",
        Reading::Int(|r| int(r.stats.security.tls_connections)),
    ),
    metric(
        "poolplane.connection.errors",
        "{error}",
        Counter,
        "Connections that failed to open",
        Reading::Int(|r| int(r.stats.connection_errors)),
    ),
    metric(
        "poolplane.connections.created",
        "{connection}",
        Counter,
        "Connections opened",
        Reading::Int(|r| int(r.stats.connections_created)),
    ),
    metric(
        "poolplane.connections.closed",
        "{connection}",
        Counter,
        "Connections closed",
        Reading::Int(|r| int(r.stats.connections_closed)),
    ),
    metric(
        "poolplane.connections.recycled",
        "{connection}",
        Counter,
        "Connections closed after recycle_threshold_queries queries",
        Reading::Int(|r| int(r.stats.connections_recycled)),
    ),
    metric(
        "poolplane.queries",
        "{query}",
        Counter,
        "Statements run through the pool",
        Reading::Int(|r| int(r.stats.total_queries)),
    ),
    metric(
        "poolplane.query.errors",
        "{error}",
        Counter,
        "Statements that failed",
        Reading::Int(|r| int(r.stats.query_errors)),
    ),
    metric(
        "poolplane.wire.clients",
        "{client}",
        UpDownCounter,
        "PostgreSQL front-door clients connected",
        Reading::Int(|r| int(r.stats.wire.clients)),
    ),
    metric(
        "poolplane.wire.clients.waiting",
        "{client}",
        UpDownCounter,
        "PostgreSQL front-door clients waiting for a backend",
        Reading::Int(|r| int(r.stats.wire.waiting)),
    ),
    metric(
        "poolplane.wire.clients.pinned",
        "{client}",
        UpDownCounter,
        "PostgreSQL front-door clients pinned to a backend by session state",
        Reading::Int(|r| int(r.stats.wire.pinned)),
    ),
    metric(
        "poolplane.wire.transactions",
        "{transaction}",
        Counter,
        "PostgreSQL front-door transactions",
        Reading::Int(|r| int(r.stats.wire.transactions)),
    ),
    metric(
        "poolplane.wire.queries",
        "{query}",
        Counter,
        "PostgreSQL front-door queries",
        Reading::Int(|r| int(r.stats.wire.queries)),
    ),
    metric(
        "poolplane.wire.bytes.received",
        "By",
        Counter,
        "Bytes received from PostgreSQL front-door clients",
        Reading::Int(|r| int(r.stats.wire.bytes_in)),
    ),
    metric(
        "poolplane.wire.bytes.sent",
        "By",
        Counter,
        "Bytes sent to PostgreSQL front-door clients",
        Reading::Int(|r| int(r.stats.wire.bytes_out)),
    ),
    metric(
        "poolplane.statements.cancelled",
        "{statement}",
        Counter,
        "Statements abandoned mid-flight and cancelled in PostgreSQL",
        Reading::Int(|r| int(r.pool.telemetry().statements_cancelled)),
    ),
    metric(
        "poolplane.statement_cache.size",
        "{statement}",
        Gauge,
        "Prepared statements cached over all connections",
        Reading::Int(|r| int(r.pool.statement_cache_stats().prepared_statements)),
    ),
    metric(
        "poolplane.statement_cache.hits",
        "{hit}",
        Counter,
        "Statement cache hits",
        Reading::Int(|r| int(r.pool.statement_cache_stats().hits)),
    ),
    metric(
        "poolplane.statement_cache.misses",
        "{miss}",
        Counter,
        "Statement cache misses",
        Reading::Int(|r| int(r.pool.statement_cache_stats().misses)),
    ),
    metric(
        "poolplane.statement_cache.evictions",
        "{eviction}",
        Counter,
        "Statements evicted from the cache",
        Reading::Int(|r| int(r.pool.statement_cache_stats().evictions)),
    ),
    metric(
        "poolplane.scaling.events",
        "{event}",
        Counter,
        "Scaling decisions taken",
        Reading::Int(|r| int(r.pool.telemetry().scaling_events)),
    ),
    metric(
        "poolplane.load_test.requests",
        "{request}",
        Counter,
        "Requests made by load tests",
        Reading::Int(|r| int(r.pool.telemetry().load_test_requests)),
    ),
    metric(
        "poolplane.load_test.grade",
        "1",
        Gauge,
        "The last load test's grade: 1 = A, 2 = B, 3 = C, 4 = D, 5 = F (0: none yet)",
        Reading::Int(|r| {
            r.last_grade.map_or(0, |g| match g {
                Grade::A => 1,
                Grade::B => 2,
                Grade::C => 3,
                Grade::D => 4,
                Grade::F => 5,
            })
        }),
    ),
];

/// Where the pools to export come from: a registry, or an application's own.
pub trait PoolSource: Send + Sync + 'static {
    /// Every pool, with its name.
    fn pools(&self) -> Vec<(String, Arc<AdvancedConnectionPool>)>;
    /// The grade of a pool's last load test.
    fn last_grade(&self, _name: &str) -> Option<Grade> {
        None
    }
}

impl PoolSource for ConnectionPoolService {
    fn pools(&self) -> Vec<(String, Arc<AdvancedConnectionPool>)> {
        self.pool_names()
            .into_iter()
            .filter_map(|name| Some((name.clone(), self.pool(&name).ok()?)))
            .collect()
    }

    fn last_grade(&self, name: &str) -> Option<Grade> {
        self.last_load_test(name).map(|t| t.grade)
    }
}

impl PoolSource for Vec<Arc<AdvancedConnectionPool>> {
    fn pools(&self) -> Vec<(String, Arc<AdvancedConnectionPool>)> {
        self.iter()
            .map(|p| (p.name().to_owned(), Arc::clone(p)))
            .collect()
    }
}

/// Reads every pool of `source` once.
pub fn read_pools<S: PoolSource + ?Sized>(
    source: &S,
) -> Vec<(String, Arc<AdvancedConnectionPool>, Option<Grade>)> {
    source
        .pools()
        .into_iter()
        .map(|(name, pool)| {
            let grade = source.last_grade(&name);
            (name, pool, grade)
        })
        .collect()
}

/// Registers the whole catalogue in `registry`, read from `source` at each
/// scrape: the one call an application embedding the engine makes.
pub fn register(registry: &mut Registry, source: Arc<dyn PoolSource>) {
    registry.register_collector(Box::new(CatalogueCollector { source }));
}

/// The catalogue as a prometheus-client collector.
#[derive(Clone)]
pub struct CatalogueCollector {
    source: Arc<dyn PoolSource>,
}

impl std::fmt::Debug for CatalogueCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogueCollector").finish_non_exhaustive()
    }
}

impl CatalogueCollector {
    /// A collector over `source`.
    pub fn new(source: Arc<dyn PoolSource>) -> Self {
        Self { source }
    }
}

/// Histogram bucket bounds, in seconds (the OpenTelemetry SDK's defaults, scaled
/// to a pool's sub-millisecond to seconds range).
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Collector for CatalogueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pools = read_pools(self.source.as_ref());
        let readings: Vec<(String, PoolReading<'_>)> = pools
            .iter()
            .map(|(name, pool, grade)| {
                (
                    name.clone(),
                    PoolReading {
                        pool,
                        stats: pool.pool_stats(),
                        last_grade: *grade,
                    },
                )
            })
            .collect();
        encode_catalogue(&mut encoder, &readings)
    }
}

/// Writes every metric of the catalogue for `pools` (name, reading).
fn encode_catalogue(
    encoder: &mut DescriptorEncoder,
    pools: &[(String, PoolReading<'_>)],
) -> Result<(), std::fmt::Error> {
    let pool_label = POOL_LABEL.replace('.', "_");
    let state_label = STATE_LABEL.replace('.', "_");
    for def in CATALOGUE {
        let base = def.name.replace('.', "_");
        let (kind, unit) = match def.instrument {
            Instrument::Counter => (MetricType::Counter, None),
            Instrument::Histogram => (MetricType::Histogram, Some(Unit::Seconds)),
            Instrument::Gauge | Instrument::UpDownCounter => (MetricType::Gauge, None),
        };
        let mut metric = encoder.encode_descriptor(&base, def.description, unit.as_ref(), kind)?;
        for (name, r) in pools {
            let labels = [(pool_label.as_str(), name.as_str())];
            match def.reading {
                Reading::Int(read) if def.instrument == Instrument::Counter => {
                    ConstCounter::new(u64::try_from(read(r)).unwrap_or(0))
                        .encode(metric.encode_family(&labels)?)?;
                }
                Reading::Int(read) => {
                    ConstGauge::new(read(r)).encode(metric.encode_family(&labels)?)?;
                }
                Reading::Float(read) => {
                    ConstGauge::new(read(r)).encode(metric.encode_family(&labels)?)?;
                }
                Reading::ByState(read) => {
                    let (idle, used) = read(r);
                    for (state, value) in [("idle", idle), ("used", used)] {
                        let labels = [
                            (pool_label.as_str(), name.as_str()),
                            (state_label.as_str(), state),
                        ];
                        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
                    }
                }
                Reading::Histogram(pick) => {
                    let h = pick(r.pool.telemetry());
                    let buckets = h.buckets(&BUCKETS);
                    let count = buckets.iter().map(|(_, n)| n).sum();
                    metric
                        .encode_family(&labels)?
                        .encode_histogram::<NoLabelSet>(h.sum_secs(), count, &buckets, None)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for def in CATALOGUE {
            assert!(seen.insert(def.name), "{} twice", def.name);
            assert!(
                def.name.starts_with("db.client.") || def.name.starts_with("poolplane."),
                "{}",
                def.name
            );
            assert_eq!(
                def.instrument == Instrument::Histogram,
                def.unit == "s",
                "{}: durations, and only they, are histograms in seconds",
                def.name
            );
        }
        let first_own = CATALOGUE
            .iter()
            .position(|d| d.name.starts_with("poolplane."))
            .expect("poolplane's own");
        assert!(
            CATALOGUE[first_own..]
                .iter()
                .all(|d| d.name.starts_with("poolplane.")),
            "semantic-convention metrics first"
        );
        let wait = CATALOGUE
            .iter()
            .find(|d| d.name == "db.client.connection.wait_time")
            .expect("wait time");
        assert_eq!(
            wait.prometheus_name(),
            "db_client_connection_wait_time_seconds"
        );
        let hits = CATALOGUE
            .iter()
            .find(|d| d.name == "poolplane.statement_cache.hits")
            .expect("hits");
        assert_eq!(
            hits.prometheus_name(),
            "poolplane_statement_cache_hits_total"
        );
    }
}
