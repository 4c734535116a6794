//! `--allowed-db-hosts`: a CreatePool toward an unlisted host, or toward a Unix
//! socket whose directory is not listed, is PERMISSION_DENIED before any connection
//! is attempted; listed targets work; without a list every TCP host is allowed and
//! sockets are refused.

use std::time::Duration;

use poolplane_tests::{TestPg, TestServer};
use tokio::net::{TcpListener, UnixListener};
use tonic::Code;

/// Asserts nobody connected to `listener` (a refused target is never dialled: the
/// refusal comes before any connection, so none can still be on its way).
async fn never_dialled_tcp(listener: &TcpListener) {
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the refused target was dialled");
}

async fn never_dialled_unix(listener: &UnixListener) {
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the refused socket was dialled");
}

fn small() -> poolplane_client::proto::PoolConfig {
    poolplane_tests::proto_config(1, 2)
}

#[tokio::test]
async fn unlisted_hosts_and_sockets_are_refused_without_a_connection() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let server = TestServer::spawn_with(control, |c| {
        c.allowed_db_hosts = Some(vec![
            "10.255.255.0/24".into(),
            "db.invalid:5432".into(),
            "/nonexistent/pg".into(),
        ]);
    })
    .await?;
    let client = &server.client;

    let trap = TcpListener::bind("127.0.0.1:0").await?;
    let port = trap.local_addr()?.port();
    let error = client
        .create_pool(
            "scan",
            &format!("postgres://u:pw@127.0.0.1:{port}/db"),
            small(),
        )
        .await
        .expect_err("not allowed");
    assert_eq!(error.code(), Code::PermissionDenied, "{error}");
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    never_dialled_tcp(&trap).await;

    // A listed name on another port is not the listed target either.
    let error = client
        .create_pool("other-port", "postgres://u@db.invalid:6432/db", small())
        .await
        .expect_err("not allowed");
    assert_eq!(error.code(), Code::PermissionDenied, "{error}");

    // Every host of a multi-host URL is checked.
    let error = client
        .create_pool(
            "multi",
            &format!("postgres://u@10.255.255.1:5432,127.0.0.1:{port}/db"),
            small(),
        )
        .await
        .expect_err("one host not allowed");
    assert_eq!(error.code(), Code::PermissionDenied, "{error}");
    never_dialled_tcp(&trap).await;

    // A Unix socket in an unlisted directory.
    let dir = tempfile::tempdir()?;
    let socket = UnixListener::bind(dir.path().join(".s.PGSQL.5432"))?;
    let error = client
        .create_pool(
            "local",
            &format!(
                "host={} user=postgres dbname=postgres",
                dir.path().display()
            ),
            small(),
        )
        .await
        .expect_err("socket not allowed");
    assert_eq!(error.code(), Code::PermissionDenied, "{error}");
    never_dialled_unix(&socket).await;

    // Nothing was stored and the server serves on.
    assert!(client.list_pools().await?.is_empty());
    server.shutdown().await
}

#[tokio::test]
async fn listed_targets_work_and_no_list_refuses_only_sockets() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let control = TestPg::database().await?;
    let server = TestServer::spawn_with(control, |c| {
        c.allowed_db_hosts = Some(vec!["127.0.0.0/8".into()]);
    })
    .await?;
    let pool = server
        .client
        .create_pool("listed", db.url(), small())
        .await?;
    assert_eq!(pool.name, "listed");
    server.shutdown().await?;

    // No list: any TCP host (the test database), but no Unix socket.
    let server = TestServer::spawn().await?;
    server.client.create_pool("tcp", db.url(), small()).await?;
    let dir = tempfile::tempdir()?;
    let socket = UnixListener::bind(dir.path().join(".s.PGSQL.5432"))?;
    let error = server
        .client
        .create_pool(
            "socket",
            &format!("postgresql://postgres@{}/postgres", encode(dir.path())),
            small(),
        )
        .await
        .expect_err("sockets need a listed directory");
    assert_eq!(error.code(), Code::PermissionDenied, "{error}");
    assert!(error.to_string().contains("unix socket in"), "{error}");
    never_dialled_unix(&socket).await;
    assert_eq!(server.client.list_pools().await?.len(), 1);
    server.shutdown().await
}

/// A socket directory as a URL host (`/` percent-encoded).
fn encode(path: &std::path::Path) -> String {
    path.display().to_string().replace('/', "%2F")
}
