//! Health monitoring: `HealthStatus`, its state machine, and the monitor task. A
//! check opens its own short connection (never a pooled one), so a saturated pool
//! is not mistaken for an unhealthy database.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::error::describe_pg_error;
use crate::events::PoolEventKind;

/// The pool's health (`get_health_status()`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthStatus {
    /// False after max_failed_health_checks consecutive failures, until a success.
    pub is_healthy: bool,
    /// How long the last check took (connect + validation query), in ms.
    pub response_time_ms: f64,
    /// Failed checks in a row.
    pub consecutive_failures: u32,
    /// When the last check finished.
    pub last_check_at: Option<SystemTime>,
    /// When a check last succeeded.
    pub last_success_at: Option<SystemTime>,
    /// Why the last failed check failed (passwords redacted); cleared on success.
    pub last_error: Option<String>,
}

impl HealthStatus {
    pub(crate) fn new(is_healthy: bool, last_error: Option<String>) -> Self {
        Self {
            is_healthy,
            response_time_ms: 0.0,
            consecutive_failures: u32::from(!is_healthy),
            last_check_at: None,
            last_success_at: None,
            last_error,
        }
    }
}

/// A change of health the monitor reports.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Transition {
    /// The check failed; the pool is still healthy (or already unhealthy).
    Failed,
    /// This failure made the pool unhealthy.
    BecameUnhealthy,
    /// This success ended an unhealthy spell.
    Recovered,
}

/// Applies one check result to the status: the state machine.
pub(crate) fn apply(
    status: &mut HealthStatus,
    result: Result<Duration, String>,
    max_failed: u32,
) -> Option<Transition> {
    let now = SystemTime::now();
    status.last_check_at = Some(now);
    match result {
        Ok(took) => {
            status.response_time_ms = took.as_secs_f64() * 1000.0;
            status.consecutive_failures = 0;
            status.last_success_at = Some(now);
            status.last_error = None;
            let was_unhealthy = !status.is_healthy;
            status.is_healthy = true;
            was_unhealthy.then_some(Transition::Recovered)
        }
        Err(error) => {
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            status.last_error = Some(error);
            if status.is_healthy && status.consecutive_failures >= max_failed {
                status.is_healthy = false;
                Some(Transition::BecameUnhealthy)
            } else {
                Some(Transition::Failed)
            }
        }
    }
}

/// One check: connect (own connection), run the validation query, all within the
/// health timeout.
async fn check(
    pg: &tokio_postgres::Config,
    tls: &crate::tls::PgTls,
    query: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let attempt = async {
        let (client, connection) = tls.connect(pg).await?;
        // Abandoned (timeout, shutdown): the driver and its socket go too.
        let driver = super::manager::AbortOnDrop(Some(tokio::spawn(async move {
            let _ = connection.await;
        })));
        let result = client.simple_query(query).await;
        drop(client);
        let _ = driver.keep().await;
        result.map(|_| ())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(describe_pg_error(&e)),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// The monitor loop: a check every health_check_interval_secs until cancelled.
pub(crate) async fn monitor(
    shared: Arc<Shared>,
    pg: tokio_postgres::Config,
    pool: bb8::Pool<super::manager::PoolManager>,
    token: CancellationToken,
) {
    // A pool that starts unhealthy (not connected yet) is checked at once.
    let mut check_now = !shared.health.lock().expect("health lock").is_healthy;
    loop {
        let settings = shared.settings();
        if !std::mem::take(&mut check_now) {
            tokio::select! {
                biased;
                () = token.cancelled() => break,
                () = tokio::time::sleep(settings.health_check_interval()) => {}
            }
        }
        let _slot = match budget_slot(&shared, &settings, &token).await {
            Slot::Held(slot) => slot,
            Slot::Busy => {
                // Not connected yet (e.g. its replica waits for its allocation
                // of the server): again as soon as a slot frees, not after an
                // interval.
                check_now = !shared.health.lock().expect("health lock").is_healthy;
                continue;
            }
            Slot::Cancelled => break,
        };
        let started = std::time::Instant::now();
        let span = tracing::info_span!(
            "health_check",
            db.system.name = "postgresql",
            db.client.connection.pool.name = %shared.name,
        );
        let checked = tracing::Instrument::instrument(
            check(
                &pg,
                &shared.tls,
                &settings.validation_query,
                settings.health_check_timeout(),
            ),
            span,
        );
        let result = tokio::select! {
            biased;
            () = token.cancelled() => break,
            result = checked => result.map_err(|e| shared.redact(&e)),
        };
        shared.counters.health_check_time.record(started.elapsed());
        record(&shared, &pool, result, settings.max_failed_health_checks).await;
    }
}

/// A health check's slot of the server's connection budget.
enum Slot {
    /// Taken (or `None`: the pool shares no budget).
    Held(Option<crate::budget::BudgetSlot>),
    /// Every slot stayed busy for the check's timeout.
    Busy,
    /// The pool is stopping.
    Cancelled,
}

/// A check holds a slot of the server's connection budget like any pool
/// connection; when every slot stays busy for the check's timeout, the server is
/// evidently answering: the check is skipped, not failed.
async fn budget_slot(
    shared: &Shared,
    settings: &crate::AdvancedPoolConfig,
    token: &CancellationToken,
) -> Slot {
    let Some(m) = &shared.budget else {
        return Slot::Held(None);
    };
    tokio::select! {
        biased;
        () = token.cancelled() => Slot::Cancelled,
        slot = tokio::time::timeout(settings.health_check_timeout(), m.budget.slot()) => match slot {
            Ok(slot) => Slot::Held(Some(slot)),
            Err(_) => {
                tracing::debug!(pool = %shared.name, "health check skipped: the connection budget is in use");
                Slot::Busy
            }
        },
    }
}

/// Applies a check's result to the pool's health and tells what changed: a log
/// line and the events; a pool that became unhealthy retires its idle
/// connections (recovery must not hand out connections that died with the
/// database).
async fn record(
    shared: &Shared,
    pool: &bb8::Pool<super::manager::PoolManager>,
    result: Result<Duration, String>,
    max_failed: u32,
) {
    let error = result.as_ref().err().cloned();
    let response_time_ms = result
        .as_ref()
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    let (transition, failures) = {
        let mut status = shared.health.lock().expect("health lock");
        let transition = apply(&mut status, result, max_failed);
        (transition, status.consecutive_failures)
    };
    let events = &shared.events;
    match (transition, error) {
        (Some(Transition::BecameUnhealthy), Some(error)) => {
            tracing::warn!(pool = %shared.name, failures, %error, "pool became unhealthy");
            events.send(PoolEventKind::HealthCheckFailed {
                consecutive_failures: failures,
                error: error.clone(),
            });
            events.send(PoolEventKind::BecameUnhealthy {
                consecutive_failures: failures,
                error,
            });
            super::maintenance::retire_idle(pool, |conn| conn.broken = true).await;
        }
        (Some(Transition::Failed), Some(error)) => {
            tracing::info!(pool = %shared.name, failures, %error, "health check failed");
            events.send(PoolEventKind::HealthCheckFailed {
                consecutive_failures: failures,
                error,
            });
        }
        (Some(Transition::Recovered), _) => {
            tracing::info!(pool = %shared.name, response_time_ms, "pool recovered");
            events.send(PoolEventKind::Recovered { response_time_ms });
        }
        (None, None) => events.send(PoolEventKind::HealthCheckSucceeded { response_time_ms }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_after_max_failures_and_healthy_on_first_success() {
        let mut status = HealthStatus::new(true, None);
        let fail = || Err("down".to_string());
        assert_eq!(apply(&mut status, fail(), 3), Some(Transition::Failed));
        assert_eq!(apply(&mut status, fail(), 3), Some(Transition::Failed));
        assert!(status.is_healthy);
        assert_eq!(
            apply(&mut status, fail(), 3),
            Some(Transition::BecameUnhealthy)
        );
        assert!(!status.is_healthy);
        assert_eq!(apply(&mut status, fail(), 3), Some(Transition::Failed));
        assert_eq!(status.consecutive_failures, 4);
        assert_eq!(status.last_error.as_deref(), Some("down"));
        assert_eq!(
            apply(&mut status, Ok(Duration::from_millis(2)), 3),
            Some(Transition::Recovered)
        );
        assert!(status.is_healthy && status.last_error.is_none());
        assert_eq!(status.consecutive_failures, 0);
        assert_eq!(apply(&mut status, Ok(Duration::from_millis(2)), 3), None);
    }

    #[test]
    fn a_single_allowed_failure_flips_at_once() {
        let mut status = HealthStatus::new(true, None);
        assert_eq!(
            apply(&mut status, Err("x".into()), 1),
            Some(Transition::BecameUnhealthy)
        );
    }
}
