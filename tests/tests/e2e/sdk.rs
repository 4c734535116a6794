//! The SDK's own features against a real server: the builder (token, timeout,
//! retries on UNAVAILABLE), the config builder, and a watch that resumes across a
//! server restart.

use std::time::Duration;

use poolplane_client::{PoolConfigBuilder, PoolplaneClient};
use poolplane_tests::{TestPg, TestServer};
use tokio_stream::StreamExt as _;

#[tokio::test]
async fn a_resuming_watch_survives_a_server_restart() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let first = TestServer::spawn_on(control.clone()).await?;
    let addr = first.addr;
    let config = PoolConfigBuilder::development()
        .max_connections(2)
        .min_connections(1)
        .build();
    first
        .client
        .create_pool("primary", db.url(), config)
        .await?;
    let watch = first.client.watch_pool_stats_resuming(&["primary"], 100);
    tokio::pin!(watch);
    for _ in 0..2 {
        let stats = watch.next().await.expect("a snapshot")?;
        assert_eq!(stats.pool_name, "primary");
    }
    first.shutdown().await?;
    let second = TestServer::spawn_with(control, |c| c.listen = addr).await?;
    let resumed = match tokio::time::timeout(Duration::from_secs(15), watch.next()).await? {
        Some(Ok(stats)) => stats,
        Some(Err(e)) => anyhow::bail!("the watch failed: {e}"),
        None => anyhow::bail!("the watch ended"),
    };
    assert_eq!(resumed.pool_name, "primary");
    assert_eq!(resumed.max_connections, 2, "the restored pool");
    second.shutdown().await
}

#[tokio::test]
async fn the_builder_sends_a_token_sets_deadlines_and_retries_reads() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let first = TestServer::spawn_on(control.clone()).await?;
    let addr = first.addr;
    let client = PoolplaneClient::builder(addr.to_string())
        .bearer_token("s3cr3t-token")
        .request_timeout(Duration::from_secs(5))
        .retries(6)
        .connect()
        .await?;
    assert!(client.list_pools().await?.is_empty());
    assert!(
        PoolplaneClient::builder(addr.to_string())
            .bearer_token("bad\ntoken")
            .connect()
            .await
            .is_err()
    );

    // The deadline goes with the call: a statement slower than it is cut short.
    let db = TestPg::database().await?;
    client
        .create_pool("slow", db.url(), poolplane_tests::proto_config(1, 2))
        .await?;
    let hasty = PoolplaneClient::builder(addr.to_string())
        .request_timeout(Duration::from_millis(300))
        .connect()
        .await?;
    let started = std::time::Instant::now();
    let late = hasty
        .query("slow", "SELECT pg_sleep(5)", vec![])
        .await
        .expect_err("past the deadline");
    let waited = started.elapsed();
    assert!(
        matches!(
            late.status().map(tonic::Status::code),
            Some(tonic::Code::DeadlineExceeded | tonic::Code::Cancelled)
        ),
        "{late:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "waited {waited:?} for a 300 ms deadline"
    );
    // Within its own (longer) deadline the same call succeeds.
    client.query("slow", "SELECT pg_sleep(0.5)", vec![]).await?;
    client.delete_pool("slow").await?;

    // The server goes away and comes back on the same address: a read retries
    // through the gap (a client without retries sees UNAVAILABLE).
    let no_retries = PoolplaneClient::connect(addr.to_string()).await?;
    first.shutdown().await?;
    let gap = no_retries
        .list_pools()
        .await
        .expect_err("the server is down");
    assert_eq!(
        gap.status().map(tonic::Status::code),
        Some(tonic::Code::Unavailable)
    );
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        TestServer::spawn_with(control, |c| c.listen = addr).await
    });
    let pools = client.list_pools().await?;
    assert!(pools.is_empty());
    restart.await??.shutdown().await
}

#[test]
fn the_config_builder_mirrors_the_pool_config() {
    let config = PoolConfigBuilder::production()
        .max_connections(40)
        .load_threshold_high(0.9)
        .connection_warmup_queries(["SET application_name = 'app'"])
        .enable_dynamic_sizing(false)
        .validation_query("SELECT 2")
        .build();
    assert_eq!(config.preset.as_deref(), Some("production"));
    assert_eq!(config.max_connections, Some(40));
    assert_eq!(config.load_threshold_high, Some(0.9));
    assert_eq!(config.enable_dynamic_sizing, Some(false));
    assert_eq!(config.validation_query.as_deref(), Some("SELECT 2"));
    assert_eq!(
        config.connection_warmup_queries.map(|w| w.queries),
        Some(vec!["SET application_name = 'app'".to_owned()])
    );
    assert_eq!(config.min_connections, None, "unset: the preset's value");
}

#[tokio::test]
async fn errors_expose_field_violations_and_the_sqlstate() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let missing_database = db.url().replace(&db.name, "no_such_database");
    let error = server
        .client
        .create_pool("ghost", &missing_database, PoolConfigBuilder::new().build())
        .await
        .expect_err("the database does not exist");
    assert_eq!(
        error.status().map(tonic::Status::code),
        Some(tonic::Code::Unavailable)
    );
    assert_eq!(error.sqlstate().as_deref(), Some("3D000"), "{error}");

    let bad = PoolConfigBuilder::new().max_connections(0).build();
    let error = server
        .client
        .create_pool("Bad", db.url(), bad)
        .await
        .expect_err("invalid");
    let fields: Vec<String> = error
        .field_violations()
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        fields,
        ["name", "config.max_connections", "config.min_connections"]
    );
    assert_eq!(error.sqlstate(), None);
    server.shutdown().await
}

#[tokio::test]
async fn tls_with_a_private_ca_for_the_sdk_and_poolctl() -> anyhow::Result<()> {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, issued.cert.pem())?;
    std::fs::write(&key, issued.signing_key.serialize_pem())?;
    let control = TestPg::database().await?;
    let mut config = TestServer::config(&control);
    config.tls = Some(poolplane_server::TlsFiles {
        cert: cert.clone(),
        key,
        client_ca: None,
        client_role: poolplane_server::grpc::auth::Role::Admin,
    });
    let server = poolplane_server::Server::start(config).await?;
    let addr = server.local_addr().to_string();

    let client = PoolplaneClient::builder(&addr)
        .tls_ca_file(&cert)
        .tls_domain("localhost")
        .connect()
        .await?;
    assert!(client.list_pools().await?.is_empty());

    // Plaintext does not get through, nor does TLS without trusting the CA.
    let plain = async { PoolplaneClient::connect(&addr).await?.list_pools().await };
    assert!(plain.await.is_err());
    let untrusted = async {
        PoolplaneClient::builder(&addr)
            .tls_domain("localhost")
            .connect()
            .await?
            .list_pools()
            .await
    };
    assert!(untrusted.await.is_err());

    let poolctl = tokio::process::Command::new(poolplane_tests::built_binary("poolctl")?)
        .args(["--server", &addr, "--tls-domain", "localhost", "--tls-ca"])
        .arg(&cert)
        .args(["pools", "list", "--output", "json"])
        .output()
        .await?;
    assert!(
        poolctl.status.success(),
        "{}",
        String::from_utf8_lossy(&poolctl.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&poolctl.stdout).trim(), "[]");
    server.shutdown().await?;
    Ok(())
}
