//! The metrics history in the control database: batched writes, retention, and
//! the reads behind the performance summary, the history series and the scaling
//! events.

use std::time::SystemTime;

use serde::Serialize;

use super::ControlStore;
use super::recorder::MetricRow;
use crate::Error;
use crate::pool::ScaleDirection;

/// The history tables, in the order retention visits them.
const TABLES: [&str; 5] = [
    "connection_pool_metrics",
    "connection_health_status",
    "statement_cache_metrics",
    "pool_scaling_events",
    "pool_load_test_results",
];

/// A pool's last hour, from the pool_performance_summary view (rn = 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HourSummary {
    /// When the latest sample was taken.
    pub recorded_at: SystemTime,
    /// Mean utilization over the hour.
    pub avg_utilization: f64,
    /// Highest utilization sampled in the hour.
    pub max_utilization: f64,
    /// Mean acquire time over the hour, in ms.
    pub avg_acquire_time_ms: f64,
    /// Acquire timeouts in the hour.
    pub acquire_timeouts: i64,
    /// Connection errors in the hour.
    pub connection_errors: i64,
    /// Checkouts in the hour.
    pub acquires: i64,
    /// Statements that failed in the hour.
    pub query_errors: i64,
    /// Samples in the hour.
    pub samples: i64,
}

/// One point of a downsampled metrics series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsPoint {
    /// The start of the bucket's first sample.
    pub at: SystemTime,
    /// Samples in the bucket.
    pub samples: i64,
    /// Mean utilization.
    pub avg_utilization: f64,
    /// Highest utilization.
    pub max_utilization: f64,
    /// Mean acquire time, in ms.
    pub avg_acquire_time_ms: f64,
    /// Highest p95 acquire time, in ms.
    pub max_p95_acquire_time_ms: f64,
    /// Mean open connections.
    pub avg_connections: f64,
    /// Highest number of waiting requests.
    pub max_waiting_requests: i64,
    /// Queries run in the bucket (rise of the counter).
    pub queries: i64,
}

/// A stored scaling decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingRecord {
    /// The pool.
    pub pool_name: String,
    /// When it was decided.
    pub at: SystemTime,
    /// `up` or `down`.
    pub direction: String,
    /// Size before.
    pub from: i32,
    /// Size after.
    pub to: i32,
    /// The utilization that prompted it.
    pub utilization: f64,
    /// Why.
    pub reason: String,
}

fn query_error(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::ControlQuery { context, source }
}

fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl ControlStore {
    /// Writes a batch of history rows in one transaction: one multi-row INSERT per
    /// table (pool and cache snapshots through unnest), all or nothing.
    pub async fn write_metrics(&self, rows: &[MetricRow]) -> Result<(), Error> {
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(query_error("starting a metrics batch"))?;

        #[derive(Default)]
        struct PoolColumns {
            name: Vec<String>,
            at: Vec<SystemTime>,
            ints: [Vec<i32>; 7],
            floats: [Vec<f64>; 5],
            bigs: [Vec<i64>; 8],
        }
        let mut p = PoolColumns::default();
        let (
            mut c_name,
            mut c_at,
            mut c_hits,
            mut c_misses,
            mut c_rate,
            mut c_evict,
            mut c_prep,
            mut c_cap,
        ) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for row in rows {
            match row {
                MetricRow::Pool {
                    pool_name,
                    at,
                    stats: s,
                } => {
                    p.name.push(pool_name.clone());
                    p.at.push(*at);
                    for (col, v) in p.ints.iter_mut().zip([
                        s.connections,
                        s.idle_connections,
                        s.active_connections,
                        s.waiting_requests,
                        s.current_size,
                        s.min_connections,
                        s.max_connections,
                    ]) {
                        col.push(int(v));
                    }
                    for (col, v) in p.floats.iter_mut().zip([
                        s.utilization_rate,
                        s.avg_acquire_time_ms,
                        s.p50_acquire_time_ms,
                        s.p95_acquire_time_ms,
                        s.p99_acquire_time_ms,
                    ]) {
                        col.push(v);
                    }
                    for (col, v) in p.bigs.iter_mut().zip([
                        s.total_acquires,
                        s.acquire_timeouts,
                        s.connection_errors,
                        s.connections_created,
                        s.connections_closed,
                        s.connections_recycled,
                        s.total_queries,
                        s.query_errors,
                    ]) {
                        col.push(big(v));
                    }
                }
                MetricRow::Cache {
                    pool_name,
                    at,
                    stats: s,
                } => {
                    c_name.push(pool_name.clone());
                    c_at.push(*at);
                    c_hits.push(big(s.hits));
                    c_misses.push(big(s.misses));
                    c_rate.push(s.hit_rate);
                    c_evict.push(big(s.evictions));
                    c_prep.push(big(s.prepared_statements));
                    c_cap.push(int(s.capacity));
                }
                MetricRow::Health {
                    pool_name,
                    at,
                    status: h,
                } => {
                    tx.execute(
                        "INSERT INTO connection_health_status (pool_name, recorded_at, is_healthy, \
                         response_time_ms, consecutive_failures, last_check_at, last_success_at, last_error) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        &[
                            pool_name,
                            at,
                            &h.is_healthy,
                            &h.response_time_ms,
                            &int(h.consecutive_failures),
                            &h.last_check_at,
                            &h.last_success_at,
                            &h.last_error,
                        ],
                    )
                    .await
                    .map_err(query_error("recording a health check"))?;
                }
                MetricRow::Scaling {
                    pool_name,
                    at,
                    direction,
                    from,
                    to,
                    utilization,
                    reason,
                } => {
                    let direction = match direction {
                        ScaleDirection::Up => "up",
                        ScaleDirection::Down => "down",
                    };
                    tx.execute(
                        "INSERT INTO pool_scaling_events (pool_name, recorded_at, direction, from_size, \
                         to_size, utilization, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[pool_name, at, &direction, &int(*from), &int(*to), utilization, reason],
                    )
                    .await
                    .map_err(query_error("recording a scaling event"))?;
                }
            }
        }
        if !p.name.is_empty() {
            let [i0, i1, i2, i3, i4, i5, i6] = &p.ints;
            let [f0, f1, f2, f3, f4] = &p.floats;
            let [b0, b1, b2, b3, b4, b5, b6, b7] = &p.bigs;
            tx.execute(
                "INSERT INTO connection_pool_metrics (pool_name, recorded_at, connections, \
                 idle_connections, active_connections, waiting_requests, current_size, min_connections, \
                 max_connections, utilization_rate, avg_acquire_time_ms, p50_acquire_time_ms, \
                 p95_acquire_time_ms, p99_acquire_time_ms, total_acquires, acquire_timeouts, \
                 connection_errors, connections_created, connections_closed, connections_recycled, \
                 total_queries, query_errors) \
                 SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::int4[], $4::int4[], $5::int4[], \
                 $6::int4[], $7::int4[], $8::int4[], $9::int4[], $10::float8[], $11::float8[], \
                 $12::float8[], $13::float8[], $14::float8[], $15::int8[], $16::int8[], $17::int8[], \
                 $18::int8[], $19::int8[], $20::int8[], $21::int8[], $22::int8[])",
                &[
                    &p.name, &p.at, i0, i1, i2, i3, i4, i5, i6, f0, f1, f2, f3, f4, b0, b1, b2, b3, b4, b5, b6, b7,
                ],
            )
            .await
            .map_err(query_error("recording pool metrics"))?;
        }
        if !c_name.is_empty() {
            tx.execute(
                "INSERT INTO statement_cache_metrics (pool_name, recorded_at, hits, misses, hit_rate, \
                 evictions, prepared_statements, capacity) \
                 SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::int8[], \
                 $5::float8[], $6::int8[], $7::int8[], $8::int4[])",
                &[&c_name, &c_at, &c_hits, &c_misses, &c_rate, &c_evict, &c_prep, &c_cap],
            )
            .await
            .map_err(query_error("recording statement cache metrics"))?;
        }
        tx.commit()
            .await
            .map_err(query_error("committing a metrics batch"))
    }

    /// Deletes history rows older than `before`, `batch` rows per statement so that
    /// no statement holds locks for long. Returns how many it deleted.
    pub async fn prune_metrics(&self, before: SystemTime, batch: i64) -> Result<u64, Error> {
        let conn = self.conn().await?;
        let mut total = 0;
        for table in TABLES {
            let sql = format!(
                "DELETE FROM {table} WHERE id IN \
                 (SELECT id FROM {table} WHERE recorded_at < $1 ORDER BY id LIMIT $2)"
            );
            loop {
                let deleted = conn
                    .execute(&sql, &[&before, &batch])
                    .await
                    .map_err(query_error("pruning metrics history"))?;
                total += deleted;
                if deleted < batch as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// The pool's latest row of pool_performance_summary (its last hour), if any.
    pub async fn hour_summary(&self, pool_name: &str) -> Result<Option<HourSummary>, Error> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                "SELECT recorded_at, coalesce(avg_utilization_1h, 0), coalesce(max_utilization_1h, 0), \
                 coalesce(avg_acquire_time_ms_1h, 0), coalesce(acquire_timeouts_1h, 0), \
                 coalesce(connection_errors_1h, 0), coalesce(samples_1h, 0), \
                 coalesce(acquires_1h, 0), coalesce(query_errors_1h, 0) \
                 FROM pool_performance_summary WHERE pool_name = $1 AND rn = 1",
                &[&pool_name],
            )
            .await
            .map_err(query_error("reading the performance summary"))?;
        Ok(row.map(|r| HourSummary {
            recorded_at: r.get(0),
            avg_utilization: r.get(1),
            max_utilization: r.get(2),
            avg_acquire_time_ms: r.get(3),
            acquire_timeouts: r.get(4),
            connection_errors: r.get(5),
            samples: r.get(6),
            acquires: r.get(7),
            query_errors: r.get(8),
        }))
    }

    /// The pool's metrics between `from` and `to`, in at most `max_points` buckets of
    /// equal width, oldest first; empty buckets are left out.
    pub async fn metrics_history(
        &self,
        pool_name: &str,
        from: SystemTime,
        to: SystemTime,
        max_points: u32,
    ) -> Result<Vec<MetricsPoint>, Error> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "WITH samples AS ( \
                   SELECT *, width_bucket(extract(epoch FROM recorded_at), \
                          extract(epoch FROM $2::timestamptz), extract(epoch FROM $3::timestamptz) + 1e-6, \
                          $4::int4) AS bucket \
                   FROM connection_pool_metrics \
                   WHERE pool_name = $1 AND recorded_at >= $2 AND recorded_at <= $3) \
                 SELECT min(recorded_at), count(*), avg(utilization_rate), max(utilization_rate), \
                        avg(avg_acquire_time_ms), max(p95_acquire_time_ms), avg(connections)::float8, \
                        max(waiting_requests)::int8, (max(total_queries) - min(total_queries))::int8 \
                 FROM samples GROUP BY bucket ORDER BY bucket",
                &[&pool_name, &from, &to, &int(max_points.max(1))],
            )
            .await
            .map_err(query_error("reading the metrics history"))?;
        Ok(rows
            .iter()
            .map(|r| MetricsPoint {
                at: r.get(0),
                samples: r.get(1),
                avg_utilization: r.get(2),
                max_utilization: r.get(3),
                avg_acquire_time_ms: r.get(4),
                max_p95_acquire_time_ms: r.get(5),
                avg_connections: r.get(6),
                max_waiting_requests: r.get(7),
                queries: r.get(8),
            })
            .collect())
    }

    /// The pool's latest scaling decisions, newest first.
    pub async fn scaling_events(
        &self,
        pool_name: &str,
        limit: u32,
    ) -> Result<Vec<ScalingRecord>, Error> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT pool_name, recorded_at, direction, from_size, to_size, utilization, reason \
                 FROM pool_scaling_events WHERE pool_name = $1 \
                 ORDER BY recorded_at DESC, id DESC LIMIT $2",
                &[&pool_name, &i64::from(limit)],
            )
            .await
            .map_err(query_error("reading scaling events"))?;
        Ok(rows
            .iter()
            .map(|r| ScalingRecord {
                pool_name: r.get(0),
                at: r.get(1),
                direction: r.get(2),
                from: r.get(3),
                to: r.get(4),
                utilization: r.get(5),
                reason: r.get(6),
            })
            .collect())
    }

    /// Stores a finished load test in pool_load_test_results.
    pub async fn insert_load_test(&self, r: &crate::LoadTestResults) -> Result<(), Error> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO pool_load_test_results (pool_name, recorded_at, started_at, duration_ms, \
             concurrency, query, target_rps, total_requests, successful_requests, failed_requests, \
             error_rate, requests_per_second, avg_response_time_ms, p50_response_time_ms, \
             p95_response_time_ms, p99_response_time_ms, max_response_time_ms, avg_utilization, \
             peak_utilization, grade, capacity) \
             VALUES ($1, now(), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
            &[
                &r.pool_name,
                &r.started_at,
                &big(u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX)),
                &int(r.concurrency),
                &r.query,
                &r.target_rps,
                &big(r.total_requests),
                &big(r.successful_requests),
                &big(r.failed_requests),
                &r.error_rate,
                &r.requests_per_second,
                &r.avg_response_time_ms,
                &r.p50_response_time_ms,
                &r.p95_response_time_ms,
                &r.p99_response_time_ms,
                &r.max_response_time_ms,
                &r.avg_utilization,
                &r.peak_utilization,
                &r.grade.letter(),
                &int(r.capacity),
            ],
        )
        .await
        .map_err(query_error("storing a load test"))?;
        Ok(())
    }

    /// Each pool's latest load test stored since the pool was (re)created:
    /// `created` gives each pool's creation time, so a pool recreated under an old
    /// name does not inherit its predecessor's test.
    pub async fn last_load_tests(
        &self,
        created: &[(String, std::time::SystemTime)],
    ) -> Result<Vec<crate::LoadTestResults>, Error> {
        let conn = self.conn().await?;
        let mut out = Vec::new();
        for (pool, since) in created {
            let row = conn
                .query_opt(
                    "SELECT started_at, duration_ms, concurrency, query, target_rps, \
                     total_requests, successful_requests, failed_requests, error_rate, \
                     requests_per_second, avg_response_time_ms, p50_response_time_ms, \
                     p95_response_time_ms, p99_response_time_ms, max_response_time_ms, \
                     avg_utilization, peak_utilization, grade, coalesce(capacity, 0) \
                     FROM pool_load_test_results WHERE pool_name = $1 AND started_at >= $2 \
                     ORDER BY recorded_at DESC LIMIT 1",
                    &[pool, since],
                )
                .await
                .map_err(query_error("reading the last load tests"))?;
            let Some(r) = row else { continue };
            let unsigned = |i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
            let Some(grade) = crate::Grade::from_letter(r.get::<_, &str>(17)) else {
                continue;
            };
            out.push(crate::LoadTestResults {
                pool_name: pool.clone(),
                concurrency: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                query: r.get(3),
                target_rps: r.get(4),
                total_requests: unsigned(5),
                successful_requests: unsigned(6),
                failed_requests: unsigned(7),
                error_rate: r.get(8),
                requests_per_second: r.get(9),
                avg_response_time_ms: r.get(10),
                p50_response_time_ms: r.get(11),
                p95_response_time_ms: r.get(12),
                p99_response_time_ms: r.get(13),
                max_response_time_ms: r.get(14),
                avg_utilization: r.get(15),
                peak_utilization: r.get(16),
                grade,
                capacity: u32::try_from(r.get::<_, i32>(18)).unwrap_or(0),
                started_at: r.get(0),
                duration: std::time::Duration::from_millis(unsigned(1)),
            });
        }
        Ok(out)
    }

    /// The pool's recorded stats since `since`, summarized for the optimizer, and
    /// how many of its health checks failed in that time.
    pub async fn stats_window(
        &self,
        pool_name: &str,
        since: SystemTime,
    ) -> Result<(crate::optimizer::StatsWindow, u64), Error> {
        let conn = self.conn().await?;
        let row = conn
            .query_one(
                "SELECT coalesce(w.avg_utilization, 0), coalesce(w.max_utilization, 0), \
                        coalesce(w.peak_demand, 0), coalesce(w.acquires, 0), \
                        coalesce(w.acquire_timeouts, 0), coalesce(w.connections_created, 0), \
                        coalesce(w.connections_recycled, 0), coalesce(w.avg_acquire_time_ms, 0), \
                        (SELECT count(*) FROM connection_health_status \
                          WHERE pool_name = $1 AND recorded_at >= $2 AND consecutive_failures > 0), \
                        coalesce(w.connection_errors, 0), coalesce(w.query_errors, 0), \
                        coalesce(w.peak_size, 0) \
                 FROM (SELECT 1) one \
                 LEFT JOIN poolplane_metrics_window($2, $1) w ON true",
                &[&pool_name, &since],
            )
            .await
            .map_err(query_error("reading the optimizer's window"))?;
        let unsigned = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok((
            crate::optimizer::StatsWindow {
                avg_utilization: row.get(0),
                peak_utilization: row.get(1),
                peak_demand: u32::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                acquires: unsigned(3),
                acquire_timeouts: unsigned(4),
                connections_created: unsigned(5),
                connections_recycled: unsigned(6),
                avg_acquire_time_ms: row.get(7),
                connection_errors: unsigned(9),
                query_errors: unsigned(10),
                peak_size: u32::try_from(row.get::<_, i64>(11)).unwrap_or(0),
            },
            unsigned(8),
        ))
    }
}
