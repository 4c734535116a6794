-- Metrics history: the seed's five tables and three views. Every row carries the
-- pool's name and the time it describes (recorded_at); each table is indexed on
-- (pool_name, recorded_at DESC) for "latest per pool" and range reads.

-- PoolStats snapshots, one per pool per --metrics-interval.
CREATE TABLE connection_pool_metrics (
    id                   bigserial PRIMARY KEY,
    pool_name            text             NOT NULL,
    recorded_at          timestamptz      NOT NULL,
    connections          integer          NOT NULL,
    idle_connections     integer          NOT NULL,
    active_connections   integer          NOT NULL,
    waiting_requests     integer          NOT NULL,
    current_size         integer          NOT NULL,
    min_connections      integer          NOT NULL,
    max_connections      integer          NOT NULL,
    utilization_rate     double precision NOT NULL,
    avg_acquire_time_ms  double precision NOT NULL,
    p50_acquire_time_ms  double precision NOT NULL,
    p95_acquire_time_ms  double precision NOT NULL,
    p99_acquire_time_ms  double precision NOT NULL,
    -- Counters since the pool started (they restart with the pool).
    total_acquires       bigint           NOT NULL,
    acquire_timeouts     bigint           NOT NULL,
    connection_errors    bigint           NOT NULL,
    connections_created  bigint           NOT NULL,
    connections_closed   bigint           NOT NULL,
    connections_recycled bigint           NOT NULL,
    total_queries        bigint           NOT NULL
);
CREATE INDEX connection_pool_metrics_pool_time
    ON connection_pool_metrics (pool_name, recorded_at DESC);

-- Every health check's result.
CREATE TABLE connection_health_status (
    id                   bigserial PRIMARY KEY,
    pool_name            text             NOT NULL,
    recorded_at          timestamptz      NOT NULL,
    is_healthy           boolean          NOT NULL,
    response_time_ms     double precision NOT NULL,
    consecutive_failures integer          NOT NULL,
    last_check_at        timestamptz,
    last_success_at      timestamptz,
    last_error           text
);
CREATE INDEX connection_health_status_pool_time
    ON connection_health_status (pool_name, recorded_at DESC);

-- StatementCacheStats snapshots, one per pool per --metrics-interval.
CREATE TABLE statement_cache_metrics (
    id                  bigserial PRIMARY KEY,
    pool_name           text             NOT NULL,
    recorded_at         timestamptz      NOT NULL,
    hits                bigint           NOT NULL,
    misses              bigint           NOT NULL,
    hit_rate            double precision NOT NULL,
    evictions           bigint           NOT NULL,
    prepared_statements bigint           NOT NULL,
    capacity            integer          NOT NULL
);
CREATE INDEX statement_cache_metrics_pool_time
    ON statement_cache_metrics (pool_name, recorded_at DESC);

-- Every scaling decision.
CREATE TABLE pool_scaling_events (
    id          bigserial PRIMARY KEY,
    pool_name   text             NOT NULL,
    recorded_at timestamptz      NOT NULL,
    direction   text             NOT NULL CHECK (direction IN ('up', 'down')),
    from_size   integer          NOT NULL,
    to_size     integer          NOT NULL,
    utilization double precision NOT NULL,
    reason      text             NOT NULL
);
CREATE INDEX pool_scaling_events_pool_time
    ON pool_scaling_events (pool_name, recorded_at DESC);

-- Every finished load test.
CREATE TABLE pool_load_test_results (
    id                   bigserial PRIMARY KEY,
    pool_name            text             NOT NULL,
    recorded_at          timestamptz      NOT NULL,
    started_at           timestamptz      NOT NULL,
    duration_ms          bigint           NOT NULL,
    concurrency          integer          NOT NULL,
    query                text             NOT NULL,
    target_rps           double precision,
    total_requests       bigint           NOT NULL,
    successful_requests  bigint           NOT NULL,
    failed_requests      bigint           NOT NULL,
    error_rate           double precision NOT NULL,
    requests_per_second  double precision NOT NULL,
    avg_response_time_ms double precision NOT NULL,
    p50_response_time_ms double precision NOT NULL,
    p95_response_time_ms double precision NOT NULL,
    p99_response_time_ms double precision NOT NULL,
    max_response_time_ms double precision NOT NULL,
    avg_utilization      double precision NOT NULL,
    peak_utilization     double precision NOT NULL,
    grade                text             NOT NULL CHECK (grade IN ('A', 'B', 'C', 'D', 'F'))
);
CREATE INDEX pool_load_test_results_pool_time
    ON pool_load_test_results (pool_name, recorded_at DESC);

-- Health checks, newest first per pool: WHERE rn = 1 is each pool's current health.
CREATE VIEW pool_health_summary AS
SELECT h.*,
       row_number() OVER (PARTITION BY h.pool_name ORDER BY h.recorded_at DESC, h.id DESC) AS rn
FROM connection_health_status h;

-- Pool metrics, newest first per pool, with the last hour's aggregates:
-- WHERE rn = 1 is each pool's current performance.
CREATE VIEW pool_performance_summary AS
SELECT m.*,
       hour.avg_utilization_1h,
       hour.max_utilization_1h,
       hour.avg_acquire_time_ms_1h,
       hour.acquire_timeouts_1h,
       hour.connection_errors_1h,
       hour.samples_1h,
       row_number() OVER (PARTITION BY m.pool_name ORDER BY m.recorded_at DESC, m.id DESC) AS rn
FROM connection_pool_metrics m
LEFT JOIN (
    -- Counters are cumulative: the hour's count is the rise over the hour (a pool
    -- restarted within the hour counts from its restart).
    SELECT pool_name,
           avg(utilization_rate)                      AS avg_utilization_1h,
           max(utilization_rate)                      AS max_utilization_1h,
           avg(avg_acquire_time_ms)                   AS avg_acquire_time_ms_1h,
           max(acquire_timeouts) - min(acquire_timeouts)   AS acquire_timeouts_1h,
           max(connection_errors) - min(connection_errors) AS connection_errors_1h,
           count(*)                                   AS samples_1h
    FROM connection_pool_metrics
    WHERE recorded_at > now() - interval '1 hour'
    GROUP BY pool_name
) hour USING (pool_name);

-- Statement cache metrics, newest first per pool.
CREATE VIEW statement_cache_performance AS
SELECT c.*,
       row_number() OVER (PARTITION BY c.pool_name ORDER BY c.recorded_at DESC, c.id DESC) AS rn
FROM statement_cache_metrics c;
