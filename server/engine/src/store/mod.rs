//! The control database: its migrations, the stored pool definitions, and (in its
//! submodules) the metrics history and its recorder.

pub mod history;
pub mod recorder;

use std::time::{Duration, SystemTime};

use bb8::Pool;
use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::NoTls;

use crate::Error;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// The seed's `establish_connection`: connects to the control database (applying
/// its migrations), ready for [`crate::ConnectionPoolService::new`].
pub async fn establish_connection(database_url: &str) -> Result<ControlStore, Error> {
    ControlStore::connect(database_url).await
}

/// A pool definition as stored in `pool_definitions`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDefinition {
    /// The pool's name.
    pub name: String,
    /// The pool's database, with its password (redact before showing it).
    pub database_url: String,
    /// The explicitly set config fields, as JSON.
    pub config: serde_json::Value,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
}

/// A connection pool to the control database, with the schema migrated.
#[derive(Debug, Clone)]
pub struct ControlStore {
    pool: Pool<PostgresConnectionManager<NoTls>>,
}

impl ControlStore {
    /// Connects to the control database and applies every pending migration.
    pub async fn connect(database_url: &str) -> Result<Self, Error> {
        let config: tokio_postgres::Config =
            database_url
                .parse()
                .map_err(|source| Error::InvalidDatabaseUrl {
                    url: crate::conninfo::redact(database_url),
                    source,
                })?;
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = Pool::builder()
            .max_size(4)
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .await
            .map_err(|source| Error::ControlDatabase {
                context: "connecting",
                source,
            })?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
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
                "SELECT name, database_url, config, created_at, updated_at \
                 FROM pool_definitions ORDER BY name",
                &[],
            )
            .await
            .map_err(|source| Error::ControlQuery {
                context: "listing pool definitions",
                source,
            })?;
        Ok(rows.iter().map(definition).collect())
    }

    /// Stores a new definition; fails with [`Error::PoolAlreadyExists`] if the name
    /// is taken. Returns the stored row (with its timestamps).
    pub async fn insert_pool_definition(
        &self,
        name: &str,
        database_url: &str,
        config: &serde_json::Value,
    ) -> Result<PoolDefinition, Error> {
        let conn = self.conn().await?;
        let row = conn
            .query_one(
                "INSERT INTO pool_definitions (name, database_url, config) VALUES ($1, $2, $3) \
                 RETURNING name, database_url, config, created_at, updated_at",
                &[&name, &database_url, config],
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
        Ok(definition(&row))
    }

    /// Replaces a stored definition's config; returns the row.
    pub async fn update_pool_config(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<PoolDefinition, Error> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                "UPDATE pool_definitions SET config = $2, updated_at = now() WHERE name = $1 \
                 RETURNING name, database_url, config, created_at, updated_at",
                &[&name, config],
            )
            .await
            .map_err(|source| Error::ControlQuery {
                context: "updating a pool definition",
                source,
            })?
            .ok_or_else(|| Error::PoolNotFound(name.to_owned()))?;
        Ok(definition(&row))
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
    ) -> Result<bb8::PooledConnection<'_, PostgresConnectionManager<NoTls>>, Error> {
        self.pool.get().await.map_err(|e| match e {
            bb8::RunError::User(source) => Error::ControlDatabase {
                context: "connecting",
                source,
            },
            bb8::RunError::TimedOut => Error::ControlDatabaseTimeout,
        })
    }
}

fn definition(row: &tokio_postgres::Row) -> PoolDefinition {
    PoolDefinition {
        name: row.get(0),
        database_url: row.get(1),
        config: row.get(2),
        created_at: row.get(3),
        updated_at: row.get(4),
    }
}
