//! The per-connection LRU of prepared statements (public for its benchmark, not
//! needed to use a pool). Evicting a statement drops the last handle to it, which
//! makes tokio-postgres close it on the server.

use std::num::NonZeroUsize;

use lru::LruCache;
use tokio_postgres::Statement;

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// The statement was cached.
    Hit(Statement),
    /// It was not (or the cache is off).
    Miss,
}

/// An LRU of prepared statements keyed by SQL text. Memory grows with the
/// statements cached, not with the capacity.
pub struct StatementCache {
    entries: LruCache<Box<str>, Statement>,
    capacity: NonZeroUsize,
}

impl std::fmt::Debug for StatementCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatementCache")
            .field("len", &self.entries.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl StatementCache {
    /// An empty cache of `capacity` entries (at least one is kept allocated; a
    /// capacity of 0 means the caller does not use the cache).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: LruCache::unbounded(),
            capacity: NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
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
        if let Some(statement_slot) = self.entries.get_mut(sql) {
            *statement_slot = statement;
            return 0;
        }
        let evicted = usize::from(self.entries.len() >= self.capacity.get());
        if evicted == 1 {
            self.entries.pop_lru();
        }
        self.entries.put(sql.into(), statement);
        evicted
    }

    /// Forgets `sql` (a statement the server no longer accepts); true if it was there.
    pub fn remove(&mut self, sql: &str) -> bool {
        self.entries.pop(sql).is_some()
    }

    /// Changes the capacity, evicting least recently used entries beyond it;
    /// returns how many were evicted.
    pub fn resize(&mut self, capacity: usize) -> usize {
        self.capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        let mut evicted = 0;
        while self.entries.len() > self.capacity.get() {
            self.entries.pop_lru();
            evicted += 1;
        }
        evicted
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity.get()
    }

    /// Drops every entry; returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.entries.len();
        self.entries.clear();
        n
    }
}
