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

/// The channel an allocation round announces on when a replica lacks what it
/// needs at least (its pools' mins, or one connection for its demand) or gives
/// back what such a replica waits for (payload: server, tab, replica): the
/// others run their round at once rather than in a third of a lease.
pub const BUDGETS_CHANNEL: &str = "poolplane_budgets";

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
    /// Connections it may open, over every server's budget (its allocations).
    pub allocated: u32,
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
        let conn = self.conn().await?;
        conn.execute("DELETE FROM replica_pool_stats WHERE replica = $1", &[&id])
            .await
            .map_err(query_error("removing the replica's stats"))?;
        conn.execute("DELETE FROM replicas WHERE id = $1", &[&id])
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
                 heartbeat_at + lease_ms * interval '1 millisecond' >= now(), leader, pools, \
                 (SELECT coalesce(sum(allocation), 0) FROM budget_allocations b \
                  WHERE b.replica = replicas.id)::int4 \
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
                allocated: u32::try_from(row.get::<_, i32>(9)).unwrap_or(0),
            })
            .collect())
    }

    /// The gRPC address, last heartbeat and lease of the live replica called
    /// `id`, if there is one.
    pub async fn live_replica(
        &self,
        id: &str,
    ) -> Result<Option<(String, SystemTime, Duration)>, Error> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT grpc_address, heartbeat_at, lease_ms FROM replicas WHERE id = $1 \
                 AND heartbeat_at + lease_ms * interval '1 millisecond' >= now()",
                &[&id],
            )
            .await
            .map_err(query_error("reading a replica's row"))?;
        Ok(row.map(|row| {
            let lease = u64::try_from(row.get::<_, i64>(2)).unwrap_or(0);
            (row.get(0), row.get(1), Duration::from_millis(lease))
        }))
    }

    /// How many replicas' heartbeats are within their lease.
    pub async fn live_replicas(&self) -> Result<u32, Error> {
        let live: i64 = self
            .conn()
            .await?
            .query_one(
                "SELECT count(*) FROM replicas \
                 WHERE heartbeat_at + lease_ms * interval '1 millisecond' >= now()",
                &[],
            )
            .await
            .map_err(query_error("counting the live replicas"))?
            .get(0);
        Ok(u32::try_from(live).unwrap_or(u32::MAX))
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

/// What a replica asks of one server's budget in an allocation round.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The server (its budget's key).
    pub server: &'a str,
    /// The replica.
    pub replica: &'a str,
    /// The server's budget for all replicas together, as this replica read
    /// it (none yet: what the others read is taken).
    pub available: Option<u32>,
    /// Connections checked out plus waiting in this replica's pools there.
    pub demand: u32,
    /// The sum of this replica's pools' min_connections there.
    pub min_total: u32,
    /// Connections this replica's pools hold there now.
    pub in_use: u32,
    /// Whether the rows of replicas whose lease ran out may be shrunk to
    /// their mins (not right after this replica itself was cut off from the
    /// control database: the others' heartbeats are late for the same reason).
    pub may_forget: bool,
}

/// What an allocation round comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// The replica's allocation.
    Given(Allocation),
    /// Neither this replica nor any other has read the server's budget yet.
    Unread,
    /// This replica's own heartbeat is not live: no allocation (the others
    /// would shrink it).
    NotLive,
}

/// What an allocation round gives a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The connections this replica may open to the server.
    pub allocation: u32,
    /// The live replicas the budget is split among.
    pub replicas: u32,
}

/// A replica's fair part of `available`: its min first, then the rest in
/// proportion to demand (an equal part of it when nobody has demand).
/// `others` are the other live replicas' (demand, min_total).
pub fn fair_share(available: u32, demand: u32, min_total: u32, others: &[(u32, u32)]) -> u32 {
    let mins: u64 = u64::from(min_total) + others.iter().map(|(_, m)| u64::from(*m)).sum::<u64>();
    let rest = u64::from(available).saturating_sub(mins);
    let demands: u64 = u64::from(demand) + others.iter().map(|(d, _)| u64::from(*d)).sum::<u64>();
    let part = (rest * u64::from(demand))
        .checked_div(demands)
        .unwrap_or(rest / (others.len() as u64 + 1));
    u32::try_from(u64::from(min_total) + part).unwrap_or(u32::MAX)
}

impl ControlStore {
    /// One allocation round of one server's budget for one replica, in one
    /// transaction under the server's advisory lock: a replica silent for its
    /// lease keeps only its mins (what it holds itself once cut off: it may
    /// still be serving), one silent for ten leases is forgotten; the replica
    /// gets its fair share, but only out of what the others' allocations
    /// leave, and records at least what it holds (so that no other replica
    /// grows into connections still open here). Returns the limit to apply
    /// here and the live replicas (or why there is none).
    pub async fn allocate(&self, ask: &Ask<'_>) -> Result<Round, Error> {
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(query_error("starting an allocation round"))?;
        if !lock_while_live(&tx, ask).await? {
            return Ok(Round::NotLive);
        }
        if ask.may_forget {
            forget_silent(&tx, ask.server).await?;
        }
        let rows = tx
            .query(
                "SELECT allocation, demand, min_total, available FROM budget_allocations \
                 WHERE server = $1 AND replica <> $2",
                &[&ask.server, &ask.replica],
            )
            .await
            .map_err(query_error("reading the other replicas' allocations"))?;
        let count = |v: i32| u32::try_from(v).unwrap_or(0);
        // The least any replica read (they agree unless the server changed
        // or their reserves differ): the budget is not overrun either way.
        let read = rows
            .iter()
            .filter_map(|r| r.get::<_, Option<i32>>(3).map(count))
            .chain(ask.available)
            .min();
        let Some(available) = read else {
            return Ok(Round::Unread);
        };
        let others: Vec<(u32, u32)> = rows
            .iter()
            .map(|r| (count(r.get(1)), count(r.get(2))))
            .collect();
        let taken: u32 = rows.iter().map(|r| count(r.get(0))).sum();
        let free = available.saturating_sub(taken);
        let fair = fair_share(available, ask.demand, ask.min_total, &others);
        let limit = fair.min(free);
        let recorded = limit.max(ask.in_use.min(free));
        let before = record(&tx, ask, recorded).await?;
        // What a replica needs at least: its mins, or one connection for demand.
        let least = |demand: u32, min_total: u32| min_total.max(u32::from(demand > 0));
        let short = limit < least(ask.demand, ask.min_total);
        let gave_back = before.is_some_and(|b| recorded < b);
        let someone_short = rows
            .iter()
            .any(|r| count(r.get(0)) < least(count(r.get(1)), count(r.get(2))));
        if short || (gave_back && someone_short) {
            tx.execute(
                "SELECT pg_notify($1, $2 || E'\t' || $3)",
                &[&BUDGETS_CHANNEL, &ask.server, &ask.replica],
            )
            .await
            .map_err(query_error("announcing an allocation round"))?;
        }
        tx.commit()
            .await
            .map_err(query_error("committing an allocation round"))?;
        Ok(Round::Given(Allocation {
            allocation: limit,
            replicas: u32::try_from(others.len() + 1).unwrap_or(u32::MAX),
        }))
    }

    /// Forgets replicas silent for ten leases (their rows, stats and
    /// allocations): the group lists them as gone until then.
    pub async fn forget_gone_replicas(&self) -> Result<u64, Error> {
        let conn = self.conn().await?;
        let gone = "SELECT id FROM replicas \
                    WHERE heartbeat_at + 10 * lease_ms * interval '1 millisecond' < now()";
        for table in ["replica_pool_stats", "budget_allocations"] {
            conn.execute(
                &format!("DELETE FROM {table} WHERE replica IN ({gone})"),
                &[],
            )
            .await
            .map_err(query_error("forgetting gone replicas"))?;
        }
        conn.execute(&format!("DELETE FROM replicas WHERE id IN ({gone})"), &[])
            .await
            .map_err(query_error("forgetting gone replicas"))
    }

    /// A replica that stops gives back its allocations (and says so).
    pub async fn release_allocations(&self, replica: &str) -> Result<(), Error> {
        // Announced per server (at once, in the same statement): the others
        // grow into what it gave back in their next round, run now.
        self.conn()
            .await?
            .execute(
                "WITH released AS (DELETE FROM budget_allocations WHERE replica = $1 \
                 RETURNING server) \
                 SELECT pg_notify($2, server || E'\t' || $1) FROM released",
                &[&replica, &BUDGETS_CHANNEL],
            )
            .await
            .map_err(query_error("releasing the replica's allocations"))?;
        Ok(())
    }
}

/// Starts an allocation round: takes the server's advisory lock; whether the
/// replica's own heartbeat is live (only a replica the others see alive holds
/// an allocation: one whose row is not written yet, or lapsed, would be
/// shrunk by the others).
async fn lock_while_live(
    tx: &tokio_postgres::Transaction<'_>,
    ask: &Ask<'_>,
) -> Result<bool, Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('poolplane-budget:' || $1))",
        &[&ask.server],
    )
    .await
    .map_err(query_error("allocating a server's connection budget"))?;
    Ok(tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM replicas WHERE id = $1 \
             AND heartbeat_at + lease_ms * interval '1 millisecond' >= now())",
            &[&ask.replica],
        )
        .await
        .map_err(query_error("reading the replica's own heartbeat"))?
        .get(0))
}

/// Records the replica's allocation (`recorded`) with its demand, mins and
/// what it read of the server; returns the allocation it had before.
async fn record(
    tx: &tokio_postgres::Transaction<'_>,
    ask: &Ask<'_>,
    recorded: u32,
) -> Result<Option<u32>, Error> {
    let as_int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let before: Option<i32> = tx
        .query_one(
            "WITH before AS (SELECT allocation FROM budget_allocations \
             WHERE server = $1 AND replica = $2) \
             INSERT INTO budget_allocations (server, replica, allocation, demand, min_total, \
             available) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (server, replica) DO UPDATE \
             SET allocation = $3, demand = $4, min_total = $5, available = $6, updated_at = now() \
             RETURNING (SELECT allocation FROM before)",
            &[
                &ask.server,
                &ask.replica,
                &as_int(recorded),
                &as_int(ask.demand),
                &as_int(ask.min_total),
                &ask.available.map(as_int),
            ],
        )
        .await
        .map_err(query_error("recording the allocation"))?
        .get(0);
    Ok(before.map(|b| u32::try_from(b).unwrap_or(0)))
}

/// In an allocation round: replicas silent for their lease keep only their
/// mins of `server` (a replica cut off alone holds no more, see
/// [`crate::budget::ServerBudget::fence`]); silent for ten, nothing.
async fn forget_silent(tx: &tokio_postgres::Transaction<'_>, server: &str) -> Result<(), Error> {
    let silent = |leases: i32| {
        format!(
            "NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = b.replica \
             AND r.heartbeat_at + {leases} * r.lease_ms * interval '1 millisecond' >= now())"
        )
    };
    tx.execute(
        &format!(
            "UPDATE budget_allocations b SET allocation = least(b.allocation, b.min_total), \
             demand = 0 WHERE b.server = $1 AND b.allocation > b.min_total AND {}",
            silent(1)
        ),
        &[&server],
    )
    .await
    .map_err(query_error("shrinking silent replicas' allocations"))?;
    tx.execute(
        &format!(
            "DELETE FROM budget_allocations b WHERE b.server = $1 AND {}",
            silent(10)
        ),
        &[&server],
    )
    .await
    .map_err(query_error("forgetting gone replicas' allocations"))?;
    Ok(())
}

/// One replica's latest stats of a pool.
#[derive(Debug, Clone)]
pub struct ReplicaStats {
    /// The replica.
    pub replica: String,
    /// When it recorded them.
    pub updated_at: SystemTime,
    /// The stats.
    pub stats: crate::PoolStats,
}

impl ControlStore {
    /// Records this replica's stats of each pool it serves (and forgets those
    /// of pools it no longer has).
    pub async fn publish_stats(
        &self,
        replica: &str,
        stats: &[(String, crate::PoolStats)],
    ) -> Result<(), Error> {
        let names: Vec<&str> = stats.iter().map(|(n, _)| n.as_str()).collect();
        let values: Vec<serde_json::Value> = stats
            .iter()
            .map(|(_, s)| serde_json::to_value(s).unwrap_or_default())
            .collect();
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO replica_pool_stats (replica, pool_name, stats, updated_at) \
             SELECT $1, n, s, now() FROM unnest($2::text[], $3::jsonb[]) AS u(n, s) \
             ON CONFLICT (replica, pool_name) DO UPDATE SET stats = EXCLUDED.stats, \
             updated_at = now()",
            &[&replica, &names, &values],
        )
        .await
        .map_err(query_error("publishing the replica's pool stats"))?;
        conn.execute(
            "DELETE FROM replica_pool_stats WHERE replica = $1 AND NOT pool_name = ANY($2)",
            &[&replica, &names],
        )
        .await
        .map_err(query_error(
            "forgetting stats of pools the replica no longer has",
        ))?;
        Ok(())
    }

    /// The latest stats of `pool` from every live replica, by replica id.
    pub async fn group_stats(&self, pool: &str) -> Result<Vec<ReplicaStats>, Error> {
        let mut all = self.group_stats_of(&[pool.to_owned()]).await?;
        Ok(all.remove(pool).unwrap_or_default())
    }

    /// The latest stats of each of `pools` from every live replica, by pool
    /// and replica id (in one query).
    pub async fn group_stats_of(
        &self,
        pools: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<ReplicaStats>>, Error> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT s.pool_name, s.replica, s.updated_at, s.stats FROM replica_pool_stats s \
                 JOIN replicas r ON r.id = s.replica \
                 WHERE s.pool_name = ANY($1) \
                 AND r.heartbeat_at + r.lease_ms * interval '1 millisecond' >= now() \
                 ORDER BY s.pool_name, s.replica",
                &[&pools],
            )
            .await
            .map_err(query_error("reading the group's pool stats"))?;
        let mut all: std::collections::HashMap<String, Vec<ReplicaStats>> =
            std::collections::HashMap::new();
        for row in &rows {
            let Ok(stats) = serde_json::from_value(row.get(3)) else {
                continue;
            };
            all.entry(row.get(0)).or_default().push(ReplicaStats {
                replica: row.get(1),
                updated_at: row.get(2),
                stats,
            });
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::fair_share;

    #[test]
    fn shares_follow_demand_after_every_min() {
        // Alone: the whole budget.
        assert_eq!(fair_share(30, 5, 2, &[]), 30);
        // Twice the demand of each of two others: half of what the mins leave.
        assert_eq!(fair_share(30, 20, 2, &[(10, 2), (10, 2)]), 2 + 12);
        assert_eq!(fair_share(30, 10, 2, &[(20, 2), (10, 2)]), 2 + 6);
        // Nobody busy: equal parts.
        assert_eq!(fair_share(30, 0, 0, &[(0, 0), (0, 0)]), 10);
        // The mins alone exceed the budget: each keeps its min.
        assert_eq!(fair_share(4, 3, 3, &[(1, 3)]), 3);
    }
}
