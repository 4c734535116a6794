//! Prepared statements across transaction pooling. Per pool: one server-side
//! name per distinct (SQL text, parameter types). Per client: its own names →
//! the pool's. Per backend (kept with the connection): which of the pool's it
//! has prepared.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::state::Effects;

/// One statement of a pool.
#[derive(Debug)]
pub(crate) struct Statement {
    pub id: u64,
    /// Its server-side name (`pp_<id>`): never one of tokio-postgres' `s<N>`.
    pub name: Bytes,
    /// The Parse body after the name: SQL text and parameter types.
    pub sql_and_types: Bytes,
    /// What it does to a session, read once.
    pub effects: Effects,
    /// A backend prepared it once: the SQL is valid, so a client's Parse of it
    /// is answered without taking a backend.
    pub valid: AtomicBool,
}

impl PartialEq for Statement {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Statement {}

/// The most distinct statements a pool's map keeps (the least recently
/// prepared beyond it are forgotten; clients holding them keep working).
const POOL_STATEMENTS: usize = 16_384;

/// The statements of one pool.
#[derive(Debug)]
pub(crate) struct PoolStatements {
    map: Mutex<lru::LruCache<Bytes, Arc<Statement>>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Default for PoolStatements {
    fn default() -> Self {
        Self {
            map: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(POOL_STATEMENTS).expect("not zero"),
            )),
        }
    }
}

impl PoolStatements {
    /// The statement for a Parse body's SQL and types (made on first sight).
    pub(crate) fn get(&self, sql_and_types: &[u8]) -> Arc<Statement> {
        let mut map = self.map.lock().expect("statements lock");
        if let Some(found) = map.get(sql_and_types) {
            return Arc::clone(found);
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let sql_end = sql_and_types
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(sql_and_types.len());
        let sql = String::from_utf8_lossy(&sql_and_types[..sql_end]);
        let key = Bytes::copy_from_slice(sql_and_types);
        let statement = Arc::new(Statement {
            id,
            name: Bytes::from(format!("pp_{id}")),
            sql_and_types: key.clone(),
            effects: crate::state::effects(&sql),
            valid: AtomicBool::new(false),
        });
        map.put(key, Arc::clone(&statement));
        statement
    }
}

/// Every pool's statements, by pool name.
#[derive(Debug, Default)]
pub(crate) struct Statements {
    pools: Mutex<HashMap<String, Arc<PoolStatements>>>,
}

impl Statements {
    pub(crate) fn of(&self, pool: &str) -> Arc<PoolStatements> {
        let mut pools = self.pools.lock().expect("statements lock");
        Arc::clone(pools.entry(pool.to_owned()).or_default())
    }

    /// Forgets a deleted pool's statements.
    pub(crate) fn forget(&self, pool: &str) {
        self.pools.lock().expect("statements lock").remove(pool);
    }
}

/// The most named statements one client may hold.
pub(crate) const CLIENT_STATEMENTS: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_per_distinct_sql_and_types() {
        let pool = PoolStatements::default();
        let a = pool.get(b"SELECT $1\0\0\x01\0\0\0\x17");
        let b = pool.get(b"SELECT $1\0\0\x01\0\0\0\x17");
        let c = pool.get(b"SELECT $1\0\0\x01\0\0\0\x19");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert!(a.name.starts_with(b"pp_"));
        assert!(pool.get(b"SET search_path = x\0\0\0").effects.settings);
    }
}
