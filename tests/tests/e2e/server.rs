//! The in-process server over a real control database: the SDK, both reflection
//! versions, health, and the stored definitions it lists.

use poolplane_tests::{TestPg, TestServer, grpcurl, wait_until};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn fresh_server_lists_no_pools() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    assert!(server.client.list_pools().await?.is_empty());
    server.shutdown().await
}

#[tokio::test]
async fn migrations_are_idempotent_across_restarts() -> anyhow::Result<()> {
    let first = TestServer::spawn().await?;
    let control = first.control.clone();
    first.shutdown().await?;
    let second = TestServer::spawn_on(control).await?;
    let history = second.control.connect().await?;
    let applied: i64 = history
        .query_one("SELECT count(*) FROM poolplane_schema_history", &[])
        .await?
        .get(0);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert_eq!(
        applied as usize, files,
        "each migration applied exactly once"
    );
    second.shutdown().await
}

#[tokio::test]
async fn grpcurl_lists_describes_and_checks_health() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let list = grpcurl(server.addr, &[], &["list"]).await?;
    assert!(list.success, "{}", list.stderr);
    for service in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "poolplane.v1.PoolService",
    ] {
        assert!(
            list.stdout.lines().any(|l| l == service),
            "{service} missing:\n{}",
            list.stdout
        );
    }
    let describe = grpcurl(server.addr, &[], &["describe", "poolplane.v1.PoolService"]).await?;
    assert!(describe.success, "{}", describe.stderr);
    assert!(
        describe.stdout.contains("rpc ListPools"),
        "{}",
        describe.stdout
    );

    let health = grpcurl(server.addr, &[], &["grpc.health.v1.Health/Check"]).await?;
    assert!(health.success, "{}", health.stderr);
    assert!(health.stdout.contains("\"SERVING\""), "{}", health.stdout);
    let pool_service = grpcurl(
        server.addr,
        &["-d", r#"{"service":"poolplane.v1.PoolService"}"#],
        &["grpc.health.v1.Health/Check"],
    )
    .await?;
    assert!(
        pool_service.stdout.contains("\"SERVING\""),
        "{}",
        pool_service.stdout
    );
    server.shutdown().await
}

#[tokio::test]
async fn reflection_v1_lists_every_service() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let channel = server.channel().await?;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let response = responses.message().await?.expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        anyhow::bail!("unexpected reflection response: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["grpc.health.v1.Health", "poolplane.v1.PoolService"] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }
    server.shutdown().await
}

/// A start that fails on an address in use leaves nothing behind in the embedding
/// process: no restored pool keeps its connections, no background task runs.
#[tokio::test]
async fn a_failed_start_leaves_no_pool_or_connection_behind() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let first = TestServer::spawn_on(control.clone()).await?;
    first
        .client
        .create_pool(
            "failed_start",
            db.url(),
            poolplane_tests::proto_config(3, 4),
        )
        .await?;
    first.shutdown().await?;
    let admin = db.connect().await?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let in_use = taken.local_addr()?;
    let mut config = TestServer::config(&control);
    config.metrics_listen = in_use;
    let refused = poolplane_server::Server::start(config).await;
    assert!(refused.is_err(), "the metrics address is in use");
    // The stored pool (min 3) was not restored, or was closed with the start.
    wait_until(
        std::time::Duration::from_secs(5),
        "no backend of the stored pool",
        || async {
            poolplane_tests::pool_backends(&admin, "failed_start")
                .await
                .ok()
                == Some(0)
        },
    )
    .await?;
    // And stays so: nothing reconnects it in the background.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        poolplane_tests::pool_backends(&admin, "failed_start").await?,
        0
    );
    drop(taken);
    Ok(())
}
