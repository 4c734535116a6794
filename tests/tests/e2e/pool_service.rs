//! PoolService end to end through the SDK against a real server and PostgreSQL:
//! every RPC, its error paths, the stored definitions, watches and per-pool health.

use std::time::Duration;

use poolplane_client::Error;
use poolplane_client::proto::pool_event::Kind;
use poolplane_client::proto::{PoolConfig, PoolState, WarmupQueries};
use poolplane_server::app::pool_health_name;
use poolplane_tests::ServingStatus;
use poolplane_tests::{FaultProxy, TestServer, wait_until};
use tonic::Code;
use tonic_types::StatusExt;

fn small() -> PoolConfig {
    poolplane_tests::proto_config(1, 4)
}

fn status(error: Error) -> tonic::Status {
    match error {
        Error::Status(status) => status,
        other => panic!("expected a status, got {other}"),
    }
}

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("a google.rpc.BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

async fn stored(server: &TestServer, name: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let control = server.control.connect().await?;
    Ok(control
        .query_opt(
            "SELECT config FROM pool_definitions WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|row| row.get(0)))
}

async fn pool_health(server: &TestServer, name: &str) -> anyhow::Result<ServingStatus> {
    server.health(&pool_health_name(name)).await
}

#[tokio::test]
async fn create_inspect_update_and_delete_a_pool() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = poolplane_tests::TestPg::database().await?;
    let client = &server.client;

    let pool = client.create_pool("primary", db.url(), small()).await?;
    assert_eq!(pool.name, "primary");
    assert!(pool.database_url.contains(":***@"), "{}", pool.database_url);
    let config = pool.config.clone().expect("effective config");
    assert_eq!(config.max_connections, Some(4));
    assert_eq!(
        config.statement_cache_capacity,
        Some(2000),
        "unset fields take the default"
    );
    assert_eq!(pool.state, PoolState::Healthy as i32);
    assert_eq!(client.get_pool("primary").await?, pool);
    assert_eq!(client.list_pools().await?, vec![pool.clone()]);
    assert_eq!(
        stored(&server, "primary").await?.unwrap()["max_connections"],
        4
    );

    let stats = client.get_pool_stats("primary").await?;
    assert_eq!(
        (stats.pool_name.as_str(), stats.connections),
        ("primary", 1)
    );
    let health = client.get_health_status("primary").await?;
    assert!(health.is_healthy);
    let cache = client.get_statement_cache_stats("primary").await?;
    assert_eq!(cache.capacity, 2000);
    assert_eq!(
        pool_health(&server, "primary").await?,
        ServingStatus::Serving
    );

    // Live: min and the cache capacity change in place.
    let updated = client
        .update_pool_config(
            "primary",
            PoolConfig {
                min_connections: Some(2),
                statement_cache_capacity: Some(64),
                ..PoolConfig::default()
            },
        )
        .await?;
    let config = updated.config.expect("config");
    assert_eq!(
        (config.min_connections, config.max_connections),
        (Some(2), Some(4))
    );
    assert_eq!(
        client.get_statement_cache_stats("primary").await?.capacity,
        64
    );
    wait_until(
        Duration::from_secs(5),
        "min_connections follows",
        || async {
            client
                .get_pool_stats("primary")
                .await
                .map(|s| s.connections)
                .ok()
                == Some(2)
        },
    )
    .await?;
    // A new ceiling needs a rebuild, transparently.
    let mut events = client.watch_health_events(&["primary"]).await?;
    let rebuilt = client
        .update_pool_config(
            "primary",
            PoolConfig {
                max_connections: Some(6),
                connection_warmup_queries: Some(WarmupQueries {
                    queries: vec!["SET statement_timeout = '9s'".into()],
                }),
                ..PoolConfig::default()
            },
        )
        .await?;
    assert_eq!(rebuilt.config.expect("config").max_connections, Some(6));
    assert_eq!(client.get_pool_stats("primary").await?.max_connections, 6);
    assert_eq!(
        stored(&server, "primary").await?.unwrap()["max_connections"],
        6
    );
    assert!(matches!(
        events.next().await?.and_then(|e| e.kind),
        Some(Kind::CurrentHealth(_))
    ));
    let update = events.next().await?.and_then(|e| e.kind);
    assert!(
        matches!(&update, Some(Kind::PoolUpdated(u)) if u.rebuilt),
        "{update:?}"
    );

    // Then the change itself, field by field, with who made it.
    let changed = events.next().await?.and_then(|e| e.kind);
    match &changed {
        Some(Kind::ConfigChanged(c)) => {
            assert_eq!((c.source.as_str(), c.applied), ("admin", true));
            assert!(
                c.changes.iter().any(|f| f.field == "max_connections"
                    && (f.old_value.as_str(), f.new_value.as_str()) == ("4", "6")),
                "{c:?}"
            );
        }
        other => panic!("expected the config change, got {other:?}"),
    }

    client.delete_pool("primary").await?;
    let deleted = events.next().await?.and_then(|e| e.kind);
    assert!(matches!(deleted, Some(Kind::PoolDeleted(_))), "{deleted:?}");
    assert!(
        events.next().await?.is_none(),
        "the watch of a deleted pool ends"
    );
    assert!(client.list_pools().await?.is_empty());
    assert_eq!(stored(&server, "primary").await?, None);
    let gone = status(client.get_pool("primary").await.unwrap_err());
    assert_eq!(gone.code(), Code::NotFound);
    assert!(gone.message().contains("primary"));
    assert_eq!(
        pool_health(&server, "primary").await.ok(),
        None,
        "health entry removed"
    );
    server.shutdown().await
}

#[tokio::test]
async fn bad_requests_name_every_field_and_change_nothing() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = poolplane_tests::TestPg::database().await?;
    let client = &server.client;

    let e = status(
        client
            .create_pool("Bad Name", db.url(), small())
            .await
            .unwrap_err(),
    );
    assert_eq!(bad_fields(&e), ["name"]);
    let e = status(
        client
            .create_pool("ok", "not a url", small())
            .await
            .unwrap_err(),
    );
    assert_eq!(bad_fields(&e), ["database_url"]);
    let bad = PoolConfig {
        max_connections: Some(0),
        min_connections: Some(3),
        load_threshold_low: Some(0.9),
        load_threshold_high: Some(0.5),
        scale_up_factor: Some(1.0),
        health_check_interval_secs: Some(1),
        health_check_timeout_secs: Some(5),
        validation_query: Some(String::new()),
        ..PoolConfig::default()
    };
    let e = status(client.create_pool("", db.url(), bad).await.unwrap_err());
    assert_eq!(
        bad_fields(&e),
        [
            "name",
            "config.max_connections",
            "config.min_connections",
            "config.health_check_timeout_secs",
            "config.load_threshold_high",
            "config.scale_up_factor",
            "config.validation_query",
        ]
    );
    let preset = PoolConfig {
        preset: Some("turbo".into()),
        ..PoolConfig::default()
    };
    let e = status(
        client
            .create_pool("ok", db.url(), preset)
            .await
            .unwrap_err(),
    );
    assert_eq!(bad_fields(&e), ["config.preset"]);

    client.create_pool("dup", db.url(), small()).await?;
    let e = status(
        client
            .create_pool("dup", db.url(), small())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::AlreadyExists);

    let before = client.get_pool("dup").await?;
    let invalid = PoolConfig {
        min_connections: Some(10),
        ..PoolConfig::default()
    };
    let e = status(client.update_pool_config("dup", invalid).await.unwrap_err());
    assert_eq!(bad_fields(&e), ["config.min_connections"]);
    assert_eq!(
        client.get_pool("dup").await?,
        before,
        "a refused update changes nothing"
    );

    for result in [
        client.get_pool("nope").await.map(|_| ()),
        client.update_pool_config("nope", small()).await.map(|_| ()),
        client.delete_pool("nope").await,
        client.get_pool_stats("nope").await.map(|_| ()),
        client.get_health_status("nope").await.map(|_| ()),
        client.get_statement_cache_stats("nope").await.map(|_| ()),
        client.watch_pool_stats(&["nope"], 0).await.map(|_| ()),
        client.watch_health_events(&["nope"]).await.map(|_| ()),
    ] {
        let e = status(result.unwrap_err());
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(e.message().contains("`nope`"), "{e:?}");
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let unreachable = format!("postgres://app:hunter2-secret@127.0.0.1:{port}/app");
    let e = status(
        client
            .create_pool("down", &unreachable, small())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("refused"), "{}", e.message());
    assert!(!e.message().contains("hunter2-secret"), "{}", e.message());
    assert_eq!(stored(&server, "down").await?, None, "nothing persisted");
    assert_eq!(client.list_pools().await?.len(), 1);
    client.get_pool_stats("dup").await?; // the other pool is unaffected
    server.shutdown().await
}

#[tokio::test]
async fn watch_pool_stats_ticks_for_every_pool_and_ends_when_cancelled() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = poolplane_tests::TestPg::database().await?;
    let client = &server.client;
    client.create_pool("one", db.url(), small()).await?;

    let e = status(client.watch_pool_stats(&[], 50).await.unwrap_err());
    assert_eq!(bad_fields(&e), ["interval_ms"]);

    let mut watch = client.watch_pool_stats(&[], 100).await?;
    let first = watch.next().await?.expect("a snapshot");
    assert_eq!(first.pool_name, "one");
    client.create_pool("two", db.url(), small()).await?;
    let mut seen_two = false;
    for _ in 0..10 {
        if watch.next().await?.expect("a snapshot").pool_name == "two" {
            seen_two = true;
            break;
        }
    }
    assert!(seen_two, "a pool created later joins an all-pools watch");
    let server_side = || async {
        // the server's count of running watch tasks
        server_watchers(&server)
    };
    assert!(server_side().await >= 1);
    drop(watch);
    wait_until(Duration::from_secs(5), "the watch task ends", || async {
        server_side().await == 0
    })
    .await?;
    server.shutdown().await
}

fn server_watchers(server: &TestServer) -> usize {
    server.active_watchers()
}

#[tokio::test]
async fn a_cut_database_turns_the_pool_not_serving_and_back() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = poolplane_tests::TestPg::database().await?;
    let proxy = FaultProxy::start(db.server_addr()?).await?;
    let client = &server.client;
    let config = PoolConfig {
        max_failed_health_checks: Some(2),
        ..small()
    };
    client
        .create_pool("edge", &db.url_via(proxy.addr()), config)
        .await?;
    let mut events = client.watch_health_events(&[]).await?;
    let current = events.next().await?.and_then(|e| e.kind);
    assert!(
        matches!(&current, Some(Kind::CurrentHealth(h)) if h.is_healthy),
        "{current:?}"
    );

    proxy.cut();
    let unhealthy = loop {
        match events.next().await?.and_then(|e| e.kind) {
            Some(Kind::BecameUnhealthy(u)) => break u,
            Some(Kind::HealthCheckFailed(_)) => continue,
            other => anyhow::bail!("unexpected event {other:?}"),
        }
    };
    assert_eq!(unhealthy.consecutive_failures, 2);
    wait_until(
        Duration::from_secs(5),
        "pool/edge is NOT_SERVING",
        || async { pool_health(&server, "edge").await.ok() == Some(ServingStatus::NotServing) },
    )
    .await?;
    assert_eq!(
        client.get_pool("edge").await?.state,
        PoolState::Unhealthy as i32
    );

    proxy.restore();
    loop {
        match events.next().await?.and_then(|e| e.kind) {
            Some(Kind::Recovered(_)) => break,
            Some(Kind::HealthCheckFailed(_)) => continue,
            other => anyhow::bail!("unexpected event {other:?}"),
        }
    }
    wait_until(
        Duration::from_secs(5),
        "pool/edge is SERVING again",
        || async { pool_health(&server, "edge").await.ok() == Some(ServingStatus::Serving) },
    )
    .await?;
    server.shutdown().await
}
