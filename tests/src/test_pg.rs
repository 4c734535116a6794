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
}

impl TestDatabase {
    /// A postgres:// URL (with password) for it.
    pub fn url(&self) -> &str {
        &self.url
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
                    Err(_) => Ok(Cluster::Embedded(
                        EmbeddedPg::start_temporary()
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
            Cluster::External(config) => external_url(config, database),
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
        Ok(TestDatabase { name, url })
    }
}

fn external_url(config: &tokio_postgres::Config, database: &str) -> String {
    let mut url = String::from("postgres://");
    if let Some(user) = config.get_user() {
        url.push_str(user);
        if let Some(password) = config.get_password() {
            url.push(':');
            url.push_str(&String::from_utf8_lossy(password));
        }
        url.push('@');
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
