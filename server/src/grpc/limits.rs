//! The server's bounds on what callers may ask for: watch streams (in total and per
//! client connection), the sizes of request fields, and HTTP/2 settings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Status;

/// Every bound the gRPC layer enforces; each has a server flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Watch streams (WatchPoolStats, WatchHealthEvents) open at once in total.
    pub max_watch_streams: usize,
    /// Watch streams open at once on one client connection.
    pub max_watch_streams_per_connection: usize,
    /// HTTP/2 streams (calls) in flight on one client connection.
    pub max_concurrent_streams: u32,
    /// How often an idle client connection is pinged.
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub http2_keepalive_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_watch_streams: 1024,
            max_watch_streams_per_connection: 32,
            max_concurrent_streams: 256,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerLimits {
    /// Every bound out of range, as `flag: why`.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(1..=1_000_000).contains(&self.max_watch_streams) {
            out.push("--max-watch-streams: must be between 1 and 1000000".to_owned());
        }
        if !(1..=self.max_watch_streams).contains(&self.max_watch_streams_per_connection) {
            out.push(
                "--max-watch-streams-per-connection: must be between 1 and --max-watch-streams"
                    .to_owned(),
            );
        }
        if !(1..=100_000).contains(&self.max_concurrent_streams) {
            out.push("--max-concurrent-streams: must be between 1 and 100000".to_owned());
        }
        let second = Duration::from_secs(1);
        let hour = Duration::from_secs(3600);
        if !(second..=hour).contains(&self.http2_keepalive_interval) {
            out.push("--http2-keepalive-interval: must be between 1s and 1h".to_owned());
        }
        if !(second..=hour).contains(&self.http2_keepalive_timeout) {
            out.push("--http2-keepalive-timeout: must be between 1s and 1h".to_owned());
        }
        out
    }
}

/// Longest pool-name lists (WatchPoolStats, WatchHealthEvents, OptimizePools).
pub const MAX_POOL_NAMES: usize = 1000;
/// Longest WatchPoolStats interval.
pub const MAX_WATCH_INTERVAL_MS: u32 = 3_600_000;
/// Widest GetMetricsHistory range.
pub const MAX_HISTORY_RANGE: Duration = Duration::from_secs(400 * 86_400);

/// Counts open watch streams, in total and per client connection.
#[derive(Debug, Clone)]
pub struct StreamSlots {
    inner: Arc<Mutex<Slots>>,
    total_max: usize,
    per_connection_max: usize,
}

#[derive(Debug, Default)]
struct Slots {
    total: usize,
    per_connection: HashMap<Option<SocketAddr>, usize>,
}

/// One open stream; its slot is freed on drop.
#[derive(Debug)]
pub struct StreamSlot {
    inner: Arc<Mutex<Slots>>,
    peer: Option<SocketAddr>,
}

impl StreamSlots {
    /// Slots for `limits`.
    pub fn new(limits: &ServerLimits) -> Self {
        Self {
            inner: Arc::default(),
            total_max: limits.max_watch_streams,
            per_connection_max: limits.max_watch_streams_per_connection,
        }
    }

    /// A slot for a stream of the client connection `peer`, or RESOURCE_EXHAUSTED
    /// saying which bound was hit.
    pub fn acquire(&self, peer: Option<SocketAddr>) -> Result<StreamSlot, Status> {
        let mut slots = self.inner.lock().expect("stream slots lock");
        if slots.total >= self.total_max {
            return Err(Status::resource_exhausted(format!(
                "the server has {} watch streams open, its maximum (--max-watch-streams)",
                self.total_max
            )));
        }
        let mine = slots.per_connection.entry(peer).or_default();
        if *mine >= self.per_connection_max {
            return Err(Status::resource_exhausted(format!(
                "this connection has {} watch streams open, the maximum per connection \
                 (--max-watch-streams-per-connection)",
                self.per_connection_max
            )));
        }
        *mine += 1;
        slots.total += 1;
        Ok(StreamSlot {
            inner: Arc::clone(&self.inner),
            peer,
        })
    }

    /// Watch streams open now.
    pub fn open(&self) -> usize {
        self.inner.lock().expect("stream slots lock").total
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut slots = self.inner.lock().expect("stream slots lock");
        slots.total -= 1;
        if let Some(count) = slots.per_connection.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                slots.per_connection.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_bound_total_and_per_connection() {
        let slots = StreamSlots::new(&ServerLimits {
            max_watch_streams: 3,
            max_watch_streams_per_connection: 2,
            ..Default::default()
        });
        let a: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:1001".parse().expect("addr");
        let a1 = slots.acquire(Some(a)).expect("free");
        let _a2 = slots.acquire(Some(a)).expect("free");
        let error = slots.acquire(Some(a)).unwrap_err();
        assert!(error.message().contains("per connection"), "{error:?}");
        let _b1 = slots.acquire(Some(b)).expect("free");
        let error = slots.acquire(Some(b)).unwrap_err();
        assert!(
            error.message().contains("--max-watch-streams)"),
            "{error:?}"
        );
        drop(a1);
        assert_eq!(slots.open(), 2);
        slots.acquire(Some(b)).expect("a slot was freed");
    }
}
