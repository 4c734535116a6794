//! One connection budget per PostgreSQL server: a cluster started with
//! max_connections 30 (3 reserved for superusers, 5 kept free by the server's
//! --connection-reserve: a budget of 22), three pools of min 2 and max 20 loaded
//! together never hold more backends than the budget and never meet SQLSTATE
//! 53300; the shares follow the demand; a pool whose min cannot fit is refused
//! with FAILED_PRECONDITION; 300 pools of min_connections 0 are all created and,
//! idle, hold no backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use poolplane::{EmbeddedPg, EmbeddedPgOptions};
use poolplane_client::PoolplaneClient;
use poolplane_client::proto::{LoadTestResult, PoolConfig, RunLoadTestRequest};
use poolplane_tests::{TestPg, TestServer, connect, run_load_test, wait_until};
use tonic::Code;

const BUDGET: i64 = 30 - 3 - 5;

fn config(min: u32, max: u32) -> PoolConfig {
    PoolConfig {
        acquire_timeout_secs: Some(10),
        ..poolplane_tests::proto_config(min, max)
    }
}

async fn load(
    client: PoolplaneClient,
    pool: &str,
    concurrency: u32,
    secs: u32,
) -> anyhow::Result<LoadTestResult> {
    let request = RunLoadTestRequest {
        pool_name: pool.into(),
        concurrency,
        duration_secs: secs,
        query: "SELECT pg_sleep(0.005)".into(),
        ..RunLoadTestRequest::default()
    };
    Ok(run_load_test(&client, request).await?.1)
}

/// Backends of poolplane pools whose name starts with `prefix`.
async fn backends(admin: &tokio_postgres::Client, prefix: &str) -> anyhow::Result<i64> {
    Ok(admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&format!("poolplane:{prefix}%")],
        )
        .await?
        .get(0))
}

#[tokio::test]
async fn pools_on_one_server_share_its_budget_by_demand() -> anyhow::Result<()> {
    let pg = EmbeddedPg::start(EmbeddedPgOptions {
        settings: vec![("max_connections".into(), "30".into())],
        ..EmbeddedPgOptions::default()
    })
    .await?;
    let admin = connect(&pg.url("postgres")).await?;
    admin
        .batch_execute("CREATE ROLE app LOGIN PASSWORD 'budget-pw-1'")
        .await?;
    let url = format!(
        "postgres://app:budget-pw-1@127.0.0.1:{}/postgres",
        pg.port()
    );
    let server = TestServer::spawn_with(TestPg::database().await?, |c| {
        c.connection_reserve = 5;
    })
    .await?;
    let client = &server.client;
    for name in ["load-a", "load-b", "load-c"] {
        client.create_pool(name, &url, config(2, 20)).await?;
    }

    // Sample pg_stat_activity while the three pools are loaded.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        let admin = connect(&pg.url("postgres")).await?;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let now = backends(&admin, "load-").await?;
                peak.fetch_max(now, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        })
    };
    let runs = [("load-a", 4), ("load-b", 4), ("load-c", 8)].map(|(name, workers)| {
        let client = client.clone();
        tokio::spawn(async move { load(client, name, workers, 8).await })
    });
    // Within the run (8 s of load), the shares come to follow the demand: the pool
    // with twice the workers gets at least 1.5x the share.
    let share = |name: &'static str| async move {
        client
            .get_pool_stats(name)
            .await
            .ok()
            .and_then(|s| s.budget)
            .map_or(0, |b| b.share)
    };
    wait_until(
        Duration::from_secs(6),
        "shares that follow the demand",
        || async {
            let (a, c) = (share("load-a").await, share("load-c").await);
            a > 2 && f64::from(c) >= 1.5 * f64::from(a)
        },
    )
    .await?;
    // A pool above its share after a rebalance shrinks at its next maintenance
    // tick (every second): every pool within its share, read together.
    wait_until(
        Duration::from_secs(3),
        "every pool within its share",
        || async {
            let mut within = true;
            for name in ["load-a", "load-b", "load-c"] {
                let Ok(stats) = client.get_pool_stats(name).await else {
                    return false;
                };
                within &= stats.budget.is_some_and(|b| stats.current_size <= b.share);
            }
            within
        },
    )
    .await?;
    let mut shares = Vec::new();
    for name in ["load-a", "load-b", "load-c"] {
        let stats = client.get_pool_stats(name).await?;
        let budget = stats
            .budget
            .clone()
            .expect("a pool of the registry has a budget");
        assert_eq!(i64::from(budget.limit), BUDGET, "{budget:?}");
        assert_eq!(budget.pools, 3);
        shares.push(budget.share);
    }
    eprintln!("shares {shares:?}");
    assert!(
        shares.iter().map(|s| i64::from(*s)).sum::<i64>() <= BUDGET,
        "{shares:?}"
    );
    assert!(
        f64::from(shares[2]) >= 1.5 * f64::from(shares[0]),
        "twice the workers, at least 1.5x the share: {shares:?}"
    );
    for run in runs {
        let result = run.await??;
        assert_eq!(result.failed_requests, 0, "{result:?}");
        assert!(result.total_requests > 0);
    }
    stop.store(true, Ordering::Relaxed);
    sampler.await??;
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("peak backends {peak} of a budget of {BUDGET}");
    assert!(peak > 6, "the pools grew under load: {peak}");
    assert!(peak <= BUDGET, "{peak} backends > the budget {BUDGET}");
    for name in ["load-a", "load-b", "load-c"] {
        let stats = client.get_pool_stats(name).await?;
        assert_eq!(stats.connection_errors, 0, "no 53300 for {name}");
        assert_eq!(stats.acquire_timeouts, 0, "{name}");
    }

    // A min that cannot fit: 6 kept by the others + 17 > 22.
    let refused = client
        .create_pool("too-big", &url, config(17, 20))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("connection budget of 127.0.0.1:"),
        "{refused}"
    );
    assert!(
        client.get_pool("too-big").await.is_err(),
        "nothing of it stays"
    );
    // An update whose min cannot fit either: 4 kept by the others + 19 > 22.
    let refused = client
        .update_pool_config("load-a", config(19, 20))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    assert_eq!(
        client
            .get_pool("load-a")
            .await?
            .config
            .and_then(|c| c.min_connections),
        Some(2)
    );
    // The refusal is on record, as not applied.
    let refused = client.list_config_changes("load-a", 10).await?;
    let min = refused
        .iter()
        .find(|r| r.change.as_ref().map(|c| c.field.as_str()) == Some("min_connections"))
        .expect("the refused change is recorded");
    assert!(!min.applied);
    assert!(min.reason.contains("connection budget"), "{}", min.reason);

    // 300 idle pools of min_connections 0 on the same server.
    let started = std::time::Instant::now();
    for i in 0..300 {
        client
            .create_pool(&format!("idle-{i}"), &url, config(0, 5))
            .await?;
    }
    eprintln!("300 pools created in {:?}", started.elapsed());
    assert_eq!(client.list_pools().await?.len(), 303);
    wait_until(
        Duration::from_secs(10),
        "idle pools hold nothing",
        || async { backends(&admin, "idle-").await.ok() == Some(0) },
    )
    .await?;
    let stats = client.get_pool_stats("idle-299").await?;
    assert_eq!(stats.connections, 0);
    assert_eq!(stats.budget.map(|b| b.pools), Some(303));
    // One of them still serves a query when asked: at once (its first connection
    // opened within the acquire deadline), then under a short load test.
    let rows = client
        .query("idle-7", "SELECT 1", poolplane_client::params![])
        .await?;
    assert_eq!(rows.rows.len(), 1);
    let result = load(client.clone(), "idle-7", 1, 1).await?;
    assert_eq!(result.failed_requests, 0);
    assert!(result.successful_requests > 0);
    server.shutdown().await
}
