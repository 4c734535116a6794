//! The metrics recorder: samples every pool each interval and records every health
//! check and scaling decision into the history tables. It never makes a pool wait:
//! rows go to a bounded in-memory buffer and a separate task writes them; while the
//! control database is down the buffer holds them (dropping the oldest beyond its
//! bound, and counting them) and the outage is reported.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::ControlStore;
use crate::store::history::MetricRow;
use crate::{ConnectionPoolService, PoolEventKind};

/// How the recorder runs.
#[derive(Debug, Clone)]
pub struct RecorderOptions {
    /// How often every pool is sampled.
    pub interval: Duration,
    /// How long history is kept.
    pub retention: Duration,
    /// Rows kept in memory while the control database cannot be written.
    pub buffer_rows: usize,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 86_400),
            buffer_rows: 100_000,
        }
    }
}

/// The recorder's own state, for logs, metrics and the health service.
#[derive(Debug, Default)]
pub struct RecorderStatus {
    /// Whether the last write to the control database worked.
    pub store_up: AtomicBool,
    /// Rows waiting in memory.
    pub buffered: AtomicU64,
    /// Rows dropped because the buffer was full.
    pub dropped: AtomicU64,
    /// Rows written.
    pub written: AtomicU64,
    /// Rows removed by retention.
    pub pruned: AtomicU64,
    /// Retention rounds run (by the group's leader only).
    pub prune_rounds: AtomicU64,
}

struct Buffer {
    rows: Mutex<VecDeque<MetricRow>>,
    bound: usize,
    ready: Notify,
    status: Arc<RecorderStatus>,
}

impl Buffer {
    fn push(&self, row: MetricRow) {
        let mut rows = self.rows.lock().expect("buffer lock");
        if rows.len() >= self.bound {
            rows.pop_front();
            self.status.dropped.fetch_add(1, Ordering::Relaxed);
        }
        rows.push_back(row);
        self.status
            .buffered
            .store(rows.len() as u64, Ordering::Relaxed);
    }

    fn take(&self, max: usize) -> Vec<MetricRow> {
        let mut rows = self.rows.lock().expect("buffer lock");
        let n = rows.len().min(max);
        let batch: Vec<MetricRow> = rows.drain(..n).collect();
        self.status
            .buffered
            .store(rows.len() as u64, Ordering::Relaxed);
        batch
    }

    /// Puts a batch that could not be written back in front, within the bound.
    fn put_back(&self, batch: Vec<MetricRow>) {
        let mut rows = self.rows.lock().expect("buffer lock");
        for row in batch.into_iter().rev() {
            if rows.len() >= self.bound {
                self.status.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                rows.push_front(row);
            }
        }
        self.status
            .buffered
            .store(rows.len() as u64, Ordering::Relaxed);
    }
}

/// Rows written per transaction.
const BATCH_ROWS: usize = 2_000;
/// How long one write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows deleted per statement by retention.
const PRUNE_BATCH: i64 = 5_000;

/// The running recorder; [`shutdown`](Self::shutdown) writes what it can and stops.
pub struct MetricsRecorder {
    status: Arc<RecorderStatus>,
    store_up: watch::Receiver<bool>,
    buffer: Arc<Buffer>,
    store: ControlStore,
    token: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for MetricsRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRecorder").finish_non_exhaustive()
    }
}

impl Drop for MetricsRecorder {
    fn drop(&mut self) {
        // Owned tasks end with their owner.
        self.token.cancel();
    }
}

impl MetricsRecorder {
    /// Starts sampling `registry`'s pools into `store`. Its tasks stop when
    /// `parent` is cancelled (without the final flush of [`shutdown`]
    /// (Self::shutdown)), or when the recorder is dropped.
    pub fn start(
        store: ControlStore,
        registry: Arc<ConnectionPoolService>,
        options: RecorderOptions,
        parent: &CancellationToken,
    ) -> Self {
        let status = Arc::new(RecorderStatus::default());
        status.store_up.store(true, Ordering::Relaxed);
        let buffer = Arc::new(Buffer {
            rows: Mutex::new(VecDeque::new()),
            bound: options.buffer_rows.max(1),
            ready: Notify::new(),
            status: Arc::clone(&status),
        });
        let (up_tx, store_up) = watch::channel(true);
        let token = parent.child_token();
        let leadership = Arc::clone(registry.leadership());
        let tasks = TaskTracker::new();
        tasks.spawn(sample(
            Arc::clone(&registry),
            Arc::clone(&buffer),
            options.interval,
            token.clone(),
        ));
        tasks.spawn(listen(registry, Arc::clone(&buffer), token.clone()));
        tasks.spawn(write(
            store.clone(),
            Arc::clone(&buffer),
            up_tx,
            token.clone(),
        ));
        tasks.spawn(prune(
            store.clone(),
            Arc::clone(&status),
            options.retention,
            leadership,
            token.clone(),
        ));
        tasks.close();
        Self {
            status,
            store_up,
            buffer,
            store,
            token,
            tasks,
        }
    }

    /// The recorder's counters.
    pub fn status(&self) -> &Arc<RecorderStatus> {
        &self.status
    }

    /// Follows whether the control database can be written.
    pub fn store_up(&self) -> watch::Receiver<bool> {
        self.store_up.clone()
    }

    /// Stops sampling, writes what is buffered (within a few seconds) and stops.
    pub async fn shutdown(&self) {
        self.token.cancel();
        self.tasks.wait().await;
        let rows = self.buffer.take(usize::MAX);
        if !rows.is_empty() {
            let n = rows.len();
            match tokio::time::timeout(WRITE_TIMEOUT, self.store.write_metrics(&rows)).await {
                Ok(Ok(())) => {
                    self.status.written.fetch_add(n as u64, Ordering::Relaxed);
                }
                _ => tracing::warn!(
                    rows = n,
                    "metrics not written at shutdown: control database unavailable"
                ),
            }
        }
    }
}

async fn sample(
    registry: Arc<ConnectionPoolService>,
    buffer: Arc<Buffer>,
    interval: Duration,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        let at = SystemTime::now();
        for name in registry.pool_names() {
            let Ok(pool) = registry.pool(&name) else {
                continue;
            };
            buffer.push(MetricRow::Pool {
                pool_name: name.clone(),
                at,
                stats: Box::new(pool.pool_stats()),
            });
            buffer.push(MetricRow::Cache {
                pool_name: name,
                at,
                stats: pool.get_statement_cache_stats().await,
            });
        }
        buffer.ready.notify_one();
    }
}

async fn listen(
    registry: Arc<ConnectionPoolService>,
    buffer: Arc<Buffer>,
    token: CancellationToken,
) {
    let mut events = registry.subscribe();
    loop {
        let received = tokio::select! {
            biased;
            () = token.cancelled() => break,
            received = events.recv() => received,
        };
        let event = match received {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                buffer.status.dropped.fetch_add(missed, Ordering::Relaxed);
                tracing::warn!(missed, "metrics recorder fell behind the pool events");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let row = match event.kind {
            PoolEventKind::HealthCheckSucceeded { .. }
            | PoolEventKind::HealthCheckFailed { .. }
            | PoolEventKind::Recovered { .. } => {
                let Ok(pool) = registry.pool(&event.pool_name) else {
                    continue;
                };
                MetricRow::Health {
                    pool_name: event.pool_name,
                    at: event.at,
                    status: pool.get_health_status().await,
                }
            }
            PoolEventKind::Scaled {
                direction,
                from,
                to,
                utilization,
                reason,
            } => MetricRow::Scaling {
                pool_name: event.pool_name,
                at: event.at,
                direction,
                from,
                to,
                utilization,
                reason,
            },
            PoolEventKind::BecameUnhealthy { .. }
            | PoolEventKind::ConnectionRecycled { .. }
            | PoolEventKind::PoolCreated
            | PoolEventKind::PoolUpdated { .. }
            | PoolEventKind::PoolDeleted
            | PoolEventKind::MissedEvents { .. } => continue,
            // Stored by the registry with the change itself (pool_config_changes).
            PoolEventKind::ConfigChanged { .. } => continue,
        };
        buffer.push(row);
        buffer.ready.notify_one();
    }
}

async fn write(
    store: ControlStore,
    buffer: Arc<Buffer>,
    up: watch::Sender<bool>,
    token: CancellationToken,
) {
    let status = Arc::clone(&buffer.status);
    let mut retry_in = Duration::from_millis(250);
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            () = buffer.ready.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        loop {
            let batch = buffer.take(BATCH_ROWS);
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let result = tokio::time::timeout(WRITE_TIMEOUT, store.write_metrics(&batch)).await;
            match result {
                Ok(Ok(())) => {
                    status.written.fetch_add(n, Ordering::Relaxed);
                    retry_in = Duration::from_millis(250);
                    if !status.store_up.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            buffered = status.buffered.load(Ordering::Relaxed) + n,
                            dropped = status.dropped.load(Ordering::Relaxed),
                            "control database is back: writing buffered metrics"
                        );
                        let _ = up.send(true);
                    }
                }
                failed => {
                    buffer.put_back(batch);
                    if status.store_up.swap(false, Ordering::Relaxed) {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {WRITE_TIMEOUT:?}"),
                        };
                        tracing::warn!(error = %why, "control database unavailable: buffering metrics in memory");
                        let _ = up.send(false);
                    }
                    tokio::select! {
                        biased;
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(retry_in) => {}
                    }
                    retry_in = (retry_in * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

async fn prune(
    store: ControlStore,
    status: Arc<RecorderStatus>,
    retention: Duration,
    leadership: Arc<crate::leadership::Leadership>,
    token: CancellationToken,
) {
    // At start, then ten times per retention period (at least every 10 minutes),
    // on the group's leader only.
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            () = leadership.until_leader() => {}
        }
        status.prune_rounds.fetch_add(1, Ordering::Relaxed);
        let before = SystemTime::now() - retention;
        match store.prune_metrics(before, PRUNE_BATCH).await {
            Ok(0) => {}
            Ok(n) => {
                status.pruned.fetch_add(n, Ordering::Relaxed);
                tracing::info!(rows = n, "metrics history pruned");
            }
            Err(error) => tracing::warn!(%error, "metrics retention failed; will retry"),
        }
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ScaleDirection;

    fn row(n: u32) -> MetricRow {
        MetricRow::Scaling {
            pool_name: format!("p{n}"),
            at: SystemTime::now(),
            direction: ScaleDirection::Up,
            from: n,
            to: n + 1,
            utilization: 1.0,
            reason: String::new(),
        }
    }

    fn names(rows: &[MetricRow]) -> Vec<String> {
        rows.iter()
            .map(|r| match r {
                MetricRow::Scaling { pool_name, .. } => pool_name.clone(),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn the_buffer_keeps_the_newest_rows_within_its_bound_and_counts_the_rest() {
        let status = Arc::new(RecorderStatus::default());
        let buffer = Buffer {
            rows: Mutex::new(VecDeque::new()),
            bound: 3,
            ready: Notify::new(),
            status: Arc::clone(&status),
        };
        for n in 0..5 {
            buffer.push(row(n));
        }
        assert_eq!(status.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(status.buffered.load(Ordering::Relaxed), 3);
        let batch = buffer.take(2);
        assert_eq!(names(&batch), ["p2", "p3"]);
        buffer.push(row(5));
        buffer.put_back(batch); // a failed write: back in front, within the bound
        assert_eq!(status.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(names(&buffer.take(10)), ["p3", "p4", "p5"]);
        assert_eq!(status.buffered.load(Ordering::Relaxed), 0);
    }
}
