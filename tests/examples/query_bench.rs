//! QueryService point select at c = 32 through the SDK, side by side with
//! `pgbench -S -M simple` through PgBouncer (transaction pooling, the same pool
//! size), on the same database and machine, alternating rounds; prints medians
//! and the ratio. Not in CI (it measures this machine).
//!
//! Run: `bash bench/query_service.sh [SECONDS_PER_ROUND] [ROUNDS]`.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use poolplane_client::proto::PoolConfig;
use poolplane_client::{PoolplaneClient, params};
use poolplane_tests::{ServerProcess, TestPg};

const CLIENTS: u32 = 32;
const POOL_SIZE: u32 = 32;
const SCALE: u32 = 10;
const SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// (user, password, host, port, dbname) of a `postgres://` URL.
fn parts(url: &str) -> anyhow::Result<(String, String, String, String, String)> {
    let rest = url
        .strip_prefix("postgres://")
        .ok_or_else(|| anyhow::anyhow!("{url}"))?;
    let (userinfo, rest) = rest
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("no user"))?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (hostport, db) = rest
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("no db"))?;
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    let db = db.split('?').next().unwrap_or(db);
    Ok((
        user.into(),
        password.into(),
        host.into(),
        port.into(),
        db.into(),
    ))
}

/// Point selects through QueryService from `CLIENTS` callers over 4 HTTP/2
/// connections for `secs`; queries per second.
async fn poolplane_round(clients: &[PoolplaneClient], secs: u64) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let client = clients[i as usize % clients.len()].clone();
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(i);
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let aid = (x % (100_000 * u64::from(SCALE))) as i64 + 1;
                client.query("bench", SQL, params![aid]).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// `pgbench -S -M simple` through PgBouncer for `secs`; its tps.
async fn pgbench_round(bouncer_port: u16, user: &str, secs: u64) -> anyhow::Result<f64> {
    let output = tokio::process::Command::new("pgbench")
        .args([
            "-n",
            "-S",
            "-M",
            "simple",
            "-c",
            &CLIENTS.to_string(),
            "-j",
            "2",
        ])
        .args(["-T", &secs.to_string()])
        .arg(format!(
            "host=127.0.0.1 port={bouncer_port} dbname=bench user={user}"
        ))
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in {text}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(8);
    let rounds: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let (user, password, host, port, dbname) = parts(db.url())?;
    eprintln!("pgbench -i -s {SCALE} …");
    let init = tokio::process::Command::new("pgbench")
        .args(["-i", "-q", "-s", &SCALE.to_string()])
        .arg(db.url())
        .stdout(Stdio::null())
        .output()
        .await?;
    anyhow::ensure!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    // PgBouncer, transaction pooling, the same pool size.
    let dir = tempfile::tempdir()?;
    let bouncer_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(
        dir.path().join("userlist.txt"),
        format!("\"{user}\" \"\"\n"),
    )?;
    std::fs::write(
        dir.path().join("pgbouncer.ini"),
        format!(
            "[databases]\nbench = host={host} port={port} dbname={dbname} user={user} password={password}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {bouncer_port}\nauth_type = trust\n\
             auth_file = {}/userlist.txt\npool_mode = transaction\ndefault_pool_size = {POOL_SIZE}\n\
             max_client_conn = 500\nunix_socket_dir =\nlogfile =\n",
            dir.path().display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let mut bouncer = tokio::process::Command::new("pgbouncer");
    if nix::unistd::geteuid().is_root() {
        bouncer.args(["-u", "postgres"]);
    }
    let mut bouncer = bouncer
        .arg(dir.path().join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;

    let server = ServerProcess::start(&["--database-url", control.url()]).await?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(PoolplaneClient::connect(server.addr.to_string()).await?);
    }
    let config = PoolConfig {
        min_connections: Some(POOL_SIZE),
        max_connections: Some(POOL_SIZE),
        enable_dynamic_sizing: Some(false),
        ..PoolConfig::default()
    };
    clients[0].create_pool("bench", db.url(), config).await?;

    // Warm-up of both, then alternating rounds.
    poolplane_round(&clients, 2).await?;
    pgbench_round(bouncer_port, &user, 2).await?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let a = poolplane_round(&clients, secs).await?;
        let b = pgbench_round(bouncer_port, &user, secs).await?;
        eprintln!("round {round}: QueryService {a:.0} q/s, pgbench via PgBouncer {b:.0} tps");
        ours.push(a);
        theirs.push(b);
    }
    let (a, b) = (median(ours), median(theirs));
    println!(
        "QueryService point select, c = {CLIENTS}, pool {POOL_SIZE}: {a:.0} q/s; pgbench -S -M simple via \
         PgBouncer (transaction pooling, pool {POOL_SIZE}): {b:.0} tps; ratio {:.2}x (medians of {rounds} \
         alternating rounds of {secs} s)",
        a / b
    );
    bouncer.kill().await?;
    Ok(())
}
