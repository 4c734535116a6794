//! A bound on every input: each test hits one, gets the clear status naming the
//! field or the flag, and the next ordinary call succeeds.

use std::time::{Duration, SystemTime};

use poolplane_client::proto::{PoolConfig, RunLoadTestRequest, WarmupQueries};
use poolplane_client::{PoolConfigBuilder, PoolplaneClient};
use poolplane_tests::{FaultProxy, TestDatabase, TestPg, TestServer, wait_until};
use tonic::Code;

fn small() -> PoolConfig {
    poolplane_tests::proto_config(1, 2)
}

/// Asserts `result` is INVALID_ARGUMENT naming `field`, then that an ordinary call
/// works.
async fn refused_naming<T: std::fmt::Debug>(
    client: &PoolplaneClient,
    result: Result<T, poolplane_client::Error>,
    field: &str,
) {
    let error = result.expect_err(field);
    assert_eq!(error.code(), Code::InvalidArgument, "{field}: {error}");
    let fields: Vec<String> = error
        .field_violations()
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert!(fields.iter().any(|f| f == field), "{field}: {fields:?}");
    client
        .list_pools()
        .await
        .expect("the next ordinary call works");
}

#[tokio::test]
async fn config_fields_names_urls_and_sql_texts_are_bounded() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let client = &server.client;
    let with = |patch: PoolConfig| PoolConfig {
        max_connections: Some(2),
        min_connections: Some(1),
        ..patch
    };
    let cases: Vec<(PoolConfig, &str)> = vec![
        (
            with(PoolConfig {
                statement_cache_capacity: Some(u32::MAX),
                ..Default::default()
            }),
            "config.statement_cache_capacity",
        ),
        (
            PoolConfig {
                max_connections: Some(10_001),
                ..Default::default()
            },
            "config.max_connections",
        ),
        (
            with(PoolConfig {
                validation_query: Some(format!("SELECT 1 -- {}", "x".repeat(70_000))),
                ..Default::default()
            }),
            "config.validation_query",
        ),
        (
            with(PoolConfig {
                connection_warmup_queries: Some(WarmupQueries {
                    queries: vec!["SET application_name = 'a'".into(); 33],
                }),
                ..Default::default()
            }),
            "config.connection_warmup_queries",
        ),
        (
            with(PoolConfig {
                scale_up_factor: Some(f64::INFINITY),
                ..Default::default()
            }),
            "config.scale_up_factor",
        ),
        (
            with(PoolConfig {
                load_threshold_high: Some(f64::NAN),
                ..Default::default()
            }),
            "config.load_threshold_high",
        ),
    ];
    for (config, field) in cases {
        refused_naming(
            client,
            client.create_pool("bounded", db.url(), config).await,
            field,
        )
        .await;
    }
    refused_naming(
        client,
        client.create_pool(&"n".repeat(64), db.url(), small()).await,
        "name",
    )
    .await;
    let long_url = format!("{}?application_name={}", db.url(), "a".repeat(5000));
    refused_naming(
        client,
        client.create_pool("long-url", &long_url, small()).await,
        "database_url",
    )
    .await;
    // An update is held to the same bounds, and the pool keeps its config.
    client.create_pool("kept", db.url(), small()).await?;
    let update = PoolConfig {
        statement_cache_capacity: Some(4_294_967_295),
        ..Default::default()
    };
    refused_naming(
        client,
        client.update_pool_config("kept", update).await,
        "config.statement_cache_capacity",
    )
    .await;
    let kept = client.get_pool("kept").await?;
    assert_eq!(
        kept.config.and_then(|c| c.statement_cache_capacity),
        Some(2000)
    );
    server.shutdown().await
}

#[tokio::test]
async fn load_test_watch_history_and_optimizer_requests_are_bounded() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let client = &server.client;
    client.create_pool("p", db.url(), small()).await?;

    let test = |patch: RunLoadTestRequest| RunLoadTestRequest {
        pool_name: "p".into(),
        concurrency: 1,
        duration_secs: 1,
        ..patch
    };
    // 1e-300 requests per second once panicked turning into a Duration.
    for rps in [1e-300, 0.0, -1.0, f64::NAN, 1e12] {
        let result = client
            .run_load_test(test(RunLoadTestRequest {
                target_rps: Some(rps),
                ..Default::default()
            }))
            .await;
        refused_naming(client, result.map(|_| ()), "target_rps").await;
    }
    let result = client
        .run_load_test(test(RunLoadTestRequest {
            query: format!("SELECT 1 -- {}", "x".repeat(70_000)),
            ..Default::default()
        }))
        .await;
    refused_naming(client, result.map(|_| ()), "query").await;

    let result = client.watch_pool_stats(&["p"], 4_000_000).await;
    refused_naming(client, result.map(|_| ()), "interval_ms").await;

    let long_ago = SystemTime::now() - Duration::from_secs(500 * 86_400);
    let result = client
        .get_metrics_history("p", Some(long_ago), None, 10)
        .await;
    refused_naming(client, result, "from").await;

    let many: Vec<String> = (0..1001).map(|i| format!("pool-{i}")).collect();
    let names: Vec<&str> = many.iter().map(String::as_str).collect();
    refused_naming(
        client,
        client.optimize_pools(&names, false).await,
        "pool_names",
    )
    .await;
    // Repeated names count once.
    let report = client.optimize_pools(&["p", "p", "p"], false).await?;
    assert_eq!(report.optimizations.len(), 1);
    assert_eq!(report.total_pools, 1);
    server.shutdown().await
}

#[tokio::test]
async fn the_number_of_pools_is_bounded() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let server = TestServer::spawn_with(control, |c| c.max_pools = 2).await?;
    let db = TestPg::database().await?;
    let client = &server.client;
    client.create_pool("one", db.url(), small()).await?;
    client.create_pool("two", db.url(), small()).await?;
    let error = client
        .create_pool("three", db.url(), small())
        .await
        .expect_err("over --max-pools");
    assert_eq!(error.code(), Code::ResourceExhausted, "{error}");
    assert!(error.to_string().contains("--max-pools"), "{error}");
    assert_eq!(client.list_pools().await?.len(), 2);
    client.delete_pool("one").await?;
    client.create_pool("three", db.url(), small()).await?;
    server.shutdown().await
}

#[tokio::test]
async fn watch_streams_are_bounded_in_total_and_per_connection() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let server = TestServer::spawn_with(control, |c| {
        c.limits.max_watch_streams = 3;
        c.limits.max_watch_streams_per_connection = 2;
    })
    .await?;
    let db = TestPg::database().await?;
    server.client.create_pool("w", db.url(), small()).await?;
    let a = &server.client;
    let b = PoolplaneClient::connect(server.addr.to_string()).await?;

    let first = a.watch_pool_stats(&["w"], 100).await?;
    let _second = a.watch_health_events(&["w"]).await?;
    let error = a
        .watch_pool_stats(&["w"], 100)
        .await
        .expect_err("a third on one connection");
    assert_eq!(error.code(), Code::ResourceExhausted, "{error}");
    assert!(error.to_string().contains("per connection"), "{error}");
    // Another connection has room, until the total is reached.
    let _third = b.watch_pool_stats(&["w"], 100).await?;
    let error = b
        .watch_pool_stats(&["w"], 100)
        .await
        .expect_err("over the total");
    assert_eq!(error.code(), Code::ResourceExhausted, "{error}");
    assert!(
        error.to_string().contains("--max-watch-streams)"),
        "{error}"
    );
    // Ordinary calls are unaffected, and a closed stream frees its slot.
    a.list_pools().await?;
    drop(first);
    wait_until(Duration::from_secs(10), "the slot is free again", || {
        let a = a.clone();
        async move { a.watch_pool_stats(&["w"], 100).await.is_ok() }
    })
    .await?;
    server.shutdown().await
}

#[tokio::test]
async fn calls_beyond_max_concurrent_streams_wait_for_a_free_stream() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let server = TestServer::spawn_with(control, |c| {
        c.limits.max_concurrent_streams = 2;
    })
    .await?;
    let db = TestPg::database().await?;
    let client = &server.client;
    client.create_pool("s", db.url(), small()).await?;
    let one = client.watch_pool_stats(&["s"], 100).await?;
    let _two = client.watch_pool_stats(&["s"], 100).await?;
    // Both streams of the connection are taken: a third call is held back by
    // HTTP/2 flow control, not served.
    let held = tokio::time::timeout(Duration::from_millis(500), client.list_pools()).await;
    assert!(held.is_err(), "a third stream was opened: {held:?}");
    drop(one);
    let pools = tokio::time::timeout(Duration::from_secs(10), client.list_pools()).await??;
    assert_eq!(pools.len(), 1);
    server.shutdown().await
}

#[tokio::test]
async fn min_connections_open_in_parallel() -> anyhow::Result<()> {
    let db: TestDatabase = TestPg::database().await?;
    let proxy = FaultProxy::start(db.server_addr()?).await?;
    proxy.set_delay(Duration::from_millis(300));
    let server = TestServer::spawn().await?;
    let config = PoolConfigBuilder::new()
        .max_connections(8)
        .min_connections(6)
        .build();
    server
        .client
        .create_pool("parallel", &db.url_via(proxy.addr()), config)
        .await?;
    assert!(
        proxy.peak_delayed() >= 2,
        "connections were opened one after another (peak {})",
        proxy.peak_delayed()
    );
    let stats = server.client.get_pool_stats("parallel").await?;
    assert!(stats.connections >= 6, "{stats:?}");
    server.shutdown().await
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_disconnected() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let control = TestPg::database().await?;
    let server = TestServer::spawn_with(control, |c| {
        c.limits.http2_keepalive_interval = Duration::from_secs(1);
        c.limits.http2_keepalive_timeout = Duration::from_secs(1);
    })
    .await?;
    // A raw HTTP/2 client: the preface and an empty SETTINGS frame, then silence
    // (no SETTINGS ack, no PING ack).
    let mut socket = tokio::net::TcpStream::connect(server.addr).await?;
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent connection was kept open");
    // Frames: 3-byte length, type, flags, 4-byte stream id, payload.
    let mut frame_types = Vec::new();
    let mut at = 0;
    while at + 9 <= received.len() {
        let len = usize::from(received[at]) << 16
            | usize::from(received[at + 1]) << 8
            | usize::from(received[at + 2]);
        frame_types.push(received[at + 3]);
        at += 9 + len;
    }
    assert!(
        frame_types.contains(&6),
        "no PING was sent: {frame_types:?}"
    );
    // Others are served as before.
    server.client.list_pools().await?;
    server.shutdown().await
}

#[tokio::test]
async fn grpcurl_shows_the_field_at_fault() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let body = serde_json::json!({
        "name": "g",
        "database_url": db.url(),
        "config": {"statement_cache_capacity": 4294967295u64, "max_connections": 2, "min_connections": 1},
    })
    .to_string();
    let refused = poolplane_tests::grpcurl(
        server.addr,
        &["-d", &body],
        &["poolplane.v1.PoolService/CreatePool"],
    )
    .await?;
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("InvalidArgument")
            && refused
                .stderr
                .contains(r#""field":"config.statement_cache_capacity""#),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("is not recognized"),
        "{}",
        refused.stderr
    );
    server.client.list_pools().await?;
    server.shutdown().await
}
