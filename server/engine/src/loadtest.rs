//! `PoolLoadTester`: drives a pool with concurrent requests (closed loop, or open
//! loop at a target rate so that queueing is not hidden), times each request from
//! before checkout to after its result in an HDR histogram, and grades the run A–F.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pool::sql::settle_pinned;
use crate::{AdvancedConnectionPool, Error};

/// A load test's performance grade, A to F.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Grade {
    /// < 1% errors, p95 < 50 ms, utilization < 80%.
    A,
    /// < 5% errors, p95 < 100 ms, utilization < 90%.
    B,
    /// < 10% errors, p95 < 200 ms, utilization < 95%.
    C,
    /// < 20% errors, p95 < 500 ms.
    D,
    /// Above every threshold.
    F,
}

impl Grade {
    /// The grade written as a letter.
    pub fn from_letter(letter: &str) -> Option<Self> {
        Some(match letter {
            "A" => Self::A,
            "B" => Self::B,
            "C" => Self::C,
            "D" => Self::D,
            "F" => Self::F,
            _ => return None,
        })
    }

    /// The letter.
    pub fn letter(self) -> &'static str {
        match self {
            Grade::A => "A",
            Grade::B => "B",
            Grade::C => "C",
            Grade::D => "D",
            Grade::F => "F",
        }
    }
}

/// Grades a run by the grading table: `error_rate` and `utilization` as fractions,
/// `p95_ms` the 95th percentile response time. A load test passes the mean
/// utilization over the test of the capacity the pool may use
/// ([`AdvancedConnectionPool::capacity`]): a pool that could still grow is not
/// marked down for the size it started at.
pub fn grade(error_rate: f64, p95_ms: f64, utilization: f64) -> Grade {
    if error_rate < 0.01 && p95_ms < 50.0 && utilization < 0.80 {
        Grade::A
    } else if error_rate < 0.05 && p95_ms < 100.0 && utilization < 0.90 {
        Grade::B
    } else if error_rate < 0.10 && p95_ms < 200.0 && utilization < 0.95 {
        Grade::C
    } else if error_rate < 0.20 && p95_ms < 500.0 {
        Grade::D
    } else {
        Grade::F
    }
}

/// The slowest open-loop rate a test may ask for (requests per second).
pub const MIN_TARGET_RPS: f64 = 0.01;
/// The fastest open-loop rate a test may ask for (requests per second).
pub const MAX_TARGET_RPS: f64 = 1_000_000.0;

/// How to run a load test.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadTestOptions {
    /// Requests in flight at once (closed loop: workers; open loop: the cap).
    pub concurrency: u32,
    /// How long to measure.
    pub duration: Duration,
    /// The statement to run; `None`: the pool's validation query.
    pub query: Option<String>,
    /// Run (unmeasured) this long first.
    pub warmup: Duration,
    /// Open loop at this many requests per second; `None`: closed loop.
    pub target_rps: Option<f64>,
    /// Run each request in a read-only transaction that is rolled back, with a
    /// `statement_timeout` no longer than the test's remaining time.
    pub read_only: bool,
}

/// The most a server lets one load test ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadTestLimits {
    /// Most requests in flight one test may ask for.
    pub max_concurrency: u32,
    /// Longest test (measured part plus warm-up).
    pub max_duration: Duration,
}

impl LoadTestLimits {
    /// No caps (an embedding application's own tests).
    pub const NONE: Self = Self {
        max_concurrency: u32::MAX,
        max_duration: Duration::MAX,
    };
}

impl Default for LoadTestLimits {
    fn default() -> Self {
        Self {
            max_concurrency: 512,
            max_duration: Duration::from_secs(600),
        }
    }
}

impl LoadTestOptions {
    /// Every option out of range (`limits` are the server's caps), each named
    /// as the RunLoadTest request's field.
    pub fn violations(&self, limits: &LoadTestLimits) -> Vec<crate::RequestViolation> {
        let mut out = Vec::new();
        let mut fail = |field: &str, description: String| {
            out.push(crate::RequestViolation::new(field, description));
        };
        if self.concurrency == 0 {
            fail("concurrency", "must be at least 1".into());
        } else if self.concurrency > limits.max_concurrency {
            let max = limits.max_concurrency;
            fail(
                "concurrency",
                format!("must be at most {max} (the server's cap)"),
            );
        }
        if self.duration.is_zero() {
            fail("duration_secs", "must be at least 1".into());
        } else if self.duration.saturating_add(self.warmup) > limits.max_duration {
            let max = limits.max_duration.as_secs();
            fail(
                "duration_secs",
                format!("with warmup_secs must be at most {max} s (the server's cap)"),
            );
        }
        if let Some(rps) = self.target_rps
            && !(MIN_TARGET_RPS..=MAX_TARGET_RPS).contains(&rps)
        {
            fail(
                "target_rps",
                format!("must be between {MIN_TARGET_RPS} and {MAX_TARGET_RPS}"),
            );
        }
        if self
            .query
            .as_ref()
            .is_some_and(|q| q.len() > crate::config::MAX_SQL_LEN)
        {
            let max = crate::config::MAX_SQL_LEN;
            fail("query", format!("must be at most {max} bytes"));
        }
        out
    }

    /// [`violations`](Self::violations) as an [`Error::InvalidRequest`].
    pub fn check(&self, limits: &LoadTestLimits) -> Result<(), Error> {
        let violations = self.violations(limits);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidRequest(violations))
        }
    }
}

/// A load test's state, once a second while it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadTestProgress {
    /// Time measured so far.
    pub elapsed: Duration,
    /// Requests finished so far.
    pub requests: u64,
    /// Requests per second over the last second.
    pub current_rps: f64,
    /// Failed requests so far.
    pub errors: u64,
    /// 95th percentile response time so far, in ms.
    pub p95_ms: f64,
    /// The pool's utilization now.
    pub utilization: f64,
}

/// What a load test measured, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadTestResults {
    /// The pool.
    pub pool_name: String,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// The statement run.
    pub query: String,
    /// The open-loop rate, if any.
    pub target_rps: Option<f64>,
    /// Requests finished.
    pub total_requests: u64,
    /// Requests that succeeded.
    pub successful_requests: u64,
    /// Requests that failed.
    pub failed_requests: u64,
    /// failed / total.
    pub error_rate: f64,
    /// Finished requests per second.
    pub requests_per_second: f64,
    /// Mean response time, ms.
    pub avg_response_time_ms: f64,
    /// Median response time, ms.
    pub p50_response_time_ms: f64,
    /// 95th percentile response time, ms.
    pub p95_response_time_ms: f64,
    /// 99th percentile response time, ms.
    pub p99_response_time_ms: f64,
    /// Slowest response, ms.
    pub max_response_time_ms: f64,
    /// Mean utilization during the test: connections in use over the capacity
    /// the pool may use (max_connections, or its share of the server's budget if
    /// smaller). The grade uses it.
    pub avg_utilization: f64,
    /// Highest utilization (of the same capacity) during the test.
    pub peak_utilization: f64,
    /// The capacity utilization was measured against (its mean over the test).
    pub capacity: u32,
    /// The grade.
    pub grade: Grade,
    /// When measuring began.
    pub started_at: SystemTime,
    /// How long it really ran: from its start until the last request running at
    /// its end had finished. Rates are over this time.
    pub duration: Duration,
}

/// What the workers share.
struct Tally {
    histogram: Mutex<Histogram<u64>>,
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn new() -> Self {
        Self {
            histogram: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            ),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    fn record(&self, took: Duration, ok: bool) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.histogram
            .lock()
            .expect("histogram lock")
            .saturating_record(micros);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn p95_ms(&self) -> f64 {
        let h = self.histogram.lock().expect("histogram lock");
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(0.95) as f64 / 1000.0
        }
    }
}

/// Runs load tests against one pool (`PoolLoadTester`).
#[derive(Debug, Clone)]
pub struct PoolLoadTester {
    pool: Arc<AdvancedConnectionPool>,
}

impl PoolLoadTester {
    /// A tester for `pool`.
    pub fn new(pool: Arc<AdvancedConnectionPool>) -> Self {
        Self { pool }
    }

    /// `run_load_test(concurrency, duration_secs)`: closed-loop workers running the pool's
    /// validation query for `duration_secs`.
    pub async fn run_load_test(
        &self,
        concurrency: u32,
        duration_secs: u64,
    ) -> Result<LoadTestResults, Error> {
        let options = LoadTestOptions {
            concurrency,
            duration: Duration::from_secs(duration_secs),
            query: None,
            warmup: Duration::ZERO,
            target_rps: None,
            read_only: false,
        };
        self.run(options, None, CancellationToken::new()).await
    }

    /// Runs a test; sends progress once a second to `progress` (if given, without
    /// waiting on a slow receiver) and stops early when `cancel` is cancelled: no
    /// request starts after it, and those running finish (or are cancelled in
    /// PostgreSQL after [`END_GRACE`]) and are counted by their outcome.
    pub async fn run(
        &self,
        options: LoadTestOptions,
        progress: Option<mpsc::Sender<LoadTestProgress>>,
        cancel: CancellationToken,
    ) -> Result<LoadTestResults, Error> {
        let span = tracing::info_span!(
            "load_test",
            db.system.name = "postgresql",
            db.client.connection.pool.name = %self.pool.name(),
            concurrency = options.concurrency,
            duration_secs = options.duration.as_secs(),
        );
        tracing::Instrument::instrument(self.run_inner(options, progress, cancel), span).await
    }

    async fn run_inner(
        &self,
        options: LoadTestOptions,
        progress: Option<mpsc::Sender<LoadTestProgress>>,
        cancel: CancellationToken,
    ) -> Result<LoadTestResults, Error> {
        options.check(&LoadTestLimits::NONE)?;
        let query = options
            .query
            .clone()
            .filter(|q| !q.trim().is_empty())
            .unwrap_or_else(|| self.pool.config().validation_query);

        // Stopped by the caller, or by the pool closing under the test.
        let stop = cancel.child_token();
        let closed = Arc::new(AtomicBool::new(false));
        if !options.warmup.is_zero() {
            let warmup = Arc::new(Tally::new());
            self.drive(&options, &query, options.warmup, &warmup, &stop, &closed)
                .await;
        }

        let tally = Arc::new(Tally::new());
        let started_at = SystemTime::now();
        let start = Instant::now();
        let stop_sampling = cancel.child_token();
        let sampler = tokio::spawn(sample(
            Arc::clone(&self.pool),
            Arc::clone(&tally),
            start,
            progress,
            stop_sampling.clone(),
        ));
        if !closed.load(Ordering::Acquire) {
            self.drive(&options, &query, options.duration, &tally, &stop, &closed)
                .await;
        }
        let duration = start.elapsed();
        stop_sampling.cancel();
        let utilization = sampler.await.unwrap_or_default();
        if closed.load(Ordering::Acquire) {
            return Err(Error::PoolClosed);
        }

        Ok(self.results(&options, query, &tally, utilization, started_at, duration))
    }

    /// The graded results of a finished test.
    fn results(
        &self,
        options: &LoadTestOptions,
        query: String,
        tally: &Tally,
        utilization: Utilization,
        started_at: SystemTime,
        duration: Duration,
    ) -> LoadTestResults {
        let h = tally.histogram.lock().expect("histogram lock").clone();
        let total = tally.requests.load(Ordering::Relaxed);
        let failed = tally.errors.load(Ordering::Relaxed);
        let error_rate = if total == 0 {
            0.0
        } else {
            failed as f64 / total as f64
        };
        // Milliseconds at quantile `q` (0 without requests).
        let at = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let p95 = at(0.95);
        LoadTestResults {
            pool_name: self.pool.name().to_owned(),
            concurrency: options.concurrency,
            query,
            target_rps: options.target_rps,
            total_requests: total,
            successful_requests: total - failed,
            failed_requests: failed,
            error_rate,
            requests_per_second: total as f64 / duration.as_secs_f64().max(1e-9),
            avg_response_time_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            p50_response_time_ms: at(0.5),
            p95_response_time_ms: p95,
            p99_response_time_ms: at(0.99),
            max_response_time_ms: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1000.0
            },
            avg_utilization: utilization.mean,
            peak_utilization: utilization.peak,
            capacity: utilization.capacity,
            grade: grade(error_rate, p95, utilization.mean),
            started_at,
            duration,
        }
    }

    /// Issues requests for `length` (closed or open loop) until done or cancelled.
    async fn drive(
        &self,
        options: &LoadTestOptions,
        query: &str,
        length: Duration,
        tally: &Arc<Tally>,
        cancel: &CancellationToken,
        closed: &Arc<AtomicBool>,
    ) {
        let deadline = Instant::now() + length;
        let workers = TaskTracker::new();
        let job = Job {
            pool: Arc::clone(&self.pool),
            tally: Arc::clone(tally),
            cancel: cancel.clone(),
            query: query.into(),
            read_only: options.read_only,
            end: deadline,
            closed: Arc::clone(closed),
        };
        match options.target_rps {
            None => {
                for _ in 0..options.concurrency {
                    let job = job.clone();
                    workers.spawn(async move {
                        while Instant::now() < deadline && !job.cancel.is_cancelled() {
                            job.once(Instant::now()).await;
                        }
                    });
                }
            }
            Some(rps) => {
                // Open loop: request i is due at start + i / rps and is timed from
                // then, however long it waited for a free slot.
                let slots = Arc::new(Semaphore::new(options.concurrency as usize));
                let start = Instant::now();
                let mut i = 0u64;
                loop {
                    let due = start + Duration::from_secs_f64(i as f64 / rps);
                    if due >= deadline {
                        break;
                    }
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep_until(due.into()) => {}
                    }
                    let slot = tokio::select! {
                        biased;
                        () = cancel.cancelled() => break,
                        slot = Arc::clone(&slots).acquire_owned() => slot.expect("never closed"),
                    };
                    let job = job.clone();
                    workers.spawn(async move {
                        let _slot = slot;
                        job.once(due).await;
                    });
                    i += 1;
                }
            }
        }
        workers.close();
        workers.wait().await;
    }
}

/// How close to a test's end a statement timeout counts as the end itself.
const END_SLACK: Duration = Duration::from_millis(5);

/// How long a request still running when its test ends may take to finish
/// before its statement is cancelled (and the request counted as failed).
pub const END_GRACE: Duration = Duration::from_secs(1);

/// What every request of a test needs.
#[derive(Clone)]
struct Job {
    pool: Arc<AdvancedConnectionPool>,
    tally: Arc<Tally>,
    cancel: CancellationToken,
    query: Arc<str>,
    /// Requests run read-only, with a statement timeout running to `end`.
    read_only: bool,
    /// When this phase ends: no request starts after it, and one still running
    /// then finishes within [`END_GRACE`] or is cancelled in PostgreSQL.
    end: Instant,
    /// Set (and the test stopped) when the pool closes under the test.
    closed: Arc<AtomicBool>,
}

impl Job {
    /// One request (checkout, statement, return), timed from `from`, and counted
    /// by what happened in PostgreSQL, as `pgbench -T` counts: a request that has
    /// no connection yet when the test ends (or is cancelled) never starts and is
    /// not counted; one whose statement is running then finishes (a read-only
    /// one's statement_timeout ends it with the test; a writing one gets
    /// [`END_GRACE`], then is cancelled) and is counted by its outcome — a write
    /// that committed before the cancel reached it is a success. A closed pool
    /// stops the whole test.
    async fn once(&self, from: Instant) {
        // One timer and one cancellation wait for the whole request.
        let end = tokio::time::sleep_until(self.end.into());
        let cancelled = self.cancel.cancelled();
        tokio::pin!(end, cancelled);
        let checkout = tokio::select! {
            biased;
            () = &mut cancelled => return,
            () = &mut end => return,
            conn = self.pool.get() => conn,
        };
        let result = match checkout {
            Ok(mut conn) => self.statement(&mut conn, end, cancelled).await,
            Err(e) => Some(Err(e)),
        };
        let Some(result) = result else { return };
        if matches!(result, Err(Error::PoolClosed)) {
            self.closed.store(true, Ordering::Release);
            self.cancel.cancel();
            return;
        }
        self.tally.record(from.elapsed(), result.is_ok());
        self.pool.count_load_test_request();
        if result.is_err() {
            // A fast-failing request never pins the runtime.
            tokio::task::yield_now().await;
        }
    }

    /// Runs the statement on `conn` to its outcome; `None` for a read-only one
    /// that its statement_timeout ended with the test (nothing it did persists:
    /// not a request of the test).
    async fn statement(
        &self,
        conn: &mut crate::PooledConnection,
        end: std::pin::Pin<&mut tokio::time::Sleep>,
        cancelled: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Option<Result<u64, Error>> {
        let cancel = conn.cancel_handle();
        let settled = if self.read_only {
            let left = self.end.saturating_duration_since(Instant::now());
            let work = conn.execute_read_only(&self.query, left);
            settle_pinned(&cancel, work, end, cancelled, END_GRACE).await
        } else {
            let work = conn.execute(&self.query, &[]);
            settle_pinned(&cancel, work, end, cancelled, END_GRACE).await
        };
        match settled.outcome {
            // It never answered, even to the cancel: its connection is closed
            // and the request failed.
            None => Some(Err(Error::StatementCancelled {
                deadline_exceeded: true,
            })),
            Some(Err(e))
                if self.read_only
                    && e.sqlstate() == Some("57014")
                    && (settled.cut.is_some() || Instant::now() + END_SLACK >= self.end) =>
            {
                None
            }
            Some(result) => Some(result),
        }
    }
}

/// Utilization over a test, of the capacity the pool may use.
#[derive(Debug, Default, Clone, Copy)]
struct Utilization {
    mean: f64,
    peak: f64,
    capacity: u32,
}

/// Connections in use over the capacity the pool may use.
fn utilization_of(pool: &AdvancedConnectionPool) -> (f64, u32) {
    let capacity = pool.capacity();
    let active = pool.pool_stats().active_connections;
    (f64::from(active) / f64::from(capacity.max(1)), capacity)
}

/// Samples utilization every 100 ms and reports progress every second.
async fn sample(
    pool: Arc<AdvancedConnectionPool>,
    tally: Arc<Tally>,
    start: Instant,
    progress: Option<mpsc::Sender<LoadTestProgress>>,
    stop: CancellationToken,
) -> Utilization {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut sum, mut samples, mut peak) = (0.0, 0u32, 0.0f64);
    let mut capacity_sum = 0u64;
    let mut last_report = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (utilization, capacity) = utilization_of(&pool);
        sum += utilization;
        capacity_sum += u64::from(capacity);
        samples += 1;
        peak = peak.max(utilization);
        if let Some(progress) = &progress
            && last_report.0.elapsed() >= Duration::from_secs(1)
        {
            let requests = tally.requests.load(Ordering::Relaxed);
            let rate = (requests - last_report.1) as f64 / last_report.0.elapsed().as_secs_f64();
            last_report = (Instant::now(), requests);
            let _ = progress.try_send(LoadTestProgress {
                elapsed: start.elapsed(),
                requests,
                current_rps: rate,
                errors: tally.errors.load(Ordering::Relaxed),
                p95_ms: tally.p95_ms(),
                utilization,
            });
        }
    }
    if samples == 0 {
        let (u, capacity) = utilization_of(&pool);
        return Utilization {
            mean: u,
            peak: u,
            capacity,
        };
    }
    Utilization {
        mean: sum / f64::from(samples),
        peak,
        capacity: (capacity_sum / u64::from(samples)) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::{Grade, LoadTestLimits, LoadTestOptions, grade};
    use std::time::Duration;

    #[test]
    fn option_errors_name_the_request_fields() {
        let options = LoadTestOptions {
            concurrency: 513,
            duration: Duration::from_secs(590),
            query: Some("x".repeat(crate::config::MAX_SQL_LEN + 1)),
            warmup: Duration::from_secs(20),
            target_rps: Some(0.0),
            read_only: true,
        };
        let fields = |o: &LoadTestOptions, limits: &LoadTestLimits| -> Vec<String> {
            o.violations(limits).into_iter().map(|v| v.field).collect()
        };
        assert_eq!(
            fields(&options, &LoadTestLimits::default()),
            ["concurrency", "duration_secs", "target_rps", "query"]
        );
        let error = options.check(&LoadTestLimits::default()).unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::InvalidArgument);
        assert!(
            error
                .to_string()
                .starts_with("invalid request: concurrency: must be at most 512"),
            "{error}"
        );
        // Without caps only the values that make no sense are refused.
        let fine = LoadTestOptions {
            target_rps: None,
            query: None,
            ..options.clone()
        };
        assert!(fields(&fine, &LoadTestLimits::NONE).is_empty());
        let zero = LoadTestOptions {
            concurrency: 0,
            duration: Duration::ZERO,
            ..fine
        };
        assert_eq!(
            fields(&zero, &LoadTestLimits::NONE),
            ["concurrency", "duration_secs"]
        );
    }

    #[test]
    fn grades_follow_the_grading_table_at_every_boundary() {
        assert_eq!(grade(0.0, 0.0, 0.0), Grade::A);
        assert_eq!(grade(0.0099, 49.99, 0.7999), Grade::A);
        // Each A threshold reached alone drops to B.
        assert_eq!(grade(0.01, 10.0, 0.1), Grade::B);
        assert_eq!(grade(0.0, 50.0, 0.1), Grade::B);
        assert_eq!(grade(0.0, 10.0, 0.80), Grade::B);
        assert_eq!(grade(0.0499, 99.99, 0.8999), Grade::B);
        assert_eq!(grade(0.05, 10.0, 0.1), Grade::C);
        assert_eq!(grade(0.0, 100.0, 0.1), Grade::C);
        assert_eq!(grade(0.0, 10.0, 0.90), Grade::C);
        assert_eq!(grade(0.0999, 199.99, 0.9499), Grade::C);
        // D ignores utilization.
        assert_eq!(grade(0.10, 10.0, 0.1), Grade::D);
        assert_eq!(grade(0.0, 200.0, 0.1), Grade::D);
        assert_eq!(grade(0.0, 10.0, 0.95), Grade::D);
        assert_eq!(grade(0.0, 10.0, 1.0), Grade::D);
        assert_eq!(grade(0.1999, 499.99, 1.0), Grade::D);
        assert_eq!(grade(0.20, 10.0, 0.1), Grade::F);
        assert_eq!(grade(0.0, 500.0, 0.1), Grade::F);
        assert_eq!(grade(1.0, 10_000.0, 1.0), Grade::F);
    }
}
