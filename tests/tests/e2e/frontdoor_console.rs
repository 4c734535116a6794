//! The admin console PgBouncer users know, with psql and Debian's
//! prometheus-pgbouncer-exporter: `-d pgbouncer` for users of the users file
//! with a role; SHOW POOLS / CLIENTS / SERVERS / STATS / DATABASES / LISTS
//! with exact figures; PAUSE and RESUME under pgbench (TPC-B, 32 clients).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use poolplane_tests::{
    TestDatabase, TestPg, TestServer, http_get, labelled_value, login_of, metric_value, run_client,
    text, wait_until,
};

use crate::frontdoor::sized;

const ADMIN_PW: &str = "console-admin-pw";
const STATS_PW: &str = "console-stats-pw";

/// A server whose users file has `ops` (admin), `watcher` (stats) and `app`
/// (no console role), with a pool `shop` of 4.
async fn console_server() -> anyhow::Result<(TestServer, TestDatabase, tempfile::NamedTempFile)> {
    let db = TestPg::database().await?;
    let users = tempfile::NamedTempFile::new()?;
    let verifier = |pw: &str| postgres_protocol::password::scram_sha_256(pw.as_bytes());
    std::fs::write(
        users.path(),
        format!(
            "ops {} * admin\nwatcher {} * stats\napp {} shop\n",
            verifier(ADMIN_PW),
            verifier(STATS_PW),
            verifier(ADMIN_PW)
        ),
    )?;
    let path = users.path().to_owned();
    let server = TestServer::spawn_with(TestPg::database().await?, move |c| {
        c.pg.users_file = Some(path);
    })
    .await?;
    server
        .client
        .create_pool("shop", db.url(), sized(4, 4))
        .await?;
    Ok((server, db, users))
}

fn console_addr(server: &TestServer) -> SocketAddr {
    server.server().pg_addr().expect("a front door")
}

/// Runs `sql` on the console as `user`; the rows, by column name.
async fn console(
    server: &TestServer,
    user: &str,
    password: &str,
    sql: &str,
) -> anyhow::Result<Vec<HashMap<String, String>>> {
    let addr = console_addr(server);
    let conninfo = format!(
        "host={} port={} dbname=pgbouncer user={user} sslmode=disable",
        addr.ip(),
        addr.port()
    );
    let out = run_client(
        "psql",
        &[
            &conninfo,
            "-X",
            "-A",
            "-F",
            "\t",
            "-P",
            "footer=off",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ],
        password,
        Duration::from_secs(60),
    )
    .await?;
    anyhow::ensure!(out.status.success(), "{sql}: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = stdout.lines();
    let Some(header) = lines.next() else {
        return Ok(Vec::new());
    };
    let names: Vec<&str> = header.split('\t').collect();
    Ok(lines
        .map(|line| {
            names
                .iter()
                .map(|n| (*n).to_owned())
                .zip(line.split('\t').map(str::to_owned))
                .collect()
        })
        .collect())
}

/// The error psql prints for `sql` run as `user` (which must fail).
async fn console_error(server: &TestServer, user: &str, password: &str, sql: &str) -> String {
    match console(server, user, password, sql).await {
        Ok(rows) => panic!("{sql} as {user} succeeded: {rows:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn psql_console_shows_pause_and_resume_under_pgbench() -> anyhow::Result<()> {
    let (server, db, _users) = console_server().await?;
    let bench = crate::frontdoor_ops::tpcb_32_clients(&server, &db, "shop").await?;
    let pool = server.server().registry().pool("shop")?;

    // What the console shows matches what the pool counts.
    let pools = console(&server, "watcher", STATS_PW, "SHOW POOLS").await?;
    assert_eq!(pools.len(), 1, "{pools:?}");
    let shop = &pools[0];
    assert_eq!(shop["database"], "shop");
    let (user, _) = login_of(&db)?;
    assert_eq!(shop["user"], user);
    let active: u64 = shop["cl_active"].parse()?;
    let waiting: u64 = shop["cl_waiting"].parse()?;
    assert_eq!(active + waiting, 32, "{shop:?}");
    assert_eq!(shop["pool_mode"], "transaction");
    let clients = console(&server, "watcher", STATS_PW, "SHOW CLIENTS").await?;
    assert_eq!(clients.len(), 32);
    assert!(clients.iter().all(|c| c["type"] == "C"
        && c["database"] == "shop"
        && c["application_name"] == "pgbench"
        && ["active", "waiting", "idle"].contains(&c["state"].as_str())));
    let servers = console(&server, "watcher", STATS_PW, "SHOW SERVERS").await?;
    let pids: Vec<String> = db
        .connect()
        .await?
        .query(
            "SELECT pid::text FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'poolplane:shop' ORDER BY pid",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut shown: Vec<String> = servers.iter().map(|s| s["remote_pid"].clone()).collect();
    shown.sort();
    assert_eq!(shown, pids, "SHOW SERVERS' pids are the pool's backends");
    // A stats user may look, not act.
    let refused = console_error(&server, "watcher", STATS_PW, "PAUSE shop").await;
    assert!(refused.contains("admin access needed"), "{refused}");

    // PAUSE: returns once the transactions in flight finished; nothing runs
    // until RESUME, 3 s later.
    console(&server, "ops", ADMIN_PW, "PAUSE shop").await?;
    let paused = console(&server, "ops", ADMIN_PW, "SHOW STATS").await?;
    let paused_at = pool.pool_stats().wire.transactions;
    assert_eq!(paused[0]["total_xact_count"], paused_at.to_string());
    assert_eq!(
        console(&server, "ops", ADMIN_PW, "SHOW DATABASES").await?[0]["paused"],
        "1"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pool.pool_stats().wire.transactions,
        paused_at,
        "nothing while paused"
    );
    console(&server, "ops", ADMIN_PW, "RESUME shop").await?;
    wait_until(Duration::from_secs(5), "transactions again", || async {
        pool.pool_stats().wire.transactions > paused_at
    })
    .await?;

    crate::frontdoor_ops::tpcb_exact(bench, &db, true).await?;
    // The console's totals are the pool's.
    wait_until(Duration::from_secs(5), "the clients left", || async {
        pool.pool_stats().wire.clients == 0
    })
    .await?;
    let stats = console(&server, "ops", ADMIN_PW, "SHOW STATS").await?;
    let wire = pool.pool_stats().wire;
    for (column, value) in [
        ("total_xact_count", wire.transactions),
        ("total_query_count", wire.queries),
        ("total_received", wire.bytes_in),
        ("total_sent", wire.bytes_out),
        ("total_client_login_count", wire.logins),
        ("total_requests", wire.queries),
    ] {
        assert_eq!(stats[0][column], value.to_string(), "{column}");
    }
    assert!(wire.logins >= 33, "the init's login and pgbench's 32");
    Ok(())
}

#[tokio::test]
async fn the_console_admits_only_users_with_a_role() -> anyhow::Result<()> {
    let (server, db, users) = console_server().await?;
    let wrong = console_error(&server, "ops", "not-the-password", "SHOW VERSION").await;
    assert!(
        wrong.contains("password authentication failed for user \"ops\""),
        "{wrong}"
    );
    let no_role = console_error(&server, "app", ADMIN_PW, "SHOW VERSION").await;
    assert!(no_role.contains("not allowed"), "{no_role}");
    // The pool's own database user has no console role either.
    let (user, password) = login_of(&db)?;
    let own = console_error(&server, &user, &password, "SHOW POOLS").await;
    assert!(own.contains("password authentication failed"), "{own}");
    // RELOAD re-reads the users file: a user added to it may log in.
    let mut text = std::fs::read_to_string(users.path())?;
    text.push_str(&format!(
        "late {} * stats\n",
        postgres_protocol::password::scram_sha_256(b"late-pw")
    ));
    std::fs::write(users.path(), text)?;
    console(&server, "ops", ADMIN_PW, "RELOAD").await?;
    assert_eq!(
        console(&server, "late", "late-pw", "SHOW LISTS")
            .await?
            .len(),
        14
    );
    let version = console(&server, "watcher", STATS_PW, "SHOW VERSION").await?;
    assert!(
        version[0]["version"].starts_with("poolplane "),
        "{version:?}"
    );
    let bad = console_error(&server, "ops", ADMIN_PW, "SELECT 1").await;
    assert!(bad.contains("invalid command"), "{bad}");
    let missing = console_error(&server, "ops", ADMIN_PW, "PAUSE nosuchpool").await;
    assert!(
        missing.contains("no such database: nosuchpool"),
        "{missing}"
    );
    // RECONNECT through the console replaces the pool's backends.
    let pool = server.server().registry().pool("shop")?;
    let before: Vec<i32> = pool.backends().iter().map(|b| b.pid).collect();
    assert_eq!(before.len(), 4);
    console(&server, "ops", ADMIN_PW, "RECONNECT shop").await?;
    let client = crate::frontdoor::wire_client(&server, &db, "shop").await?;
    wait_until(
        Duration::from_secs(10),
        "every backend replaced",
        || async {
            let _ = client.simple_query("SELECT 1").await;
            pool.backends().iter().all(|b| !before.contains(&b.pid))
        },
    )
    .await?;
    // KILL_CLIENT ends a client by the id SHOW CLIENTS gives.
    let clients = console(&server, "ops", ADMIN_PW, "SHOW CLIENTS").await?;
    assert_eq!(clients.len(), 1);
    console(
        &server,
        "ops",
        ADMIN_PW,
        &format!("KILL_CLIENT {}", clients[0]["id"]),
    )
    .await?;
    wait_until(Duration::from_secs(5), "the client ended", || async {
        client.simple_query("SELECT 1").await.is_err()
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn debians_pgbouncer_exporter_exports_the_pools_figures() -> anyhow::Result<()> {
    let (server, db, _users) = console_server().await?;
    let client = crate::frontdoor::wire_client(&server, &db, "shop").await?;
    for _ in 0..25 {
        client.simple_query("SELECT 1").await?;
    }
    let pg = console_addr(&server);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut exporter = tokio::process::Command::new("prometheus-pgbouncer-exporter")
        .args([
            "--pgbouncer-host",
            &pg.ip().to_string(),
            "--pgbouncer-port",
            &pg.port().to_string(),
            "--pgbouncer-user",
            "watcher",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .env("PGPASSWORD", STATS_PW)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "prometheus-pgbouncer-exporter ({e}): run tests/run.sh, which installs it"
            )
        })?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut exposition = None;
    for _ in 0..200 {
        if let Ok(body) = http_get(addr, "/metrics").await {
            exposition = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(exposition) = exposition else {
        exporter.start_kill()?;
        let out = exporter.wait_with_output().await?;
        anyhow::bail!(
            "the exporter did not answer within 20 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let wire = server.server().registry().pool("shop")?.pool_stats().wire;
    let shop = [("database", "shop")];
    assert_eq!(
        labelled_value(&exposition, "pgbouncer_requests_total", &shop),
        Some(wire.queries as f64),
        "{exposition}"
    );
    assert_eq!(wire.queries, 25);
    assert_eq!(
        labelled_value(&exposition, "pgbouncer_received_bytes_total", &shop),
        Some(wire.bytes_in as f64)
    );
    // SHOW DATABASES' `database` column is the database on the server (as
    // PgBouncer's), which this exporter uses as its label.
    let name: String = db
        .connect()
        .await?
        .query_one("SELECT current_database()", &[])
        .await?
        .get(0);
    assert_eq!(
        labelled_value(&exposition, "pgbouncer_pool_size", &[("database", &name)]),
        Some(4.0),
        "{exposition}"
    );
    assert_eq!(
        labelled_value(
            &exposition,
            "pgbouncer_active_clients",
            &[("database", "shop"), ("user", &login_of(&db)?.0)]
        ),
        Some(1.0)
    );
    assert_eq!(metric_value(&exposition, "pgbouncer_pools"), Some(1.0));
    assert_eq!(
        metric_value(&exposition, "pgbouncer_used_clients"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&exposition, "pgbouncer_used_servers"),
        Some(4.0)
    );
    exporter.kill().await?;
    Ok(())
}
