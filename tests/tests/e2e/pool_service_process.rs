//! PoolService against the built server binary: driven by the real grpcurl, killed
//! with SIGKILL and restarted on the same control database, and a whole run whose
//! responses and log lines are searched for the database password.

use std::time::Duration;

use nix::sys::signal::Signal;
use poolplane_client::PoolplaneClient;
use poolplane_client::proto::PoolConfig;
use poolplane_tests::{ServerProcess, TestPg, grpcurl, wait_until};

#[tokio::test]
async fn grpcurl_drives_the_pool_service() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let server = ServerProcess::start(&["--database-url", control.url()]).await?;
    let addr = server.addr;

    let list = grpcurl(addr, &[], &["list"]).await?;
    assert!(
        list.stdout.contains("poolplane.v1.PoolService"),
        "{}",
        list.stdout
    );
    let describe = grpcurl(addr, &[], &["describe", "poolplane.v1.PoolService"]).await?;
    for rpc in [
        "CreatePool",
        "UpdatePoolConfig",
        "WatchPoolStats",
        "WatchHealthEvents",
    ] {
        assert!(
            describe.stdout.contains(&format!("rpc {rpc}")),
            "{}",
            describe.stdout
        );
    }

    let create = serde_json::json!({
        "name": "primary",
        "database_url": db.url(),
        "config": { "preset": "development", "min_connections": 2, "max_connections": 5,
                    "health_check_interval_secs": 2, "health_check_timeout_secs": 1 }
    });
    let created = grpcurl(
        addr,
        &["-d", &create.to_string()],
        &["poolplane.v1.PoolService/CreatePool"],
    )
    .await?;
    assert!(created.success, "{}", created.stderr);
    let pool: serde_json::Value = serde_json::from_str(&created.stdout)?;
    assert_eq!(pool["pool"]["name"], "primary");
    assert_eq!(pool["pool"]["config"]["maxConnections"], 5);
    assert_eq!(
        pool["pool"]["config"]["statementCacheCapacity"], 500,
        "the preset's value"
    );
    assert_eq!(pool["pool"]["state"], "POOL_STATE_HEALTHY");

    let listed = grpcurl(addr, &[], &["poolplane.v1.PoolService/ListPools"]).await?;
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout)?;
    assert_eq!(listed["pools"][0]["name"], "primary");

    let stats = grpcurl(
        addr,
        &["-d", r#"{"pool_name":"primary"}"#],
        &["poolplane.v1.PoolService/GetPoolStats"],
    )
    .await?;
    let stats: serde_json::Value = serde_json::from_str(&stats.stdout)?;
    assert_eq!(stats["stats"]["connections"], 2);

    // A stream: read at least three snapshots, then grpcurl's deadline ends it.
    let watch = grpcurl(
        addr,
        &[
            "-d",
            r#"{"pool_names":["primary"],"interval_ms":200}"#,
            "-max-time",
            "1",
        ],
        &["poolplane.v1.PoolService/WatchPoolStats"],
    )
    .await?;
    let snapshots = watch.stdout.matches("\"poolName\": \"primary\"").count();
    assert!(
        snapshots >= 3,
        "{snapshots} snapshots:\n{}{}",
        watch.stdout,
        watch.stderr
    );

    let health = grpcurl(
        addr,
        &["-d", r#"{"service":"pool/primary"}"#],
        &["grpc.health.v1.Health/Check"],
    )
    .await?;
    assert!(
        health.stdout.contains("\"SERVING\""),
        "{}{}",
        health.stdout,
        health.stderr
    );

    let delete = grpcurl(
        addr,
        &["-d", r#"{"name":"primary"}"#],
        &["poolplane.v1.PoolService/DeletePool"],
    )
    .await?;
    assert!(delete.success, "{}", delete.stderr);
    let missing = grpcurl(
        addr,
        &["-d", r#"{"name":"primary"}"#],
        &["poolplane.v1.PoolService/GetPool"],
    )
    .await?;
    assert!(!missing.success);
    assert!(missing.stderr.contains("NotFound"), "{}", missing.stderr);
    Ok(())
}

#[tokio::test]
async fn pools_come_back_after_sigkill() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let mut first = ServerProcess::start(&["--database-url", control.url()]).await?;
    let client = PoolplaneClient::connect(first.addr.to_string()).await?;
    for (name, min, max) in [("alpha", 1, 3), ("beta", 2, 7)] {
        let config = PoolConfig {
            min_connections: Some(min),
            max_connections: Some(max),
            statement_cache_capacity: Some(77),
            ..PoolConfig::default()
        };
        client.create_pool(name, db.url(), config).await?;
    }
    let before = client.list_pools().await?;
    first.signal(Signal::SIGKILL)?;
    first.wait_exit(Duration::from_secs(10)).await?;

    let second = ServerProcess::start(&["--database-url", control.url()]).await?;
    assert_eq!(second.start_line["pools"], 2);
    let client = PoolplaneClient::connect(second.addr.to_string()).await?;
    let after = client.list_pools().await?;
    assert_eq!(after.len(), 2);
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(
            (&a.name, &a.config, &a.created_at),
            (&b.name, &b.config, &b.created_at)
        );
    }
    for (name, min) in [("alpha", 1), ("beta", 2)] {
        // Restored pools start unhealthy and connect in the background.
        poolplane_tests::wait_health(&client, name, true, Duration::from_secs(10)).await?;
        wait_until(
            Duration::from_secs(5),
            "min_connections are open again",
            || async {
                client
                    .get_pool_stats(name)
                    .await
                    .map(|s| s.connections)
                    .ok()
                    == Some(min)
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_password_reaches_no_response_and_no_log_line() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let password = poolplane::conninfo::password(db.url()).expect("the test URL has a password");
    assert!(password.len() >= 8);
    let mut server =
        ServerProcess::start_with_log(&["--database-url", control.url()], "debug").await?;
    let client = PoolplaneClient::connect(server.addr.to_string()).await?;
    let mut seen = Vec::new();
    let small = || PoolConfig {
        min_connections: Some(1),
        max_connections: Some(3),
        ..PoolConfig::default()
    };

    let kv = format!(
        "host=127.0.0.1 port={} user=postgres password={password} dbname={}",
        db.server_addr()?.port(),
        db.name
    );
    seen.push(format!(
        "{:?}",
        client.create_pool("url", db.url(), small()).await?
    ));
    seen.push(format!(
        "{:?}",
        client.create_pool("kv", &kv, small()).await?
    ));
    seen.push(format!("{:?}", client.list_pools().await?));
    seen.push(format!("{:?}", client.get_pool("kv").await?));
    seen.push(format!("{:?}", client.get_health_status("url").await?));
    let mut events = client.watch_health_events(&[]).await?;
    seen.push(format!("{:?}", events.next().await?));
    seen.push(format!(
        "{:?}",
        client
            .update_pool_config(
                "kv",
                PoolConfig {
                    max_connections: Some(9),
                    ..PoolConfig::default()
                }
            )
            .await?
    ));
    seen.push(format!("{:?}", events.next().await?));
    // Errors: a wrong database name and an unreachable port, both with the password.
    let wrong_db = db.url().replace(&db.name, "no_such_database");
    seen.push(format!(
        "{:?}",
        client.create_pool("wrong", &wrong_db, small()).await
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let down = format!("postgres://postgres:{password}@127.0.0.1:{port}/x");
    seen.push(format!(
        "{:?}",
        client.create_pool("down", &down, small()).await
    ));
    let listed = grpcurl(server.addr, &[], &["poolplane.v1.PoolService/ListPools"]).await?;
    seen.push(listed.stdout);
    client.delete_pool("url").await?;
    drop(events);

    server.signal(Signal::SIGTERM)?;
    assert_eq!(
        server.wait_exit(Duration::from_secs(10)).await?.code(),
        Some(0)
    );
    let log = server.log_lines();
    assert!(
        log.len() > 20,
        "a debug run logs more than {} lines",
        log.len()
    );
    assert!(seen.iter().any(|s| s.contains("***")), "redaction shows");
    for text in seen.iter().chain(&log) {
        assert!(!text.contains(&password), "the password leaked: {text}");
    }
    Ok(())
}
