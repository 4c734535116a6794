//! The leak scan: a scripted run of the server binary with `RUST_LOG=trace` —
//! pools created with each tricky password form (a `?` inside a URL password, a
//! percent-encoded parameter name, an escaped space in key=value form), an update,
//! a failed connect, a load test, a history sample, deletes — after which no
//! password appears in any response, log line, /metrics output, OTLP export or
//! control-database row, and the stored passwords are ciphertext.

use std::time::Duration;

use poolplane_client::PoolplaneClient;
use poolplane_client::proto::{PoolConfig, RunLoadTestRequest};
use poolplane_tests::{OtlpCollector, ServerProcess, TestPg, http_get, wait_until};

const QUESTION: &str = "Pa?ss-7f3Kq9";
const PERCENT: &str = "S3cret-pct-Xq81";
const SPACE: &str = "abc def=x-Zz09";
const WRONG: &str = "Wr0ng-pass-Qw77";

fn config() -> PoolConfig {
    poolplane_tests::proto_config(1, 3)
}

/// Every way a secret could show: itself and its distinctive pieces.
fn needles(control_password: &str) -> Vec<String> {
    vec![
        QUESTION.into(),
        "7f3Kq9".into(),
        PERCENT.into(),
        SPACE.into(),
        "def=x-Zz09".into(),
        r"abc\ def".into(),
        WRONG.into(),
        control_password.into(),
    ]
}

fn assert_clean(what: &str, text: &str, needles: &[String]) {
    for needle in needles {
        assert!(
            !text.contains(needle.as_str()),
            "{what} shows a password ({needle}): …{}…",
            excerpt(text, needle)
        );
    }
}

fn excerpt<'a>(text: &'a str, needle: &str) -> &'a str {
    let at = text.find(needle).unwrap_or(0);
    let start = text.floor_char_boundary(at.saturating_sub(80));
    let end = text.ceil_char_boundary((at + needle.len() + 80).min(text.len()));
    &text[start..end]
}

#[tokio::test]
async fn no_password_in_any_response_log_metric_export_or_row() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    for (role, password) in [("leak_q", QUESTION), ("leak_p", PERCENT), ("leak_s", SPACE)] {
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{password}'; \
                 GRANT CONNECT ON DATABASE {} TO {role}",
                db.name
            ))
            .await?;
    }
    let addr = db.server_addr()?;
    let (host, port) = (addr.ip(), addr.port());
    let dbname = &db.name;
    let question = format!("postgres://leak_q:{QUESTION}@{host}:{port}/{dbname}");
    let percent = format!("postgres://leak_p@{host}:{port}/{dbname}?pass%77ord={PERCENT}");
    let space = format!(
        r"host={host} port={port} user=leak_s password={} dbname={dbname}",
        SPACE.replace(' ', r"\ ")
    );
    let wrong = format!("postgres://leak_q:{WRONG}@{host}:{port}/{dbname}");
    let control_password =
        poolplane::conninfo::password(control.url()).expect("the control URL has a password");
    let needles = needles(&control_password);

    let collector = OtlpCollector::start().await?;
    let endpoint = format!("http://{}", collector.addr);
    let server = ServerProcess::start_with(
        &["--database-url", control.url(), "--metrics-interval", "1s"],
        "trace",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await?;
    let client = PoolplaneClient::connect(server.addr.to_string()).await?;
    let mut responses = Vec::new();

    for (name, url) in [
        ("question", &question),
        ("percent", &percent),
        ("space", &space),
    ] {
        let pool = client.create_pool(name, url, config()).await?;
        assert!(pool.database_url.contains("***"), "{pool:?}");
        responses.push(format!("{pool:?}"));
    }
    let updated = client
        .update_pool_config(
            "question",
            PoolConfig {
                statement_cache_capacity: Some(64),
                ..PoolConfig::default()
            },
        )
        .await?;
    responses.push(format!("{updated:?}"));
    let failed = client
        .create_pool("wrong", &wrong, config())
        .await
        .expect_err("a wrong password");
    assert_eq!(failed.sqlstate().as_deref(), Some("28P01"), "{failed}");
    responses.push(format!("{failed:?} {failed}"));
    let mut test = client
        .run_load_test(RunLoadTestRequest {
            pool_name: "space".into(),
            concurrency: 2,
            duration_secs: 1,
            ..RunLoadTestRequest::default()
        })
        .await?;
    while let Some(update) = test.next().await? {
        responses.push(format!("{update:?}"));
    }
    responses.push(format!("{:?}", client.list_pools().await?));
    responses.push(format!("{:?}", client.get_pool("percent").await?));
    responses.push(format!("{:?}", client.get_health_status("space").await?));
    responses.push(format!("{:?}", client.optimize_pools(&[], false).await?));

    // A history sample of every pool, then the control database's rows.
    let store = control.connect().await?;
    wait_until(Duration::from_secs(15), "a metrics sample", || {
        let store = &store;
        async move {
            store
                .query_one(
                    "SELECT count(DISTINCT pool_name) FROM connection_pool_metrics",
                    &[],
                )
                .await
                .is_ok_and(|row| row.get::<_, i64>(0) >= 3)
        }
    })
    .await?;
    let sealed: Vec<(String, String, Option<Vec<u8>>)> = store
        .query(
            "SELECT name, database_url, database_password FROM pool_definitions ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(sealed.len(), 3, "{sealed:?}");
    for (name, url, password) in &sealed {
        let password = password.as_ref().expect("a sealed password");
        assert!(password.len() > 16 + 12, "{name}: too short to be sealed");
        for plain in [QUESTION, PERCENT, SPACE] {
            assert!(
                !password.windows(plain.len()).any(|w| w == plain.as_bytes()),
                "{name}: the stored password is not ciphertext"
            );
        }
        assert!(
            !url.contains("password") && !url.contains("***"),
            "{name}: {url}"
        );
    }
    let tables: Vec<String> = store
        .query(
            "SELECT quote_ident(table_name) FROM information_schema.tables \
             WHERE table_schema = 'public'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 6, "{tables:?}");
    let mut rows = String::new();
    for table in &tables {
        for row in store
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await?
        {
            rows.push_str(&row.get::<_, String>(0));
            rows.push('\n');
        }
    }
    assert_clean("a control-database row", &rows, &needles);

    let metrics_addr = server.start_line["metrics"]
        .as_str()
        .expect("the start line names the metrics address")
        .parse()?;
    let exposition = http_get(metrics_addr, "/metrics").await?;
    assert!(exposition.contains("poolplane_connection_pool_size"));
    assert_clean("/metrics", &exposition, &needles);

    for name in ["question", "percent", "space"] {
        client.delete_pool(name).await?;
    }
    wait_until(Duration::from_secs(10), "spans reach the collector", || {
        let spans = collector.spans();
        async move {
            spans
                .iter()
                .any(|s| s.name == "poolplane.v1.PoolService/DeletePool")
        }
    })
    .await?;
    assert_clean(
        "an OTLP span",
        &format!("{:?}", collector.spans()),
        &needles,
    );
    assert_clean(
        "an OTLP metric",
        &format!("{:?}", collector.metrics()),
        &needles,
    );
    assert_clean("a response", &responses.join("\n"), &needles);
    let log = server.log_lines().join("\n");
    assert!(
        log.lines().count() > 50 && log.contains("\"level\":\"TRACE\""),
        "trace logging was on"
    );
    assert_clean("a log line", &log, &needles);
    Ok(())
}
