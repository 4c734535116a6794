//! The benchmark runner: every comparison of BENCHMARKS.md, side by side with its
//! baseline in the same run (raw bb8, dedicated tokio-postgres clients, pgbench,
//! PgBouncer), alternating A and B rounds and reporting medians and ratios as
//! Markdown tables. It starts its own PostgreSQL (the embedded, throwaway one)
//! with `pgbench -i -s 10` data. Nothing is asserted: the figures are reported.
//!
//! Run: `bash bench/run.sh [all|checkout|select|cache|validation|gateway|loadtest|streams|pools|scaling|health|frontdoor]`
//! (`BENCH_SECS` seconds per round, default 3; `BENCH_ROUNDS` rounds, default 5).

use std::sync::Arc;

use anyhow::Context as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bb8_postgres::PostgresConnectionManager;
use poolplane::{AdvancedConnectionPool, AdvancedPoolConfig, PoolEventKind};
use poolplane_client::PoolplaneClient;
use poolplane_tests::bench::{
    self, Bouncer, POINT_SELECT, alternate, median, next_aid, pgbench, pgbench_init,
};
use poolplane_tests::{FaultProxy, ServerProcess, TestDatabase, TestPg};
use tokio_postgres::NoTls;

const SCALE: u32 = 10;

/// What every section gets.
struct Bench {
    db: TestDatabase,
    secs: u64,
    rounds: usize,
    logs: tempfile::TempDir,
}

/// One Markdown table.
struct Table {
    title: String,
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    fn new(title: impl Into<String>, header: Vec<&'static str>) -> Self {
        Self {
            title: title.into(),
            header,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn print(&self) {
        println!("\n### {}\n", self.title);
        println!("| {} |", self.header.join(" | "));
        println!("|{}", " --- |".repeat(self.header.len()));
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
        for note in &self.notes {
            println!("\n{note}");
        }
    }
}

/// The median of the per-round ratios `xs[i] / ys[i]` (each round's two sides ran
/// back to back, so a drift of the machine between rounds cancels out of it), and
/// in brackets the lowest and highest of them.
fn ratio(xs: &[f64], ys: &[f64]) -> String {
    let ratios: Vec<f64> = xs.iter().zip(ys).map(|(x, y)| x / y).collect();
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2}x ({low:.2}–{high:.2})", median(&ratios))
}

/// A fixed-size pool of `size` on the bench database, cache on unless changed by
/// `tweak`.
async fn pool(
    b: &Bench,
    size: u32,
    tweak: impl FnOnce(&mut AdvancedPoolConfig),
) -> anyhow::Result<Arc<AdvancedConnectionPool>> {
    let mut config = AdvancedPoolConfig {
        min_connections: size,
        max_connections: size,
        enable_dynamic_sizing: false,
        ..AdvancedPoolConfig::default()
    };
    tweak(&mut config);
    Ok(Arc::new(
        AdvancedConnectionPool::new(b.db.url(), config).await?,
    ))
}

/// `clients` tasks running `op` back to back for `secs`; operations per second.
/// Each task stops itself at the deadline and yields now and then, so that an
/// operation that never waits cannot starve the runtime.
async fn throughput<F, Fut>(clients: u32, secs: u64, op: F) -> anyhow::Result<f64>
where
    F: Fn(u32, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                op(worker, n).await?;
                n += 1;
                if n.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            anyhow::Ok(n)
        }));
    }
    let mut count = 0;
    for task in tasks {
        count += task.await??;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// An aid for operation `n` of `worker`.
fn aid(worker: u32, n: u64) -> i32 {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (u64::from(worker) << 32) ^ n;
    next_aid(&mut state, SCALE)
}

/// Point selects through a poolplane pool from `clients` tasks; queries/s.
async fn pool_select(
    pool: &Arc<AdvancedConnectionPool>,
    clients: u32,
    secs: u64,
) -> anyhow::Result<f64> {
    let pool = Arc::clone(pool);
    throughput(clients, secs, move |w, n| {
        let pool = Arc::clone(&pool);
        async move {
            pool.query_one(POINT_SELECT, &[&aid(w, n)]).await?;
            Ok(())
        }
    })
    .await
}

/// `clients` tasks each running the point select on a dedicated tokio-postgres client
/// with the statement prepared once; queries per second.
async fn dedicated_select(
    dedicated: &[Arc<(tokio_postgres::Client, tokio_postgres::Statement)>],
    clients: u32,
    secs: u64,
) -> anyhow::Result<f64> {
    let dedicated = dedicated.to_vec();
    throughput(clients, secs, move |w, n| {
        let pair = Arc::clone(&dedicated[w as usize]);
        async move {
            pair.0.query_one(&pair.1, &[&aid(w, n)]).await?;
            Ok(())
        }
    })
    .await
}

/// Comparison 1: Checkout and return of a warm connection, one task: poolplane vs raw bb8.
async fn checkout(b: &Bench) -> anyhow::Result<Table> {
    let ours = pool(b, 8, |_| {}).await?;
    let manager = PostgresConnectionManager::new(b.db.url().parse()?, NoTls);
    let raw = bb8::Pool::builder()
        .max_size(8)
        .min_idle(Some(8))
        .test_on_check_out(false)
        .build(manager)
        .await?;
    let ns_per_op = |ops: f64| 1e9 / ops;
    let (a, bb) = alternate(
        b.rounds,
        || {
            let ours = Arc::clone(&ours);
            let secs = b.secs;
            async move {
                Ok(ns_per_op(
                    throughput(1, secs, move |_, _| {
                        let ours = Arc::clone(&ours);
                        async move {
                            drop(ours.get().await?);
                            Ok(())
                        }
                    })
                    .await?,
                ))
            }
        },
        || {
            let raw = raw.clone();
            let secs = b.secs;
            async move {
                Ok(ns_per_op(
                    throughput(1, secs, move |_, _| {
                        let raw = raw.clone();
                        async move {
                            drop(raw.get().await.map_err(|e| anyhow::anyhow!("{e}"))?);
                            Ok(())
                        }
                    })
                    .await?,
                ))
            }
        },
    )
    .await?;
    ours.close().await;
    let mut t = Table::new(
        "1. Checkout + return of a warm connection (one task, pool of 8)",
        vec![
            "poolplane",
            "raw bb8 (test_on_check_out off)",
            "time ratio",
            "target",
        ],
    );
    t.rows.push(vec![
        format!("{:.0} ns", median(&a)),
        format!("{:.0} ns", median(&bb)),
        ratio(&a, &bb),
        "≤ 1.25x".into(),
    ]);
    Ok(t)
}

/// Comparison 2: Point select at c = 1, 8, 32: poolplane (cache on) vs dedicated clients
/// prepared once vs `pgbench -S -M prepared`.
async fn select(b: &Bench) -> anyhow::Result<Table> {
    let mut t = Table::new(
        "2. Point select: poolplane (cache on) vs dedicated tokio-postgres clients vs pgbench -S -M prepared",
        vec![
            "c",
            "poolplane q/s",
            "dedicated q/s",
            "pgbench tps",
            "vs dedicated (≥ 0.95x)",
            "vs pgbench (≥ 1.0x at 32)",
        ],
    );
    for c in [1u32, 8, 32] {
        let ours = pool(b, c, |_| {}).await?;
        let mut dedicated = Vec::new();
        for _ in 0..c {
            let client = poolplane_tests::connect(b.db.url()).await?;
            let statement = client.prepare(POINT_SELECT).await?;
            dedicated.push(Arc::new((client, statement)));
        }
        let (mut xs, mut ys, mut zs) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..b.rounds {
            // Each side runs first in turn (the first meets a colder machine).
            for side in (0..3).map(|i| (i + round) % 3) {
                match side {
                    0 => xs.push(pool_select(&ours, c, b.secs).await?),
                    1 => ys.push(dedicated_select(&dedicated, c, b.secs).await?),
                    _ => {
                        let jobs = c.min(2).to_string();
                        let args = ["-S", "-M", "prepared", "-c", &c.to_string(), "-j", &jobs];
                        zs.push(pgbench(&args, b.db.url(), b.secs).await?.tps);
                    }
                }
            }
        }
        let stats = ours.pool_stats();
        t.notes.push(format!(
            "c = {c}: poolplane's pool opened {} connections and recycled {} (recycle_threshold_queries {}) over its rounds.",
            stats.connections_created,
            stats.connections_recycled,
            ours.config().recycle_threshold_queries,
        ));
        ours.close().await;
        let (x, y, z) = (median(&xs), median(&ys), median(&zs));
        t.rows.push(vec![
            c.to_string(),
            format!("{x:.0}"),
            format!("{y:.0}"),
            format!("{z:.0}"),
            ratio(&xs, &ys),
            ratio(&xs, &zs),
        ]);
    }
    Ok(t)
}

/// Comparisons 3 and 4: Two configs of the same pool at c = 32, alternating.
async fn two_configs(
    b: &Bench,
    title: &str,
    names: [&'static str; 2],
    target: &str,
    tweak_b: impl FnOnce(&mut AdvancedPoolConfig),
) -> anyhow::Result<Table> {
    let a_pool = pool(b, 32, |_| {}).await?;
    let b_pool = pool(b, 32, tweak_b).await?;
    let (xs, ys) = alternate(
        b.rounds,
        || pool_select(&a_pool, 32, b.secs),
        || pool_select(&b_pool, 32, b.secs),
    )
    .await?;
    a_pool.close().await;
    b_pool.close().await;
    let (x, y) = (median(&xs), median(&ys));
    let mut t = Table::new(title, vec![names[0], names[1], "ratio", "target"]);
    t.rows.push(vec![
        format!("{x:.0} q/s"),
        format!("{y:.0} q/s"),
        ratio(&xs, &ys),
        target.into(),
    ]);
    Ok(t)
}

/// Comparison 5: QueryService through the SDK vs pgbench -S -M simple through PgBouncer.
async fn gateway(b: &Bench) -> anyhow::Result<Table> {
    const C: u32 = 32;
    let control = TestPg::database().await?;
    let bouncer = Bouncer::start(b.db.url(), C).await?;
    let server = ServerProcess::start(&["--database-url", control.url()]).await?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(PoolplaneClient::connect(server.addr.to_string()).await?);
    }
    let config = poolplane_client::proto::PoolConfig {
        min_connections: Some(C),
        max_connections: Some(C),
        enable_dynamic_sizing: Some(false),
        ..Default::default()
    };
    clients[0].create_pool("bench", b.db.url(), config).await?;
    let clients = Arc::new(clients);
    let ours = || {
        let clients = Arc::clone(&clients);
        throughput(C, b.secs, move |w, n| {
            let client = clients[w as usize % clients.len()].clone();
            async move {
                client
                    .query("bench", POINT_SELECT, poolplane_client::params![aid(w, n)])
                    .await?;
                Ok(())
            }
        })
    };
    let args = ["-S", "-M", "simple", "-c", "32", "-j", "2"];
    let theirs = || async { Ok(pgbench(&args, &bouncer.conninfo(), b.secs).await?.tps) };
    let (xs, ys) = alternate(b.rounds, ours, theirs).await?;
    let (x, y) = (median(&xs), median(&ys));
    let mut t = Table::new(
        "5. QueryService point select through the SDK (c = 32, pool 32) vs pgbench -S -M simple through PgBouncer (transaction pooling, pool 32)",
        vec![
            "QueryService q/s",
            "pgbench via PgBouncer tps",
            "ratio",
            "target",
        ],
    );
    t.rows.push(vec![
        format!("{x:.0}"),
        format!("{y:.0}"),
        ratio(&xs, &ys),
        "≥ 1.0x".into(),
    ]);
    Ok(t)
}

/// Comparison 11: the PostgreSQL front door vs PgBouncer (transaction pooling,
/// the same pool size) with pgbench -S in the simple and extended protocols at
/// 32 and 256 clients; `-M prepared` through the front door vs pgbench straight
/// to PostgreSQL (PgBouncer 1.18 cannot prepare in transaction mode).
async fn frontdoor(b: &Bench) -> anyhow::Result<Table> {
    const POOL: u32 = 32;
    let control = TestPg::database().await?;
    let bouncer = Bouncer::start(b.db.url(), POOL).await?;
    let server = ServerProcess::start(&["--database-url", control.url()]).await?;
    let client = PoolplaneClient::connect(server.addr.to_string()).await?;
    let config = poolplane_client::proto::PoolConfig {
        min_connections: Some(POOL),
        max_connections: Some(POOL),
        enable_dynamic_sizing: Some(false),
        acquire_timeout_secs: Some(60),
        ..Default::default()
    };
    client.create_pool("bench", b.db.url(), config).await?;
    let target: tokio_postgres::Config = b.db.url().parse()?;
    let user = target.get_user().unwrap_or("postgres");
    let password = String::from_utf8_lossy(target.get_password().unwrap_or_default()).into_owned();
    let door = server.pg_addr.context("the server runs a front door")?;
    let ours = format!(
        "host={} port={} dbname=bench user={user} password={password} sslmode=disable",
        door.ip(),
        door.port()
    );
    let direct = {
        let port = target.get_ports().first().copied().unwrap_or(5432);
        let dbname = target.get_dbname().unwrap_or("postgres");
        format!(
            "host=127.0.0.1 port={port} dbname={dbname} user={user} password={password} sslmode=disable"
        )
    };
    let mut t = Table::new(
        "11. pgbench -S through the PostgreSQL front door vs through PgBouncer (transaction pooling, pool 32 both), and -M prepared vs PostgreSQL direct",
        vec![
            "c",
            "mode",
            "front door tps",
            "baseline",
            "baseline tps",
            "ratio",
            "target",
        ],
    );
    for c in ["32", "256"] {
        for (mode, baseline, conninfo, goal) in [
            (
                "simple",
                "PgBouncer",
                bouncer.conninfo(),
                if c == "32" { "≥ 1.0x" } else { "≥ 1.2x" },
            ),
            (
                "extended",
                "PgBouncer",
                bouncer.conninfo(),
                if c == "32" { "≥ 1.0x" } else { "≥ 1.2x" },
            ),
            ("prepared", "PostgreSQL direct", direct.clone(), "≥ 0.8x"),
        ] {
            let args = ["-S", "-M", mode, "-c", c, "-j", "2"];
            let run_ours = || async { Ok(pgbench(&args, &ours, b.secs).await?.tps) };
            let run_theirs = || async { Ok(pgbench(&args, &conninfo, b.secs).await?.tps) };
            let (xs, ys) = alternate(b.rounds, run_ours, run_theirs).await?;
            t.rows.push(vec![
                c.into(),
                mode.into(),
                format!("{:.0}", median(&xs)),
                baseline.into(),
                format!("{:.0}", median(&ys)),
                ratio(&xs, &ys),
                goal.into(),
            ]);
        }
    }
    t.notes.push(format!(
        "pgbench -S -j 2 for {} s per round, {} alternating rounds; scale {SCALE}. The front door logs clients in with SCRAM (PgBouncer here: trust), outside the timed part.",
        b.secs, b.rounds
    ));
    Ok(t)
}

/// Comparison 6: The load tester vs `pgbench -M prepared` running the same fixed statement.
async fn loadtest(b: &Bench) -> anyhow::Result<Table> {
    const FIXED: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";
    let script = b.logs.path().join("fixed.sql");
    std::fs::write(&script, format!("{FIXED};\n"))?;
    let mut t = Table::new(
        "6. The load tester vs pgbench -M prepared, the same fixed point select",
        vec![
            "c",
            "load tester rps",
            "pgbench tps",
            "rate ratio (≥ 0.95x)",
            "mean ms (ours / pgbench)",
            "p50 / p95 ms (ours)",
        ],
    );
    for c in [8u32, 32] {
        let ours = pool(b, c, |_| {}).await?;
        let (mut rates, mut means, mut p50s, mut p95s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut their_rates, mut their_means) = (Vec::new(), Vec::new());
        let run_ours = || async {
            let options = poolplane::LoadTestOptions {
                concurrency: c,
                duration: Duration::from_secs(b.secs),
                query: Some(FIXED.into()),
                warmup: Duration::ZERO,
                target_rps: None,
                read_only: false,
            };
            poolplane::PoolLoadTester::new(Arc::clone(&ours))
                .run(options, None, tokio_util::sync::CancellationToken::new())
                .await
        };
        let script = format!("{}", script.display());
        let clients = c.to_string();
        let args = ["-M", "prepared", "-f", &script, "-c", &clients, "-j", "2"];
        let run_theirs = || pgbench(&args, b.db.url(), b.secs);
        for round in 0..b.rounds {
            // Each side runs first in turn (the first meets a colder machine).
            let (r, p) = if round % 2 == 0 {
                let r = run_ours().await?;
                (r, run_theirs().await?)
            } else {
                let p = run_theirs().await?;
                (run_ours().await?, p)
            };
            rates.push(r.requests_per_second);
            means.push(r.avg_response_time_ms);
            p50s.push(r.p50_response_time_ms);
            p95s.push(r.p95_response_time_ms);
            their_rates.push(p.tps);
            their_means.push(p.avg_ms);
        }
        ours.close().await;
        let (x, y) = (median(&rates), median(&their_rates));
        t.rows.push(vec![
            c.to_string(),
            format!("{x:.0}"),
            format!("{y:.0}"),
            ratio(&rates, &their_rates),
            format!("{:.3} / {:.3}", median(&means), median(&their_means)),
            format!("{:.3} / {:.3}", median(&p50s), median(&p95s)),
        ]);
    }
    t.notes.push(seed_example(b, FIXED).await?);
    Ok(t)
}

/// The 50-worker example: 50 workers on the default configuration (min 20, max
/// 100), graded A or B on a machine that keeps up; a sentence for the notes.
async fn seed_example(b: &Bench, query: &str) -> anyhow::Result<String> {
    let seed =
        Arc::new(AdvancedConnectionPool::new(b.db.url(), AdvancedPoolConfig::default()).await?);
    let options = poolplane::LoadTestOptions {
        concurrency: 50,
        duration: Duration::from_secs(b.secs),
        query: Some(query.into()),
        warmup: Duration::ZERO,
        target_rps: None,
        read_only: false,
    };
    let r = poolplane::PoolLoadTester::new(Arc::clone(&seed))
        .run(options, None, tokio_util::sync::CancellationToken::new())
        .await?;
    seed.close().await;
    Ok(format!(
        "The 50-worker example (the default configuration, {} s): grade {} (target A or B), p95 {:.2} ms, mean utilization {:.2} of {}, {:.0} rps.",
        b.secs,
        r.grade.letter(),
        r.p95_response_time_ms,
        r.avg_utilization,
        r.capacity,
        r.requests_per_second
    ))
}

/// Comparison 7: WatchPoolStats fan-out at 1 s: the server's CPU and RSS with 1,000 and
/// 10,000 subscribers (over connections of 500 streams each).
#[expect(
    clippy::too_many_lines,
    reason = "one comparison read top to bottom: set-up, two measured rounds, the table"
)]
async fn streams(b: &Bench) -> anyhow::Result<Table> {
    const PER_CONNECTION: usize = 500;
    const MEASURE: Duration = Duration::from_secs(10);
    let control = TestPg::database().await?;
    let server = ServerProcess::start(&[
        "--database-url",
        control.url(),
        "--max-watch-streams",
        "60000",
        "--max-watch-streams-per-connection",
        "1000",
        "--max-concurrent-streams",
        "1000",
    ])
    .await?;
    let admin = PoolplaneClient::connect(server.addr.to_string()).await?;
    admin
        .create_pool("watched", b.db.url(), poolplane_tests::proto_config(1, 2))
        .await?;
    let mut t = Table::new(
        "7. WatchPoolStats fan-out at 1 s (one pool; subscribers in this process, 500 per HTTP/2 connection)",
        vec![
            "subscribers",
            "server CPU (one core)",
            "server RSS",
            "messages/s received",
            "target",
        ],
    );
    for subscribers in [1_000usize, 10_000, 50_000] {
        let received = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(subscribers);
        let mut client = None;
        for i in 0..subscribers {
            if i % PER_CONNECTION == 0 {
                client = Some(PoolplaneClient::connect(server.addr.to_string()).await?);
            }
            let client = client.clone().expect("a client");
            let received = Arc::clone(&received);
            tasks.push(tokio::spawn(async move {
                let mut watch = client.watch_pool_stats(&["watched"], 1000).await?;
                while watch.next().await?.is_some() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        // Every stream has sent its first snapshot, then a settling second.
        let opened = Instant::now();
        while received.load(Ordering::Relaxed) < subscribers as u64 {
            anyhow::ensure!(
                opened.elapsed() < Duration::from_secs(120),
                "streams did not open"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (cpu_before, got_before) = (
            bench::cpu_seconds(server.pid())?,
            received.load(Ordering::Relaxed),
        );
        tokio::time::sleep(MEASURE).await;
        let cpu = (bench::cpu_seconds(server.pid())? - cpu_before) / MEASURE.as_secs_f64();
        let rate = (received.load(Ordering::Relaxed) - got_before) as f64 / MEASURE.as_secs_f64();
        let rss = bench::rss_mib(server.pid())?;
        for task in &tasks {
            task.abort();
        }
        t.rows.push(vec![
            subscribers.to_string(),
            format!("{:.1}%", cpu * 100.0),
            format!("{rss:.0} MiB"),
            format!("{rate:.0}"),
            match subscribers {
                10_000 => "under 5% of a core and 100 MB",
                50_000 => "served: a snapshot per stream per second",
                _ => "",
            }
            .into(),
        ]);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(t)
}

/// Comparison 8: 1,000 pools with min_connections 0 in one server, against a database whose
/// max_connections is 100.
async fn pools(_b: &Bench) -> anyhow::Result<Table> {
    const POOLS: usize = 1000;
    let target = poolplane::EmbeddedPg::start(poolplane::EmbeddedPgOptions {
        settings: vec![("max_connections".into(), "100".into())],
        ..Default::default()
    })
    .await?;
    let control = TestPg::database().await?;
    let server =
        ServerProcess::start(&["--database-url", control.url(), "--max-pools", "2000"]).await?;
    let client = PoolplaneClient::connect(server.addr.to_string()).await?;
    let rss_before = bench::rss_mib(server.pid())?;
    let config = poolplane_client::proto::PoolConfig {
        min_connections: Some(0),
        max_connections: Some(4),
        ..Default::default()
    };
    let url = target.url("postgres");
    let mut creates = Vec::with_capacity(POOLS);
    for i in 0..POOLS {
        let started = Instant::now();
        client
            .create_pool(&format!("p{i:04}"), &url, config.clone())
            .await?;
        creates.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut lists = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let listed = client.list_pools().await?;
        anyhow::ensure!(listed.len() == POOLS, "{} pools listed", listed.len());
        lists.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin = poolplane_tests::connect(&url).await?;
    let held: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'poolplane:%'",
            &[],
        )
        .await?
        .get(0);
    let rss = bench::rss_mib(server.pid())?;
    let mut t = Table::new(
        "8. 1,000 pools with min_connections 0 in one server (database max_connections 100)",
        vec![
            "RSS after (before)",
            "backends held idle",
            "CreatePool p50 / p99",
            "ListPools median",
            "targets",
        ],
    );
    t.rows.push(vec![
        format!("{rss:.0} MiB ({rss_before:.0} MiB)"),
        held.to_string(),
        format!(
            "{:.1} / {:.1} ms",
            bench::quantile(&mut creates.clone(), 0.5),
            bench::quantile(&mut creates, 0.99)
        ),
        format!("{:.1} ms", median(&lists)),
        "RSS < 200 MiB, 0 backends".into(),
    ]);
    drop(admin);
    target.stop().await;
    Ok(t)
}

/// Comparison 9: Scaling reaction: a load step to the first scale-up event, and the end of
/// load to the size back at min.
async fn scaling(b: &Bench) -> anyhow::Result<Table> {
    let config = AdvancedPoolConfig {
        min_connections: 2,
        max_connections: 40,
        enable_dynamic_sizing: true,
        min_scale_interval_secs: 2,
        scale_down_factor: 0.5,
        ..AdvancedPoolConfig::default()
    };
    let pool = Arc::new(AdvancedConnectionPool::new(b.db.url(), config.clone()).await?);
    let mut events = pool.subscribe();
    // Checkout waits (µs) once the pool has grown: steady demand barely waits.
    let waits = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (pool, waits, measuring) = (
            Arc::clone(&pool),
            Arc::clone(&waits),
            Arc::clone(&measuring),
        );
        tokio::spawn(throughput(32, 4, move |_, _| {
            let (pool, waits, measuring) = (
                Arc::clone(&pool),
                Arc::clone(&waits),
                Arc::clone(&measuring),
            );
            async move {
                let asked = Instant::now();
                let mut conn = pool.get().await?;
                if measuring.load(Ordering::Relaxed) {
                    let waited = asked.elapsed().as_secs_f64() * 1e6;
                    waits.lock().expect("waits").push(waited);
                }
                conn.execute("SELECT pg_sleep(0.001)", &[]).await?;
                Ok(())
            }
        }))
    };
    let step = Instant::now();
    let up = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv()).await??;
        if let PoolEventKind::Scaled { to, .. } = event.kind
            && to > config.min_connections
        {
            break step.elapsed();
        }
    };
    // A second for the new connections to open, then the steady part.
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    load.await??;
    let stopped = Instant::now();
    let p99_wait = bench::quantile(&mut waits.lock().expect("waits"), 0.99);
    while pool.pool_stats().current_size > config.min_connections {
        anyhow::ensure!(
            stopped.elapsed() < Duration::from_secs(120),
            "never back at min"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let down = stopped.elapsed();
    pool.close().await;
    let mut t = Table::new(
        "9. Scaling reaction (min 2, max 40, thresholds 0.8/0.3, up ×1.2, down ×0.5, min_scale_interval 2 s; 32 callers of pg_sleep(1 ms))",
        vec![
            "load step → first scale-up",
            "checkout wait p99 once grown",
            "end of load → size back at min",
            "expected",
        ],
    );
    t.rows.push(vec![
        format!("{:.2} s", up.as_secs_f64()),
        format!("{p99_wait:.1} µs"),
        format!("{:.1} s", down.as_secs_f64()),
        "up within 1 s (one sampling second); p99 wait < 5 ms (5000 µs); down: one step per quiet interval, 40→20→10→5→2 = 5 intervals".into(),
    ]);
    Ok(t)
}

/// Comparison 10: Health: a cut to unhealthy, a restore to healthy.
async fn health(b: &Bench) -> anyhow::Result<Table> {
    let proxy = FaultProxy::start(b.db.server_addr()?).await?;
    let config = AdvancedPoolConfig {
        min_connections: 1,
        max_connections: 2,
        health_check_interval_secs: 2,
        health_check_timeout_secs: 1,
        max_failed_health_checks: 3,
        ..AdvancedPoolConfig::default()
    };
    let pool = AdvancedConnectionPool::new(&b.db.url_via(proxy.addr()), config).await?;
    let mut events = pool.subscribe();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cut = Instant::now();
    proxy.cut();
    wait_for(&mut events, |k| {
        matches!(k, PoolEventKind::BecameUnhealthy { .. })
    })
    .await?;
    let down = cut.elapsed();
    let restored = Instant::now();
    proxy.restore();
    wait_for(&mut events, |k| {
        matches!(k, PoolEventKind::Recovered { .. })
    })
    .await?;
    let up = restored.elapsed();
    pool.close().await;
    let mut t = Table::new(
        "10. Health (check every 2 s, 1 s timeout, unhealthy after 3 failures)",
        vec!["cut → unhealthy", "restore → healthy", "configured bounds"],
    );
    t.rows.push(vec![
        format!("{:.1} s", down.as_secs_f64()),
        format!("{:.1} s", up.as_secs_f64()),
        "unhealthy within 3 × 2 s (+1 s timeout); healthy within one interval (2 s)".into(),
    ]);
    Ok(t)
}

async fn wait_for(
    events: &mut tokio::sync::broadcast::Receiver<poolplane::PoolEvent>,
    wanted: impl Fn(&PoolEventKind) -> bool,
) -> anyhow::Result<()> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv()).await??;
        if wanted(&event.kind) {
            return Ok(());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let env_or = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let db = TestPg::database().await?;
    eprintln!("pgbench -i -s {SCALE} …");
    pgbench_init(db.url(), SCALE).await?;
    let b = Bench {
        db,
        secs: env_or("BENCH_SECS", 3),
        rounds: env_or("BENCH_ROUNDS", 5) as usize,
        logs: tempfile::tempdir()?,
    };
    let all = what == "all";
    let started = Instant::now();
    println!(
        "## Run of {} (commit {}), {} s rounds, {} rounds, medians",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::env::var("BENCH_COMMIT").unwrap_or_else(|_| "?".into()),
        b.secs,
        b.rounds
    );
    let mut ran = 0;
    macro_rules! section {
        ($name:literal, $run:expr) => {
            if all || what == $name {
                eprintln!("{} …", $name);
                $run.await?.print();
                ran += 1;
            }
        };
    }
    section!("checkout", checkout(&b));
    section!("select", select(&b));
    section!(
        "cache",
        two_configs(
            &b,
            "3. Statement cache on vs off (the SQL prepared on every call), c = 32",
            ["cache on", "cache off"],
            "≥ 2.5x",
            |c| c.enable_prepared_statements = false,
        )
    );
    section!(
        "validation",
        two_configs(
            &b,
            "4. Validation on checkout as designed (idle > 500 ms) vs never, c = 32",
            ["as designed", "no validation"],
            "≥ 0.95x",
            |c| c.validation_idle_threshold_ms = 3_153_600_000_000,
        )
    );
    section!("gateway", gateway(&b));
    section!("loadtest", loadtest(&b));
    section!("streams", streams(&b));
    section!("pools", pools(&b));
    section!("scaling", scaling(&b));
    section!("health", health(&b));
    section!("frontdoor", frontdoor(&b));
    anyhow::ensure!(ran > 0, "unknown benchmark `{what}`");
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
