//! The front door's clients as operators see them: who, from where, doing
//! what, and a way to end one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

/// What a client is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Connected, holding no backend.
    Idle,
    /// Waiting for a backend.
    Waiting,
    /// Holding a backend (inside a transaction, or for its session).
    Active,
    /// Holding a backend between transactions because its session state
    /// (LISTEN, a temporary table, …) lives on it.
    Pinned,
}

impl ClientState {
    /// The state's name: idle, waiting, active or pinned.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
            ClientState::Pinned => "pinned",
        }
    }
}

/// One connected client, shared by its session and the door.
#[derive(Debug)]
pub(crate) struct ClientInfo {
    pub id: u64,
    pub pool: String,
    pub user: String,
    pub application_name: String,
    pub address: SocketAddr,
    pub tls: bool,
    pub connected_at: SystemTime,
    born: std::time::Instant,
    state: AtomicU8,
    /// Microseconds after `born` when the state last changed.
    changed_us: AtomicU64,
    /// Prepared statements it holds (by its names).
    pub statements: AtomicU64,
    pub transactions: AtomicU64,
    pub queries: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Cancelled by KillClient.
    pub kill: CancellationToken,
}

/// A client as ListClients shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// The front door's id of the client (what KillClient takes).
    pub id: u64,
    /// The pool it uses.
    pub pool: String,
    /// The user it logged in as.
    pub user: String,
    /// The application_name of its startup message.
    pub application_name: String,
    /// Its address.
    pub address: SocketAddr,
    /// Whether it connected with TLS.
    pub tls: bool,
    /// What it is doing now.
    pub state: ClientState,
    /// When it connected.
    pub connected_at: SystemTime,
    /// Transactions it ran.
    pub transactions: u64,
    /// Queries it ran.
    pub queries: u64,
    /// Bytes it sent.
    pub bytes_in: u64,
    /// Bytes it received.
    pub bytes_out: u64,
}

impl ClientInfo {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        pool: &str,
        user: &str,
        application_name: &str,
        address: SocketAddr,
        tls: bool,
        kill: CancellationToken,
    ) -> Self {
        Self {
            id,
            pool: pool.to_owned(),
            user: user.to_owned(),
            application_name: application_name.to_owned(),
            address,
            tls,
            connected_at: SystemTime::now(),
            born: std::time::Instant::now(),
            state: AtomicU8::new(0),
            changed_us: AtomicU64::new(0),
            statements: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            kill,
        }
    }

    pub(crate) fn set_state(&self, state: ClientState) {
        if self.state.swap(state as u8, Ordering::Relaxed) != state as u8 {
            let us = u64::try_from(self.born.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.changed_us.store(us, Ordering::Relaxed);
        }
    }

    /// How long it has been in its present state.
    pub(crate) fn in_state_for(&self) -> std::time::Duration {
        let changed = std::time::Duration::from_micros(self.changed_us.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(changed)
    }

    pub(crate) fn snapshot(&self) -> ClientSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientSnapshot {
            id: self.id,
            pool: self.pool.clone(),
            user: self.user.clone(),
            application_name: self.application_name.clone(),
            address: self.address,
            tls: self.tls,
            state: match self.state.load(Ordering::Relaxed) {
                1 => ClientState::Waiting,
                2 => ClientState::Active,
                3 => ClientState::Pinned,
                _ => ClientState::Idle,
            },
            connected_at: self.connected_at,
            transactions: get(&self.transactions),
            queries: get(&self.queries),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
        }
    }
}

/// A pool's pause switch (PausePool / ResumePool): while it is on, a client's
/// next transaction waits; transactions in flight finish.
#[derive(Debug, Default)]
pub(crate) struct Pause {
    pub on: std::sync::atomic::AtomicBool,
    pub resumed: tokio::sync::Notify,
}
