//! `TestPg`: one embedded PostgreSQL cluster per test process (or the server named by
//! POOLPLANE_TEST_DATABASE_URL), and a fresh database per test.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;
use poolplane::EmbeddedPg;
use tokio::sync::OnceCell;

/// The cluster the tests of this process share.
pub struct TestPg;

enum Cluster {
    Embedded(EmbeddedPg),
    External(tokio_postgres::Config),
}

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    url: String,
    config: tokio_postgres::Config,
}

impl TestDatabase {
    /// A postgres:// URL (with password) for it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address its server listens on (for a FaultProxy in front of it).
    pub fn server_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => anyhow::bail!("the test database is not reached over TCP"),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
            .next()
            .context("no address for the test database")
    }

    /// A URL for it through another address (e.g. a FaultProxy).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        render_url_at(&self.config, &self.name, Some(addr))
    }

    /// A fresh client connection to it.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url).await
    }
}

/// Opens a tokio-postgres connection to `url`, driving it on a spawned task.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", poolplane::conninfo::redact(url)))?;
    tokio::spawn(connection);
    Ok(client)
}

impl TestPg {
    async fn cluster() -> anyhow::Result<&'static Cluster> {
        CLUSTER
            .get_or_try_init(|| async {
                match std::env::var("POOLPLANE_TEST_DATABASE_URL") {
                    Ok(url) => Ok(Cluster::External(
                        url.parse().context("parsing POOLPLANE_TEST_DATABASE_URL")?,
                    )),
                    // Room for every test of a binary running its pools at once.
                    Err(_) => Ok(Cluster::Embedded(
                        EmbeddedPg::start(poolplane::EmbeddedPgOptions {
                            data_dir: None,
                            settings: vec![("max_connections".into(), "400".into())],
                            ..Default::default()
                        })
                        .await
                        .context("starting the embedded PostgreSQL")?,
                    )),
                }
            })
            .await
    }

    /// A URL of the shared cluster's `database` as a superuser.
    pub async fn url(database: &str) -> anyhow::Result<String> {
        Ok(match Self::cluster().await? {
            Cluster::Embedded(pg) => pg.url(database),
            Cluster::External(config) => render_url(config, database),
        })
    }

    /// The embedded cluster, unless POOLPLANE_TEST_DATABASE_URL points elsewhere.
    pub async fn embedded() -> anyhow::Result<Option<&'static EmbeddedPg>> {
        Ok(match Self::cluster().await? {
            Cluster::Embedded(pg) => Some(pg),
            Cluster::External(_) => None,
        })
    }

    /// Creates a fresh, empty database for one test.
    pub async fn database() -> anyhow::Result<TestDatabase> {
        let admin = connect(&Self::url("postgres").await?).await?;
        let name = format!(
            "poolplane_test_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        let url = Self::url(&name).await?;
        let config = url.parse().context("parsing the test database URL")?;
        Ok(TestDatabase { name, url, config })
    }
}

fn render_url(config: &tokio_postgres::Config, database: &str) -> String {
    render_url_at(config, database, None)
}

/// A postgres:// URL for `database` with `config`'s credentials, at `at` if given,
/// else at `config`'s first host and port.
fn render_url_at(
    config: &tokio_postgres::Config,
    database: &str,
    at: Option<std::net::SocketAddr>,
) -> String {
    let mut url = String::from("postgres://");
    if let Some(user) = config.get_user() {
        url.push_str(user);
        if let Some(password) = config.get_password() {
            url.push(':');
            url.push_str(&String::from_utf8_lossy(password));
        }
        url.push('@');
    }
    if let Some(addr) = at {
        url.push_str(&format!("{}:{}/{database}", addr.ip(), addr.port()));
        return url;
    }
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    url.push_str(&format!("{host}:{port}/{database}"));
    url
}

/// Backends of `database` whose application_name is `application_name`, as
/// pg_stat_activity shows them.
pub async fn count_backends(
    client: &tokio_postgres::Client,
    database: &str,
    application_name: &str,
) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            &[&database, &application_name],
        )
        .await?
        .get(0))
}

/// A small pool config for tests: `min`..`max` connections, dynamic sizing off,
/// 5 s acquire timeout, health checked every 2 s with a 1 s timeout.
pub fn test_config(min: u32, max: u32) -> poolplane::AdvancedPoolConfig {
    poolplane::AdvancedPoolConfig {
        min_connections: min,
        max_connections: max,
        acquire_timeout_secs: 5,
        health_check_interval_secs: 2,
        health_check_timeout_secs: 1,
        enable_dynamic_sizing: false,
        min_scale_interval_secs: 1,
        ..poolplane::AdvancedPoolConfig::default()
    }
}

/// A pool config message for tests: `min`..`max` connections, health checked
/// every 2 s with a 1 s timeout, the rest the server's defaults.
pub fn proto_config(min: u32, max: u32) -> poolplane_client::proto::PoolConfig {
    poolplane_client::proto::PoolConfig {
        min_connections: Some(min),
        max_connections: Some(max),
        health_check_interval_secs: Some(2),
        health_check_timeout_secs: Some(1),
        ..Default::default()
    }
}
