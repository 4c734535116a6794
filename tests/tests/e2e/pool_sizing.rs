//! Dynamic sizing against the real PostgreSQL: load grows the pool within about a
//! second straight to what the demand needs (up fast); idle shrinks it step by step,
//! one step per min_scale_interval, to min, and the open backends follow (down
//! slow). Every step is an event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use poolplane::pool::ScaleDirection;
use poolplane::{AdvancedConnectionPool, AdvancedPoolConfig, PoolEvent, PoolEventKind};
use poolplane_tests::{TestPg, count_backends, test_config, wait_until};
use tokio::sync::broadcast;

fn steps(
    events: &mut broadcast::Receiver<PoolEvent>,
) -> Vec<(SystemTime, ScaleDirection, u32, u32)> {
    std::iter::from_fn(|| match events.try_recv() {
        Ok(event) => Some(event),
        Err(broadcast::error::TryRecvError::Empty) => None,
        // A lost event could hide a step: the test must see them all.
        Err(e) => panic!("scaling events lost: {e}"),
    })
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

/// The burst end to end with a short interval (3 s); the default 60 s window is
/// simulated on tokio's paused clock in the maintenance task's own tests, and the
/// checkout wait under steady demand is a benchmark (`bash bench/run.sh`), not a
/// test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_served_within_two_seconds_and_steady_demand_does_not_flap() -> anyhow::Result<()>
{
    const INTERVAL: u64 = 3;
    let db = TestPg::database().await?;
    // The default thresholds 0.8 / 0.3 and factors 1.2 / 0.9.
    let config = AdvancedPoolConfig {
        enable_dynamic_sizing: true,
        acquire_timeout_secs: 10,
        min_scale_interval_secs: INTERVAL,
        ..test_config(2, 40)
    };
    let pool = Arc::new(AdvancedConnectionPool::named("burst", db.url(), config).await?);
    let mut events = pool.subscribe();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (pool, stop, served) = (Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&served));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut conn = pool.get().await?;
                conn.execute("SELECT pg_sleep(0.001)", &[]).await?;
                served.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    wait_until(Duration::from_secs(2), "32 connections", || async {
        pool.pool_stats().current_size >= 32
    })
    .await?;
    let ramp = steps(&mut events);
    assert_eq!(ramp.len(), 1, "one step up to the demand: {ramp:?}");

    // Three intervals of steady demand: at most one size change.
    let before = served.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3 * INTERVAL)).await;
    let steady = steps(&mut events);
    assert!(steady.len() <= 1, "the size flapped: {steady:?}");
    assert!(
        served.load(Ordering::Relaxed) > before,
        "the demand was served"
    );

    stop.store(true, Ordering::Relaxed);
    let stopped = SystemTime::now();
    for worker in workers {
        worker.await??;
    }
    let size = pool.pool_stats().current_size;
    // Down slow: nothing for a whole min_scale_interval after the load stopped,
    // then one step down toward min.
    let step = tokio::time::timeout(Duration::from_secs(5 * INTERVAL), async {
        loop {
            match events.recv().await?.kind {
                PoolEventKind::Scaled {
                    direction,
                    from,
                    to,
                    ..
                } => return anyhow::Ok((direction, from, to)),
                _ => continue,
            }
        }
    })
    .await??;
    let after = stopped.elapsed()?;
    assert!(
        after >= Duration::from_millis(INTERVAL * 1000 - 1000),
        "shrank {after:?} after the load stopped"
    );
    assert_eq!(step.0, ScaleDirection::Down);
    assert_eq!(step.1, size);
    assert_eq!(step.2, (f64::from(size) * 0.9).floor() as u32);
    pool.close().await;
    Ok(())
}
