//! Operating the front door: wire demand grows the pool, a budget shared by two
//! pools holds under wire load, deleting a pool ends its clients (57P01), a
//! config update that rebuilds the pool breaks no client; and its safety: wrong
//! passwords (28P01), size bounds, the client limit, TLS with channel binding,
//! the users file, a non-loopback listener without credentials.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use poolplane::{EmbeddedPg, EmbeddedPgOptions};
use poolplane_client::proto::PoolConfig;
use poolplane_tests::{
    ServerProcess, TestCa, TestPg, TestServer, connect, login_of, pg_conninfo, pg_url, run_client,
    text, wait_until,
};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::frontdoor::{PeakSampler, pool_with, sized, wire_client};

fn script_file(sql: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), sql)?;
    Ok(file)
}

#[tokio::test]
async fn wire_demand_grows_the_pool() -> anyhow::Result<()> {
    let config = PoolConfig {
        enable_dynamic_sizing: Some(true),
        acquire_timeout_secs: Some(30),
        ..poolplane_tests::proto_config(2, 40)
    };
    let (server, db) = pool_with("grow", config).await?;
    let (user, password) = login_of(&db)?;
    let addr = server.server().pg_addr().expect("front door");
    // Each transaction holds its backend 20 ms: 64 clients need 64 backends.
    let script = script_file("SELECT pg_sleep(0.02);\n")?;
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let script_path = script.path().display().to_string();
    let args = [
        "-h",
        &host,
        "-p",
        &port,
        "-U",
        &user,
        "-n",
        "-c",
        "64",
        "-j",
        "2",
        "-T",
        "6",
        "-f",
        &script_path,
        "grow",
    ]
    .map(str::to_owned);
    let bench = {
        let password = password.clone();
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_client("pgbench", &args, &password, Duration::from_secs(60)).await
        })
    };
    let pool = server.server().registry().pool("grow")?;
    wait_until(Duration::from_secs(30), "64 clients connected", || async {
        pool.pool_stats().wire.clients >= 64
    })
    .await?;
    let connected = Instant::now();
    wait_until(Duration::from_secs(2), "the pool grew to 32", || async {
        server
            .server()
            .registry()
            .pool("grow")
            .is_ok_and(|p| p.pool_stats().current_size >= 32)
    })
    .await?;
    eprintln!(
        "size >= 32 {:?} after 64 clients connected",
        connected.elapsed()
    );
    let out = bench.await??;
    let printed = text(&out);
    assert!(
        printed.contains("number of failed transactions: 0 (0.000%)"),
        "{printed}"
    );
    Ok(())
}

#[tokio::test]
async fn two_pools_under_wire_load_stay_within_their_servers_budget() -> anyhow::Result<()> {
    // max_connections 28 - 3 reserved for superusers - a reserve of 5 = 20.
    const BUDGET: i64 = 20;
    let pg = EmbeddedPg::start(EmbeddedPgOptions {
        settings: vec![("max_connections".into(), "28".into())],
        ..EmbeddedPgOptions::default()
    })
    .await?;
    let admin = connect(&pg.url("postgres")).await?;
    admin
        .batch_execute("CREATE ROLE app LOGIN PASSWORD 'wire-budget-1'")
        .await?;
    let url = format!(
        "postgres://app:wire-budget-1@127.0.0.1:{}/postgres",
        pg.port()
    );
    let server = TestServer::spawn_with(TestPg::database().await?, |c| {
        c.connection_reserve = 5;
    })
    .await?;
    let config = PoolConfig {
        enable_dynamic_sizing: Some(true),
        acquire_timeout_secs: Some(30),
        ..poolplane_tests::proto_config(2, 20)
    };
    for name in ["wa", "wb"] {
        server
            .client
            .create_pool(name, &url, config.clone())
            .await?;
    }
    let sampler = PeakSampler::start(
        admin,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'poolplane:w_'",
    );
    let addr = server.server().pg_addr().expect("front door");
    let script = script_file("SELECT pg_sleep(0.01);\n")?;
    let runs = ["wa", "wb"].map(|pool| {
        let args = [
            "-h".to_owned(),
            addr.ip().to_string(),
            "-p".to_owned(),
            addr.port().to_string(),
            "-U".to_owned(),
            "app".to_owned(),
            "-n".to_owned(),
            "-c".to_owned(),
            "30".to_owned(),
            "-T".to_owned(),
            "4".to_owned(),
            "-f".to_owned(),
            script.path().display().to_string(),
            pool.to_owned(),
        ];
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_client("pgbench", &args, "wire-budget-1", Duration::from_secs(60)).await
        })
    });
    for run in runs {
        let out = run.await??;
        let printed = text(&out);
        assert!(
            printed.contains("number of failed transactions: 0 (0.000%)"),
            "{printed}"
        );
    }
    let peak = sampler.finish().await?;
    eprintln!("peak backends of the two pools: {peak} (budget {BUDGET})");
    assert!(peak <= BUDGET, "{peak} > {BUDGET}");
    assert!(peak >= 10, "the pools were loaded ({peak})");
    Ok(())
}

#[tokio::test]
async fn deleting_a_pool_ends_its_clients_and_a_rebuild_breaks_none() -> anyhow::Result<()> {
    let (server, db) = pool_with("live", sized(1, 4)).await?;
    db.connect()
        .await?
        .batch_execute("CREATE TABLE kept (id int)")
        .await?;
    let idle = wire_client(&server, &db, "live").await?;
    let busy = wire_client(&server, &db, "live").await?;
    busy.batch_execute("BEGIN; INSERT INTO kept VALUES (1)")
        .await?;
    // A new ceiling rebuilds the pool.
    server
        .client
        .update_pool_config(
            "live",
            PoolConfig {
                max_connections: Some(6),
                ..PoolConfig::default()
            },
        )
        .await?;
    busy.batch_execute("INSERT INTO kept VALUES (2); COMMIT")
        .await?;
    let n: i64 = idle
        .query_one("SELECT count(*) FROM kept", &[])
        .await?
        .get(0);
    assert_eq!(n, 2, "the transaction finished across the rebuild");
    assert_eq!(
        server
            .server()
            .registry()
            .pool("live")?
            .config()
            .max_connections,
        6
    );

    // Delete: an idle client is told 57P01 and disconnected.
    let (client, connection) =
        tokio_postgres::connect(&pg_url(&server, &db, "live")?, tokio_postgres::NoTls).await?;
    let ended = tokio::spawn(connection);
    client.simple_query("SELECT 1").await?;
    server.client.delete_pool("live").await?;
    let error = tokio::time::timeout(Duration::from_secs(10), ended)
        .await??
        .expect_err("the connection ends with an error");
    assert_eq!(error.code().map(|c| c.code()), Some("57P01"), "{error}");
    assert!(client.simple_query("SELECT 1").await.is_err());
    Ok(())
}

/// Logs in through the front door with a raw socket (SCRAM by
/// postgres-protocol), up to the first ReadyForQuery.
async fn raw_login(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
    pool: &str,
) -> anyhow::Result<TcpStream> {
    let mut socket = TcpStream::connect(addr).await?;
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", pool)], &mut out)?;
    socket.write_all(&out).await?;
    let mut input = BytesMut::new();
    let mut scram: Option<ScramSha256> = None;
    loop {
        let message = loop {
            if let Some(m) = backend::Message::parse(&mut input)? {
                break m;
            }
            if socket.read_buf(&mut input).await? == 0 {
                anyhow::bail!("the front door closed during login");
            }
        };
        out.clear();
        match message {
            backend::Message::AuthenticationSasl(_) => {
                let client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", client.message(), &mut out)?;
                scram = Some(client);
            }
            backend::Message::AuthenticationSaslContinue(body) => {
                let client = scram.as_mut().expect("started");
                client.update(body.data())?;
                frontend::sasl_response(client.message(), &mut out)?;
            }
            backend::Message::AuthenticationSaslFinal(body) => {
                scram.take().expect("started").finish(body.data())?;
            }
            backend::Message::ErrorResponse(_) => anyhow::bail!("login refused"),
            backend::Message::ReadyForQuery(_) => return Ok(socket),
            _ => {}
        }
        if !out.is_empty() {
            socket.write_all(&out).await?;
        }
    }
}

/// Reads what the front door sends until it closes; the SQLSTATE of its
/// ErrorResponse.
async fn error_code_then_close(socket: &mut TcpStream) -> anyhow::Result<String> {
    let mut input = Vec::new();
    let mut chunk = [0u8; 4096];
    // Until the front door closes (a reset after the FATAL counts as closed).
    while let Ok(n) = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk)).await?
    {
        if n == 0 {
            break;
        }
        input.extend_from_slice(&chunk[..n]);
    }
    let mut buf = &input[..];
    while buf.len() >= 5 {
        let tag = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let body = &buf[5..(1 + len).min(buf.len())];
        if tag == b'E' {
            for field in body.split(|&b| b == 0) {
                if let Some(code) = field.strip_prefix(b"C") {
                    return Ok(String::from_utf8_lossy(code).into_owned());
                }
            }
        }
        buf.advance((1 + len).min(buf.len()));
    }
    anyhow::bail!("no ErrorResponse in {input:?}")
}

#[tokio::test]
async fn wrong_passwords_bounds_and_the_client_limit() -> anyhow::Result<()> {
    let (server, db) = pool_with("safe", sized(1, 2)).await?;
    let (user, password) = login_of(&db)?;
    let addr = server.server().pg_addr().expect("front door");
    let bystander = wire_client(&server, &db, "safe").await?;

    // Wrong password, unknown user: the same 28P01.
    for (who, pw) in [(user.as_str(), "wrong-password"), ("nobody", "whatever")] {
        let url = format!(
            "postgres://{who}:{pw}@{}:{}/safe?sslmode=disable",
            addr.ip(),
            addr.port()
        );
        let error = connect(&url).await.expect_err("refused");
        let code = error
            .chain()
            .find_map(|e| e.downcast_ref::<tokio_postgres::Error>())
            .and_then(|e| e.code().map(|c| c.code().to_owned()));
        assert_eq!(code.as_deref(), Some("28P01"), "{error:#}");
        assert!(format!("{error:#}").contains(&format!(
            "password authentication failed for user \"{who}\""
        )));
    }
    // An unknown pool is an unknown database.
    let url = format!(
        "postgres://{user}:{password}@{}:{}/no_such_pool?sslmode=disable",
        addr.ip(),
        addr.port()
    );
    let error = connect(&url).await.expect_err("refused");
    assert!(
        format!("{error:#}").contains("3D000") || format!("{error:#}").contains("does not exist"),
        "{error:#}"
    );

    // An oversized startup packet: FATAL, the server serves on.
    let mut socket = TcpStream::connect(addr).await?;
    socket.write_all(&100_000u32.to_be_bytes()).await?;
    socket.write_all(&196_608u32.to_be_bytes()).await?;
    assert_eq!(error_code_then_close(&mut socket).await?, "08P01");
    // An oversized message after login: FATAL for that client only.
    let mut socket = raw_login(addr, &user, &password, "safe").await?;
    socket.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).await?;
    assert_eq!(error_code_then_close(&mut socket).await?, "08P01");
    let n: i32 = bystander.query_one("SELECT 41 + 1", &[]).await?.get(0);
    assert_eq!(n, 42);
    Ok(())
}

#[tokio::test]
async fn clients_beyond_the_limit_are_refused_with_53300() -> anyhow::Result<()> {
    let server = TestServer::spawn_with(TestPg::database().await?, |c| {
        c.pg.max_clients = 2;
    })
    .await?;
    let db = TestPg::database().await?;
    server
        .client
        .create_pool("few", db.url(), sized(1, 2))
        .await?;
    let url = pg_url(&server, &db, "few")?;
    let a = connect(&url).await?;
    let _b = connect(&url).await?;
    let error = connect(&url).await.expect_err("a third client");
    assert!(
        format!("{error:#}").contains("too many clients"),
        "{error:#}"
    );
    a.simple_query("SELECT 1").await?;
    Ok(())
}

#[tokio::test]
async fn tls_with_channel_binding_users_file_and_required_tls() -> anyhow::Result<()> {
    let ca = TestCa::new("poolplane wire test CA")?;
    let issued = ca.issue("frontdoor", &["localhost", "127.0.0.1"])?;
    let db = TestPg::database().await?;
    // A users-file user with the verifier PostgreSQL itself stores.
    let admin = db.connect().await?;
    admin
        .batch_execute("SET password_encryption = 'scram-sha-256'; CREATE ROLE wire_reader LOGIN PASSWORD 'reader-pw-7'")
        .await?;
    let verifier: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'wire_reader'",
            &[],
        )
        .await?
        .get(0);
    let users = tempfile::NamedTempFile::new()?;
    std::fs::write(
        users.path(),
        format!("# front-door users\nreader {verifier} tls\n"),
    )?;
    let users_path = users.path().to_owned();
    let (cert, key) = (issued.cert.clone(), issued.key.clone());
    let server = TestServer::spawn_with(TestPg::database().await?, move |c| {
        c.pg.tls = Some((cert, key));
        c.pg.tls_required = true;
        c.pg.users_file = Some(users_path);
    })
    .await?;
    server
        .client
        .create_pool("tls", db.url(), sized(1, 2))
        .await?;
    server
        .client
        .create_pool("other", db.url(), sized(1, 2))
        .await?;
    let (user, password) = login_of(&db)?;
    let conninfo = pg_conninfo(&server, &db, "tls")?;
    let with_tls = conninfo.replace("sslmode=disable", "sslmode=require channel_binding=require");
    let out = run_client(
        "psql",
        &[
            &with_tls,
            "-At",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "-c",
            "SELECT current_user",
        ],
        &password,
        Duration::from_secs(30),
    )
    .await?;
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains(&user), "{printed}");
    // Plaintext is refused.
    let out = run_client(
        "psql",
        &[&conninfo, "-c", "SELECT 1"],
        &password,
        Duration::from_secs(30),
    )
    .await?;
    assert!(!out.status.success());
    assert!(text(&out).contains("requires TLS"), "{}", text(&out));
    // The users file: `reader` may use `tls`, not `other`.
    let as_reader = with_tls.replace(&format!("user={user}"), "user=reader");
    let out = run_client(
        "psql",
        &[&as_reader, "-At", "-c", "SELECT 'reader in'"],
        "reader-pw-7",
        Duration::from_secs(30),
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("reader in"));
    let elsewhere = as_reader.replace("dbname=tls", "dbname=other");
    let out = run_client(
        "psql",
        &[&elsewhere, "-c", "SELECT 1"],
        "reader-pw-7",
        Duration::from_secs(30),
    )
    .await?;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("password authentication failed for user \"reader\""),
        "{}",
        text(&out)
    );
    Ok(())
}

#[tokio::test]
async fn a_non_loopback_front_door_needs_client_credentials() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let stderr = ServerProcess::refused_start(&[
        "--database-url",
        control.url(),
        "--pg-listen",
        "0.0.0.0:0",
    ])
    .await?;
    assert!(stderr.contains("--pg-users-file"), "{stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn no_password_or_verifier_in_any_log_line_at_trace() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let (user, password) = login_of(&db)?;
    let admin = db.connect().await?;
    admin
        .batch_execute("CREATE ROLE trace_reader LOGIN PASSWORD 'trace-reader-pw'")
        .await?;
    let verifier: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'trace_reader'",
            &[],
        )
        .await?
        .get(0);
    let users = tempfile::NamedTempFile::new()?;
    std::fs::write(users.path(), format!("reader {verifier} *\n"))?;
    let users_path = users.path().display().to_string();
    let mut server = ServerProcess::start_with_log(
        &[
            "--database-url",
            control.url(),
            "--pg-users-file",
            &users_path,
        ],
        "trace",
    )
    .await?;
    let client = poolplane_client::PoolplaneClient::connect(server.addr.to_string()).await?;
    client.create_pool("traced", db.url(), sized(1, 2)).await?;
    let pg_addr = server.pg_addr.expect("the start line names the front door");
    let (host, port) = (pg_addr.ip().to_string(), pg_addr.port().to_string());
    for (who, pw, ok) in [
        (user.as_str(), password.as_str(), true),
        (user.as_str(), "not-the-password", false),
        ("reader", "trace-reader-pw", true),
        ("reader", "wrong", false),
    ] {
        let conninfo = format!("host={host} port={port} dbname=traced user={who} sslmode=disable");
        let out = run_client(
            "psql",
            &[&conninfo, "-c", "SELECT 1"],
            pw,
            Duration::from_secs(30),
        )
        .await?;
        assert_eq!(out.status.success(), ok, "{who}: {}", text(&out));
    }
    server.signal(nix::sys::signal::Signal::SIGTERM)?;
    server.wait_exit(Duration::from_secs(15)).await?;
    let log = server.log_lines();
    assert!(log.len() > 50, "a trace run logs ({} lines)", log.len());
    assert!(
        log.iter()
            .any(|l| l.contains("password authentication failed")),
        "failed logins are logged"
    );
    let secret_parts: Vec<&str> = verifier
        .split(['$', ':'])
        .filter(|part| part.len() > 20)
        .collect();
    assert!(!secret_parts.is_empty());
    for line in &log {
        assert!(
            !line.contains(&password),
            "the pool's password leaked: {line}"
        );
        assert!(
            !line.contains("trace-reader-pw"),
            "a user's password leaked: {line}"
        );
        for part in &secret_parts {
            assert!(!line.contains(part), "the verifier leaked: {line}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_users_file_is_read_again_on_sighup() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    admin
        .batch_execute("CREATE ROLE hup_one LOGIN PASSWORD 'hup-pw-1'; CREATE ROLE hup_two LOGIN PASSWORD 'hup-pw-2'")
        .await?;
    let verifier = |role: &'static str| {
        let admin = &admin;
        async move {
            let row = admin
                .query_one(
                    "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                    &[&role],
                )
                .await?;
            anyhow::Ok(row.get::<_, String>(0))
        }
    };
    let users = tempfile::NamedTempFile::new()?;
    std::fs::write(
        users.path(),
        format!("one {} *\n", verifier("hup_one").await?),
    )?;
    let users_path = users.path().display().to_string();
    let mut server = ServerProcess::start(&[
        "--database-url",
        control.url(),
        "--pg-users-file",
        &users_path,
    ])
    .await?;
    let client = poolplane_client::PoolplaneClient::connect(server.addr.to_string()).await?;
    client.create_pool("hup", db.url(), sized(1, 2)).await?;
    let pg = server.pg_addr.expect("front door");
    let login = |user: &'static str, password: &'static str| async move {
        let conninfo = format!(
            "host={} port={} dbname=hup user={user} sslmode=disable",
            pg.ip(),
            pg.port()
        );
        let out = run_client(
            "psql",
            &[&conninfo, "-c", "SELECT 1"],
            password,
            Duration::from_secs(30),
        )
        .await?;
        anyhow::Ok(out.status.success())
    };
    assert!(login("one", "hup-pw-1").await?);
    assert!(!login("two", "hup-pw-2").await?);
    std::fs::write(
        users.path(),
        format!("two {} hup\n", verifier("hup_two").await?),
    )?;
    server.signal(nix::sys::signal::Signal::SIGHUP)?;
    logged(&server, "users file reloaded").await?;
    assert!(login("two", "hup-pw-2").await?);
    assert!(
        !login("one", "hup-pw-1").await?,
        "a user taken out of the file is out"
    );
    // A file that does not parse keeps the users in force.
    std::fs::write(users.path(), "two not-a-verifier hup\n")?;
    server.signal(nix::sys::signal::Signal::SIGHUP)?;
    logged(&server, "users file not reloaded").await?;
    assert!(login("two", "hup-pw-2").await?);
    server.signal(nix::sys::signal::Signal::SIGTERM)?;
    server.wait_exit(Duration::from_secs(15)).await?;
    Ok(())
}

/// Runs pgbench with a script of `sql` for `secs` with `clients` clients
/// through `server`'s front door to `pool`, as `db`'s own user, in the
/// background; the script file lives as long as the run.
fn pgbench_script(
    server: &TestServer,
    db: &poolplane_tests::TestDatabase,
    pool: &str,
    clients: u32,
    secs: u32,
    sql: &str,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<std::process::Output>>> {
    let pg = server.server().pg_addr().expect("front door");
    pgbench_script_at(pg, db, pool, clients, secs, sql)
}

/// [`pgbench_script`] through the front door at `pg`.
pub(crate) fn pgbench_script_at(
    pg: std::net::SocketAddr,
    db: &poolplane_tests::TestDatabase,
    pool: &str,
    clients: u32,
    secs: u32,
    sql: &str,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<std::process::Output>>> {
    let (user, password) = login_of(db)?;
    let script = script_file(sql)?;
    let args: Vec<String> = vec![
        "-h".into(),
        pg.ip().to_string(),
        "-p".into(),
        pg.port().to_string(),
        "-U".into(),
        user,
        "-n".into(),
        "-c".into(),
        clients.to_string(),
        "-T".into(),
        secs.to_string(),
        "-f".into(),
        script.path().display().to_string(),
        pool.into(),
    ];
    Ok(tokio::spawn(async move {
        let _script = script;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_client("pgbench", &args, &password, Duration::from_secs(60)).await
    }))
}

/// Waits (10 s at most) until the server has logged a line holding `text`.
async fn logged(server: &ServerProcess, text: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(10), text, || async {
        server.log_lines().iter().any(|l| l.contains(text))
    })
    .await
}

/// Initializes pgbench's tables through `pool`'s front door, then runs TPC-B
/// with 32 clients for 9 s (its rate every second) in the background; returns
/// once all 32 run transactions.
pub(crate) async fn tpcb_32_clients(
    server: &TestServer,
    db: &poolplane_tests::TestDatabase,
    pool: &str,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<std::process::Output>>> {
    let (user, password) = login_of(db)?;
    let pg = server.server().pg_addr().expect("front door");
    let (host, port) = (pg.ip().to_string(), pg.port().to_string());
    let base = ["-h", &host, "-p", &port, "-U", &user];
    let init = run_client(
        "pgbench",
        &[&base[..], &["-i", "-q", "-s", "1", pool]].concat(),
        &password,
        Duration::from_secs(60),
    )
    .await?;
    assert!(init.status.success(), "{}", text(&init));
    let args: Vec<String> = [
        &base[..],
        &["-c", "32", "-j", "2", "-T", "9", "-P", "1", pool],
    ]
    .concat()
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    let bench = tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_client("pgbench", &args, &password, Duration::from_secs(90)).await
    });
    let pool = server.server().registry().pool(pool)?;
    // The init's transactions went through the front door too.
    let before = pool.pool_stats().wire.transactions;
    wait_until(Duration::from_secs(30), "pgbench runs", || async {
        let wire = pool.pool_stats().wire;
        wire.clients == 32 && wire.transactions >= before + 50
    })
    .await?;
    Ok(bench)
}

/// Awaits a [`tpcb_32_clients`] run: no failed transaction, as many rows in
/// pgbench_history as pgbench counted transactions, and (`paused`) a second
/// of pgbench's progress at 0 tps.
pub(crate) async fn tpcb_exact(
    bench: tokio::task::JoinHandle<anyhow::Result<std::process::Output>>,
    db: &poolplane_tests::TestDatabase,
    paused: bool,
) -> anyhow::Result<String> {
    let out = bench.await??;
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("number of failed transactions: 0 (0.000%)"),
        "{printed}"
    );
    let stopped = printed
        .lines()
        .any(|l| l.starts_with("progress:") && l.contains(" 0.0 tps"));
    assert!(
        stopped || !paused,
        "pgbench's rate fell to 0 while paused: {printed}"
    );
    let committed: i64 = db
        .connect()
        .await?
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await?
        .get(0);
    assert_eq!(committed, processed(&printed));
    Ok(printed)
}

/// How many transactions pgbench's report says it processed.
fn processed(report: &str) -> i64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .expect("pgbench reports what it processed")
}

/// A client through the front door whose connection's end (and its SQLSTATE)
/// the test can await.
async fn watched_client(
    url: &str,
) -> anyhow::Result<(
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    Ok((client, tokio::spawn(connection)))
}

async fn ended_with(
    ended: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> anyhow::Result<(String, String)> {
    let error = tokio::time::timeout(Duration::from_secs(10), ended)
        .await??
        .expect_err("the connection ends with an error");
    let db = error.as_db_error().expect("a FATAL from the front door");
    Ok((db.code().code().to_owned(), db.message().to_owned()))
}

#[tokio::test]
async fn each_client_limit_ends_what_it_should_and_names_itself() -> anyhow::Result<()> {
    let config = PoolConfig {
        client_idle_timeout_secs: Some(1),
        idle_in_transaction_timeout_secs: Some(1),
        query_timeout_secs: Some(1),
        max_client_connections: Some(4),
        ..sized(1, 4)
    };
    let (server, db) = pool_with("limits", config).await?;
    db.connect()
        .await?
        .batch_execute("CREATE TABLE kept (id int)")
        .await?;
    let url = pg_url(&server, &db, "limits")?;

    // A busy client is not idle: queries for 2.5 s, each well within 1 s.
    let (busy, _busy_conn) = watched_client(&url).await?;
    // An idle client: ended after 1 s without a backend.
    let (idle, idle_conn) = watched_client(&url).await?;
    idle.simple_query("SELECT 1").await?;
    // A client idle inside a transaction: ended, its insert rolled back.
    let (in_tx, in_tx_conn) = watched_client(&url).await?;
    in_tx
        .batch_execute("BEGIN; INSERT INTO kept VALUES (1)")
        .await?;
    // A fourth client is the pool's last; a fifth is refused.
    let (slow, _slow_conn) = watched_client(&url).await?;
    let refused = connect(&url).await.expect_err("a fifth client");
    assert!(
        format!("{refused:#}").contains("max_client_connections 4"),
        "{refused:#}"
    );

    let started = Instant::now();
    let slow_query = tokio::spawn(async move {
        let started = Instant::now();
        let result = slow.simple_query("SELECT pg_sleep(10)").await;
        let took = started.elapsed();
        // At once, before the client idles past its own limit.
        let after = one_value(&slow, "SELECT 'after'").await;
        (result, took, after)
    });
    while started.elapsed() < Duration::from_millis(2500) {
        busy.simple_query("SELECT 1").await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, message) = ended_with(idle_conn).await?;
    assert_eq!(code, "57P05", "{message}");
    assert!(message.contains("client_idle_timeout"), "{message}");
    let (code, message) = ended_with(in_tx_conn).await?;
    assert_eq!(code, "25P03", "{message}");
    assert!(message.contains("idle_in_transaction_timeout"), "{message}");
    let n: i64 = db
        .connect()
        .await?
        .query_one("SELECT count(*) FROM kept", &[])
        .await?
        .get(0);
    assert_eq!(n, 0, "the idle transaction was rolled back");

    // The long statement is cancelled after about 1 s; its client carries on.
    let (result, took, after) = slow_query.await?;
    let error = result.expect_err("cancelled");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");
    assert!(took < Duration::from_secs(5), "cancelled after {took:?}");
    assert_eq!(after?, "after");
    // The busy client was never idle long enough.
    assert_eq!(one_value(&busy, "SELECT 'busy'").await?, "busy");
    Ok(())
}

async fn one_value(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<String> {
    let rows = client.simple_query(sql).await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

#[tokio::test]
async fn sigterm_lets_transactions_finish_then_ends_the_clients() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let (user, password) = login_of(&db)?;
    let mut server =
        ServerProcess::start(&["--database-url", control.url(), "--shutdown-grace", "10s"]).await?;
    let client = poolplane_client::PoolplaneClient::connect(server.addr.to_string()).await?;
    client.create_pool("drain", db.url(), sized(4, 4)).await?;
    let pg = server.pg_addr.expect("front door");
    let (host, port) = (pg.ip().to_string(), pg.port().to_string());
    let base = ["-h", &host, "-p", &port, "-U", &user];
    let init = run_client(
        "pgbench",
        &[&base[..], &["-i", "-q", "-s", "1", "drain"]].concat(),
        &password,
        Duration::from_secs(60),
    )
    .await?;
    assert!(init.status.success(), "{}", text(&init));
    // TPC-B, 32 clients over a pool of 4: transactions are always in flight.
    let args: Vec<String> = [
        &base[..],
        &["-n", "-c", "32", "-j", "2", "-T", "20", "drain"],
    ]
    .concat()
    .into_iter()
    .map(str::to_owned)
    .collect();
    let bench = tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_client("pgbench", &args, &password, Duration::from_secs(60)).await
    });
    let watcher = db.connect().await?;
    wait_until(Duration::from_secs(30), "pgbench commits", || async {
        watcher
            .query_one("SELECT count(*) FROM pgbench_history", &[])
            .await
            .is_ok_and(|row| row.get::<_, i64>(0) >= 100)
    })
    .await?;
    server.signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = server.wait_exit(Duration::from_secs(30)).await?;
    assert_eq!(status.code(), Some(0));
    let out = bench.await??;
    let printed = text(&out);
    assert!(
        printed.contains("terminating connection due to administrator command"),
        "{printed}"
    );
    // Every transaction pgbench saw finish did: none failed part way.
    assert!(
        printed.contains("number of failed transactions: 0"),
        "{printed}"
    );
    let done = processed(&printed);
    let counted: i64 = db
        .connect()
        .await?
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await?
        .get(0);
    assert_eq!(
        counted, done,
        "each transaction pgbench counted committed, no other"
    );
    Ok(())
}

#[tokio::test]
async fn clients_are_listed_with_their_state_and_one_can_be_killed() -> anyhow::Result<()> {
    let (server, db) = pool_with("seen", sized(2, 4)).await?;
    let (user, _) = login_of(&db)?;
    db.connect()
        .await?
        .batch_execute("CREATE TABLE ticks (n int)")
        .await?;
    let bench = pgbench_script(
        &server,
        &db,
        "seen",
        4,
        5,
        "BEGIN;\nINSERT INTO ticks VALUES (1);\nSELECT pg_sleep(0.2);\nEND;\n",
    )?;
    let sdk = &server.client;
    let found = std::sync::atomic::AtomicU64::new(0);
    wait_until(
        Duration::from_secs(20),
        "an active pgbench client",
        || async {
            let Ok(clients) = sdk.list_clients(Some("seen")).await else {
                return false;
            };
            let pgbench: Vec<_> = clients
                .iter()
                .filter(|c| c.application_name == "pgbench" && c.user == user)
                .collect();
            let active = pgbench
                .iter()
                .find(|c| c.state == "active" && c.transactions > 0);
            if let Some(c) = active {
                found.store(c.id, std::sync::atomic::Ordering::Relaxed);
            }
            pgbench.len() == 4 && active.is_some()
        },
    )
    .await?;
    let all = sdk.list_clients(None).await?;
    assert!(
        all.iter()
            .all(|c| ["idle", "waiting", "active"].contains(&c.state.as_str()))
    );
    assert!(all.iter().all(|c| c.address.starts_with("127.0.0.1:")));
    let victim = found.load(std::sync::atomic::Ordering::Relaxed);
    sdk.kill_client(victim).await?;
    let missing = sdk
        .kill_client(victim + 1_000_000)
        .await
        .expect_err("no such client");
    assert!(
        missing.to_string().contains("no front-door client"),
        "{missing}"
    );
    wait_until(
        Duration::from_secs(10),
        "the killed client is gone",
        || async {
            sdk.list_clients(Some("seen"))
                .await
                .is_ok_and(|clients| clients.iter().all(|c| c.id != victim))
        },
    )
    .await?;
    let out = bench.await??;
    let printed = text(&out);
    assert!(
        printed.contains("administrator command (KillClient)"),
        "{printed}"
    );
    // The killed client's transaction was rolled back: what committed is what
    // pgbench counted as done.
    let done = processed(&printed);
    let committed: i64 = db
        .connect()
        .await?
        .query_one("SELECT count(*) FROM ticks", &[])
        .await?
        .get(0);
    assert_eq!(committed, done);
    Ok(())
}

#[tokio::test]
async fn reconnect_replaces_every_backend_with_no_client_error() -> anyhow::Result<()> {
    let (server, db) = pool_with("rotate", sized(4, 4)).await?;
    let admin = db.connect().await?;
    let pids = || async {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'poolplane:rotate'",
                &[],
            )
            .await?;
        anyhow::Ok(rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>())
    };
    let bench = tpcb_32_clients(&server, &db, "rotate").await?;
    let before = pids().await?;
    assert_eq!(before.len(), 4, "{before:?}");
    let open = server.client.reconnect_pool("rotate").await?;
    assert_eq!(open, 4);
    wait_until(
        Duration::from_secs(10),
        "every backend replaced",
        || async {
            pids()
                .await
                .is_ok_and(|now| !now.is_empty() && now.iter().all(|pid| !before.contains(pid)))
        },
    )
    .await?;
    tpcb_exact(bench, &db, false).await?;
    Ok(())
}

#[tokio::test]
async fn pause_drains_the_pool_and_resume_lets_the_clients_on_with_no_error() -> anyhow::Result<()>
{
    let (server, db) = pool_with("halt", sized(4, 4)).await?;
    let bench = tpcb_32_clients(&server, &db, "halt").await?;
    let pool = server.server().registry().pool("halt")?;
    let busy = server.client.pause_pool("halt", 10).await?;
    assert_eq!(busy, 0, "drained");
    let paused_at = pool.pool_stats().wire.transactions;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pool.pool_stats().wire.transactions,
        paused_at,
        "no transaction while paused"
    );
    let clients = server.client.list_clients(Some("halt")).await?;
    assert!(clients.iter().all(|c| c.state != "active"), "{clients:?}");
    server.client.resume_pool("halt").await?;
    wait_until(Duration::from_secs(5), "transactions again", || async {
        pool.pool_stats().wire.transactions > paused_at
    })
    .await?;
    tpcb_exact(bench, &db, true).await?;
    Ok(())
}
