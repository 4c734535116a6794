//! The control database: its migrations, the stored pool definitions, and (in its
//! submodules) the metrics history and the audit trail of config changes.

pub mod config_changes;
pub mod group;
pub mod history;
pub use crate::secrets;

use std::time::{Duration, SystemTime};

use crate::tls::{Connector, PgTls};
use bb8::Pool;
use bb8_postgres::PostgresConnectionManager;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Error;
use crate::conninfo::{ConnInfo, Secret};
use crate::secrets::SecretsKey;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// `establish_connection`: connects to the control database (applying
/// its migrations), ready for [`crate::ConnectionPoolService::new`]. Stored
/// passwords are sealed with the key in `POOLPLANE_SECRETS_KEY_FILE`, or else in
/// [`default_secrets_key_file`] (created if missing): the key a default server uses.
pub async fn establish_connection(database_url: &str) -> Result<ControlStore, Error> {
    let key = match std::env::var_os("POOLPLANE_SECRETS_KEY_FILE") {
        Some(path) => SecretsKey::load(Path::new(&path))?,
        None => SecretsKey::load_or_create(&default_secrets_key_file())?,
    };
    ControlStore::connect(database_url, key).await
}

/// Where poolplane keeps its state by default: /var/lib/poolplane as root (the
/// `postgres` user cannot enter /root), else $XDG_DATA_HOME/poolplane.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/poolplane");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
        .join("poolplane")
}

/// The secrets key file in [`default_data_dir`].
pub fn default_secrets_key_file() -> PathBuf {
    default_data_dir().join("secrets.key")
}

/// A pool definition as stored in `pool_definitions`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDefinition {
    /// The pool's name.
    pub name: String,
    /// The pool's database, its password unsealed (shown as `***`).
    pub target: ConnInfo,
    /// The explicitly set config fields, as JSON.
    pub config: serde_json::Value,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
    /// Bumped by every change of its config (replicas compare it).
    pub version: i64,
}

/// A connection pool to the control database, with the schema migrated.
#[derive(Debug, Clone)]
pub struct ControlStore {
    pool: Pool<PostgresConnectionManager<Connector>>,
    key: Arc<SecretsKey>,
    /// How to open a connection of its own (LISTEN, a held advisory lock).
    direct: Arc<Direct>,
    /// The replica whose history this store writes (its rows carry it).
    replica: Arc<std::sync::OnceLock<String>>,
}

/// The control database's connection settings and TLS connector.
struct Direct(tokio_postgres::Config, Connector);

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").finish_non_exhaustive()
    }
}

impl ControlStore {
    /// Connects to the control database, applies every pending migration and seals
    /// any password still stored in clear (rows from before sealing existed) with
    /// `key`.
    pub async fn connect(database_url: &str, key: SecretsKey) -> Result<Self, Error> {
        let target = ConnInfo::parse(database_url).map_err(Error::InvalidDatabaseUrl)?;
        let config = target.pg_config().map_err(Error::InvalidDatabaseUrl)?;
        let tls = PgTls::for_target(&target).map_err(Error::InvalidDatabaseUrl)?;
        let direct = Arc::new(Direct(config.clone(), tls.connector.clone()));
        let manager = PostgresConnectionManager::new(config, tls.connector);
        let pool = Pool::builder()
            .max_size(4)
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .await
            .map_err(|source| Error::ControlDatabase {
                context: "connecting",
                source,
            })?;
        let store = Self {
            pool,
            key: Arc::new(key),
            direct,
            replica: Arc::default(),
        };
        store.migrate().await?;
        store.seal_clear_passwords().await?;
        Ok(store)
    }

    /// Writes history on behalf of replica `id` from now on (set once).
    pub fn set_replica(&self, id: &str) {
        let _ = self.replica.set(id.to_owned());
    }

    /// The replica this store writes history for ('' when none was set).
    pub fn replica(&self) -> &str {
        self.replica.get().map_or("", String::as_str)
    }

    /// The id of the key stored passwords are sealed with.
    pub fn secrets_key_id(&self) -> String {
        self.key.id_hex()
    }

    /// Seals the passwords of rows stored before sealing existed: the URL keeps
    /// every option but the password, the password goes sealed to its column.
    async fn seal_clear_passwords(&self) -> Result<(), Error> {
        let conn = self.conn().await?;
        let query = |context| move |source| Error::ControlQuery { context, source };
        let rows = conn
            .query(
                "SELECT name, database_url FROM pool_definitions WHERE database_password IS NULL",
                &[],
            )
            .await
            .map_err(query("reading pool definitions"))?;
        for row in rows {
            let name: String = row.get(0);
            let url: String = row.get(1);
            let Ok(target) = ConnInfo::parse(&url) else {
                continue; // restore skips it, saying why
            };
            let Some(password) = target.password() else {
                continue;
            };
            let sealed = self.key.seal(&name, password.expose())?;
            conn.execute(
                "UPDATE pool_definitions SET database_url = $2, database_password = $3 \
                 WHERE name = $1",
                &[&name, &target.without_password(), &sealed],
            )
            .await
            .map_err(query("sealing a stored password"))?;
            tracing::info!(pool = %name, "sealed a password stored in clear");
        }
        Ok(())
    }

    /// Applies the embedded migrations that have not run yet (idempotent).
    pub async fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.conn().await?;
        let report = embedded::migrations::runner()
            .set_migration_table_name("poolplane_schema_history")
            .run_async(&mut *conn)
            .await
            .map_err(|e| Error::Migration(Box::new(e)))?;
        for migration in report.applied_migrations() {
            tracing::info!(
                version = migration.version(),
                name = migration.name(),
                "applied migration"
            );
        }
        Ok(())
    }

    /// Every stored pool definition, ordered by name.
    pub async fn list_pool_definitions(&self) -> Result<Vec<PoolDefinition>, Error> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT name, database_url, config, created_at, updated_at, database_password, \
                 version FROM pool_definitions ORDER BY name",
                &[],
            )
            .await
            .map_err(|source| Error::ControlQuery {
                context: "listing pool definitions",
                source,
            })?;
        let mut definitions = Vec::with_capacity(rows.len());
        for row in &rows {
            match self.definition(row) {
                Ok(definition) => definitions.push(definition),
                Err(Error::InvalidDatabaseUrl(reason)) => {
                    let name: String = row.get(0);
                    tracing::error!(pool = %name, %reason, "stored database URL does not parse; pool skipped");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(definitions)
    }

    /// Stores a new definition; fails with [`Error::PoolAlreadyExists`] if the name
    /// is taken. Returns the stored row (with its timestamps).
    pub async fn insert_pool_definition(
        &self,
        name: &str,
        target: &ConnInfo,
        config: &serde_json::Value,
    ) -> Result<PoolDefinition, Error> {
        let sealed = match target.password() {
            Some(password) => Some(self.key.seal(name, password.expose())?),
            None => None,
        };
        let conn = self.conn().await?;
        let row = conn
            .query_one(
                "INSERT INTO pool_definitions (name, database_url, config, database_password) \
                 VALUES ($1, $2, $3, $4) \
                 RETURNING name, database_url, config, created_at, updated_at, database_password, \
                 version",
                &[&name, &target.without_password(), config, &sealed],
            )
            .await
            .map_err(|source| {
                if source.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    Error::PoolAlreadyExists(name.to_owned())
                } else {
                    Error::ControlQuery {
                        context: "storing a pool definition",
                        source,
                    }
                }
            })?;
        self.definition(&row)
    }

    /// Replaces a stored definition's config, if it is still at `version`
    /// (another replica may have changed it since: [`Error::ConcurrentChange`]);
    /// returns the row, its version bumped.
    pub async fn update_pool_config(
        &self,
        name: &str,
        config: &serde_json::Value,
        version: i64,
    ) -> Result<PoolDefinition, Error> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                "UPDATE pool_definitions SET config = $2, updated_at = now(), version = version + 1 \
                 WHERE name = $1 AND version = $3 \
                 RETURNING name, database_url, config, created_at, updated_at, database_password, \
                 version",
                &[&name, config, &version],
            )
            .await
            .map_err(|source| Error::ControlQuery {
                context: "updating a pool definition",
                source,
            })?;
        match row {
            Some(row) => self.definition(&row),
            None => match self.get_pool_definition(name).await? {
                Some(_) => Err(Error::ConcurrentChange(name.to_owned())),
                None => Err(Error::PoolNotFound(name.to_owned())),
            },
        }
    }

    /// The stored definition of `name`, if any.
    pub async fn get_pool_definition(&self, name: &str) -> Result<Option<PoolDefinition>, Error> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                "SELECT name, database_url, config, created_at, updated_at, database_password, \
                 version FROM pool_definitions WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(|source| Error::ControlQuery {
                context: "reading a pool definition",
                source,
            })?;
        row.map(|row| self.definition(&row)).transpose()
    }

    /// Removes a stored definition; false if there was none.
    pub async fn delete_pool_definition(&self, name: &str) -> Result<bool, Error> {
        let conn = self.conn().await?;
        let deleted = conn
            .execute("DELETE FROM pool_definitions WHERE name = $1", &[&name])
            .await
            .map_err(|source| Error::ControlQuery {
                context: "deleting a pool definition",
                source,
            })?;
        Ok(deleted == 1)
    }

    pub(crate) async fn conn(
        &self,
    ) -> Result<bb8::PooledConnection<'_, PostgresConnectionManager<Connector>>, Error> {
        self.pool.get().await.map_err(|e| match e {
            bb8::RunError::User(source) => Error::ControlDatabase {
                context: "connecting",
                source,
            },
            bb8::RunError::TimedOut => Error::ControlDatabaseTimeout,
        })
    }
}

impl ControlStore {
    /// A stored row as a definition, its password unsealed. A URL that no longer
    /// parses is an error naming the pool; a password sealed with another key is
    /// [`secrets::SecretsError::WrongKey`].
    fn definition(&self, row: &tokio_postgres::Row) -> Result<PoolDefinition, Error> {
        let name: String = row.get(0);
        let url: String = row.get(1);
        let sealed: Option<Vec<u8>> = row.get(5);
        let target = ConnInfo::parse(&url).map_err(Error::InvalidDatabaseUrl)?;
        let target = match sealed {
            Some(sealed) => {
                let password = self.key.open(&name, &sealed)?;
                target.with_password(Some(Secret::new(password)))
            }
            None => target,
        };
        Ok(PoolDefinition {
            name,
            target,
            config: row.get(2),
            created_at: row.get(3),
            updated_at: row.get(4),
            version: row.get(6),
        })
    }
}
