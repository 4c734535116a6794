//! The admission gate: its permits are the pool's current size, and a checkout
//! takes one before it takes a connection.
//!
//! Free permits are one atomic count, so a checkout that finds one free and a
//! return with nobody waiting touch no lock. A caller that finds none queues; a
//! permit given back while callers queue goes straight to the oldest of them
//! (direct hand-off: a newcomer does not overtake the queue, so nobody starves).
//! A shrink takes free permits away and forgets the rest as they come back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::Shared;

/// Why a caller got no permit.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The gate is closed.
    Closed,
    /// No permit came within the timeout.
    TimedOut,
}

/// The gate. Every count is SeqCst: a return that frees a permit and a caller that
/// queues each read what the other wrote, so neither misses the other.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    free: AtomicU32,
    /// Entries in `queue` (some may be of callers that have given up).
    queued: AtomicU32,
    queue: Mutex<VecDeque<oneshot::Sender<()>>>,
    /// Permits to forget when they come back (a shrink below what was in use).
    pending_forget: AtomicU32,
    /// Callers waiting now.
    waiting: AtomicU32,
    closed: AtomicBool,
}

impl Gate {
    /// A gate of `permits` permits.
    pub fn new(permits: u32) -> Self {
        Self {
            free: AtomicU32::new(permits),
            ..Self::default()
        }
    }

    /// Callers waiting for a permit now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(SeqCst)
    }

    /// Takes a permit: at once when one is free and nobody queues (no lock, no
    /// timer), else in turn, waiting up to `timeout`. Returns whether it waited.
    /// The permit goes back with [`Gate::release`].
    pub async fn admit(&self, timeout: Duration) -> Result<bool, Refused> {
        if self.closed.load(SeqCst) {
            return Err(Refused::Closed);
        }
        if self.queued.load(SeqCst) == 0 && self.take_free() {
            return Ok(false);
        }
        self.wait(timeout).await.map(|()| true)
    }

    /// Gives a permit back: forgotten if a shrink is pending, else to the oldest
    /// caller waiting, else free.
    pub fn release(&self) {
        let forget = self
            .pending_forget
            .fetch_update(SeqCst, SeqCst, |p| p.checked_sub(1))
            .is_ok();
        if !forget {
            self.add(1);
        }
    }

    /// Moves the gate from `from` to `to` permits: a grow first cancels pending
    /// forgets (those permits are still out with callers), a shrink takes free
    /// permits and forgets the rest when they come back.
    pub fn resize(&self, from: u32, to: u32) {
        if to > from {
            let mut grow = to - from;
            if let Ok(pending) = self
                .pending_forget
                .fetch_update(SeqCst, SeqCst, |p| Some(p - p.min(grow)))
            {
                grow -= pending.min(grow);
            }
            if grow > 0 {
                self.add(grow);
            }
        } else if to < from {
            let shrink = from - to;
            let taken = self
                .free
                .fetch_update(SeqCst, SeqCst, |f| Some(f - f.min(shrink)))
                .map_or(0, |f| f.min(shrink));
            self.pending_forget.fetch_add(shrink - taken, SeqCst);
        }
    }

    /// Closes the gate: every waiting caller and every later one is refused.
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
        let mut queue = self.lock();
        queue.clear();
        self.queued.store(0, SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<oneshot::Sender<()>>> {
        // Nothing panics while holding it; a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_free(&self) -> bool {
        self.free
            .fetch_update(SeqCst, SeqCst, |f| f.checked_sub(1))
            .is_ok()
    }

    fn add(&self, permits: u32) {
        self.free.fetch_add(permits, SeqCst);
        if self.queued.load(SeqCst) > 0 {
            self.hand_off(&mut self.lock());
        }
    }

    /// Gives free permits to the oldest callers still waiting.
    fn hand_off(&self, queue: &mut VecDeque<oneshot::Sender<()>>) {
        while let Some(next) = queue.front() {
            if !next.is_closed() {
                if !self.take_free() {
                    break;
                }
                let next = queue.pop_front().expect("front exists");
                if next.send(()).is_err() {
                    // It gave up just now: the permit is free again.
                    self.free.fetch_add(1, SeqCst);
                }
            } else {
                queue.pop_front();
            }
        }
        self.queued.store(queue.len() as u32, SeqCst);
    }

    async fn wait(&self, timeout: Duration) -> Result<(), Refused> {
        let receiver = {
            let mut queue = self.lock();
            if self.closed.load(SeqCst) {
                return Err(Refused::Closed);
            }
            self.hand_off(&mut queue);
            if queue.is_empty() && self.take_free() {
                return Ok(());
            }
            let (sender, receiver) = oneshot::channel();
            queue.push_back(sender);
            self.queued.store(queue.len() as u32, SeqCst);
            // A permit returned between the two loads above and the store went to
            // `free` without seeing this caller: hand it over now.
            self.hand_off(&mut queue);
            receiver
        };
        let mut turn = Turn {
            gate: self,
            receiver,
            admitted: false,
        };
        self.waiting.fetch_add(1, SeqCst);
        let got = tokio::time::timeout(timeout, &mut turn.receiver).await;
        self.waiting.fetch_sub(1, SeqCst);
        match got {
            Ok(Ok(())) => {
                turn.admitted = true;
                Ok(())
            }
            Ok(Err(_)) => Err(Refused::Closed),
            Err(_) => Err(Refused::TimedOut),
        }
    }
}

/// A caller's place in the queue. Dropped without being admitted (timed out, or
/// the caller went away), it gives back a permit handed to it at the last moment.
struct Turn<'a> {
    gate: &'a Gate,
    receiver: oneshot::Receiver<()>,
    admitted: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.admitted {
            self.receiver.close();
            if self.receiver.try_recv().is_ok() {
                self.gate.release();
            }
        }
    }
}

/// A permit held with its pool: given back to the gate on drop.
pub(crate) struct Permit(Arc<Shared>);

impl Permit {
    /// Wraps a permit `shared`'s gate admitted.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self(shared)
    }
}

impl std::ops::Deref for Permit {
    type Target = Arc<Shared>;

    fn deref(&self) -> &Arc<Shared> {
        &self.0
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.gate.release();
    }
}

impl Shared {
    /// Moves the admission gate to `to` permits.
    pub(super) fn set_target(&self, to: u32) {
        let from = self.target_size.swap(to, SeqCst);
        self.gate.resize(from, to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(50);
    const LONG: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn permits_are_taken_and_given_back() {
        let gate = Gate::new(2);
        assert_eq!(gate.admit(SHORT).await, Ok(false));
        assert_eq!(gate.admit(SHORT).await, Ok(false));
        assert_eq!(gate.admit(SHORT).await, Err(Refused::TimedOut));
        assert_eq!(gate.waiting(), 0);
        gate.release();
        assert_eq!(gate.admit(SHORT).await, Ok(false));
    }

    #[tokio::test]
    async fn a_returned_permit_goes_to_the_oldest_waiter_not_a_newcomer() {
        let gate = Arc::new(Gate::new(1));
        assert_eq!(gate.admit(SHORT).await, Ok(false));
        let mut order = Vec::new();
        for i in 0..3 {
            let waiter = Arc::clone(&gate);
            order.push(tokio::spawn(async move { (i, waiter.admit(LONG).await) }));
            while gate.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        // A permit returned now belongs to waiter 0: a newcomer finds none.
        gate.release();
        assert_eq!(gate.admit(SHORT).await, Err(Refused::TimedOut));
        let (first, got) = order.remove(0).await.expect("waiter");
        assert_eq!((first, got), (0, Ok(true)));
        gate.release();
        assert_eq!(order.remove(0).await.expect("waiter"), (1, Ok(true)));
        gate.release();
        assert_eq!(order.remove(0).await.expect("waiter"), (2, Ok(true)));
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_loses_no_permit() {
        let gate = Arc::new(Gate::new(1));
        assert_eq!(gate.admit(SHORT).await, Ok(false));
        // One waiter gives up (timeout), another is cancelled (dropped).
        assert_eq!(gate.admit(SHORT).await, Err(Refused::TimedOut));
        let cancelled = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.admit(LONG).await })
        };
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        assert!(cancelled.await.is_err());
        gate.release();
        assert_eq!(gate.admit(SHORT).await, Ok(false), "the permit is free");
        assert_eq!(gate.admit(SHORT).await, Err(Refused::TimedOut), "only one");
    }

    #[tokio::test]
    async fn a_shrink_forgets_permits_out_with_callers_and_a_grow_cancels_that() {
        let gate = Gate::new(3);
        for _ in 0..3 {
            assert_eq!(gate.admit(SHORT).await, Ok(false));
        }
        gate.resize(3, 1);
        gate.release();
        gate.release();
        assert_eq!(
            gate.admit(SHORT).await,
            Err(Refused::TimedOut),
            "both forgotten"
        );
        gate.release();
        assert_eq!(gate.admit(SHORT).await, Ok(false));
        gate.release();
        gate.resize(1, 3);
        for _ in 0..3 {
            assert_eq!(gate.admit(SHORT).await, Ok(false));
        }
        // Shrink by 2 with all three out, then grow by 1 before they return: one
        // of the three is forgotten, two come back free.
        gate.resize(3, 1);
        gate.resize(1, 2);
        gate.release();
        gate.release();
        gate.release();
        assert_eq!(gate.admit(SHORT).await, Ok(false));
        assert_eq!(gate.admit(SHORT).await, Ok(false));
        assert_eq!(gate.admit(SHORT).await, Err(Refused::TimedOut));
    }

    #[tokio::test]
    async fn closing_refuses_waiters_and_newcomers() {
        let gate = Arc::new(Gate::new(1));
        assert_eq!(gate.admit(SHORT).await, Ok(false));
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.admit(LONG).await })
        };
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        gate.close();
        assert_eq!(waiter.await.expect("waiter"), Err(Refused::Closed));
        gate.release();
        assert_eq!(gate.admit(SHORT).await, Err(Refused::Closed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn under_contention_no_more_than_the_permits_are_held_and_none_are_lost() {
        let gate = Arc::new(Gate::new(3));
        let held = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (gate, held, most) = (Arc::clone(&gate), Arc::clone(&held), Arc::clone(&most));
            tasks.push(tokio::spawn(async move {
                for i in 0..500u32 {
                    let wait = if i % 7 == 0 {
                        Duration::from_micros(50)
                    } else {
                        LONG
                    };
                    if gate.admit(wait).await.is_err() {
                        continue;
                    }
                    let now = held.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    tokio::task::yield_now().await;
                    held.fetch_sub(1, SeqCst);
                    gate.release();
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(most.load(SeqCst), 3);
        for _ in 0..3 {
            assert_eq!(gate.admit(SHORT).await, Ok(false), "every permit is back");
        }
        assert_eq!(gate.admit(SHORT).await, Err(Refused::TimedOut));
    }
}
