//! The Prometheus endpoint (`GET /metrics` on --metrics-listen, OpenMetrics text):
//! the metrics recorder's state and each pool's size and health, read at scrape
//! time from the engine's own counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use poolplane::{ConnectionPoolService, RecorderStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
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
        let mut family =
            |name: &str, help: &str, value: &dyn Fn(&poolplane::AdvancedConnectionPool) -> i64| {
                let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (pool, pool_name) in &pools {
                    let labels = [("pool", pool_name.as_str())];
                    ConstGauge::new(value(pool)).encode(metric.encode_family(&labels)?)?;
                }
                Ok::<(), std::fmt::Error>(())
            };
        family(
            "poolplane_pool_size",
            "The pool's current size (what dynamic sizing moves)",
            &|p| i64::from(p.pool_stats().current_size),
        )?;
        family("poolplane_pool_connections", "Open connections", &|p| {
            i64::from(p.pool_stats().connections)
        })?;
        family(
            "poolplane_pool_healthy",
            "1 while the pool's database passes health checks",
            &|p| i64::from(p.is_healthy()),
        )?;
        Ok(())
    }
}

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
    let app = Router::new().route(
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
