//! A checked-out connection lent to the wire front door: the socket under it,
//! what the front door keeps per backend, and the way back to the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::connection::PooledConnection;
use super::lend::{BoxIo, LendError};
use super::sql::CancelHandle;
use super::stats::Counters;

/// The wire front door's counters for one pool name (kept across rebuilds of
/// the pool by a config update).
#[derive(Debug, Default)]
pub struct WireCounters {
    /// Clients connected now.
    pub clients: AtomicU64,
    /// Clients waiting for a backend now.
    pub waiting: AtomicU64,
    /// Clients holding a backend between transactions (pinned by session
    /// state) now.
    pub pinned: AtomicU64,
    /// Transactions run (in session mode: sessions' transactions).
    pub transactions: AtomicU64,
    /// Queries run (simple queries, Executes, function calls).
    pub queries: AtomicU64,
    /// Bytes from clients.
    pub bytes_in: AtomicU64,
    /// Bytes to clients.
    pub bytes_out: AtomicU64,
    /// Backends handed to clients (each transaction's, or each session's).
    pub assignments: AtomicU64,
    /// Microseconds clients held backends.
    pub held_us: AtomicU64,
    /// Microseconds clients waited for backends.
    pub wait_us: AtomicU64,
    /// Named Parse messages from clients.
    pub client_parses: AtomicU64,
    /// Parse messages sent to backends for clients' named statements.
    pub server_parses: AtomicU64,
    /// Bind messages from clients.
    pub binds: AtomicU64,
    /// Clients that logged in.
    pub logins: AtomicU64,
}

/// A snapshot of [`WireCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WireStats {
    /// Clients connected now.
    pub clients: u64,
    /// Clients waiting for a backend now.
    pub waiting: u64,
    /// Clients pinned to a backend now.
    pub pinned: u64,
    /// Transactions run.
    pub transactions: u64,
    /// Queries run.
    pub queries: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// Backends handed to clients.
    pub assignments: u64,
    /// Microseconds clients held backends.
    pub held_us: u64,
    /// Microseconds clients waited for backends.
    pub wait_us: u64,
    /// Named Parse messages from clients.
    pub client_parses: u64,
    /// Parse messages sent to backends for clients' named statements.
    pub server_parses: u64,
    /// Bind messages from clients.
    pub binds: u64,
    /// Clients that logged in.
    pub logins: u64,
}

impl WireStats {
    /// Adds `other`'s figures (one pool's over several replicas).
    pub fn add(&mut self, other: &WireStats) {
        self.clients += other.clients;
        self.waiting += other.waiting;
        self.pinned += other.pinned;
        self.transactions += other.transactions;
        self.queries += other.queries;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.assignments += other.assignments;
        self.held_us += other.held_us;
        self.wait_us += other.wait_us;
        self.client_parses += other.client_parses;
        self.server_parses += other.server_parses;
        self.binds += other.binds;
        self.logins += other.logins;
    }
}

impl WireCounters {
    /// A snapshot.
    pub fn snapshot(&self) -> WireStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WireStats {
            clients: get(&self.clients),
            waiting: get(&self.waiting),
            pinned: get(&self.pinned),
            transactions: get(&self.transactions),
            queries: get(&self.queries),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            assignments: get(&self.assignments),
            held_us: get(&self.held_us),
            wait_us: get(&self.wait_us),
            client_parses: get(&self.client_parses),
            server_parses: get(&self.server_parses),
            binds: get(&self.binds),
            logins: get(&self.logins),
        }
    }
}

/// A pool's settings for its front-door clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireSettings {
    /// How long a client holds a backend.
    pub pool_mode: crate::PoolMode,
    /// Clients of the pool at once (0: no limit of the pool's own).
    pub max_client_connections: u32,
    /// Silent without a backend this long: ended.
    pub client_idle_timeout: Option<std::time::Duration>,
    /// Idle inside a transaction this long: ended, rolled back.
    pub idle_in_transaction_timeout: Option<std::time::Duration>,
    /// A statement running this long: cancelled.
    pub query_timeout: Option<std::time::Duration>,
    /// Session state outliving a transaction: pinned or refused.
    pub session_state: crate::SessionState,
}

/// What the front door keeps on each backend.
#[derive(Debug)]
pub struct WireState {
    /// Ids of the front door's prepared statements this backend has, least
    /// recently used first out (bounded by the pool's statement cache capacity).
    pub prepared: lru::LruCache<u64, ()>,
    /// Session parameters the front door set on this backend, by name: what
    /// differs from the pool's defaults.
    pub params: HashMap<String, String>,
}

impl WireState {
    /// The front door's share of a backend, with room for `capacity` prepared
    /// statements (at least 16).
    pub fn new(capacity: usize) -> Self {
        let capacity = std::num::NonZeroUsize::new(capacity.max(16)).expect("at least 16");
        Self {
            prepared: lru::LruCache::new(capacity),
            params: HashMap::new(),
        }
    }
}

/// A pooled connection whose socket the front door holds. Dropped without
/// [`WireBackend::release`] (a client gone mid-transaction, a protocol error),
/// the connection is closed, never handed to anyone else.
pub struct WireBackend {
    conn: PooledConnection,
    io: Option<BoxIo>,
}

impl std::fmt::Debug for WireBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireBackend")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl PooledConnection {
    /// Lends this connection's socket to the wire front door, once its driver
    /// has nothing in flight (waiting `wait` at most).
    pub async fn into_wire(
        self,
        wait: std::time::Duration,
    ) -> Result<WireBackend, (Self, LendError)> {
        match self.conn.link.lend(wait).await {
            Ok(io) => Ok(WireBackend {
                conn: self,
                io: Some(io),
            }),
            Err(e) => Err((self, e)),
        }
    }
}

impl WireBackend {
    /// The socket to the database server.
    pub fn io(&mut self) -> &mut BoxIo {
        self.io.as_mut().expect("held until release")
    }

    /// What the front door keeps on this backend.
    pub fn state(&mut self) -> &mut WireState {
        &mut self.conn.conn.wire
    }

    /// Cancels the statement running on this backend now.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle::of(&self.conn.conn.cancel)
    }

    /// The pool's statement cache capacity (prepared statements per backend).
    pub fn statement_capacity(&self) -> usize {
        self.conn.shared.cache_capacity()
    }

    /// Counts `n` statements run on it (the pool's queries, recycling).
    pub fn count_queries(&mut self, n: u64) {
        self.conn.conn.queries += n;
        Counters::add(&self.conn.shared.counters.total_queries, n);
    }

    /// Counts a statement that failed.
    pub fn count_error(&self) {
        Counters::add(&self.conn.shared.counters.query_errors, 1);
    }

    /// The backend dropped every prepared statement (DISCARD ALL, DEALLOCATE
    /// ALL): the typed API's cache and the front door's knowledge start over.
    pub fn statements_discarded(&mut self) {
        let conn = &mut self.conn.conn;
        let cached = conn.cache.clear() as u64;
        self.conn
            .shared
            .counters
            .cached_statements
            .fetch_sub(cached, Ordering::Relaxed);
        conn.wire.prepared.clear();
    }

    /// Gives the socket back to the driver and the connection back to the pool;
    /// `unread` holds whole messages read past the last reply.
    pub fn release(mut self, unread: Bytes) {
        let io = self.io.take().expect("held until release");
        self.conn.conn.link.give_back(io, unread);
    }
}

impl Drop for WireBackend {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            self.conn.conn.broken = true;
            self.conn.conn.link.give_back(io, Bytes::new());
        }
    }
}
