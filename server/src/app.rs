//! Building and running the server: control database (embedded or given), gRPC
//! services, graceful shutdown. Owns the root cancellation token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use poolplane::{ControlStore, EmbeddedPg, EmbeddedPgOptions, conninfo};
use poolplane_proto::v1::pool_service_server::PoolServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::grpc::PoolService;
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
    /// How long in-flight calls may run on after a shutdown request.
    pub shutdown_grace: Duration,
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
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The serving task panicked or was aborted.
    #[error("server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running server. Dropping it cancels it; [`Server::shutdown`] also waits.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    control_database: String,
    token: CancellationToken,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Server {
    /// Opens the control database (starting the embedded one if no URL is given),
    /// applies migrations, binds the listen address and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        let (embedded, database_url) = match &config.database_url {
            Some(url) => (None, url.clone()),
            None => {
                let pg = EmbeddedPg::start(EmbeddedPgOptions {
                    data_dir: Some(config.data_dir.clone()),
                    ..Default::default()
                })
                .await
                .map_err(poolplane::Error::from)?;
                let url = pg.url("postgres");
                (Some(pg), url)
            }
        };
        let store = ControlStore::connect(&database_url).await?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let control_database = conninfo::redact(&database_url);
        match &embedded {
            Some(pg) => tracing::info!(
                listen = %local_addr,
                control_database = %control_database,
                data_dir = %pg.base_dir().display(),
                "poolplane-server started (embedded control database)"
            ),
            None => tracing::info!(
                listen = %local_addr,
                control_database = %control_database,
                "poolplane-server started"
            ),
        }

        let token = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            store,
            embedded,
            token.clone(),
            config.shutdown_grace,
        ));
        Ok(Self {
            local_addr,
            control_database,
            token,
            task: Some(task),
        })
    }

    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
        self.token.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    store: ControlStore,
    embedded: Option<EmbeddedPg>,
    token: CancellationToken,
    grace: Duration,
) -> Result<(), ServerError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PoolServiceServer<PoolService>>()
        .await;
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let stop = token.clone();
    let reporter = health_reporter.clone();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(PoolServiceServer::new(PoolService::new(store.clone())))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            stop.cancelled().await;
            tracing::info!("shutting down: no new calls accepted");
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            reporter
                .set_not_serving::<PoolServiceServer<PoolService>>()
                .await;
        });
    tokio::pin!(server);
    let served = tokio::select! {
        result = &mut server => result.map_err(ServerError::from),
        () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs_f64(), "grace period over: abandoning in-flight calls");
            Ok(())
        }
    };
    if let Err(error) = &served {
        tracing::error!(error = %error_chain(error), "gRPC server failed");
    }
    drop(store);
    if let Some(pg) = embedded {
        pg.stop().await;
        tracing::info!("embedded PostgreSQL stopped");
    }
    tracing::info!("poolplane-server stopped");
    served
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(poolplane_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
