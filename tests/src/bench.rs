//! Benchmark plumbing for the runner (`examples/bench.rs`, `bash bench/run.sh`):
//! pgbench and PgBouncer as baselines, alternating rounds, medians, a process's
//! RSS and CPU time. Nothing here asserts a speed: the figures are reported.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;

/// The point select of pgbench's `-S` (select-only) script.
pub const POINT_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// The median of `values` (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The value at quantile `q` (0..=1) of `values`.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let at = ((values.len() - 1) as f64 * q).round() as usize;
    values[at]
}

/// Rounds of `a` and `b`, alternating (A B, B A, A B …) so that drift of the machine
/// hits both alike; returns each side's figures in round order.
pub async fn alternate<A, B, FA, FB>(
    rounds: usize,
    mut a: A,
    mut b: B,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)>
where
    A: FnMut() -> FA,
    B: FnMut() -> FB,
    FA: std::future::Future<Output = anyhow::Result<f64>>,
    FB: std::future::Future<Output = anyhow::Result<f64>>,
{
    let (mut xs, mut ys) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for round in 0..rounds {
        // A B, then B A: neither side always runs first (the first of a pair
        // meets a colder machine).
        if round % 2 == 0 {
            xs.push(a().await?);
            ys.push(b().await?);
        } else {
            ys.push(b().await?);
            xs.push(a().await?);
        }
    }
    Ok((xs, ys))
}

/// A pseudo-random aid in 1..=`scale` × 100,000 (xorshift; no RNG dependency).
pub fn next_aid(state: &mut u64, scale: u32) -> i32 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % (100_000 * u64::from(scale))) as i32 + 1
}

/// `pgbench -i -s scale` on `url` (quietly).
pub async fn pgbench_init(url: &str, scale: u32) -> anyhow::Result<()> {
    let init = tokio::process::Command::new("pgbench")
        .args(["-i", "-q", "-s", &scale.to_string()])
        .arg(url)
        .stdout(Stdio::null())
        .output()
        .await
        .context("running pgbench -i (apt-get install -y postgresql-contrib)")?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    Ok(())
}

/// What one pgbench run reports.
#[derive(Debug, Clone, Copy)]
pub struct Pgbench {
    /// Transactions per second.
    pub tps: f64,
    /// Mean latency, ms: pgbench's `latency average`, which it derives from the
    /// run's length, its clients and the transactions they finished.
    pub avg_ms: f64,
}

/// Runs pgbench with `args` against `conninfo` for `secs`. Its per-transaction
/// log (`-l`) is not read: pgbench reads its clock lazily, once per pass over
/// the clients of a thread, so at c = 32 over half of the logged latencies are
/// 0 µs and its percentiles are not measurements.
pub async fn pgbench(args: &[&str], conninfo: &str, secs: u64) -> anyhow::Result<Pgbench> {
    let output = tokio::process::Command::new("pgbench")
        .args(["-n", "-T", &secs.to_string()])
        .args(args)
        .arg(conninfo)
        .output()
        .await
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(Pgbench {
        tps: figure(&text, "tps = ")?,
        avg_ms: figure(&text, "latency average = ")?,
    })
}

/// The number after `label` on pgbench's report line that starts with it.
fn figure(report: &str, label: &str) -> anyhow::Result<f64> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no `{label}` in {report}"))
}

/// PgBouncer in transaction pooling mode in front of one database, killed on drop.
pub struct Bouncer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The user clients log in as.
    pub user: String,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl Bouncer {
    /// Starts PgBouncer (`default_pool_size` = `pool_size`) for the database of
    /// `url` (a `postgres://user:password@host:port/db` URL), as `bench`.
    pub async fn start(url: &str, pool_size: u32) -> anyhow::Result<Self> {
        let config: tokio_postgres::Config = url.parse()?;
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let password = String::from_utf8_lossy(config.get_password().unwrap_or_default());
        let dbname = config.get_dbname().unwrap_or("postgres");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let dir = tempfile::tempdir()?;
        let listen = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!("\"{user}\" \"\"\n"),
        )?;
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\nbench = host=127.0.0.1 port={port} dbname={dbname} user={user} \
                 password={password}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\n\
                 auth_type = trust\nauth_file = {}/userlist.txt\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 500\nunix_socket_dir =\nlogfile =\n",
                dir.path().display()
            ),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let mut command = tokio::process::Command::new("pgbouncer");
        if nix::unistd::geteuid().is_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.path().join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting pgbouncer (apt-get install -y pgbouncer)")?;
        let bouncer = Self {
            port: listen,
            user,
            _dir: dir,
            _child: child,
        };
        // Ready when it accepts a connection.
        let conninfo = bouncer.conninfo();
        for _ in 0..50 {
            if tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return Ok(bouncer);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("pgbouncer did not accept connections on port {listen}")
    }

    /// A libpq conninfo for pgbench through it.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=bench user={}",
            self.port, self.user
        )
    }
}

/// The resident set size of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    Ok(kib / 1024.0)
}

/// CPU time (user + system) process `pid` has used, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: indices 11 and 12 after `)`.
    // /proc counts in USER_HZ, 100 per second on Linux whatever the kernel's HZ.
    Ok((ticks(11) + ticks(12)) / 100.0)
}
