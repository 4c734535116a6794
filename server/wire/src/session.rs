//! One client's session: a loop over the client's socket and the backend it
//! holds (a checkout of the pool, from the first message of a transaction to
//! the ReadyForQuery that ends it, or for the whole session), with the queue
//! of what the backend owes in between.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use poolplane::pool::sql::CancelHandle;
use poolplane::{
    AdvancedConnectionPool, PoolMode, SessionState, WireBackend, WireCounters, WireSettings,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::clients::{ClientInfo, ClientState};
use crate::expect::{self, Action, Expect, Prepared, Queue};
use crate::frame::{self, Message};
use crate::prepared::{CLIENT_STATEMENTS, PoolStatements, Statement};
use crate::startup::{ClientIo, Door, Fatal};
use crate::state::{self, Effects};

/// What a CancelRequest for this client reaches: the backend running its
/// statement now, if any.
#[derive(Default)]
pub(crate) struct ClientHandle {
    pub running: Mutex<Option<CancelHandle>>,
}

/// Bytes buffered from or for one socket.
#[derive(Default)]
struct Buffers {
    inb: BytesMut,
    out: BytesMut,
    flush: bool,
    eof: bool,
}

/// ParseComplete.
const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";

/// Past this much output waiting for a socket, the other side is not read.
const OUT_CAP: usize = 1 << 20;

impl Buffers {
    /// Writes what is pending and reads what is there; Ready when something
    /// was read (or the socket closed).
    fn poll_io<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        may_read: bool,
    ) -> Poll<io::Result<()>> {
        let mut moved = false;
        while !self.out.is_empty() {
            match Pin::new(&mut *io).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.out.advance(n);
                    self.flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if self.out.is_empty() && self.flush {
            match Pin::new(&mut *io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if may_read && !self.eof {
            if self.inb.capacity() - self.inb.len() < 4096 {
                self.inb.reserve(16 * 1024);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut self.inb) {
                Poll::Ready(Ok(0)) => {
                    self.eof = true;
                    moved = true;
                }
                Poll::Ready(Ok(_)) => moved = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if moved {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// The backend a client holds.
struct Held {
    backend: WireBackend,
    buffers: Buffers,
    /// What the client's statements may have left on it.
    effects: Effects,
    /// The reset was sent; the backend goes back when it is answered.
    resetting: bool,
    /// The probe of the session was sent (what it covers: the setting names,
    /// or every setting); its rows so far.
    probing: Option<Cover>,
    rows: Vec<(String, String)>,
    /// What keeps the backend with the client between transactions (LISTEN,
    /// a temporary table, …), as the last probe found.
    pinned: Option<String>,
    /// The backend cannot go back to the pool (a reset failed, a reply made no
    /// sense): closed when released.
    broken: bool,
    /// Bytes of a large row or COPY chunk still to pass to the client as they
    /// come (not held whole in memory).
    streaming: usize,
    /// When the client got it.
    since: Instant,
}

impl Held {
    fn new(backend: WireBackend, buffers: Buffers) -> Self {
        Self {
            backend,
            buffers,
            effects: Effects::default(),
            resetting: false,
            probing: None,
            rows: Vec::new(),
            pinned: None,
            broken: false,
            streaming: 0,
            since: Instant::now(),
        }
    }
}

/// The settings a probe reads back.
#[derive(Debug)]
enum Cover {
    Names(Vec<String>),
    All,
}

/// A row or COPY chunk longer than this is passed on as it arrives.
const STREAM_OVER: usize = 64 * 1024;

/// The backend's prepared statements, as the queue's replies change them.
struct Backend<'a>(&'a mut lru::LruCache<u64, ()>);

impl Prepared for Backend<'_> {
    fn lost(&mut self, id: u64) {
        self.0.pop(&id);
    }

    fn kept(&mut self, id: u64) {
        self.0.put(id, ());
    }
}

/// How a session ended.
enum End {
    /// The client left (Terminate or its socket closed).
    Left,
    /// The session is over with a FATAL to the client.
    Fatal(Fatal),
}

impl From<Fatal> for End {
    fn from(fatal: Fatal) -> Self {
        End::Fatal(fatal)
    }
}

/// Session settings a client's startup message asks for that the front door
/// applies on its backends (the rest are the connection's own).
const NOT_SETTINGS: [&str; 5] = [
    "user",
    "database",
    "replication",
    "options",
    "application_name",
];

/// The settings of a startup message (and `-c name=value` of its options),
/// checked to be names PostgreSQL could have.
pub(crate) fn wanted_settings(params: &[(String, String)]) -> Result<Vec<(String, String)>, Fatal> {
    let mut wanted = Vec::new();
    for (name, value) in params {
        if name == "options" {
            let mut words = value.split_whitespace();
            while let Some(word) = words.next() {
                let pair = match word.strip_prefix("-c") {
                    Some("") => words.next().unwrap_or(""),
                    Some(rest) => rest,
                    None => word.strip_prefix("--").unwrap_or(word),
                };
                if let Some((n, v)) = pair.split_once('=') {
                    wanted.push((n.replace('-', "_").to_ascii_lowercase(), v.to_owned()));
                }
            }
        } else if !NOT_SETTINGS.contains(&name.as_str()) {
            wanted.push((name.to_ascii_lowercase(), value.clone()));
        }
    }
    for (name, _) in &wanted {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !ok {
            return Err(Fatal::new(
                "42704",
                format!("unrecognized configuration parameter \"{name}\""),
            ));
        }
    }
    wanted.sort();
    wanted.dedup_by(|a, b| a.0.eq_ignore_ascii_case(&b.0));
    Ok(wanted)
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The statements that give a backend whose front-door settings are `params`
/// the settings `wanted` (and remember them in `params`): set_config, which
/// takes a value as SHOW prints it (a list such as search_path included), and
/// RESET for what is no longer wanted.
fn settings_sql(wanted: &[(String, String)], params: &mut HashMap<String, String>) -> String {
    let mut sets = Vec::new();
    for (name, value) in wanted {
        if params.get(name) != Some(value) {
            sets.push(format!(
                "set_config({}, {}, false)",
                quote(name),
                quote(value)
            ));
            params.insert(name.clone(), value.clone());
        }
    }
    let mut sql = if sets.is_empty() {
        String::new()
    } else {
        format!("SELECT {}; ", sets.join(", "))
    };
    let stale: Vec<String> = params
        .keys()
        .filter(|name| !wanted.iter().any(|(n, _)| n == *name))
        .cloned()
        .collect();
    for name in stale {
        sql.push_str(&format!("RESET {name}; "));
        params.remove(&name);
    }
    sql
}

/// The ParameterStatus names a client is told at startup.
const REPORTED: &str = "'server_version','server_encoding','client_encoding','DateStyle',\
     'IntervalStyle','TimeZone','integer_datetimes','standard_conforming_strings','is_superuser',\
     'session_authorization','default_transaction_read_only','in_hot_standby'";

pub(crate) struct Session {
    door: Arc<Door>,
    pool: Arc<AdvancedConnectionPool>,
    pool_name: String,
    statements: Arc<PoolStatements>,
    counters: Arc<WireCounters>,
    pub key: (i32, i32),
    pub handle: Arc<ClientHandle>,
    client: Buffers,
    held: Option<Held>,
    queue: Queue,
    /// The transaction status of the last ReadyForQuery the client got.
    status: u8,
    /// The client's messages are dropped until its next Sync (an error the
    /// front door reported itself).
    skip_to_sync: bool,
    /// The client's prepared statements, by its names.
    names: HashMap<Bytes, Arc<Statement>>,
    /// The client's session settings, applied on each backend it gets: those
    /// of its startup message, then what its statements set (read back from
    /// the backend after each transaction that may have changed them).
    wanted: Vec<(String, String)>,
    /// Those of the startup message (what a RESET goes back to).
    baseline: Vec<(String, String)>,
    /// The backend side's buffers, kept between checkouts (no allocation per
    /// transaction).
    spare: Option<Buffers>,
    application_name: String,
    /// The pool's front-door settings (mode, timeouts), read at login and at
    /// each checkout.
    settings: WireSettings,
    /// When the client or the backend last sent something (kept only while a
    /// timeout is on).
    last_activity: Instant,
    /// When the oldest request the backend still owes an answer to was sent
    /// (kept only while query_timeout is on).
    busy_since: Option<Instant>,
    /// What operators see of this client (ListClients), and its kill switch.
    pub info: Arc<ClientInfo>,
    /// Its pool's pause switch.
    pause: Arc<crate::clients::Pause>,
}

/// Which limit ended or cut something.
#[derive(Debug, Clone, Copy)]
enum Limit {
    ClientIdle,
    IdleInTransaction,
    Query,
}

impl Session {
    pub(crate) fn new(
        door: &Arc<Door>,
        pool: &Arc<AdvancedConnectionPool>,
        wanted: Vec<(String, String)>,
        info: Arc<ClientInfo>,
    ) -> Result<Self, Fatal> {
        let settings = pool.wire_settings();
        let counters = pool.wire_counters();
        let before = counters.clients.fetch_add(1, Ordering::Relaxed);
        let limit = settings.max_client_connections;
        if limit > 0 && before >= u64::from(limit) {
            counters.clients.fetch_sub(1, Ordering::Relaxed);
            return Err(Fatal::new(
                "53300",
                format!(
                    "sorry, too many clients for pool \"{}\" (max_client_connections {limit})",
                    pool.name()
                ),
            ));
        }
        counters.logins.fetch_add(1, Ordering::Relaxed);
        let key = loop {
            let [a, b, c, d, e, f, g, h] = crate::scram::random::<8>();
            let pid = i32::from_be_bytes([a & 0x3f, b, c, d]);
            if pid != 0 {
                break (pid, i32::from_be_bytes([e, f, g, h]));
            }
        };
        Ok(Self {
            door: Arc::clone(door),
            pool: Arc::clone(pool),
            pool_name: pool.name().to_owned(),
            statements: door.statements.of(pool.name()),
            counters,
            key,
            handle: Arc::default(),
            client: Buffers::default(),
            held: None,
            queue: Queue::default(),
            status: b'I',
            skip_to_sync: false,
            names: HashMap::new(),
            baseline: wanted.clone(),
            wanted,
            spare: None,
            settings,
            last_activity: Instant::now(),
            busy_since: None,
            application_name: info.application_name.clone(),
            info,
            pause: door.pause_of(pool.name()),
        })
    }

    /// The ParameterStatus values a client gets: the pool's database's (read
    /// once per pool), with the settings the client asked for.
    pub(crate) fn reported_parameters(
        &self,
        pool: &Arc<AdvancedConnectionPool>,
    ) -> impl Future<Output = Result<Vec<(String, String)>, Fatal>> + Send + 'static {
        let wanted = self.wanted.clone();
        let application_name = self.application_name.clone();
        let door = Arc::clone(&self.door);
        let pool = Arc::clone(pool);
        async move {
            let mut out = (*door.parameters(&pool).await?).clone();
            for (name, value) in &wanted {
                if let Some(found) = out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                    found.1.clone_from(value);
                }
            }
            out.push(("application_name".into(), application_name));
            Ok(out)
        }
    }
}

/// The server parameters a pool's database reports at startup.
pub(crate) async fn server_parameters(
    pool: &AdvancedConnectionPool,
) -> Result<Vec<(String, String)>, Fatal> {
    let sql = format!("SELECT name, setting FROM pg_settings WHERE name IN ({REPORTED})");
    let rows = pool
        .query(&sql, &[])
        .await
        .map_err(|e| Fatal::new("08006", format!("poolplane: pool \"{}\": {e}", pool.name())))?;
    Ok(rows
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
        .collect())
}

impl Session {
    /// Runs the session to its end.
    pub(crate) async fn run(mut self, mut client: ClientIo) {
        let end = self.serve(&mut client).await;
        self.finish(end, &mut client).await;
        crate::startup::close_gently(&mut client).await;
        self.counters.clients.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve(&mut self, client: &mut ClientIo) -> End {
        if self.mode() == PoolMode::Session
            && let Err(end) = self.ensure_backend().await
        {
            return end;
        }
        let door_token = self.door.token.clone();
        let mut shutdown = std::pin::pin!(door_token.cancelled());
        let kill_token = self.info.kill.clone();
        let mut killed = std::pin::pin!(kill_token.cancelled());
        let mut closing = Box::pin(self.pool.closing_token().clone().cancelled_owned());
        loop {
            if let Err(end) = self.turn().await {
                return end;
            }
            let idle = self.parked();
            let timers = self.timeouts_on();
            let deadline = if timers { self.deadline() } else { None };
            let step = poll_fn(|cx| self.poll_step(client, cx));
            tokio::select! {
                // The sockets first: the closing and shutdown waits are
                // polled only when nothing came.
                biased;
                moved = step => {
                    if moved.is_err() {
                        return if self.held.as_ref().is_some_and(|h| h.buffers.eof) {
                            self.backend_gone()
                        } else {
                            End::Left
                        };
                    }
                    if timers {
                        self.last_activity = Instant::now();
                    }
                },
                () = sleep_until(deadline.map(|(at, _, _)| at)), if deadline.is_some() => {
                    if let Some((_, limit, after)) = deadline
                        && let Err(end) = self.limit_reached(limit, after).await
                    {
                        return end;
                    }
                }
                () = &mut closing, if idle => {
                    if let Err(end) = self.follow_pool() {
                        return end;
                    }
                    closing = Box::pin(self.pool.closing_token().clone().cancelled_owned());
                }
                () = &mut killed => {
                    return End::Fatal(Fatal::new(
                        "57P01",
                        "terminating connection due to administrator command (KillClient)",
                    ));
                }
                () = &mut shutdown, if idle => {
                    return End::Fatal(Fatal::new("57P01", "terminating connection due to administrator command"));
                }
            }
        }
    }

    fn mode(&self) -> PoolMode {
        self.settings.pool_mode
    }

    /// Between transactions: no backend, or one pinned with nothing owed
    /// (what may be ended at once by a shutdown or a deleted pool).
    fn parked(&self) -> bool {
        match &self.held {
            None => true,
            Some(held) => held.pinned.is_some() && self.queue.is_empty() && self.status == b'I',
        }
    }

    /// The limit that applies now and when it runs out, if any is on.
    fn deadline(&self) -> Option<(Instant, Limit, Duration)> {
        let s = &self.settings;
        let (limit, after, since) = match &self.held {
            Some(_) if !self.queue.is_empty() => (Limit::Query, s.query_timeout?, self.busy_since?),
            Some(_) if self.status != b'I' => (
                Limit::IdleInTransaction,
                s.idle_in_transaction_timeout?,
                self.last_activity,
            ),
            _ => (
                Limit::ClientIdle,
                s.client_idle_timeout?,
                self.last_activity,
            ),
        };
        Some((since + after, limit, after))
    }

    fn timeouts_on(&self) -> bool {
        let s = &self.settings;
        s.client_idle_timeout.is_some()
            || s.idle_in_transaction_timeout.is_some()
            || s.query_timeout.is_some()
    }

    /// A limit ran out: the session ends (idle), or the statement is cancelled
    /// and the client told which limit did it.
    async fn limit_reached(&mut self, limit: Limit, after: Duration) -> Result<(), End> {
        let secs = after.as_secs();
        let pool = &self.pool_name;
        match limit {
            Limit::ClientIdle => Err(End::Fatal(Fatal::new(
                "57P05",
                format!(
                    "terminating connection due to client_idle_timeout ({secs} s, pool \"{pool}\")"
                ),
            ))),
            Limit::IdleInTransaction => Err(End::Fatal(Fatal::new(
                "25P03",
                format!(
                    "terminating connection due to idle_in_transaction_timeout ({secs} s, pool \"{pool}\"); the transaction is rolled back"
                ),
            ))),
            Limit::Query => {
                self.busy_since = None;
                let mut notice = BytesMut::new();
                frame::notice(
                    &mut notice,
                    "57014",
                    &format!(
                        "poolplane: query_timeout ({secs} s, pool \"{pool}\") reached: the statement is cancelled"
                    ),
                );
                self.say(notice.freeze());
                if let Some(held) = &self.held {
                    held.backend.cancel_handle().cancel().await;
                }
                Ok(())
            }
        }
    }

    /// The pool this session's name refers to now (a rebuilt pool replaces the
    /// one closing); a deleted pool ends the session.
    fn follow_pool(&mut self) -> Result<(), End> {
        match self.door.registry.pool(&self.pool_name) {
            Ok(pool) if !pool.is_closing() => {
                self.pool = pool;
                Ok(())
            }
            _ => {
                self.door.statements.forget(&self.pool_name);
                Err(End::Fatal(Fatal::new(
                    "57P01",
                    "terminating connection due to administrator command (the pool was deleted)",
                )))
            }
        }
    }

    fn backend_gone(&mut self) -> End {
        if let Some(held) = &mut self.held {
            held.broken = true;
        }
        End::Fatal(Fatal::new(
            "08006",
            "server closed the connection unexpectedly",
        ))
    }

    /// One round of work on what the sockets brought: the client's messages,
    /// the backend's replies, and the backend's return at a transaction's end.
    async fn turn(&mut self) -> Result<(), End> {
        self.client_messages().await?;
        self.backend_messages()?;
        if self.queue.is_empty() {
            // Nothing owed: no statement is running.
            self.busy_since = None;
        }
        if self.client.eof && !frame::has_message(&self.client.inb) {
            return Err(End::Left);
        }
        if self.held.as_ref().is_some_and(|h| h.buffers.eof) {
            return Err(self.backend_gone());
        }
        self.maybe_release();
        Ok(())
    }

    /// Moves bytes both ways; Ready once something was read (or a socket
    /// closed), which is all a turn reacts to. Writes are done on the way (a
    /// write that only moved bytes out costs no turn).
    fn poll_step(&mut self, client: &mut ClientIo, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Twice at most: the backend's write may make room to read the client.
        for _ in 0..2 {
            let backend_backlog = self.held.as_ref().map_or(0, |h| h.buffers.out.len());
            let may_read_client =
                backend_backlog < OUT_CAP && !frame::has_message(&self.client.inb);
            let client_len = self.client.out.len();
            let mut read = false;
            match self.client.poll_io(client, cx, may_read_client) {
                Poll::Ready(Ok(())) => read = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            let written = client_len.saturating_sub(self.client.out.len()) as u64;
            if written > 0 {
                self.counters
                    .bytes_out
                    .fetch_add(written, Ordering::Relaxed);
                self.info.bytes_out.fetch_add(written, Ordering::Relaxed);
            }
            let Some(held) = &mut self.held else {
                return if read {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            };
            let may_read = self.client.out.len() < OUT_CAP;
            let had_out = !held.buffers.out.is_empty();
            match held.buffers.poll_io(held.backend.io(), cx, may_read) {
                Poll::Ready(Ok(())) => read = true,
                Poll::Ready(Err(_)) => {
                    held.buffers.eof = true;
                    read = true;
                }
                Poll::Pending => {}
            }
            // Written out with nothing owed (a trailing Flush): the backend may
            // be due back, which a turn decides.
            if had_out && held.buffers.out.is_empty() && self.queue.is_empty() {
                read = true;
            }
            if read {
                return Poll::Ready(Ok(()));
            }
            let freed = held.buffers.out.len() < OUT_CAP;
            if may_read_client || !freed {
                return Poll::Pending;
            }
        }
        Poll::Pending
    }

    /// Processes the client's whole messages.
    async fn client_messages(&mut self) -> Result<(), End> {
        let max = self.door.options.max_message_bytes;
        loop {
            let message = match frame::next_message(&mut self.client.inb, max) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(End::Fatal(Fatal::new(
                        "08P01",
                        format!("invalid message: {e}"),
                    )));
                }
            };
            let len = message.bytes.len() as u64;
            self.counters.bytes_in.fetch_add(len, Ordering::Relaxed);
            self.info.bytes_in.fetch_add(len, Ordering::Relaxed);
            self.on_client(message).await?;
        }
    }

    /// Answers the client now, or when the backend's earlier replies are out.
    fn say(&mut self, bytes: Bytes) {
        if self.queue.is_empty() {
            self.client.out.extend_from_slice(&bytes);
        } else {
            self.queue.push(Expect::Synthetic(bytes));
        }
    }

    /// An error the front door reports itself; in the extended protocol the
    /// client's messages are then skipped up to its Sync, as PostgreSQL does.
    fn refuse(&mut self, code: &str, message: &str, simple: bool) {
        let mut out = BytesMut::new();
        frame::error(&mut out, "ERROR", code, message);
        if simple {
            let status = if self.held.is_some() {
                self.status
            } else {
                b'I'
            };
            frame::ready(&mut out, status);
        } else {
            self.skip_to_sync = true;
        }
        self.say(out.freeze());
    }

    fn backend_mut(&mut self) -> &mut Held {
        self.held.as_mut().expect("a backend is held")
    }

    async fn on_client(&mut self, message: Message) -> Result<(), End> {
        match message.tag {
            b'X' => return Err(End::Left),
            b'S' => return self.on_sync(&message).await,
            _ if self.skip_to_sync || self.queue.skipping => return Ok(()),
            b'H' => {
                if let Some(held) = &mut self.held {
                    held.buffers.out.extend_from_slice(&message.bytes);
                }
            }
            b'd' | b'c' | b'f' => {
                if let Some(held) = &mut self.held {
                    held.buffers.out.extend_from_slice(&message.bytes);
                }
            }
            b'Q' => self.on_query(&message).await?,
            b'P' => self.on_parse(&message).await?,
            b'B' => self.on_bind(&message).await?,
            b'D' => self.on_describe(&message).await?,
            b'C' => self.on_close(&message).await?,
            b'E' | b'F' => {
                if !self.ensure_backend_for(false).await? {
                    return Ok(());
                }
                self.count_query();
                let ends = if message.tag == b'E' {
                    expect::EXECUTE
                } else {
                    expect::READY
                };
                self.forward(&message, ends);
            }
            other => {
                return Err(End::Fatal(Fatal::new(
                    "08P01",
                    format!("invalid frontend message type {other}"),
                )));
            }
        }
        Ok(())
    }

    fn forward(&mut self, message: &Message, ends: &'static [u8]) {
        if self.busy_since.is_none() && self.settings.query_timeout.is_some() {
            self.busy_since = Some(Instant::now());
        }
        self.backend_mut()
            .buffers
            .out
            .extend_from_slice(&message.bytes);
        self.queue.push(Expect::Reply { ends });
    }

    fn count_query(&mut self) {
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        self.info.queries.fetch_add(1, Ordering::Relaxed);
        self.backend_mut().backend.count_queries(1);
    }

    async fn on_sync(&mut self, message: &Message) -> Result<(), End> {
        self.skip_to_sync = false;
        self.queue.skipping = false;
        match &self.held {
            Some(_) => self.forward(message, expect::READY),
            None => {
                let mut out = BytesMut::new();
                frame::ready(&mut out, b'I');
                self.say(out.freeze());
            }
        }
        Ok(())
    }

    async fn on_query(&mut self, message: &Message) -> Result<(), End> {
        let body = message.body();
        let sql = String::from_utf8_lossy(&body[..body.len().saturating_sub(1)]);
        let effects = state::effects(&sql);
        if let Some(text) = self.refused(&effects) {
            self.refuse("0A000", &text, true);
            return Ok(());
        }
        if !self.ensure_backend_for(true).await? {
            return Ok(());
        }
        self.count_query();
        self.took(&effects);
        self.forward(message, expect::READY);
        Ok(())
    }

    /// Why a statement with `effects` is refused in this pool, if it is: SQL
    /// PREPARE and the rest in transaction mode, and session state that would
    /// outlive its transaction with session_state refuse.
    fn refused(&self, effects: &Effects) -> Option<String> {
        if self.mode() != PoolMode::Transaction {
            return None;
        }
        let pool = &self.pool_name;
        if let Some(statement) = effects.sql_prepared {
            return Some(format!(
                "poolplane: {statement} is not supported in transaction pooling (pool \"{pool}\"): use the protocol's prepared statements (Parse/Bind, as drivers do), or pool_mode session"
            ));
        }
        if self.settings.session_state == SessionState::Refuse
            && let Some(what) = effects.pins
        {
            return Some(format!(
                "poolplane: {what} is refused in transaction pooling with session_state refuse (pool \"{pool}\"): its state would outlive the transaction; use session_state pin or pool_mode session"
            ));
        }
        None
    }

    /// What a statement sent to the held backend may leave on its session.
    fn took(&mut self, effects: &Effects) {
        let held = self.backend_mut();
        held.effects.merge(effects);
        if effects.deallocates {
            // DISCARD ALL: the backend's prepared statements are gone.
            held.backend.statements_discarded();
        }
    }

    async fn on_parse(&mut self, message: &Message) -> Result<(), End> {
        let mut body = message.body();
        let name = frame::cstr(&mut body).unwrap_or_default();
        if name.is_empty() {
            let sql_end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
            let effects = state::effects(&String::from_utf8_lossy(&body[..sql_end]));
            if let Some(text) = self.refused(&effects) {
                self.refuse("0A000", &text, false);
                return Ok(());
            }
            if !self.ensure_backend_for(false).await? {
                return Ok(());
            }
            self.took(&effects);
            self.forward(message, expect::PARSE);
            return Ok(());
        }
        if self.names.len() >= CLIENT_STATEMENTS && !self.names.contains_key(name) {
            self.refuse(
                "53400",
                &format!(
                    "poolplane: a client may hold at most {CLIENT_STATEMENTS} prepared statements"
                ),
                false,
            );
            return Ok(());
        }
        self.counters.client_parses.fetch_add(1, Ordering::Relaxed);
        let statement = self.statements.get(body);
        if let Some(text) = self.refused(&statement.effects) {
            self.refuse("0A000", &text, false);
            return Ok(());
        }
        self.names
            .insert(Bytes::copy_from_slice(name), Arc::clone(&statement));
        self.info
            .statements
            .store(self.names.len() as u64, Ordering::Relaxed);
        let known = statement.valid.load(Ordering::Relaxed);
        if known && self.held.is_none() {
            // Valid SQL the pool already prepared: no backend needed until it
            // is used (a client that prepares everything first does not take
            // one per statement).
            self.say(Bytes::from_static(PARSE_COMPLETE));
            return Ok(());
        }
        if !self.ensure_backend_for(false).await? {
            return Ok(());
        }
        let held = self.backend_mut();
        if held.backend.state().prepared.get(&statement.id).is_some() {
            self.say(Bytes::from_static(PARSE_COMPLETE));
        } else {
            self.prepare(&statement, true);
        }
        Ok(())
    }

    /// Sends the Parse of `statement` to the backend (closing the one it evicts
    /// from the backend's set); its ParseComplete goes to the client when
    /// `visible`, else is swallowed.
    fn prepare(&mut self, statement: &Arc<Statement>, visible: bool) {
        let held = self.held.as_mut().expect("a backend is held");
        let evicted = held.backend.state().prepared.push(statement.id, ());
        if let Some((old, ())) = evicted
            && old != statement.id
        {
            frame::close_statement(&mut held.buffers.out, format!("pp_{old}").as_bytes());
            self.queue.push(Expect::InjectedClose(old));
        }
        frame::parse(
            &mut held.buffers.out,
            &statement.name,
            &statement.sql_and_types,
        );
        self.counters.server_parses.fetch_add(1, Ordering::Relaxed);
        self.queue
            .push(Expect::Parse(Arc::clone(statement), visible));
    }

    /// The client's statement named `name`, prepared on the held backend.
    fn statement(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        let statement = Arc::clone(self.names.get(name)?);
        let held = self.held.as_mut().expect("a backend is held");
        if held.backend.state().prepared.get(&statement.id).is_none() {
            self.prepare(&statement, false);
        }
        self.took(&statement.effects);
        Some(statement)
    }

    fn missing(&mut self, name: &[u8]) {
        let text = format!(
            "prepared statement \"{}\" does not exist",
            String::from_utf8_lossy(name)
        );
        self.refuse("26000", &text, false);
    }

    async fn on_bind(&mut self, message: &Message) -> Result<(), End> {
        let mut body = message.body();
        let _portal = frame::cstr(&mut body);
        let name = frame::cstr(&mut body).unwrap_or_default();
        self.counters.binds.fetch_add(1, Ordering::Relaxed);
        if !name.is_empty() && !self.names.contains_key(name) {
            self.missing(name);
            return Ok(());
        }
        if !self.ensure_backend_for(false).await? {
            return Ok(());
        }
        if name.is_empty() {
            self.forward(message, expect::BIND);
            return Ok(());
        }
        let statement = self.statement(name).expect("checked above");
        frame::renamed(
            &mut self.backend_mut().buffers.out,
            message,
            1,
            &statement.name,
        );
        self.queue.push(Expect::Reply { ends: expect::BIND });
        Ok(())
    }

    async fn on_describe(&mut self, message: &Message) -> Result<(), End> {
        let body = message.body();
        let kind = body.first().copied().unwrap_or(0);
        let mut rest = &body[1.min(body.len())..];
        let name = frame::cstr(&mut rest).unwrap_or_default();
        let named_statement = kind == b'S' && !name.is_empty();
        if named_statement && !self.names.contains_key(name) {
            self.missing(name);
            return Ok(());
        }
        if !self.ensure_backend_for(false).await? {
            return Ok(());
        }
        if !named_statement {
            self.forward(message, expect::DESCRIBE);
            return Ok(());
        }
        let statement = self.statement(name).expect("checked above");
        let out = &mut self.backend_mut().buffers.out;
        let at = frame::begin(out, b'D');
        out.extend_from_slice(b"S");
        out.extend_from_slice(&statement.name);
        out.extend_from_slice(b"\0");
        frame::finish(out, at);
        self.queue.push(Expect::Reply {
            ends: expect::DESCRIBE,
        });
        Ok(())
    }

    async fn on_close(&mut self, message: &Message) -> Result<(), End> {
        let body = message.body();
        let kind = body.first().copied().unwrap_or(0);
        let mut rest = &body[1.min(body.len())..];
        let name = frame::cstr(&mut rest).unwrap_or_default();
        if kind == b'S' && !name.is_empty() {
            // The pool keeps its statement; only the client's name goes.
            self.names.remove(name);
            self.info
                .statements
                .store(self.names.len() as u64, Ordering::Relaxed);
            self.say(Bytes::from_static(b"3\0\0\0\x04"));
            return Ok(());
        }
        match &self.held {
            Some(_) => self.forward(message, expect::CLOSE),
            None => self.say(Bytes::from_static(b"3\0\0\0\x04")),
        }
        Ok(())
    }

    /// Processes the backend's whole messages.
    fn backend_messages(&mut self) -> Result<(), End> {
        let Some(held) = &mut self.held else {
            return Ok(());
        };
        // Read in place (no per-message allocation), consumed at the end.
        let mut at = 0;
        let mut probed = false;
        let result = loop {
            let inb = &held.buffers.inb[at..];
            if held.streaming > 0 {
                let n = held.streaming.min(inb.len());
                if n == 0 {
                    break Ok(());
                }
                self.client.out.extend_from_slice(&inb[..n]);
                held.streaming -= n;
                at += n;
                continue;
            }
            if let Some(len) = frame::large_row_len(inb, STREAM_OVER)
                && self.queue.forwards_rows()
            {
                // A large DataRow or CopyData for the client: its header and
                // what has come, the rest as it arrives.
                let n = len.min(inb.len());
                self.client.out.extend_from_slice(&inb[..n]);
                held.streaming = len - n;
                at += n;
                continue;
            }
            let Some(len) = frame::whole_message_len(inb) else {
                break Ok(());
            };
            let (tag, message) = (inb[0], &inb[..len]);
            let mut prepared = Backend(&mut held.backend.state().prepared);
            match self.queue.on_backend(tag, &message[5..], &mut prepared) {
                Ok(Action::Forward) => self.client.out.extend_from_slice(message),
                Ok(Action::Swallow) => {}
                Ok(Action::Ready(status)) => {
                    self.client.out.extend_from_slice(message);
                    self.status = status;
                    if status == b'I' {
                        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
                        self.info.transactions.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Action::ProbeRow) => {
                    if let Some([Some(name), Some(value)]) =
                        frame::row_texts(&message[5..]).as_deref()
                    {
                        held.rows.push((name.clone(), value.clone()));
                    }
                }
                Ok(Action::ProbeDone) => probed = true,
                Ok(Action::HiddenError) => {
                    tracing::debug!(pool = %self.pool_name, "PostgreSQL front door: a session reset or setting failed; the backend will be closed");
                    held.broken = true;
                }
                Err(unexpected) => {
                    held.broken = true;
                    tracing::warn!(pool = %self.pool_name, error = %unexpected, "PostgreSQL front door: protocol out of step");
                    break Err(End::Fatal(Fatal::new(
                        "08P01",
                        format!("poolplane: {unexpected}"),
                    )));
                }
            }
            if tag == b'E' {
                held.backend.count_error();
            }
            self.queue.flush_synthetic(&mut self.client.out);
            at += len;
        };
        held.buffers.inb.advance(at);
        if probed {
            self.apply_probe();
        }
        result
    }

    /// The probe's answer: the backend's settings and the client's follow
    /// what the session now has; the backend is pinned while state that
    /// outlives a transaction is left on it.
    fn apply_probe(&mut self) {
        let Some(held) = &mut self.held else { return };
        let Some(cover) = held.probing.take() else {
            return;
        };
        let mut pins = String::new();
        let mut read = HashMap::new();
        for (name, value) in held.rows.drain(..) {
            if name.is_empty() {
                pins = value;
            } else {
                read.insert(name, value);
            }
        }
        let all = matches!(cover, Cover::All);
        let names = match cover {
            Cover::All => {
                let mut all: Vec<String> = held.backend.state().params.keys().cloned().collect();
                all.extend(self.wanted.iter().map(|(n, _)| n.clone()));
                all.extend(read.keys().cloned());
                all
            }
            Cover::Names(names) => names,
        };
        let params = &mut held.backend.state().params;
        let mut wanted: HashMap<String, String> = self.wanted.drain(..).collect();
        for name in names {
            let started = self.baseline.iter().find(|(n, _)| *n == name);
            match read.get(&name) {
                Some(value) => {
                    params.insert(name.clone(), value.clone());
                    wanted.insert(name, value.clone());
                }
                None => {
                    // Back to the database's default on this backend; the
                    // client's goes back to what it started with.
                    params.remove(&name);
                    match started {
                        Some((_, value)) => wanted.insert(name, value.clone()),
                        None => wanted.remove(&name),
                    };
                }
            }
        }
        self.wanted = wanted.into_iter().collect();
        self.wanted.sort();
        let pinned = (!pins.is_empty()).then_some(pins);
        if pinned.is_some() && self.settings.session_state == SessionState::Refuse {
            // State the scan did not see (in a function, say): not kept.
            send_reset(held, &mut self.queue);
            return;
        }
        let mut settings = String::new();
        if all {
            // Settings pg_settings does not show (custom ones) may have
            // changed: the backend starts over with the client's.
            settings.push_str("RESET ALL; ");
            held.backend.state().params.clear();
        }
        settings.push_str(&settings_sql(
            &self.wanted,
            &mut held.backend.state().params,
        ));
        if !settings.is_empty() {
            frame::query(&mut held.buffers.out, &settings);
            self.queue.push(Expect::Hidden);
        }
        self.set_pinned(pinned);
    }

    /// Records what pins the held backend (None: nothing), in the pool's
    /// count of pinned clients and the client's state.
    fn set_pinned(&mut self, pinned: Option<String>) {
        let Some(held) = &mut self.held else { return };
        match (held.pinned.is_some(), pinned.is_some()) {
            (false, true) => {
                self.counters.pinned.fetch_add(1, Ordering::Relaxed);
                self.info.set_state(ClientState::Pinned);
            }
            (true, false) => {
                self.counters.pinned.fetch_sub(1, Ordering::Relaxed);
                self.info.set_state(ClientState::Active);
            }
            _ => {}
        }
        held.pinned = pinned;
    }

    /// In transaction mode, a backend whose transaction ended (ReadyForQuery
    /// 'I', nothing owed, no message of the client's waiting) goes back to the
    /// pool, reset first if the client left state on it.
    fn maybe_release(&mut self) {
        let session = self.mode() == PoolMode::Session;
        let Some(held) = &mut self.held else { return };
        let done = self.queue.is_empty()
            && !self.queue.skipping
            && self.status == b'I'
            && held.buffers.out.is_empty()
            && !frame::has_message(&self.client.inb);
        if !done || session {
            return;
        }
        if !held.broken && !held.resetting {
            if held.effects.needs_probe(held.pinned.is_some()) {
                send_probe(held, &mut self.queue);
                return;
            }
            if held.pinned.is_some() {
                return;
            }
        }
        self.release();
    }

    fn release(&mut self) {
        self.set_pinned(None);
        let Some(mut held) = self.held.take() else {
            return;
        };
        let held_us = u64::try_from(held.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.counters.held_us.fetch_add(held_us, Ordering::Relaxed);
        *self.handle.running.lock().expect("running lock") = None;
        self.info.set_state(ClientState::Idle);
        if held.broken {
            return;
        }
        let unread = if held.buffers.inb.is_empty() {
            Bytes::new()
        } else {
            held.buffers.inb.split().freeze()
        };
        held.backend.release(unread);
        let mut buffers = held.buffers;
        buffers.out.clear();
        buffers.flush = false;
        buffers.eof = false;
        self.spare = Some(buffers);
    }

    /// Makes sure a backend is held; `false` when none could be had (the client
    /// was told why).
    async fn ensure_backend_for(&mut self, simple: bool) -> Result<bool, End> {
        if let Some(held) = &mut self.held {
            if held.resetting {
                // More work from the client while the reset runs: the reset
                // cleared what came before, the client's settings go back on,
                // and what comes now is watched anew.
                held.resetting = false;
                held.effects = Effects::default();
                let settings = settings_sql(&self.wanted, &mut held.backend.state().params);
                if !settings.is_empty() {
                    frame::query(&mut held.buffers.out, &settings);
                    self.queue.push(Expect::Hidden);
                }
            }
            return Ok(true);
        }
        match self.checkout().await {
            Ok(()) => Ok(true),
            Err(Checkout::Refused(code, message)) => {
                self.refuse(code, &message, simple);
                Ok(false)
            }
            Err(Checkout::End(end)) => Err(end),
        }
    }

    async fn ensure_backend(&mut self) -> Result<(), End> {
        match self.checkout().await {
            Ok(()) => Ok(()),
            Err(Checkout::Refused(code, message)) => Err(End::Fatal(Fatal::new(code, message))),
            Err(Checkout::End(end)) => Err(end),
        }
    }

    async fn checkout(&mut self) -> Result<(), Checkout> {
        if self.door.token.is_cancelled() {
            // Shutting down: transactions in flight finish, no new one starts.
            return Err(Checkout::End(End::Fatal(Fatal::new(
                "57P01",
                "terminating connection due to administrator command",
            ))));
        }
        if self.pool.is_closed() {
            self.follow_pool().map_err(Checkout::End)?;
        }
        let pool = Arc::clone(&self.pool);
        self.settings = pool.wire_settings();
        if self.pause.on.load(Ordering::SeqCst) {
            let (pause, info) = (Arc::clone(&self.pause), Arc::clone(&self.info));
            wait_while_paused(
                pause,
                info,
                self.pool_name.clone(),
                pool.config().acquire_timeout(),
            )
            .await?;
        }
        if self.timeouts_on() {
            self.last_activity = Instant::now();
        }
        if pool.refuses_callers() {
            return Err(Checkout::Refused(
                "57P03",
                format!(
                    "poolplane: pool \"{}\" is unhealthy: its database does not answer",
                    self.pool_name
                ),
            ));
        }
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        self.info.set_state(ClientState::Waiting);
        let asked = Instant::now();
        let got = pool.get_for_wire().await;
        let waited = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.counters.wait_us.fetch_add(waited, Ordering::Relaxed);
        self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
        self.info.set_state(if got.is_ok() {
            ClientState::Active
        } else {
            ClientState::Idle
        });
        let conn = got.map_err(|e| {
            let size = pool.pool_stats().current_size;
            let code = match e.kind() {
                poolplane::ErrorKind::AcquireTimeout => "53300",
                _ => "08006",
            };
            Checkout::Refused(
                code,
                format!("poolplane: pool \"{}\" (size {size}): {e}", self.pool_name),
            )
        })?;
        let mut backend = conn
            .into_wire(Duration::from_secs(5))
            .await
            .map_err(|(_, e)| {
                Checkout::Refused(
                    "08006",
                    format!("poolplane: pool \"{}\": {e}", self.pool_name),
                )
            })?;
        *self.handle.running.lock().expect("running lock") = Some(backend.cancel_handle());
        self.counters.assignments.fetch_add(1, Ordering::Relaxed);
        let mut buffers = self.spare.take().unwrap_or_default();
        let settings = settings_sql(&self.wanted, &mut backend.state().params);
        if !settings.is_empty() {
            frame::query(&mut buffers.out, &settings);
            self.queue.push(Expect::Hidden);
        }
        self.held = Some(Held::new(backend, buffers));
        Ok(())
    }

    /// Ends the session: a backend still held goes back only if its
    /// transaction ended and it could be reset; otherwise its statement is
    /// cancelled and it is closed (PostgreSQL rolls the transaction back).
    async fn finish(&mut self, end: End, client: &mut ClientIo) {
        if let End::Fatal(fatal) = &end {
            let mut out = BytesMut::new();
            frame::error(&mut out, "FATAL", fatal.code, &fatal.message);
            self.client.out.extend_from_slice(&out);
        }
        if !self.client.out.is_empty() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), client.write_all(&self.client.out))
                    .await;
        }
        let Some(held) = &mut self.held else { return };
        // Idle, or only the front door's own reset or probe still answering.
        let own = held.resetting || held.probing.is_some();
        let clean = (self.queue.is_empty() || own) && self.status == b'I' && !held.broken;
        if clean && self.reset_before_leaving().await {
            self.release();
            return;
        }
        if !self.queue.is_empty()
            && let Some(held) = &self.held
        {
            held.backend.cancel_handle().cancel().await;
        }
        if let Some(held) = &mut self.held {
            held.broken = true;
        }
        self.release();
    }

    /// Resets the held backend (when the client left state on it, and always in
    /// session mode) and waits for the answer; false if that failed.
    async fn reset_before_leaving(&mut self) -> bool {
        let session = self.mode() == PoolMode::Session;
        let Some(held) = &mut self.held else {
            return true;
        };
        if !held.resetting {
            let left = held.effects.dirty() || held.pinned.is_some() || held.probing.is_some();
            if !(left || session) {
                return true;
            }
            send_reset(held, &mut self.queue);
        }
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                // What already arrived first (the reply may be read already).
                if self.backend_messages().is_err() {
                    return false;
                }
                if self.queue.is_empty() {
                    return true;
                }
                let held = self.held.as_mut().expect("held");
                let step = poll_fn(|cx| held.buffers.poll_io(held.backend.io(), cx, true)).await;
                if step.is_err() || held.buffers.eof {
                    return false;
                }
            }
        })
        .await;
        matches!(answered, Ok(true)) && self.held.as_ref().is_some_and(|h| !h.broken)
    }
}

/// Sends the reset of what the client left on `held` (RESET ALL and the rest:
/// the front door's settings are gone with it; with DEALLOCATE ALL, so are the
/// backend's prepared statements).
fn send_reset(held: &mut Held, queue: &mut Queue) {
    frame::query(&mut held.buffers.out, &state::reset(&held.effects));
    queue.push(Expect::Hidden);
    held.resetting = true;
    held.backend.state().params.clear();
    if held.effects.deallocates || held.effects.sql_prepared.is_some() {
        held.backend.statements_discarded();
    }
}

/// Sends the probe of what the client's transactions left on `held`: the
/// settings they may have changed, and what would pin it.
fn send_probe(held: &mut Held, queue: &mut Queue) {
    frame::query(&mut held.buffers.out, &state::probe(&held.effects));
    queue.push(Expect::Probe);
    let effects = std::mem::take(&mut held.effects);
    held.probing = Some(if effects.all_settings {
        Cover::All
    } else {
        Cover::Names(effects.names)
    });
    held.rows.clear();
}

/// Waits while the pool is paused (PausePool), up to `limit`.
async fn wait_while_paused(
    pause: Arc<crate::clients::Pause>,
    info: Arc<ClientInfo>,
    pool_name: String,
    limit: Duration,
) -> Result<(), Checkout> {
    info.set_state(ClientState::Waiting);
    let waited = tokio::time::timeout(limit, async {
        loop {
            let resumed = pause.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !pause.on.load(Ordering::SeqCst) {
                return;
            }
            resumed.await;
        }
    })
    .await;
    info.set_state(ClientState::Idle);
    waited.map_err(|_| {
        Checkout::Refused(
            "53300",
            format!(
                "poolplane: pool \"{pool_name}\" is paused (PausePool) and was not resumed within {} s (acquire_timeout_secs)",
                limit.as_secs()
            ),
        )
    })
}

/// Sleeps until `at` (a timeout's deadline).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Why a checkout gave no backend.
enum Checkout {
    /// The client is told (an error for its query) and carries on.
    Refused(&'static str, String),
    /// The session ends.
    End(End),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_settings_and_options_are_read() {
        let params = vec![
            ("user".to_owned(), "app".to_owned()),
            ("client_encoding".to_owned(), "UTF8".to_owned()),
            (
                "options".to_owned(),
                "-c search_path=a,b --statement-timeout=5s".to_owned(),
            ),
            ("application_name".to_owned(), "psql".to_owned()),
        ];
        let wanted = wanted_settings(&params).ok().expect("valid");
        assert_eq!(
            wanted,
            [
                ("client_encoding".to_owned(), "UTF8".to_owned()),
                ("search_path".to_owned(), "a,b".to_owned()),
                ("statement_timeout".to_owned(), "5s".to_owned()),
            ]
        );
        let bad = vec![("x; DROP TABLE t".to_owned(), "1".to_owned())];
        assert!(wanted_settings(&bad).is_err());
        assert_eq!(quote("it's"), "'it''s'");
    }
}
