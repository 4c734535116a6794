//! Scenario 3 of the fault suite, on a PostgreSQL cluster of its own since it
//! restarts it: the pool's database restarted under load — only queries in
//! flight (or started while it was down) fail, every query after it is back
//! succeeds, and the pool leaves no stale connection behind.

use std::time::Duration;

use poolplane::EmbeddedPg;
use poolplane_client::PoolConfigBuilder;
use poolplane_client::proto::{PoolConfig, RunLoadTestRequest};
use poolplane_tests::{TestServer, run_load_test, wait_until};

#[tokio::test]
async fn scenario_3_the_database_restarted_under_load() -> anyhow::Result<()> {
    let mut pg = EmbeddedPg::start_temporary().await?;
    let url = pg.url("postgres");
    let server = TestServer::spawn().await?;
    let client = server.client.clone();
    let config = PoolConfig {
        acquire_timeout_secs: Some(2),
        health_check_interval_secs: Some(2),
        health_check_timeout_secs: Some(1),
        enable_dynamic_sizing: Some(false),
        validation_idle_threshold_ms: Some(0),
        ..PoolConfigBuilder::new()
            .max_connections(4)
            .min_connections(4)
            .build()
    };
    client.create_pool("restarted", &url, config).await?;
    let test = {
        let client = client.clone();
        tokio::spawn(async move {
            let request = RunLoadTestRequest {
                pool_name: "restarted".into(),
                concurrency: 4,
                duration_secs: 6,
                query: "SELECT pg_sleep(0.01)".into(),
                ..RunLoadTestRequest::default()
            };
            anyhow::Ok(run_load_test(&client, request).await?.1)
        })
    };
    // Under load: the test has run requests through the pool.
    let pool = server.server().registry().pool("restarted")?;
    wait_until(
        Duration::from_secs(10),
        "the load test is running",
        || async { pool.pool_stats().total_queries >= 20 },
    )
    .await?;
    let pid = pg.pid();
    pg.restart().await?;
    assert_ne!(pg.pid(), pid, "a new postmaster");
    // Every query after the restart succeeds: dead connections are caught at
    // checkout and replaced.
    for i in 0..1000i64 {
        let row = pool
            .query_one("SELECT $1::int8", &[&i])
            .await
            .map_err(|e| anyhow::anyhow!("query {i} after the restart failed: {e}"))?;
        assert_eq!(row.get::<_, i64>(0), i);
    }
    let result = test.await??;
    assert!(result.successful_requests > 0, "{result:?}");
    // Only the requests in flight at the restart may fail (at most one per
    // connection); those waiting meanwhile were served once it was back.
    assert!(result.failed_requests <= 4, "{result:?}");
    // The restart did break every connection: the pool opened new ones.
    let stats = client.get_pool_stats("restarted").await?;
    assert!(stats.connections_created > 4, "{stats:?}");
    assert!(
        result.max_response_time_ms < 2_000.0 + 1_000.0,
        "a request hung for {} ms",
        result.max_response_time_ms
    );
    server.shutdown().await?;
    pg.stop().await;
    Ok(())
}
