//! The audit trail of configuration changes: UpdatePoolConfig (with the caller's
//! role), OptimizePools with apply, automated tuning (--auto-optimize-interval)
//! and changes the connection budget refused, in pool_config_changes, streamed
//! as events and read back with ListConfigChanges; warnings for values outside
//! the seed's guidance.

use std::time::Duration;

use poolplane_client::proto::pool_event::Kind;
use poolplane_client::proto::{PoolConfig, RunLoadTestRequest};
use poolplane_tests::{TestPg, TestServer, run_load_test, wait_until};

fn fixed(min: u32, max: u32) -> PoolConfig {
    PoolConfig {
        enable_dynamic_sizing: Some(false),
        ..poolplane_tests::proto_config(min, max)
    }
}

#[tokio::test]
async fn updates_are_recorded_with_who_and_why_and_warned_about() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let client = &server.client;
    let (_, warnings) = client
        .create_pool_with_warnings(
            "audited",
            db.url(),
            PoolConfig {
                health_check_interval_secs: Some(5),
                health_check_timeout_secs: Some(2),
                max_failed_health_checks: Some(1),
                load_threshold_low: Some(0.7),
                load_threshold_high: Some(0.8),
                enable_dynamic_sizing: Some(true),
                ..fixed(1, 4)
            },
        )
        .await?;
    let fields: Vec<&str> = warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "config.health_check_interval_secs",
            "config.max_failed_health_checks",
            "config.load_threshold_low"
        ],
        "{warnings:?}"
    );
    assert!(warnings[0].description.contains("15-60 s"), "{warnings:?}");

    let mut events = client.watch_health_events(&["audited"]).await?;
    let (pool, warnings) = client
        .update_pool_config_with_warnings(
            "audited",
            PoolConfig {
                max_connections: Some(6),
                health_check_interval_secs: Some(30),
                max_failed_health_checks: Some(3),
                load_threshold_low: Some(0.3),
                ..PoolConfig::default()
            },
        )
        .await?;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(pool.config.and_then(|c| c.max_connections), Some(6));

    // The event carries the change (the first event is the current health).
    let changed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Kind::ConfigChanged(c)) = events.next().await?.and_then(|e| e.kind) {
                return anyhow::Ok(c);
            }
        }
    })
    .await??;
    assert_eq!(changed.source, "admin", "loopback without tokens: admin");
    assert!(changed.applied);
    let max = changed
        .changes
        .iter()
        .find(|c| c.field == "max_connections")
        .expect("max_connections changed");
    assert_eq!((max.old_value.as_str(), max.new_value.as_str()), ("4", "6"));

    let recorded = client.list_config_changes("audited", 100).await?;
    assert_eq!(recorded.len(), 4, "one row per field: {recorded:?}");
    let row = recorded
        .iter()
        .find(|r| r.change.as_ref().map(|c| c.field.as_str()) == Some("max_connections"))
        .expect("recorded");
    assert_eq!(row.source, "admin");
    assert_eq!(row.reason, "UpdatePoolConfig");
    assert!(row.applied);

    // The same update again changes nothing and records nothing.
    client
        .update_pool_config(
            "audited",
            PoolConfig {
                max_connections: Some(6),
                ..PoolConfig::default()
            },
        )
        .await?;
    assert_eq!(client.list_config_changes("audited", 100).await?.len(), 4);
    server.shutdown().await
}

#[tokio::test]
async fn automated_tuning_grows_a_starved_pool_and_says_why() -> anyhow::Result<()> {
    let server = TestServer::spawn_with(TestPg::database().await?, |c| {
        c.auto_optimize_interval = Some(Duration::from_secs(2));
    })
    .await?;
    let db = TestPg::database().await?;
    let client = &server.client;
    client.create_pool("starved", db.url(), fixed(1, 2)).await?;
    let mut events = client.watch_health_events(&["starved"]).await?;
    // 16 callers on 2 connections: saturated.
    let request = RunLoadTestRequest {
        pool_name: "starved".into(),
        concurrency: 16,
        duration_secs: 2,
        query: "SELECT pg_sleep(0.005)".into(),
        ..RunLoadTestRequest::default()
    };
    run_load_test(client, request).await?;

    wait_until(Duration::from_secs(10), "the tuner grows max", || async {
        client
            .get_pool("starved")
            .await
            .ok()
            .and_then(|p| p.config)
            .and_then(|c| c.max_connections)
            .is_some_and(|max| max > 2)
    })
    .await?;
    let changed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Kind::ConfigChanged(c)) = events.next().await?.and_then(|e| e.kind) {
                return anyhow::Ok(c);
            }
        }
    })
    .await??;
    assert_eq!(changed.source, "optimizer");
    assert!(
        changed.reason.contains("Increase max_connections"),
        "{changed:?}"
    );
    let sql = server.control.connect().await?;
    let row = sql
        .query_one(
            "SELECT old_value, new_value::int, source, reason, applied FROM pool_config_changes \
             WHERE pool_name = 'starved' AND field = 'max_connections'",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "2");
    assert!(row.get::<_, i32>(1) > 2);
    assert_eq!(row.get::<_, String>(2), "optimizer");
    assert!(row.get::<_, String>(3).contains("peak utilization"));
    assert!(row.get::<_, bool>(4));
    server.shutdown().await
}
