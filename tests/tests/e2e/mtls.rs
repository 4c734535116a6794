//! Mutual TLS: with --tls-client-ca the server serves only clients presenting a
//! certificate signed by that CA — the real grpcurl (-cacert, -cert, -key), the
//! SDK and poolctl; a client without a certificate, one with a certificate of
//! another CA, and a plaintext client are refused cleanly, and the server keeps
//! serving.

use poolplane_client::PoolplaneClient;
use poolplane_server::TlsFiles;
use poolplane_server::grpc::auth::Role;
use poolplane_server::{Server, ServerConfig};
use poolplane_tests::{TestCa, TestPg, TestServer, built_binary, grpcurl, grpcurl_tls};

/// A server on a fresh control database, configured by `configure`.
async fn start(configure: impl FnOnce(&mut ServerConfig)) -> anyhow::Result<Server> {
    let control = TestPg::database().await?;
    let mut config = TestServer::config(&control);
    configure(&mut config);
    Ok(Server::start(config).await?)
}

#[tokio::test]
async fn only_clients_with_a_certificate_of_the_ca_get_through() -> anyhow::Result<()> {
    let ca = TestCa::new("poolplane-test")?;
    let server_cert = ca.issue("server", &["localhost", "127.0.0.1"])?;
    let client_cert = ca.issue("client", &["client.example"])?;
    let stranger_ca = TestCa::new("stranger")?;
    let stranger = stranger_ca.issue("stranger", &["client.example"])?;

    let server = start(|c| {
        c.tls = Some(TlsFiles {
            cert: server_cert.cert.clone(),
            key: server_cert.key.clone(),
            client_ca: Some(ca.ca_file.clone()),
            client_role: Role::Viewer,
        });
    })
    .await?;
    let addr = server.local_addr();
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let (ca_file, cert, key) = (
        path(&ca.ca_file),
        path(&client_cert.cert),
        path(&client_cert.key),
    );

    // grpcurl with the CA and a client certificate: served.
    let listed = grpcurl_tls(
        addr,
        &["-cacert", &ca_file, "-cert", &cert, "-key", &key],
        &["poolplane.v1.PoolService/ListPools"],
    )
    .await?;
    assert!(listed.success, "{listed:?}");
    // The certificate's role (viewer) applies: no creating pools.
    let create = grpcurl_tls(
        addr,
        &[
            "-cacert",
            &ca_file,
            "-cert",
            &cert,
            "-key",
            &key,
            "-d",
            r#"{"name": "x", "database_url": "postgres://u@127.0.0.1/db"}"#,
        ],
        &["poolplane.v1.PoolService/CreatePool"],
    )
    .await?;
    assert!(
        !create.success && create.stderr.contains("PermissionDenied"),
        "{create:?}"
    );
    // Without a client certificate, with another CA's, or in plaintext: refused.
    let no_cert = grpcurl_tls(
        addr,
        &["-connect-timeout", "3", "-cacert", &ca_file],
        &["poolplane.v1.PoolService/ListPools"],
    )
    .await?;
    assert!(!no_cert.success, "{no_cert:?}");
    let (other_cert, other_key) = (path(&stranger.cert), path(&stranger.key));
    let wrong_ca = grpcurl_tls(
        addr,
        &[
            "-connect-timeout",
            "3",
            "-cacert",
            &ca_file,
            "-cert",
            &other_cert,
            "-key",
            &other_key,
        ],
        &["poolplane.v1.PoolService/ListPools"],
    )
    .await?;
    assert!(!wrong_ca.success, "{wrong_ca:?}");
    let plain = grpcurl(
        addr,
        &["-connect-timeout", "3"],
        &["poolplane.v1.PoolService/ListPools"],
    )
    .await?;
    assert!(!plain.success, "{plain:?}");

    // The SDK: with the identity it works; without, or with http://, it does not.
    let client = PoolplaneClient::builder(addr.to_string())
        .tls_ca_file(&ca.ca_file)
        .tls_domain("localhost")
        .tls_client_identity_files(&client_cert.cert, &client_cert.key)
        .connect()
        .await?;
    assert!(client.list_pools().await?.is_empty());
    let without = async {
        PoolplaneClient::builder(addr.to_string())
            .tls_ca_file(&ca.ca_file)
            .tls_domain("localhost")
            .connect()
            .await?
            .list_pools()
            .await
    };
    assert!(without.await.is_err());
    let http = PoolplaneClient::builder(format!("http://{addr}"))
        .tls_ca_file(&ca.ca_file)
        .connect()
        .await
        .expect_err("http:// with TLS options");
    assert!(http.to_string().contains("plaintext (http://)"), "{http}");

    // poolctl presents the certificate with --tls-cert / --tls-key.
    let poolctl = tokio::process::Command::new(built_binary("poolctl")?)
        .args(["--server", &addr.to_string(), "--tls-domain", "localhost"])
        .args(["--tls-ca", &ca_file, "--tls-cert", &cert, "--tls-key", &key])
        .args(["pools", "list", "--output", "json"])
        .output()
        .await?;
    assert!(
        poolctl.status.success(),
        "{}",
        String::from_utf8_lossy(&poolctl.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&poolctl.stdout).trim(), "[]");

    // Still serving after the refusals.
    assert!(client.list_pools().await?.is_empty());
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn with_a_tokens_file_mutual_tls_and_a_token_are_both_needed() -> anyhow::Result<()> {
    let ca = TestCa::new("poolplane-test")?;
    let server_cert = ca.issue("server", &["localhost"])?;
    let client_cert = ca.issue("client", &["client.example"])?;
    let tokens = tempfile::NamedTempFile::new()?;
    std::fs::write(tokens.path(), "admin-token-for-mtls-000 admin\n")?;
    let server = start(|c| {
        c.tls = Some(TlsFiles {
            cert: server_cert.cert.clone(),
            key: server_cert.key.clone(),
            client_ca: Some(ca.ca_file.clone()),
            client_role: Role::Admin,
        });
        c.auth_tokens_file = Some(tokens.path().to_owned());
    })
    .await?;
    let connect = |token: Option<&str>| {
        let mut builder = PoolplaneClient::builder(server.local_addr().to_string())
            .tls_ca_file(&ca.ca_file)
            .tls_domain("localhost")
            .tls_client_identity_files(&client_cert.cert, &client_cert.key);
        if let Some(token) = token {
            builder = builder.bearer_token(token);
        }
        builder.connect()
    };
    let anonymous = connect(None).await?;
    let error = anonymous.list_pools().await.expect_err("no token");
    assert_eq!(error.code(), tonic::Code::Unauthenticated, "{error}");
    let admin = connect(Some("admin-token-for-mtls-000")).await?;
    assert!(admin.list_pools().await?.is_empty());
    server.shutdown().await?;
    Ok(())
}
