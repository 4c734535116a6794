//! AdvancedConnectionPool against the real PostgreSQL: warmup, min_connections,
//! the size ceiling under load, recycling, exhaustion, close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use poolplane::{AdvancedConnectionPool, AdvancedPoolConfig, Error, ErrorKind};
use poolplane_tests::{TestPg, count_backends, test_config, wait_until};

#[tokio::test]
async fn warmup_runs_on_every_connection_and_min_connections_are_open() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let config = AdvancedPoolConfig {
        connection_warmup_queries: vec![
            "SET application_name = 'warm-pool'".into(),
            "SET statement_timeout = '17s'".into(),
        ],
        ..test_config(3, 5)
    };
    let pool = AdvancedConnectionPool::new(db.url(), config).await?;
    let admin = db.connect().await?;
    assert_eq!(count_backends(&admin, &db.name, "warm-pool").await?, 3);
    assert_eq!(pool.get_pool_stats().await.connections, 3);

    let mut conn = pool.get().await?;
    let timeout: String = conn.query_one("SHOW statement_timeout", &[]).await?.get(0);
    assert_eq!(timeout, "17s");
    let name: String = conn.query_one("SHOW application_name", &[]).await?.get(0);
    assert_eq!(name, "warm-pool");
    drop(conn);
    pool.close().await;
    wait_until(
        Duration::from_secs(5),
        "close() ends every backend",
        || async { count_backends(&admin, &db.name, "warm-pool").await.ok() == Some(0) },
    )
    .await?;
    assert!(matches!(pool.get().await, Err(Error::PoolClosed)));
    Ok(())
}

#[tokio::test]
async fn default_application_name_names_the_pool() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let pool = AdvancedConnectionPool::named("orders", db.url(), test_config(2, 4)).await?;
    let admin = db.connect().await?;
    assert_eq!(
        count_backends(&admin, &db.name, "poolplane:orders").await?,
        2
    );
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn backends_never_exceed_max_or_the_current_size_under_load() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let config = AdvancedPoolConfig {
        enable_dynamic_sizing: true,
        scale_up_factor: 1.5,
        ..test_config(2, 6)
    };
    let pool = Arc::new(AdvancedConnectionPool::named("ceiling", db.url(), config).await?);
    let admin = db.connect().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut workers = Vec::new();
    for _ in 0..24 {
        let pool = Arc::clone(&pool);
        workers.push(tokio::spawn(async move {
            let mut done = 0u32;
            while Instant::now() < deadline {
                pool.execute("SELECT pg_sleep(0.01)", &[]).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut samples = 0;
    let mut max_seen = 0;
    while Instant::now() < deadline {
        let backends = count_backends(&admin, &db.name, "poolplane:ceiling").await?;
        let size = pool.pool_stats().current_size;
        assert!(backends <= 6, "{backends} backends for max_connections 6");
        assert!(
            backends <= i64::from(size),
            "{backends} backends for current_size {size}"
        );
        max_seen = max_seen.max(backends);
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut queries = 0;
    for worker in workers {
        queries += worker.await??;
    }
    assert!(samples > 50, "only {samples} samples");
    assert!(
        max_seen >= 4,
        "load never opened more than {max_seen} backends"
    );
    assert!(queries > 100, "only {queries} queries ran");
    let stats = pool.pool_stats();
    assert_eq!(stats.acquire_timeouts, 0);
    assert!(
        stats.connections_created <= 6,
        "growing to 6 should open 6 connections, not churn: {stats:?}"
    );
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn connections_are_recycled_after_the_query_threshold() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let config = AdvancedPoolConfig {
        recycle_threshold_queries: 50,
        ..test_config(1, 1)
    };
    let pool = AdvancedConnectionPool::new(db.url(), config).await?;
    let mut events = pool.subscribe();
    let first_pid: i32 = pool.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    for _ in 0..499 {
        pool.execute("SELECT 1", &[]).await?;
    }
    let last_pid: i32 = pool.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    assert_ne!(first_pid, last_pid);
    let stats = pool.get_pool_stats().await;
    assert!(stats.connections_recycled >= 9, "{stats:?}");
    assert_eq!(stats.total_queries, 501);
    let recycled = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| {
            matches!(
                e.kind,
                poolplane::PoolEventKind::ConnectionRecycled { queries: 50 }
            )
        })
        .count();
    assert!(recycled >= 9, "{recycled} recycle events");
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn exhausted_pool_times_out_with_the_timeout_kind() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let config = AdvancedPoolConfig {
        acquire_timeout_secs: 1,
        ..test_config(1, 1)
    };
    let pool = AdvancedConnectionPool::new(db.url(), config).await?;
    let held = pool.get().await?;
    let start = Instant::now();
    let error = pool.get().await.expect_err("the only connection is held");
    let waited = start.elapsed();
    assert_eq!(error.kind(), ErrorKind::AcquireTimeout, "{error}");
    // The message names the limit met: max_connections, one connection.
    assert!(
        matches!(
            error,
            poolplane::Error::AcquireTimeout {
                limit: poolplane::AcquireLimit::MaxConnections(1),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("the pool's only connection (max_connections 1) was in use"),
        "{error}"
    );
    assert!(
        !error.to_string().contains("  "),
        "no run of spaces: {error}"
    );
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    assert_eq!(pool.get_pool_stats().await.acquire_timeouts, 1);
    drop(held);
    pool.get().await?; // usable again
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn unreachable_database_is_a_connect_error_without_the_password() -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let url = format!("postgres://app:sekrit-pw@127.0.0.1:{port}/app");
    let error = AdvancedConnectionPool::new(&url, test_config(1, 2))
        .await
        .expect_err("nothing listens there");
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    let text = error.to_string();
    assert!(text.contains("app:***@"), "{text}");
    assert!(!text.contains("sekrit-pw"), "{text}");
    Ok(())
}

#[tokio::test]
async fn invalid_config_lists_every_field() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let config = AdvancedPoolConfig {
        max_connections: 0,
        scale_up_factor: 0.5,
        ..test_config(1, 1)
    };
    let Err(Error::InvalidConfig(errors)) = AdvancedConnectionPool::new(db.url(), config).await
    else {
        anyhow::bail!("an invalid config was accepted");
    };
    let fields: Vec<&str> = errors.0.iter().map(|v| v.field).collect();
    assert_eq!(
        fields,
        ["max_connections", "min_connections", "scale_up_factor"]
    );
    Ok(())
}

#[tokio::test]
async fn transactions_commit_roll_back_and_abandoned_ones_do_not_leak() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let pool = AdvancedConnectionPool::new(db.url(), test_config(1, 1)).await?;
    pool.execute("CREATE TABLE t (v int)", &[]).await?;
    let mut conn = pool.get().await?;
    let mut tx = conn.transaction().await?;
    tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
    tx.commit().await?;
    let mut tx = conn.transaction().await?;
    tx.execute("INSERT INTO t VALUES (2)", &[]).await?;
    tx.rollback().await?;
    {
        let mut tx = conn.transaction().await?;
        tx.execute("INSERT INTO t VALUES (3)", &[]).await?;
    } // dropped without commit
    drop(conn);
    let sum: i64 = pool
        .query_one("SELECT coalesce(sum(v), 0)::int8 FROM t", &[])
        .await?
        .get(0);
    assert_eq!(sum, 1);
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn only_connections_idle_past_the_threshold_are_validated() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    admin.batch_execute("CREATE SEQUENCE validations").await?;
    let config = AdvancedPoolConfig {
        // A validation query with a visible side effect.
        validation_query: "SELECT nextval('validations')".into(),
        validation_idle_threshold_ms: 300,
        ..test_config(1, 1)
    };
    let pool = AdvancedConnectionPool::new(db.url(), config).await?;
    let validations = || sequence_value(&admin, "validations");
    // Fresh connections are not validated.
    for _ in 0..20 {
        pool.execute("SELECT 1", &[]).await?;
    }
    assert_eq!(validations().await?, 0, "busy checkouts skip validation");
    tokio::time::sleep(Duration::from_millis(400)).await;
    pool.execute("SELECT 1", &[]).await?;
    assert_eq!(
        validations().await?,
        1,
        "an idle connection is validated once"
    );
    pool.execute("SELECT 1", &[]).await?;
    assert_eq!(validations().await?, 1);
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn a_connection_killed_on_the_server_is_replaced_not_handed_out() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let pool = AdvancedConnectionPool::named("victim", db.url(), test_config(1, 1)).await?;
    let pid: i32 = pool.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let admin = db.connect().await?;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await?;
    wait_until(Duration::from_secs(5), "the backend is gone", || async {
        count_backends(&admin, &db.name, "poolplane:victim")
            .await
            .ok()
            == Some(0)
    })
    .await?;
    let new_pid: i32 = pool.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    assert_ne!(pid, new_pid);
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn max_lifetime_and_idle_timeout_close_connections() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    let config = AdvancedPoolConfig {
        max_lifetime_secs: 1,
        ..test_config(1, 1)
    };
    let aging = AdvancedConnectionPool::named("aging", db.url(), config).await?;
    let first: i32 = aging
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    wait_until(
        Duration::from_secs(10),
        "max_lifetime replaces the connection",
        || async {
            match aging.query_one("SELECT pg_backend_pid()", &[]).await {
                Ok(row) => row.get::<_, i32>(0) != first,
                Err(_) => false,
            }
        },
    )
    .await?;
    aging.close().await;

    let config = AdvancedPoolConfig {
        idle_timeout_secs: 1,
        ..test_config(0, 3)
    };
    let idle = AdvancedConnectionPool::named("idle", db.url(), config).await?;
    let held = (idle.get().await?, idle.get().await?, idle.get().await?);
    drop(held);
    assert_eq!(count_backends(&admin, &db.name, "poolplane:idle").await?, 3);
    wait_until(
        Duration::from_secs(10),
        "idle connections are closed",
        || async {
            count_backends(&admin, &db.name, "poolplane:idle")
                .await
                .ok()
                == Some(0)
        },
    )
    .await?;
    idle.close().await;
    Ok(())
}

/// The pids of pool `name`'s backends, ordered.
async fn backend_pids(admin: &tokio_postgres::Client, name: &str) -> anyhow::Result<Vec<i32>> {
    Ok(admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
             AND datname = current_database() ORDER BY pid",
            &[&format!("poolplane:{name}")],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Checks out four connections at once and returns them: four backends open.
async fn open_four(
    pool: &AdvancedConnectionPool,
    admin: &tokio_postgres::Client,
    name: &str,
) -> anyhow::Result<()> {
    let held = (
        pool.get().await?,
        pool.get().await?,
        pool.get().await?,
        pool.get().await?,
    );
    drop(held);
    assert_eq!(backend_pids(admin, name).await?.len(), 4);
    Ok(())
}

/// The last value a sequence handed out (0 before the first).
async fn sequence_value(admin: &tokio_postgres::Client, name: &str) -> anyhow::Result<i64> {
    let row = admin
        .query_one(
            "SELECT coalesce(last_value, 0) FROM pg_sequences WHERE sequencename = $1",
            &[&name],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn idle_timeout_closes_only_above_the_floor_and_min_zero_holds_nothing() -> anyhow::Result<()>
{
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    let config = AdvancedPoolConfig {
        idle_timeout_secs: 2,
        ..test_config(2, 4)
    };
    let pool = AdvancedConnectionPool::named("floor", db.url(), config).await?;
    open_four(&pool, &admin, "floor").await?;
    wait_until(Duration::from_secs(10), "the surplus is closed", || async {
        backend_pids(&admin, "floor")
            .await
            .is_ok_and(|p| p.len() == 2)
    })
    .await?;
    // Three idle periods later the floor is the same two backends: no churn.
    let floor = backend_pids(&admin, "floor").await?;
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    assert_eq!(backend_pids(&admin, "floor").await?, floor);
    pool.close().await;

    // min_connections 0: the connection that proved the target is not kept.
    let empty = AdvancedConnectionPool::named("empty", db.url(), test_config(0, 3)).await?;
    wait_until(
        Duration::from_secs(5),
        "the idle pool holds no backend",
        || async {
            backend_pids(&admin, "empty")
                .await
                .is_ok_and(|p| p.is_empty())
        },
    )
    .await?;
    assert_eq!(empty.pool_stats().connections, 0);
    let row = empty.query_one("SELECT 1::int4", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 1);
    empty.close().await;
    Ok(())
}

#[tokio::test]
async fn light_load_reuses_the_last_returned_connection_and_the_rest_idle_out() -> anyhow::Result<()>
{
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    admin
        .batch_execute("CREATE SEQUENCE hot_validations")
        .await?;
    let config = AdvancedPoolConfig {
        idle_timeout_secs: 1,
        validation_query: "SELECT nextval('hot_validations')".into(),
        validation_idle_threshold_ms: 300,
        // No health check borrowing a connection in between.
        health_check_interval_secs: 60,
        ..test_config(1, 4)
    };
    let pool = AdvancedConnectionPool::named("hot", db.url(), config).await?;
    open_four(&pool, &admin, "hot").await?;
    // One caller, a query every 100 ms for 3 s: each connection would be idle
    // 400 ms between turns if they were handed out in rotation.
    let mut pids = Vec::new();
    for _ in 0..30 {
        pids.push(
            pool.query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get::<_, i32>(0),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "every query on the connection returned last");
    let validations = sequence_value(&admin, "hot_validations").await?;
    assert_eq!(validations, 0, "the hot connection is never idle 300 ms");
    // The three others were idle from the start and are closed after 1 s idle.
    wait_until(
        Duration::from_secs(5),
        "the idle three are closed",
        || async {
            backend_pids(&admin, "hot")
                .await
                .is_ok_and(|p| p == [pids[0]])
        },
    )
    .await?;
    pool.close().await;
    Ok(())
}

/// One deadline over a whole checkout: connections that fail validation one after
/// another (each taking 0.4 s to fail) do not give bb8 the full acquire_timeout
/// again at every try; the checkout ends with a timeout within acquire_timeout.
#[tokio::test]
async fn a_checkout_never_outlives_acquire_timeout_however_many_validations_fail()
-> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    admin
        .batch_execute(
            "CREATE TABLE flag (broken bool NOT NULL); INSERT INTO flag VALUES (false);
             CREATE FUNCTION check_me() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN
               IF (SELECT broken FROM flag) THEN
                 PERFORM pg_sleep(0.4);
                 RAISE EXCEPTION 'not valid';
               END IF;
               RETURN 1;
             END $$;",
        )
        .await?;
    let config = AdvancedPoolConfig {
        acquire_timeout_secs: 1,
        health_check_interval_secs: 5,
        health_check_timeout_secs: 2,
        validation_query: "SELECT check_me()".into(),
        validation_idle_threshold_ms: 0,
        ..test_config(3, 3)
    };
    let pool = AdvancedConnectionPool::named("deadline", db.url(), config).await?;
    pool.execute("SELECT 1", &[]).await?;
    admin.batch_execute("UPDATE flag SET broken = true").await?;
    let started = Instant::now();
    let checkout = tokio::time::timeout(Duration::from_secs(10), pool.get()).await;
    let took = started.elapsed();
    let Ok(result) = checkout else {
        panic!("the checkout was still running after {took:?}");
    };
    let error = result.expect_err("every connection fails validation");
    assert_eq!(error.kind(), ErrorKind::AcquireTimeout, "{error}");
    assert!(
        took < Duration::from_millis(2500),
        "acquire_timeout is 1 s, the checkout took {took:?}"
    );
    pool.close().await;
    Ok(())
}

/// A change bb8 fixes at build, applied live, is refused naming each such field
/// that changed (not always max_connections), and the pool keeps its config.
#[tokio::test]
async fn a_live_change_of_a_build_time_field_names_that_field() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let pool = AdvancedConnectionPool::named("fixed_fields", db.url(), test_config(1, 2)).await?;
    let before = pool.config();
    let changed = AdvancedPoolConfig {
        acquire_timeout_secs: before.acquire_timeout_secs + 1,
        idle_timeout_secs: before.idle_timeout_secs + 1,
        ..before.clone()
    };
    let Err(Error::InvalidConfig(errors)) = pool.apply_config(changed) else {
        panic!("a build-time field changed live");
    };
    let fields: Vec<&str> = errors.0.iter().map(|v| v.field).collect();
    assert_eq!(fields, ["acquire_timeout_secs", "idle_timeout_secs"]);
    assert_eq!(pool.config(), before);
    pool.close().await;
    Ok(())
}

/// A database that never answers: the pool's own connect deadline, in its own
/// words (the limit it met), not a timeout borrowed from tokio-postgres.
#[tokio::test]
async fn a_connect_that_never_answers_names_the_deadline_it_met() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let proxy = poolplane_tests::FaultProxy::start(db.server_addr()?).await?;
    proxy.blackhole();
    let config = AdvancedPoolConfig {
        acquire_timeout_secs: 1,
        ..test_config(1, 2)
    };
    let started = Instant::now();
    let refused = AdvancedConnectionPool::new(&db.url_via(proxy.addr()), config).await;
    let Err(Error::Connect {
        reason, sqlstate, ..
    }) = refused
    else {
        panic!("a blackholed database: {refused:?}");
    };
    assert!(
        reason.contains("did not open within 1 s (acquire_timeout_secs)"),
        "{reason}"
    );
    assert_eq!(sqlstate, None);
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}
