//! The maintenance task: samples utilization every tick and resizes the pool
//! (up fast, down slow, within its share of the server's budget), closes idle
//! connections above min_connections after idle_timeout, and keeps
//! min_connections open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::manager::{Connection, PoolManager};
use super::stats::Counters;
use super::{Shared, sizing};
use crate::events::{PoolEventKind, ScaleDirection};
use sizing::ScalingDecision;

/// How often the maintenance task samples utilization and keeps min_connections.
const MAINTENANCE_TICK: Duration = Duration::from_millis(100);

/// The window of the fast scale-up path.
const FAST_WINDOW: Duration = Duration::from_secs(1);

/// Applies a scaling decision: the gate, the counters, the log line and the event.
/// A growth beyond the pool's share of its server's budget is clipped to the
/// share (and the pool marked held back); nothing happens if that leaves no growth.
pub(super) fn resize(shared: &Shared, mut decision: ScalingDecision) {
    if decision.direction == ScaleDirection::Up {
        let share = shared.share();
        if decision.to > share {
            shared.set_held_back(true);
            decision.to = share.max(decision.from.min(share)).max(1);
            if decision.to <= decision.from {
                return;
            }
            decision.reason = format!(
                "{}; held at the pool's share ({share}) of the connection budget of {}",
                decision.reason,
                shared.budget_server().unwrap_or_default()
            );
        }
    }
    let _span = tracing::info_span!(
        "scaling_decision",
        db.system.name = "postgresql",
        db.client.connection.pool.name = %shared.name,
        from = decision.from,
        to = decision.to,
    )
    .entered();
    shared.set_target(decision.to);
    Counters::add(&shared.counters.scaling_events, 1);
    tracing::info!(
        pool = %shared.name, from = decision.from, to = decision.to,
        utilization = decision.utilization, reason = %decision.reason, "pool resized"
    );
    shared.events.send(PoolEventKind::Scaled {
        direction: decision.direction,
        from: decision.from,
        to: decision.to,
        utilization: decision.utilization,
        reason: decision.reason,
    });
}

/// How often idle connections above min_connections are checked for idle_timeout.
const IDLE_SWEEP: Duration = Duration::from_secs(1);

/// Connections opened at once when a pool starts.
const PARALLEL_OPENS: usize = 16;

/// Opens `wanted` connections into `pool`, up to [`PARALLEL_OPENS`] at a time;
/// stops at the first error and returns it. Cancelling `token` abandons the
/// attempts (and their sockets) at once.
pub(super) async fn open_connections(
    manager: &PoolManager,
    pool: &bb8::Pool<PoolManager>,
    wanted: u32,
    token: &CancellationToken,
) -> Option<super::manager::OpenError> {
    let mut opening = tokio::task::JoinSet::new();
    let mut started = 0;
    let mut first_error = None;
    loop {
        if token.is_cancelled() {
            return first_error;
        }
        while first_error.is_none() && started < wanted && opening.len() < PARALLEL_OPENS {
            let manager = manager.clone();
            // The caller's span goes along, so the connections are its children.
            opening.spawn(tracing::Instrument::instrument(
                async move { bb8::ManageConnection::connect(&manager).await },
                tracing::Span::current(),
            ));
            started += 1;
        }
        let next = tokio::select! {
            biased;
            () = token.cancelled() => return first_error,
            next = opening.join_next() => next,
        };
        match next {
            None => return first_error,
            Some(Ok(Ok(conn))) => {
                let _ = pool.add(conn);
            }
            Some(Ok(Err(e))) => {
                first_error.get_or_insert(e);
            }
            Some(Err(_)) => {}
        }
    }
}

/// Takes the idle connections out of bb8, applies `mark` to each and returns them,
/// so that `has_broken` closes them (when marked broken, when the pool is closed, or
/// while more are open than the pool's size). All are taken before any goes back:
/// bb8 hands out the connection returned last (LIFO), so taking and returning one
/// at a time would see the same one every time.
pub(crate) async fn retire_idle(pool: &bb8::Pool<PoolManager>, mark: impl Fn(&mut Connection)) {
    let mut budget = pool.state().idle_connections;
    let mut taken = Vec::with_capacity(budget as usize);
    while budget > 0 && pool.state().idle_connections > 0 {
        budget -= 1;
        match tokio::time::timeout(Duration::from_millis(20), pool.get()).await {
            Ok(Ok(conn)) => taken.push(conn),
            _ => break,
        }
    }
    // Back in reverse, so that those kept are in the order they were in.
    for mut conn in taken.into_iter().rev() {
        mark(&mut conn);
    }
}

/// The maintenance task: samples utilization for dynamic sizing (up within a
/// second, down after a quiet min_scale_interval); keeps the pool within its share
/// of the server's budget; closes surplus and idle connections; keeps
/// min_connections open.
pub(super) async fn maintain(
    shared: Arc<Shared>,
    manager: PoolManager,
    pool: bb8::Pool<PoolManager>,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(MAINTENANCE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut task = Maintenance {
        shared,
        manager,
        pool,
        window: Window::new(),
        last_idle_sweep: Instant::now(),
        short_last_tick: false,
    };
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        task.tick(&token).await;
    }
}

/// The sizing state the task carries from tick to tick.
struct Window {
    /// Down slow: the pool shrinks one step when every second of the last
    /// min_scale_interval was at or below load_threshold_low (a sliding
    /// stabilization window, as Kubernetes' autoscaler keeps one), and at most
    /// one step per interval.
    last_busy_second: Instant,
    last_step: Instant,
    /// The mean utilization of the last whole second.
    last_second: f64,
    /// The second being sampled: sum of utilization, samples, peak demand.
    sum: f64,
    samples: u32,
    peak: u32,
    start: Instant,
}

impl Window {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            last_busy_second: now,
            last_step: now,
            last_second: 0.0,
            sum: 0.0,
            samples: 0,
            peak: 0,
            start: now,
        }
    }

    fn sample(&mut self, busy: u32, size: u32) {
        self.sum += f64::from(busy) / f64::from(size);
        self.samples += 1;
        self.peak = self.peak.max(busy);
    }

    /// Closes the second: its mean utilization and its peak demand.
    fn close_second(&mut self, low: f64) -> (f64, u32) {
        let utilization = self.sum / f64::from(self.samples.max(1));
        let peak = self.peak;
        self.last_second = utilization;
        if utilization > low {
            self.last_busy_second = Instant::now();
        }
        (self.sum, self.samples, self.peak) = (0.0, 0, 0);
        self.start = Instant::now();
        (utilization, peak)
    }

    /// The step down due now, if any: a size outside [min, max] (after a config
    /// change) is corrected at once; otherwise one step after a whole quiet
    /// min_scale_interval since the last busy second and the last step.
    fn step_down(
        &mut self,
        size: u32,
        settings: &crate::AdvancedPoolConfig,
    ) -> Option<ScalingDecision> {
        let out_of_range =
            size < settings.min_connections.max(1) || size > settings.max_connections;
        let interval = settings.min_scale_interval();
        let quiet =
            self.last_busy_second.elapsed() >= interval && self.last_step.elapsed() >= interval;
        if !(out_of_range || quiet || !settings.enable_dynamic_sizing) {
            return None;
        }
        let decision = sizing::decide(size, self.last_second, settings);
        if decision.is_some() || quiet {
            // At min already, a quiet window looks again after another interval.
            self.last_step = Instant::now();
        }
        decision
    }
}

struct Maintenance {
    shared: Arc<Shared>,
    manager: PoolManager,
    pool: bb8::Pool<PoolManager>,
    window: Window,
    last_idle_sweep: Instant,
    /// Whether fewer than min_connections were open at the last tick.
    short_last_tick: bool,
}

impl Maintenance {
    async fn tick(&mut self, token: &CancellationToken) {
        let shared = Arc::clone(&self.shared);
        let settings = shared.settings();
        let size = shared.target_size.load(Ordering::Acquire).max(1);
        let busy = shared.checked_out.load(Ordering::Relaxed) + shared.gate.waiting();
        self.window.sample(busy, size);
        if self.window.start.elapsed() >= FAST_WINDOW {
            self.scale_up_now(&settings, size);
        }
        self.keep_within_share(busy);
        self.scale_down_when_quiet(&settings);
        // Surplus idle connections after a shrink.
        if shared.open.load(Ordering::Acquire) > shared.target_size.load(Ordering::Acquire) {
            retire_idle(&self.pool, |_| {}).await;
        }
        if self.last_idle_sweep.elapsed() >= IDLE_SWEEP {
            self.close_idle(&settings).await;
        }
        // Keep min_connections open (while the database answers), in parallel;
        // a cancelled token abandons the attempts. Only when the pool was short at
        // the last tick too: a connection just retired (recycled, broken) is
        // usually being replaced already by the checkout that found none idle, and
        // a second opening would be closed again as surplus.
        let healthy = shared.health.lock().expect("health lock").is_healthy;
        let min = settings
            .min_connections
            .min(shared.target_size.load(Ordering::Acquire));
        let open = shared.open.load(Ordering::Acquire);
        let short = healthy && open < min;
        if short && self.short_last_tick {
            open_connections(&self.manager, &self.pool, min - open, token).await;
        }
        self.short_last_tick = short;
    }

    /// Up fast: every second, demand above the high threshold grows the pool at
    /// once (and restarts the window scale-down waits on).
    fn scale_up_now(&mut self, settings: &crate::AdvancedPoolConfig, size: u32) {
        let (utilization, peak) = self.window.close_second(settings.load_threshold_low);
        self.shared.claim_need(sizing::need(peak, settings));
        self.shared.set_held_back(false);
        if let Some(decision) = sizing::scale_up_now(size, utilization, peak, settings) {
            resize(&self.shared, decision);
            self.window.last_step = Instant::now();
        }
    }

    /// Above its share of the server's budget (after a rebalance): down at once,
    /// so that the pools the budget favours get their connections.
    fn keep_within_share(&self, busy: u32) {
        let shared = &self.shared;
        let share = shared.share();
        let size = shared.target_size.load(Ordering::Acquire);
        if size <= share {
            return;
        }
        shared.set_held_back(true);
        resize(
            shared,
            ScalingDecision {
                direction: ScaleDirection::Down,
                from: size,
                to: share,
                utilization: f64::from(busy) / f64::from(size.max(1)),
                reason: format!(
                    "the connection budget of {} is shared by demand: this pool's share is {share}",
                    shared.budget_server().unwrap_or_default()
                ),
            },
        );
    }

    /// A size outside [min, max] (after a config change) is corrected at once;
    /// otherwise a step down after a whole quiet min_scale_interval.
    fn scale_down_when_quiet(&mut self, settings: &crate::AdvancedPoolConfig) {
        let size = self.shared.target_size.load(Ordering::Acquire).max(1);
        if let Some(decision) = self.window.step_down(size, settings) {
            resize(&self.shared, decision);
        }
    }

    /// Connections idle longer than idle_timeout, above min_connections only.
    async fn close_idle(&mut self, settings: &crate::AdvancedPoolConfig) {
        let open = self.shared.open.load(Ordering::Acquire);
        if open <= settings.min_connections || self.pool.state().idle_connections == 0 {
            return;
        }
        self.last_idle_sweep = Instant::now();
        let surplus = AtomicU32::new(open - settings.min_connections);
        let idle_timeout = settings.idle_timeout();
        retire_idle(&self.pool, |conn| {
            if conn.last_used.elapsed() >= idle_timeout
                && surplus
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok()
            {
                conn.broken = true;
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    //! The sizing window on tokio's paused clock: the default 60 s
    //! min_scale_interval is simulated, not waited out.

    use super::{FAST_WINDOW, MAINTENANCE_TICK, Window};
    use crate::AdvancedPoolConfig;

    /// Dynamic sizing with the defaults: thresholds 0.8 / 0.3, factors 1.2 /
    /// 0.9, a 60 s min_scale_interval.
    fn config() -> AdvancedPoolConfig {
        AdvancedPoolConfig {
            enable_dynamic_sizing: true,
            min_connections: 2,
            max_connections: 40,
            ..AdvancedPoolConfig::default()
        }
    }

    /// One simulated second of maintenance ticks with `busy` of `size` in use, as
    /// the task runs them; the steps down decided in it as (from, to).
    async fn second(window: &mut Window, busy: u32, size: u32) -> Vec<(u32, u32)> {
        let config = config();
        let mut steps = Vec::new();
        for _ in 0..FAST_WINDOW.as_millis() / MAINTENANCE_TICK.as_millis() {
            tokio::time::advance(MAINTENANCE_TICK).await;
            window.sample(busy, size);
            if window.start.elapsed() >= FAST_WINDOW {
                window.close_second(config.load_threshold_low);
            }
            if let Some(step) = window.step_down(size, &config) {
                steps.push((step.from, step.to));
            }
        }
        steps
    }

    #[tokio::test(start_paused = true)]
    async fn steady_demand_never_steps_down_and_quiet_steps_once_per_interval() {
        assert_eq!(config().min_scale_interval_secs, 60);
        let mut window = Window::new();
        let mut size = 32;
        // Two minutes of steady demand at 90%: the size does not move.
        for s in 0..120 {
            assert_eq!(second(&mut window, 29, size).await, [], "second {s}");
        }
        // Then quiet: nothing for 59 s, a step of 0.9 at 60 s, the next 60 s later.
        let mut steps = Vec::new();
        for s in 1..=150 {
            for (from, to) in second(&mut window, 0, size).await {
                steps.push((s, from, to));
                size = to;
            }
        }
        assert_eq!(steps, [(60, 32, 28), (120, 28, 25)]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_busy_second_restarts_the_quiet_window() {
        let mut window = Window::new();
        for _ in 0..50 {
            assert_eq!(second(&mut window, 0, 10).await, []);
        }
        // A busy second at 50 s: the quiet minute starts again from it.
        assert_eq!(second(&mut window, 9, 10).await, []);
        let mut at = None;
        for s in 1..=70 {
            if !second(&mut window, 0, 10).await.is_empty() {
                at.get_or_insert(s);
            }
        }
        assert_eq!(at, Some(60));
    }
}
