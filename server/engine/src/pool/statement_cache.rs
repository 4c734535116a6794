//! The per-connection LRU of prepared statements. Evicting a statement drops the
//! last handle to it, which makes tokio-postgres close it on the server.

use std::num::NonZeroUsize;

use lru::LruCache;
use tokio_postgres::Statement;

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The statement was cached.
    Hit(Statement),
    /// It was not (or the cache is off).
    Miss,
}

/// An LRU of prepared statements keyed by SQL text.
pub(crate) struct StatementCache {
    entries: LruCache<Box<str>, Statement>,
}

impl std::fmt::Debug for StatementCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatementCache")
            .field("len", &self.entries.len())
            .field("capacity", &self.entries.cap())
            .finish()
    }
}

impl StatementCache {
    /// An empty cache of `capacity` entries (at least one is kept allocated; a
    /// capacity of 0 means the caller does not use the cache).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// Looks `sql` up, marking it most recently used.
    pub fn get(&mut self, sql: &str) -> Lookup {
        match self.entries.get(sql) {
            Some(statement) => Lookup::Hit(statement.clone()),
            None => Lookup::Miss,
        }
    }

    /// Caches a statement; returns how many were evicted to make room (0 or 1).
    pub fn insert(&mut self, sql: &str, statement: Statement) -> usize {
        match self.entries.push(sql.into(), statement) {
            Some((key, _evicted)) if &*key != sql => 1,
            _ => 0,
        }
    }

    /// Forgets `sql` (a statement the server no longer accepts); true if it was there.
    pub fn remove(&mut self, sql: &str) -> bool {
        self.entries.pop(sql).is_some()
    }

    /// Changes the capacity, evicting least recently used entries beyond it;
    /// returns how many were evicted.
    pub fn resize(&mut self, capacity: usize) -> usize {
        let before = self.entries.len();
        self.entries
            .resize(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN));
        before - self.entries.len()
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.entries.cap().get()
    }

    /// Drops every entry; returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.entries.len();
        self.entries.clear();
        n
    }
}
