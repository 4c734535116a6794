//! Reliability under faults, a test binary of its own because its leak checks
//! count the process's tasks and descriptors: no request may freeze the server,
//! nothing hangs, nothing leaks. Each scenario injects one fault (a FaultProxy cut or blackhole,
//! pg_terminate_backend, a deleted pool, a statement longer than its test, pool
//! churn) and checks that calls end within their deadline with a clear status, the
//! other pools are not held up, and the pool recovers. The cluster restart is in
//! `e2e/cluster_restart.rs`, the control-database outage in
//! `e2e/metrics_history.rs`, the process-level ones (SIGKILL, SIGTERM) in
//! `e2e/faults_process.rs`.

// The 80-line rule is for server/ and client/: an end-to-end test is one scenario
// read top to bottom, its steps in the order they happen.
#![allow(clippy::too_many_lines)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use poolplane_client::PoolplaneClient;
use poolplane_client::proto::run_load_test_response::Update;
use poolplane_client::proto::{LoadTestResult, PoolConfig, RunLoadTestRequest};
use poolplane_tests::{
    FaultProxy, TestPg, TestServer, active_backends, pool_backends, server_resources, wait_back_to,
    wait_health, wait_no_backends, wait_until,
};
use tokio::sync::Mutex;
use tonic::Code;

/// One scenario at a time: they measure latencies and count backends.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// A pool that notices faults fast: 2 s acquire timeout, a health check every 2 s
/// (1 s timeout), unhealthy after one failure, fixed size.
fn quick(max: u32, min: u32) -> PoolConfig {
    PoolConfig {
        acquire_timeout_secs: Some(2),
        max_failed_health_checks: Some(1),
        enable_dynamic_sizing: Some(false),
        validation_idle_threshold_ms: Some(0),
        ..poolplane_tests::proto_config(min, max)
    }
}

/// Runs a load test to its end; the result, or the status it ended with.
async fn load_test(
    client: PoolplaneClient,
    request: RunLoadTestRequest,
) -> Result<LoadTestResult, tonic::Status> {
    let mut stream = client.run_load_test(request).await.map_err(|e| {
        e.status()
            .cloned()
            .unwrap_or_else(|| tonic::Status::unknown(e.to_string()))
    })?;
    loop {
        match stream.next().await {
            Ok(Some(Update::Result(result))) => return Ok(result),
            Ok(Some(Update::Progress(_))) => {}
            Ok(None) => return Err(tonic::Status::unknown("ended without a result")),
            Err(e) => {
                return Err(e
                    .status()
                    .cloned()
                    .unwrap_or_else(|| tonic::Status::unknown(e.to_string())));
            }
        }
    }
}

fn test_of(pool: &str, concurrency: u32, secs: u32, query: &str) -> RunLoadTestRequest {
    RunLoadTestRequest {
        pool_name: pool.into(),
        concurrency,
        duration_secs: secs,
        query: query.into(),
        ..RunLoadTestRequest::default()
    }
}

/// `n` queries through the pool (in-process, the real engine pool): all succeed.
async fn queries_succeed(server: &TestServer, pool: &str, n: usize) -> anyhow::Result<()> {
    let pool = server.server().registry().pool(pool)?;
    for i in 0..n {
        let row = pool
            .query_one("SELECT $1::int8", &[&(i as i64)])
            .await
            .map_err(|e| anyhow::anyhow!("query {i} of {n} failed: {e}"))?;
        anyhow::ensure!(row.get::<_, i64>(0) == i as i64);
    }
    Ok(())
}

#[tokio::test]
async fn scenario_1_a_ten_second_outage_during_a_load_test() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = TestPg::database().await?;
    let proxy = FaultProxy::start(db.server_addr()?).await?;
    let server = TestServer::spawn().await?;
    let client = server.client.clone();
    client
        .create_pool("outage", &db.url_via(proxy.addr()), quick(4, 2))
        .await?;
    let test = tokio::spawn(load_test(
        client.clone(),
        test_of("outage", 4, 16, "SELECT 1"),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.cut();
    wait_health(&client, "outage", false, Duration::from_secs(6)).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.restore();
    let back = Instant::now();
    // Within one health interval (2 s) plus the check's own timeout.
    wait_health(&client, "outage", true, Duration::from_secs(4)).await?;
    let recovered_in = back.elapsed();
    let result = test.await?.map_err(|s| anyhow::anyhow!("{s:?}"))?;
    assert!(
        result.failed_requests > 0,
        "the outage failed nothing: {result:?}"
    );
    assert!(result.successful_requests > 0, "{result:?}");
    // In-flight requests failed within their acquire timeout (2 s): none hung.
    assert!(
        result.max_response_time_ms < 2_000.0 + 1_000.0,
        "a request hung for {} ms",
        result.max_response_time_ms
    );
    assert!(recovered_in <= Duration::from_secs(4), "{recovered_in:?}");
    queries_succeed(&server, "outage", 1000).await?;
    server.shutdown().await
}

#[tokio::test]
async fn scenario_2_terminated_backends_fail_only_in_flight_queries() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    let server = TestServer::spawn().await?;
    let client = server.client.clone();
    client.create_pool("killed", db.url(), quick(4, 4)).await?;
    let test = tokio::spawn(load_test(
        client.clone(),
        test_of("killed", 4, 4, "SELECT pg_sleep(0.01)"),
    ));
    wait_until(
        Duration::from_secs(5),
        "the load test is running",
        || async {
            active_backends(&admin, "killed")
                .await
                .is_ok_and(|n| n >= 1)
        },
    )
    .await?;
    let terminated: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'poolplane:killed'",
            &[],
        )
        .await?
        .get(0);
    assert!(terminated >= 1, "no backend to terminate");
    let result = test.await?.map_err(|s| anyhow::anyhow!("{s:?}"))?;
    // Each terminated backend fails at most the one query it was running (or the
    // next one, before its client noticed).
    assert!(
        result.failed_requests <= terminated as u64,
        "{} failed for {terminated} terminated backends",
        result.failed_requests
    );
    assert!(result.successful_requests > 0, "{result:?}");
    queries_succeed(&server, "killed", 1000).await?;
    server.shutdown().await
}

/// The middle value of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn scenario_4_a_blackholed_database_holds_up_only_its_own_calls() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = TestPg::database().await?;
    let proxy = FaultProxy::start(db.server_addr()?).await?;
    let control = TestPg::database().await?;
    let server = TestServer::spawn_on(control.clone()).await?;
    let client = server.client.clone();
    client.create_pool("healthy", db.url(), quick(2, 1)).await?;
    client
        .create_pool("blackholed", &db.url_via(proxy.addr()), quick(2, 1))
        .await?;
    let baseline = server_resources(server.server().metrics_addr()).await?;
    proxy.blackhole();

    // CreatePool toward it: back within its 2 s deadline with a clear status, while
    // the other pool's calls answer at once.
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let probing = {
        let (client, samples) = (client.clone(), Arc::clone(&samples));
        tokio::spawn(async move {
            loop {
                let started = Instant::now();
                let ok = client.get_pool_stats("healthy").await.is_ok();
                samples
                    .lock()
                    .expect("samples")
                    .push((started.elapsed(), ok));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let created = client
        .create_pool("late", &db.url_via(proxy.addr()), quick(2, 1))
        .await;
    let took = started.elapsed();
    let error = created.expect_err("a blackholed database cannot be reached");
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    assert!(error.to_string().contains("timeout"), "{error}");
    assert!(
        took < Duration::from_secs(2 + 3),
        "CreatePool took {took:?}"
    );

    // A rebuilding update toward it: the same, and the pool keeps its config.
    let started = Instant::now();
    let rebuild = PoolConfig {
        max_connections: Some(3),
        ..PoolConfig::default()
    };
    let error = client
        .update_pool_config("blackholed", rebuild)
        .await
        .expect_err("the rebuild cannot connect");
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    assert!(started.elapsed() < Duration::from_secs(2 + 3));
    let kept = client.get_pool("blackholed").await?;
    assert_eq!(kept.config.and_then(|c| c.max_connections), Some(2));
    probing.abort();
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    assert!(samples.len() >= 10, "{} samples", samples.len());
    assert!(samples.iter().all(|(_, ok)| *ok), "the other pool failed");
    let times: Vec<Duration> = samples.iter().map(|(t, _)| *t).collect();
    assert!(
        median(times.clone()) < Duration::from_millis(100),
        "the other pool's calls were held up: {times:?}"
    );
    assert!(
        times.iter().all(|t| *t < Duration::from_secs(1)),
        "a call of the other pool waited on the blackholed one: {times:?}"
    );

    // The stored pool at a restart: the server serves at once, the pool is listed
    // unhealthy (its health entry NOT_SERVING) until the database answers.
    server.shutdown().await?;
    let started = Instant::now();
    let server = TestServer::spawn_on(control).await?;
    let client = server.client.clone();
    let pools = client.list_pools().await?;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the restart waited on the blackholed database"
    );
    assert_eq!(pools.len(), 2);
    let health = poolplane_tests::grpcurl(
        server.addr,
        &["-d", r#"{"service": "pool/blackholed"}"#],
        &["grpc.health.v1.Health/Check"],
    )
    .await?;
    assert!(health.stdout.contains("NOT_SERVING"), "{health:?}");
    assert!(!client.get_health_status("blackholed").await?.is_healthy);
    proxy.restore();
    wait_health(&client, "blackholed", true, Duration::from_secs(6)).await?;
    // No task piles up: back to the first server's count (same pools, same work).
    wait_back_to(
        server.server().metrics_addr(),
        poolplane_tests::ServerResources {
            tasks: baseline.tasks,
            fds: f64::INFINITY,
        },
        10.0,
        Duration::from_secs(10),
    )
    .await?;
    server.shutdown().await
}

#[tokio::test]
async fn scenario_7_deleting_or_rebuilding_a_pool_ends_its_load_test() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    let server = TestServer::spawn().await?;
    let client = server.client.clone();

    for rebuild in [false, true] {
        let name = if rebuild { "rebuilt" } else { "deleted" };
        client.create_pool(name, db.url(), quick(4, 2)).await?;
        let test = tokio::spawn(load_test(
            client.clone(),
            RunLoadTestRequest {
                read_write: true,
                ..test_of(name, 4, 30, "SELECT pg_sleep(0.2)")
            },
        ));
        wait_until(Duration::from_secs(5), "the test is running", || async {
            active_backends(&admin, name).await.is_ok_and(|n| n > 0)
        })
        .await?;
        let started = Instant::now();
        if rebuild {
            let bigger = PoolConfig {
                max_connections: Some(5),
                ..PoolConfig::default()
            };
            client.update_pool_config(name, bigger).await?;
        } else {
            client.delete_pool(name).await?;
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), test).await;
        let status = ended
            .map_err(|_| anyhow::anyhow!("{name}: the load test went on"))??
            .expect_err("the test cannot finish on a closed pool");
        assert!(
            started.elapsed() < Duration::from_secs(1) + Duration::from_millis(500),
            "{name}: the test took {:?} to end",
            started.elapsed()
        );
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("closed"), "{status:?}");
        // No backend of the old pool still runs a statement within 2 s.
        wait_until(Duration::from_secs(2), "no active backend", || async {
            if rebuild {
                // The rebuilt pool's new connections are idle: nothing runs.
                active_backends(&admin, name).await.is_ok_and(|n| n == 0)
            } else {
                pool_backends(&admin, name).await.is_ok_and(|n| n == 0)
            }
        })
        .await?;
    }
    server.shutdown().await
}

#[tokio::test]
async fn scenario_8_a_statement_longer_than_its_test_is_cancelled() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    let server = TestServer::spawn().await?;
    let client = server.client.clone();
    client.create_pool("sleepy", db.url(), quick(2, 1)).await?;
    // Writing tests have no statement_timeout: after the grace, the cancel request
    // does the work.
    for read_write in [true, false] {
        let started = Instant::now();
        let result = load_test(
            client.clone(),
            RunLoadTestRequest {
                read_write,
                ..test_of("sleepy", 1, 2, "SELECT pg_sleep(30)")
            },
        )
        .await
        .map_err(|s| anyhow::anyhow!("{s:?}"))?;
        // A read-only request ends with the test (its statement_timeout) and is
        // not counted; a writing one gets the 1 s grace, then is cancelled and
        // counted as failed.
        let bound = if read_write { 5 } else { 3 };
        assert!(
            started.elapsed() < Duration::from_secs(bound),
            "read_write {read_write}: the test took {:?}",
            started.elapsed()
        );
        assert_eq!(result.successful_requests, 0, "{result:?}");
        assert_eq!(result.failed_requests, u64::from(read_write), "{result:?}");
        wait_until(
            Duration::from_secs(2),
            "the statement is cancelled",
            || async {
                admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                     WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
                        &[],
                    )
                    .await
                    .is_ok_and(|r| r.get::<_, i64>(0) == 0)
            },
        )
        .await?;
    }
    // The pool is fine afterwards.
    queries_succeed(&server, "sleepy", 10).await?;
    let pool = server.server().registry().pool("sleepy")?;
    assert!(
        pool.telemetry().statements_cancelled >= 1,
        "no statement was cancelled"
    );
    server.shutdown().await
}

#[tokio::test]
async fn scenario_10_pool_churn_leaves_nothing_behind() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    let server = TestServer::spawn().await?;
    let client = server.client.clone();
    let metrics = server.server().metrics_addr();
    // Warm up (first-use allocations), then the baseline.
    client
        .create_pool("churn-warm", db.url(), quick(2, 1))
        .await?;
    client.delete_pool("churn-warm").await?;
    let baseline = server_resources(metrics).await?;
    for i in 0..200 {
        let name = format!("churn-{i}");
        client.create_pool(&name, db.url(), quick(2, 1)).await?;
        client.delete_pool(&name).await?;
    }
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'poolplane%churn-%'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(left, 0, "backends of deleted pools remain");
    wait_no_backends(&admin, "churn-199", Duration::from_secs(2)).await?;
    // The scenarios run one at a time, so this process's descriptors are the
    // server's and this test's.
    wait_back_to(metrics, baseline, 5.0, Duration::from_secs(10)).await?;
    assert!(client.list_pools().await?.is_empty());
    server.shutdown().await
}
