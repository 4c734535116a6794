//! TLS to databases with libpq's meanings: a cluster with `ssl = on` and a
//! certificate from a CA made here; sslmode require / verify-ca / verify-full
//! connect (pg_stat_ssl shows every backend encrypted) and refuse a wrong name or
//! another CA; require against a cluster without TLS fails; disable stays
//! plaintext; client certificates (`hostssl … cert`); channel binding; the control
//! database over verify-full; a multi-host URL with target_session_attrs that
//! follows the writable server.

use std::time::Duration;

use poolplane::{EmbeddedPg, EmbeddedPgOptions, EmbeddedTls};
use poolplane_client::proto::PoolConfig;
use poolplane_tests::{TestCa, TestPg, TestServer, connect, wait_until};
use tokio::sync::OnceCell;
use tonic::Code;

/// A cluster serving TLS with a certificate of [`ca`] for localhost and
/// 127.0.0.1, accepting client certificates of the same CA for `certuser`.
struct TlsCluster {
    pg: EmbeddedPg,
    ca: TestCa,
}

static CLUSTER: OnceCell<TlsCluster> = OnceCell::const_new();

async fn cluster() -> anyhow::Result<&'static TlsCluster> {
    CLUSTER
        .get_or_try_init(|| async {
            let ca = TestCa::new("pg-test")?;
            let server = ca.issue("pg-server", &["localhost", "127.0.0.1"])?;
            let pg = EmbeddedPg::start(EmbeddedPgOptions {
                tls: Some(EmbeddedTls {
                    cert_pem: std::fs::read_to_string(&server.cert)?,
                    key_pem: std::fs::read_to_string(&server.key)?,
                    client_ca_pem: Some(std::fs::read_to_string(&ca.ca_file)?),
                }),
                hba: Some(vec![
                    "local all all scram-sha-256".into(),
                    "hostssl all certuser 127.0.0.1/32 cert".into(),
                    "hostnossl all tlsonly 127.0.0.1/32 reject".into(),
                    "host all all 127.0.0.1/32 scram-sha-256".into(),
                    "host all all ::1/128 scram-sha-256".into(),
                ]),
                ..EmbeddedPgOptions::default()
            })
            .await?;
            let admin = connect(&pg.url("postgres")).await?;
            admin
                .batch_execute(
                    "CREATE ROLE certuser LOGIN; CREATE ROLE scramuser LOGIN PASSWORD 'scram-pw-1'; \
                     CREATE ROLE tlsonly LOGIN PASSWORD 'tls-pw-1'",
                )
                .await?;
            anyhow::Ok(TlsCluster { pg, ca })
        })
        .await
}

fn small() -> PoolConfig {
    PoolConfig {
        acquire_timeout_secs: Some(5),
        ..poolplane_tests::proto_config(2, 3)
    }
}

/// (backends of pool `name`, those encrypted), from pg_stat_ssl.
async fn ssl_backends(admin: &tokio_postgres::Client, name: &str) -> anyhow::Result<(i64, i64)> {
    let row = admin
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
            &[&format!("poolplane:{name}")],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

#[tokio::test]
async fn sslmodes_verify_as_libpq_does() -> anyhow::Result<()> {
    let tls = cluster().await?;
    let admin = connect(&tls.pg.url("postgres")).await?;
    let server = TestServer::spawn().await?;
    let client = &server.client;
    let port = tls.pg.port();
    let password = tls.pg.password();
    let ca = tls.ca.ca_file.display().to_string();
    let url = |host: &str, options: &str| {
        format!("postgres://postgres:{password}@{host}:{port}/postgres?{options}")
    };

    for (name, options) in [
        ("require", "sslmode=require".to_owned()),
        ("verify-ca", format!("sslmode=verify-ca&sslrootcert={ca}")),
        (
            "verify-full",
            format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        ("prefer", String::new()),
    ] {
        client
            .create_pool(name, &url("localhost", &options), small())
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let (all, encrypted) = ssl_backends(&admin, name).await?;
        assert!(
            all >= 2 && encrypted == all,
            "{name}: {encrypted} of {all} encrypted"
        );
    }
    client
        .create_pool("disable", &url("localhost", "sslmode=disable"), small())
        .await?;
    assert_eq!(
        ssl_backends(&admin, "disable").await?.1,
        0,
        "disable used TLS"
    );

    // GetPool, the stats and /metrics say so, with the protocol, cipher and host.
    let pool = client.get_pool("verify-full").await?;
    let security = pool.security.expect("security");
    assert!(security.tls_connections >= 2, "{security:?}");
    assert_eq!(security.plaintext_connections, 0, "{security:?}");
    assert!(security.tls_version.starts_with("TLSv1."), "{security:?}");
    assert!(!security.tls_cipher.is_empty(), "{security:?}");
    assert_eq!(security.hosts.len(), 1, "{security:?}");
    assert_eq!(security.hosts[0].host, format!("127.0.0.1:{port}"));
    let plain = client
        .get_pool_stats("disable")
        .await?
        .security
        .expect("security");
    assert_eq!(plain.tls_connections, 0, "{plain:?}");
    assert!(plain.plaintext_connections >= 2, "{plain:?}");
    let exposition = poolplane_tests::http_get(server.server().metrics_addr(), "/metrics").await?;
    let tls_gauge = |pool: &str| {
        poolplane_tests::labelled_value(
            &exposition,
            "poolplane_connection_tls",
            &[("db_client_connection_pool_name", pool)],
        )
    };
    assert!(
        tls_gauge("verify-full").is_some_and(|v| v >= 2.0),
        "{exposition}"
    );
    assert_eq!(tls_gauge("disable"), Some(0.0));

    // verify-full against a certificate for another name; verify-ca with another CA.
    let wrong_name = format!(
        "host=wrong.example hostaddr=127.0.0.1 port={port} user=postgres password={password} \
         dbname=postgres sslmode=verify-full sslrootcert={ca}"
    );
    let error = client
        .create_pool("wrong-name", &wrong_name, small())
        .await
        .expect_err("the name does not match");
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    assert!(
        error.to_string().contains("certificate not valid for name"),
        "{error}"
    );
    // verify-ca does not check the name: the same target connects.
    let ca_only = wrong_name.replace("verify-full", "verify-ca");
    client.create_pool("ca-only", &ca_only, small()).await?;
    let other = TestCa::new("other")?;
    let error = client
        .create_pool(
            "other-ca",
            &url(
                "localhost",
                &format!("sslmode=verify-ca&sslrootcert={}", other.ca_file.display()),
            ),
            small(),
        )
        .await
        .expect_err("another CA");
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");

    // A missing root file: INVALID_ARGUMENT naming the option, not the path.
    let error = client
        .create_pool(
            "missing",
            &url(
                "localhost",
                "sslmode=verify-full&sslrootcert=/nonexistent/private-dir/ca.pem",
            ),
            small(),
        )
        .await
        .expect_err("no such file");
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    assert!(error.to_string().contains("`sslrootcert`"), "{error}");
    assert!(!error.to_string().contains("private-dir"), "{error}");

    // require against a cluster without TLS (the shared test cluster).
    let plain = TestPg::database().await?;
    let error = client
        .create_pool(
            "no-tls-here",
            &format!("{}?sslmode=require", plain.url()),
            small(),
        )
        .await
        .expect_err("the server has no TLS");
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    assert!(error.to_string().contains("TLS"), "{error}");
    // An option poolplane does not support is refused by name.
    let error = client
        .create_pool("unknown", &url("localhost", "sslcompression=1"), small())
        .await
        .expect_err("unknown option");
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    assert!(error.to_string().contains("sslcompression"), "{error}");
    server.shutdown().await
}

#[tokio::test]
async fn client_certificates_and_channel_binding() -> anyhow::Result<()> {
    let tls = cluster().await?;
    let server = TestServer::spawn().await?;
    let client = &server.client;
    let port = tls.pg.port();
    let ca = tls.ca.ca_file.display().to_string();
    let issued = tls.ca.issue("certuser", &["certuser"])?;
    let cert_url = |extra: &str| {
        format!(
            "postgres://certuser@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}{extra}"
        )
    };
    client
        .create_pool(
            "with-cert",
            &cert_url(&format!(
                "&sslcert={}&sslkey={}",
                issued.cert.display(),
                issued.key.display()
            )),
            small(),
        )
        .await?;
    let error = client
        .create_pool("without-cert", &cert_url(""), small())
        .await
        .expect_err("cert authentication needs a certificate");
    assert_eq!(error.code(), Code::Unavailable, "{error}");

    // allow: plaintext first, TLS when the server refuses plaintext.
    let tls_only = |mode: &str| {
        format!("postgres://tlsonly:tls-pw-1@127.0.0.1:{port}/postgres?sslmode={mode}")
    };
    client
        .create_pool("allowed", &tls_only("allow"), small())
        .await?;
    let error = client
        .create_pool("disabled", &tls_only("disable"), small())
        .await
        .expect_err("plaintext is rejected for this user");
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    assert_eq!(error.sqlstate().as_deref(), Some("28000"), "{error}");
    // target_session_attrs values the driver does not have are refused by name.
    let error = client
        .create_pool(
            "standby",
            &format!(
                "{}&target_session_attrs=prefer-standby",
                tls_only("require")
            ),
            small(),
        )
        .await
        .expect_err("not supported");
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    assert!(
        error.to_string().contains("target_session_attrs"),
        "{error}"
    );

    // SCRAM-SHA-256-PLUS over TLS; refused without TLS.
    let scram = |options: &str| {
        format!("postgres://scramuser:scram-pw-1@127.0.0.1:{port}/postgres?{options}")
    };
    client
        .create_pool(
            "bound",
            &scram("sslmode=require&channel_binding=require"),
            small(),
        )
        .await?;
    let error = client
        .create_pool(
            "unbound",
            &scram("sslmode=disable&channel_binding=require"),
            small(),
        )
        .await
        .expect_err("channel binding needs TLS");
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    server.shutdown().await
}

#[tokio::test]
async fn the_control_database_over_verify_full() -> anyhow::Result<()> {
    let tls = cluster().await?;
    let admin = connect(&tls.pg.url("postgres")).await?;
    admin.batch_execute("CREATE DATABASE control_tls").await?;
    let url = format!(
        "postgres://postgres:{}@localhost:{}/control_tls?sslmode=verify-full&sslrootcert={}",
        tls.pg.password(),
        tls.pg.port(),
        tls.ca.ca_file.display()
    );
    let control = TestPg::database().await?;
    let server = TestServer::spawn_with(control, |c| c.database_url = Some(url)).await?;
    let db = TestPg::database().await?;
    server
        .client
        .create_pool("stored", db.url(), small())
        .await?;
    let encrypted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = 'control_tls' AND s.ssl",
            &[],
        )
        .await?
        .get(0);
    assert!(encrypted >= 1, "the control store is not on TLS");
    let stored: i64 = connect(&format!(
        "postgres://postgres:{}@127.0.0.1:{}/control_tls",
        tls.pg.password(),
        tls.pg.port()
    ))
    .await?
    .query_one("SELECT count(*) FROM pool_definitions", &[])
    .await?
    .get(0);
    assert_eq!(stored, 1);
    server.shutdown().await
}

#[tokio::test]
async fn a_multi_host_pool_follows_the_writable_server() -> anyhow::Result<()> {
    let first = cluster().await?;
    let second = EmbeddedPg::start_temporary().await?;
    for pg in [&first.pg, &second] {
        let admin = connect(&pg.url("postgres")).await?;
        admin
            .batch_execute("CREATE ROLE app LOGIN PASSWORD 'app-pw-1'")
            .await?;
        admin
            .batch_execute("CREATE DATABASE failover OWNER app")
            .await?;
    }
    let read_only = |pg: &EmbeddedPg, on: bool| {
        let url = pg.url("postgres");
        async move {
            connect(&url)
                .await?
                .batch_execute(&format!(
                    "ALTER DATABASE failover SET default_transaction_read_only = {on}"
                ))
                .await?;
            anyhow::Ok(())
        }
    };
    read_only(&second, true).await?;
    let (a, b) = (first.pg.port(), second.port());
    let url = format!(
        "postgres://app:app-pw-1@127.0.0.1:{a},127.0.0.1:{b}/failover?target_session_attrs=read-write"
    );
    let server = TestServer::spawn().await?;
    let config = PoolConfig {
        health_check_interval_secs: Some(2),
        health_check_timeout_secs: Some(1),
        validation_idle_threshold_ms: Some(0),
        ..small()
    };
    server.client.create_pool("ha", &url, config).await?;
    let pool = server.server().registry().pool("ha")?;
    let port_now = || async {
        let row = pool.query_one("SELECT inet_server_port()", &[]).await?;
        anyhow::Ok(row.get::<_, Option<i32>>(0))
    };
    assert_eq!(port_now().await?, Some(i32::from(a)));

    // The roles swap: the first becomes read-only, the second writable, and the
    // first's connections are cut.
    read_only(&first.pg, true).await?;
    read_only(&second, false).await?;
    connect(&first.pg.url("postgres"))
        .await?
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'failover'",
        )
        .await?;
    wait_until(
        Duration::from_secs(4),
        "queries go to the new primary",
        || async { port_now().await.ok() == Some(Some(i32::from(b))) },
    )
    .await?;
    pool.execute("CREATE TABLE IF NOT EXISTS written (id int)", &[])
        .await?;
    let hosts = server
        .client
        .get_pool("ha")
        .await?
        .security
        .expect("security")
        .hosts;
    assert!(
        hosts.iter().any(|h| h.host == format!("127.0.0.1:{b}")),
        "{hosts:?}"
    );
    // The health check follows it too.
    let health = server.client.get_health_status("ha").await?;
    assert!(health.is_healthy, "{health:?}");
    read_only(&first.pg, false).await?;
    server.shutdown().await
}
