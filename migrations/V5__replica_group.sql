-- Several replicas share one control database: each definition carries a
-- version, every change of one is announced on a channel, and each replica
-- records itself with a heartbeat.

-- Bumped by every change of a definition's config: replicas compare it to what
-- they run, and an update states the version it changes (so that of two
-- concurrent updates one wins and the other is told).
ALTER TABLE pool_definitions ADD COLUMN version bigint NOT NULL DEFAULT 1;

-- Every insert, update and delete of a definition is announced (at commit) on
-- the channel poolplane_definitions, with the pool's name as the payload.
CREATE FUNCTION poolplane_announce_definition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('poolplane_definitions', coalesce(NEW.name, OLD.name));
    RETURN NULL;
END
$$;

CREATE TRIGGER pool_definitions_announce
    AFTER INSERT OR UPDATE OR DELETE ON pool_definitions
    FOR EACH ROW EXECUTE FUNCTION poolplane_announce_definition();

-- The replicas of the group: one row each, its heartbeat renewed while it
-- runs. A replica whose heartbeat is older than its lease is gone.
CREATE TABLE replicas (
    id             text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    grpc_address   text        NOT NULL,
    pg_address     text,
    started_at     timestamptz NOT NULL,
    heartbeat_at   timestamptz NOT NULL,
    lease_ms       bigint      NOT NULL,
    -- Whether it leads the group's singleton jobs (retention, automated tuning).
    leader         boolean     NOT NULL DEFAULT false,
    pools          integer     NOT NULL DEFAULT 0
);

-- Each replica records the history of the pools it serves: its rows carry its
-- id, and a cumulative counter's rises are taken per replica (interleaved,
-- two replicas' counters would look like resets), then summed for the pool.
ALTER TABLE connection_pool_metrics ADD COLUMN replica text NOT NULL DEFAULT '';

CREATE OR REPLACE FUNCTION poolplane_metrics_window(since timestamptz, pool text DEFAULT NULL)
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
        WINDOW w AS (PARTITION BY m.pool_name, m.replica ORDER BY m.recorded_at, m.id)
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

-- Each server's connection budget split among the live replicas: one row per
-- (server, replica), changed only under a transaction-level advisory lock of
-- the server, so that the allocations of a server never sum above its budget.
CREATE TABLE budget_allocations (
    server     text        NOT NULL,
    replica    text        NOT NULL,
    allocation integer     NOT NULL CHECK (allocation >= 0),
    -- Connections checked out plus checkouts waiting, in this replica's pools there.
    demand     integer     NOT NULL,
    -- The sum of this replica's pools' min_connections there.
    min_total  integer     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server, replica)
);

-- Each replica's latest stats of each pool it serves (JSON), renewed with its
-- heartbeat: what GetPoolStats answers for the whole group on request.
CREATE TABLE replica_pool_stats (
    replica    text        NOT NULL,
    pool_name  text        NOT NULL,
    stats      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (replica, pool_name)
);
