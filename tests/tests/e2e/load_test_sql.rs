//! A load test's SQL: unless an admin asks for `read_write`, every request runs in a
//! read-only transaction that is rolled back, with a statement_timeout no longer
//! than the test's remaining time — writes fail, session settings do not stick, a
//! long query is cancelled when the test ends.

use std::time::{Duration, Instant};

use poolplane_client::PoolplaneClient;
use poolplane_client::proto::{LoadTestResult, PoolConfig, RunLoadTestRequest};
use poolplane_tests::{TestPg, TestServer, run_load_test};

fn config() -> PoolConfig {
    poolplane_tests::proto_config(1, 2)
}

async fn run(
    client: &PoolplaneClient,
    query: &str,
    read_write: bool,
) -> anyhow::Result<LoadTestResult> {
    let request = RunLoadTestRequest {
        pool_name: "sql".into(),
        concurrency: 1,
        duration_secs: 1,
        query: query.into(),
        read_write,
        ..RunLoadTestRequest::default()
    };
    Ok(run_load_test(client, request).await?.1)
}

#[tokio::test]
async fn read_only_unless_an_admin_asks_for_writes() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    admin.batch_execute("CREATE TABLE t (id int)").await?;
    let client = &server.client;
    client.create_pool("sql", db.url(), config()).await?;
    let count = || async {
        let row = admin.query_one("SELECT count(*) FROM t", &[]).await?;
        anyhow::Ok(row.get::<_, i64>(0))
    };

    // Writes fail in the read-only transaction; nothing persists.
    let result = run(client, "INSERT INTO t VALUES (1)", false).await?;
    assert!(result.total_requests > 0, "{result:?}");
    assert_eq!(result.failed_requests, result.total_requests, "{result:?}");
    assert_eq!(count().await?, 0);

    // A session setting is rolled back with the transaction: the pool's
    // connections are not left changed.
    let result = run(client, "SET application_name = 'polluted'", false).await?;
    assert_eq!(result.failed_requests, 0, "{result:?}");
    let polluted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'polluted' \
             AND datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(polluted, 0);

    // Reads work.
    let result = run(client, "SELECT count(*) FROM t", false).await?;
    assert!(result.successful_requests > 0 && result.failed_requests == 0);

    // A query longer than the test is cancelled by its statement_timeout when the
    // test's time is up, not left running.
    let started = Instant::now();
    let result = run(client, "SELECT pg_sleep(60)", false).await?;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the test waited for the query"
    );
    // Stopped by the end of the test, not counted as a failure.
    assert_eq!(result.total_requests, 0, "{result:?}");
    let sleeping: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' \
             AND datname = current_database() \
             AND state = 'active'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(sleeping, 0);

    // An admin's read_write test writes.
    let result = run(client, "INSERT INTO t VALUES (1)", true).await?;
    assert!(
        result.successful_requests > 0 && result.failed_requests == 0,
        "{result:?}"
    );
    assert_eq!(count().await?, result.successful_requests as i64);
    server.shutdown().await
}

/// A writing load test counts what PostgreSQL did: the requests in flight when it
/// ends finish (or are cancelled after a grace) and are counted by their outcome,
/// so the rows written are exactly its successful requests, run after run.
#[tokio::test]
async fn a_writing_test_counts_exactly_the_rows_it_wrote() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    admin.batch_execute("CREATE TABLE w (id bigserial)").await?;
    let pool = std::sync::Arc::new(
        poolplane::AdvancedConnectionPool::new(db.url(), poolplane_tests::test_config(2, 16))
            .await?,
    );
    let tester = poolplane::PoolLoadTester::new(std::sync::Arc::clone(&pool));
    let mut written = 0i64;
    for run in 0..50 {
        let options = poolplane::LoadTestOptions {
            concurrency: 16,
            duration: Duration::from_millis(300),
            query: Some("INSERT INTO w DEFAULT VALUES".into()),
            warmup: Duration::ZERO,
            target_rps: None,
            read_only: false,
        };
        let result = tester
            .run(options, None, tokio_util::sync::CancellationToken::new())
            .await?;
        let rows: i64 = admin.query_one("SELECT count(*) FROM w", &[]).await?.get(0);
        assert!(result.successful_requests > 0, "run {run}: {result:?}");
        assert_eq!(
            rows - written,
            result.successful_requests as i64,
            "run {run}: rows written vs successful requests: {result:?}"
        );
        assert_eq!(result.failed_requests, 0, "run {run}: {result:?}");
        // The rate is over the time the test really ran, requests in flight at
        // its end included.
        assert!(result.duration >= Duration::from_millis(300), "{result:?}");
        let rate = result.total_requests as f64 / result.duration.as_secs_f64();
        assert!((rate - result.requests_per_second).abs() < 1e-6 * rate.max(1.0));
        written = rows;
    }
    pool.close().await;
    Ok(())
}
