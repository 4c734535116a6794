//! `poolplane.v1.PoolService`: validate and convert, call the engine, map the result.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use poolplane::{
    AdvancedPoolConfig, ConnectionPoolService, ControlStore, PoolEvent, PoolEventKind,
};
use poolplane_proto::v1::pool_service_server;
use poolplane_proto::v1::{self as pb};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use super::auth::{Caller, Role};
use super::limits::{
    MAX_HISTORY_RANGE, MAX_POOL_NAMES, MAX_WATCH_INTERVAL_MS, StreamSlot, StreamSlots,
};
use super::{convert, status};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Metrics history points one call may ask for.
const MAX_POINTS: u32 = 10_000;
/// Records one history listing (scaling events, config changes) may ask for.
const MAX_HISTORY_RECORDS: u32 = 1_000;

/// Snapshots or events a watcher may have queued before it skips (stats) or waits
/// (events; the broadcast then reports what it missed).
const WATCH_BUFFER: usize = 16;

/// The tonic implementation of `poolplane.v1.PoolService`.
#[derive(Debug, Clone)]
pub struct PoolService {
    registry: Arc<ConnectionPoolService>,
    shutdown: CancellationToken,
    watchers: Arc<AtomicUsize>,
    /// The latest stats snapshot of each watched pool, shared by its streams.
    snapshots: Arc<Snapshots>,
    limits: LoadTestLimits,
    slots: StreamSlots,
    /// Every watch and load-test task, joined at shutdown.
    tasks: TaskTracker,
    /// The PostgreSQL front door, if it is on (ListClients, KillClient).
    front_door: Option<Arc<poolplane_wire::FrontDoor>>,
    /// This server's id in its group (ListReplicas marks it).
    replica_id: Option<String>,
}

pub use poolplane::LoadTestLimits;

/// Counts a running watch task while it exists.
struct WatcherGuard(Arc<AtomicUsize>);

impl WatcherGuard {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PoolService {
    /// The newest `limit` (0: 20) history records of a pool, read by `read` and
    /// converted to their messages.
    async fn history<R, P>(
        &self,
        pool_name: &str,
        limit: u32,
        read: impl AsyncFnOnce(&ControlStore, &str, u32) -> Result<Vec<R>, poolplane::Error>,
        convert: fn(&R) -> P,
    ) -> Result<Vec<P>, Status> {
        let limit = history_limit(pool_name, limit)?;
        let records = read(self.registry.store(), pool_name, limit)
            .await
            .map_err(status::from_engine)?;
        Ok(records.iter().map(convert).collect())
    }

    /// A service over the registry; watch streams end when `shutdown` is cancelled.
    pub fn new(
        registry: Arc<ConnectionPoolService>,
        shutdown: CancellationToken,
        limits: LoadTestLimits,
        slots: StreamSlots,
    ) -> Self {
        Self {
            registry,
            shutdown,
            watchers: Arc::new(AtomicUsize::new(0)),
            snapshots: Arc::default(),
            limits,
            slots,
            tasks: TaskTracker::new(),
            front_door: None,
            replica_id: None,
        }
    }

    /// As replica `id` of its group.
    pub fn with_replica_id(mut self, id: String) -> Self {
        self.replica_id = Some(id);
        self
    }

    /// With the PostgreSQL front door whose clients ListClients and KillClient
    /// show and end.
    pub fn with_front_door(mut self, door: Option<Arc<poolplane_wire::FrontDoor>>) -> Self {
        self.front_door = door;
        self
    }

    fn front_door(&self) -> Result<&poolplane_wire::FrontDoor, Status> {
        self.front_door.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "the PostgreSQL front door is off (--pg-listen off): it has no clients",
            )
        })
    }

    /// The tracker of the tasks this service spawns (watches, load tests): they
    /// end when the shutdown token is cancelled; wait on it at shutdown.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// A watch-stream slot for the caller's connection.
    fn stream_slot<T>(&self, request: &Request<T>) -> Result<StreamSlot, Status> {
        self.slots.acquire(request.remote_addr())
    }

    /// Watch streams whose server task is running.
    pub fn watcher_count(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.watchers)
    }

    /// The pool named in a request's `pool_name`.
    fn pool(&self, pool_name: &str) -> Result<Arc<poolplane::AdvancedConnectionPool>, Status> {
        required(pool_name, "pool_name")?;
        self.registry.pool(pool_name).map_err(status::from_engine)
    }

    /// The `Pool` message of a pool.
    fn pool_message(&self, name: &str) -> Result<Option<pb::Pool>, Status> {
        let info = self.registry.pool_info(name).map_err(status::from_engine)?;
        Ok(Some(convert::pool_to_proto(&info)))
    }

    /// The explicitly named pools (deduplicated), each of which must exist.
    fn selection(&self, names: &[String]) -> Result<BTreeSet<String>, Status> {
        let names = pool_names(names)?;
        for name in &names {
            self.registry.pool(name).map_err(status::from_engine)?;
        }
        Ok(names)
    }
}

/// A list of pool names, deduplicated; at most [`MAX_POOL_NAMES`] distinct ones.
fn pool_names(names: &[String]) -> Result<BTreeSet<String>, Status> {
    for name in names {
        required(name, "pool_names")?;
    }
    let distinct: BTreeSet<String> = names.iter().cloned().collect();
    if distinct.len() > MAX_POOL_NAMES {
        return Err(status::bad_request(vec![(
            "pool_names".into(),
            format!("must name at most {MAX_POOL_NAMES} pools"),
        )]));
    }
    Ok(distinct)
}

/// A pool name a request must carry: not empty, and no longer than any pool name
/// can be (so that no error echoes a huge one).
fn required(name: &str, field: &str) -> Result<(), Status> {
    let problem = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_POOL_NAME_LEN {
        "is longer than any pool name (63 characters)"
    } else {
        return Ok(());
    };
    Err(status::bad_request(vec![(field.into(), problem.into())]))
}

/// The longest pool name.
const MAX_POOL_NAME_LEN: usize = 63;

#[tonic::async_trait]
impl pool_service_server::PoolService for PoolService {
    async fn create_pool(
        &self,
        request: Request<pb::CreatePoolRequest>,
    ) -> Result<Response<pb::CreatePoolResponse>, Status> {
        let request = request.into_inner();
        let config = convert::apply_config(AdvancedPoolConfig::default(), request.config.as_ref())
            .map_err(status::bad_request)?;
        let warnings = convert::warnings_to_proto(&config);
        self.registry
            .create_pool(request.name.clone(), &request.database_url, config)
            .await
            .map_err(status::from_engine)?;
        Ok(Response::new(pb::CreatePoolResponse {
            pool: self.pool_message(&request.name)?,
            warnings,
        }))
    }

    async fn get_pool(
        &self,
        request: Request<pb::GetPoolRequest>,
    ) -> Result<Response<pb::GetPoolResponse>, Status> {
        let name = request.into_inner().name;
        required(&name, "name")?;
        Ok(Response::new(pb::GetPoolResponse {
            pool: self.pool_message(&name)?,
        }))
    }

    async fn list_pools(
        &self,
        _request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        Ok(Response::new(pb::ListPoolsResponse {
            pools: self
                .registry
                .list_pools()
                .iter()
                .map(convert::pool_to_proto)
                .collect(),
        }))
    }

    async fn update_pool_config(
        &self,
        request: Request<pb::UpdatePoolConfigRequest>,
    ) -> Result<Response<pb::UpdatePoolConfigResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        required(&request.name, "name")?;
        let origin = poolplane::ChangeOrigin::new(caller.role.name(), "UpdatePoolConfig");
        // The patch is merged into the config in force under the pool's claim: two
        // partial updates of different fields never revert each other.
        let mut invalid = None;
        let updated = self
            .registry
            .update_pool_config_with(&request.name, &origin, |current| {
                convert::apply_config(current.clone(), request.config.as_ref()).map_err(|v| {
                    invalid = Some(v);
                    poolplane::Error::InvalidRequest(Vec::new())
                })
            })
            .await;
        if let Some(violations) = invalid {
            return Err(status::bad_request(violations));
        }
        let info = updated.map_err(status::from_engine)?;
        let warnings = convert::warnings_to_proto(&info.config);
        Ok(Response::new(pb::UpdatePoolConfigResponse {
            pool: Some(convert::pool_to_proto(&info)),
            warnings,
        }))
    }

    async fn delete_pool(
        &self,
        request: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::DeletePoolResponse>, Status> {
        let name = request.into_inner().name;
        required(&name, "name")?;
        self.registry
            .delete_pool(&name)
            .await
            .map_err(status::from_engine)?;
        Ok(Response::new(pb::DeletePoolResponse {}))
    }

    async fn get_pool_stats(
        &self,
        request: Request<pb::GetPoolStatsRequest>,
    ) -> Result<Response<pb::GetPoolStatsResponse>, Status> {
        let request = request.into_inner();
        let name = request.pool_name;
        let pool = self.pool(&name)?;
        let own = pool.get_pool_stats().await;
        let (mut replicas, mut total) = (Vec::new(), None);
        if request.group {
            let others = self
                .registry
                .store()
                .group_stats(&name)
                .await
                .map_err(status::from_engine)?;
            let me = self.replica_id.as_deref().unwrap_or_default();
            let view = group_view(&name, me, &own, others);
            (replicas, total) = (view.0, Some(view.1));
        }
        Ok(Response::new(pb::GetPoolStatsResponse {
            stats: Some(convert::stats_to_proto(&name, &own)),
            replicas,
            total,
        }))
    }

    async fn get_health_status(
        &self,
        request: Request<pb::GetHealthStatusRequest>,
    ) -> Result<Response<pb::GetHealthStatusResponse>, Status> {
        let name = request.into_inner().pool_name;
        let pool = self.pool(&name)?;
        Ok(Response::new(pb::GetHealthStatusResponse {
            health: Some(convert::health_to_proto(
                &name,
                &pool.get_health_status().await,
            )),
        }))
    }

    async fn get_statement_cache_stats(
        &self,
        request: Request<pb::GetStatementCacheStatsRequest>,
    ) -> Result<Response<pb::GetStatementCacheStatsResponse>, Status> {
        let name = request.into_inner().pool_name;
        let pool = self.pool(&name)?;
        Ok(Response::new(pb::GetStatementCacheStatsResponse {
            stats: Some(convert::cache_stats_to_proto(
                &name,
                &pool.get_statement_cache_stats().await,
            )),
        }))
    }

    type WatchPoolStatsStream = ResponseStream<pb::WatchPoolStatsResponse>;

    async fn watch_pool_stats(
        &self,
        request: Request<pb::WatchPoolStatsRequest>,
    ) -> Result<Response<Self::WatchPoolStatsStream>, Status> {
        let slot = self.stream_slot(&request)?;
        let request = request.into_inner();
        let interval_ms = match request.interval_ms {
            0 => 1000,
            ms if !(100..=MAX_WATCH_INTERVAL_MS).contains(&ms) => {
                return Err(status::bad_request(vec![(
                    "interval_ms".into(),
                    format!("must be between 100 and {MAX_WATCH_INTERVAL_MS}, got {ms}"),
                )]));
            }
            ms => ms,
        };
        let named = self.selection(&request.pool_names)?;
        let watch = StatsWatch {
            registry: Arc::clone(&self.registry),
            snapshots: Arc::clone(&self.snapshots),
            named,
            shutdown: self.shutdown.clone(),
            tick: aligned_interval(Duration::from_millis(u64::from(interval_ms))),
            pending: Vec::new(),
            first: true,
            done: false,
            group: request.group.then(|| GroupWatch {
                me: self.replica_id.clone().unwrap_or_default(),
                rows: std::collections::HashMap::new(),
                read_at: None,
            }),
            _guard: WatcherGuard::new(&self.watchers),
            _slot: slot,
        };
        Ok(Response::new(Box::pin(watch.into_stream())))
    }

    type WatchHealthEventsStream = ResponseStream<pb::WatchHealthEventsResponse>;

    async fn watch_health_events(
        &self,
        request: Request<pb::WatchHealthEventsRequest>,
    ) -> Result<Response<Self::WatchHealthEventsStream>, Status> {
        let slot = self.stream_slot(&request)?;
        let named = self.selection(&request.into_inner().pool_names)?;
        // Subscribe before reading the current health, so nothing falls between.
        let events = self.registry.subscribe();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let registry = Arc::clone(&self.registry);
        let shutdown = self.shutdown.clone();
        let guard = WatcherGuard::new(&self.watchers);
        self.tasks.spawn(async move {
            let _guard = guard;
            let _slot = slot;
            forward_health_events(&registry, &named, events, &tx, &shutdown).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_performance_summary(
        &self,
        request: Request<pb::GetPerformanceSummaryRequest>,
    ) -> Result<Response<pb::GetPerformanceSummaryResponse>, Status> {
        let name = request.into_inner().pool_name;
        required(&name, "pool_name")?;
        let summary = self
            .registry
            .get_pool_performance_summary(&name)
            .await
            .map_err(status::from_engine)?;
        Ok(Response::new(pb::GetPerformanceSummaryResponse {
            summary: Some(convert::summary_to_proto(&summary)),
        }))
    }

    async fn get_metrics_history(
        &self,
        request: Request<pb::GetMetricsHistoryRequest>,
    ) -> Result<Response<pb::GetMetricsHistoryResponse>, Status> {
        let request = request.into_inner();
        required(&request.pool_name, "pool_name")?;
        let mut violations = Vec::new();
        let to = match &request.to {
            Some(ts) => convert::system_time(ts, "to")
                .map_err(|v| violations.push(v))
                .ok(),
            None => Some(std::time::SystemTime::now()),
        };
        let from = match (&request.from, to) {
            (Some(ts), _) => convert::system_time(ts, "from")
                .map_err(|v| violations.push(v))
                .ok(),
            (None, Some(to)) => to.checked_sub(Duration::from_secs(3600)),
            (None, None) => None,
        };
        if let (Some(from), Some(to)) = (from, to) {
            match to.duration_since(from) {
                Err(_) | Ok(Duration::ZERO) => {
                    violations.push(("from".into(), "must be before `to`".into()));
                }
                Ok(range) if range > MAX_HISTORY_RANGE => violations.push((
                    "from".into(),
                    format!(
                        "the range may span at most {} days",
                        MAX_HISTORY_RANGE.as_secs() / 86_400
                    ),
                )),
                Ok(_) => {}
            }
        }
        let max_points = match request.max_points {
            0 => 100,
            n if n > MAX_POINTS => {
                violations.push(("max_points".into(), format!("must be at most {MAX_POINTS}")));
                n
            }
            n => n,
        };
        let (Some(from), Some(to), true) = (from, to, violations.is_empty()) else {
            return Err(status::bad_request(violations));
        };
        let store = self.registry.store();
        let read = store
            .metrics_history(
                &request.pool_name,
                from,
                to,
                max_points,
                (!request.replica_id.is_empty()).then_some(request.replica_id.as_str()),
            )
            .await;
        let points = to_proto(read, convert::point_to_proto)?;
        Ok(Response::new(pb::GetMetricsHistoryResponse { points }))
    }

    async fn list_config_changes(
        &self,
        request: Request<pb::ListConfigChangesRequest>,
    ) -> Result<Response<pb::ListConfigChangesResponse>, Status> {
        let r = request.into_inner();
        let read =
            async |store: &ControlStore, pool: &str, limit| store.config_changes(pool, limit).await;
        let changes = self
            .history(&r.pool_name, r.limit, read, convert::config_change_to_proto)
            .await?;
        Ok(Response::new(pb::ListConfigChangesResponse { changes }))
    }

    async fn list_scaling_events(
        &self,
        request: Request<pb::ListScalingEventsRequest>,
    ) -> Result<Response<pb::ListScalingEventsResponse>, Status> {
        let r = request.into_inner();
        let read =
            async |store: &ControlStore, pool: &str, limit| store.scaling_events(pool, limit).await;
        let events = self
            .history(
                &r.pool_name,
                r.limit,
                read,
                convert::scaling_record_to_proto,
            )
            .await?;
        Ok(Response::new(pb::ListScalingEventsResponse { events }))
    }

    type RunLoadTestStream = ResponseStream<pb::RunLoadTestResponse>;

    async fn run_load_test(
        &self,
        request: Request<pb::RunLoadTestRequest>,
    ) -> Result<Response<Self::RunLoadTestStream>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        required(&r.pool_name, "pool_name")?;
        if r.read_write {
            caller.require(Role::Admin, "RunLoadTest with read_write")?;
        }
        // Zero asks for the default: 8 callers for 10 s.
        let options = poolplane::LoadTestOptions {
            concurrency: if r.concurrency == 0 { 8 } else { r.concurrency },
            duration: Duration::from_secs(u64::from(if r.duration_secs == 0 {
                10
            } else {
                r.duration_secs
            })),
            query: Some(r.query).filter(|q| !q.trim().is_empty()),
            warmup: Duration::from_secs(u64::from(r.warmup_secs)),
            target_rps: r.target_rps,
            read_only: !r.read_write,
        };
        options.check(&self.limits).map_err(status::from_engine)?;
        // Reserved before answering, so that a second test on the pool is refused.
        let slot = self
            .registry
            .reserve_load_test(&r.pool_name)
            .map_err(status::from_engine)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let (progress_tx, progress_rx) = mpsc::channel(WATCH_BUFFER);
        // Cancelled when the caller goes away or the server shuts down.
        let cancel = self.shutdown.child_token();
        let shutdown = self.shutdown.clone();
        let test = Box::pin(slot.run(options, Some(progress_tx), cancel.clone()));
        let guard = WatcherGuard::new(&self.watchers);
        self.tasks.spawn(async move {
            let _guard = guard;
            stream_load_test(test, progress_rx, tx, cancel, shutdown).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_clients(
        &self,
        request: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        let pool = request.into_inner().pool_name;
        let door = self.front_door()?;
        let clients = door
            .clients((!pool.is_empty()).then_some(pool.as_str()))
            .into_iter()
            .map(|c| pb::WireClient {
                id: c.id,
                pool_name: c.pool,
                user: c.user,
                application_name: c.application_name,
                address: c.address.to_string(),
                tls: c.tls,
                state: c.state.as_str().to_owned(),
                connected_at: Some(convert::timestamp(c.connected_at)),
                transactions: c.transactions,
                queries: c.queries,
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
            })
            .collect();
        Ok(Response::new(pb::ListClientsResponse { clients }))
    }

    async fn list_replicas(
        &self,
        _request: Request<pb::ListReplicasRequest>,
    ) -> Result<Response<pb::ListReplicasResponse>, Status> {
        let replicas = self
            .registry
            .store()
            .replicas()
            .await
            .map_err(status::from_engine)?;
        let own = self.replica_id.as_deref();
        let replicas = replicas
            .into_iter()
            .map(|r| pb::Replica {
                this_replica: own == Some(r.id.as_str()),
                id: r.id,
                grpc_address: r.grpc_address,
                pg_address: r.pg_address.unwrap_or_default(),
                started_at: Some(convert::timestamp(r.started_at)),
                heartbeat_at: Some(convert::timestamp(r.heartbeat_at)),
                alive: r.alive,
                leader: r.leader && r.alive,
                pools: r.pools,
                lease_ms: u64::try_from(r.lease.as_millis()).unwrap_or(u64::MAX),
                allocated: r.allocated,
            })
            .collect();
        Ok(Response::new(pb::ListReplicasResponse { replicas }))
    }

    async fn reconnect_pool(
        &self,
        request: Request<pb::ReconnectPoolRequest>,
    ) -> Result<Response<pb::ReconnectPoolResponse>, Status> {
        let name = request.into_inner().pool_name;
        let pool = self.pool(&name)?;
        let connections = pool.reconnect();
        tracing::info!(pool = %name, connections, "pool reconnect: every connection is replaced");
        Ok(Response::new(pb::ReconnectPoolResponse { connections }))
    }

    async fn pause_pool(
        &self,
        request: Request<pb::PausePoolRequest>,
    ) -> Result<Response<pb::PausePoolResponse>, Status> {
        let request = request.into_inner();
        self.pool(&request.pool_name)?;
        let secs = match request.timeout_secs {
            0 => 30,
            s => s.min(3600),
        };
        let busy = self
            .front_door()?
            .pause(&request.pool_name, std::time::Duration::from_secs(secs))
            .await;
        tracing::info!(pool = %request.pool_name, busy, "pool paused");
        Ok(Response::new(pb::PausePoolResponse {
            busy: u32::try_from(busy).unwrap_or(u32::MAX),
        }))
    }

    async fn resume_pool(
        &self,
        request: Request<pb::ResumePoolRequest>,
    ) -> Result<Response<pb::ResumePoolResponse>, Status> {
        let name = request.into_inner().pool_name;
        self.pool(&name)?;
        self.front_door()?.resume(&name);
        tracing::info!(pool = %name, "pool resumed");
        Ok(Response::new(pb::ResumePoolResponse {}))
    }

    async fn kill_client(
        &self,
        request: Request<pb::KillClientRequest>,
    ) -> Result<Response<pb::KillClientResponse>, Status> {
        let id = request.into_inner().id;
        if self.front_door()?.kill_client(id) {
            Ok(Response::new(pb::KillClientResponse {}))
        } else {
            Err(Status::not_found(format!(
                "no front-door client {id} is connected"
            )))
        }
    }

    async fn optimize_pools(
        &self,
        request: Request<pb::OptimizePoolsRequest>,
    ) -> Result<Response<pb::OptimizePoolsResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        if r.apply {
            caller.require(Role::Admin, "OptimizePools with apply")?;
        }
        let names: Vec<String> = pool_names(&r.pool_names)?.into_iter().collect();
        let report = self
            .registry
            .optimize_pools_as(&names, r.apply, caller.role.name())
            .await
            .map_err(status::from_engine)?;
        Ok(Response::new(pb::OptimizePoolsResponse {
            report: Some(convert::report_to_proto(&report)),
        }))
    }
}

/// Records read from the history, as their proto messages.
fn to_proto<R, P>(
    read: Result<Vec<R>, poolplane::Error>,
    convert: fn(&R) -> P,
) -> Result<Vec<P>, Status> {
    Ok(read
        .map_err(status::from_engine)?
        .iter()
        .map(convert)
        .collect())
}

/// A history listing's pool (required) and how many records: 0 means 20, above
/// [`MAX_HISTORY_RECORDS`] is refused.
fn history_limit(pool_name: &str, limit: u32) -> Result<u32, Status> {
    required(pool_name, "pool_name")?;
    match limit {
        0 => Ok(20),
        n if n > MAX_HISTORY_RECORDS => Err(status::bad_request(vec![(
            "limit".into(),
            format!("must be at most {MAX_HISTORY_RECORDS}"),
        )])),
        n => Ok(n),
    }
}

/// A WatchPoolStats stream: no task and no channel of its own — the connection
/// polls it when it can send, so a slow reader delays (and skips) snapshots instead
/// of queueing them. Every stream of the same interval ticks at the same instants,
/// so the snapshots of all streams on one connection leave in one write.
struct StatsWatch {
    registry: Arc<ConnectionPoolService>,
    snapshots: Arc<Snapshots>,
    named: BTreeSet<String>,
    shutdown: CancellationToken,
    tick: tokio::time::Interval,
    /// This tick's snapshots not yet taken (one per pool).
    pending: Vec<pb::WatchPoolStatsResponse>,
    /// The first snapshots go at once.
    first: bool,
    done: bool,
    /// With the group's rows and total.
    group: Option<GroupWatch>,
    _guard: WatcherGuard,
    _slot: StreamSlot,
}

impl StatsWatch {
    fn into_stream(self) -> impl Stream<Item = Result<pb::WatchPoolStatsResponse, Status>> + Send {
        futures_util::stream::unfold(self, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        })
    }

    async fn next(&mut self) -> Option<Result<pb::WatchPoolStatsResponse, Status>> {
        loop {
            if let Some(snapshot) = self.pending.pop() {
                return Some(Ok(snapshot));
            }
            if self.done {
                return None;
            }
            if !std::mem::take(&mut self.first) {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => {
                        self.done = true;
                        return Some(Err(shutting_down()));
                    }
                    _ = self.tick.tick() => {}
                }
            }
            let names = self.names();
            if let Some(group) = &mut self.group {
                group.refresh(self.registry.store(), &names).await;
            }
            self.take_snapshots(&names);
            if self.pending.is_empty() && !self.named.is_empty() {
                return None; // every watched pool was deleted
            }
        }
    }

    fn names(&self) -> Vec<String> {
        if self.named.is_empty() {
            self.registry.pool_names()
        } else {
            self.named.iter().cloned().collect()
        }
    }

    fn take_snapshots(&mut self, names: &[String]) {
        // Popped from the back: pushed in reverse, they go out in name order.
        for name in names.iter().rev() {
            let Ok(pool) = self.registry.pool(name) else {
                continue;
            };
            let snapshot = match &self.group {
                None => pb::WatchPoolStatsResponse {
                    stats: Some(self.snapshots.of(name, &pool)),
                    ..Default::default()
                },
                Some(group) => {
                    let own = pool.pool_stats();
                    let others = group.rows.get(name).cloned().unwrap_or_default();
                    let (replicas, total) = group_view(name, &group.me, &own, others);
                    pb::WatchPoolStatsResponse {
                        stats: Some(convert::stats_to_proto(name, &own)),
                        replicas,
                        total: Some(total),
                    }
                }
            };
            self.pending.push(snapshot);
        }
    }
}

/// A pool over the group: each live replica's row (this one's, `own`, live;
/// the others' as they last published them) by replica id, and the total.
fn group_view(
    name: &str,
    me: &str,
    own: &poolplane::PoolStats,
    mut all: Vec<poolplane::store::group::ReplicaStats>,
) -> (Vec<pb::ReplicaPoolStats>, pb::PoolStats) {
    all.retain(|r| r.replica != me);
    all.push(poolplane::store::group::ReplicaStats {
        replica: me.to_owned(),
        updated_at: std::time::SystemTime::now(),
        stats: own.clone(),
    });
    all.sort_by(|a, b| a.replica.cmp(&b.replica));
    let each: Vec<poolplane::PoolStats> = all.iter().map(|r| r.stats.clone()).collect();
    let total = convert::stats_to_proto(name, &poolplane::PoolStats::combine(&each));
    let replicas = all
        .into_iter()
        .map(|r| pb::ReplicaPoolStats {
            taken_at: Some(convert::timestamp(r.updated_at)),
            stats: Some(convert::stats_to_proto(name, &r.stats)),
            replica_id: r.replica,
        })
        .collect();
    (replicas, total)
}

/// A stream of the group's stats: the other replicas' latest rows, read from
/// the control database at most every [`GROUP_READ_EVERY`] (they are renewed
/// with each heartbeat); kept when a read fails (their `taken_at` shows
/// their age).
#[derive(Debug)]
struct GroupWatch {
    me: String,
    rows: std::collections::HashMap<String, Vec<poolplane::store::group::ReplicaStats>>,
    read_at: Option<Instant>,
}

/// How often a group stream reads the other replicas' stats at most.
const GROUP_READ_EVERY: Duration = Duration::from_millis(500);

/// A group stream's bound on one read of the control database.
const GROUP_READ_WITHIN: Duration = Duration::from_secs(2);

impl GroupWatch {
    async fn refresh(&mut self, store: &ControlStore, pools: &[String]) {
        if self
            .read_at
            .is_some_and(|at| at.elapsed() < GROUP_READ_EVERY)
        {
            return;
        }
        self.read_at = Some(Instant::now());
        match tokio::time::timeout(GROUP_READ_WITHIN, store.group_stats_of(pools)).await {
            Ok(Ok(rows)) => self.rows = rows,
            Ok(Err(error)) => {
                tracing::debug!(%error, "group stats not read; the last ones stay");
            }
            Err(_) => tracing::debug!("group stats not read in time; the last ones stay"),
        }
    }
}

/// How long a stats snapshot serves every stream that asks: under half the
/// shortest watch interval (100 ms), so no stream sees the same snapshot twice.
const SNAPSHOT_SHARED_FOR: Duration = Duration::from_millis(40);

/// The latest stats snapshot per pool. The streams of one interval tick together
/// (see [`aligned_interval`]): the first computes the snapshot, the others copy it.
#[derive(Debug, Default)]
struct Snapshots(std::sync::Mutex<std::collections::HashMap<String, (Instant, pb::PoolStats)>>);

impl Snapshots {
    fn of(&self, name: &str, pool: &poolplane::AdvancedConnectionPool) -> pb::PoolStats {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, stats)) = map.get(name)
            && at.elapsed() < SNAPSHOT_SHARED_FOR
        {
            return stats.clone();
        }
        let stats = convert::stats_to_proto(name, &pool.pool_stats());
        if !map.contains_key(name) {
            // A new entry: forget pools no stream asked about for a minute
            // (deleted, or no longer watched).
            map.retain(|_, (at, _)| at.elapsed() < Duration::from_secs(60));
        }
        map.insert(name.to_owned(), (Instant::now(), stats.clone()));
        stats
    }
}

/// An interval of `period` whose ticks fall on multiples of it since the process
/// started, so that every stream of one period ticks together.
fn aligned_interval(period: Duration) -> tokio::time::Interval {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let since = epoch.elapsed().as_nanos();
    let period_ns = period.as_nanos().max(1);
    // The next boundary, or the one after when the next is under half a period
    // away (the first snapshot has just gone).
    let mut periods = since / period_ns + 1;
    if periods * period_ns - since < period_ns / 2 {
        periods += 1;
    }
    let periods = u32::try_from(periods).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval_at(epoch + period * periods, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick
}

/// What a stream ends with when the server shuts down under it.
fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down")
}

fn progress_message(p: &poolplane::LoadTestProgress) -> pb::RunLoadTestResponse {
    pb::RunLoadTestResponse {
        update: Some(pb::run_load_test_response::Update::Progress(
            convert::progress_to_proto(p),
        )),
    }
}

/// Streams a running load test to its caller: progress as it comes (a slow
/// reader skips some), then the graded result, or the error. A caller that goes
/// away cancels the test.
async fn stream_load_test<F>(
    mut test: std::pin::Pin<Box<F>>,
    mut progress_rx: mpsc::Receiver<poolplane::LoadTestProgress>,
    tx: mpsc::Sender<Result<pb::RunLoadTestResponse, Status>>,
    cancel: CancellationToken,
    shutdown: CancellationToken,
) where
    F: std::future::Future<Output = Result<poolplane::LoadTestResults, poolplane::Error>>,
{
    let mut done = None;
    loop {
        if let Some(result) = done.take() {
            let message = match result {
                // Stopped by the shutdown: no result to grade.
                Ok(_) if shutdown.is_cancelled() => Err(shutting_down()),
                Ok(results) => Ok(pb::RunLoadTestResponse {
                    update: Some(pb::run_load_test_response::Update::Result(
                        convert::load_test_to_proto(&results),
                    )),
                }),
                Err(e) => Err(status::from_engine(e)),
            };
            // Progress still queued goes first.
            while let Ok(p) = progress_rx.try_recv() {
                let _ = tx.try_send(Ok(progress_message(&p)));
            }
            let _ = tx.send(message).await;
            return;
        }
        tokio::select! {
            biased;
            () = tx.closed() => {
                cancel.cancel();
                let _ = (&mut test).await;
                return;
            }
            result = &mut test => done = Some(result),
            Some(p) = progress_rx.recv() => {
                let _ = tx.try_send(Ok(progress_message(&p)));
            }
        }
    }
}

/// Sends a WatchHealthEvents call's events: the current health of every watched
/// pool, then each event of the watched pools as it comes (a lag as
/// MissedEvents), until the caller leaves, the server stops, or every named pool
/// is deleted.
async fn forward_health_events(
    registry: &ConnectionPoolService,
    named: &BTreeSet<String>,
    mut events: broadcast::Receiver<PoolEvent>,
    tx: &mpsc::Sender<Result<pb::WatchHealthEventsResponse, Status>>,
    shutdown: &CancellationToken,
) {
    let wanted = |name: &str| named.is_empty() || named.contains(name);
    let mut watching: BTreeSet<String> = registry
        .pool_names()
        .into_iter()
        .filter(|n| wanted(n))
        .collect();
    for name in &watching {
        let Ok(pool) = registry.pool(name) else {
            continue;
        };
        let health = convert::health_to_proto(name, &pool.get_health_status().await);
        let event = watch_event(name, pb::pool_event::Kind::CurrentHealth(health));
        if send_event(tx, event).await.is_err() {
            return;
        }
    }
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                let _ = tx.try_send(Err(shutting_down()));
                break;
            }
            () = tx.closed() => break,
            received = events.recv() => received,
        };
        let event = match received {
            Ok(event) if wanted(&event.pool_name) => {
                match event.kind {
                    PoolEventKind::PoolCreated => watching.insert(event.pool_name.clone()),
                    PoolEventKind::PoolDeleted => watching.remove(&event.pool_name),
                    _ => false,
                };
                match convert::event_to_proto(&event) {
                    Some(event) => event,
                    None => continue,
                }
            }
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(count)) => watch_event(
                "",
                pb::pool_event::Kind::MissedEvents(pb::MissedEvents { count }),
            ),
            Err(broadcast::error::RecvError::Closed) => break,
        };
        if send_event(tx, event).await.is_err() {
            break;
        }
        if !named.is_empty() && watching.is_empty() {
            break; // every watched pool was deleted
        }
    }
}

/// An event of `pool_name` (empty: of the stream itself), now.
fn watch_event(pool_name: &str, kind: pb::pool_event::Kind) -> pb::PoolEvent {
    pb::PoolEvent {
        pool_name: pool_name.to_owned(),
        at: Some(convert::timestamp(std::time::SystemTime::now())),
        kind: Some(kind),
    }
}

async fn send_event(
    tx: &mpsc::Sender<Result<pb::WatchHealthEventsResponse, Status>>,
    event: pb::PoolEvent,
) -> Result<(), ()> {
    tx.send(Ok(pb::WatchHealthEventsResponse { event: Some(event) }))
        .await
        .map_err(|_| ())
}
