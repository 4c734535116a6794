//! The admission gate: a semaphore whose permits are the pool's current size.
//! A checkout takes a permit before it takes a connection; a shrink forgets
//! permits (those out with callers when they come back).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};

use super::Shared;

/// A permit of the admission gate; given back (or forgotten, after a shrink) on drop.
pub(crate) struct GatePermit {
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let forget = self
                .shared
                .pending_forget
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
                .is_ok();
            if forget {
                permit.forget();
            }
        }
    }
}

/// Counts a caller as waiting while it exists.
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a caller got no permit.
pub(super) enum Refused {
    /// The pool is closed.
    Closed,
    /// Every permit stayed taken for the whole timeout.
    TimedOut,
}

/// Takes a permit: at once if one is free (no timer), else waiting up to
/// `timeout`. Returns it and whether the caller had to wait.
pub(super) async fn admit(
    shared: &Arc<Shared>,
    timeout: Duration,
) -> Result<(GatePermit, bool), Refused> {
    let (permit, waited) = match Arc::clone(&shared.gate).try_acquire_owned() {
        Ok(permit) => (permit, false),
        Err(TryAcquireError::Closed) => return Err(Refused::Closed),
        Err(TryAcquireError::NoPermits) => {
            let _waiting = Waiting::new(&shared.waiting);
            match tokio::time::timeout(timeout, Arc::clone(&shared.gate).acquire_owned()).await {
                Ok(Ok(permit)) => (permit, true),
                Ok(Err(_)) => return Err(Refused::Closed),
                Err(_) => return Err(Refused::TimedOut),
            }
        }
    };
    let permit = GatePermit {
        permit: Some(permit),
        shared: Arc::clone(shared),
    };
    Ok((permit, waited))
}

impl Shared {
    /// Moves the admission gate to `to` permits.
    pub(super) fn set_target(&self, to: u32) {
        let from = self.target_size.swap(to, Ordering::AcqRel);
        if to > from {
            let mut grow = to - from;
            // Un-forget permits first: they are still out with callers.
            let _ = self
                .pending_forget
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                    let cancel = pending.min(grow);
                    Some(pending - cancel)
                })
                .map(|pending| grow -= pending.min(grow));
            if grow > 0 {
                self.gate.add_permits(grow as usize);
            }
        } else if to < from {
            let shrink = from - to;
            let forgotten = self.gate.forget_permits(shrink as usize) as u32;
            self.pending_forget
                .fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
    }
}
