//! The metrics history in the control database: batched writes, retention, and
//! the reads behind the performance summary, the history series and the scaling
//! events.

use std::time::SystemTime;

use serde::Serialize;

use super::ControlStore;
use crate::Error;
use crate::events::ScaleDirection;
use crate::pool::{HealthStatus, PoolStats, StatementCacheStats};

/// One history row to write.
#[derive(Debug, Clone)]
pub enum MetricRow {
    /// A row of connection_pool_metrics.
    Pool {
        /// The pool.
        pool_name: String,
        /// When it was sampled.
        at: SystemTime,
        /// The snapshot.
        stats: Box<PoolStats>,
    },
    /// A row of statement_cache_metrics.
    Cache {
        /// The pool.
        pool_name: String,
        /// When it was sampled.
        at: SystemTime,
        /// The snapshot.
        stats: StatementCacheStats,
    },
    /// A row of connection_health_status.
    Health {
        /// The pool.
        pool_name: String,
        /// When the check finished.
        at: SystemTime,
        /// The health after the check.
        status: HealthStatus,
    },
    /// A row of pool_scaling_events.
    Scaling {
        /// The pool.
        pool_name: String,
        /// When it was decided.
        at: SystemTime,
        /// Up or down.
        direction: ScaleDirection,
        /// Size before.
        from: u32,
        /// Size after.
        to: u32,
        /// The utilization that prompted it.
        utilization: f64,
        /// Why.
        reason: String,
    },
}

/// A pool's stats summarized over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsWindow {
    /// Mean utilization.
    pub avg_utilization: f64,
    /// Highest utilization.
    pub peak_utilization: f64,
    /// Most connections in use plus callers waiting at once.
    pub peak_demand: u32,
    /// The largest size the pool had.
    pub peak_size: u32,
    /// Checkouts in the window.
    pub acquires: u64,
    /// Checkouts that timed out in the window.
    pub acquire_timeouts: u64,
    /// Connections opened in the window.
    pub connections_created: u64,
    /// Connections recycled in the window.
    pub connections_recycled: u64,
    /// Mean acquire time of the window's checkouts, ms.
    pub avg_acquire_time_ms: f64,
    /// Connections that failed to open in the window.
    pub connection_errors: u64,
    /// Statements that failed in the window.
    pub query_errors: u64,
}

impl StatsWindow {
    /// Failed attempts over attempts: acquire timeouts, connections that failed
    /// to open and statements that failed, over checkouts tried.
    pub fn error_rate(&self) -> f64 {
        let attempts = self.acquires + self.acquire_timeouts;
        if attempts == 0 {
            return 0.0;
        }
        let errors = self.acquire_timeouts + self.connection_errors + self.query_errors;
        (errors as f64 / attempts as f64).min(1.0)
    }
}

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
    /// Up or down.
    pub direction: ScaleDirection,
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

/// Pool snapshots as columns of connection_pool_metrics, for one unnest INSERT.
#[derive(Default)]
struct PoolColumns {
    pool_name: Vec<String>,
    recorded_at: Vec<SystemTime>,
    connections: Vec<i32>,
    idle_connections: Vec<i32>,
    active_connections: Vec<i32>,
    waiting_requests: Vec<i32>,
    current_size: Vec<i32>,
    min_connections: Vec<i32>,
    max_connections: Vec<i32>,
    utilization_rate: Vec<f64>,
    avg_acquire_time_ms: Vec<f64>,
    p50_acquire_time_ms: Vec<f64>,
    p95_acquire_time_ms: Vec<f64>,
    p99_acquire_time_ms: Vec<f64>,
    total_acquires: Vec<i64>,
    acquire_timeouts: Vec<i64>,
    connection_errors: Vec<i64>,
    connections_created: Vec<i64>,
    connections_closed: Vec<i64>,
    connections_recycled: Vec<i64>,
    total_queries: Vec<i64>,
    query_errors: Vec<i64>,
}

impl PoolColumns {
    fn push(&mut self, pool_name: &str, at: SystemTime, s: &PoolStats) {
        self.pool_name.push(pool_name.to_owned());
        self.recorded_at.push(at);
        self.connections.push(int(s.connections));
        self.idle_connections.push(int(s.idle_connections));
        self.active_connections.push(int(s.active_connections));
        self.waiting_requests.push(int(s.waiting_requests));
        self.current_size.push(int(s.current_size));
        self.min_connections.push(int(s.min_connections));
        self.max_connections.push(int(s.max_connections));
        self.utilization_rate.push(s.utilization_rate);
        self.avg_acquire_time_ms.push(s.avg_acquire_time_ms);
        self.p50_acquire_time_ms.push(s.p50_acquire_time_ms);
        self.p95_acquire_time_ms.push(s.p95_acquire_time_ms);
        self.p99_acquire_time_ms.push(s.p99_acquire_time_ms);
        self.total_acquires.push(big(s.total_acquires));
        self.acquire_timeouts.push(big(s.acquire_timeouts));
        self.connection_errors.push(big(s.connection_errors));
        self.connections_created.push(big(s.connections_created));
        self.connections_closed.push(big(s.connections_closed));
        self.connections_recycled.push(big(s.connections_recycled));
        self.total_queries.push(big(s.total_queries));
        self.query_errors.push(big(s.query_errors));
    }

    async fn insert(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        replica: &str,
    ) -> Result<(), Error> {
        if self.pool_name.is_empty() {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO connection_pool_metrics (replica, pool_name, recorded_at, connections, \
             idle_connections, active_connections, waiting_requests, current_size, min_connections, \
             max_connections, utilization_rate, avg_acquire_time_ms, p50_acquire_time_ms, \
             p95_acquire_time_ms, p99_acquire_time_ms, total_acquires, acquire_timeouts, \
             connection_errors, connections_created, connections_closed, connections_recycled, \
             total_queries, query_errors) \
             SELECT $23, * FROM unnest($1::text[], $2::timestamptz[], $3::int4[], $4::int4[], \
             $5::int4[], $6::int4[], $7::int4[], $8::int4[], $9::int4[], $10::float8[], $11::float8[], \
             $12::float8[], $13::float8[], $14::float8[], $15::int8[], $16::int8[], $17::int8[], \
             $18::int8[], $19::int8[], $20::int8[], $21::int8[], $22::int8[])",
            &[
                &self.pool_name,
                &self.recorded_at,
                &self.connections,
                &self.idle_connections,
                &self.active_connections,
                &self.waiting_requests,
                &self.current_size,
                &self.min_connections,
                &self.max_connections,
                &self.utilization_rate,
                &self.avg_acquire_time_ms,
                &self.p50_acquire_time_ms,
                &self.p95_acquire_time_ms,
                &self.p99_acquire_time_ms,
                &self.total_acquires,
                &self.acquire_timeouts,
                &self.connection_errors,
                &self.connections_created,
                &self.connections_closed,
                &self.connections_recycled,
                &self.total_queries,
                &self.query_errors,
                &replica,
            ],
        )
        .await
        .map_err(query_error("recording pool metrics"))?;
        Ok(())
    }
}

/// Statement cache snapshots as columns of statement_cache_metrics.
#[derive(Default)]
struct CacheColumns {
    pool_name: Vec<String>,
    recorded_at: Vec<SystemTime>,
    hits: Vec<i64>,
    misses: Vec<i64>,
    hit_rate: Vec<f64>,
    evictions: Vec<i64>,
    prepared_statements: Vec<i64>,
    capacity: Vec<i32>,
}

impl CacheColumns {
    fn push(&mut self, pool_name: &str, at: SystemTime, s: &StatementCacheStats) {
        self.pool_name.push(pool_name.to_owned());
        self.recorded_at.push(at);
        self.hits.push(big(s.hits));
        self.misses.push(big(s.misses));
        self.hit_rate.push(s.hit_rate);
        self.evictions.push(big(s.evictions));
        self.prepared_statements.push(big(s.prepared_statements));
        self.capacity.push(int(s.capacity));
    }

    async fn insert(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), Error> {
        if self.pool_name.is_empty() {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO statement_cache_metrics (pool_name, recorded_at, hits, misses, hit_rate, \
             evictions, prepared_statements, capacity) \
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::int8[], \
             $5::float8[], $6::int8[], $7::int8[], $8::int4[])",
            &[
                &self.pool_name,
                &self.recorded_at,
                &self.hits,
                &self.misses,
                &self.hit_rate,
                &self.evictions,
                &self.prepared_statements,
                &self.capacity,
            ],
        )
        .await
        .map_err(query_error("recording statement cache metrics"))?;
        Ok(())
    }
}

async fn insert_health(
    tx: &tokio_postgres::Transaction<'_>,
    pool_name: &str,
    at: SystemTime,
    h: &HealthStatus,
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO connection_health_status (pool_name, recorded_at, is_healthy, \
         response_time_ms, consecutive_failures, last_check_at, last_success_at, last_error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &pool_name,
            &at,
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
    Ok(())
}

async fn insert_scaling(
    tx: &tokio_postgres::Transaction<'_>,
    row: &MetricRow,
) -> Result<(), Error> {
    let MetricRow::Scaling {
        pool_name,
        at,
        direction,
        from,
        to,
        utilization,
        reason,
    } = row
    else {
        return Ok(());
    };
    tx.execute(
        "INSERT INTO pool_scaling_events (pool_name, recorded_at, direction, from_size, \
         to_size, utilization, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            pool_name,
            at,
            &direction.as_str(),
            &int(*from),
            &int(*to),
            utilization,
            reason,
        ],
    )
    .await
    .map_err(query_error("recording a scaling event"))?;
    Ok(())
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
        let mut pools = PoolColumns::default();
        let mut caches = CacheColumns::default();
        for row in rows {
            match row {
                MetricRow::Pool {
                    pool_name,
                    at,
                    stats,
                } => pools.push(pool_name, *at, stats),
                MetricRow::Cache {
                    pool_name,
                    at,
                    stats,
                } => caches.push(pool_name, *at, stats),
                MetricRow::Health {
                    pool_name,
                    at,
                    status,
                } => insert_health(&tx, pool_name, *at, status).await?,
                MetricRow::Scaling { .. } => insert_scaling(&tx, row).await?,
            }
        }
        pools.insert(&tx, self.replica()).await?;
        caches.insert(&tx).await?;
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
        replica: Option<&str>,
    ) -> Result<Vec<MetricsPoint>, Error> {
        let conn = self.conn().await?;
        // Per replica first (its counters are its own), then summed over the
        // replicas of the group: connections, waiting and queries add up;
        // utilization and acquire times are averaged, peaks kept.
        let rows = conn
            .query(
                "WITH samples AS ( \
                   SELECT *, width_bucket(extract(epoch FROM recorded_at), \
                          extract(epoch FROM $2::timestamptz), extract(epoch FROM $3::timestamptz) + 1e-6, \
                          $4::int4) AS bucket \
                   FROM connection_pool_metrics \
                   WHERE pool_name = $1 AND recorded_at >= $2 AND recorded_at <= $3 \
                   AND ($5::text IS NULL OR replica = $5)), \
                 per AS ( \
                   SELECT bucket, min(recorded_at) AS at, count(*) AS n, \
                          avg(utilization_rate) AS u, max(utilization_rate) AS u_max, \
                          avg(avg_acquire_time_ms) AS acquire, max(p95_acquire_time_ms) AS p95, \
                          avg(connections) AS conns, max(waiting_requests) AS waiting, \
                          max(total_queries) - min(total_queries) AS queries \
                   FROM samples GROUP BY bucket, replica) \
                 SELECT min(at), sum(n)::int8, avg(u), max(u_max), avg(acquire), max(p95), \
                        sum(conns)::float8, sum(waiting)::int8, sum(queries)::int8 \
                 FROM per GROUP BY bucket ORDER BY bucket",
                &[&pool_name, &from, &to, &int(max_points.max(1)), &replica],
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
        // The table's CHECK keeps direction to `up` and `down`.
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(ScalingRecord {
                    pool_name: r.get(0),
                    at: r.get(1),
                    direction: ScaleDirection::parse(r.get(2))?,
                    from: r.get(3),
                    to: r.get(4),
                    utilization: r.get(5),
                    reason: r.get(6),
                })
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
    ) -> Result<(StatsWindow, u64), Error> {
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
            StatsWindow {
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
