//! Telemetry: logs through tracing (text or JSON, RUST_LOG), and — when the
//! standard OTEL_EXPORTER_OTLP_*ENDPOINT variables say so — traces and metrics over
//! OTLP/gRPC. Off, no exporter, provider or task exists.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use poolplane::ConnectionPoolService;
use poolplane::metrics::{self, Instrument, PoolReading, Reading};
use poolplane::pool::Histogram;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt as _, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The attribute naming a pool, as the database semantic conventions say.
pub const POOL_NAME: &str = metrics::POOL_LABEL;

/// The OTLP providers, when export is on. Shut down (flushed) on shutdown.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

/// Whether the environment asks for OTLP export.
pub fn otlp_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
}

/// `info`, without the migration runner's own lines (the store logs each applied
/// migration once) and without PostgreSQL's NOTICEs ("relation already exists,
/// skipping" on every start).
const DEFAULT_LOG_FILTER: &str = "info,refinery_core=warn,tokio_postgres::connection=warn";

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER))
        // tokio-postgres logs queries and their parameters at debug level, and the
        // control database stores pool URLs with their passwords: never below info.
        .add_directive("tokio_postgres=info".parse().expect("a valid directive"))
}

/// The spans opened for every call (the RPC, and a QueryService call's statement).
/// The log layer formats a span's fields when it opens and again on every field
/// recorded (JSON: parsed and written anew) — a sixth of the server's CPU per
/// QueryService call — for lines that rarely come: without OTLP it does not see
/// them (lines name their pool and RPC themselves); with OTLP it does, so that
/// lines inside a call carry its trace_id.
const PER_CALL_SPANS: [&str; 2] = ["rpc", "db.query"];

/// Installs the global tracing subscriber (RUST_LOG, default `info`) and, if the
/// environment asks for it, the OTLP trace and metric pipelines. Must run inside
/// the Tokio runtime.
pub fn init(format: LogFormat) -> Telemetry {
    let otlp = otlp_requested();
    // The hint (no limit of its own) keeps the log filter's: `log` records below
    // it are dropped before they reach tracing.
    let per_call =
        filter_fn(move |meta| otlp || !meta.is_span() || !PER_CALL_SPANS.contains(&meta.name()))
            .with_max_level_hint(LevelFilter::TRACE);
    let filter = log_filter().and(per_call);
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    if !otlp {
        tracing_subscriber::registry().with(fmt).init();
        return Telemetry::default();
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("poolplane-server");
    }
    let resource = resource.build();
    let tracer = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map(|exporter| {
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.clone())
                .build()
        });
    let meter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .build()
        .map(|exporter| {
            SdkMeterProvider::builder()
                .with_periodic_exporter(exporter)
                .with_resource(resource)
                .build()
        });
    let otel = tracer.as_ref().ok().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("poolplane"))
            // RPCs at info, the engine's checkout and query spans at debug.
            .with_filter(EnvFilter::new(
                "info,poolplane=debug,poolplane_server=debug,tokio_postgres=off",
            ))
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    match (&tracer, &meter) {
        (Ok(_), Ok(_)) => tracing::info!("OTLP export on: traces and metrics"),
        (t, m) => tracing::warn!(
            traces = ?t.as_ref().err(), metrics = ?m.as_ref().err(),
            "OTLP export requested but an exporter could not be built"
        ),
    }
    if let Ok(meter) = &meter {
        opentelemetry::global::set_meter_provider(meter.clone());
    }
    Telemetry {
        tracer: tracer.ok(),
        meter: meter.ok(),
    }
}

/// Installs logging only (tests and tools).
pub fn init_logging(format: LogFormat) {
    let _ = init(format);
}

impl Telemetry {
    /// Whether OTLP export is on.
    pub fn otlp(&self) -> bool {
        self.tracer.is_some() || self.meter.is_some()
    }

    /// Registers the pool metrics on the OTLP meter (if export is on) and starts
    /// the task that replays the engine's latency histograms into it; the task
    /// ends with `token`.
    pub fn register_pool_metrics(
        &self,
        registry: Arc<ConnectionPoolService>,
        token: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let provider = self.meter.as_ref()?;
        let meter = opentelemetry::metrics::MeterProvider::meter(provider, "poolplane");
        register_observables(&meter, &registry);
        Some(tokio::spawn(replay_histograms(meter, registry, token)))
    }

    /// Flushes and shuts the exporters down (blocking calls, off the runtime).
    pub async fn shutdown(self) {
        let Self { tracer, meter } = self;
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(tracer) = tracer {
                let _ = tracer.shutdown();
            }
            if let Some(meter) = meter {
                let _ = meter.shutdown();
            }
        })
        .await;
    }
}

/// Calls `f` with a reading of every pool of `registry` and its name attribute.
fn each_pool(registry: &ConnectionPoolService, mut f: impl FnMut(&PoolReading<'_>, KeyValue)) {
    for (name, pool, last_grade) in metrics::read_pools(registry) {
        let reading = PoolReading {
            stats: pool.pool_stats(),
            pool: &pool,
            last_grade,
        };
        f(&reading, KeyValue::new(POOL_NAME, name));
    }
}

/// One observable instrument per metric of the engine's catalogue (histograms
/// are replayed by [`replay_histograms`]).
fn register_observables(meter: &Meter, registry: &Arc<ConnectionPoolService>) {
    // One instrument: `$builder` named and described as the metric, running
    // `$body` with the observer for every pool's reading.
    macro_rules! observable {
        ($builder:ident, $def:expr, |$o:ident, $reading:ident, $pool:ident| $body:block) => {{
            let r = Arc::clone(registry);
            meter
                .$builder($def.name)
                .with_description($def.description)
                .with_unit($def.unit)
                .with_callback(move |$o| each_pool(&r, |$reading, $pool| $body))
                .build();
        }};
    }
    for def in metrics::CATALOGUE {
        match (def.instrument, def.reading) {
            (_, Reading::Histogram(_)) => {}
            (_, Reading::ByState(read)) => {
                observable!(i64_observable_up_down_counter, def, |o, reading, pool| {
                    let (idle, used) = read(reading);
                    for (state, value) in [("idle", idle), ("used", used)] {
                        let state = KeyValue::new(metrics::STATE_LABEL, state);
                        o.observe(value, &[pool.clone(), state]);
                    }
                })
            }
            (Instrument::Counter, Reading::Int(read)) => {
                observable!(u64_observable_counter, def, |o, reading, pool| {
                    o.observe(u64::try_from(read(reading)).unwrap_or(0), &[pool]);
                })
            }
            (Instrument::UpDownCounter, Reading::Int(read)) => {
                observable!(i64_observable_up_down_counter, def, |o, reading, pool| {
                    o.observe(read(reading), &[pool]);
                })
            }
            (_, Reading::Int(read)) => {
                observable!(i64_observable_gauge, def, |o, reading, pool| {
                    o.observe(read(reading), &[pool]);
                })
            }
            (_, Reading::Float(read)) => {
                observable!(f64_observable_gauge, def, |o, reading, pool| {
                    o.observe(read(reading), &[pool]);
                })
            }
        }
    }
}

/// The engine keeps its own lock-free latency histograms; once a second the new
/// observations in each bucket are recorded into the OTLP histograms (at the
/// bucket's midpoint, within 9%), so the hot path never calls into OpenTelemetry.
async fn replay_histograms(
    meter: Meter,
    registry: Arc<ConnectionPoolService>,
    token: CancellationToken,
) {
    let histograms: Vec<(opentelemetry::metrics::Histogram<f64>, Pick)> = metrics::CATALOGUE
        .iter()
        .filter_map(|def| match def.reading {
            Reading::Histogram(pick) => Some((
                meter
                    .f64_histogram(def.name)
                    .with_description(def.description)
                    .with_unit(def.unit)
                    .build(),
                pick,
            )),
            _ => None,
        })
        .collect();
    let mut seen: std::collections::HashMap<(String, usize), Vec<u64>> =
        std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        for name in registry.pool_names() {
            let Ok(pool) = registry.pool(&name) else {
                continue;
            };
            let attrs = [KeyValue::new(POOL_NAME, name.clone())];
            for (i, (instrument, pick)) in histograms.iter().enumerate() {
                let now = pick(pool.telemetry()).counts();
                let before = seen
                    .entry((name.clone(), i))
                    .or_insert_with(|| vec![0; now.len()]);
                for (bucket, (n, b)) in now.iter().zip(before.iter()).enumerate() {
                    for _ in 0..n.saturating_sub(*b) {
                        instrument.record(Histogram::bucket_secs(bucket), &attrs);
                    }
                }
                *before = now;
            }
        }
    }
}

/// Picks one histogram of a pool.
type Pick = fn(poolplane::pool::PoolTelemetry<'_>) -> &Histogram;

/// An error and all its sources, `: `-separated, for a log line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
