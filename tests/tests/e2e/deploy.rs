//! The dashboards and alert rules in deploy/: promtool accepts the rules, and
//! every metric the rules and the Grafana dashboard name is on /metrics while a
//! pool is under load (so none of them watches a name that does not exist).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use poolplane_client::proto::{PoolConfig, RunLoadTestRequest};
use poolplane_tests::{TestPg, TestServer, http_get, run_load_test, wait_until};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The poolplane and semantic-convention metric names `text` mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["poolplane_", "db_client_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix) {
            let start = from + at;
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |n| start + n);
            let preceded_by_word =
                start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let name = &text[start..end];
            // Label names (db_client_connection_pool_name) are not metrics.
            if !preceded_by_word && !name.ends_with("_pool_name") && !name.ends_with("_state") {
                names.insert(name.to_owned());
            }
            from = end;
        }
    }
    names
}

#[tokio::test]
async fn promtool_accepts_the_alert_rules() -> anyhow::Result<()> {
    let rules = deploy_dir().join("prometheus/alerts.yml");
    let output = tokio::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!("promtool: {e} (install it: apt-get install -y prometheus)")
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("SUCCESS: 6 rules found"), "{stdout}");
    Ok(())
}

#[tokio::test]
async fn every_metric_the_dashboard_and_rules_name_is_served() -> anyhow::Result<()> {
    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yml"))?;
    let dashboard = std::fs::read_to_string(deploy_dir().join("grafana/poolplane-dashboard.json"))?;
    serde_json::from_str::<serde_json::Value>(&dashboard)?;
    let mut wanted = metric_names(&rules);
    wanted.extend(metric_names(&dashboard));
    assert!(wanted.len() >= 15, "{wanted:?}");

    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let config = PoolConfig {
        max_connections: Some(4),
        min_connections: Some(1),
        ..PoolConfig::default()
    };
    server
        .client
        .create_pool("watched", db.url(), config)
        .await?;
    let client = server.client.clone();
    let load = tokio::spawn(async move {
        let request = RunLoadTestRequest {
            pool_name: "watched".into(),
            concurrency: 8,
            duration_secs: 2,
            query: "SELECT pg_sleep(0.002)".into(),
            ..RunLoadTestRequest::default()
        };
        run_load_test(&client, request).await
    });
    // Every name shows up once the load has moved the pool (polled, not slept).
    let metrics = server.server().metrics_addr();
    let missing = || async {
        let text = http_get(metrics, "/metrics").await.unwrap_or_default();
        wanted
            .iter()
            .filter(|name| {
                !text.lines().any(|line| {
                    line.strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                })
            })
            .cloned()
            .collect::<Vec<String>>()
    };
    let seen = wait_until(
        std::time::Duration::from_secs(10),
        "every metric the rules and dashboard name is on /metrics",
        || async { missing().await.is_empty() },
    )
    .await;
    if let Err(e) = seen {
        panic!("{e}: not on /metrics: {:?}", missing().await);
    }
    load.await??;
    server.shutdown().await
}
