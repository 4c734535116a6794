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
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'polluted'",
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
