//! Several replicas on one control database: a definition changed on any
//! replica is in force on every other within a second (gRPC and the front
//! door), concurrent changes of one pool leave one winner and an ABORTED
//! loser, and one replica at a time leads the singleton jobs — another within
//! a lease of its death.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use poolplane_client::PoolplaneClient;
use poolplane_client::proto::{PoolConfig, WatchPoolStatsResponse};
use poolplane_tests::{
    ServerProcess, TestDatabase, TestPg, http_get, login_of, metric_value, wait_until,
};

use crate::frontdoor::sized;

const LEASE: &str = "2s";

/// The tests that put pgbench load on several replicas run one at a time
/// (each alone keeps two cores busy).
static LOADED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Replica {
    process: ServerProcess,
    sdk: PoolplaneClient,
    id: &'static str,
}

/// A replica `id` of the group on `control_url` (lease [`LEASE`]), with
/// `more` flags.
async fn replica_on(control_url: &str, id: &'static str, more: &[&str]) -> anyhow::Result<Replica> {
    leased(control_url, id, LEASE, more).await
}

/// A replica `id` with its `lease`.
async fn leased(
    control_url: &str,
    id: &'static str,
    lease: &str,
    more: &[&str],
) -> anyhow::Result<Replica> {
    let mut args = vec![
        "--database-url",
        control_url,
        "--replica-id",
        id,
        "--replica-lease",
        lease,
    ];
    args.extend_from_slice(more);
    let process = ServerProcess::start(&args).await?;
    let sdk = PoolplaneClient::connect(process.addr.to_string()).await?;
    Ok(Replica { process, sdk, id })
}

/// A replica recording history every 200 ms.
async fn replica(control: &TestDatabase, id: &'static str) -> anyhow::Result<Replica> {
    let history = ["--metrics-retention", "60s", "--metrics-interval", "200ms"];
    replica_on(control.url(), id, &history).await
}

/// Creates `pool` on `db` through `on`; the `others` have it within 1 s.
async fn create_everywhere(
    on: &Replica,
    others: &[&Replica],
    db: &TestDatabase,
    pool: &str,
    config: PoolConfig,
) -> anyhow::Result<()> {
    on.sdk.create_pool(pool, db.url(), config).await?;
    for r in others {
        wait_until(
            Duration::from_secs(1),
            "the pool on another replica",
            || async { r.sdk.get_pool(pool).await.is_ok() },
        )
        .await?;
    }
    Ok(())
}

/// Whether a front-door query on `pool` through `replica` answers.
async fn answers(replica: &Replica, db: &TestDatabase, pool: &str) -> bool {
    let Some(pg) = replica.process.pg_addr else {
        return false;
    };
    let Ok((user, password)) = login_of(db) else {
        return false;
    };
    let url = format!(
        "postgres://{user}:{password}@{}:{}/{pool}?sslmode=disable&connect_timeout=2",
        pg.ip(),
        pg.port()
    );
    let Ok(client) = poolplane_tests::connect(&url).await else {
        return false;
    };
    client.simple_query("SELECT 1").await.is_ok()
}

async fn max_connections(replica: &Replica, pool: &str) -> Option<u32> {
    let info = replica.sdk.get_pool(pool).await.ok()?;
    info.config?.max_connections
}

#[tokio::test]
async fn a_definition_changed_on_one_replica_is_in_force_on_every_other_within_a_second()
-> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let a = replica(&control, "a").await?;
    let b = replica(&control, "b").await?;
    let c = replica(&control, "c").await?;

    // Created on A: B's and C's gRPC and front door serve it within 1 s.
    let created = Instant::now();
    create_everywhere(&a, &[&b, &c], &db, "shared", sized(1, 2)).await?;
    for r in [&a, &b, &c] {
        assert!(answers(r, &db, "shared").await, "front door of {}", r.id);
    }
    eprintln!(
        "created on a, served by b and c after {:?}",
        created.elapsed()
    );

    // Each replica records the pool's history under its id; the window's
    // counters rise per replica, summed for the pool (before any change
    // rebuilds the pool and resets its counters).
    for r in [&a, &b, &c] {
        for _ in 0..5 {
            assert!(answers(r, &db, "shared").await);
        }
    }
    let history = control.connect().await?;
    wait_until(Duration::from_secs(5), "rows of every replica", || async {
        history
            .query_one(
                "SELECT count(DISTINCT replica) FROM connection_pool_metrics \
                 WHERE pool_name = 'shared' AND total_acquires >= 5",
                &[],
            )
            .await
            .is_ok_and(|row| row.get::<_, i64>(0) == 3)
    })
    .await?;
    let row = history
        .query_one(
            "SELECT (SELECT acquires FROM poolplane_metrics_window(now() - interval '1 hour', 'shared')), \
             (SELECT sum(rise)::bigint FROM (SELECT max(total_acquires) - min(total_acquires) AS rise \
              FROM connection_pool_metrics WHERE pool_name = 'shared' GROUP BY replica) r)",
            &[],
        )
        .await?;
    let (window, per_replica): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(window, per_replica, "acquires over the window");
    assert!(window > 0);
    // GetMetricsHistory of one replica, or of every replica summed.
    let samples = |points: Vec<poolplane_client::proto::MetricsPoint>| -> i64 {
        points.iter().map(|p| p.samples).sum()
    };
    let of_b = samples(
        a.sdk
            .get_replica_metrics_history("shared", None, None, 10, Some("b"))
            .await?,
    );
    let of_none = samples(
        a.sdk
            .get_replica_metrics_history("shared", None, None, 10, Some("nobody"))
            .await?,
    );
    let of_all = samples(a.sdk.get_metrics_history("shared", None, None, 10).await?);
    assert!(
        of_b > 0 && of_none == 0 && of_all > of_b,
        "{of_b} {of_none} {of_all}"
    );

    // GetPoolStats for the group: each replica's row and their total.
    // (Each replica publishes its stats with its heartbeat.)
    wait_until(Duration::from_secs(5), "stats of every replica", || async {
        b.sdk
            .get_group_pool_stats("shared")
            .await
            .is_ok_and(|(each, total)| each.len() == 3 && total.wire_transactions >= 15)
    })
    .await?;
    let (each, total) = b.sdk.get_group_pool_stats("shared").await?;
    assert_eq!(
        each.iter()
            .map(|r| r.replica_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    let sum = |f: fn(&poolplane_client::proto::PoolStats) -> u64| -> u64 {
        each.iter()
            .map(|r| f(r.stats.as_ref().expect("stats")))
            .sum()
    };
    assert_eq!(total.connections as u64, sum(|s| u64::from(s.connections)));
    assert_eq!(total.total_acquires, sum(|s| s.total_acquires));
    assert_eq!(total.wire_transactions, sum(|s| s.wire_transactions));

    // WatchPoolStats for the group (on C): each snapshot carries every
    // replica's row and their total, and follows what the others serve.
    let mut watch = c.sdk.watch_group_pool_stats(&["shared"], 200).await?;
    let first = next_snapshot(&mut watch).await?;
    let ids: Vec<&str> = first
        .replicas
        .iter()
        .map(|r| r.replica_id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let watched_total = first.total.clone().expect("a total");
    let rows_sum: u64 = first
        .replicas
        .iter()
        .map(|r| r.stats.as_ref().expect("stats").wire_transactions)
        .sum();
    assert_eq!(watched_total.wire_transactions, rows_sum);
    assert!(rows_sum >= 15, "{rows_sum}");
    for _ in 0..10 {
        assert!(answers(&a, &db, "shared").await);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let snapshot = next_snapshot(&mut watch).await?;
        let on_a = snapshot
            .replicas
            .iter()
            .find(|r| r.replica_id == "a")
            .and_then(|r| r.stats.as_ref())
            .map_or(0, |s| s.wire_transactions);
        let total = snapshot.total.expect("a total").wire_transactions;
        if total >= watched_total.wire_transactions + 10 && on_a >= 15 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's transactions never reached C's watch"
        );
    }
    drop(watch);

    // Updated on B: in force on A and C within 1 s.
    let change = PoolConfig {
        max_connections: Some(3),
        ..PoolConfig::default()
    };
    b.sdk.update_pool_config("shared", change).await?;
    for r in [&a, &c] {
        wait_until(
            Duration::from_secs(1),
            "the change on another replica",
            || async { max_connections(r, "shared").await == Some(3) },
        )
        .await?;
    }

    // Two replicas change it at once (each rebuilds the pool first): one wins,
    // the other is told, and every replica ends with the winner's config.
    let rebuild = |capacity: u32| PoolConfig {
        statement_cache_capacity: Some(capacity),
        ..PoolConfig::default()
    };
    let (from_a, from_c) = tokio::join!(
        a.sdk.update_pool_config("shared", rebuild(111)),
        c.sdk.update_pool_config("shared", rebuild(222)),
    );
    let aborted = |r: &Result<_, poolplane_client::Error>| {
        r.as_ref()
            .is_err_and(|e| format!("{e:#}").contains("changed by another replica"))
    };
    let winner = match (&from_a, &from_c) {
        (Ok(_), e) if aborted(e) => 111,
        (e, Ok(_)) if aborted(e) => 222,
        other => panic!("one must win and one be aborted: {other:?}"),
    };
    for r in [&a, &b, &c] {
        wait_until(Duration::from_secs(2), "the winner everywhere", || async {
            r.sdk
                .get_pool("shared")
                .await
                .ok()
                .and_then(|p| p.config?.statement_cache_capacity)
                == Some(winner)
        })
        .await?;
    }

    // Deleted on C: gone everywhere within 1 s.
    c.sdk.delete_pool("shared").await?;
    for r in [&a, &b] {
        wait_until(Duration::from_secs(1), "the pool gone", || async {
            r.sdk.get_pool("shared").await.is_err()
        })
        .await?;
        assert!(!answers(r, &db, "shared").await, "front door of {}", r.id);
    }
    Ok(())
}

/// The next snapshot of a group watch, within 5 s.
async fn next_snapshot(
    watch: &mut poolplane_client::Watch<WatchPoolStatsResponse, WatchPoolStatsResponse>,
) -> anyhow::Result<WatchPoolStatsResponse> {
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next()).await??;
    next.ok_or_else(|| anyhow::anyhow!("the watch ended"))
}

fn metrics_addr(replica: &Replica) -> anyhow::Result<SocketAddr> {
    Ok(replica.process.start_line["metrics"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no metrics address"))?
        .parse()?)
}

async fn retention_rounds(replica: &Replica) -> anyhow::Result<f64> {
    let text = http_get(metrics_addr(replica)?, "/metrics").await?;
    metric_value(&text, "poolplane_metrics_retention_rounds_total")
        .or_else(|| metric_value(&text, "poolplane_metrics_retention_rounds"))
        .ok_or_else(|| anyhow::anyhow!("no retention rounds in {text}"))
}

/// The ids of the live replicas and the leader, as `replica` lists them.
async fn group_of(replica: &Replica) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let all = replica.sdk.list_replicas().await?;
    let alive = all
        .iter()
        .filter(|r| r.alive)
        .map(|r| r.id.clone())
        .collect();
    let leaders = all
        .iter()
        .filter(|r| r.leader)
        .map(|r| r.id.clone())
        .collect();
    Ok((alive, leaders))
}

#[tokio::test]
async fn one_replica_leads_and_another_takes_over_within_a_lease_of_its_death() -> anyhow::Result<()>
{
    let control = TestPg::database().await?;
    let mut replicas = vec![
        replica(&control, "a").await?,
        replica(&control, "b").await?,
        replica(&control, "c").await?,
    ];
    wait_until(
        Duration::from_secs(5),
        "three replicas and one leader",
        || async {
            group_of(&replicas[0])
                .await
                .is_ok_and(|(alive, leaders)| alive.len() == 3 && leaders.len() == 1)
        },
    )
    .await?;
    let listed = replicas[1].sdk.list_replicas().await?;
    assert_eq!(
        listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert!(listed.iter().any(|r| r.this_replica && r.id == "b"));
    let (_, leaders) = group_of(&replicas[0]).await?;
    let leader = leaders[0].clone();
    // Retention runs on the leader only.
    let mut rounds = Vec::new();
    for r in &replicas {
        rounds.push((r.id, retention_rounds(r).await?));
    }
    for (id, n) in &rounds {
        if *id == leader {
            assert!(*n >= 1.0, "the leader {id} ran retention: {rounds:?}");
        } else {
            assert_eq!(*n, 0.0, "{id} does not lead: {rounds:?}");
        }
    }

    // kill -9 the leader: another leads within a lease (2 s), and runs retention.
    let at = replicas
        .iter()
        .position(|r| r.id == leader)
        .expect("leader");
    let mut dead = replicas.remove(at);
    dead.process.signal(nix::sys::signal::Signal::SIGKILL)?;
    dead.process.wait_exit(Duration::from_secs(10)).await?;
    let killed = Instant::now();
    // The lock is free once PostgreSQL sees the session gone; a survivor bids
    // every third of the lease and, leading, runs retention at once.
    wait_until(
        Duration::from_millis(2500),
        "retention on a new leader",
        || async {
            let mut led = false;
            for r in &replicas {
                led |= retention_rounds(r).await.is_ok_and(|n| n >= 1.0);
            }
            led
        },
    )
    .await?;
    eprintln!(
        "a new leader ran retention {:?} after the leader's death",
        killed.elapsed()
    );
    // ListReplicas shows it once the dead one's lease ran out.
    let survivor = &replicas[0];
    wait_until(Duration::from_secs(4), "one new leader listed", || async {
        group_of(survivor).await.is_ok_and(|(alive, leaders)| {
            alive.len() == 2 && leaders.len() == 1 && leaders[0] != leader
        })
    })
    .await?;
    let (_, leaders) = group_of(survivor).await?;
    let new = replicas
        .iter()
        .find(|r| r.id == leaders[0])
        .expect("the new leader is alive");
    wait_until(
        Duration::from_secs(3),
        "retention on the new leader",
        || async { retention_rounds(new).await.is_ok_and(|n| n >= 1.0) },
    )
    .await?;
    let other = replicas
        .iter()
        .find(|r| r.id != leaders[0])
        .expect("one more");
    assert_eq!(retention_rounds(other).await?, 0.0);
    Ok(())
}

/// pgbench TPC-B with 8 clients for `secs` s through `replica`'s front door,
/// in the background.
fn tpcb_through(
    replica: &Replica,
    db: &TestDatabase,
    secs: u32,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<std::process::Output>>> {
    let (user, password) = login_of(db)?;
    let pg = replica.process.pg_addr.expect("a front door");
    let args: Vec<String> = [
        "-h",
        &pg.ip().to_string(),
        "-p",
        &pg.port().to_string(),
        "-U",
        &user,
        "-n",
        "-c",
        "8",
        "-j",
        "2",
        "-T",
        &secs.to_string(),
        "roll",
    ]
    .map(str::to_owned)
    .to_vec();
    Ok(tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        poolplane_tests::run_client("pgbench", &args, &password, Duration::from_secs(60)).await
    }))
}

/// Awaits a pgbench run: no failed transaction; how many it processed.
async fn processed_without_failure(
    bench: tokio::task::JoinHandle<anyhow::Result<std::process::Output>>,
) -> anyhow::Result<i64> {
    let out = bench.await??;
    let printed = poolplane_tests::text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("number of failed transactions: 0 (0.000%)"),
        "{printed}"
    );
    Ok(printed
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .expect("pgbench's count"))
}

/// Waits (30 s at most) until `pool` has run transactions through the front
/// door of every replica in `replicas` (their pgbench runs are under way).
async fn serving(replicas: &[&Replica], pool: &str) -> anyhow::Result<()> {
    for r in replicas {
        wait_until(
            Duration::from_secs(30),
            "transactions through the replica",
            || async {
                r.sdk
                    .get_pool_stats(pool)
                    .await
                    .is_ok_and(|s| s.wire_transactions >= 20)
            },
        )
        .await?;
    }
    Ok(())
}

/// Stops `replica` (SIGTERM) and starts it again under the same id.
async fn restart(replica: Replica, control: &TestDatabase) -> anyhow::Result<Replica> {
    let Replica {
        mut process, id, ..
    } = replica;
    process.signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = process.wait_exit(Duration::from_secs(30)).await?;
    assert_eq!(status.code(), Some(0), "{id} stopped cleanly");
    self::replica(control, id).await
}

#[tokio::test]
async fn a_rolling_restart_fails_no_transaction_on_the_replicas_that_stay_up() -> anyhow::Result<()>
{
    let _one = LOADED.lock().await;
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let a = replica(&control, "a").await?;
    let b = replica(&control, "b").await?;
    let c = replica(&control, "c").await?;
    create_everywhere(&a, &[&b, &c], &db, "roll", sized(2, 4)).await?;
    let (user, password) = login_of(&db)?;
    let pg = a.process.pg_addr.expect("a front door");
    let init = poolplane_tests::run_client(
        "pgbench",
        &[
            "-h",
            &pg.ip().to_string(),
            "-p",
            &pg.port().to_string(),
            "-U",
            &user,
            "-i",
            "-q",
            "-s",
            "1",
            "roll",
        ],
        &password,
        Duration::from_secs(60),
    )
    .await?;
    assert!(init.status.success(), "{}", poolplane_tests::text(&init));

    // C restarts while A and B serve; then A restarts while B and C serve.
    // (A replica that stops announces the allocations it gives back.)
    let (listener, mut announced) =
        crate::frontdoor_session::listening_client(control.url()).await?;
    listener.batch_execute("LISTEN poolplane_budgets").await?;
    let (on_a, on_b) = (tpcb_through(&a, &db, 6)?, tpcb_through(&b, &db, 6)?);
    serving(&[&a, &b], "roll").await?;
    let Replica { mut process, .. } = c;
    process.signal(nix::sys::signal::Signal::SIGTERM)?;
    assert_eq!(
        process.wait_exit(Duration::from_secs(30)).await?.code(),
        Some(0)
    );
    // Before any new C runs: the stopped one's announcement.
    let from_c = async {
        while let Some(n) = announced.recv().await {
            if n.payload().ends_with("\tc") {
                return Some(n.payload().to_owned());
            }
        }
        None
    };
    let released = tokio::time::timeout(Duration::from_secs(10), from_c).await?;
    let server = db.server_addr()?.to_string();
    assert_eq!(released, Some(format!("{server}\tc")));
    let c = replica(&control, "c").await?;
    assert!(c.sdk.get_pool("roll").await.is_ok(), "restored on c");
    let mut done = processed_without_failure(on_a).await?;
    done += processed_without_failure(on_b).await?;
    let (on_b, on_c) = (tpcb_through(&b, &db, 6)?, tpcb_through(&c, &db, 6)?);
    serving(&[&c], "roll").await?;
    let a = restart(a, &control).await?;
    done += processed_without_failure(on_b).await?;
    done += processed_without_failure(on_c).await?;

    // Every transaction pgbench counted committed, and no definition was lost.
    let history: i64 = db
        .connect()
        .await?
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await?
        .get(0);
    assert_eq!(history, done);
    for r in [&a, &b, &c] {
        let pool = r.sdk.get_pool("roll").await?;
        assert_eq!(pool.config.and_then(|c| c.max_connections), Some(4));
    }
    Ok(())
}

/// pgbench running `SELECT pg_sleep(0.01)` with `clients` clients for `secs`
/// s through `replica`'s front door to pool `split`, in the background.
fn sleepers_through(
    replica: &Replica,
    db: &TestDatabase,
    clients: u32,
    secs: u32,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<std::process::Output>>> {
    let pg = replica.process.pg_addr.expect("a front door");
    crate::frontdoor_ops::pgbench_script_at(
        pg,
        db,
        "split",
        clients,
        secs,
        "SELECT pg_sleep(0.01);\n",
    )
}

/// Each replica's allocation of the pools' server, from the control database.
async fn allocations(
    control: &tokio_postgres::Client,
) -> anyhow::Result<std::collections::BTreeMap<String, i32>> {
    Ok(control
        .query("SELECT replica, allocation FROM budget_allocations", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The `--connection-reserve` that leaves `budget` connections to the pools
/// of `db`'s server, whatever its max_connections.
async fn reserve_for(db: &TestDatabase, budget: i32) -> anyhow::Result<String> {
    let available: i32 = db
        .connect()
        .await?
        .query_one(
            "SELECT current_setting('max_connections')::int \
             - current_setting('superuser_reserved_connections')::int \
             - coalesce(current_setting('reserved_connections', true)::int, 0)",
            &[],
        )
        .await?
        .get(0);
    Ok((available - budget).to_string())
}

/// The highest count of pool `split`'s backends, sampled every 20 ms.
async fn split_backends(db: &TestDatabase) -> anyhow::Result<crate::frontdoor::PeakSampler> {
    Ok(crate::frontdoor::PeakSampler::start(
        db.connect().await?,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'poolplane:split'",
    ))
}

/// A replica `id` on `control_url` with `--connection-reserve reserve`.
async fn budgeted(control_url: &str, id: &'static str, reserve: &str) -> anyhow::Result<Replica> {
    replica_on(control_url, id, &["--connection-reserve", reserve]).await
}

#[tokio::test]
async fn three_replicas_never_open_more_than_their_servers_budget() -> anyhow::Result<()> {
    let _one = LOADED.lock().await;
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let reserve = reserve_for(&db, 30).await?;
    let start = |id: &'static str| budgeted(control.url(), id, &reserve);
    let a = start("a").await?;
    let b = start("b").await?;
    let mut c = start("c").await?;
    create_everywhere(&a, &[&b, &c], &db, "split", sized(1, 30)).await?;
    let sampler = split_backends(&db).await?;
    // A has twice the clients of B and of C.
    let runs = [
        sleepers_through(&a, &db, 16, 20)?,
        sleepers_through(&b, &db, 8, 20)?,
        sleepers_through(&c, &db, 8, 20)?,
    ];
    let control_db = control.connect().await?;
    wait_until(Duration::from_secs(15), "allocations by demand", || async {
        allocations(&control_db).await.is_ok_and(|all| {
            let get = |id: &str| f64::from(all.get(id).copied().unwrap_or(0));
            // B's and C's shares grown by their demand (not the 1 of their
            // mins while A alone had demand), A's at least 1.5 times theirs.
            all.len() == 3
                && get("b") >= 4.0
                && get("c") >= 4.0
                && get("a") >= 1.5 * get("b")
                && get("a") >= 1.5 * get("c")
        })
    })
    .await?;
    let before = allocations(&control_db).await?;
    assert!(before.values().sum::<i32>() <= 30, "{before:?}");
    // Each live replica holds every pool's min_connections: a min of 10 beside
    // split's 1 does not fit 30 / 3 replicas.
    let refused = a
        .sdk
        .create_pool("greedy", db.url(), sized(10, 10))
        .await
        .expect_err("min 10 on three replicas");
    let text = format!("{refused:#}");
    assert!(
        text.contains("3 live replicas") && text.contains("min_connections 10"),
        "{text}"
    );
    // ListReplicas shows each replica's allocation.
    let listed: i64 = b
        .sdk
        .list_replicas()
        .await?
        .iter()
        .map(|r| i64::from(r.allocated))
        .sum();
    assert!(listed > 0 && listed <= 30, "{listed}");

    // kill -9 C: after its lease, its allocation shrinks to its pools' mins
    // (a replica cut off keeps those) and A's and B's grow into the rest.
    c.process.signal(nix::sys::signal::Signal::SIGKILL)?;
    c.process.wait_exit(Duration::from_secs(10)).await?;
    let killed = Instant::now();
    // Its lease is 2 s; the others' rounds run every third of theirs.
    let taken_over = wait_until(Duration::from_secs(6), "C's share taken over", || async {
        allocations(&control_db).await.is_ok_and(|all| {
            all.get("c") == Some(&1)
                && all.get("a").copied().unwrap_or(0) + all.get("b").copied().unwrap_or(0)
                    > before["a"] + before["b"]
        })
    })
    .await;
    if let Err(error) = taken_over {
        let now = allocations(&control_db).await?;
        anyhow::bail!("{error:#}: allocations {before:?} before, {now:?} now");
    }
    eprintln!(
        "C's share taken over {:?} after its death",
        killed.elapsed()
    );
    let [on_a, on_b, on_c] = runs;
    for run in [on_a, on_b] {
        let out = run.await??;
        let printed = poolplane_tests::text(&out);
        assert!(
            printed.contains("number of failed transactions: 0 (0.000%)"),
            "{printed}"
        );
    }
    let _ = on_c.await;
    let peak = sampler.finish().await?;
    assert!(peak <= 30, "the group's backends peaked at {peak}");
    assert!(peak >= 20, "the load used the budget: peak {peak}");
    Ok(())
}

#[tokio::test]
async fn the_group_keeps_serving_through_a_restart_of_its_control_database() -> anyhow::Result<()> {
    let mut control = poolplane::EmbeddedPg::start_temporary().await?;
    let control_url = control.url("postgres");
    let db = TestPg::database().await?;
    let a = replica_on(&control_url, "a", &[]).await?;
    let b = replica_on(&control_url, "b", &[]).await?;
    create_everywhere(&a, &[&b], &db, "steady", sized(2, 4)).await?;
    let through = |r: &Replica| {
        let pg = r.process.pg_addr.expect("a front door");
        crate::frontdoor_ops::pgbench_script_at(pg, &db, "steady", 4, 8, "SELECT 1;\n")
    };
    let runs = [through(&a)?, through(&b)?];
    serving(&[&a, &b], "steady").await?;
    // The control database goes away and comes back; the pools' own database
    // does not: their clients see nothing.
    control.restart().await?;
    for run in runs {
        let out = run.await??;
        let printed = poolplane_tests::text(&out);
        assert!(out.status.success(), "{printed}");
        assert!(
            printed.contains("number of failed transactions: 0 (0.000%)"),
            "{printed}"
        );
    }
    // Coordination resumed: a pool created on B now reaches A, and the
    // allocations of the pools' server still fit its budget.
    b.sdk.create_pool("later", db.url(), sized(1, 2)).await?;
    wait_until(Duration::from_secs(5), "the new pool on a", || async {
        a.sdk.get_pool("later").await.is_ok()
    })
    .await?;
    let listed = a.sdk.list_replicas().await?;
    assert_eq!(listed.iter().filter(|r| r.alive).count(), 2, "{listed:?}");
    assert_eq!(listed.iter().filter(|r| r.leader).count(), 1, "{listed:?}");
    let rows = poolplane_tests::connect(&control_url)
        .await?
        .query(
            "SELECT b.server, sum(b.allocation)::int8 FROM budget_allocations b GROUP BY b.server",
            &[],
        )
        .await?;
    let available: i64 = db
        .connect()
        .await?
        .query_one(
            "SELECT current_setting('max_connections')::int8 \
             - current_setting('superuser_reserved_connections')::int8 - 5",
            &[],
        )
        .await?
        .get(0);
    assert!(!rows.is_empty());
    for row in rows {
        assert!(
            row.get::<_, i64>(1) <= available,
            "{:?}",
            row.get::<_, String>(0)
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_replica_cut_off_from_the_control_database_holds_only_its_mins() -> anyhow::Result<()> {
    let _one = LOADED.lock().await;
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let reserve = reserve_for(&db, 10).await?;
    // C reaches the control database through a proxy the test cuts.
    let url: tokio_postgres::Config = control.url().parse()?;
    let port = url.get_ports().first().copied().unwrap_or(5432);
    let proxy = poolplane_tests::FaultProxy::start(([127, 0, 0, 1], port).into()).await?;
    let proxied = control
        .url()
        .replace(&format!(":{port}/"), &format!(":{}/", proxy.addr().port()));
    // A lease of 4 s: C holds only its min 2 s after its last heartbeat, A
    // grows into the rest 4 s after it (2 s of margin on a loaded machine).
    let reserve = ["--connection-reserve", &reserve];
    let a = leased(control.url(), "a", "4s", &reserve).await?;
    let c = leased(&proxied, "c", "4s", &reserve).await?;
    create_everywhere(&a, &[&c], &db, "split", sized(1, 10)).await?;
    let sampler = split_backends(&db).await?;
    // Ten clients on each, each transaction 50 ms: either replica alone
    // would use the whole budget of 10.
    let slow = "SELECT pg_sleep(0.05);\n";
    let through = |r: &Replica| {
        let pg = r.process.pg_addr.expect("a front door");
        crate::frontdoor_ops::pgbench_script_at(pg, &db, "split", 10, 18, slow)
    };
    let runs = [through(&a)?, through(&c)?];
    let control_db = control.connect().await?;
    let split = wait_until(Duration::from_secs(10), "the budget split", || async {
        allocations(&control_db).await.is_ok_and(|all| {
            let (a, c) = (all.get("a").copied(), all.get("c").copied());
            matches!((a, c), (Some(a), Some(c)) if a >= 3 && c >= 3)
        })
    })
    .await;
    if let Err(error) = split {
        let now = allocations(&control_db).await?;
        anyhow::bail!("{error:#}: allocations {now:?}");
    }
    // Cut off: C holds only its min after half a lease of failed heartbeats;
    // A, after C's lease, grows into the rest (and, with ten clients, uses
    // it): had C kept its share, the two would open more than 10.
    proxy.cut();
    let cut = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "A grows into C's share",
        || async {
            allocations(&control_db)
                .await
                .is_ok_and(|all| all.get("c") == Some(&1) && all.get("a") == Some(&9))
        },
    )
    .await?;
    eprintln!("A holds 9 of 10, {:?} after C was cut off", cut.elapsed());
    let [on_a, on_c] = runs;
    for run in [on_a, on_c] {
        let out = run.await??;
        let printed = poolplane_tests::text(&out);
        assert!(
            printed.contains("number of failed transactions: 0 (0.000%)"),
            "the cut-off replica keeps serving too: {printed}"
        );
    }
    let peak = sampler.finish().await?;
    assert!(peak <= 10, "the group's backends peaked at {peak}");
    assert!(peak >= 9, "the load used the budget: peak {peak}");
    // Back in touch: C's next round finds room only as A gives it back.
    proxy.restore();
    wait_until(Duration::from_secs(10), "C heard again", || async {
        c.sdk
            .list_replicas()
            .await
            .is_ok_and(|all| all.iter().filter(|r| r.alive).count() == 2)
    })
    .await?;
    let after = allocations(&control_db).await?;
    assert!(after.values().sum::<i32>() <= 10, "{after:?}");
    Ok(())
}

#[tokio::test]
async fn a_second_server_with_a_running_replicas_id_is_refused() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let mut first = replica_on(control.url(), "twin", &[]).await?;
    // Same id (one --replica-id, or one data directory): refused, naming it.
    let Err(refused) = replica_on(control.url(), "twin", &[]).await else {
        anyhow::bail!("a second replica with a running replica's id started");
    };
    let text = format!("{refused:#}");
    assert!(
        text.contains("--replica-id twin: a running replica of the group has this id"),
        "{text}"
    );
    assert_eq!(first.sdk.list_replicas().await?.len(), 1);
    // Killed, its row still within its lease: a new server takes the id over.
    first.process.signal(nix::sys::signal::Signal::SIGKILL)?;
    first.process.wait_exit(Duration::from_secs(10)).await?;
    let second = replica_on(control.url(), "twin", &[]).await?;
    let address = second.process.addr.to_string();
    wait_until(
        Duration::from_secs(5),
        "the id's row taken over",
        || async {
            second
                .sdk
                .list_replicas()
                .await
                .is_ok_and(|all| all.len() == 1 && all[0].grpc_address == address)
        },
    )
    .await?;
    Ok(())
}
