//! The audit trail of configuration changes: UpdatePoolConfig (with the caller's
//! role), OptimizePools with apply, automated tuning (--auto-optimize-interval)
//! and changes the connection budget refused, in pool_config_changes, streamed
//! as events and read back with ListConfigChanges; warnings for values outside
//! the recommended ranges.

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

/// An update that lands while the optimizer reads its window is kept: the
/// optimizer's change is applied to the config in force under the pool's claim,
/// not to the one it read first, and its audit row is a diff against it.
#[tokio::test]
async fn an_update_during_an_optimizer_round_is_not_reverted() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let client = &server.client;
    client.create_pool("raced", db.url(), fixed(1, 2)).await?;
    let registry = std::sync::Arc::clone(server.server().registry());
    let pool = registry.pool("raced")?;
    // Saturated at its fixed max: the optimizer will raise max_connections.
    let held = (pool.get().await?, pool.get().await?);
    // Its window read waits behind a lock on the control database.
    let mut control = server.control.connect().await?;
    let locker = control.transaction().await?;
    locker
        .batch_execute("LOCK TABLE connection_health_status IN ACCESS EXCLUSIVE MODE")
        .await?;
    let round = {
        let registry = std::sync::Arc::clone(&registry);
        tokio::spawn(async move {
            registry
                .optimize_pools_as(&["raced".to_owned()], true, "optimizer")
                .await
        })
    };
    let watcher = server.control.connect().await?;
    wait_until(
        Duration::from_secs(10),
        "the optimizer waits on the lock",
        || async {
            watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND datname = current_database() \
                 AND query LIKE '%poolplane_metrics_window%'",
                    &[],
                )
                .await
                .map(|r| r.get::<_, i64>(0) == 1)
                .unwrap_or(false)
        },
    )
    .await?;
    drop(held);
    // Meanwhile an admin changes another field.
    client
        .update_pool_config(
            "raced",
            PoolConfig {
                health_check_interval_secs: Some(7),
                ..PoolConfig::default()
            },
        )
        .await?;
    locker.commit().await?;
    let report = round.await??;
    let applied = &report.optimizations[0].applied_changes;
    assert!(
        applied
            .iter()
            .any(|c| c.starts_with("max_connections: 2 -> ")),
        "{report:?}"
    );
    // Both changes hold.
    let config = registry.pool_info("raced")?.config;
    assert_eq!(
        config.health_check_interval_secs, 7,
        "the admin's change was kept"
    );
    assert!(config.max_connections > 2, "{config:?}");
    // The optimizer's audit rows change max_connections only.
    let optimizer_fields: Vec<String> = client
        .list_config_changes("raced", 100)
        .await?
        .into_iter()
        .filter(|r| r.source == "optimizer")
        .filter_map(|r| r.change.map(|c| c.field))
        .collect();
    assert_eq!(optimizer_fields, ["max_connections"]);
    server.shutdown().await
}

/// Two callers updating different fields of one pool at once, each retrying when
/// the pool is busy with the other's change: no update reverts the other's field.
/// Every recorded change only ever raises a value (each caller raises its own
/// field), and both last values hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_partial_updates_of_different_fields_never_revert_each_other()
-> anyhow::Result<()> {
    const ROUNDS: u32 = 150;
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    server
        .client
        .create_pool("both", db.url(), fixed(1, 2))
        .await?;
    let caller = |set: fn(u32) -> PoolConfig| {
        let client = server.client.clone();
        tokio::spawn(async move {
            for value in 1..=ROUNDS {
                loop {
                    match client.update_pool_config("both", set(value)).await {
                        Ok(_) => break,
                        Err(e) if e.code() == tonic::Code::Aborted => {
                            tokio::task::yield_now().await;
                        }
                        Err(e) => return Err(anyhow::anyhow!("update {value}: {e}")),
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    // Each raises its own field from its default (2000 and 500).
    let a = caller(|v| PoolConfig {
        statement_cache_capacity: Some(2000 + v),
        ..PoolConfig::default()
    });
    let b = caller(|v| PoolConfig {
        validation_idle_threshold_ms: Some(500 + u64::from(v)),
        ..PoolConfig::default()
    });
    a.await??;
    b.await??;
    let config = server.server().registry().pool_info("both")?.config;
    assert_eq!(config.statement_cache_capacity, 2000 + ROUNDS);
    assert_eq!(config.validation_idle_threshold_ms, 500 + u64::from(ROUNDS));
    let reverted: Vec<String> = server
        .client
        .list_config_changes("both", 1000)
        .await?
        .into_iter()
        .filter_map(|r| r.change)
        .filter(|c| {
            let (old, new) = (c.old_value.parse::<u64>(), c.new_value.parse::<u64>());
            matches!((old, new), (Ok(old), Ok(new)) if new < old)
        })
        .map(|c| format!("{}: {} -> {}", c.field, c.old_value, c.new_value))
        .collect();
    assert!(reverted.is_empty(), "updates reverted: {reverted:?}");
    server.shutdown().await
}
