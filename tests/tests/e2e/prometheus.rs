//! The Prometheus endpoint during load: the OpenTelemetry database metrics under
//! their Prometheus names move with the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use poolplane_client::proto::PoolConfig;
use poolplane_tests::{TestPg, TestServer, http_get, labelled_value, wait_until};

#[tokio::test]
async fn used_connections_and_the_wait_time_histogram_move_under_load() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let config = PoolConfig {
        min_connections: Some(1),
        max_connections: Some(2),
        enable_dynamic_sizing: Some(false),
        ..PoolConfig::default()
    };
    server
        .client
        .create_pool("primary", db.url(), config)
        .await?;
    let metrics = server.server().metrics_addr();
    let pool = [("db_client_connection_pool_name", "primary")];
    let used = [
        ("db_client_connection_pool_name", "primary"),
        ("db_client_connection_state", "used"),
    ];

    let before = http_get(metrics, "/metrics").await?;
    for line in [
        "# TYPE db_client_connection_count gauge",
        "# TYPE db_client_connection_wait_time_seconds histogram",
        "# UNIT db_client_connection_wait_time_seconds seconds",
        "# TYPE db_client_connection_timeouts counter",
        "# TYPE db_client_operation_duration_seconds histogram",
    ] {
        assert!(before.contains(line), "missing `{line}` in:\n{before}");
    }
    assert_eq!(
        labelled_value(&before, "db_client_connection_count", &used),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        labelled_value(&before, "db_client_connection_max", &pool),
        Some(2.0)
    );
    let waits_before = labelled_value(
        &before,
        "db_client_connection_wait_time_seconds_count",
        &pool,
    )
    .unwrap_or(-1.0);

    let stop = Arc::new(AtomicBool::new(false));
    let engine_pool = server.server().registry().pool("primary")?;
    let mut load = Vec::new();
    for _ in 0..6 {
        let (pool, stop) = (Arc::clone(&engine_pool), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                pool.execute("SELECT pg_sleep(0.05)", &[]).await?;
            }
            anyhow::Ok(())
        }));
    }
    let last = std::sync::Mutex::new(String::new());
    let moved = wait_until(Duration::from_secs(10), "the metrics move", || async {
        let text = http_get(metrics, "/metrics").await.unwrap_or_default();
        let ok = labelled_value(&text, "db_client_connection_count", &used).unwrap_or(0.0) >= 1.0
            && labelled_value(&text, "db_client_connection_pending_requests", &pool).unwrap_or(0.0)
                >= 1.0
            && labelled_value(&text, "db_client_connection_wait_time_seconds_count", &pool)
                .unwrap_or(0.0)
                > waits_before + 5.0;
        *last.lock().expect("lock") = text;
        ok
    })
    .await;
    let during = last.into_inner().expect("lock");
    moved.map_err(|e| anyhow::anyhow!("{e}\n{during}"))?;
    let slow =
        labelled_value(&during, "db_client_connection_wait_time_seconds_sum", &pool).unwrap_or(0.0);
    assert!(
        slow > 0.0,
        "waiting for one of 2 connections behind 6 callers takes time"
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await??;
    }
    assert_eq!(http_get(metrics, "/healthz").await?.trim(), "ok");
    server.shutdown().await
}
