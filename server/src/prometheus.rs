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
use poolplane::metrics::PoolSource;
use poolplane::{ConnectionPoolService, RecorderStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The server's own state at each scrape (the pools' metrics come from the
/// engine's catalogue, [`poolplane::metrics`]).
#[derive(Debug)]
struct EngineCollector {
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
        counter(
            &mut encoder,
            "poolplane_metrics_retention_rounds",
            "Retention rounds this server ran (only the group's leader runs them)",
            r.prune_rounds.load(Ordering::Relaxed),
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
    poolplane::metrics::register(&mut metrics, Arc::clone(&registry) as Arc<dyn PoolSource>);
    metrics.register_collector(Box::new(EngineCollector { recorder }));
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
