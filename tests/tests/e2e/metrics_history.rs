//! The metrics history in the control database: the recorder fills the history's
//! tables and views, survives a control-database outage without losing a sample
//! or failing a query, retention prunes, and the history RPCs read it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use poolplane_client::proto::PoolConfig;
use poolplane_server::app::METRICS_STORE_SERVICE;
use poolplane_tests::{
    FaultProxy, ServingStatus, TestPg, TestServer, http_get, metric_value, wait_until,
};

fn pool_config() -> PoolConfig {
    poolplane_tests::proto_config(1, 4)
}

async fn per_pool(
    client: &tokio_postgres::Client,
    sql: &str,
) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(client
        .query(sql, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

#[tokio::test]
async fn every_table_and_view_fills_for_every_pool() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let server =
        TestServer::spawn_with(control, |c| c.metrics_interval = Duration::from_secs(1)).await?;
    let client = &server.client;
    for name in ["alpha", "beta"] {
        client.create_pool(name, db.url(), pool_config()).await?;
        // Raising min above the size is a scaling decision, taken at once.
        let raise = PoolConfig {
            min_connections: Some(2),
            ..PoolConfig::default()
        };
        client.update_pool_config(name, raise).await?;
    }
    let sql = server.control.connect().await?;
    let both = vec![("alpha".to_owned(), 1), ("beta".to_owned(), 1)];
    wait_until(
        Duration::from_secs(30),
        "every table has rows for both pools",
        || async {
            let mut ok = true;
            for table in [
                "connection_pool_metrics",
                "connection_health_status",
                "statement_cache_metrics",
                "pool_scaling_events",
            ] {
                let q = format!(
                    "SELECT pool_name, least(count(*), 1) FROM {table} GROUP BY 1 ORDER BY 1"
                );
                ok &= per_pool(&sql, &q).await.ok() == Some(both.clone());
            }
            ok
        },
    )
    .await?;
    for view in [
        "pool_health_summary",
        "pool_performance_summary",
        "statement_cache_performance",
    ] {
        let q =
            format!("SELECT pool_name, count(*) FROM {view} WHERE rn = 1 GROUP BY 1 ORDER BY 1");
        assert_eq!(per_pool(&sql, &q).await?, both, "{view}");
    }
    let row = sql
        .query_one(
            "SELECT samples_1h, max_utilization_1h FROM pool_performance_summary \
             WHERE pool_name = 'alpha' AND rn = 1",
            &[],
        )
        .await?;
    assert!(row.get::<_, i64>(0) >= 1);
    assert!(row.get::<_, Option<f64>>(1).is_some());

    let summary = client.get_performance_summary("alpha").await?;
    assert!(summary.samples_1h >= 1, "{summary:?}");
    assert_eq!(summary.current.as_ref().map(|s| s.current_size), Some(2));
    let step = &summary.recent_scaling_events[0];
    assert_eq!((step.from, step.to), (1, 2));
    assert!(step.reason.contains("min_connections"), "{}", step.reason);
    assert_eq!(client.list_scaling_events("alpha", 5).await?.len(), 1);
    server.shutdown().await
}

#[tokio::test]
async fn a_control_database_outage_loses_no_sample_and_fails_no_query() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let proxy = FaultProxy::start(control.server_addr()?).await?;
    let via_proxy = control.url_via(proxy.addr());
    let server = TestServer::spawn_with(control, |c| {
        c.database_url = Some(via_proxy);
        c.metrics_interval = Duration::from_secs(1);
    })
    .await?;
    let client = &server.client;
    let names = ["left", "right"];
    for name in names {
        client.create_pool(name, db.url(), pool_config()).await?;
    }

    // Load on both pools (they reach their database directly, not through the proxy).
    let stop = Arc::new(AtomicBool::new(false));
    let (queries, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for name in names {
        let pool = server.server().registry().pool(name)?;
        for _ in 0..3 {
            let (pool, stop, queries, failures) = (
                Arc::clone(&pool),
                Arc::clone(&stop),
                Arc::clone(&queries),
                Arc::clone(&failures),
            );
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match pool.execute("SELECT pg_sleep(0.005)", &[]).await {
                        Ok(_) => queries.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    let store_status = || async {
        server
            .health(METRICS_STORE_SERVICE)
            .await
            .unwrap_or(ServingStatus::Unknown)
    };
    assert_eq!(store_status().await, ServingStatus::Serving);
    // Samples of both pools are stored before the cut (so the gaps are checked
    // across it).
    let sql = server.control.connect().await?;
    wait_until(Duration::from_secs(10), "two samples of each pool", || async {
        let counts = sql
            .query(
                "SELECT count(*) FROM connection_pool_metrics GROUP BY pool_name HAVING count(*) >= 2",
                &[],
            )
            .await;
        counts.is_ok_and(|rows| rows.len() == names.len())
    })
    .await?;

    let cut_at = SystemTime::now();
    proxy.cut();
    wait_until(
        Duration::from_secs(10),
        "MetricsStore is NOT_SERVING",
        || async { store_status().await == ServingStatus::NotServing },
    )
    .await?;
    let outage = Instant::now();
    let metrics = server.server().metrics_addr();
    wait_until(
        Duration::from_secs(5),
        "the outage shows in /metrics",
        || async {
            let text = http_get(metrics, "/metrics").await.unwrap_or_default();
            metric_value(&text, "poolplane_metrics_store_up") == Some(0.0)
                && metric_value(&text, "poolplane_metrics_buffered_rows").unwrap_or(0.0) > 0.0
        },
    )
    .await?;
    while outage.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let restored_at = SystemTime::now();
    proxy.restore();
    let recorder = Arc::clone(server.server().recorder_status());
    wait_until(Duration::from_secs(20), "the buffer is written", || async {
        store_status().await == ServingStatus::Serving
            && recorder.buffered.load(Ordering::Relaxed) == 0
    })
    .await?;
    let text = http_get(metrics, "/metrics").await?;
    assert_eq!(
        metric_value(&text, "poolplane_metrics_store_up"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "poolplane_metrics_dropped_rows_total"),
        Some(0.0),
        "{text}"
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await?;
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "a query failed during the outage"
    );
    assert!(queries.load(Ordering::Relaxed) > 500);
    assert_eq!(recorder.dropped.load(Ordering::Relaxed), 0);

    for name in names {
        let times: Vec<SystemTime> = sql
            .query(
                "SELECT recorded_at FROM connection_pool_metrics WHERE pool_name = $1 ORDER BY recorded_at",
                &[&name],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let during = times
            .iter()
            .filter(|t| **t >= cut_at && **t <= restored_at)
            .count();
        assert!(
            during >= 10,
            "{name}: {during} samples in a 10 s outage at 1 s"
        );
        for pair in times.windows(2) {
            let gap = pair[1].duration_since(pair[0])?;
            assert!(
                gap < Duration::from_millis(1500),
                "{name}: a {gap:?} gap in the samples"
            );
        }
    }
    server.shutdown().await
}

#[tokio::test]
async fn retention_removes_old_rows_and_keeps_new_ones() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    // A first server creates the schema; the rows go in once it has stopped, so
    // that only the second server's retention can touch them.
    let first = TestServer::spawn_on(control.clone()).await?;
    let sql = first.control.connect().await?;
    first.shutdown().await?;
    for age in ["8 days", "1 hour"] {
        sql.batch_execute(&format!(
            "INSERT INTO connection_pool_metrics (pool_name, recorded_at, connections, idle_connections, \
               active_connections, waiting_requests, current_size, min_connections, max_connections, \
               utilization_rate, avg_acquire_time_ms, p50_acquire_time_ms, p95_acquire_time_ms, \
               p99_acquire_time_ms, total_acquires, acquire_timeouts, connection_errors, \
               connections_created, connections_closed, connections_recycled, total_queries) \
             SELECT 'kept', now() - interval '{age}', 1,1,0,0,1,1,2, 0,0,0,0,0, 0,0,0,1,0,0,0 \
             FROM generate_series(1, 3);
             INSERT INTO connection_health_status (pool_name, recorded_at, is_healthy, response_time_ms, \
               consecutive_failures) VALUES ('kept', now() - interval '{age}', true, 1, 0);
             INSERT INTO statement_cache_metrics (pool_name, recorded_at, hits, misses, hit_rate, \
               evictions, prepared_statements, capacity) VALUES ('kept', now() - interval '{age}', 1, 1, 0.5, 0, 1, 10);
             INSERT INTO pool_scaling_events (pool_name, recorded_at, direction, from_size, to_size, \
               utilization, reason) VALUES ('kept', now() - interval '{age}', 'up', 1, 2, 0.9, 'test');"
        ))
        .await?;
    }
    let count = |age_filter: &'static str| {
        let sql = &sql;
        async move {
            let mut total = 0i64;
            for table in [
                "connection_pool_metrics",
                "connection_health_status",
                "statement_cache_metrics",
                "pool_scaling_events",
            ] {
                let q = format!("SELECT count(*) FROM {table} WHERE recorded_at {age_filter}");
                total += sql
                    .query_one(&q, &[])
                    .await
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(-1);
            }
            total
        }
    };
    assert_eq!(count("< now() - interval '7 days'").await, 6);
    // Pruning runs at start with the default retention of 7 days.
    let second = TestServer::spawn_on(control).await?;
    wait_until(Duration::from_secs(10), "old rows are pruned", || async {
        count("< now() - interval '7 days'").await == 0
    })
    .await?;
    assert_eq!(
        count(">= now() - interval '7 days'").await,
        6,
        "new rows are kept"
    );
    assert_eq!(
        second
            .server()
            .recorder_status()
            .pruned
            .load(Ordering::Relaxed),
        6
    );
    second.shutdown().await
}

#[tokio::test]
async fn metrics_history_is_downsampled_in_time_order_over_the_range() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let sql = server.control.connect().await?;
    // Ten minutes of one-second samples, total_queries rising by 10 a sample.
    sql.batch_execute(
        "INSERT INTO connection_pool_metrics (pool_name, recorded_at, connections, idle_connections, \
           active_connections, waiting_requests, current_size, min_connections, max_connections, \
           utilization_rate, avg_acquire_time_ms, p50_acquire_time_ms, p95_acquire_time_ms, \
           p99_acquire_time_ms, total_acquires, acquire_timeouts, connection_errors, \
           connections_created, connections_closed, connections_recycled, total_queries) \
         SELECT 'series', now() - make_interval(secs => 600 - g), 4, 2, 2, g % 3, 4, 1, 8, \
                (g % 10) / 10.0, 1.5, 1, 2, 3, g, 0, 0, 4, 0, 0, g * 10 \
         FROM generate_series(1, 600) g",
    )
    .await?;
    let to = SystemTime::now();
    let from = to - Duration::from_secs(601);
    let points = server
        .client
        .get_metrics_history("series", Some(from), Some(to), 50)
        .await?;
    assert!(
        !points.is_empty() && points.len() <= 50,
        "{} points",
        points.len()
    );
    let samples: i64 = points.iter().map(|p| p.samples).sum();
    assert_eq!(samples, 600, "every sample in the range is in some point");
    let times: Vec<SystemTime> = points
        .iter()
        .map(|p| SystemTime::try_from(p.at.expect("at")).expect("a time"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "points in time order"
    );
    let width = Duration::from_secs(601) / 50;
    assert!(
        times[0].duration_since(from)? <= width,
        "the first point starts the range"
    );
    assert!(
        to.duration_since(*times.last().expect("a point"))? <= width * 2,
        "the last ends it"
    );
    assert!(
        points
            .iter()
            .all(|p| p.max_utilization <= 0.9 + 1e-9 && p.avg_connections == 4.0)
    );

    let few = server
        .client
        .get_metrics_history("series", Some(from), Some(to), 3)
        .await?;
    assert!(few.len() <= 3);
    assert_eq!(few.iter().map(|p| p.samples).sum::<i64>(), 600);
    let none = server
        .client
        .get_metrics_history("series", None, None, 0)
        .await?;
    assert_eq!(
        none.iter().map(|p| p.samples).sum::<i64>(),
        600,
        "default range: the last hour"
    );

    for (from, to, max) in [(Some(to), Some(from), 10), (Some(from), Some(to), 10_001)] {
        let error = server
            .client
            .get_metrics_history("series", from, to, max)
            .await
            .unwrap_err();
        assert_eq!(
            error.status().map(tonic::Status::code),
            Some(tonic::Code::InvalidArgument)
        );
    }
    server.shutdown().await
}

#[tokio::test]
async fn last_hour_counts_survive_counter_resets() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let sql = server.control.connect().await?;
    // A pool's cumulative counters as the recorder saw them: 10, 30, then the
    // server restarted (the counters start again) 5, 25. The true counts:
    // 20 + 5 + 20 = 45 checkouts (max - min would say 25), 2 + 1 + 3 = 6 timeouts,
    // 4 + 2 + 1 = 7 query errors.
    for (minutes, acquires, timeouts, query_errors, avg_ms) in [
        (40, 10i64, 1i64, 0i64, 1.0),
        (30, 30, 3, 4, 1.5),
        (20, 5, 1, 2, 3.0),
        (10, 25, 4, 3, 2.0),
    ] {
        sql.execute(
            "INSERT INTO connection_pool_metrics (pool_name, recorded_at, connections, \
               idle_connections, active_connections, waiting_requests, current_size, \
               min_connections, max_connections, utilization_rate, avg_acquire_time_ms, \
               p50_acquire_time_ms, p95_acquire_time_ms, p99_acquire_time_ms, total_acquires, \
               acquire_timeouts, connection_errors, connections_created, connections_closed, \
               connections_recycled, total_queries, query_errors) \
             VALUES ('across-restart', now() - make_interval(mins => $1), 1, 1, 0, 0, 1, 1, 2, \
               0.5, $2, 0, 0, 0, $3, $4, 0, 1, 0, 0, $3, $5)",
            &[&minutes, &avg_ms, &acquires, &timeouts, &query_errors],
        )
        .await?;
    }
    let hour = server
        .server()
        .registry()
        .store()
        .hour_summary("across-restart")
        .await?
        .expect("samples in the last hour");
    assert_eq!(hour.samples, 4);
    assert_eq!(hour.acquires, 45);
    assert_eq!(hour.acquire_timeouts, 6);
    assert_eq!(hour.query_errors, 7);
    // Acquire time of the window's checkouts: (30*1.5 - 10*1.0) + 5*3.0 +
    // (25*2.0 - 5*3.0) = 35 + 15 + 35 = 85 ms over 45 checkouts.
    assert!(
        (hour.avg_acquire_time_ms - 85.0 / 45.0).abs() < 1e-9,
        "{}",
        hour.avg_acquire_time_ms
    );
    server.shutdown().await
}
