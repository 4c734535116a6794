//! Building and running the server: control database (embedded or given), gRPC
//! services, graceful shutdown. Owns the root cancellation token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use poolplane::{
    ConnectionPoolService, ControlStore, EmbeddedPg, EmbeddedPgOptions, MetricsRecorder,
    PoolEventKind, RecorderOptions, RecorderStatus, SecretsKey, TargetAllowlist, conninfo,
};
use poolplane_proto::v1::pool_service_server::PoolServiceServer;
use poolplane_proto::v1::query_service_server::QueryServiceServer;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::grpc::PoolService;
use crate::grpc::auth::{AuthLayer, Authenticator, Role};
use crate::grpc::limits::{ServerLimits, StreamSlots};
use crate::telemetry::error_chain;

/// What the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The gRPC listen address (port 0: any free port).
    pub listen: SocketAddr,
    /// The control database; `None`: the embedded PostgreSQL in `data_dir`.
    pub database_url: Option<String>,
    /// Where the embedded control database lives (created on first start).
    pub data_dir: PathBuf,
    /// The Prometheus endpoint's address (served by the telemetry layer).
    pub metrics_listen: SocketAddr,
    /// How often every pool's stats are recorded in the history.
    pub metrics_interval: Duration,
    /// How long the history is kept.
    pub metrics_retention: Duration,
    /// History rows kept in memory while the control database is unavailable.
    pub metrics_buffer_rows: usize,
    /// Serve gRPC over TLS with this certificate chain and key (PEM files).
    pub tls: Option<TlsFiles>,
    /// The caps on load tests.
    pub load_test_limits: crate::grpc::pool_service::LoadTestLimits,
    /// Connections left free on each PostgreSQL server by its pools' budget.
    pub connection_reserve: u32,
    /// How long in-flight calls may run on after a shutdown request; also how long
    /// a deleted pool's checked-out connections may finish.
    pub shutdown_grace: Duration,
    /// Bearer tokens and their roles (`TOKEN ROLE` lines), re-read on SIGHUP.
    /// `None`: no authentication, which is allowed only on a loopback address,
    /// with mutual TLS, or with `insecure_no_auth`.
    pub auth_tokens_file: Option<PathBuf>,
    /// Accept every caller as admin on a non-loopback address.
    pub insecure_no_auth: bool,
    /// The key that seals stored passwords. `None`: `secrets.key` in `data_dir`,
    /// created (mode 0600) if missing.
    pub secrets_key_file: Option<PathBuf>,
    /// The targets pools may connect to (host names, IPs, CIDR blocks, optional
    /// `:port`, socket directories). `None`: every TCP host, no Unix socket.
    pub allowed_db_hosts: Option<Vec<String>>,
    /// Most pools the server holds.
    pub max_pools: usize,
    /// Apply the optimizer's applicable recommendations this often (`None`: off).
    pub auto_optimize_interval: Option<Duration>,
    /// Set up the demo database and pool on the embedded cluster ([`crate::demo`]).
    pub demo: bool,
    /// Bounds on watch streams and HTTP/2 connections.
    pub limits: ServerLimits,
    /// The PostgreSQL wire-protocol front door.
    pub pg: PgFrontDoor,
    /// This server in its group of replicas sharing the control database.
    pub replica: Replica,
}

/// This server as a replica of its group (`--replica-*`).
#[derive(Debug, Clone)]
pub struct Replica {
    /// Its id; `None`: the one stored in `replica-id` of the data directory
    /// (made on first start).
    pub id: Option<String>,
    /// How long its heartbeat holds: a replica silent longer is gone, and the
    /// leadership moves within about that long.
    pub lease: Duration,
}

impl Default for Replica {
    fn default() -> Self {
        Self {
            id: None,
            lease: Duration::from_secs(10),
        }
    }
}

/// Starts this server's part in its replica group (on the background's
/// tracker, until `token`); returns its replica id.
async fn join_group(
    config: &ServerConfig,
    registry: &Arc<ConnectionPoolService>,
    (grpc, pg): (SocketAddr, Option<SocketAddr>),
    token: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<String, ServerError> {
    let replica_id = replica_id(config)?;
    refuse_taken_id(registry.store(), &replica_id, grpc).await?;
    poolplane::group::join(
        registry,
        poolplane::group::GroupOptions {
            replica_id: replica_id.clone(),
            lease: config.replica.lease,
            grpc_address: grpc.to_string(),
            pg_address: pg.map(|a| a.to_string()),
        },
        registry.leadership(),
        token,
        tasks,
    );
    Ok(replica_id)
}

/// Refuses an id a live replica at another address holds (two servers sharing
/// one data directory, or one `--replica-id`): its heartbeat still advancing
/// a third of a lease later tells a running server from a killed one whose
/// lease has not run out (that one's row is taken over).
async fn refuse_taken_id(
    store: &ControlStore,
    id: &str,
    grpc: SocketAddr,
) -> Result<(), ServerError> {
    let Some((address, beat, lease)) = store.live_replica(id).await? else {
        return Ok(());
    };
    if address == grpc.to_string() {
        return Ok(());
    }
    tokio::time::sleep(lease / 3 + Duration::from_millis(500)).await;
    match store.live_replica(id).await? {
        Some((address, later, _)) if later > beat => Err(ServerError::Config(format!(
            "--replica-id {id}: a running replica of the group has this id (gRPC {address}); \
             give each server its own --replica-id or --data-dir"
        ))),
        _ => Ok(()),
    }
}

/// The id this server has in its group: `--replica-id`, or the one kept in
/// the data directory (a random one made and written there on first start).
fn replica_id(config: &ServerConfig) -> Result<String, ServerError> {
    let valid = |id: &str| {
        !id.is_empty()
            && id.len() <= 63
            && id.starts_with(|c: char| c.is_ascii_alphanumeric())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    };
    if let Some(id) = &config.replica.id {
        return if valid(id) {
            Ok(id.clone())
        } else {
            Err(ServerError::Config(format!(
                "--replica-id `{id}`: 1 to 63 letters, digits, `_`, `.` or `-`, starting with a letter or digit"
            )))
        };
    }
    let path = config.data_dir.join("replica-id");
    if let Ok(text) = std::fs::read_to_string(&path)
        && valid(text.trim())
    {
        return Ok(text.trim().to_owned());
    }
    let mut bytes = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ServerError::Config("no randomness for a replica id".into()))?;
    let id: String = std::iter::once("r-".to_owned())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let _ = std::fs::create_dir_all(&config.data_dir);
    if let Err(error) = std::fs::write(&path, &id) {
        tracing::warn!(path = %path.display(), %error, "replica id not kept (a restart gets a new one)");
    }
    Ok(id)
}

/// The PostgreSQL front door's settings (`--pg-*`).
#[derive(Debug, Clone)]
pub struct PgFrontDoor {
    /// Where it listens; `None`: off.
    pub listen: Option<SocketAddr>,
    /// Its TLS certificate chain and key (PEM); `None`: the gRPC server's, if any.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Refuse clients that do not start TLS.
    pub tls_required: bool,
    /// Users besides each pool's own database user, re-read on SIGHUP.
    pub users_file: Option<PathBuf>,
    /// The most clients connected at once.
    pub max_clients: usize,
}

impl Default for PgFrontDoor {
    fn default() -> Self {
        Self {
            listen: None,
            tls: None,
            tls_required: false,
            users_file: None,
            max_clients: 10_000,
        }
    }
}

impl PgFrontDoor {
    /// The front door's options; its TLS defaults to the gRPC server's certificate.
    fn options(
        &self,
        grpc_tls: Option<&TlsFiles>,
    ) -> Result<Option<poolplane_wire::FrontDoorOptions>, ServerError> {
        let Some(listen) = self.listen else {
            return Ok(None);
        };
        let files = self
            .tls
            .clone()
            .or_else(|| grpc_tls.map(|t| (t.cert.clone(), t.key.clone())));
        let tls = files
            .map(|(cert, key)| poolplane_wire::FrontDoorOptions::tls_from_pem(&cert, &key))
            .transpose()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        Ok(Some(poolplane_wire::FrontDoorOptions {
            listen,
            tls,
            tls_required: self.tls_required,
            users_file: self.users_file.clone(),
            max_clients: self.max_clients,
            ..Default::default()
        }))
    }
}

impl ServerConfig {
    /// Refuses a config with settings out of range, or one that would expose the
    /// server without authentication.
    fn check(&self) -> Result<(), ServerError> {
        let violations = self.violations();
        if !violations.is_empty() {
            return Err(ServerError::Config(violations.join("; ")));
        }
        match self.exposure_refusal() {
            Some(refusal) => Err(ServerError::Config(refusal)),
            None => Ok(()),
        }
    }

    /// The targets pools may connect to (`--allowed-db-hosts`).
    fn allowlist(&self) -> Result<TargetAllowlist, ServerError> {
        match &self.allowed_db_hosts {
            Some(hosts) => TargetAllowlist::parse(hosts)
                .map_err(|e| ServerError::Config(format!("--allowed-db-hosts: {e}"))),
            None => Ok(TargetAllowlist::unset()),
        }
    }

    /// Every setting out of range, as `flag: why` (the server refuses to start).
    pub fn violations(&self) -> Vec<String> {
        let mut out = self.limits.violations();
        let mut range = |flag: &str, value: Duration, min: Duration, max: Duration| {
            if !(min..=max).contains(&value) {
                out.push(format!(
                    "{flag}: must be between {min:?} and {max:?}, got {value:?}"
                ));
            }
        };
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        range(
            "--metrics-interval",
            self.metrics_interval,
            ms(100),
            s(3600),
        );
        range("--replica-lease", self.replica.lease, s(1), s(600));
        range(
            "--metrics-retention",
            self.metrics_retention,
            s(60).max(self.metrics_interval),
            s(10 * 365 * 86_400),
        );
        range("--shutdown-grace", self.shutdown_grace, ms(0), s(3600));
        if let Some(interval) = self.auto_optimize_interval {
            range("--auto-optimize-interval", interval, s(1), s(86_400));
        }
        range(
            "--max-load-test-duration",
            self.load_test_limits.max_duration,
            s(1),
            s(86_400),
        );
        if self.demo && self.database_url.is_some() {
            out.push(
                "--demo: sets up the demo on the embedded PostgreSQL; leave out --database-url"
                    .to_owned(),
            );
        }
        if !(1..=10_000_000).contains(&self.metrics_buffer_rows) {
            out.push("--metrics-buffer: must be between 1 and 10000000".to_owned());
        }
        if !(1..=100_000).contains(&self.load_test_limits.max_concurrency) {
            out.push("--max-load-test-concurrency: must be between 1 and 100000".to_owned());
        }
        if !(1..=100_000).contains(&self.max_pools) {
            out.push("--max-pools: must be between 1 and 100000".to_owned());
        }
        if self.connection_reserve > poolplane::config::MAX_CONNECTIONS {
            out.push(format!(
                "--connection-reserve: must be at most {}",
                poolplane::config::MAX_CONNECTIONS
            ));
        }
        out
    }

    /// Why the server must not start as configured: a non-loopback address with no
    /// authentication (no tokens, no mutual TLS) and no `insecure_no_auth`.
    pub fn exposure_refusal(&self) -> Option<String> {
        let authenticated = self.auth_tokens_file.is_some()
            || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        (!authenticated && !self.insecure_no_auth && !self.listen.ip().is_loopback()).then(|| {
            format!(
                "refusing to listen on {} without authentication: give --auth-tokens-file (or \
                 --tls-client-ca), listen on a loopback address, or pass --insecure-no-auth",
                self.listen
            )
        })
    }
}

/// A TLS certificate chain and its private key, as PEM files, and optionally the
/// CA that client certificates must be signed by (mutual TLS).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// Require a client certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
    /// With a client CA and no tokens file: the role of every verified client.
    pub client_role: Role,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The engine failed (control database, embedded PostgreSQL).
    #[error(transparent)]
    Engine(#[from] poolplane::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptor sets.
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The Prometheus endpoint's address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be read.
    #[error("reading {path}: {source}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The serving task panicked or was aborted.
    #[error("server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A setting is out of range, or the server would be exposed without
    /// authentication.
    #[error("{0}")]
    Config(String),
}

/// A running server. Dropping it cancels it; [`Server::shutdown`] also waits.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    metrics_addr: SocketAddr,
    pg_addr: Option<SocketAddr>,
    control_database: String,
    token: CancellationToken,
    root: CancellationToken,
    watchers: Arc<AtomicUsize>,
    registry: Arc<ConnectionPoolService>,
    recorder: Arc<RecorderStatus>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Server {
    /// Opens the control database (starting the embedded one if no URL is given),
    /// applies migrations, binds the listen address and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        config.check()?;
        let auth = Arc::new(authenticator(&config)?);
        // Checked before anything starts (and read again by the registry).
        config.allowlist()?;
        let tls = config.tls.as_ref().map(server_tls).transpose()?;
        let (embedded, database_url, store) = open_store(&config).await?;
        // The root of every cancellation token of the server. Its child `token`
        // stops serving (SIGTERM): no new calls, streams end. The engine's tokens
        // are cancelled with the root, once in-flight calls finished or the grace
        // period ran out, so that a unary call in flight can still use its pool.
        let root = CancellationToken::new();
        // A start that fails from here on cancels the root: no restored pool, no
        // recorder task and no tuning loop outlives it.
        let started = root.clone().drop_guard();
        let token = root.child_token();
        // The listeners first: an address in use fails the start before any pool
        // is restored or any background work starts.
        let listeners = Listeners::bind(&config).await?;
        let engine = open_engine(&config, store, (&root, &token), &embedded, &listeners);
        let (registry, restored, background) = engine.await?;
        let recorder_status = Arc::clone(background.recorder.status());
        let control_database = conninfo::redact(&database_url);
        log_start(
            &config,
            &registry,
            &auth,
            &listeners,
            &embedded,
            &control_database,
            restored,
        );
        let (local_addr, metrics_addr) = (listeners.grpc_addr, listeners.metrics_addr);
        let front_door = listeners
            .pg
            .map(|bound| Arc::new(bound.start(Arc::clone(&registry), &token)));
        let pg_addr = front_door.as_ref().map(|door| door.local_addr());
        let metrics_task = tokio::spawn(crate::prometheus::serve(
            listeners.metrics,
            Arc::clone(&registry),
            Arc::clone(&recorder_status),
            token.clone(),
        ));
        let grpc = GrpcParts {
            listener: listeners.grpc,
            service: PoolService::new(
                Arc::clone(&registry),
                token.clone(),
                config.load_test_limits,
                StreamSlots::new(&config.limits),
            )
            .with_front_door(front_door.clone())
            .with_replica_id(background.replica_id.clone()),
            tls,
            auth: Arc::clone(&auth),
            limits: config.limits,
        };
        let watchers = grpc.service.watcher_count();
        let parts = Parts {
            grpc,
            registry: Arc::clone(&registry),
            background,
            metrics_task,
            embedded,
            reloader: tokio::spawn(reload_on_sighup(auth, front_door.clone(), token.clone())),
            front_door,
        };
        let task = tokio::spawn(serve(
            parts,
            token.clone(),
            root.clone(),
            config.shutdown_grace,
        ));
        started.disarm();
        Ok(Self {
            local_addr,
            metrics_addr,
            pg_addr,
            control_database,
            token,
            root,
            watchers,
            registry,
            recorder: recorder_status,
            task: Some(task),
        })
    }

    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Watch streams (WatchPoolStats, WatchHealthEvents) whose task is running.
    pub fn active_watchers(&self) -> usize {
        self.watchers.load(Ordering::SeqCst)
    }

    /// The address of the PostgreSQL front door, if it is on.
    pub fn pg_addr(&self) -> Option<SocketAddr> {
        self.pg_addr
    }

    /// The address of the Prometheus endpoint (`GET /metrics`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The registry of pools (for in-process use and tests).
    pub fn registry(&self) -> &Arc<ConnectionPoolService> {
        &self.registry
    }

    /// The metrics recorder's counters.
    pub fn recorder_status(&self) -> &Arc<RecorderStatus> {
        &self.recorder
    }

    /// The control database, password redacted.
    pub fn control_database(&self) -> &str {
        &self.control_database
    }

    /// The token that stops the server when cancelled (what [`Server::shutdown`] does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Stops accepting calls, lets in-flight calls finish within the grace period,
    /// stops background work and the embedded PostgreSQL; returns when all is done.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.token.cancel();
        self.join().await
    }

    /// Waits until the server stops (after a shutdown, or on a fatal error).
    pub async fn wait(mut self) -> Result<(), ServerError> {
        self.join().await
    }

    async fn join(&mut self) -> Result<(), ServerError> {
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// Who callers are: a tokens file, client certificates, or nobody (open).
fn authenticator(config: &ServerConfig) -> Result<Authenticator, ServerError> {
    Ok(match (&config.auth_tokens_file, &config.tls) {
        (Some(path), _) => Authenticator::tokens_file(path).map_err(ServerError::Config)?,
        (
            None,
            Some(TlsFiles {
                client_ca: Some(_),
                client_role,
                ..
            }),
        ) => Authenticator::client_certificates(*client_role),
        (None, _) => Authenticator::open(),
    })
}

/// The control store, with the secrets key (`--secrets-key-file`, or one kept in
/// the data directory), on the control database.
async fn open_store(
    config: &ServerConfig,
) -> Result<(Option<EmbeddedPg>, String, ControlStore), ServerError> {
    let secrets_key = match &config.secrets_key_file {
        Some(path) => SecretsKey::load(path),
        None => SecretsKey::load_or_create(&config.data_dir.join("secrets.key")),
    }
    .map_err(poolplane::Error::from)?;
    let (embedded, database_url) = control_database(config).await?;
    let store = ControlStore::connect(&database_url, secrets_key).await?;
    Ok((embedded, database_url, store))
}

/// The registry of pools on `store`, joined to its group (heartbeat and
/// allocation rounds, until `token`) before its stored pools are restored,
/// so that each connects within this replica's allocation (and the demo pool
/// set up with `--demo`); then its background work. Returns it, how many
/// pools were restored, and the background.
async fn open_engine(
    config: &ServerConfig,
    store: ControlStore,
    (root, token): (&CancellationToken, &CancellationToken),
    embedded: &Option<EmbeddedPg>,
    listeners: &Listeners,
) -> Result<(Arc<ConnectionPoolService>, usize, Background), ServerError> {
    // A replica leads the group's singleton jobs once it holds the group's lock.
    let registry = Arc::new(
        ConnectionPoolService::new(store.clone(), config.shutdown_grace)
            .with_leadership(Arc::new(poolplane::leadership::Leadership::new(false)))
            .with_parent_token(root)
            .with_allowlist(config.allowlist()?)
            .with_max_pools(config.max_pools)
            .with_connection_reserve(config.connection_reserve),
    );
    // Budgets come from the group's allocation from the start (restored pools
    // connect once it is given: the heartbeat's rounds run already).
    registry.join_group();
    let group = tokio_util::task::TaskTracker::new();
    let pg = listeners
        .pg
        .as_ref()
        .map(poolplane_wire::BoundFrontDoor::local_addr);
    let replica_id =
        join_group(config, &registry, (listeners.grpc_addr, pg), token, &group).await?;
    let restored = registry.restore().await?;
    if let (true, Some(pg)) = (config.demo, embedded) {
        crate::demo::set_up(pg, &registry, &config.data_dir)
            .await
            .map_err(|e| ServerError::Config(format!("--demo: {e}")))?;
    }
    let background = start_background(config, store, &registry, (token, root), (group, replica_id));
    Ok((registry, restored, background))
}

/// The server's background work on its pools, owned by the serving task.
struct Background {
    /// The metrics recorder (its tasks stop with the server's root token).
    recorder: MetricsRecorder,
    /// Automated tuning (`--auto-optimize-interval`), stopped with the serving
    /// token.
    tuning: Option<JoinHandle<()>>,
    /// The replica group's tasks (heartbeat, definitions followed, the bid for
    /// leadership), stopped with the serving token.
    group: tokio_util::task::TaskTracker,
    /// This server's id in its group.
    replica_id: String,
}

impl Background {
    /// Stops automated tuning, then the recorder with its final flush.
    async fn shutdown(self) {
        if let Some(tuning) = self.tuning {
            let _ = tuning.await;
        }
        self.group.close();
        self.group.wait().await;
        self.recorder.shutdown().await;
    }
}

/// The background work on `registry`'s pools: automated tuning (with
/// `--auto-optimize-interval`, until `token`) and the metrics recorder on `store`
/// (until its shutdown, or `root`); the group's follower and bid for
/// leadership on its `group` tracker.
fn start_background(
    config: &ServerConfig,
    store: ControlStore,
    registry: &Arc<ConnectionPoolService>,
    (token, root): (&CancellationToken, &CancellationToken),
    (group, replica_id): (tokio_util::task::TaskTracker, String),
) -> Background {
    let tuning = config.auto_optimize_interval.map(|interval| {
        tracing::info!(?interval, "automated tuning on");
        tokio::spawn(Arc::clone(registry).auto_tune(interval, token.clone()))
    });
    let recorder = MetricsRecorder::start(
        store,
        Arc::clone(registry),
        RecorderOptions {
            interval: config.metrics_interval,
            retention: config.metrics_retention,
            buffer_rows: config.metrics_buffer_rows,
        },
        root,
    );
    poolplane::group::follow_and_lead(
        registry,
        config.replica.lease,
        registry.leadership(),
        token,
        &group,
    );
    Background {
        recorder,
        tuning,
        group,
        replica_id,
    }
}

/// The control database's URL: `--database-url`, or the embedded cluster's
/// (started here, kept in the data directory).
async fn control_database(
    config: &ServerConfig,
) -> Result<(Option<EmbeddedPg>, String), ServerError> {
    if let Some(url) = &config.database_url {
        return Ok((None, url.clone()));
    }
    let pg = EmbeddedPg::start(EmbeddedPgOptions {
        data_dir: Some(config.data_dir.clone()),
        ..Default::default()
    })
    .await
    .map_err(poolplane::Error::from)?;
    let url = pg.url("postgres");
    Ok((Some(pg), url))
}

/// The gRPC listener's TLS from its files (and the client CA for mutual TLS).
fn server_tls(files: &TlsFiles) -> Result<tonic::transport::ServerTlsConfig, ServerError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| ServerError::Tls {
            path: path.clone(),
            source,
        })
    };
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(&files.cert)?, read(&files.key)?),
    );
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(tls)
}

/// The gRPC and Prometheus listeners, bound.
struct Listeners {
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    metrics: TcpListener,
    metrics_addr: SocketAddr,
    pg: Option<poolplane_wire::BoundFrontDoor>,
}

impl Listeners {
    async fn bind(config: &ServerConfig) -> Result<Self, ServerError> {
        let bind_error = |source| ServerError::Bind {
            addr: config.listen,
            source,
        };
        let grpc = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        let grpc_addr = grpc.local_addr().map_err(bind_error)?;
        let metrics_error = |source| ServerError::MetricsBind {
            addr: config.metrics_listen,
            source,
        };
        let metrics = crate::prometheus::bind(config.metrics_listen)
            .await
            .map_err(metrics_error)?;
        let metrics_addr = metrics.local_addr().map_err(metrics_error)?;
        let pg = match config.pg.options(config.tls.as_ref())? {
            Some(options) => Some(
                poolplane_wire::FrontDoor::bind(options)
                    .await
                    .map_err(|e| ServerError::Config(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Self {
            grpc,
            grpc_addr,
            metrics,
            metrics_addr,
            pg,
        })
    }
}

/// The start-up lines: access control, then where the server listens.
fn log_start(
    config: &ServerConfig,
    registry: &ConnectionPoolService,
    auth: &Authenticator,
    listeners: &Listeners,
    embedded: &Option<EmbeddedPg>,
    control_database: &str,
    restored: usize,
) {
    if !registry.allowlist().is_set() {
        tracing::info!(
            "no --allowed-db-hosts: pools may connect to every TCP host (Unix sockets refused)"
        );
    }
    tracing::info!(
        authentication = if auth.enforced() { "required" } else { "off (every caller is admin)" },
        mutual_tls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        allowed_db_hosts = %registry.allowlist(),
        secrets_key_id = %store_key_id(registry),
        "access control"
    );
    let tls = config.tls.is_some();
    let (listen, metrics) = (listeners.grpc_addr, listeners.metrics_addr);
    let pg_listen = listeners
        .pg
        .as_ref()
        .map_or_else(|| "off".to_owned(), |pg| pg.local_addr().to_string());
    match embedded {
        Some(pg) => tracing::info!(
            %listen, tls, %metrics, pg_listen, control_database, pools = restored,
            data_dir = %pg.base_dir().display(),
            "poolplane-server started (embedded control database)"
        ),
        None => tracing::info!(
            %listen, tls, %metrics, pg_listen, control_database, pools = restored,
            "poolplane-server started"
        ),
    }
}

/// What the serving task owns and stops, in order, when the server shuts down.
struct Parts {
    grpc: GrpcParts,
    registry: Arc<ConnectionPoolService>,
    background: Background,
    metrics_task: JoinHandle<std::io::Result<()>>,
    embedded: Option<EmbeddedPg>,
    reloader: JoinHandle<()>,
    front_door: Option<Arc<poolplane_wire::FrontDoor>>,
}

/// What the gRPC listener is built from.
struct GrpcParts {
    listener: TcpListener,
    service: PoolService,
    tls: Option<tonic::transport::ServerTlsConfig>,
    auth: Arc<Authenticator>,
    limits: ServerLimits,
}

async fn serve(
    parts: Parts,
    token: CancellationToken,
    root: CancellationToken,
    grace: Duration,
) -> Result<(), ServerError> {
    let Parts {
        grpc,
        registry,
        background,
        metrics_task,
        embedded,
        reloader,
        front_door,
    } = parts;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PoolServiceServer<PoolService>>()
        .await;
    health_reporter
        .set_serving::<QueryServiceServer<crate::grpc::QueryService>>()
        .await;
    let bridge = tokio::spawn(pool_health_bridge(
        Arc::clone(&registry),
        health_reporter.clone(),
        token.clone(),
    ));
    let store_bridge = tokio::spawn(metrics_store_health(
        background.recorder.store_up(),
        health_reporter.clone(),
        token.clone(),
    ));
    let service_tasks = grpc.service.tasks();
    let served = serve_grpc(
        grpc,
        &registry,
        (health_reporter, health_service),
        &token,
        grace,
    )
    .await;
    if let Err(error) = &served {
        tracing::error!(error = %error_chain(error), "gRPC server failed");
    }
    token.cancel();
    // Every wait from here on is bounded by the grace period.
    let bounded = |what: &'static str| {
        move |elapsed: Result<(), tokio::time::error::Elapsed>| {
            if elapsed.is_err() {
                tracing::warn!(
                    grace_secs = grace.as_secs_f64(),
                    "shutdown: {what} did not finish within the grace period"
                );
            }
        }
    };
    service_tasks.close();
    if let Some(door) = &front_door {
        door.shutdown(grace).await;
    }
    let serving_tasks = async {
        let _ = reloader.await;
        let _ = bridge.await;
        let _ = store_bridge.await;
        let _ = metrics_task.await;
        service_tasks.wait().await;
    };
    bounded("watch and load-test tasks")(tokio::time::timeout(grace, serving_tasks).await);
    bounded("automated tuning and the metrics flush")(
        tokio::time::timeout(grace, background.shutdown()).await,
    );
    tracing::info!("metrics flushed");
    root.cancel();
    // Pools get the grace period for their checked-out connections, plus a moment
    // to close.
    bounded("closing the pools")(
        tokio::time::timeout(grace + Duration::from_secs(1), registry.shutdown()).await,
    );
    tracing::info!("pools closed");
    if let Some(pg) = embedded {
        pg.stop().await;
        tracing::info!("embedded PostgreSQL stopped");
    }
    tracing::info!("poolplane-server stopped");
    served
}

/// Serves gRPC (health, reflection, PoolService, QueryService) until `token`
/// is cancelled and the calls in flight finished, or the grace period after it.
async fn serve_grpc(
    grpc: GrpcParts,
    registry: &Arc<ConnectionPoolService>,
    (reporter, health_service): (
        tonic_health::server::HealthReporter,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ),
    token: &CancellationToken,
    grace: Duration,
) -> Result<(), ServerError> {
    let limits = grpc.limits;
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .tcp_keepalive(Some(limits.http2_keepalive_interval));
    if let Some(tls) = grpc.tls {
        builder = builder.tls_config(tls)?;
    }
    let stop = token.clone();
    // QueryService's tasks are tracked with PoolService's: shutdown waits for both.
    let query_tasks = grpc.service.tasks();
    let server = builder
        .layer(
            tower::ServiceBuilder::new()
                .layer(crate::grpc::trace::RpcTraceLayer)
                .layer(AuthLayer::new(grpc.auth)),
        )
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(PoolServiceServer::new(grpc.service))
        .add_service(QueryServiceServer::new(crate::grpc::QueryService::new(
            Arc::clone(registry),
            query_tasks,
        )))
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc.listener), async move {
            stop.cancelled().await;
            tracing::info!("shutting down: no new calls accepted");
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            reporter
                .set_not_serving::<PoolServiceServer<PoolService>>()
                .await;
            reporter
                .set_not_serving::<QueryServiceServer<crate::grpc::QueryService>>()
                .await;
        });
    tokio::select! {
        result = server => result.map_err(ServerError::from),
        () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs_f64(), "grace period over: abandoning in-flight calls");
            Ok(())
        }
    }
}

fn store_key_id(registry: &ConnectionPoolService) -> String {
    registry.store().secrets_key_id()
}

/// Re-reads the tokens file and the front door's users file on every SIGHUP
/// until `token` is cancelled; a file that does not parse keeps what is in
/// force, and the log says why.
async fn reload_on_sighup(
    auth: Arc<Authenticator>,
    front_door: Option<Arc<poolplane_wire::FrontDoor>>,
    token: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGHUP: the tokens file is read only at start");
            return;
        }
    };
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            received = hangups.recv() => if received.is_none() { break },
        }
        match auth.reload() {
            Ok(count) => tracing::info!(tokens = count, "SIGHUP: tokens file reloaded"),
            Err(error) => {
                tracing::warn!(%error, "SIGHUP: tokens file not reloaded; the previous tokens stay in force")
            }
        }
        if let Some(door) = &front_door {
            match door.reload_users() {
                Ok(count) => tracing::info!(users = count, "SIGHUP: users file reloaded"),
                Err(error) => {
                    tracing::warn!(%error, "SIGHUP: users file not reloaded; the previous users stay in force")
                }
            }
        }
    }
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(poolplane_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc error details (BadRequest, ErrorInfo): grpcurl shows them.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// The grpc.health.v1 service name of a pool: `pool/<name>`.
pub fn pool_health_name(pool: &str) -> String {
    format!("pool/{pool}")
}

/// Keeps a grpc.health.v1 entry `pool/<name>` per pool: SERVING while the pool is
/// healthy, NOT_SERVING while not, removed when the pool is deleted.
async fn pool_health_bridge(
    registry: Arc<ConnectionPoolService>,
    mut reporter: tonic_health::server::HealthReporter,
    token: CancellationToken,
) {
    use tonic_health::ServingStatus;
    let serving = |healthy: bool| {
        if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let mut events = registry.subscribe();
    for info in registry.list_pools() {
        reporter
            .set_service_status(pool_health_name(&info.name), serving(info.is_healthy))
            .await;
    }
    loop {
        let received = tokio::select! {
            biased;
            () = token.cancelled() => break,
            received = events.recv() => received,
        };
        match received {
            Ok(event) => {
                let service = pool_health_name(&event.pool_name);
                match event.kind {
                    PoolEventKind::BecameUnhealthy { .. } => {
                        reporter
                            .set_service_status(service, ServingStatus::NotServing)
                            .await;
                    }
                    PoolEventKind::Recovered { .. } => {
                        reporter
                            .set_service_status(service, ServingStatus::Serving)
                            .await;
                    }
                    PoolEventKind::PoolCreated | PoolEventKind::PoolUpdated { .. } => {
                        if let Ok(pool) = registry.pool(&event.pool_name) {
                            reporter
                                .set_service_status(service, serving(pool.is_healthy()))
                                .await;
                        }
                    }
                    PoolEventKind::PoolDeleted => reporter.clear_service_status(&service).await,
                    PoolEventKind::HealthCheckFailed { .. }
                    | PoolEventKind::HealthCheckSucceeded { .. }
                    | PoolEventKind::Scaled { .. }
                    | PoolEventKind::ConfigChanged { .. }
                    | PoolEventKind::ConnectionRecycled { .. }
                    | PoolEventKind::MissedEvents { .. } => {}
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                for info in registry.list_pools() {
                    reporter
                        .set_service_status(pool_health_name(&info.name), serving(info.is_healthy))
                        .await;
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    for name in registry.pool_names() {
        reporter
            .set_service_status(pool_health_name(&name), ServingStatus::NotServing)
            .await;
    }
}

/// The health service's name for the metrics store (the control database as the
/// recorder sees it).
pub const METRICS_STORE_SERVICE: &str = "poolplane.v1.MetricsStore";

/// Keeps `poolplane.v1.MetricsStore` in grpc.health.v1: SERVING while the recorder
/// can write the control database, NOT_SERVING during an outage.
async fn metrics_store_health(
    mut up: tokio::sync::watch::Receiver<bool>,
    reporter: tonic_health::server::HealthReporter,
    token: CancellationToken,
) {
    use tonic_health::ServingStatus;
    loop {
        let status = if *up.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter
            .set_service_status(METRICS_STORE_SERVICE, status)
            .await;
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            changed = up.changed() => if changed.is_err() { break },
        }
    }
}
