//! One connection budget per PostgreSQL server, shared by the pools that point at
//! it: max_connections − superuser_reserved_connections (− reserved_connections
//! on PostgreSQL 16+) − the server's `--connection-reserve`, as read from the
//! server on every connection a pool opens.
//!
//! Two mechanisms work together:
//! - **Slots** (the hard limit): every pooled connection holds one slot for its
//!   whole life; opening a connection waits for a free slot (within the acquire
//!   deadline). The pools' backends on the server never exceed the budget, so no
//!   pool meets SQLSTATE 53300 "too many clients" because of another pool.
//! - **Shares** (the fair split): [`shares`] gives every pool its
//!   min_connections, then splits the rest by demand (what each pool needs to
//!   sit midway between its load thresholds), then lets pools keep their current
//!   size, then grow toward max. A pool's size never exceeds its share; a pool
//!   above it after a rebalance shrinks at once, which frees the slots another
//!   pool was granted.
//!
//! Health checks take a slot too (their connection is short); the reserve is
//! left to everything else that connects to the server.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::conninfo::ServerKey;

/// A pool as its budget sees it (the pool module implements it, so that the
/// budget does not depend on the pool).
pub(crate) trait Member: Send + Sync {
    /// The pool's name.
    fn pool_name(&self) -> &str;
    /// Its configured min_connections.
    fn min_connections(&self) -> u32;
    /// What it brings to the split now.
    fn claim(&self) -> Claim;
    /// Its share after a rebalance ([`UNKNOWN`]: no limit known).
    fn set_share(&self, share: u32);
    /// Closed pools leave the budget.
    fn is_closed(&self) -> bool;
    /// Its demand now: connections checked out plus checkouts waiting.
    fn demand(&self) -> u32;
}

/// A budget that is not known yet (no connection has reported the server's
/// settings): slots are not limited.
pub(crate) const UNKNOWN: u32 = u32::MAX;

/// How a budget stands with its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grouping {
    /// Not in a group: the server's budget is this server's.
    Alone,
    /// Waiting for the group's first allocation round: no connection.
    Awaiting,
    /// No replica of the group has read the server's settings: one
    /// connection, to read them.
    Probing,
}

/// The limit of a budget: what the server allows (`available`), capped by the
/// group's `allocation` (an allocation made from what another replica read
/// of the server holds before this one has read it); in a group with no
/// allocation yet, none, or the one connection that reads the settings.
fn group_limit(available: u32, allocation: u32, grouping: Grouping) -> u32 {
    match (allocation, grouping) {
        (UNKNOWN, Grouping::Alone) => available,
        (UNKNOWN, Grouping::Awaiting) => 0,
        (UNKNOWN, Grouping::Probing) => available.min(1),
        (allocation, _) => available.min(allocation),
    }
}

/// The server's settings a budget comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// `max_connections`.
    pub max_connections: u32,
    /// `superuser_reserved_connections` plus, on PostgreSQL 16+,
    /// `reserved_connections`.
    pub reserved_connections: u32,
}

impl ServerLimits {
    /// What pools may use together when `reserve` connections are left to
    /// everything else: max_connections − reserved − reserve.
    pub fn available(&self, reserve: u32) -> u32 {
        self.max_connections
            .saturating_sub(self.reserved_connections)
            .saturating_sub(reserve)
    }
}

/// What one pool brings to the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Claim {
    /// Its min_connections: always granted.
    pub min: u32,
    /// Its max_connections: never exceeded.
    pub max: u32,
    /// Its current size.
    pub size: u32,
    /// What its demand needs (see `pool::sizing::need`).
    pub need: u32,
}

/// Splits `limit` connections among `claims`; the shares sum to at most `limit`
/// (unless the mins alone exceed it, when each still gets its min).
///
/// Rounds, each filling what the previous left: every pool's min; the rest of
/// each need, in proportion to it when they do not all fit; the current sizes
/// (so that a rebalance moves only what demand asks for); the rest up to max.
pub fn shares(limit: u32, claims: &[Claim]) -> Vec<u32> {
    let mut given: Vec<u32> = claims.iter().map(|c| c.min.min(c.max.max(c.min))).collect();
    let mut left = limit.saturating_sub(given.iter().sum());
    for round in [
        (|c: &Claim| c.need) as fn(&Claim) -> u32,
        |c: &Claim| c.size,
        |c: &Claim| c.max,
    ] {
        let wants: Vec<u32> = claims
            .iter()
            .zip(&given)
            .map(|(c, g)| round(c).min(c.max).saturating_sub(*g))
            .collect();
        let more = fill(left, &wants);
        for (g, m) in given.iter_mut().zip(&more) {
            *g += m;
        }
        left -= more.iter().sum::<u32>();
    }
    given
}

/// Gives each of `wants` its whole amount if `total` covers them all, else a
/// part in proportion to it (largest remainders get the units left by rounding).
fn fill(total: u32, wants: &[u32]) -> Vec<u32> {
    let sum: u64 = wants.iter().map(|w| u64::from(*w)).sum();
    if sum <= u64::from(total) {
        return wants.to_vec();
    }
    let mut parts: Vec<(u32, u64, usize)> = wants
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let exact = u64::from(*w) * u64::from(total);
            ((exact / sum) as u32, exact % sum, i)
        })
        .collect();
    let mut left = total - parts.iter().map(|p| p.0).sum::<u32>();
    let mut by_remainder: Vec<usize> = (0..parts.len()).collect();
    by_remainder.sort_by_key(|i| (std::cmp::Reverse(parts[*i].1), *i));
    for i in by_remainder {
        if left == 0 {
            break;
        }
        if parts[i].0 < wants[i] {
            parts[i].0 += 1;
            left -= 1;
        }
    }
    parts.into_iter().map(|p| p.0).collect()
}

/// A pool's view of its budget, for stats.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BudgetStats {
    /// The server (`host:port`, comma-separated for several hosts).
    pub server: String,
    /// The budget in connections; 0 while it is not known yet.
    pub limit: u32,
    /// Connections all its pools hold now.
    pub in_use: u32,
    /// Pools sharing it.
    pub pools: u32,
    /// This pool's share: the size it may reach now.
    pub share: u32,
    /// Whether the budget held this pool below what its demand asked for in the
    /// last second.
    pub held_back: bool,
}

/// Why a min_connections does not fit a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRefusal {
    /// The server.
    pub server: String,
    /// Its budget.
    pub limit: u32,
    /// max_connections as read from the server.
    pub max_connections: u32,
    /// Reserved connections as read from the server.
    pub reserved_connections: u32,
    /// The server's `--connection-reserve`.
    pub reserve: u32,
    /// What the other pools there keep as their min_connections.
    pub others_min: u32,
    /// The min_connections asked for.
    pub min: u32,
    /// The live replicas of the group the budget is split among (1 alone).
    pub replicas: u32,
}

impl std::fmt::Display for BudgetRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "min_connections {} does not fit the connection budget of {}: {} = (max_connections {} \
             - reserved {} - connection reserve {}){}, and the other pools there keep {} as their \
             min_connections",
            self.min,
            self.server,
            self.limit,
            self.max_connections,
            self.reserved_connections,
            self.reserve,
            if self.replicas > 1 {
                format!(
                    " / {} live replicas, each holding every pool's min",
                    self.replicas
                )
            } else {
                String::new()
            },
            self.others_min
        )
    }
}

/// The connection budget of one PostgreSQL server.
pub struct ServerBudget {
    server: ServerKey,
    reserve: u32,
    limits: Mutex<Option<ServerLimits>>,
    /// The budget in connections ([`UNKNOWN`] until read): what the server
    /// allows, capped by this replica's allocation in its group.
    limit: AtomicU32,
    /// What the server allows the pools ([`UNKNOWN`] until read).
    available: AtomicU32,
    /// This replica's allocation of the server in its group ([`UNKNOWN`]: none
    /// yet, the whole budget).
    allocation: AtomicU32,
    /// Replicas sharing the server's budget (1 outside a group), from its
    /// allocation round: each holds its pools' min_connections.
    replicas: AtomicU32,
    /// Live replicas of the group, from their heartbeats (a replica that has
    /// no allocation here yet will hold the mins too).
    live: AtomicU32,
    /// Whether this server runs in a group: until the group's first
    /// allocation, no connection (or, when no replica has read the server's
    /// settings, `probing`: the one that reads them).
    grouped: AtomicBool,
    probing: AtomicBool,
    /// Woken when the server's settings become known (the group's allocation
    /// round is then wanted at once).
    known: Mutex<Option<Arc<Notify>>>,

    /// Slots taken: connections open (or opening) in every pool here.
    in_use: AtomicU32,
    freed: Notify,
    members: Mutex<Vec<Weak<dyn Member>>>,
}

impl std::fmt::Debug for ServerBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBudget")
            .field("server", &self.server)
            .field("limit", &self.limit.load(Ordering::Relaxed))
            .field("in_use", &self.in_use.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A slot of a budget, held by one connection; freed on drop.
pub(crate) struct BudgetSlot(Arc<ServerBudget>);

impl Drop for BudgetSlot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

impl ServerBudget {
    /// A budget for `server`, `reserve` connections kept free besides the
    /// server's own reserved ones. Unknown until a connection reports the
    /// server's settings.
    pub fn new(server: ServerKey, reserve: u32) -> Arc<Self> {
        Arc::new(Self {
            server,
            reserve,
            limits: Mutex::new(None),
            limit: AtomicU32::new(UNKNOWN),
            available: AtomicU32::new(UNKNOWN),
            allocation: AtomicU32::new(UNKNOWN),
            replicas: AtomicU32::new(1),
            live: AtomicU32::new(1),
            grouped: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            known: Mutex::new(None),
            in_use: AtomicU32::new(0),
            freed: Notify::new(),
            members: Mutex::new(Vec::new()),
        })
    }

    /// The server this budget is for.
    pub fn server(&self) -> &ServerKey {
        &self.server
    }

    /// The budget in connections, once known.
    pub fn limit(&self) -> Option<u32> {
        let limit = self.limit.load(Ordering::Acquire);
        (limit != UNKNOWN).then_some(limit)
    }

    /// The server's settings, once a connection has read them.
    pub fn limits(&self) -> Option<ServerLimits> {
        *self.limits.lock().expect("limits lock")
    }

    /// Connections the budget's pools hold now.
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Acquire)
    }

    /// Records the server's settings (read on each new connection); a change
    /// rebalances the shares and wakes connections waiting for a slot.
    pub(crate) fn observe(&self, limits: ServerLimits) {
        {
            let mut known = self.limits.lock().expect("limits lock");
            if *known == Some(limits) {
                return;
            }
            *known = Some(limits);
        }
        let limit = limits.available(self.reserve).max(1);
        let before = self.available.swap(limit, Ordering::AcqRel);
        if before != limit {
            tracing::info!(
                server = %self.server, limit,
                max_connections = limits.max_connections,
                reserved = limits.reserved_connections,
                reserve = self.reserve,
                "connection budget"
            );
        }
        self.apply_limit();
        if let Some(known) = &*self.known.lock().expect("known lock") {
            known.notify_one();
        }
    }

    /// Puts the budget under its group's allocation: until the first one, no
    /// connection ([`Self::probe`] allows the one that reads the server's
    /// settings when no replica has); `notify` is woken when they become
    /// known (or change).
    pub fn join_group(&self, notify: Arc<Notify>) {
        *self.known.lock().expect("known lock") = Some(notify);
        if !self.grouped.swap(true, Ordering::AcqRel) {
            self.apply_limit();
        }
    }

    /// No replica of the group has read the server's settings: one
    /// connection may open (to read them) before the first allocation.
    pub fn probe(&self) {
        if !self.probing.swap(true, Ordering::AcqRel) {
            self.apply_limit();
        }
    }

    /// The budget the server allows the pools (all replicas together), once known.
    pub fn available(&self) -> Option<u32> {
        let available = self.available.load(Ordering::Acquire);
        (available != UNKNOWN).then_some(available)
    }

    /// Caps the budget at this replica's `allocation` in its group of
    /// `replicas` live replicas (set by the group's allocation round; the
    /// slots beyond it are not given).
    pub fn set_allocation(&self, allocation: u32, replicas: u32) {
        self.replicas.store(replicas.max(1), Ordering::Release);
        if self.allocation.swap(allocation, Ordering::AcqRel) != allocation {
            self.apply_limit();
        }
    }

    /// Whether the budget waits for its group's first allocation.
    pub fn awaits_allocation(&self) -> bool {
        self.grouped.load(Ordering::Acquire) && self.allocation().is_none()
    }

    /// Cut off from its group: this replica keeps only its pools'
    /// min_connections here (what the others, once its lease has run out,
    /// leave it), until an allocation round reaches the group again. Returns
    /// whether the allocation was lowered.
    pub fn fence(&self) -> bool {
        let Some(allocation) = self.allocation() else {
            return false;
        };
        let mins = self.min_total();
        if allocation <= mins {
            return false;
        }
        self.allocation.store(mins, Ordering::Release);
        self.apply_limit();
        true
    }

    /// The group's live replicas, as the heartbeats tell.
    pub fn set_live_replicas(&self, live: u32) {
        self.live.store(live.max(1), Ordering::Release);
    }

    /// This replica's allocation, if its group set one.
    pub fn allocation(&self) -> Option<u32> {
        let allocation = self.allocation.load(Ordering::Acquire);
        (allocation != UNKNOWN).then_some(allocation)
    }

    /// The demand of the pools here: connections checked out plus waiting.
    pub fn demand(&self) -> u32 {
        self.members().iter().map(|m| m.demand()).sum()
    }

    /// The sum of the pools' min_connections.
    pub fn min_total(&self) -> u32 {
        self.members().iter().map(|m| m.min_connections()).sum()
    }

    /// The limit in force: the server's budget, capped by the allocation (in
    /// a group without one yet: none, or the one that reads the settings).
    fn apply_limit(&self) {
        let grouping = match (
            self.grouped.load(Ordering::Acquire),
            self.probing.load(Ordering::Acquire),
        ) {
            (false, _) => Grouping::Alone,
            (true, false) => Grouping::Awaiting,
            (true, true) => Grouping::Probing,
        };
        let limit = group_limit(
            self.available.load(Ordering::Acquire),
            self.allocation.load(Ordering::Acquire),
            grouping,
        );
        self.limit.store(limit, Ordering::Release);
        self.rebalance();
        self.freed.notify_waiters();
    }

    /// Takes a slot, waiting for one to be freed (the caller bounds the wait).
    pub(crate) async fn slot(self: &Arc<Self>) -> BudgetSlot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let taken = self
                .in_use
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.limit.load(Ordering::Acquire)).then_some(n + 1)
                })
                .is_ok();
            if taken {
                return BudgetSlot(Arc::clone(self));
            }
            freed.await;
        }
    }

    /// Adds a pool to the budget and rebalances.
    pub(crate) fn join(&self, pool: Weak<dyn Member>) {
        self.members.lock().expect("members lock").push(pool);
        self.rebalance();
    }

    /// The pools sharing the budget now (closed ones are dropped).
    fn members(&self) -> Vec<Arc<dyn Member>> {
        let mut members = self.members.lock().expect("members lock");
        members.retain(|m| m.upgrade().is_some_and(|s| !s.is_closed()));
        members.iter().filter_map(Weak::upgrade).collect()
    }

    /// Recomputes every member's share from the members' claims.
    pub(crate) fn rebalance(&self) {
        let members = self.members();
        let limit = self.limit.load(Ordering::Acquire);
        // Waiting for the group's first allocation (a round away), the one
        // slot is no share to size pools by: they wait for slots meanwhile.
        if limit == UNKNOWN || self.awaits_allocation() {
            for m in &members {
                m.set_share(UNKNOWN);
            }
            return;
        }
        let claims: Vec<Claim> = members.iter().map(|m| m.claim()).collect();
        for (m, share) in members.iter().zip(shares(limit, &claims)) {
            m.set_share(share);
        }
    }

    /// Whether a pool named `name` with `min` connections fits beside the other
    /// pools (a pool of that name being replaced does not count). Passes while
    /// the budget is unknown.
    pub fn check_min(&self, name: &str, min: u32) -> Result<(), BudgetRefusal> {
        let Some(limits) = *self.limits.lock().expect("limits lock") else {
            return Ok(());
        };
        // Every live replica of a group holds each pool's min: the server's
        // budget is split among them.
        let replicas = self
            .replicas
            .load(Ordering::Acquire)
            .max(self.live.load(Ordering::Acquire))
            .max(1);
        let limit = limits.available(self.reserve).max(1) / replicas;
        let others_min: u32 = self
            .members()
            .iter()
            .filter(|m| m.pool_name() != name)
            .map(|m| m.min_connections())
            .sum();
        if others_min + min <= limit {
            return Ok(());
        }
        Err(BudgetRefusal {
            server: self.server.to_string(),
            limit,
            max_connections: limits.max_connections,
            reserved_connections: limits.reserved_connections,
            reserve: self.reserve,
            others_min,
            min,
            replicas,
        })
    }

    /// Stats for one member.
    pub(crate) fn stats_for(&self, share: u32, held_back: bool) -> BudgetStats {
        BudgetStats {
            server: self.server.to_string(),
            limit: self.limit().unwrap_or(0),
            in_use: self.in_use(),
            pools: self.members().len() as u32,
            share: if share == UNKNOWN { 0 } else { share },
            held_back,
        }
    }
}

/// A pool's budget state, kept in its shared state.
#[derive(Debug)]
pub(crate) struct Membership {
    pub budget: Arc<ServerBudget>,
    /// Whether the budget held the pool back in the last second.
    pub held_back: AtomicBool,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn claim(min: u32, max: u32, size: u32, need: u32) -> Claim {
        Claim {
            min,
            max,
            size,
            need,
        }
    }

    #[test]
    fn uncontended_pools_keep_their_size_and_may_grow_to_max() {
        let s = shares(100, &[claim(2, 20, 5, 4), claim(2, 20, 2, 2)]);
        assert_eq!(s, vec![20, 20]);
    }

    #[test]
    fn contended_shares_follow_demand_and_keep_every_min() {
        // 22 connections, needs 8, 8 and 15 above mins of 2.
        let s = shares(
            22,
            &[claim(2, 20, 2, 8), claim(2, 20, 2, 8), claim(2, 20, 2, 15)],
        );
        assert_eq!(s.iter().sum::<u32>(), 22);
        assert!(s.iter().all(|x| *x >= 2), "{s:?}");
        assert!(f64::from(s[2]) >= 1.5 * f64::from(s[0]), "{s:?}");
        assert_eq!(s, vec![6, 6, 10]);
    }

    #[test]
    fn a_big_idle_pool_gives_way_to_a_busy_one() {
        // A grew to 20 and now needs 3; B needs 15.
        let s = shares(22, &[claim(2, 20, 20, 3), claim(2, 20, 2, 15)]);
        assert_eq!(s, vec![7, 15]);
    }

    #[test]
    fn idle_pools_of_min_zero_take_only_what_is_left() {
        let mut claims = vec![claim(0, 10, 0, 0); 300];
        claims.push(claim(2, 20, 2, 15));
        let s = shares(22, &claims);
        assert_eq!(s.iter().sum::<u32>(), 22);
        assert_eq!(s[300], 15, "the busy pool gets what it needs");
    }

    #[test]
    fn mins_above_the_limit_are_still_given() {
        let s = shares(3, &[claim(2, 5, 2, 2), claim(2, 5, 2, 2)]);
        assert_eq!(s, vec![2, 2]);
    }

    #[tokio::test]
    async fn a_grouped_budget_opens_one_connection_before_its_allocation() {
        let budget = ServerBudget::new(ServerKey::default(), 0);
        budget.join_group(Arc::new(Notify::new()));
        // Before the group's first round: nothing.
        assert_eq!(budget.limit(), Some(0));
        let none = tokio::time::timeout(Duration::from_millis(50), budget.slot()).await;
        assert!(none.is_err(), "a slot before the group's first round");
        // Nobody has read the settings: the one connection that reads them.
        budget.probe();
        assert_eq!(budget.limit(), Some(1));
        let first = budget.slot().await;
        let second = tokio::time::timeout(Duration::from_millis(50), budget.slot()).await;
        assert!(second.is_err(), "a second slot before the allocation");
        budget.observe(ServerLimits {
            max_connections: 100,
            reserved_connections: 3,
        });
        assert_eq!(budget.limit(), Some(1), "still no allocation");
        budget.set_allocation(12, 2);
        assert_eq!(budget.limit(), Some(12));
        let more = budget.slot().await;
        drop((first, more));
        // Outside a group the budget is the server's from the first read.
        let alone = ServerBudget::new(ServerKey::default(), 0);
        assert_eq!(alone.limit(), None);
        alone.observe(ServerLimits {
            max_connections: 100,
            reserved_connections: 3,
        });
        assert_eq!(alone.limit(), Some(97));
    }

    #[test]
    fn an_allocation_from_the_group_caps_before_the_settings_are_read() {
        use Grouping::{Alone, Awaiting, Probing};
        assert_eq!(group_limit(UNKNOWN, 7, Awaiting), 7);
        assert_eq!(group_limit(50, 7, Probing), 7);
        assert_eq!(group_limit(5, 7, Awaiting), 5);
        assert_eq!(group_limit(UNKNOWN, UNKNOWN, Awaiting), 0);
        assert_eq!(group_limit(UNKNOWN, UNKNOWN, Probing), 1);
        assert_eq!(group_limit(50, UNKNOWN, Probing), 1);
        assert_eq!(group_limit(50, UNKNOWN, Alone), 50);
        assert_eq!(group_limit(UNKNOWN, UNKNOWN, Alone), UNKNOWN);
    }

    #[test]
    fn fill_is_proportional_and_exact() {
        assert_eq!(fill(10, &[1, 2, 3]), vec![1, 2, 3]);
        assert_eq!(fill(4, &[2, 2, 4]), vec![1, 1, 2]);
        assert_eq!(fill(5, &[1, 1, 1, 1, 1, 1, 1]).iter().sum::<u32>(), 5);
        assert_eq!(fill(0, &[3, 3]), vec![0, 0]);
    }
}
