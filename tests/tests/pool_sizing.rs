//! Dynamic sizing against the real PostgreSQL: load grows the pool within about a
//! second straight to what the demand needs (up fast); idle shrinks it step by step,
//! one step per min_scale_interval, to min, and the open backends follow (down
//! slow). Every step is an event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_served_within_two_seconds_and_steady_demand_does_not_flap() -> anyhow::Result<()>
{
    let db = TestPg::database().await?;
    // The defaults: thresholds 0.8 / 0.3, factors 1.2 / 0.9, 60 s interval.
    let config = AdvancedPoolConfig {
        enable_dynamic_sizing: true,
        acquire_timeout_secs: 10,
        min_scale_interval_secs: AdvancedPoolConfig::default().min_scale_interval_secs,
        ..test_config(2, 40)
    };
    assert_eq!(config.min_scale_interval_secs, 60);
    let pool = Arc::new(AdvancedConnectionPool::named("burst", db.url(), config).await?);
    let mut events = pool.subscribe();
    let stop = Arc::new(AtomicBool::new(false));
    // Checkout waits, once the ramp is over (microseconds).
    let waits = Arc::new(Mutex::new(Vec::<u64>::new()));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
        let (waits, measuring) = (Arc::clone(&waits), Arc::clone(&measuring));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut conn = pool.get().await?;
                if measuring.load(Ordering::Relaxed) {
                    let waited = started.elapsed().as_micros() as u64;
                    waits.lock().expect("waits").push(waited);
                }
                conn.execute("SELECT pg_sleep(0.001)", &[]).await?;
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

    // 60 s of steady demand: at most one size change, and checkouts barely wait.
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(60)).await;
    measuring.store(false, Ordering::Relaxed);
    let steady = steps(&mut events);
    assert!(steady.len() <= 1, "the size flapped: {steady:?}");
    let mut waits = std::mem::take(&mut *waits.lock().expect("waits"));
    waits.sort_unstable();
    assert!(waits.len() > 10_000, "{} checkouts", waits.len());
    let p99 = waits[waits.len() * 99 / 100];
    eprintln!("steady: {} checkouts, p99 wait {p99} us", waits.len());
    assert!(p99 < 5_000, "p99 checkout wait {p99} us after the ramp");

    stop.store(true, Ordering::Relaxed);
    let stopped = SystemTime::now();
    for worker in workers {
        worker.await??;
    }
    let size = pool.pool_stats().current_size;
    // Down slow: nothing for a whole min_scale_interval after the load stopped,
    // then one step down toward min.
    let step = tokio::time::timeout(Duration::from_secs(75), async {
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
    eprintln!("first step down {step:?} {after:?} after the load stopped");
    assert!(
        after >= Duration::from_secs(59),
        "shrank {after:?} after the load stopped"
    );
    assert_eq!(step.0, ScaleDirection::Down);
    assert_eq!(step.1, size);
    assert_eq!(step.2, (f64::from(size) * 0.9).floor() as u32);
    pool.close().await;
    Ok(())
}
