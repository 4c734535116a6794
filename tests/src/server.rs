//! `TestServer`: the real server, in-process, on 127.0.0.1:0 over a fresh TestPg
//! database, with an SDK client. Shut down on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use poolplane_client::PoolplaneClient;
use poolplane_server::{Server, ServerConfig};
use tonic_health::pb::HealthCheckRequest;
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::{TestDatabase, TestPg};

/// The secrets key the test servers of this machine share (created on first use),
/// so that a server restarted on a control database can unseal its passwords.
pub fn test_secrets_key_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join("poolplane-test-secrets.key");
    poolplane::SecretsKey::load_or_create(&path).expect("the test secrets key file");
    path
}

/// A running server for one test.
pub struct TestServer {
    server: Option<Server>,
    /// The gRPC address it listens on.
    pub addr: SocketAddr,
    /// An SDK client connected to it.
    pub client: PoolplaneClient,
    /// Its control database.
    pub control: TestDatabase,
}

impl TestServer {
    /// Starts a server whose control database is a fresh TestPg database.
    pub async fn spawn() -> anyhow::Result<Self> {
        let control = TestPg::database().await?;
        Self::spawn_on(control).await
    }

    /// Starts a server on an existing control database (e.g. a restart).
    pub async fn spawn_on(control: TestDatabase) -> anyhow::Result<Self> {
        Self::spawn_with(control, |_| {}).await
    }

    /// Starts a server on `control` with its config adjusted by `configure`
    /// (e.g. a short metrics interval, or the control database behind a proxy).
    pub async fn spawn_with(
        control: TestDatabase,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<Self> {
        let mut config = Self::config(&control);
        configure(&mut config);
        let server = Server::start(config).await?;
        let addr = server.local_addr();
        let client = PoolplaneClient::connect(addr.to_string()).await?;
        Ok(Self {
            server: Some(server),
            addr,
            client,
            control,
        })
    }

    /// The configuration TestServer starts with: loopback port 0, `control` as the
    /// control database.
    pub fn config(control: &TestDatabase) -> ServerConfig {
        ServerConfig {
            listen: (Ipv4Addr::LOCALHOST, 0).into(),
            database_url: Some(control.url().to_owned()),
            data_dir: std::env::temp_dir(),
            metrics_listen: (Ipv4Addr::LOCALHOST, 0).into(),
            metrics_interval: Duration::from_secs(10),
            metrics_retention: Duration::from_secs(7 * 86_400),
            metrics_buffer_rows: 100_000,
            load_test_limits: Default::default(),
            connection_reserve: 5,
            tls: None,
            shutdown_grace: Duration::from_secs(5),
            auth_tokens_file: None,
            insecure_no_auth: false,
            secrets_key_file: Some(test_secrets_key_file()),
            allowed_db_hosts: None,
            max_pools: 1000,
            auto_optimize_interval: None,
            demo: false,
            limits: Default::default(),
            pg: poolplane_server::PgFrontDoor {
                listen: Some((Ipv4Addr::LOCALHOST, 0).into()),
                ..Default::default()
            },
            replica: poolplane_server::Replica::default(),
        }
    }

    /// The running server (its registry, its recorder's counters).
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running until shutdown")
    }

    /// Watch streams whose server task is still running.
    pub fn active_watchers(&self) -> usize {
        self.server.as_ref().map_or(0, Server::active_watchers)
    }

    /// A plain gRPC channel to the server, for the generated clients.
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let endpoint = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))?;
        Ok(endpoint.connect().await?)
    }

    /// What grpc.health.v1 says of `service` (e.g. [`pool_health_name`] or
    /// [`METRICS_STORE_SERVICE`]); an error if the call fails (NOT_FOUND for a
    /// service the server does not know).
    ///
    /// [`pool_health_name`]: poolplane_server::app::pool_health_name
    /// [`METRICS_STORE_SERVICE`]: poolplane_server::app::METRICS_STORE_SERVICE
    pub async fn health(&self, service: &str) -> anyhow::Result<ServingStatus> {
        let mut health = HealthClient::new(self.channel().await?);
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        let status = health.check(request).await?.into_inner().status;
        Ok(ServingStatus::try_from(status)?)
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(server) = self.server.take() {
            server.shutdown().await?;
        }
        Ok(())
    }
}
