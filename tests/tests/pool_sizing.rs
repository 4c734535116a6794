//! Dynamic sizing against the real PostgreSQL: load grows the pool within about a
//! second straight to what the demand needs (up fast); idle shrinks it step by step,
//! one step per min_scale_interval, to min, and the open backends follow (down
//! slow). Every step is an event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use poolplane::pool::ScaleDirection;
use poolplane::{AdvancedConnectionPool, AdvancedPoolConfig, PoolEvent, PoolEventKind};
use poolplane_tests::{TestPg, count_backends, test_config, wait_until};
use tokio::sync::broadcast;

fn steps(
    events: &mut broadcast::Receiver<PoolEvent>,
) -> Vec<(SystemTime, ScaleDirection, u32, u32)> {
    std::iter::from_fn(|| events.try_recv().ok())
        .filter_map(|e| match e.kind {
            PoolEventKind::Scaled {
                direction,
                from,
                to,
                ..
            } => Some((e.at, direction, from, to)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn load_grows_the_pool_to_max_and_idle_shrinks_it_to_min() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let config = AdvancedPoolConfig {
        enable_dynamic_sizing: true,
        min_scale_interval_secs: 1,
        load_threshold_high: 0.8,
        load_threshold_low: 0.3,
        scale_up_factor: 1.5,
        scale_down_factor: 0.5,
        ..test_config(2, 8)
    };
    let pool = Arc::new(AdvancedConnectionPool::named("elastic", db.url(), config).await?);
    let mut events = pool.subscribe();
    assert_eq!(pool.pool_stats().current_size, 2);

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let load_started = SystemTime::now();
    for _ in 0..16 {
        let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                pool.execute("SELECT pg_sleep(0.02)", &[]).await?;
            }
            anyhow::Ok(())
        }));
    }
    wait_until(
        Duration::from_secs(20),
        "the pool has grown to max",
        || async { pool.pool_stats().current_size == 8 },
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    let up = steps(&mut events);
    // 16 callers on 2 connections: one step, straight to max (16 / 0.55 > 8),
    // after the first second of load.
    let sizes: Vec<(u32, u32)> = up.iter().map(|s| (s.2, s.3)).collect();
    assert_eq!(sizes, [(2, 8)], "{up:?}");
    assert_eq!(up[0].1, ScaleDirection::Up);
    let reacted = up[0].0.duration_since(load_started)?;
    assert!(reacted < Duration::from_secs(3), "grew after {reacted:?}");

    let admin = db.connect().await?;
    wait_until(
        Duration::from_secs(20),
        "idle shrinks the pool to min",
        || async { pool.pool_stats().current_size == 2 },
    )
    .await?;
    wait_until(
        Duration::from_secs(10),
        "the open backends follow",
        || async {
            count_backends(&admin, &db.name, "poolplane:elastic")
                .await
                .ok()
                == Some(2)
        },
    )
    .await?;
    assert_eq!(pool.pool_stats().connections, 2);
    let down = steps(&mut events);
    let sizes: Vec<(u32, u32)> = down.iter().map(|s| (s.2, s.3)).collect();
    // floor(0.5 x size), at least one a step, not below min.
    assert_eq!(sizes, [(8, 4), (4, 2)], "{down:?}");
    for pair in down.windows(2) {
        assert!(pair[1].0.duration_since(pair[0].0)? >= Duration::from_millis(990));
    }
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn with_dynamic_sizing_off_the_size_is_max() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let pool = AdvancedConnectionPool::new(db.url(), test_config(1, 7)).await?;
    let stats = pool.get_pool_stats().await;
    assert_eq!((stats.current_size, stats.connections), (7, 1));
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn a_burst_is_served_within_two_seconds_and_steady_demand_does_not_flap() -> anyhow::Result<()>
{
    let db = TestPg::database().await?;
    // The defaults: thresholds 0.8 / 0.3, factors 1.2 / 0.9, 60 s interval.
    let config = AdvancedPoolConfig {
        enable_dynamic_sizing: true,
        min_scale_interval_secs: 60,
        acquire_timeout_secs: 10,
        ..test_config(2, 40)
    };
    let pool = Arc::new(AdvancedConnectionPool::named("burst", db.url(), config).await?);
    let mut events = pool.subscribe();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                pool.execute("SELECT pg_sleep(0.001)", &[]).await?;
            }
            anyhow::Ok(())
        }));
    }
    wait_until(
        Duration::from_secs(2) + Duration::from_millis(500),
        "32 connections",
        || async { pool.pool_stats().current_size >= 32 },
    )
    .await?;
    let ramp = steps(&mut events);
    assert_eq!(ramp.len(), 1, "{ramp:?}");
    // Steady demand: no further change.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(steps(&mut events).is_empty(), "the size flapped");
    assert_eq!(pool.pool_stats().waiting_requests, 0);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    // Down slow: the size stays through the stabilization window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        steps(&mut events).is_empty(),
        "shrank before min_scale_interval"
    );
    assert!(pool.pool_stats().current_size >= 32);
    pool.close().await;
    Ok(())
}
