//! `PoolEvent`: what happened to a pool, broadcast to every subscriber. A subscriber
//! that falls behind is told how many events it missed (`RecvError::Lagged`); it
//! never slows the pool.

use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it starts missing some.
pub const EVENT_BUFFER: usize = 1024;

/// How many events of one pool wait for its subscribers (the registry's forwarder
/// and direct subscribers). Smaller than the registry's: every slot is allocated up
/// front, per pool (1,024 slots were ~150 KB of each idle pool's memory); the
/// forwarder drains it at once, and one that falls behind reports MissedEvents.
pub const POOL_EVENT_BUFFER: usize = 256;

/// One event of one pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolEvent {
    /// The pool's name.
    pub pool_name: String,
    /// When it happened.
    pub at: SystemTime,
    /// What happened.
    pub kind: PoolEventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PoolEventKind {
    /// A health check succeeded (recorded in the history; not shown to watchers).
    HealthCheckSucceeded {
        /// How long the check took, in ms.
        response_time_ms: f64,
    },
    /// A health check failed (the pool may still be healthy).
    HealthCheckFailed {
        /// Failures in a row, this one included.
        consecutive_failures: u32,
        /// Why it failed (passwords redacted).
        error: String,
    },
    /// max_failed_health_checks checks failed in a row: the pool is unhealthy.
    BecameUnhealthy {
        /// Failures in a row.
        consecutive_failures: u32,
        /// The last failure (passwords redacted).
        error: String,
    },
    /// A health check succeeded after the pool was unhealthy.
    Recovered {
        /// How long the check took, in ms.
        response_time_ms: f64,
    },
    /// The pool's size changed.
    Scaled {
        /// Up or down.
        direction: ScaleDirection,
        /// Size before.
        from: u32,
        /// Size after.
        to: u32,
        /// The utilization that prompted it.
        utilization: f64,
        /// Why.
        reason: String,
    },
    /// A connection was closed after recycle_threshold_queries queries.
    ConnectionRecycled {
        /// The queries it had run.
        queries: u64,
    },
    /// The pool was created (or restored at start).
    PoolCreated,
    /// The pool's config changed.
    PoolUpdated {
        /// Whether the pool had to be rebuilt.
        rebuilt: bool,
    },
    /// The pool was deleted.
    PoolDeleted,
    /// Fields of the pool's config were changed (or a change was refused).
    ConfigChanged {
        /// The fields and their values.
        changes: Vec<crate::config::FieldChange>,
        /// Who: the caller's role, `embedded` or `optimizer`.
        source: String,
        /// Why.
        reason: String,
        /// False when the change was refused.
        applied: bool,
    },
    /// Events of this pool were dropped before they reached the registry's
    /// broadcast (its forwarder fell behind): a watcher knows its view has gaps.
    MissedEvents {
        /// How many.
        count: u64,
    },
}

/// Which way a scaling step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleDirection {
    /// The pool grew.
    Up,
    /// The pool shrank.
    Down,
}

impl ScaleDirection {
    /// `up` or `down`, as the history stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }

    /// The direction stored as `text`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "up" => Some(Self::Up),
            "down" => Some(Self::Down),
            _ => None,
        }
    }
}

/// The sending side a pool keeps.
#[derive(Debug, Clone)]
pub(crate) struct EventSender {
    pool_name: String,
    sender: broadcast::Sender<PoolEvent>,
}

impl EventSender {
    pub fn new(pool_name: String) -> Self {
        Self {
            pool_name,
            sender: broadcast::Sender::new(POOL_EVENT_BUFFER),
        }
    }

    /// Broadcasts an event (dropped if nobody listens).
    pub fn send(&self, kind: PoolEventKind) {
        let _ = self.sender.send(event(&self.pool_name, kind));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PoolEvent> {
        self.sender.subscribe()
    }
}

/// A broadcast of events of several pools (the registry's).
pub(crate) fn channel() -> broadcast::Sender<PoolEvent> {
    broadcast::Sender::new(EVENT_BUFFER)
}

/// An event of `pool_name`, now.
pub(crate) fn event(pool_name: &str, kind: PoolEventKind) -> PoolEvent {
    PoolEvent {
        pool_name: pool_name.to_owned(),
        at: SystemTime::now(),
        kind,
    }
}
