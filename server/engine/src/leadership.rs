//! Whether this server leads its group's singleton jobs (metrics retention,
//! automated tuning): set by the group's bid for an advisory lock
//! ([`crate::group`]), read by the jobs.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this server leads the group's singleton jobs. A server outside a
/// group leads from the start.
#[derive(Debug)]
pub struct Leadership {
    leads: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Default for Leadership {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Leadership {
    /// Leading (`true`) or not, from the start.
    pub fn new(leads: bool) -> Self {
        Self {
            leads: AtomicBool::new(leads),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Whether this server leads now.
    pub fn leads(&self) -> bool {
        self.leads.load(Ordering::SeqCst)
    }

    /// Returns once this server leads.
    pub async fn until_leader(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.leads() {
                return;
            }
            changed.await;
        }
    }

    pub(crate) fn set(&self, leads: bool) {
        if self.leads.swap(leads, Ordering::SeqCst) != leads {
            tracing::info!(leads, "group leadership changed");
            self.changed.notify_waiters();
        }
    }
}
