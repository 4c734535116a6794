//! What poolctl prints: human tables by default, or one stable JSON document per
//! answer (one per line for streams) with `--output json`.

use std::io::{IsTerminal, Write};

use poolplane_client::proto::{
    ConfigChangeRecord, ConfigWarning, Grade, HealthStatus, LoadTestProgress, LoadTestResult,
    MetricsPoint, OptimizationReport, Pool, PoolConfig, PoolEvent, PoolState, PoolStats,
    pool_event::Kind,
};
use serde_json::{Value, json};

/// Table or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human tables.
    Table,
    /// Stable JSON.
    Json,
}

/// Prints answers in the chosen format.
#[derive(Debug)]
pub struct Printer {
    format: Format,
}

fn datetime(ts: &prost_types::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0))
}

/// A time for JSON: RFC 3339 in UTC (`2026-11-28T21:03:02.123Z`), or null.
fn time(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.and_then(datetime).map_or(Value::Null, |t| {
        json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    })
}

/// A time for a table: RFC 3339 in local time, to the second, or `-`.
fn local_time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(datetime).map_or_else(
        || "-".to_owned(),
        |t| {
            t.with_timezone(&chrono::Local)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
        },
    )
}

/// `text` safe for a terminal: control characters (escape sequences, carriage
/// returns, C1 controls) removed, tabs and newlines turned into spaces.
pub fn clean(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' | '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let kept: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

/// A cell as text: PostgreSQL's text forms, `NULL` for null.
fn cell_text(value: &poolplane_client::proto::Value) -> String {
    use poolplane_client::proto::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => "NULL".to_owned(),
        Some(Kind::BoolValue(b)) => if *b { "t" } else { "f" }.to_owned(),
        Some(Kind::IntValue(i)) => i.to_string(),
        Some(Kind::DoubleValue(f)) => f.to_string(),
        Some(
            Kind::StringValue(s)
            | Kind::NumericValue(s)
            | Kind::JsonValue(s)
            | Kind::UuidValue(s)
            | Kind::DateValue(s)
            | Kind::TimeValue(s)
            | Kind::IntervalValue(s),
        ) => s.clone(),
        Some(Kind::BytesValue(b)) => {
            format!(
                "\\x{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )
        }
        Some(Kind::TimestampValue(t)) => match time(Some(t)) {
            Value::String(s) => s,
            _ => "-".to_owned(),
        },
        Some(Kind::ArrayValue(list)) => format!(
            "{{{}}}",
            list.values
                .iter()
                .map(cell_text)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// A cell as JSON: numbers and booleans as such, the rest as strings (json
/// cells as their JSON), arrays as arrays.
fn cell_json(value: &poolplane_client::proto::Value) -> Value {
    use poolplane_client::proto::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::IntValue(i)) => json!(i),
        Some(Kind::DoubleValue(f)) => json!(f),
        Some(Kind::JsonValue(s)) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
        Some(Kind::ArrayValue(list)) => Value::Array(list.values.iter().map(cell_json).collect()),
        Some(_) => json!(cell_text(value)),
    }
}

/// `println!` for tables: what the server supplied is printed [`clean`].
macro_rules! say {
    ($($arg:tt)*) => { println!("{}", clean(&format!($($arg)*))) };
}

fn config_json(c: &PoolConfig) -> Value {
    json!({
        "max_connections": c.max_connections,
        "min_connections": c.min_connections,
        "acquire_timeout_secs": c.acquire_timeout_secs,
        "idle_timeout_secs": c.idle_timeout_secs,
        "max_lifetime_secs": c.max_lifetime_secs,
        "statement_cache_capacity": c.statement_cache_capacity,
        "enable_prepared_statements": c.enable_prepared_statements,
        "health_check_interval_secs": c.health_check_interval_secs,
        "health_check_timeout_secs": c.health_check_timeout_secs,
        "max_failed_health_checks": c.max_failed_health_checks,
        "enable_dynamic_sizing": c.enable_dynamic_sizing,
        "load_threshold_high": c.load_threshold_high,
        "load_threshold_low": c.load_threshold_low,
        "scale_up_factor": c.scale_up_factor,
        "scale_down_factor": c.scale_down_factor,
        "min_scale_interval_secs": c.min_scale_interval_secs,
        "enable_connection_validation": c.enable_connection_validation,
        "validation_query": c.validation_query,
        "connection_warmup_queries": c.connection_warmup_queries.as_ref().map(|w| &w.queries),
        "enable_connection_recycling": c.enable_connection_recycling,
        "recycle_threshold_queries": c.recycle_threshold_queries,
        "pool_mode": c.pool_mode,
        "max_client_connections": c.max_client_connections,
        "client_idle_timeout_secs": c.client_idle_timeout_secs,
        "idle_in_transaction_timeout_secs": c.idle_in_transaction_timeout_secs,
        "query_timeout_secs": c.query_timeout_secs,
        "session_state": c.session_state,
        "validation_idle_threshold_ms": c.validation_idle_threshold_ms,
    })
}

fn state(p: &Pool) -> &'static str {
    match PoolState::try_from(p.state) {
        Ok(PoolState::Healthy) => "healthy",
        Ok(PoolState::Unhealthy) => "unhealthy",
        _ => "unknown",
    }
}

fn pool_json(p: &Pool) -> Value {
    json!({
        "name": p.name,
        "database_url": p.database_url,
        "state": state(p),
        "created_at": time(p.created_at.as_ref()),
        "updated_at": time(p.updated_at.as_ref()),
        "config": p.config.as_ref().map(config_json),
    })
}

fn stats_json(s: &PoolStats) -> Value {
    json!({
        "pool_name": s.pool_name,
        "connections": s.connections,
        "idle_connections": s.idle_connections,
        "active_connections": s.active_connections,
        "waiting_requests": s.waiting_requests,
        "current_size": s.current_size,
        "min_connections": s.min_connections,
        "max_connections": s.max_connections,
        "utilization_rate": s.utilization_rate,
        "avg_acquire_time_ms": s.avg_acquire_time_ms,
        "p50_acquire_time_ms": s.p50_acquire_time_ms,
        "p95_acquire_time_ms": s.p95_acquire_time_ms,
        "p99_acquire_time_ms": s.p99_acquire_time_ms,
        "total_acquires": s.total_acquires,
        "acquire_timeouts": s.acquire_timeouts,
        "connection_errors": s.connection_errors,
        "connections_created": s.connections_created,
        "connections_closed": s.connections_closed,
        "connections_recycled": s.connections_recycled,
        "total_queries": s.total_queries,
        "query_errors": s.query_errors,
        "wire": json!({
            "clients_connected": s.wire_clients_connected,
            "clients_waiting": s.wire_clients_waiting,
            "clients_pinned": s.wire_clients_pinned,
            "transactions": s.wire_transactions,
            "queries": s.wire_queries,
            "bytes_in": s.wire_bytes_in,
            "bytes_out": s.wire_bytes_out,
        }),
        "security": s.security.as_ref().map(|sec| json!({
            "tls_connections": sec.tls_connections,
            "plaintext_connections": sec.plaintext_connections,
            "tls_version": sec.tls_version,
            "tls_cipher": sec.tls_cipher,
            "hosts": sec.hosts.iter().map(|h| json!({"host": h.host, "connections": h.connections})).collect::<Vec<_>>(),
        })),
        "budget": s.budget.as_ref().map(|b| json!({
            "server": b.server,
            "limit": b.limit,
            "in_use": b.in_use,
            "pools": b.pools,
            "share": b.share,
            "held_back": b.held_back,
        })),
    })
}

/// `12/22` (the pool's share of its server's budget), `*` when the budget held
/// it back, `-` without one.
fn budget_summary(s: &PoolStats) -> String {
    match &s.budget {
        Some(b) if b.limit > 0 => {
            format!(
                "{}/{}{}",
                b.share,
                b.limit,
                if b.held_back { "*" } else { "" }
            )
        }
        _ => "-".to_owned(),
    }
}

/// `TLSv1.3 TLS_AES_256_GCM_SHA384 (3/3)`, `plaintext`, or `-` with no connection.
fn tls_summary(s: &PoolStats) -> String {
    match &s.security {
        Some(sec) if sec.tls_connections > 0 => format!(
            "{} {} ({}/{})",
            sec.tls_version,
            sec.tls_cipher,
            sec.tls_connections,
            sec.tls_connections + sec.plaintext_connections
        ),
        Some(sec) if sec.plaintext_connections > 0 => "plaintext".to_owned(),
        _ => "-".to_owned(),
    }
}

fn health_json(h: &HealthStatus) -> Value {
    json!({
        "pool_name": h.pool_name,
        "is_healthy": h.is_healthy,
        "response_time_ms": h.response_time_ms,
        "consecutive_failures": h.consecutive_failures,
        "last_check_at": time(h.last_check_at.as_ref()),
        "last_success_at": time(h.last_success_at.as_ref()),
        "last_error": (!h.last_error.is_empty()).then_some(&h.last_error),
    })
}

fn grade(g: i32) -> &'static str {
    match Grade::try_from(g) {
        Ok(Grade::A) => "A",
        Ok(Grade::B) => "B",
        Ok(Grade::C) => "C",
        Ok(Grade::D) => "D",
        Ok(Grade::F) => "F",
        _ => "?",
    }
}

fn event_text(e: &PoolEvent) -> (String, Value) {
    let (kind, detail) = match &e.kind {
        Some(Kind::CurrentHealth(h)) => ("current_health", health_json(h)),
        Some(Kind::HealthCheckFailed(f)) => (
            "health_check_failed",
            json!({"consecutive_failures": f.consecutive_failures, "error": f.error}),
        ),
        Some(Kind::BecameUnhealthy(u)) => (
            "became_unhealthy",
            json!({"consecutive_failures": u.consecutive_failures, "error": u.error}),
        ),
        Some(Kind::Recovered(r)) => ("recovered", json!({"response_time_ms": r.response_time_ms})),
        Some(Kind::Scaled(s)) => (
            "scaled",
            json!({"from": s.from, "to": s.to, "utilization": s.utilization, "reason": s.reason}),
        ),
        Some(Kind::ConnectionRecycled(c)) => ("connection_recycled", json!({"queries": c.queries})),
        Some(Kind::PoolCreated(_)) => ("pool_created", json!({})),
        Some(Kind::PoolUpdated(u)) => ("pool_updated", json!({"rebuilt": u.rebuilt})),
        Some(Kind::PoolDeleted(_)) => ("pool_deleted", json!({})),
        Some(Kind::MissedEvents(m)) => ("missed_events", json!({"count": m.count})),
        Some(Kind::ConfigChanged(c)) => (
            "config_changed",
            json!({
                "changes": c.changes.iter().map(|f| json!({
                    "field": f.field, "old_value": f.old_value, "new_value": f.new_value,
                })).collect::<Vec<_>>(),
                "source": c.source,
                "reason": c.reason,
                "applied": c.applied,
            }),
        ),
        None => ("unknown", json!({})),
    };
    (kind.to_owned(), detail)
}

impl Printer {
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    fn json(&self, value: &Value) {
        println!("{value}");
    }

    pub fn done(&self, message: &str) {
        match self.format {
            Format::Json => self.json(&json!({"ok": true, "message": message})),
            Format::Table => say!("{message}"),
        }
    }

    pub fn replicas(&self, all: &[poolplane_client::proto::Replica]) {
        match self.format {
            Format::Json => {
                for r in all {
                    self.json(&json!({
                        "id": r.id,
                        "grpc_address": r.grpc_address,
                        "pg_address": r.pg_address,
                        "started_at": time(r.started_at.as_ref()),
                        "heartbeat_at": time(r.heartbeat_at.as_ref()),
                        "alive": r.alive,
                        "leader": r.leader,
                        "pools": r.pools,
                        "lease_ms": r.lease_ms,
                        "allocated": r.allocated,
                        "this_replica": r.this_replica,
                    }));
                }
            }
            Format::Table => {
                say!(
                    "{:<20} {:<22} {:<22} {:<6} {:<7} {:>6} {:>9}  HEARTBEAT",
                    "ID",
                    "GRPC",
                    "FRONT DOOR",
                    "ALIVE",
                    "LEADER",
                    "POOLS",
                    "ALLOCATED"
                );
                for r in all {
                    say!(
                        "{:<20} {:<22} {:<22} {:<6} {:<7} {:>6} {:>9}  {}",
                        format!("{}{}", clean(&r.id), if r.this_replica { " *" } else { "" }),
                        clean(&r.grpc_address),
                        clean(&r.pg_address),
                        if r.alive { "yes" } else { "GONE" },
                        if r.leader { "leader" } else { "" },
                        r.pools,
                        r.allocated,
                        local_time(r.heartbeat_at.as_ref())
                    );
                }
            }
        }
    }

    pub fn clients(&self, all: &[poolplane_client::proto::WireClient]) {
        match self.format {
            Format::Json => {
                for c in all {
                    self.json(&json!({
                        "id": c.id,
                        "pool_name": c.pool_name,
                        "user": c.user,
                        "application_name": c.application_name,
                        "address": c.address,
                        "tls": c.tls,
                        "state": c.state,
                        "connected_at": time(c.connected_at.as_ref()),
                        "transactions": c.transactions,
                        "queries": c.queries,
                        "bytes_in": c.bytes_in,
                        "bytes_out": c.bytes_out,
                    }));
                }
            }
            Format::Table => {
                say!(
                    "{:>6} {:<16} {:<16} {:<16} {:<22} {:<8} {:>10} {:>10}",
                    "ID",
                    "POOL",
                    "USER",
                    "APPLICATION",
                    "ADDRESS",
                    "STATE",
                    "XACTS",
                    "QUERIES"
                );
                for c in all {
                    say!(
                        "{:>6} {:<16} {:<16} {:<16} {:<22} {:<8} {:>10} {:>10}",
                        c.id,
                        c.pool_name,
                        c.user,
                        c.application_name,
                        format!("{}{}", c.address, if c.tls { " tls" } else { "" }),
                        c.state,
                        c.transactions,
                        c.queries
                    );
                }
            }
        }
    }

    pub fn pool(&self, p: &Pool) {
        match self.format {
            Format::Json => self.json(&pool_json(p)),
            Format::Table => {
                say!("name:      {}", p.name);
                say!("database:  {}", p.database_url);
                say!("state:     {}", state(p));
                if let Some(c) = &p.config {
                    say!(
                        "size:      min {} / max {}",
                        c.min_connections.unwrap_or(0),
                        c.max_connections.unwrap_or(0)
                    );
                    say!(
                        "config:    {}",
                        serde_json::to_string(&config_json(c)).unwrap_or_default()
                    );
                }
            }
        }
    }

    pub fn pools(&self, pools: &[Pool]) {
        match self.format {
            Format::Json => self.json(&Value::Array(pools.iter().map(pool_json).collect())),
            Format::Table => {
                say!(
                    "{:<20} {:<10} {:>5} {:>5}  DATABASE",
                    "NAME",
                    "STATE",
                    "MIN",
                    "MAX"
                );
                for p in pools {
                    let c = p.config.clone().unwrap_or_default();
                    say!(
                        "{:<20} {:<10} {:>5} {:>5}  {}",
                        p.name,
                        state(p),
                        c.min_connections.unwrap_or(0),
                        c.max_connections.unwrap_or(0),
                        p.database_url
                    );
                }
            }
        }
    }

    pub fn stats(&self, all: &[PoolStats]) {
        match self.format {
            Format::Json => {
                for s in all {
                    self.json(&stats_json(s));
                }
            }
            Format::Table => {
                say!(
                    "{:<20} {:>6} {:>5} {:>5} {:>5} {:>5} {:>6} {:>8} {:>9} {:>9} {:>8} {:>8} {:>10}  TLS",
                    "POOL",
                    "UTIL",
                    "USED",
                    "IDLE",
                    "WAIT",
                    "SIZE",
                    "MAX",
                    "SHARE",
                    "P95 ms",
                    "TIMEOUTS",
                    "CLIENTS",
                    "CL_WAIT",
                    "WIRE_TX"
                );
                for s in all {
                    say!(
                        "{:<20} {:>5.0}% {:>5} {:>5} {:>5} {:>5} {:>6} {:>8} {:>9.2} {:>9} {:>8} {:>8} {:>10}  {}",
                        s.pool_name,
                        s.utilization_rate * 100.0,
                        s.active_connections,
                        s.idle_connections,
                        s.waiting_requests,
                        s.current_size,
                        s.max_connections,
                        budget_summary(s),
                        s.p95_acquire_time_ms,
                        s.acquire_timeouts,
                        s.wire_clients_connected,
                        s.wire_clients_waiting,
                        s.wire_transactions,
                        tls_summary(s)
                    );
                }
            }
        }
    }

    pub fn health(&self, all: &[HealthStatus]) {
        match self.format {
            Format::Json => {
                for h in all {
                    self.json(&health_json(h));
                }
            }
            Format::Table => {
                say!(
                    "{:<20} {:<10} {:>10} {:>9}  LAST ERROR",
                    "POOL",
                    "HEALTH",
                    "RESP ms",
                    "FAILURES"
                );
                for h in all {
                    say!(
                        "{:<20} {:<10} {:>10.2} {:>9}  {}",
                        h.pool_name,
                        if h.is_healthy { "healthy" } else { "UNHEALTHY" },
                        h.response_time_ms,
                        h.consecutive_failures,
                        h.last_error
                    );
                }
            }
        }
    }

    pub fn event(&self, e: &PoolEvent) {
        let (kind, detail) = event_text(e);
        match self.format {
            Format::Json => self.json(&json!({
                "pool_name": e.pool_name, "at": time(e.at.as_ref()), "kind": kind, "detail": detail
            })),
            Format::Table => say!("{:<20} {:<20} {}", e.pool_name, kind, detail),
        }
    }

    pub fn progress(&self, p: &LoadTestProgress, duration_secs: u32) {
        if self.format == Format::Json || !std::io::stderr().is_terminal() {
            if self.format == Format::Table {
                eprintln!(
                    "{:>5.1}s  {:>8} requests  {:>8.0} req/s  {} errors  p95 {:.2} ms  util {:.0}%",
                    p.elapsed_secs,
                    p.requests,
                    p.current_rps,
                    p.errors,
                    p.p95_ms,
                    p.utilization * 100.0
                );
            }
            return;
        }
        let width: u32 = 30;
        let done = ((p.elapsed_secs / f64::from(duration_secs.max(1))) * f64::from(width)).round()
            as usize;
        let bar: String = (0..width as usize)
            .map(|i| if i < done { '#' } else { '-' })
            .collect();
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r[{bar}] {:>4.0}/{duration_secs}s  {:>8.0} req/s  errors {}  p95 {:.2} ms ",
            p.elapsed_secs, p.current_rps, p.errors, p.p95_ms
        );
        let _ = err.flush();
    }

    pub fn end_progress(&self) {
        if self.format == Format::Table && std::io::stderr().is_terminal() {
            eprintln!();
        }
    }

    pub fn load_test(&self, r: &LoadTestResult) {
        match self.format {
            Format::Json => self.json(&json!({
                "pool_name": r.pool_name,
                "grade": grade(r.grade),
                "concurrency": r.concurrency,
                "query": r.query,
                "target_rps": r.target_rps,
                "total_requests": r.total_requests,
                "successful_requests": r.successful_requests,
                "failed_requests": r.failed_requests,
                "error_rate": r.error_rate,
                "requests_per_second": r.requests_per_second,
                "avg_response_time_ms": r.avg_response_time_ms,
                "p50_response_time_ms": r.p50_response_time_ms,
                "p95_response_time_ms": r.p95_response_time_ms,
                "p99_response_time_ms": r.p99_response_time_ms,
                "max_response_time_ms": r.max_response_time_ms,
                "avg_utilization": r.avg_utilization,
                "peak_utilization": r.peak_utilization,
                "capacity": r.capacity,
                "started_at": time(r.started_at.as_ref()),
                "duration_secs": r.duration_secs,
            })),
            Format::Table => {
                say!("Grade: {}", grade(r.grade));
                say!("Total requests: {}", r.total_requests);
                say!("Error rate: {:.2}%", r.error_rate * 100.0);
                say!("Requests per second: {:.0}", r.requests_per_second);
                say!(
                    "Response time ms: avg {:.2}  p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
                    r.avg_response_time_ms,
                    r.p50_response_time_ms,
                    r.p95_response_time_ms,
                    r.p99_response_time_ms,
                    r.max_response_time_ms
                );
                say!(
                    "Utilization of the capacity the pool may use ({} connections): avg {:.0}% \
                     (graded)  peak {:.0}%",
                    r.capacity,
                    r.avg_utilization * 100.0,
                    r.peak_utilization * 100.0
                );
            }
        }
    }

    pub fn report(&self, r: &OptimizationReport) {
        match self.format {
            Format::Json => self.json(&json!({
                "total_pools": r.total_pools,
                "optimized_pools": r.optimized_pools,
                "optimizations": r.optimizations.iter().map(|o| json!({
                    "pool_name": o.pool_name,
                    "current_utilization": o.current_utilization,
                    "applied_changes": o.applied_changes,
                    "recommendations": o.recommendations.iter().map(|rec| json!({
                        "parameter": rec.parameter,
                        "current_value": rec.current_value,
                        "suggested_value": rec.suggested_value,
                        "reason": rec.reason,
                        "severity": rec.severity,
                        "sentence": rec.sentence,
                        "applicable": rec.applicable,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })),
            Format::Table => {
                say!("Optimized {}/{} pools", r.optimized_pools, r.total_pools);
                for o in &r.optimizations {
                    say!(
                        "Pool '{}': {:.2}% utilization",
                        o.pool_name,
                        o.current_utilization * 100.0
                    );
                    for rec in &o.recommendations {
                        say!(
                            "  - {} ({} -> {}): {}",
                            rec.sentence,
                            rec.current_value,
                            rec.suggested_value,
                            rec.reason
                        );
                    }
                    for change in &o.applied_changes {
                        say!("  applied: {change}");
                    }
                }
            }
        }
    }

    /// A query's rows: a table with a header and a row count, or one JSON object
    /// per row.
    pub fn query(&self, r: &poolplane_client::proto::QueryResponse) {
        match self.format {
            Format::Json => {
                for row in &r.rows {
                    let object: serde_json::Map<String, Value> = r
                        .columns
                        .iter()
                        .zip(&row.values)
                        .map(|(c, v)| (c.name.clone(), cell_json(v)))
                        .collect();
                    self.json(&Value::Object(object));
                }
            }
            Format::Table => {
                let cells: Vec<Vec<String>> = r
                    .rows
                    .iter()
                    .map(|row| row.values.iter().map(cell_text).collect())
                    .collect();
                let widths: Vec<usize> = r
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        cells
                            .iter()
                            .map(|row| row.get(i).map_or(0, |s| s.chars().count()))
                            .chain([c.name.chars().count()])
                            .max()
                            .unwrap_or(0)
                            .min(60)
                    })
                    .collect();
                let line = |values: Vec<&str>| {
                    values
                        .iter()
                        .zip(&widths)
                        .map(|(v, w)| format!("{:<w$}", truncate(v, *w), w = *w))
                        .collect::<Vec<_>>()
                        .join(" | ")
                };
                say!(
                    "{}",
                    line(r.columns.iter().map(|c| c.name.as_str()).collect())
                );
                say!(
                    "{}",
                    widths
                        .iter()
                        .map(|w| "-".repeat(*w))
                        .collect::<Vec<_>>()
                        .join("-+-")
                );
                for row in &cells {
                    say!("{}", line(row.iter().map(String::as_str).collect()));
                }
                say!(
                    "({} row{}{})",
                    r.rows.len(),
                    if r.rows.len() == 1 { "" } else { "s" },
                    if r.truncated {
                        ", truncated: raise --max-rows"
                    } else {
                        ""
                    }
                );
            }
        }
    }

    /// Config values outside the recommended ranges, on stderr (stdout stays the
    /// pool, JSON included).
    pub fn warnings(&self, warnings: &[ConfigWarning]) {
        for w in warnings {
            eprintln!("warning: {}: {}", clean(&w.field), clean(&w.description));
        }
    }

    pub fn changes(&self, changes: &[ConfigChangeRecord]) {
        match self.format {
            Format::Json => {
                for c in changes {
                    let field = c.change.as_ref();
                    self.json(&json!({
                        "pool_name": c.pool_name,
                        "changed_at": time(c.changed_at.as_ref()),
                        "field": field.map(|f| f.field.as_str()),
                        "old_value": field.map(|f| f.old_value.as_str()),
                        "new_value": field.map(|f| f.new_value.as_str()),
                        "source": c.source,
                        "reason": c.reason,
                        "applied": c.applied,
                    }));
                }
            }
            Format::Table => {
                say!(
                    "{:<25} {:<26} {:>10} {:>10} {:<10} {:<8}  REASON",
                    "AT",
                    "FIELD",
                    "OLD",
                    "NEW",
                    "SOURCE",
                    "APPLIED"
                );
                for c in changes {
                    let field = c.change.clone().unwrap_or_default();
                    say!(
                        "{:<25} {:<26} {:>10} {:>10} {:<10} {:<8}  {}",
                        local_time(c.changed_at.as_ref()),
                        field.field,
                        field.old_value,
                        field.new_value,
                        c.source,
                        if c.applied { "yes" } else { "REFUSED" },
                        c.reason
                    );
                }
            }
        }
    }

    pub fn history(&self, points: &[MetricsPoint]) {
        match self.format {
            Format::Json => self.json(&Value::Array(
                points
                    .iter()
                    .map(|p| {
                        json!({
                            "at": time(p.at.as_ref()),
                            "samples": p.samples,
                            "avg_utilization": p.avg_utilization,
                            "max_utilization": p.max_utilization,
                            "avg_acquire_time_ms": p.avg_acquire_time_ms,
                            "max_p95_acquire_time_ms": p.max_p95_acquire_time_ms,
                            "avg_connections": p.avg_connections,
                            "max_waiting_requests": p.max_waiting_requests,
                            "queries": p.queries,
                        })
                    })
                    .collect(),
            )),
            Format::Table => {
                say!(
                    "{:<25} {:>8} {:>8} {:>8} {:>10} {:>10}",
                    "AT",
                    "SAMPLES",
                    "UTIL",
                    "PEAK",
                    "ACQ ms",
                    "QUERIES"
                );
                for p in points {
                    say!(
                        "{:<25} {:>8} {:>7.0}% {:>7.0}% {:>10.2} {:>10}",
                        local_time(p.at.as_ref()),
                        p.samples,
                        p.avg_utilization * 100.0,
                        p.max_utilization * 100.0,
                        p.avg_acquire_time_ms,
                        p.queries
                    );
                }
            }
        }
    }
}
