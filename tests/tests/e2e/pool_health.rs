//! Health monitoring against the real PostgreSQL, through a FaultProxy: a cut
//! makes the pool unhealthy after max_failed_health_checks intervals, restoring it
//! recovers within one interval; a saturated pool stays healthy.

use std::time::{Duration, Instant};

use poolplane::{AdvancedConnectionPool, AdvancedPoolConfig, PoolEvent, PoolEventKind};
use poolplane_tests::{FaultProxy, TestPg, test_config};
use tokio::sync::broadcast;

async fn next_event(
    events: &mut broadcast::Receiver<PoolEvent>,
    within: Duration,
    wanted: impl Fn(&PoolEventKind) -> bool,
) -> anyhow::Result<PoolEvent> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no such event within {within:?}"))??;
        if wanted(&event.kind) {
            return Ok(event);
        }
    }
}

#[tokio::test]
async fn cut_database_turns_unhealthy_and_recovers_when_restored() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let proxy = FaultProxy::start(db.server_addr()?).await?;
    let config = AdvancedPoolConfig {
        health_check_interval_secs: 2,
        health_check_timeout_secs: 1,
        max_failed_health_checks: 2,
        ..test_config(2, 4)
    };
    let pool = AdvancedConnectionPool::named("flaky", &db.url_via(proxy.addr()), config).await?;
    let mut events = pool.subscribe();
    pool.execute("SELECT 1", &[]).await?;
    assert!(pool.get_health_status().await.is_healthy);

    let cut_at = Instant::now();
    proxy.cut();
    let first = next_event(&mut events, Duration::from_secs(5), |k| {
        matches!(
            k,
            PoolEventKind::HealthCheckFailed {
                consecutive_failures: 1,
                ..
            }
        )
    })
    .await?;
    let unhealthy = next_event(&mut events, Duration::from_secs(5), |k| {
        matches!(
            k,
            PoolEventKind::BecameUnhealthy {
                consecutive_failures: 2,
                ..
            }
        )
    })
    .await?;
    let took = cut_at.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(7),
        "unhealthy after {took:?} (2 intervals of 2 s)"
    );
    assert!(unhealthy.at > first.at);
    let health = pool.get_health_status().await;
    assert!(!health.is_healthy);
    assert!(health.last_error.is_some());
    assert_eq!(
        pool.get_pool_stats().await.idle_connections,
        0,
        "idle connections purged"
    );

    let restored_at = Instant::now();
    proxy.restore();
    next_event(&mut events, Duration::from_secs(5), |k| {
        matches!(k, PoolEventKind::Recovered { .. })
    })
    .await?;
    let took = restored_at.elapsed();
    assert!(
        took <= Duration::from_millis(3100),
        "recovered {took:?} after the restore"
    );
    assert!(pool.get_health_status().await.is_healthy);
    for i in 0..100i32 {
        let row = pool.query_one("SELECT $1::int4 + 1", &[&i]).await?;
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn a_saturated_pool_stays_healthy() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let config = AdvancedPoolConfig {
        health_check_interval_secs: 2,
        health_check_timeout_secs: 1,
        max_failed_health_checks: 1,
        ..test_config(2, 2)
    };
    let pool = AdvancedConnectionPool::new(db.url(), config).await?;
    let held = (pool.get().await?, pool.get().await?);
    let before = Instant::now();
    // Held longer than two intervals (and far longer than the health timeout).
    let mut checks = 0;
    while before.elapsed() < Duration::from_secs(5) {
        let health = pool.get_health_status().await;
        assert!(health.is_healthy, "{health:?}");
        assert_eq!(health.consecutive_failures, 0);
        if health.last_check_at.is_some() {
            checks += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = pool.get_health_status().await;
    assert!(health.last_success_at.is_some(), "no check ran: {health:?}");
    assert!(checks > 0);
    drop(held);
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn a_pool_created_while_its_database_is_down_starts_unhealthy_and_recovers()
-> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let proxy = FaultProxy::start(db.server_addr()?).await?;
    proxy.cut();
    let config = AdvancedPoolConfig {
        health_check_interval_secs: 2,
        health_check_timeout_secs: 1,
        ..test_config(1, 2)
    };
    let pool =
        AdvancedConnectionPool::named_unchecked("late", &db.url_via(proxy.addr()), config).await?;
    assert!(!pool.get_health_status().await.is_healthy);
    let mut events = pool.subscribe();
    proxy.restore();
    next_event(&mut events, Duration::from_secs(5), |k| {
        matches!(k, PoolEventKind::Recovered { .. })
    })
    .await?;
    pool.execute("SELECT 1", &[]).await?;
    pool.close().await;
    Ok(())
}
