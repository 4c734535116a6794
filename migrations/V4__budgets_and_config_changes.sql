-- Counters that reset, query errors, the capacity a load test was graded
-- against, and the audit trail of configuration changes.

-- Query errors since the pool started (a cumulative counter like the others).
ALTER TABLE connection_pool_metrics ADD COLUMN query_errors bigint NOT NULL DEFAULT 0;

-- The capacity (max_connections, or the pool's share of its server's budget)
-- a load test's utilization was measured against; NULL for older rows.
ALTER TABLE pool_load_test_results ADD COLUMN capacity integer;

-- A cumulative counter's rise between two samples. A drop means the counter
-- was reset (a server restart, a rebuilt pool): as Prometheus' increase() does,
-- the rise then counts from zero.
CREATE FUNCTION poolplane_increase(cur double precision, prev double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN prev IS NULL THEN 0 WHEN cur >= prev THEN cur - prev ELSE cur END
$$;

-- Each pool's metrics since `since` (one pool when `pool` is given): means and
-- peaks of the gauges, reset-aware rises of the counters, and the mean acquire
-- time of the checkouts made in the window.
CREATE FUNCTION poolplane_metrics_window(since timestamptz, pool text DEFAULT NULL)
RETURNS TABLE (
    pool_name            text,
    avg_utilization      double precision,
    max_utilization      double precision,
    peak_demand          bigint,
    acquires             bigint,
    acquire_timeouts     bigint,
    connection_errors    bigint,
    query_errors         bigint,
    connections_created  bigint,
    connections_recycled bigint,
    avg_acquire_time_ms  double precision,
    samples              bigint,
    peak_size            bigint
) LANGUAGE sql STABLE AS $$
    WITH s AS (
        SELECT m.*,
               poolplane_increase(total_acquires, lag(total_acquires) OVER w) AS d_acquires,
               poolplane_increase(acquire_timeouts, lag(acquire_timeouts) OVER w) AS d_timeouts,
               poolplane_increase(connection_errors, lag(connection_errors) OVER w) AS d_conn_errors,
               poolplane_increase(query_errors, lag(query_errors) OVER w) AS d_query_errors,
               poolplane_increase(connections_created, lag(connections_created) OVER w) AS d_created,
               poolplane_increase(connections_recycled, lag(connections_recycled) OVER w) AS d_recycled,
               poolplane_increase(avg_acquire_time_ms * total_acquires,
                                  lag(avg_acquire_time_ms * total_acquires) OVER w) AS d_acquire_ms
        FROM connection_pool_metrics m
        WHERE m.recorded_at >= since AND (pool IS NULL OR m.pool_name = pool)
        WINDOW w AS (PARTITION BY m.pool_name ORDER BY m.recorded_at, m.id)
    )
    SELECT s.pool_name,
           avg(s.utilization_rate),
           max(s.utilization_rate),
           max(s.active_connections + s.waiting_requests)::bigint,
           sum(s.d_acquires)::bigint,
           sum(s.d_timeouts)::bigint,
           sum(s.d_conn_errors)::bigint,
           sum(s.d_query_errors)::bigint,
           sum(s.d_created)::bigint,
           sum(s.d_recycled)::bigint,
           coalesce(sum(s.d_acquire_ms) / nullif(sum(s.d_acquires), 0), 0),
           count(*),
           max(s.current_size)::bigint
    FROM s GROUP BY s.pool_name
$$;

-- The last hour now comes from reset-aware rises (max - min went wrong after a
-- restart or a rebuild).
DROP VIEW pool_performance_summary;
CREATE VIEW pool_performance_summary AS
SELECT m.*,
       hour.avg_utilization     AS avg_utilization_1h,
       hour.max_utilization     AS max_utilization_1h,
       hour.avg_acquire_time_ms AS avg_acquire_time_ms_1h,
       hour.acquire_timeouts    AS acquire_timeouts_1h,
       hour.connection_errors   AS connection_errors_1h,
       hour.samples             AS samples_1h,
       hour.acquires            AS acquires_1h,
       hour.query_errors        AS query_errors_1h,
       row_number() OVER (PARTITION BY m.pool_name ORDER BY m.recorded_at DESC, m.id DESC) AS rn
FROM connection_pool_metrics m
LEFT JOIN poolplane_metrics_window(now() - interval '1 hour') hour USING (pool_name);

-- Every change of a pool's configuration, whoever made it: UpdatePoolConfig,
-- OptimizePools with apply, automated tuning, and changes the connection budget
-- refused.
CREATE TABLE pool_config_changes (
    id         bigserial   PRIMARY KEY,
    pool_name  text        NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    field      text        NOT NULL,
    old_value  text        NOT NULL,
    new_value  text        NOT NULL,
    reason     text        NOT NULL,
    -- The caller's role (viewer, operator, admin, or "embedded"), or "optimizer".
    source     text        NOT NULL,
    applied    boolean     NOT NULL
);
CREATE INDEX pool_config_changes_pool_time ON pool_config_changes (pool_name, changed_at DESC);
