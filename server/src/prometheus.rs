//! The Prometheus endpoint on --metrics-listen: `GET /metrics` (OpenMetrics text)
//! with the OpenTelemetry database semantic-convention metrics under their usual
//! Prometheus names, poolplane's own and the metrics recorder's, read at scrape
//! time from the engine's counters; `GET /healthz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use poolplane::pool::{Histogram, PoolTelemetry};
use poolplane::{AdvancedConnectionPool, ConnectionPoolService, PoolStats, RecorderStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet as NoLabels};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use prometheus_client::registry::Unit;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Reads the engine's state at each scrape.
#[derive(Debug)]
struct EngineCollector {
    registry: Arc<ConnectionPoolService>,
    recorder: Arc<RecorderStatus>,
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            gauge(
                &mut encoder,
                "poolplane_runtime_alive_tasks",
                "Tasks alive in the server's runtime (flat when nothing leaks)",
                runtime.metrics().num_alive_tasks() as i64,
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut encoder,
                "poolplane_open_fds",
                "File descriptors the server process holds open",
                fds.count() as i64,
            )?;
        }
        let r = &self.recorder;
        gauge(
            &mut encoder,
            "poolplane_metrics_store_up",
            "1 while the metrics recorder can write the control database, 0 during an outage",
            i64::from(r.store_up.load(Ordering::Relaxed)),
        )?;
        gauge(
            &mut encoder,
            "poolplane_metrics_buffered_rows",
            "History rows held in memory, waiting to be written",
            r.buffered.load(Ordering::Relaxed) as i64,
        )?;
        counter(
            &mut encoder,
            "poolplane_metrics_dropped_rows",
            "History rows dropped because the in-memory buffer was full",
            r.dropped.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "poolplane_metrics_written_rows",
            "History rows written to the control database",
            r.written.load(Ordering::Relaxed),
        )?;

        let pools: Vec<_> = self
            .registry
            .pool_names()
            .into_iter()
            .filter_map(|name| Some((self.registry.pool(&name).ok()?, name)))
            .collect();
        let snapshots: Vec<_> = pools
            .iter()
            .map(|(pool, name)| (pool.as_ref(), name.as_str(), pool.pool_stats()))
            .collect();
        encode_pools(&mut encoder, &snapshots)
    }
}

/// Reads one value of a pool.
type Read<T> = fn(&AdvancedConnectionPool, &PoolStats) -> T;
/// Picks one histogram of a pool.
type Pick = fn(PoolTelemetry<'_>) -> &Histogram;

/// The OpenTelemetry database semantic-convention metrics under their usual
/// Prometheus names, plus poolplane's own, one series per pool.
fn encode_pools(
    encoder: &mut DescriptorEncoder,
    pools: &[(&AdvancedConnectionPool, &str, PoolStats)],
) -> Result<(), std::fmt::Error> {
    const POOL: &str = "db_client_connection_pool_name";
    {
        let mut metric = encoder.encode_descriptor(
            "db_client_connection_count",
            "Connections open, by state (idle or used)",
            None,
            MetricType::Gauge,
        )?;
        for (_, name, stats) in pools {
            let used = stats.active_connections.min(stats.connections);
            for (state, value) in [("idle", stats.connections - used), ("used", used)] {
                let labels = [(POOL, *name), ("db_client_connection_state", state)];
                ConstGauge::new(i64::from(value)).encode(metric.encode_family(&labels)?)?;
            }
        }
    }
    let gauges: [(&str, &str, Read<i64>); 8] = [
        (
            "db_client_connection_idle_max",
            "The most idle connections allowed",
            |_, s| i64::from(s.max_connections),
        ),
        (
            "db_client_connection_idle_min",
            "The fewest idle connections kept",
            |_, s| i64::from(s.min_connections),
        ),
        (
            "db_client_connection_max",
            "The most open connections allowed",
            |_, s| i64::from(s.max_connections),
        ),
        (
            "db_client_connection_pending_requests",
            "Callers waiting for a connection",
            |_, s| i64::from(s.waiting_requests),
        ),
        (
            "poolplane_connection_pool_size",
            "The pool's current (target) size",
            |_, s| i64::from(s.current_size),
        ),
        (
            "poolplane_connection_pool_healthy",
            "1 while the pool's database passes health checks",
            |p, _| i64::from(p.is_healthy()),
        ),
        (
            "poolplane_connection_tls",
            "Open connections of the pool that use TLS",
            |_, s| i64::from(s.security.tls_connections),
        ),
        (
            "poolplane_statement_cache_size",
            "Prepared statements cached over all connections",
            |p, _| i64::try_from(p.statement_cache_stats().prepared_statements).unwrap_or(i64::MAX),
        ),
    ];
    for (name, help, value) in gauges {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (pool, pool_name, stats) in pools {
            ConstGauge::new(value(pool, stats))
                .encode(metric.encode_family(&[(POOL, *pool_name)])?)?;
        }
    }
    let counters: [(&str, &str, Read<u64>); 6] = [
        (
            "db_client_connection_timeouts",
            "Checkouts that timed out",
            |_, s| s.acquire_timeouts,
        ),
        (
            "poolplane_statement_cache_hits",
            "Statement cache hits",
            |p, _| p.statement_cache_stats().hits,
        ),
        (
            "poolplane_statement_cache_misses",
            "Statement cache misses",
            |p, _| p.statement_cache_stats().misses,
        ),
        (
            "poolplane_statement_cache_evictions",
            "Statements evicted from the cache",
            |p, _| p.statement_cache_stats().evictions,
        ),
        (
            "poolplane_scaling_events",
            "Scaling decisions taken",
            |p, _| p.telemetry().scaling_events,
        ),
        (
            "poolplane_load_test_requests",
            "Requests made by load tests",
            |p, _| p.telemetry().load_test_requests,
        ),
    ];
    for (name, help, value) in counters {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (pool, pool_name, stats) in pools {
            ConstCounter::new(value(pool, stats))
                .encode(metric.encode_family(&[(POOL, *pool_name)])?)?;
        }
    }
    let seconds = Unit::Seconds;
    let histograms: [(&str, &str, Pick); 5] = [
        (
            "db_client_connection_create_time",
            "Time to open a connection",
            |t| t.create_time,
        ),
        (
            "db_client_connection_wait_time",
            "Time to obtain a connection from the pool",
            |t| t.acquire_time,
        ),
        (
            "db_client_connection_use_time",
            "Time a connection is checked out",
            |t| t.use_time,
        ),
        (
            "db_client_operation_duration",
            "Duration of database statements",
            |t| t.operation_time,
        ),
        (
            "poolplane_health_check_duration",
            "Duration of health checks",
            |t| t.health_check_time,
        ),
    ];
    for (name, help, histogram) in histograms {
        let mut metric =
            encoder.encode_descriptor(name, help, Some(&seconds), MetricType::Histogram)?;
        for (pool, pool_name, _) in pools {
            let h = histogram(pool.telemetry());
            let buckets = h.buckets(&BUCKETS);
            let count = buckets.iter().map(|(_, n)| n).sum();
            metric
                .encode_family(&[(POOL, *pool_name)])?
                .encode_histogram::<NoLabels>(h.sum_secs(), count, &buckets, None)?;
        }
    }
    Ok(())
}

/// Histogram bucket bounds, in seconds (the OpenTelemetry SDK's defaults, scaled to
/// a pool's sub-millisecond to seconds range).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Binds the endpoint's address (port 0: any free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` until `token` is cancelled.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<ConnectionPoolService>,
    recorder: Arc<RecorderStatus>,
    token: CancellationToken,
) -> std::io::Result<()> {
    let mut metrics = Registry::default();
    metrics.register_collector(Box::new(EngineCollector { registry, recorder }));
    let metrics = Arc::new(metrics);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &metrics) {
                        Ok(()) => (
                            [(
                                CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                            .into_response(),
                        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(token.cancelled_owned())
        .await
}
