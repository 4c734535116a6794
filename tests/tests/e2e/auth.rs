//! Authentication and roles: every RPC × { no token, unknown token, viewer,
//! operator, admin } gets the expected code; SIGHUP picks up a changed tokens file
//! (and keeps the old one when the new one is malformed); a non-loopback listen
//! address without authentication refuses to start.

use std::time::Duration;

use poolplane_proto::v1 as pb;
use poolplane_proto::v1::pool_service_client::PoolServiceClient;
use poolplane_tests::{ServerProcess, TestPg, TestServer, grpcurl, wait_until};
use tonic::Code;
use tonic::transport::Channel;

const VIEWER: &str = "viewer-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const ADMIN: &str = "admin-token-0123456789abc";

fn tokens_file(dir: &tempfile::TempDir, text: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.path().join("tokens");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    request
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// The role each call needs, in the order [`call`] knows them.
const CALLS: &[(&str, Role)] = &[
    ("ListPools", Role::Viewer),
    ("GetPool", Role::Viewer),
    ("GetPoolStats", Role::Viewer),
    ("GetHealthStatus", Role::Viewer),
    ("GetStatementCacheStats", Role::Viewer),
    ("WatchPoolStats", Role::Viewer),
    ("WatchHealthEvents", Role::Viewer),
    ("GetPerformanceSummary", Role::Viewer),
    ("GetMetricsHistory", Role::Viewer),
    ("ListScalingEvents", Role::Viewer),
    ("RunLoadTest", Role::Operator),
    ("OptimizePools", Role::Operator),
    ("RunLoadTest read_write", Role::Admin),
    ("OptimizePools apply", Role::Admin),
    ("CreatePool", Role::Admin),
    ("UpdatePoolConfig", Role::Admin),
    ("DeletePool", Role::Admin),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Viewer,
    Operator,
    Admin,
}

/// Makes one call as `token`; `tag` names what it creates (so that the callers'
/// creations do not collide).
async fn call(
    client: &mut PoolServiceClient<Channel>,
    db_url: &str,
    method: &str,
    token: Option<&str>,
    tag: &str,
) -> Code {
    let pool = || "shared".to_owned();
    let load_test = |read_write| pb::RunLoadTestRequest {
        pool_name: pool(),
        concurrency: 1,
        duration_secs: 1,
        read_write,
        ..Default::default()
    };
    match method {
        "ListPools" => code(
            client
                .list_pools(request(pb::ListPoolsRequest {}, token))
                .await,
        ),
        "GetPool" => code(
            client
                .get_pool(request(pb::GetPoolRequest { name: pool() }, token))
                .await,
        ),
        "GetPoolStats" => code(
            client
                .get_pool_stats(request(
                    pb::GetPoolStatsRequest {
                        pool_name: pool(),
                        ..Default::default()
                    },
                    token,
                ))
                .await,
        ),
        "GetHealthStatus" => code(
            client
                .get_health_status(request(
                    pb::GetHealthStatusRequest { pool_name: pool() },
                    token,
                ))
                .await,
        ),
        "GetStatementCacheStats" => code(
            client
                .get_statement_cache_stats(request(
                    pb::GetStatementCacheStatsRequest { pool_name: pool() },
                    token,
                ))
                .await,
        ),
        "WatchPoolStats" => {
            let watch = client
                .watch_pool_stats(request(
                    pb::WatchPoolStatsRequest {
                        pool_names: vec![pool()],
                        interval_ms: 100,
                        group: false,
                    },
                    token,
                ))
                .await;
            match watch {
                Ok(stream) => code(stream.into_inner().message().await),
                Err(status) => status.code(),
            }
        }
        "WatchHealthEvents" => {
            let watch = client
                .watch_health_events(request(
                    pb::WatchHealthEventsRequest {
                        pool_names: vec![pool()],
                    },
                    token,
                ))
                .await;
            match watch {
                Ok(stream) => code(stream.into_inner().message().await),
                Err(status) => status.code(),
            }
        }
        "GetPerformanceSummary" => code(
            client
                .get_performance_summary(request(
                    pb::GetPerformanceSummaryRequest { pool_name: pool() },
                    token,
                ))
                .await,
        ),
        "GetMetricsHistory" => code(
            client
                .get_metrics_history(request(
                    pb::GetMetricsHistoryRequest {
                        pool_name: pool(),
                        ..Default::default()
                    },
                    token,
                ))
                .await,
        ),
        "ListScalingEvents" => code(
            client
                .list_scaling_events(request(
                    pb::ListScalingEventsRequest {
                        pool_name: pool(),
                        limit: 5,
                    },
                    token,
                ))
                .await,
        ),
        "RunLoadTest" | "RunLoadTest read_write" => {
            let test = client
                .run_load_test(request(load_test(method.ends_with("read_write")), token))
                .await;
            match test {
                // Read to the end: the test finishes before the next one starts.
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(_)) => {}
                            Ok(None) => break Code::Ok,
                            Err(status) => break status.code(),
                        }
                    }
                }
                Err(status) => status.code(),
            }
        }
        "OptimizePools" | "OptimizePools apply" => code(
            client
                .optimize_pools(request(
                    pb::OptimizePoolsRequest {
                        pool_names: vec![pool()],
                        apply: method.ends_with("apply"),
                    },
                    token,
                ))
                .await,
        ),
        "CreatePool" => code(
            client
                .create_pool(request(
                    pb::CreatePoolRequest {
                        name: format!("made-{tag}"),
                        database_url: db_url.to_owned(),
                        config: Some(small_config()),
                    },
                    token,
                ))
                .await,
        ),
        "UpdatePoolConfig" => code(
            client
                .update_pool_config(request(
                    pb::UpdatePoolConfigRequest {
                        name: pool(),
                        config: Some(pb::PoolConfig {
                            statement_cache_capacity: Some(64),
                            ..Default::default()
                        }),
                    },
                    token,
                ))
                .await,
        ),
        "DeletePool" => code(
            client
                .delete_pool(request(
                    pb::DeletePoolRequest {
                        name: format!("made-{tag}"),
                    },
                    token,
                ))
                .await,
        ),
        other => panic!("no call {other}"),
    }
}

fn small_config() -> pb::PoolConfig {
    poolplane_tests::proto_config(1, 3)
}

#[tokio::test]
async fn every_rpc_by_every_kind_of_caller() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = tokens_file(
        &dir,
        &format!(
            "# roles for the matrix\n{VIEWER} viewer\n{OPERATOR} operator # ops\n{ADMIN} admin\n"
        ),
    )?;
    let control = TestPg::database().await?;
    let server = TestServer::spawn_with(control, |c| c.auth_tokens_file = Some(tokens)).await?;
    let db = TestPg::database().await?;
    let mut client = PoolServiceClient::connect(format!("http://{}", server.addr)).await?;
    client
        .create_pool(request(
            pb::CreatePoolRequest {
                name: "shared".into(),
                database_url: db.url().to_owned(),
                config: Some(small_config()),
            },
            Some(ADMIN),
        ))
        .await?;

    let callers: [(&str, Option<&str>, Option<Role>); 5] = [
        ("none", None, None),
        ("unknown", Some("not-a-known-token-000000"), None),
        ("viewer", Some(VIEWER), Some(Role::Viewer)),
        ("operator", Some(OPERATOR), Some(Role::Operator)),
        ("admin", Some(ADMIN), Some(Role::Admin)),
    ];
    let mut wrong = Vec::new();
    for (who, token, role) in callers {
        for (method, needed) in CALLS {
            let expected = match role {
                None => Code::Unauthenticated,
                Some(role) if role < *needed => Code::PermissionDenied,
                Some(_) => Code::Ok,
            };
            let got = call(&mut client, db.url(), method, token, who).await;
            if got != expected {
                wrong.push(format!("{method} as {who}: {got:?}, expected {expected:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Health and reflection stay open.
    let health = grpcurl(server.addr, &[], &["grpc.health.v1.Health/Check"]).await?;
    assert!(health.success, "{}", health.stderr);
    let listed = grpcurl(server.addr, &[], &["list"]).await?;
    assert!(
        listed.stdout.contains("poolplane.v1.PoolService"),
        "{listed:?}"
    );
    // A refusal names the role needed.
    let refused = client
        .delete_pool(request(
            pb::DeletePoolRequest {
                name: "shared".into(),
            },
            Some(OPERATOR),
        ))
        .await
        .expect_err("an operator may not delete");
    assert!(
        refused.message().contains("needs the admin role"),
        "{refused:?}"
    );
    server.shutdown().await
}

#[tokio::test]
async fn sighup_reloads_the_tokens_file_and_a_bad_one_keeps_the_old() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = tokens_file(&dir, &format!("{VIEWER} viewer\n"))?;
    let control = TestPg::database().await?;
    let server = ServerProcess::start(&[
        "--database-url",
        control.url(),
        "--auth-tokens-file",
        tokens.to_str().expect("utf-8"),
    ])
    .await?;
    let mut client = PoolServiceClient::connect(format!("http://{}", server.addr)).await?;
    let list = |client: &mut PoolServiceClient<Channel>, token: &'static str| {
        let mut client = client.clone();
        async move {
            code(
                client
                    .list_pools(request(pb::ListPoolsRequest {}, Some(token)))
                    .await,
            )
        }
    };
    assert_eq!(list(&mut client, VIEWER).await, Code::Ok);
    assert_eq!(list(&mut client, ADMIN).await, Code::Unauthenticated);

    // The admin token is added (in its hashed form) and the viewer's removed.
    let hashed = {
        let digest = ring_sha256(ADMIN.as_bytes());
        format!("sha256:{digest}")
    };
    std::fs::write(&tokens, format!("{hashed} admin\n"))?;
    server.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_until(Duration::from_secs(10), "the admin token works", || {
        let fut = list(&mut client, ADMIN);
        async move { fut.await == Code::Ok }
    })
    .await?;
    assert_eq!(list(&mut client, VIEWER).await, Code::Unauthenticated);

    // A malformed file is refused and the tokens in force stay.
    std::fs::write(&tokens, "this line is not two fields at all\n")?;
    server.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_until(Duration::from_secs(10), "the bad reload is logged", || {
        let seen = server
            .log_lines()
            .iter()
            .any(|l| l.contains("tokens file not reloaded"));
        async move { seen }
    })
    .await?;
    assert_eq!(list(&mut client, ADMIN).await, Code::Ok);

    // The role and the token's fingerprint are on the call's log line; the token
    // itself is on no line.
    let lines = server.log_lines();
    let rpc = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "rpc" && l["role"] == "admin")
        .expect("a log line for the admin's call");
    assert_eq!(rpc["token_fingerprint"], &hashed[7..23]);
    assert_eq!(rpc["rpc"], "poolplane.v1.PoolService/ListPools");
    for token in [VIEWER, ADMIN] {
        assert!(!lines.iter().any(|l| l.contains(token)), "{token} logged");
    }
    Ok(())
}

fn ring_sha256(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[tokio::test]
async fn a_non_loopback_listen_without_authentication_refuses_to_start() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let stderr =
        ServerProcess::refused_start(&["--listen", "0.0.0.0:0", "--database-url", control.url()])
            .await?;
    let reason: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("could not start"))
        .collect();
    assert_eq!(reason.len(), 1, "{stderr}");
    assert!(
        reason[0].contains("refusing to listen on 0.0.0.0:0 without authentication")
            && reason[0].contains("--insecure-no-auth"),
        "{stderr}"
    );
    // With the flag it starts (and serves on loopback too).
    let server = ServerProcess::start(&[
        "--listen",
        "0.0.0.0:0",
        "--insecure-no-auth",
        "--database-url",
        control.url(),
    ])
    .await?;
    let port = server.addr.port();
    let client = poolplane_client::PoolplaneClient::connect(format!("127.0.0.1:{port}")).await?;
    assert!(client.list_pools().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn out_of_range_server_flags_refuse_to_start() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    for (flag, value) in [
        ("--metrics-interval", "0s"),
        ("--max-pools", "0"),
        ("--max-watch-streams", "0"),
        ("--http2-keepalive-interval", "0s"),
        ("--max-load-test-duration", "0s"),
        ("--auto-optimize-interval", "500ms"),
    ] {
        let stderr = ServerProcess::refused_start(&[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            control.url(),
            flag,
            value,
        ])
        .await?;
        assert!(
            stderr.contains(&format!("{flag}: must be between")),
            "{flag} {value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let bad_tokens = tempfile::NamedTempFile::new()?;
    std::fs::write(bad_tokens.path(), "short admin\n")?;
    let stderr = ServerProcess::refused_start(&[
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        control.url(),
        "--auth-tokens-file",
        bad_tokens.path().to_str().expect("utf-8"),
    ])
    .await?;
    assert!(
        stderr.contains("line 1: a token must be at least 16"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn query_service_roles_operators_read_admins_write() -> anyhow::Result<()> {
    use poolplane_proto::v1::query_service_client::QueryServiceClient;
    let dir = tempfile::tempdir()?;
    let tokens = tokens_file(
        &dir,
        &format!("{VIEWER} viewer\n{OPERATOR} operator\n{ADMIN} admin\n"),
    )?;
    let control = TestPg::database().await?;
    let server = TestServer::spawn_with(control, |c| c.auth_tokens_file = Some(tokens)).await?;
    let db = TestPg::database().await?;
    let channel = server.channel().await?;
    let mut pools = PoolServiceClient::new(channel.clone());
    pools
        .create_pool(request(
            pb::CreatePoolRequest {
                name: "data".into(),
                database_url: db.url().to_owned(),
                config: Some(small_config()),
            },
            Some(ADMIN),
        ))
        .await?;
    let mut sql = QueryServiceClient::new(channel);
    let execute = |sql_text: &str, token| {
        request(
            pb::ExecuteRequest {
                pool_name: "data".into(),
                sql: sql_text.into(),
                ..Default::default()
            },
            token,
        )
    };
    let query = |sql_text: &str, token| {
        request(
            pb::QueryRequest {
                pool_name: "data".into(),
                sql: sql_text.into(),
                ..Default::default()
            },
            token,
        )
    };
    sql.execute(execute("CREATE TABLE notes (body text)", Some(ADMIN)))
        .await?;
    assert_eq!(
        code(
            sql.execute(execute("INSERT INTO notes VALUES ('x')", Some(OPERATOR)))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(sql.query(query("SELECT 1", Some(VIEWER))).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            sql.query(query("SELECT count(*) FROM notes", Some(OPERATOR)))
                .await
        ),
        Code::Ok
    );
    // An operator's Query runs in a read-only transaction: a write through it is
    // refused by PostgreSQL (25006).
    let refused = sql
        .query(query(
            "INSERT INTO notes VALUES ('y') RETURNING body",
            Some(OPERATOR),
        ))
        .await
        .expect_err("read-only");
    assert!(
        refused.message().contains("read-only transaction"),
        "{refused:?}"
    );
    let written = sql
        .query(query(
            "INSERT INTO notes VALUES ('z') RETURNING body",
            Some(ADMIN),
        ))
        .await?
        .into_inner();
    assert_eq!(written.rows.len(), 1);
    let tx = |read_only: bool, token| {
        request(
            pb::TransactionRequest {
                pool_name: "data".into(),
                statements: vec![pb::Statement {
                    sql: "SELECT count(*) FROM notes".into(),
                    params: vec![],
                }],
                read_only,
                ..Default::default()
            },
            token,
        )
    };
    assert_eq!(
        code(sql.transaction(tx(true, Some(OPERATOR))).await),
        Code::Ok
    );
    assert_eq!(
        code(sql.transaction(tx(false, Some(OPERATOR))).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(sql.transaction(tx(false, Some(ADMIN))).await),
        Code::Ok
    );
    server.shutdown().await
}
