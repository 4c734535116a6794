//! The PostgreSQL front door with real clients: psql (a catalogue command, a
//! transaction, \copy of 100,000 rows both ways, a cancel), pgbench in the
//! three query modes at 32 and 256 clients over a pool of 32, tokio-postgres
//! (prepared statements across backends, COPY, a transaction its client
//! abandons), psycopg 3 and asyncpg; two clients' statements of the same name;
//! exact wire counters.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use poolplane_client::proto::PoolConfig;
use poolplane_tests::{
    TestDatabase, TestPg, TestServer, connect, login_of, pg_conninfo, pg_url, run_client, text,
    wait_until,
};

/// A server, a database and a pool `name` of `min`..`max` on it.
pub(crate) async fn pool_with(
    name: &str,
    config: PoolConfig,
) -> anyhow::Result<(TestServer, TestDatabase)> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    server.client.create_pool(name, db.url(), config).await?;
    Ok((server, db))
}

pub(crate) fn sized(min: u32, max: u32) -> PoolConfig {
    PoolConfig {
        enable_dynamic_sizing: Some(false),
        acquire_timeout_secs: Some(10),
        ..poolplane_tests::proto_config(min, max)
    }
}

/// The highest count a query returns while a test's load runs (sampled every
/// 20 ms), e.g. backends in pg_stat_activity.
pub(crate) struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl PeakSampler {
    pub(crate) fn start(admin: tokio_postgres::Client, count: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicI64::new(0));
        let task = {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n: i64 = admin.query_one(count, &[]).await?.get(0);
                    peak.fetch_max(n, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                anyhow::Ok(())
            })
        };
        Self { stop, peak, task }
    }

    /// Stops sampling; the highest count seen.
    pub(crate) async fn finish(self) -> anyhow::Result<i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await??;
        Ok(self.peak.load(Ordering::Relaxed))
    }
}

/// A tokio-postgres client through the front door.
pub(crate) async fn wire_client(
    server: &TestServer,
    db: &TestDatabase,
    pool: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    connect(&pg_url(server, db, pool)?).await
}

#[tokio::test]
async fn psql_catalogue_transaction_copy_and_cancel() -> anyhow::Result<()> {
    let (server, db) = pool_with("app", sized(1, 4)).await?;
    let (_, password) = login_of(&db)?;
    let conninfo = pg_conninfo(&server, &db, "app")?;
    let psql = |args: Vec<String>| {
        let password = password.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_client("psql", &args, &password, Duration::from_secs(60)).await
        }
    };
    let dir = tempfile::tempdir()?;
    let rows = dir.path().join("rows.tsv");
    let back = dir.path().join("back.tsv");
    let data: String = (1..=100_000).map(|i| format!("{i}\tname {i}\n")).collect();
    std::fs::write(&rows, &data)?;
    let out = psql(vec![
        conninfo.clone(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
        "-c".into(),
        "CREATE TABLE items (id int PRIMARY KEY, name text)".into(),
        "-c".into(),
        "BEGIN; INSERT INTO items VALUES (0, 'zero'); COMMIT;".into(),
        "-c".into(),
        format!("\\copy items FROM '{}'", rows.display()),
        "-c".into(),
        "\\d items".into(),
        "-c".into(),
        "SELECT count(*), sum(id) FROM items".into(),
        "-c".into(),
        "DO $$ BEGIN RAISE NOTICE 'notice passed through'; END $$".into(),
        "-c".into(),
        ";".into(),
        "-c".into(),
        format!(
            "\\copy (SELECT id, name FROM items WHERE id > 0 ORDER BY id) TO '{}'",
            back.display()
        ),
    ])
    .await?;
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("COPY 100000"), "{printed}");
    assert!(printed.contains("100001 | 5000050000"), "{printed}");
    assert!(printed.contains("Table \"public.items\""), "{printed}");
    assert!(
        printed.contains("NOTICE:  notice passed through"),
        "{printed}"
    );
    assert_eq!(std::fs::read_to_string(&back)?, data);

    // A cancel (psql sends it on SIGINT) ends the statement within a second
    // and the session stays usable.
    let script = "SELECT pg_sleep(30);\nSELECT 'still here';\n";
    let mut child = tokio::process::Command::new("psql")
        .args([conninfo.as_str(), "-c", script])
        .env("PGPASSWORD", &password)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let target = db.connect().await?;
    wait_until(Duration::from_secs(10), "pg_sleep runs", || async {
        target
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'",
                &[],
            )
            .await
            .is_ok_and(|row| row.get::<_, i64>(0) == 1)
    })
    .await?;
    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().expect("running") as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    let took = sent.elapsed();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().expect("piped"), &mut stderr)
        .await?;
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr} {status}"
    );
    assert!(took < Duration::from_secs(2), "the cancel took {took:?}");
    let client = wire_client(&server, &db, "app").await?;
    let row = client.query_one("SELECT 'still usable'", &[]).await?;
    assert_eq!(row.get::<_, &str>(0), "still usable");
    Ok(())
}

/// Runs pgbench through the front door; returns its output, asserting it
/// finished with no failed transaction and no aborted client.
async fn pgbench(password: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = run_client("pgbench", args, password, Duration::from_secs(120)).await?;
    let printed = text(&out);
    assert!(out.status.success(), "pgbench {args:?}: {printed}");
    assert!(!printed.contains("aborted"), "pgbench {args:?}: {printed}");
    if !args.contains(&"-i") {
        assert!(
            printed.contains("number of failed transactions: 0 (0.000%)"),
            "pgbench {args:?}: {printed}"
        );
    }
    Ok(printed)
}

#[tokio::test]
async fn pgbench_in_every_query_mode_never_exceeds_the_pool() -> anyhow::Result<()> {
    let config = PoolConfig {
        min_connections: Some(4),
        max_connections: Some(32),
        enable_dynamic_sizing: Some(true),
        acquire_timeout_secs: Some(30),
        ..poolplane_tests::proto_config(4, 32)
    };
    let (server, db) = pool_with("bench", config).await?;
    let (user, password) = login_of(&db)?;
    let addr = server.server().pg_addr().expect("front door");
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let base = ["-h", &host, "-p", &port, "-U", &user];
    pgbench(
        &password,
        &[&base[..], &["-i", "-q", "-s", "1", "bench"]].concat(),
    )
    .await?;

    let sampler = PeakSampler::start(
        db.connect().await?,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'poolplane:bench'",
    );
    // A fixed number of transactions per client (not a duration: on a loaded
    // machine 256 logins may take longer than a short run).
    for (clients, each) in [("32", "100"), ("256", "12")] {
        for mode in ["simple", "extended", "prepared"] {
            for script in [&["-S"][..], &["-b", "tpcb-like"][..]] {
                let args = [
                    &base[..],
                    &["-n", "-M", mode, "-c", clients, "-j", "2", "-t", each],
                    script,
                    &["bench"],
                ]
                .concat();
                let printed = pgbench(&password, &args).await?;
                let total = clients.parse::<u32>()? * each.parse::<u32>()?;
                let processed =
                    format!("number of transactions actually processed: {total}/{total}");
                assert!(printed.contains(&processed), "{printed}");
            }
        }
    }
    let peak = sampler.finish().await?;
    eprintln!("peak backends of the pool: {peak}");
    assert!(peak <= 32, "{peak} backends > the pool's 32");
    assert!(peak >= 4, "the sampler saw the pool ({peak})");
    Ok(())
}

#[tokio::test]
async fn tokio_postgres_prepared_statements_copy_and_abandoned_transactions() -> anyhow::Result<()>
{
    let (server, db) = pool_with("tp", sized(2, 2)).await?;
    let client = wire_client(&server, &db, "tp").await?;
    let holder = wire_client(&server, &db, "tp").await?;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await?;
    // One prepared statement, used across transactions that land on both of
    // the pool's backends (the other client holds one now and then).
    let statement = client
        .prepare("SELECT pg_backend_pid(), $1::int * 2")
        .await?;
    let mut pids = HashSet::new();
    for i in 0..40 {
        let held = if i % 2 == 0 {
            holder.batch_execute("BEGIN; SELECT 1").await?;
            true
        } else {
            false
        };
        let row = client.query_one(&statement, &[&i]).await?;
        assert_eq!(row.get::<_, i32>(1), i * 2);
        pids.insert(row.get::<_, i32>(0));
        if held {
            holder.batch_execute("COMMIT").await?;
        }
    }
    assert_eq!(
        pids.len(),
        2,
        "the statement ran on both backends: {pids:?}"
    );
    // Pipelining: several Syncs in flight at once on one connection.
    let (a, b, c) = tokio::join!(
        client.query_one(&statement, &[&1]),
        client.query_one(&statement, &[&2]),
        client.query_one(&statement, &[&3]),
    );
    assert_eq!(
        [
            a?.get::<_, i32>(1),
            b?.get::<_, i32>(1),
            c?.get::<_, i32>(1)
        ],
        [2, 4, 6]
    );

    // A row far larger than the front door's buffers passes through whole.
    let row = client
        .query_one("SELECT repeat('x', 8000000) || 'end'", &[])
        .await?;
    let big: &str = row.get(0);
    assert_eq!(big.len(), 8_000_003);
    assert!(big.ends_with("xend"));

    // COPY in and out.
    let sink = client.copy_in("COPY t (id, v) FROM STDIN").await?;
    let data: String = (1..=10_000).map(|i| format!("{i}\tv{i}\n")).collect();
    futures_sink_send(sink, data.clone()).await?;
    let out = client
        .copy_out("COPY (SELECT id, v FROM t ORDER BY id) TO STDOUT")
        .await?;
    let copied = collect_copy(out).await?;
    assert_eq!(copied, data);

    // A client that goes away inside a transaction: rolled back before the
    // backend serves anyone else.
    let leaver = wire_client(&server, &db, "tp").await?;
    leaver
        .batch_execute("BEGIN; INSERT INTO t VALUES (0, 'never')")
        .await?;
    drop(leaver);
    let direct = db.connect().await?;
    wait_until(Duration::from_secs(10), "no session idle in transaction", || async {
        direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
                &[],
            )
            .await
            .is_ok_and(|row| row.get::<_, i64>(0) == 0)
    })
    .await?;
    for _ in 0..4 {
        let n: i64 = client
            .query_one("SELECT count(*) FROM t WHERE id = 0", &[])
            .await?
            .get(0);
        assert_eq!(n, 0, "the abandoned insert was rolled back");
    }
    Ok(())
}

async fn futures_sink_send(
    sink: tokio_postgres::CopyInSink<bytes::Bytes>,
    data: String,
) -> anyhow::Result<u64> {
    use futures_util::SinkExt as _;
    let mut sink = Box::pin(sink);
    for chunk in data.as_bytes().chunks(8192) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
    }
    Ok(sink.as_mut().finish().await?)
}

async fn collect_copy(out: tokio_postgres::CopyOutStream) -> anyhow::Result<String> {
    use futures_util::TryStreamExt as _;
    let chunks: Vec<bytes::Bytes> = out.try_collect().await?;
    Ok(chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect())
}

/// Runs a Python script with `url` as its argument; the last line it
/// printed on stdout. (Drivers log warnings on stderr: psycopg logs
/// "error ignored terminating …: pipeline aborted" when a pipeline that
/// raised is closed and the error's skipped results had not been read yet,
/// which depends on timing, as it does against PostgreSQL itself.)
async fn python(script: &str, url: &str) -> anyhow::Result<String> {
    let out = run_client(
        "python3",
        &["-c", script, url],
        "",
        Duration::from_secs(120),
    )
    .await?;
    assert!(out.status.success(), "python: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.trim().lines().last().unwrap_or_default().to_owned())
}

const PSYCOPG: &str = r#"
import sys, psycopg
url = sys.argv[1]
with psycopg.connect(url, prepare_threshold=0, autocommit=True) as a, \
     psycopg.connect(url, prepare_threshold=0, autocommit=True) as b:
    a.execute("CREATE TABLE IF NOT EXISTS pairs (k int, v int)")
    # Both connections name their first prepared statement alike (_pg3_0)
    # with different SQL: each must get its own, 1,000 times interleaved.
    for i in range(1000):
        x = a.execute("SELECT %s::int + 1", (i,)).fetchone()[0]
        y = b.execute("SELECT %s::int * 1000", (i,)).fetchone()[0]
        assert (x, y) == (i + 1, i * 1000), (i, x, y)
    with a.pipeline():
        for i in range(200):
            a.execute("INSERT INTO pairs VALUES (%s, %s)", (i, i * i))
    # An error mid-pipeline: the rest up to the Sync is skipped, the
    # connection carries on.
    try:
        with a.pipeline():
            a.execute("SELECT 1")
            a.execute("SELECT 1 / 0")
            a.execute("INSERT INTO pairs VALUES (-5, -5)")
    except psycopg.errors.DivisionByZero:
        pass
    assert a.execute("SELECT 42").fetchone()[0] == 42
    with a.cursor() as cur:
        cur.executemany("INSERT INTO pairs VALUES (%s, %s)", [(i, -i) for i in range(1000, 1300)])
    with a.transaction():
        a.execute("INSERT INTO pairs VALUES (-1, -1)")
    n, s = a.execute("SELECT count(*), sum(v) FROM pairs").fetchone()
    print(n, s)
"#;

const ASYNCPG: &str = r#"
import sys, asyncio, asyncpg
async def main(url):
    a = await asyncpg.connect(url, statement_cache_size=100)
    b = await asyncpg.connect(url, statement_cache_size=100)
    total = 0
    for i in range(300):
        x = await a.fetchval("SELECT $1::int + 1", i)
        y = await b.fetchval("SELECT $1::int * 1000", i)
        assert (x, y) == (i + 1, i * 1000), (i, x, y)
        total += x + y
    async with a.transaction():
        await a.execute("SELECT 1")
    await a.close(); await b.close()
    print(total)
asyncio.run(main(sys.argv[1]))
"#;

#[tokio::test]
async fn psycopg_and_asyncpg_named_statements_pipelines_and_executemany() -> anyhow::Result<()> {
    // A pool of one: every client's statements meet on one backend.
    let (server, db) = pool_with("py", sized(1, 1)).await?;
    let url = pg_url(&server, &db, "py")?;
    let last = python(PSYCOPG, &url).await?;
    // 200 (i, i²) + 300 (i, -i) + (-1, -1)
    let squares: i64 = (0..200i64).map(|i| i * i).sum();
    let negatives: i64 = (1000..1300i64).map(|i| -i).sum();
    assert_eq!(last, format!("501 {}", squares + negatives - 1));
    let last = python(ASYNCPG, &url).await?;
    let expected: i64 = (0..300i64).map(|i| i + 1 + i * 1000).sum();
    assert_eq!(last, expected.to_string());
    Ok(())
}

#[tokio::test]
async fn wire_counters_are_exact() -> anyhow::Result<()> {
    let (server, db) = pool_with("counted", sized(1, 2)).await?;
    let client = wire_client(&server, &db, "counted").await?;
    let stats = || -> anyhow::Result<poolplane::WireStats> {
        Ok(server
            .server()
            .registry()
            .pool("counted")?
            .pool_stats()
            .wire)
    };
    let before = stats()?;
    assert_eq!(before.clients, 1);
    for i in 0..10 {
        client.simple_query(&format!("SELECT {i}")).await?;
    }
    client
        .batch_execute("BEGIN; SELECT 1; SELECT 2; COMMIT")
        .await?;
    let after = stats()?;
    assert_eq!(after.transactions - before.transactions, 11);
    assert_eq!(after.queries - before.queries, 11);
    assert!(after.bytes_in > before.bytes_in);
    assert!(after.bytes_out > before.bytes_out);
    drop(client);
    wait_until(Duration::from_secs(5), "the client is gone", || async {
        stats().is_ok_and(|s| s.clients == 0)
    })
    .await?;
    Ok(())
}
