//! Several servers on one control database form a group: each records itself
//! with a heartbeat, follows the definitions the others change (announced on a
//! channel, caught up by a periodic reconcile by version), and one of them at a
//! time — the holder of an advisory lock — leads the singleton jobs (metrics
//! retention, automated tuning).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ConnectionPoolService;
use crate::leadership::Leadership;
use crate::store::group::{BUDGETS_CHANNEL, DEFINITIONS_CHANNEL, Heartbeat, LEADER_LOCK};

/// Who this server is in its group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Its id (`--replica-id`).
    pub replica_id: String,
    /// How long its heartbeat holds (`--replica-lease`).
    pub lease: Duration,
    /// Its gRPC address, as the others may reach it.
    pub grpc_address: String,
    /// Its PostgreSQL front door's address.
    pub pg_address: Option<String>,
}

/// The least time between two rounds of the heartbeat woken early.
const MIN_ROUND_GAP: Duration = Duration::from_millis(100);

/// How often every definition's version is compared (announcements missed
/// while the listening connection was down are caught up by it).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// Joins the group: starts the heartbeat (with its allocation rounds) and the
/// fence on `tasks`, until `token` — before any pool is restored, so that
/// every pool connects within this replica's allocation from the start.
pub fn join(
    registry: &Arc<ConnectionPoolService>,
    options: GroupOptions,
    leadership: &Arc<Leadership>,
    token: &CancellationToken,
    tasks: &TaskTracker,
) {
    let started_at = SystemTime::now();
    registry.store().set_replica(&options.replica_id);
    tracing::info!(replica = %options.replica_id, lease = ?options.lease, "a replica of the group on its control database");
    let renewed = Arc::new(Renewed::default());
    tasks.spawn(heartbeat(
        Arc::clone(registry),
        options.clone(),
        started_at,
        Arc::clone(leadership),
        Arc::clone(&renewed),
        token.clone(),
    ));
    tasks.spawn(fence(
        Arc::clone(registry),
        options.lease,
        renewed,
        token.clone(),
    ));
}

/// Once the stored pools are restored: follows the definitions the other
/// replicas change and bids for leadership, on `tasks` until `token`.
pub fn follow_and_lead(
    registry: &Arc<ConnectionPoolService>,
    lease: Duration,
    leadership: &Arc<Leadership>,
    token: &CancellationToken,
    tasks: &TaskTracker,
) {
    tasks.spawn(follow(Arc::clone(registry), token.clone()));
    tasks.spawn(lead(
        Arc::clone(registry),
        lease,
        Arc::clone(leadership),
        token.clone(),
    ));
}

/// Renews this replica's row every third of its lease, each time followed by
/// an allocation round of every server's budget; removes its row and gives its
/// allocations back at the end.
async fn heartbeat(
    registry: Arc<ConnectionPoolService>,
    options: GroupOptions,
    started_at: SystemTime,
    leadership: Arc<Leadership>,
    renewed: Arc<Renewed>,
    token: CancellationToken,
) {
    let every = options.lease / 3;
    registry.join_group();
    // Since when the heartbeat has been renewed without a miss.
    let mut fresh_since: Option<Instant> = None;
    // Quick rounds while a budget waits for its first allocation (bounded: a
    // replica given nothing because the others hold everything waits a
    // third of a lease like the rest).
    let mut quick = 0;
    loop {
        let beat = Heartbeat {
            id: &options.replica_id,
            grpc_address: &options.grpc_address,
            pg_address: options.pg_address.as_deref(),
            started_at,
            lease: options.lease,
            leader: leadership.leads(),
            pools: u32::try_from(registry.pool_names().len()).unwrap_or(u32::MAX),
        };
        // Each step bounded: a control database that hangs delays the next
        // round, never stops the loop.
        let sent_at = Instant::now();
        let beaten = tokio::time::timeout(every, registry.store().heartbeat(&beat))
            .await
            .unwrap_or(Err(crate::Error::ControlDatabaseTimeout));
        match beaten {
            Ok(()) => {
                // The control database's clock stamped it after `sent_at`.
                renewed.set(sent_at);
                let _ = tokio::time::timeout(every, publish_stats(&registry, &options.replica_id))
                    .await;
                let since = *fresh_since.get_or_insert_with(Instant::now);
                let may_forget = since.elapsed() >= options.lease;
                if may_forget {
                    forget_gone(&registry, every).await;
                }
                registry.refresh_live_replicas().await;
                let round = allocate(&registry, &options.replica_id, may_forget);
                let pending = tokio::time::timeout(every, round).await.unwrap_or(false);
                if pending && quick < 20 {
                    quick += 1;
                    // A budget just learned its server's settings: its
                    // allocation now rather than in a third of a lease.
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            }
            Err(error) => {
                fresh_since = None;
                tracing::warn!(%error, "replica heartbeat not renewed; will retry");
            }
        }
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(every) => {}
            () = registry.budgets_changed().notified() => {
                quick = 0;
                // Woken by a budget or another replica's round: at most one
                // round per MIN_ROUND_GAP however often.
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep_until((sent_at + MIN_ROUND_GAP).into()) => {}
                }
            }
        }
    }
    let store = registry.store();
    if let Err(error) = store.release_allocations(&options.replica_id).await {
        tracing::warn!(%error, "allocations not given back at shutdown (the lease runs out)");
    }
    if let Err(error) = store.leave_group(&options.replica_id).await {
        tracing::warn!(%error, "replica row not removed at shutdown (its lease runs out)");
    }
}

/// When this replica's heartbeat was last renewed (the moment it was sent).
#[derive(Debug)]
struct Renewed(std::sync::Mutex<Instant>);

impl Default for Renewed {
    fn default() -> Self {
        Self(std::sync::Mutex::new(Instant::now()))
    }
}

impl Renewed {
    fn set(&self, at: Instant) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = at;
    }

    fn elapsed(&self) -> Duration {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }
}

/// Half a lease without a renewed heartbeat and this replica holds only its
/// pools' mins on every server: after a whole lease the others count it gone
/// and share the rest of its allocations among themselves, while a replica
/// cut off from the control database alone may still be serving. Checked
/// apart from the heartbeat, whose steps may hang up to their bound.
async fn fence(
    registry: Arc<ConnectionPoolService>,
    lease: Duration,
    renewed: Arc<Renewed>,
    token: CancellationToken,
) {
    let check = (lease / 20).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(check) => {}
        }
        let silent = renewed.elapsed();
        if silent < lease / 2 {
            continue;
        }
        let fenced = registry.budgets().iter().filter(|b| b.fence()).count();
        if fenced > 0 {
            tracing::warn!(
                servers = fenced,
                silent = ?silent,
                "cut off from the group: holding only the pools' min_connections until the control database answers"
            );
        }
    }
}

/// Forgets replicas silent for ten leases (bounded like every step).
async fn forget_gone(registry: &ConnectionPoolService, within: Duration) {
    match tokio::time::timeout(within, registry.store().forget_gone_replicas()).await {
        Ok(Ok(0)) | Err(_) => {}
        Ok(Ok(n)) => tracing::info!(
            replicas = n,
            "gone replicas forgotten (silent for ten leases)"
        ),
        Ok(Err(error)) => tracing::warn!(%error, "gone replicas not forgotten; will retry"),
    }
}

/// Records this replica's stats of its pools (for the group's view).
async fn publish_stats(registry: &ConnectionPoolService, replica: &str) {
    let stats: Vec<(String, crate::PoolStats)> = registry
        .pool_names()
        .into_iter()
        .filter_map(|name| {
            let stats = registry.pool(&name).ok()?.pool_stats();
            Some((name, stats))
        })
        .collect();
    if let Err(error) = registry.store().publish_stats(replica, &stats).await {
        tracing::warn!(%error, "pool stats not published to the group");
    }
}

/// One allocation round of every server's budget this replica has pools on;
/// true if a budget still waits for its first allocation.
async fn allocate(registry: &ConnectionPoolService, replica: &str, may_forget: bool) -> bool {
    let mut pending = false;
    for budget in registry.budgets() {
        pending |= registry.allocate_budget(&budget, replica, may_forget).await;
    }
    pending
}

/// Follows the definitions other replicas change: LISTEN on their channel,
/// reconcile each announced pool at once and every pool by version every few
/// seconds; the connection is opened again when it breaks.
async fn follow(registry: Arc<ConnectionPoolService>, token: CancellationToken) {
    loop {
        if let Err(error) = follow_once(&registry, &token).await {
            tracing::warn!(%error, "not following the group's definitions; will retry");
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn follow_once(
    registry: &Arc<ConnectionPoolService>,
    token: &CancellationToken,
) -> Result<(), crate::Error> {
    let (client, mut connection) = registry.store().direct_connection().await?;
    let (tx, mut announced) = tokio::sync::mpsc::unbounded_channel();
    let rounds = Arc::clone(registry);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            let tokio_postgres::AsyncMessage::Notification(n) = message else {
                continue;
            };
            if n.channel() == BUDGETS_CHANNEL {
                // Another replica lacks what it needs, or gave back what one
                // waits for: this replica's round now.
                let me = rounds.store().replica();
                if n.payload().rsplit('\t').next() != Some(me) {
                    rounds.budgets_changed().notify_one();
                }
            } else {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    let sql = format!("LISTEN {DEFINITIONS_CHANNEL}; LISTEN {BUDGETS_CHANNEL}");
    let listen = client.batch_execute(&sql);
    tokio::time::timeout(Duration::from_secs(10), listen)
        .await
        .map_err(|_| crate::Error::ControlDatabaseTimeout)?
        .map_err(|source| crate::Error::ControlQuery {
            context: "listening for definition changes",
            source,
        })?;
    // What changed while nobody listened.
    registry.reconcile_all().await?;
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            name = announced.recv() => {
                // The driver ended: the connection is gone.
                let Some(name) = name else { return Ok(()) };
                if let Err(error) = registry.reconcile(&name).await {
                    tracing::warn!(pool = %name, %error, "announced change not followed; the next reconcile retries");
                }
            }
            _ = tick.tick() => registry.reconcile_all().await?,
        }
    }
}

/// Bids for the leader's advisory lock every third of the lease; holds it (on
/// a connection of its own, checked as often) while this server runs.
async fn lead(
    registry: Arc<ConnectionPoolService>,
    lease: Duration,
    leadership: Arc<Leadership>,
    token: CancellationToken,
) {
    let every = lease / 3;
    loop {
        if let Err(error) = lead_once(&registry, every, &leadership, &token).await {
            tracing::warn!(%error, "leadership bid failed; will retry");
        }
        leadership.set(false);
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn lead_once(
    registry: &ConnectionPoolService,
    every: Duration,
    leadership: &Leadership,
    token: &CancellationToken,
) -> Result<(), crate::Error> {
    let (client, connection) = registry.store().direct_connection().await?;
    let _abort = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let query = |source| crate::Error::ControlQuery {
        context: "bidding for the group's leadership",
        source,
    };
    loop {
        let won: bool = tokio::time::timeout(
            every,
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]),
        )
        .await
        .map_err(|_| crate::Error::ControlDatabaseTimeout)?
        .map_err(query)?
        .get(0);
        leadership.set(won);
        if won {
            // Held while this session lives: checked every `every`.
            loop {
                tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    () = tokio::time::sleep(every) => {}
                }
                tokio::time::timeout(every, client.simple_query("SELECT 1"))
                    .await
                    .map_err(|_| crate::Error::ControlDatabaseTimeout)?
                    .map_err(query)?;
            }
        }
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Aborts a task when dropped (a connection's driver outliving its client).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
