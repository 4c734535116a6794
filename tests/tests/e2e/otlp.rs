//! OTLP export against a real OTLP/gRPC receiver: the semantic-convention metrics
//! arrive with their names, units and pool attribute, and the CreatePool span
//! continues the caller's W3C trace; with no OTLP variables, nothing is exported.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use poolplane_client::PoolplaneClient;
use poolplane_client::proto::{CreatePoolRequest, PoolConfig, RunLoadTestRequest};
use poolplane_tests::{OtlpCollector, ServerProcess, TestPg, wait_until};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value {
            Some(v) => match &v.value {
                Some(Value::StringValue(s)) => Some(s.clone()),
                Some(Value::IntValue(i)) => Some(i.to_string()),
                _ => None,
            },
            None => None,
        })
}

/// The pool-name attribute values of every data point of a metric.
fn pools_of(metric: &opentelemetry_proto::tonic::metrics::v1::Metric) -> Vec<String> {
    let attributes: Vec<&Vec<KeyValue>> = match &metric.data {
        Some(Data::Sum(s)) => s.data_points.iter().map(|p| &p.attributes).collect(),
        Some(Data::Gauge(g)) => g.data_points.iter().map(|p| &p.attributes).collect(),
        Some(Data::Histogram(h)) => h.data_points.iter().map(|p| &p.attributes).collect(),
        _ => Vec::new(),
    };
    attributes
        .into_iter()
        .filter_map(|a| text(a, "db.client.connection.pool.name"))
        .collect()
}

#[tokio::test]
async fn metrics_and_the_callers_trace_arrive_at_the_collector() -> anyhow::Result<()> {
    let collector = OtlpCollector::start().await?;
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let endpoint = format!("http://{}", collector.addr);
    let server = ServerProcess::start_with(
        &["--database-url", control.url()],
        "info",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_SERVICE_NAME", "poolplane-otlp-test"),
        ],
    )
    .await?;
    let client = PoolplaneClient::connect(server.addr.to_string()).await?;
    let mut create = tonic::Request::new(CreatePoolRequest {
        name: "primary".into(),
        database_url: db.url().into(),
        config: Some(PoolConfig {
            min_connections: Some(1),
            max_connections: Some(3),
            health_check_interval_secs: Some(2),
            health_check_timeout_secs: Some(1),
            ..PoolConfig::default()
        }),
    });
    create.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01").parse()?,
    );
    client.pool_service().create_pool(create).await?;
    let mut test = client
        .run_load_test(RunLoadTestRequest {
            pool_name: "primary".into(),
            concurrency: 2,
            duration_secs: 1,
            query: String::new(),
            warmup_secs: 0,
            target_rps: None,
            read_write: false,
        })
        .await?;
    while test.next().await?.is_some() {}

    // Every metric of the engine's one catalogue, under its name and unit (the
    // semantic-convention ones among them).
    let expected: BTreeMap<&str, &str> = poolplane::metrics::CATALOGUE
        .iter()
        .map(|def| (def.name, def.unit))
        .collect();
    for (name, unit) in [
        ("db.client.connection.count", "{connection}"),
        ("db.client.connection.wait_time", "s"),
        ("db.client.operation.duration", "s"),
    ] {
        assert_eq!(expected.get(name), Some(&unit), "{name}");
    }
    wait_until(
        Duration::from_secs(20),
        "every metric arrives for the pool",
        || async {
            let metrics = collector.metrics();
            expected.iter().all(|(name, unit)| {
                metrics.iter().any(|m| {
                    m.name == *name && m.unit == *unit && pools_of(m).iter().any(|p| p == "primary")
                })
            })
        },
    )
    .await
    .map_err(|e| {
        let got: std::collections::BTreeSet<String> = collector
            .metrics()
            .iter()
            .map(|m| format!("{} [{}]", m.name, m.unit))
            .collect();
        anyhow::anyhow!("{e}; received: {got:?}")
    })?;
    let states: std::collections::BTreeSet<String> = collector
        .metrics()
        .iter()
        .filter(|m| m.name == "db.client.connection.count")
        .flat_map(|m| match &m.data {
            Some(Data::Sum(s)) => s
                .data_points
                .iter()
                .filter_map(|p| text(&p.attributes, "db.client.connection.state"))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(states.into_iter().collect::<Vec<_>>(), ["idle", "used"]);

    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&TRACE_ID[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()?;
    wait_until(
        Duration::from_secs(10),
        "the CreatePool span arrives",
        || async {
            collector
                .spans()
                .iter()
                .any(|s| s.name == "poolplane.v1.PoolService/CreatePool")
        },
    )
    .await?;
    let spans = collector.spans();
    let create = spans
        .iter()
        .find(|s| s.name == "poolplane.v1.PoolService/CreatePool")
        .expect("the span");
    assert_eq!(
        create.trace_id, trace_id,
        "the span continues the caller's trace"
    );
    assert_eq!(
        text(&create.attributes, "rpc.system").as_deref(),
        Some("grpc")
    );
    assert_eq!(
        text(&create.attributes, "rpc.service").as_deref(),
        Some("poolplane.v1.PoolService")
    );
    assert_eq!(
        text(&create.attributes, "rpc.method").as_deref(),
        Some("CreatePool")
    );
    assert_eq!(
        text(&create.attributes, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    // Without a tokens file every (loopback) caller is admin; the span says so.
    assert_eq!(
        text(&create.attributes, "enduser.role").as_deref(),
        Some("admin")
    );
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id && s.span_id != create.span_id)
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        children.contains(&"db.connection.create"),
        "child spans: {children:?}"
    );
    let created = server
        .log_lines()
        .into_iter()
        .find(|line| line.contains("pool created"))
        .expect("the CreatePool log line");
    assert!(
        created.contains(TRACE_ID),
        "the log line carries the trace id: {created}"
    );
    Ok(())
}

#[tokio::test]
async fn without_otlp_variables_no_exporter_runs() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let server = ServerProcess::start(&["--database-url", control.url()]).await?;
    let log = server.log_lines().join("\n");
    assert!(log.contains("OTLP export off"), "{log}");
    assert!(!log.contains("OTLP export on"), "{log}");
    Ok(())
}
