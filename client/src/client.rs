//! `PoolplaneClient`: typed calls over the generated `poolplane.v1` clients.

use poolplane_proto::v1::pool_service_client::PoolServiceClient;
use poolplane_proto::v1::{
    ConfigChangeRecord, ConfigWarning, CreatePoolRequest, DeletePoolRequest,
    GetHealthStatusRequest, GetMetricsHistoryRequest, GetPerformanceSummaryRequest, GetPoolRequest,
    GetPoolStatsRequest, GetStatementCacheStatsRequest, HealthStatus, ListConfigChangesRequest,
    ListPoolsRequest, ListScalingEventsRequest, MetricsPoint, OptimizationReport,
    OptimizePoolsRequest, PerformanceSummary, Pool, PoolConfig, PoolEvent, PoolStats,
    RunLoadTestRequest, RunLoadTestResponse, ScalingEventRecord, StatementCacheStats,
    UpdatePoolConfigRequest, WatchHealthEventsRequest, WatchPoolStatsRequest,
};
use std::time::Duration;

use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// A connection to a poolplane server. Cheap to clone; clones share the channel.
#[derive(Debug, Clone)]
pub struct PoolplaneClient {
    pub(crate) channel: Channel,
    options: Options,
}

#[derive(Debug, Clone, Default)]
struct Options {
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    request_timeout: Option<Duration>,
    retries: u32,
}

/// Configures a [`PoolplaneClient`] before connecting.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    server: String,
    connect_timeout: Duration,
    options: Options,
    token_error: Option<String>,
    tls_ca: Option<Vec<u8>>,
    tls_ca_error: Option<String>,
    tls_domain: Option<String>,
    tls_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientBuilder {
    /// How long connecting may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A deadline for every call (streams excepted; default none).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.options.request_timeout = Some(timeout);
        self
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn bearer_token(mut self, token: &str) -> Self {
        match format!("Bearer {token}").parse() {
            Ok(value) => self.options.token = Some(value),
            Err(_) => {
                self.token_error = Some("the bearer token is not valid ASCII metadata".into())
            }
        }
        self
    }

    /// Connects over TLS, trusting the PEM CA certificate(s) in `path`.
    pub fn tls_ca_file(mut self, path: impl AsRef<std::path::Path>) -> Self {
        match std::fs::read(path.as_ref()) {
            Ok(pem) => self.tls_ca = Some(pem),
            Err(e) => {
                self.tls_ca_error = Some(format!("reading {}: {e}", path.as_ref().display()));
            }
        }
        self
    }

    /// Connects over TLS, trusting these PEM CA certificate(s).
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(pem.into());
        self
    }

    /// Presents this PEM client certificate (chain) and private key: for a server
    /// that requires mutual TLS. Implies TLS.
    pub fn tls_client_identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// [`tls_client_identity_pem`](Self::tls_client_identity_pem) from files.
    pub fn tls_client_identity_files(
        mut self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Self {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
        };
        match (read(cert.as_ref()), read(key.as_ref())) {
            (Ok(cert), Ok(key)) => self.tls_identity = Some((cert, key)),
            (Err(e), _) | (_, Err(e)) => self.tls_ca_error = Some(e),
        }
        self
    }

    /// The name the server's certificate must carry (default: the host).
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls_domain = Some(domain.into());
        self
    }

    /// Retries idempotent calls (reads) up to `retries` times on UNAVAILABLE, with
    /// jittered exponential backoff from 100 ms (default 0).
    pub fn retries(mut self, retries: u32) -> Self {
        self.options.retries = retries;
        self
    }

    /// Connects.
    pub async fn connect(self) -> Result<PoolplaneClient, Error> {
        let server = self.server.as_str();
        let tls = self.tls_ca.is_some() || self.tls_domain.is_some() || self.tls_identity.is_some();
        if tls && server.to_ascii_lowercase().starts_with("http://") {
            return Err(Error::Status(tonic::Status::invalid_argument(format!(
                "{server} is a plaintext (http://) address but TLS options are set: use https:// \
                 or no scheme"
            ))));
        }
        let uri = if server.contains("://") {
            server.to_owned()
        } else if tls {
            format!("https://{server}")
        } else {
            format!("http://{server}")
        };
        if let Some(reason) = self.token_error.or(self.tls_ca_error) {
            return Err(Error::Status(tonic::Status::invalid_argument(reason)));
        }
        let invalid = |source| Error::InvalidEndpoint {
            endpoint: server.to_owned(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(invalid)?
            .connect_timeout(self.connect_timeout);
        if tls {
            let mut config = tonic::transport::ClientTlsConfig::new();
            if let Some(pem) = self.tls_ca {
                config = config.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            if let Some(domain) = self.tls_domain {
                config = config.domain_name(domain);
            }
            if let Some((cert, key)) = self.tls_identity {
                config = config.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(config).map_err(invalid)?;
        }
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            endpoint: server.to_owned(),
            source,
        })?;
        Ok(PoolplaneClient {
            channel,
            options: self.options,
        })
    }
}

/// Whether a unary call may be sent again after UNAVAILABLE.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// A read: retried as the client's options say.
    Idempotent,
    /// A change: sent once.
    Never,
}

/// A small pseudo-random jitter in [0, 1) from the clock (no RNG dependency).
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}

/// A server stream of `T`, already unwrapped from its response message.
pub struct Watch<M, T> {
    inner: Streaming<M>,
    unwrap: fn(M) -> Option<T>,
}

impl<M, T> std::fmt::Debug for Watch<M, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl<M: Send + 'static, T: Send + 'static> Watch<M, T> {
    /// The watch as a `Stream` of items.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = Result<T, Error>> + Send {
        let Watch { inner, unwrap } = self;
        tokio_stream::StreamExt::filter_map(inner, move |message| match message {
            Ok(message) => unwrap(message).map(Ok),
            Err(status) => Some(Err(Error::Status(status))),
        })
    }
}

impl<M, T> Watch<M, T> {
    /// The items of a server stream, each taken out of its message by `unwrap`.
    fn new(response: tonic::Response<Streaming<M>>, unwrap: fn(M) -> Option<T>) -> Self {
        Self {
            inner: response.into_inner(),
            unwrap,
        }
    }

    /// The next item; `None` when the server ends the stream.
    pub async fn next(&mut self) -> Result<Option<T>, Error> {
        loop {
            match self.inner.message().await? {
                None => return Ok(None),
                Some(message) => {
                    if let Some(item) = (self.unwrap)(message) {
                        return Ok(Some(item));
                    }
                }
            }
        }
    }
}

fn present<T>(value: Option<T>, what: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::Status(tonic::Status::internal(format!("response without {what}"))))
}

/// A read of one pool by name: `$rpc` with a `$Req { pool_name }` (and `limit`
/// for a listing), retried as configured, answering the response's `$field`.
macro_rules! pool_read {
    ($(#[$doc:meta])* $rpc:ident, $Req:ident, $field:ident, $T:ty) => {
        $(#[$doc])*
        pub async fn $rpc(&self, pool_name: &str) -> Result<$T, Error> {
            let request = $Req {
                pool_name: pool_name.to_owned(),
            };
            let response = self
                .unary(Retry::Idempotent, request, |mut s, r| async move {
                    s.$rpc(r).await
                })
                .await?;
            present(response.$field, stringify!($field))
        }
    };
    ($(#[$doc:meta])* $rpc:ident, $Req:ident, $field:ident, $T:ty, limit) => {
        $(#[$doc])*
        pub async fn $rpc(&self, pool_name: &str, limit: u32) -> Result<Vec<$T>, Error> {
            let request = $Req {
                pool_name: pool_name.to_owned(),
                limit,
            };
            let response = self
                .unary(Retry::Idempotent, request, |mut s, r| async move {
                    s.$rpc(r).await
                })
                .await?;
            Ok(response.$field)
        }
    };
}

impl PoolplaneClient {
    /// Connects to a server: `127.0.0.1:50051`, `http://127.0.0.1:50051` or any URI.
    pub async fn connect(server: impl AsRef<str>) -> Result<Self, Error> {
        Self::builder(server).connect().await
    }

    /// A builder for a client with a token, timeouts or retries.
    pub fn builder(server: impl AsRef<str>) -> ClientBuilder {
        ClientBuilder {
            server: server.as_ref().to_owned(),
            connect_timeout: Duration::from_secs(10),
            options: Options::default(),
            token_error: None,
            tls_ca: None,
            tls_ca_error: None,
            tls_domain: None,
            tls_identity: None,
        }
    }

    /// A request carrying the client's token and deadline.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.options.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        if let Some(timeout) = self.options.request_timeout {
            request.set_timeout(timeout);
        }
        request
    }

    /// One unary PoolService call: `rpc` on a fresh client stub with `message`
    /// (token and deadline added). A `Retry::Idempotent` call is retried on
    /// UNAVAILABLE as configured, with jittered exponential backoff.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        retry: Retry,
        message: Req,
        rpc: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(PoolServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let retries = match retry {
            Retry::Idempotent => self.options.retries,
            Retry::Never => 0,
        };
        let mut attempt = 0;
        loop {
            match rpc(self.pool_service(), self.request(message.clone())).await {
                Err(status) if status.code() == tonic::Code::Unavailable && attempt < retries => {
                    let backoff = 0.1 * 2f64.powi(attempt as i32) * (0.5 + jitter());
                    tokio::time::sleep(Duration::from_secs_f64(backoff.min(5.0))).await;
                    attempt += 1;
                }
                result => {
                    return result
                        .map(tonic::Response::into_inner)
                        .map_err(Error::Status);
                }
            }
        }
    }

    /// The raw generated client, for calls the SDK does not wrap.
    pub fn pool_service(&self) -> PoolServiceClient<Channel> {
        PoolServiceClient::new(self.channel.clone())
    }

    /// Creates a pool; unset config fields take the server's defaults.
    pub async fn create_pool(
        &self,
        name: &str,
        database_url: &str,
        config: PoolConfig,
    ) -> Result<Pool, Error> {
        Ok(self
            .create_pool_with_warnings(name, database_url, config)
            .await?
            .0)
    }

    /// [`create_pool`](Self::create_pool), with the values the server found
    /// outside the recommended ranges (the pool is created anyway).
    pub async fn create_pool_with_warnings(
        &self,
        name: &str,
        database_url: &str,
        config: PoolConfig,
    ) -> Result<(Pool, Vec<ConfigWarning>), Error> {
        let request = CreatePoolRequest {
            name: name.to_owned(),
            database_url: database_url.to_owned(),
            config: Some(config),
        };
        let response = self
            .unary(Retry::Never, request, |mut s, r| async move {
                s.create_pool(r).await
            })
            .await?;
        Ok((present(response.pool, "pool")?, response.warnings))
    }

    /// One pool.
    pub async fn get_pool(&self, name: &str) -> Result<Pool, Error> {
        let response = self
            .unary(
                Retry::Idempotent,
                GetPoolRequest {
                    name: name.to_owned(),
                },
                |mut s, r| async move { s.get_pool(r).await },
            )
            .await?;
        present(response.pool, "pool")
    }

    /// Every pool the server hosts, ordered by name.
    pub async fn list_pools(&self) -> Result<Vec<Pool>, Error> {
        let response = self
            .unary(
                Retry::Idempotent,
                ListPoolsRequest {},
                |mut s, r| async move { s.list_pools(r).await },
            )
            .await?;
        Ok(response.pools)
    }

    /// Changes the config fields set in `config`.
    pub async fn update_pool_config(&self, name: &str, config: PoolConfig) -> Result<Pool, Error> {
        Ok(self.update_pool_config_with_warnings(name, config).await?.0)
    }

    /// [`update_pool_config`](Self::update_pool_config), with the values the
    /// server found outside the recommended ranges (the change is made anyway).
    pub async fn update_pool_config_with_warnings(
        &self,
        name: &str,
        config: PoolConfig,
    ) -> Result<(Pool, Vec<ConfigWarning>), Error> {
        let request = UpdatePoolConfigRequest {
            name: name.to_owned(),
            config: Some(config),
        };
        let response = self
            .unary(Retry::Never, request, |mut s, r| async move {
                s.update_pool_config(r).await
            })
            .await?;
        Ok((present(response.pool, "pool")?, response.warnings))
    }

    pool_read!(
        /// A pool's recorded config changes (one per field), newest first: who
        /// changed what, why, and whether it was applied.
        list_config_changes,
        ListConfigChangesRequest,
        changes,
        ConfigChangeRecord,
        limit
    );

    /// The PostgreSQL front door's clients (of `pool` only, if given), oldest
    /// first.
    pub async fn list_clients(
        &self,
        pool: Option<&str>,
    ) -> Result<Vec<poolplane_proto::v1::WireClient>, Error> {
        let request = poolplane_proto::v1::ListClientsRequest {
            pool_name: pool.unwrap_or_default().to_owned(),
        };
        let response = self
            .unary(Retry::Idempotent, request, |mut s, r| async move {
                s.list_clients(r).await
            })
            .await?;
        Ok(response.clients)
    }

    /// Pool `pool_name`'s stats on every live replica of the group (each
    /// replica's latest, by id) and their total: (replicas, total).
    pub async fn get_group_pool_stats(
        &self,
        pool_name: &str,
    ) -> Result<(Vec<poolplane_proto::v1::ReplicaPoolStats>, PoolStats), Error> {
        let response = self.pool_stats(pool_name, true).await?;
        Ok((response.replicas, present(response.total, "total")?))
    }

    /// The servers of the group sharing this server's control database, by id.
    pub async fn list_replicas(&self) -> Result<Vec<poolplane_proto::v1::Replica>, Error> {
        let response = self
            .unary(
                Retry::Idempotent,
                poolplane_proto::v1::ListReplicasRequest {},
                |mut s, r| async move { s.list_replicas(r).await },
            )
            .await?;
        Ok(response.replicas)
    }

    /// Replaces every connection of pool `name` (each after its current use);
    /// returns how many were open.
    pub async fn reconnect_pool(&self, name: &str) -> Result<u32, Error> {
        let request = poolplane_proto::v1::ReconnectPoolRequest {
            pool_name: name.to_owned(),
        };
        let response = self
            .unary(Retry::Never, request, |mut s, r| async move {
                s.reconnect_pool(r).await
            })
            .await?;
        Ok(response.connections)
    }

    /// Pauses pool `name`'s front door (new transactions wait, those in flight
    /// finish); returns the clients still holding a backend after `timeout_secs`
    /// (0: drained).
    pub async fn pause_pool(&self, name: &str, timeout_secs: u64) -> Result<u32, Error> {
        let request = poolplane_proto::v1::PausePoolRequest {
            pool_name: name.to_owned(),
            timeout_secs,
        };
        let response = self
            .unary(Retry::Never, request, |mut s, r| async move {
                s.pause_pool(r).await
            })
            .await?;
        Ok(response.busy)
    }

    /// Resumes a paused pool.
    pub async fn resume_pool(&self, name: &str) -> Result<(), Error> {
        let request = poolplane_proto::v1::ResumePoolRequest {
            pool_name: name.to_owned(),
        };
        self.unary(Retry::Idempotent, request, |mut s, r| async move {
            s.resume_pool(r).await
        })
        .await?;
        Ok(())
    }

    /// Ends front-door client `id` (its transaction, if any, is rolled back).
    pub async fn kill_client(&self, id: u64) -> Result<(), Error> {
        let request = poolplane_proto::v1::KillClientRequest { id };
        self.unary(Retry::Never, request, |mut s, r| async move {
            s.kill_client(r).await
        })
        .await?;
        Ok(())
    }

    /// Deletes a pool (its checked-out connections may finish first).
    pub async fn delete_pool(&self, name: &str) -> Result<(), Error> {
        let request = DeletePoolRequest {
            name: name.to_owned(),
        };
        self.unary(Retry::Never, request, |mut s, r| async move {
            s.delete_pool(r).await
        })
        .await?;
        Ok(())
    }

    /// A pool's stats snapshot (on the replica that answers).
    pub async fn get_pool_stats(&self, pool_name: &str) -> Result<PoolStats, Error> {
        let response = self.pool_stats(pool_name, false).await?;
        present(response.stats, "stats")
    }

    async fn pool_stats(
        &self,
        pool_name: &str,
        group: bool,
    ) -> Result<poolplane_proto::v1::GetPoolStatsResponse, Error> {
        let request = GetPoolStatsRequest {
            pool_name: pool_name.to_owned(),
            group,
        };
        self.unary(Retry::Idempotent, request, |mut s, r| async move {
            s.get_pool_stats(r).await
        })
        .await
    }

    pool_read!(
        /// A pool's health.
        get_health_status,
        GetHealthStatusRequest,
        health,
        HealthStatus
    );

    pool_read!(
        /// A pool's statement-cache counters.
        get_statement_cache_stats,
        GetStatementCacheStatsRequest,
        stats,
        StatementCacheStats
    );

    /// Stats snapshots of `pool_names` (empty: every pool) every `interval_ms`
    /// (0: the server's default of 1000).
    pub async fn watch_pool_stats(
        &self,
        pool_names: &[&str],
        interval_ms: u32,
    ) -> Result<Watch<poolplane_proto::v1::WatchPoolStatsResponse, PoolStats>, Error> {
        let response = self.stats_stream(pool_names, interval_ms, false).await?;
        Ok(Watch::new(response, |m| m.stats))
    }

    async fn stats_stream(
        &self,
        pool_names: &[&str],
        interval_ms: u32,
        group: bool,
    ) -> Result<tonic::Response<Streaming<poolplane_proto::v1::WatchPoolStatsResponse>>, Error>
    {
        Ok(self
            .pool_service()
            .watch_pool_stats(self.request(WatchPoolStatsRequest {
                pool_names: pool_names.iter().map(|n| (*n).to_owned()).collect(),
                interval_ms,
                group,
            }))
            .await?)
    }

    /// As [`watch_pool_stats`](Self::watch_pool_stats), each snapshot with
    /// the pool's row on every live replica of the group and the group's
    /// total (`replicas`, `total`).
    pub async fn watch_group_pool_stats(
        &self,
        pool_names: &[&str],
        interval_ms: u32,
    ) -> Result<
        Watch<
            poolplane_proto::v1::WatchPoolStatsResponse,
            poolplane_proto::v1::WatchPoolStatsResponse,
        >,
        Error,
    > {
        let response = self.stats_stream(pool_names, interval_ms, true).await?;
        Ok(Watch::new(response, Some))
    }

    /// The current health of `pool_names` (empty: every pool), then every event.
    pub async fn watch_health_events(
        &self,
        pool_names: &[&str],
    ) -> Result<Watch<poolplane_proto::v1::WatchHealthEventsResponse, PoolEvent>, Error> {
        let response = self
            .pool_service()
            .watch_health_events(self.request(WatchHealthEventsRequest {
                pool_names: pool_names.iter().map(|n| (*n).to_owned()).collect(),
            }))
            .await?;
        Ok(Watch::new(response, |m| m.event))
    }

    pool_read!(
        /// A pool's performance now and over its last hour, with its recent scaling
        /// events (get_pool_performance_summary).
        get_performance_summary,
        GetPerformanceSummaryRequest,
        summary,
        PerformanceSummary
    );

    /// A pool's recorded metrics between `from` and `to` (defaults: the last hour),
    /// in at most `max_points` points (0: the server's default of 100).
    pub async fn get_metrics_history(
        &self,
        pool_name: &str,
        from: Option<std::time::SystemTime>,
        to: Option<std::time::SystemTime>,
        max_points: u32,
    ) -> Result<Vec<MetricsPoint>, Error> {
        self.get_replica_metrics_history(pool_name, from, to, max_points, None)
            .await
    }

    /// [`get_metrics_history`](Self::get_metrics_history) of one replica of
    /// the group (`None`: every replica, summed per point).
    pub async fn get_replica_metrics_history(
        &self,
        pool_name: &str,
        from: Option<std::time::SystemTime>,
        to: Option<std::time::SystemTime>,
        max_points: u32,
        replica: Option<&str>,
    ) -> Result<Vec<MetricsPoint>, Error> {
        let response = self
            .unary(
                Retry::Idempotent,
                GetMetricsHistoryRequest {
                    pool_name: pool_name.to_owned(),
                    from: from.map(Into::into),
                    to: to.map(Into::into),
                    max_points,
                    replica_id: replica.unwrap_or_default().to_owned(),
                },
                |mut s, r| async move { s.get_metrics_history(r).await },
            )
            .await?;
        Ok(response.points)
    }

    pool_read!(
        /// A pool's recorded scaling decisions, newest first (`limit` 0: 20).
        list_scaling_events,
        ListScalingEventsRequest,
        events,
        ScalingEventRecord,
        limit
    );

    /// Starts a load test; the stream yields progress about once a second, then
    /// the result. Dropping the stream cancels the test.
    pub async fn run_load_test(
        &self,
        request: RunLoadTestRequest,
    ) -> Result<
        Watch<RunLoadTestResponse, poolplane_proto::v1::run_load_test_response::Update>,
        Error,
    > {
        let response = self
            .pool_service()
            .run_load_test(self.request(request))
            .await?;
        Ok(Watch::new(response, |m| m.update))
    }

    /// Recommendations for `pool_names` (empty: all); with `apply`, the numeric ones
    /// are made.
    pub async fn optimize_pools(
        &self,
        pool_names: &[&str],
        apply: bool,
    ) -> Result<OptimizationReport, Error> {
        let request = OptimizePoolsRequest {
            pool_names: pool_names.iter().map(|n| (*n).to_owned()).collect(),
            apply,
        };
        let response = self
            .unary(Retry::Never, request, |mut s, r| async move {
                s.optimize_pools(r).await
            })
            .await?;
        present(response.report, "report")
    }

    /// [`watch_pool_stats`](Self::watch_pool_stats) that survives a server restart:
    /// when the stream breaks (UNAVAILABLE, a transport error, or the server ending
    /// it while shutting down) it reconnects with backoff and watches again. Ends
    /// on any other error, or when the returned stream is dropped.
    pub fn watch_pool_stats_resuming(
        &self,
        pool_names: &[&str],
        interval_ms: u32,
    ) -> impl tokio_stream::Stream<Item = Result<PoolStats, Error>> + Send + 'static {
        let names: Vec<String> = pool_names.iter().map(|n| (*n).to_owned()).collect();
        let client = self.clone();
        resuming(move || {
            let client = client.clone();
            let names = names.clone();
            async move {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                client.watch_pool_stats(&names, interval_ms).await
            }
        })
    }

    /// [`watch_health_events`](Self::watch_health_events) that survives a server
    /// restart (each reconnection starts again with the pools' current health).
    pub fn watch_health_events_resuming(
        &self,
        pool_names: &[&str],
    ) -> impl tokio_stream::Stream<Item = Result<PoolEvent, Error>> + Send + 'static {
        let names: Vec<String> = pool_names.iter().map(|n| (*n).to_owned()).collect();
        let client = self.clone();
        resuming(move || {
            let client = client.clone();
            let names = names.clone();
            async move {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                client.watch_health_events(&names).await
            }
        })
    }
}

/// Whether a broken watch is worth re-opening.
fn resumable(error: &Error) -> bool {
    match error {
        Error::Status(status) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        ),
        Error::Connect { .. } => true,
        Error::Decode(_) => false,
        Error::InvalidEndpoint { .. } => false,
    }
}

/// Re-opens a watch with `open` whenever it breaks resumably; forwards its items.
fn resuming<M, T, F, Fut>(
    open: F,
) -> impl tokio_stream::Stream<Item = Result<T, Error>> + Send + 'static
where
    M: Send + 'static,
    T: Send + 'static,
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Watch<M, T>, Error>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let broke = match open().await {
                Ok(mut watch) => loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        next = watch.next() => match next {
                            Ok(Some(item)) => {
                                backoff = Duration::from_millis(100);
                                if tx.send(Ok(item)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break None, // the server ended it (e.g. shutting down)
                            Err(error) => break Some(error),
                        },
                    }
                },
                Err(error) => Some(error),
            };
            if let Some(error) = broke
                && !resumable(&error)
            {
                let _ = tx.send(Err(error)).await;
                return;
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(backoff.mul_f64(0.5 + jitter())) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
