//! Pool counters, a lock-free latency histogram, and the `PoolStats` and
//! `StatementCacheStats` snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point-in-time view of a pool (`get_pool_stats()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Open connections (idle + in use).
    pub connections: u32,
    /// Open connections not checked out.
    pub idle_connections: u32,
    /// Connections checked out by callers.
    pub active_connections: u32,
    /// Callers waiting for a connection.
    pub waiting_requests: u32,
    /// The pool's current size (the admission limit dynamic sizing moves).
    pub current_size: u32,
    /// The configured floor.
    pub min_connections: u32,
    /// The configured ceiling.
    pub max_connections: u32,
    /// active_connections / current_size.
    pub utilization_rate: f64,
    /// Mean time `get()` took, in ms.
    pub avg_acquire_time_ms: f64,
    /// Median acquire time, in ms.
    pub p50_acquire_time_ms: f64,
    /// 95th percentile acquire time, in ms.
    pub p95_acquire_time_ms: f64,
    /// 99th percentile acquire time, in ms.
    pub p99_acquire_time_ms: f64,
    /// Successful `get()` calls.
    pub total_acquires: u64,
    /// `get()` calls that timed out.
    pub acquire_timeouts: u64,
    /// Failed attempts to open a connection.
    pub connection_errors: u64,
    /// Connections opened.
    pub connections_created: u64,
    /// Connections closed (any reason).
    pub connections_closed: u64,
    /// Connections closed because they reached recycle_threshold_queries.
    pub connections_recycled: u64,
    /// Queries run through the pool.
    pub total_queries: u64,
    /// Statements that failed (PostgreSQL errors, broken connections).
    pub query_errors: u64,
    /// How the open connections are secured and where they are.
    pub security: ConnectionSecurity,
    /// The pool's part of its server's connection budget (pools of a registry).
    pub budget: Option<super::BudgetStats>,
    /// Its clients on the wire front door.
    pub wire: super::WireStats,
}

/// How a pool's open connections are secured, and which host each is on (read
/// from the server's pg_stat_ssl when each connection opens).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSecurity {
    /// Open connections using TLS.
    pub tls_connections: u32,
    /// Open connections in plaintext.
    pub plaintext_connections: u32,
    /// The TLS protocol version of the newest TLS connection (e.g. `TLSv1.3`).
    pub tls_version: String,
    /// Its cipher suite.
    pub tls_cipher: String,
    /// Open connections per server (`address:port`, or `socket` for a Unix socket).
    pub hosts: std::collections::BTreeMap<String, u32>,
}

/// Connections in use over the pool's size (0 for a pool of size 0).
pub(crate) fn utilization(active: u32, size: u32) -> f64 {
    if size == 0 {
        0.0
    } else {
        f64::from(active) / f64::from(size)
    }
}

impl PoolStats {
    /// One pool's stats over several replicas of a group: connections,
    /// clients and counters summed; utilization over the summed size; the
    /// mean acquire time weighted by acquires, the percentiles the highest
    /// replica's (an upper bound); min and max per replica, as configured.
    pub fn combine(all: &[PoolStats]) -> PoolStats {
        let Some(first) = all.first() else {
            return PoolStats::empty();
        };
        let sum32 = |f: fn(&PoolStats) -> u32| all.iter().map(f).sum::<u32>();
        let sum64 = |f: fn(&PoolStats) -> u64| all.iter().map(f).sum::<u64>();
        let max = |f: fn(&PoolStats) -> f64| all.iter().map(f).fold(0.0, f64::max);
        let (active, size) = (sum32(|s| s.active_connections), sum32(|s| s.current_size));
        let acquires = sum64(|s| s.total_acquires);
        let weighted: f64 = all
            .iter()
            .map(|s| s.avg_acquire_time_ms * s.total_acquires as f64)
            .sum();
        let mut security = ConnectionSecurity::default();
        let mut wire = super::WireStats::default();
        for s in all {
            security.tls_connections += s.security.tls_connections;
            security.plaintext_connections += s.security.plaintext_connections;
            if !s.security.tls_version.is_empty() {
                security.tls_version.clone_from(&s.security.tls_version);
                security.tls_cipher.clone_from(&s.security.tls_cipher);
            }
            for (host, n) in &s.security.hosts {
                *security.hosts.entry(host.clone()).or_default() += n;
            }
            wire.add(&s.wire);
        }
        PoolStats {
            connections: sum32(|s| s.connections),
            idle_connections: sum32(|s| s.idle_connections),
            active_connections: active,
            waiting_requests: sum32(|s| s.waiting_requests),
            current_size: size,
            min_connections: first.min_connections,
            max_connections: first.max_connections,
            utilization_rate: utilization(active, size),
            avg_acquire_time_ms: if acquires == 0 {
                0.0
            } else {
                weighted / acquires as f64
            },
            p50_acquire_time_ms: max(|s| s.p50_acquire_time_ms),
            p95_acquire_time_ms: max(|s| s.p95_acquire_time_ms),
            p99_acquire_time_ms: max(|s| s.p99_acquire_time_ms),
            total_acquires: acquires,
            acquire_timeouts: sum64(|s| s.acquire_timeouts),
            connection_errors: sum64(|s| s.connection_errors),
            connections_created: sum64(|s| s.connections_created),
            connections_closed: sum64(|s| s.connections_closed),
            connections_recycled: sum64(|s| s.connections_recycled),
            total_queries: sum64(|s| s.total_queries),
            query_errors: sum64(|s| s.query_errors),
            security,
            budget: None,
            wire,
        }
    }

    fn empty() -> PoolStats {
        PoolStats {
            connections: 0,
            idle_connections: 0,
            active_connections: 0,
            waiting_requests: 0,
            current_size: 0,
            min_connections: 0,
            max_connections: 0,
            utilization_rate: 0.0,
            avg_acquire_time_ms: 0.0,
            p50_acquire_time_ms: 0.0,
            p95_acquire_time_ms: 0.0,
            p99_acquire_time_ms: 0.0,
            total_acquires: 0,
            acquire_timeouts: 0,
            connection_errors: 0,
            connections_created: 0,
            connections_closed: 0,
            connections_recycled: 0,
            total_queries: 0,
            query_errors: 0,
            security: ConnectionSecurity::default(),
            budget: None,
            wire: super::WireStats::default(),
        }
    }
}

/// One connection's side of [`ConnectionSecurity`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConnSecurity {
    pub tls: Option<(String, String)>,
    pub host: String,
}

impl ConnectionSecurity {
    pub(crate) fn add(&mut self, conn: &ConnSecurity) {
        match &conn.tls {
            Some((version, cipher)) => {
                self.tls_connections += 1;
                self.tls_version.clone_from(version);
                self.tls_cipher.clone_from(cipher);
            }
            None => self.plaintext_connections += 1,
        }
        *self.hosts.entry(conn.host.clone()).or_default() += 1;
    }

    pub(crate) fn remove(&mut self, conn: &ConnSecurity) {
        match conn.tls {
            Some(_) => self.tls_connections = self.tls_connections.saturating_sub(1),
            None => self.plaintext_connections = self.plaintext_connections.saturating_sub(1),
        }
        if let Some(count) = self.hosts.get_mut(&conn.host) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.hosts.remove(&conn.host);
            }
        }
    }
}

/// The statement cache's counters, summed over the pool's connections.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatementCacheStats {
    /// Lookups that found a prepared statement.
    pub hits: u64,
    /// Lookups that had to prepare.
    pub misses: u64,
    /// hits / (hits + misses); 0 before any lookup.
    pub hit_rate: f64,
    /// Statements evicted (and closed on the server).
    pub evictions: u64,
    /// Statements currently cached, over all open connections.
    pub prepared_statements: u64,
    /// The per-connection capacity.
    pub capacity: u32,
}

/// The counters a pool keeps. All relaxed atomics: a snapshot is approximate under
/// concurrent updates, never torn per counter.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub acquire_timeouts: AtomicU64,
    pub connection_errors: AtomicU64,
    pub connections_created: AtomicU64,
    pub connections_closed: AtomicU64,
    pub connections_recycled: AtomicU64,
    pub total_queries: AtomicU64,
    pub query_errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_evictions: AtomicU64,
    pub cached_statements: AtomicU64,
    /// Every checkout's wait (its count is the checkouts).
    pub acquire_time: Histogram,
    pub use_time: Histogram,
    pub create_time: Histogram,
    pub operation_time: Histogram,
    pub health_check_time: Histogram,
    pub scaling_events: AtomicU64,
    pub load_test_requests: AtomicU64,
    /// Statements abandoned mid-flight and cancelled in PostgreSQL.
    pub statements_cancelled: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

const SUB_BUCKETS: usize = 8;
const BUCKETS: usize = 40 * SUB_BUCKETS;

/// A lock-free log-linear histogram of durations in microseconds: 8 buckets per
/// power of two (within 9% of the true value), from 1 µs to about 12 days.
/// Recording is one atomic add (two when the value is not 0 µs): the count is
/// the buckets' sum, read when asked for.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros < SUB_BUCKETS as u64 {
        return micros as usize;
    }
    let power = 63 - micros.leading_zeros() as usize; // >= 3
    let shift = power - 3;
    let sub = ((micros >> shift) as usize) & (SUB_BUCKETS - 1);
    ((power - 2) * SUB_BUCKETS + sub).min(BUCKETS - 1)
}

/// The midpoint of a bucket, in microseconds.
fn bucket_value(index: usize) -> f64 {
    if index < SUB_BUCKETS {
        return index as f64;
    }
    let power = index / SUB_BUCKETS + 2;
    let sub = index % SUB_BUCKETS;
    let low = ((SUB_BUCKETS + sub) as u64) << (power - 3);
    let width = 1u64 << (power - 3);
    low as f64 + width as f64 / 2.0
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, duration: Duration) {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        if micros > 0 {
            self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The mean, in ms (0 when empty).
    pub fn mean_ms(&self) -> f64 {
        let count = self.count();
        if count == 0 {
            return 0.0;
        }
        self.sum_micros.load(Ordering::Relaxed) as f64 / count as f64 / 1000.0
    }

    /// The count of every bucket, in bucket order (see [`Histogram::bucket_secs`]).
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The midpoint of bucket `index`, in seconds.
    pub fn bucket_secs(index: usize) -> f64 {
        bucket_value(index) / 1_000_000.0
    }

    /// The sum of everything recorded, in seconds.
    pub fn sum_secs(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1_000_000.0
    }

    /// Counts per bucket of `bounds` (upper bounds in seconds, ascending; a last
    /// bucket to +Inf is added): not cumulative, each recorded value in the first
    /// bucket whose bound is at least its bucket's midpoint.
    pub fn buckets(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> = bounds.iter().map(|b| (*b, 0)).collect();
        out.push((f64::INFINITY, 0));
        for (index, bucket) in self.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let secs = bucket_value(index) / 1_000_000.0;
            let slot = out
                .iter()
                .position(|(b, _)| secs <= *b)
                .unwrap_or(out.len() - 1);
            out[slot].1 += n;
        }
        out
    }

    /// The given quantiles (0..=1), in ms, each within one bucket of the truth.
    pub fn quantiles_ms<const N: usize>(&self, quantiles: [f64; N]) -> [f64; N] {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let mut out = [0.0; N];
        if total == 0 {
            return out;
        }
        for (slot, q) in out.iter_mut().zip(quantiles) {
            let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (index, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    *slot = bucket_value(index) / 1000.0;
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for micros in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1_000,
            65_535,
            1_000_000,
            1 << 40,
        ] {
            let b = bucket_of(micros);
            assert!(b >= last, "{micros}");
            last = b;
            if (8..1 << 38).contains(&micros) {
                let mid = bucket_value(b);
                assert!(
                    (mid - micros as f64).abs() <= micros as f64 * 0.07 + 1.0,
                    "{micros} -> {mid}"
                );
            }
        }
    }

    #[test]
    fn quantiles_follow_the_data() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let [p50, p95, p99] = h.quantiles_ms([0.5, 0.95, 0.99]);
        assert!((p50 - 50.0).abs() < 4.0, "{p50}");
        assert!((p95 - 95.0).abs() < 7.0, "{p95}");
        assert!((p99 - 99.0).abs() < 7.0, "{p99}");
        assert!((h.mean_ms() - 50.5).abs() < 0.01);
        assert_eq!(Histogram::default().quantiles_ms([0.5]), [0.0]);
    }
}

/// One open connection of a pool, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Backend {
    /// The pool's id of the connection (in the order they opened).
    pub id: u64,
    /// The PostgreSQL backend's process id.
    pub pid: i32,
    /// The server it is on (`host:port`, or `socket`).
    pub host: String,
    /// Its TLS version, if it uses TLS.
    pub tls: Option<String>,
    /// When it opened.
    pub connected_at: std::time::SystemTime,
    /// Whether it is checked out (a query, a transaction, a front-door client).
    pub in_use: bool,
}

/// What a pool keeps of one open connection.
#[derive(Debug)]
pub(crate) struct BackendInfo {
    pub id: u64,
    pub pid: i32,
    pub security: ConnSecurity,
    pub connected_at: std::time::SystemTime,
    pub in_use: std::sync::atomic::AtomicBool,
}

impl BackendInfo {
    pub(crate) fn snapshot(&self) -> Backend {
        Backend {
            id: self.id,
            pid: self.pid,
            host: self.security.host.clone(),
            tls: self
                .security
                .tls
                .as_ref()
                .map(|(version, _)| version.clone()),
            connected_at: self.connected_at,
            in_use: self.in_use.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}
