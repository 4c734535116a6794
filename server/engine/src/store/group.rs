//! The replica group's share of the control database: each replica's row and
//! heartbeat, the definitions' versions, and connections of a replica's own
//! (one that listens for announced definition changes, one that holds the
//! leader's advisory lock).

use std::time::{Duration, SystemTime};

use super::ControlStore;
use crate::Error;

/// The channel every change of a pool definition is announced on (payload: the
/// pool's name), by a trigger of `pool_definitions`.
pub const DEFINITIONS_CHANNEL: &str = "poolplane_definitions";

/// The advisory lock whose holder leads the group's singleton jobs.
pub const LEADER_LOCK: i64 = 0x706f_6f6c_706c_616e; // "poolplan"

/// One replica as the group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its id (`--replica-id`).
    pub id: String,
    /// Its gRPC address.
    pub grpc_address: String,
    /// Its PostgreSQL front door's address, if it has one.
    pub pg_address: Option<String>,
    /// When it started.
    pub started_at: SystemTime,
    /// Its last heartbeat.
    pub heartbeat_at: SystemTime,
    /// How long its heartbeat holds.
    pub lease: Duration,
    /// Whether its heartbeat is within its lease (by the control database's clock).
    pub alive: bool,
    /// Whether it leads the singleton jobs.
    pub leader: bool,
    /// Pools it serves.
    pub pools: u32,
}

/// What a replica writes with each heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    pub id: &'a str,
    pub grpc_address: &'a str,
    pub pg_address: Option<&'a str>,
    pub started_at: SystemTime,
    pub lease: Duration,
    pub leader: bool,
    pub pools: u32,
}

fn query_error(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::ControlQuery { context, source }
}

impl ControlStore {
    /// Records (or renews) a replica's row, its heartbeat now.
    pub async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<(), Error> {
        let lease_ms = i64::try_from(beat.lease.as_millis()).unwrap_or(i64::MAX);
        let pools = i32::try_from(beat.pools).unwrap_or(i32::MAX);
        self.conn()
            .await?
            .execute(
                "INSERT INTO replicas (id, grpc_address, pg_address, started_at, heartbeat_at, \
                 lease_ms, leader, pools) VALUES ($1, $2, $3, $4, now(), $5, $6, $7) \
                 ON CONFLICT (id) DO UPDATE SET grpc_address = $2, pg_address = $3, \
                 started_at = $4, heartbeat_at = now(), lease_ms = $5, leader = $6, pools = $7",
                &[
                    &beat.id,
                    &beat.grpc_address,
                    &beat.pg_address,
                    &beat.started_at,
                    &lease_ms,
                    &beat.leader,
                    &pools,
                ],
            )
            .await
            .map_err(query_error("renewing the replica's heartbeat"))?;
        Ok(())
    }

    /// A replica that stops: its row goes (the others see it gone at once).
    pub async fn leave_group(&self, id: &str) -> Result<(), Error> {
        self.conn()
            .await?
            .execute("DELETE FROM replicas WHERE id = $1", &[&id])
            .await
            .map_err(query_error("removing the replica's row"))?;
        Ok(())
    }

    /// Every replica of the group, by id (gone ones too, `alive` false).
    pub async fn replicas(&self) -> Result<Vec<Replica>, Error> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT id, grpc_address, pg_address, started_at, heartbeat_at, lease_ms, \
                 heartbeat_at + lease_ms * interval '1 millisecond' >= now(), leader, pools \
                 FROM replicas ORDER BY id",
                &[],
            )
            .await
            .map_err(query_error("listing the replicas"))?;
        Ok(rows
            .iter()
            .map(|row| Replica {
                id: row.get(0),
                grpc_address: row.get(1),
                pg_address: row.get(2),
                started_at: row.get(3),
                heartbeat_at: row.get(4),
                lease: Duration::from_millis(u64::try_from(row.get::<_, i64>(5)).unwrap_or(0)),
                alive: row.get(6),
                leader: row.get(7),
                pools: u32::try_from(row.get::<_, i32>(8)).unwrap_or(0),
            })
            .collect())
    }

    /// Each stored definition's name and version.
    pub async fn definition_versions(&self) -> Result<Vec<(String, i64)>, Error> {
        let rows = self
            .conn()
            .await?
            .query("SELECT name, version FROM pool_definitions", &[])
            .await
            .map_err(query_error("reading the definitions' versions"))?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// A connection of its own to the control database (for LISTEN, or to hold
    /// a session advisory lock), with its driver: the caller polls it.
    pub async fn direct_connection(
        &self,
    ) -> Result<(tokio_postgres::Client, crate::tls::PgConnection), Error> {
        let super::Direct(config, connector) = &*self.direct;
        let mut config = config.clone();
        config.connect_timeout(Duration::from_secs(10));
        config
            .connect(connector.clone())
            .await
            .map_err(|source| Error::ControlDatabase {
                context: "connecting",
                source,
            })
    }
}
