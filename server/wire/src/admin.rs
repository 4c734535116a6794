//! The admin console PgBouncer users know: the database name `pgbouncer` (or
//! `poolplane`) on the front door, for users with a role in the users file.
//! SHOW POOLS, CLIENTS, SERVERS, STATS (and STATS_TOTALS, STATS_AVERAGES),
//! DATABASES, LISTS, VERSION, CONFIG, HELP; PAUSE, RESUME, RECONNECT, KILL,
//! KILL_CLIENT, RELOAD (the users file). Columns carry PgBouncer's names and
//! types, poolplane's own after them. The simple query protocol only, as
//! PgBouncer's console.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, BytesMut};
use poolplane::{AdvancedConnectionPool, WireStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clients::ClientState;
use crate::frame;
use crate::startup::{ClientIo, Door};
use crate::users::Role;

/// The database names that open the console.
pub(crate) const NAMES: [&str; 2] = ["pgbouncer", "poolplane"];

/// The period SHOW STATS' averages cover (PgBouncer's stats_period).
const STATS_PERIOD: Duration = Duration::from_secs(15);

/// How long PAUSE waits for a pool's transactions to finish.
const PAUSE_WAIT: Duration = Duration::from_secs(30);

/// A column's type, as PgBouncer's console types them.
#[derive(Clone, Copy)]
enum Ty {
    Text,
    Int4,
    Int8,
    Numeric,
}

impl Ty {
    fn oid_and_size(self) -> (u32, i16) {
        match self {
            Ty::Text => (25, -1),
            Ty::Int4 => (23, 4),
            Ty::Int8 => (20, 8),
            Ty::Numeric => (1700, -1),
        }
    }
}

/// A result set: columns and rows of text (None: NULL).
struct Table {
    columns: Vec<(&'static str, Ty)>,
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn new(columns: &[(&'static str, Ty)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    fn write(&self, out: &mut BytesMut, tag: &str) {
        let at = frame::begin(out, b'T');
        out.put_i16(i16::try_from(self.columns.len()).expect("few columns"));
        for (name, ty) in &self.columns {
            let (oid, size) = ty.oid_and_size();
            out.put_slice(name.as_bytes());
            out.put_u8(0);
            out.put_u32(0);
            out.put_i16(0);
            out.put_u32(oid);
            out.put_i16(size);
            out.put_i32(-1);
            out.put_i16(0);
        }
        frame::finish(out, at);
        for row in &self.rows {
            let at = frame::begin(out, b'D');
            out.put_i16(i16::try_from(row.len()).expect("few columns"));
            for value in row {
                match value {
                    Some(v) => {
                        out.put_i32(i32::try_from(v.len()).expect("short values"));
                        out.put_slice(v.as_bytes());
                    }
                    None => out.put_i32(-1),
                }
            }
            frame::finish(out, at);
        }
        complete(out, tag);
    }
}

fn complete(out: &mut BytesMut, tag: &str) {
    let at = frame::begin(out, b'C');
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
    frame::finish(out, at);
}

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// A time as PgBouncer's console prints it.
fn time(at: SystemTime) -> Option<String> {
    let at: chrono::DateTime<chrono::Utc> = at.into();
    Some(at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

/// An error for the console's client: SQLSTATE and message.
struct Refusal(&'static str, String);

/// Where each pool's counters stood at the start of the last two periods
/// (for averages over the one that ended).
#[derive(Default)]
pub(crate) struct Marks {
    by_pool: HashMap<String, [Option<(Instant, WireStats)>; 2]>,
}

impl Marks {
    /// The counters `now` of `pool` and the mark the averages run from.
    fn since(&mut self, pool: &str, now: &WireStats) -> (Duration, WireStats) {
        let marks = self.by_pool.entry(pool.to_owned()).or_default();
        let at = Instant::now();
        match &marks[1] {
            Some((t, _)) if at.duration_since(*t) < STATS_PERIOD => {}
            _ => {
                marks[0] = marks[1].take();
                marks[1] = Some((at, *now));
            }
        }
        let (from, stats) = marks[0].or(marks[1]).expect("a mark");
        (at.duration_since(from), stats)
    }
}

/// One console session.
pub(crate) struct Console {
    door: Arc<Door>,
    role: Role,
}

impl Console {
    pub(crate) fn new(door: &Arc<Door>, role: Role) -> Self {
        Self {
            door: Arc::clone(door),
            role,
        }
    }

    /// Serves the client until it leaves (or the server shuts down).
    pub(crate) async fn run(self, client: &mut ClientIo) {
        let mut inb = BytesMut::with_capacity(4096);
        let max = 1 << 20;
        let mut skipping = false;
        loop {
            loop {
                let message = match frame::next_message(&mut inb, max) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(_) => return,
                };
                let mut out = BytesMut::new();
                match message.tag {
                    b'X' => return,
                    b'Q' => {
                        let body = message.body();
                        let sql = String::from_utf8_lossy(&body[..body.len().saturating_sub(1)]);
                        self.query(&sql, &mut out).await;
                        frame::ready(&mut out, b'I');
                    }
                    b'S' => {
                        skipping = false;
                        frame::ready(&mut out, b'I');
                    }
                    _ if skipping => {}
                    _ => {
                        skipping = true;
                        frame::error(
                            &mut out,
                            "ERROR",
                            "0A000",
                            "the admin console speaks the simple query protocol only",
                        );
                    }
                }
                if client.write_all(&out).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                read = client.read_buf(&mut inb) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                }
                () = self.door.token.cancelled() => {
                    let mut out = BytesMut::new();
                    frame::error(&mut out, "FATAL", "57P01", "terminating connection due to administrator command");
                    let _ = client.write_all(&out).await;
                    return;
                }
            }
        }
    }

    /// Answers each statement of a simple query.
    async fn query(&self, sql: &str, out: &mut BytesMut) {
        let statements: Vec<&str> = sql
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if statements.is_empty() {
            out.put_slice(b"I\0\0\0\x04");
            return;
        }
        for statement in statements {
            if let Err(Refusal(code, message)) = self.command(statement, out).await {
                frame::error(out, "ERROR", code, &message);
                return;
            }
        }
    }

    async fn command(&self, statement: &str, out: &mut BytesMut) -> Result<(), Refusal> {
        let words: Vec<String> = statement
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        let word = |i: usize| words.get(i).map_or("", String::as_str);
        let arg = statement.split_whitespace().nth(1);
        match word(0) {
            "show" => self.show(word(1), out),
            "set" => {
                complete(out, "SET");
                Ok(())
            }
            "pause" | "resume" | "reconnect" | "kill" | "kill_client" | "reload" => {
                if self.role != Role::Admin {
                    return Err(Refusal("42501", "admin access needed".into()));
                }
                self.control(word(0), arg, out).await
            }
            _ => Err(Refusal(
                "42601",
                format!("invalid command '{statement}', use SHOW HELP;"),
            )),
        }
    }

    fn show(&self, what: &str, out: &mut BytesMut) -> Result<(), Refusal> {
        let table = match what {
            "pools" => self.pools(),
            "clients" => self.clients(),
            "servers" => self.servers(),
            "stats" => self.stats(Stats::All),
            "stats_totals" => self.stats(Stats::Totals),
            "stats_averages" => self.stats(Stats::Averages),
            "databases" => self.databases(),
            "lists" => self.lists(),
            "version" => {
                let mut t = Table::new(&[("version", Ty::Text)]);
                t.rows.push(vec![text(format!(
                    "poolplane {} (PgBouncer-compatible admin console)",
                    env!("CARGO_PKG_VERSION")
                ))]);
                t
            }
            "config" => self.config(),
            "help" => {
                frame::notice(
                    out,
                    "00000",
                    "Console usage\n\tSHOW HELP|POOLS|CLIENTS|SERVERS|STATS|STATS_TOTALS|STATS_AVERAGES|DATABASES|LISTS|VERSION|CONFIG\n\tPAUSE [<db>]\n\tRESUME [<db>]\n\tRECONNECT [<db>]\n\tKILL <db>\n\tKILL_CLIENT <id>\n\tRELOAD",
                );
                complete(out, "SHOW");
                return Ok(());
            }
            other => {
                return Err(Refusal(
                    "42601",
                    format!("invalid SHOW command '{other}', use SHOW HELP;"),
                ));
            }
        };
        table.write(out, "SHOW");
        Ok(())
    }

    /// Every pool, by name.
    fn each_pool(&self) -> Vec<(String, Arc<AdvancedConnectionPool>)> {
        let mut names = self.door.registry.pool_names();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| {
                let pool = self.door.registry.pool(&name).ok()?;
                Some((name, pool))
            })
            .collect()
    }

    fn pools(&self) -> Table {
        let i = Ty::Int4;
        let mut t = Table::new(&[
            ("database", Ty::Text),
            ("user", Ty::Text),
            ("cl_active", i),
            ("cl_waiting", i),
            ("cl_active_cancel_req", i),
            ("cl_waiting_cancel_req", i),
            ("sv_active", i),
            ("sv_active_cancel", i),
            ("sv_being_canceled", i),
            ("sv_idle", i),
            ("sv_used", i),
            ("sv_tested", i),
            ("sv_login", i),
            ("maxwait", i),
            ("maxwait_us", i),
            ("pool_mode", Ty::Text),
            ("load_balance_hosts", Ty::Text),
            ("cl_pinned", i),
            ("pool_size", i),
            ("paused", i),
        ]);
        for (name, pool) in self.each_pool() {
            let clients = self.door.infos(Some(&name));
            let count = |state: ClientState| {
                clients
                    .iter()
                    .filter(|c| c.snapshot().state == state)
                    .count()
            };
            let waiting = count(ClientState::Waiting);
            let maxwait = clients
                .iter()
                .filter(|c| c.snapshot().state == ClientState::Waiting)
                .map(|c| c.in_state_for())
                .max()
                .unwrap_or_default();
            let stats = pool.pool_stats();
            t.rows.push(vec![
                text(&name),
                pool.login().0,
                text(clients.len() - waiting),
                text(waiting),
                text(0),
                text(0),
                text(stats.active_connections),
                text(0),
                text(0),
                text(stats.idle_connections),
                text(0),
                text(0),
                text(0),
                text(maxwait.as_secs()),
                text(maxwait.subsec_micros()),
                text(pool.pool_mode()),
                None,
                text(count(ClientState::Pinned)),
                text(stats.current_size),
                text(u8::from(self.door.is_paused(&name))),
            ]);
        }
        t
    }

    fn clients(&self) -> Table {
        let mut t = Table::new(&socket_columns(&[
            ("transactions", Ty::Int8),
            ("queries", Ty::Int8),
            ("bytes_received", Ty::Int8),
            ("bytes_sent", Ty::Int8),
            ("poolplane_state", Ty::Text),
        ]));
        let local = self.door.options.listen;
        for info in self.door.infos(None) {
            let c = info.snapshot();
            let wait = if c.state == ClientState::Waiting {
                info.in_state_for()
            } else {
                Duration::ZERO
            };
            let state = match c.state {
                ClientState::Idle => "idle",
                ClientState::Waiting => "waiting",
                ClientState::Active | ClientState::Pinned => "active",
            };
            let changed = SystemTime::now()
                .checked_sub(info.in_state_for())
                .unwrap_or(c.connected_at);
            t.rows.push(vec![
                text("C"),
                text(&c.user),
                text(&c.pool),
                text("none"),
                text(state),
                text(c.address.ip()),
                text(c.address.port()),
                text(local.ip()),
                text(local.port()),
                time(c.connected_at),
                time(changed),
                text(wait.as_secs()),
                text(wait.subsec_micros()),
                text(0),
                text(format!("{:#x}", c.id)),
                None,
                text(0),
                text(if c.tls { "TLS" } else { "" }),
                text(&c.application_name),
                text(info.statements.load(Ordering::Relaxed)),
                text(c.id),
                text(c.transactions),
                text(c.queries),
                text(c.bytes_in),
                text(c.bytes_out),
                text(c.state.as_str()),
            ]);
        }
        t
    }

    fn servers(&self) -> Table {
        let mut t = Table::new(&socket_columns(&[]));
        for (name, pool) in self.each_pool() {
            let user = pool.login().0;
            for b in pool.backends() {
                let (addr, port) = match b.host.rsplit_once(':') {
                    Some((addr, port)) => (addr.to_owned(), port.to_owned()),
                    None => (b.host.clone(), "0".to_owned()),
                };
                t.rows.push(vec![
                    text("S"),
                    user.clone(),
                    text(&name),
                    text("none"),
                    text(if b.in_use { "active" } else { "idle" }),
                    text(addr),
                    text(port),
                    None,
                    None,
                    time(b.connected_at),
                    time(b.connected_at),
                    text(0),
                    text(0),
                    text(0),
                    text(format!("{:#x}", b.id)),
                    None,
                    text(b.pid),
                    text(b.tls.unwrap_or_default()),
                    None,
                    None,
                    text(b.id),
                ]);
            }
        }
        t
    }

    fn stats(&self, which: Stats) -> Table {
        let prefixed = matches!(which, Stats::All);
        let mut columns = vec![("database", Ty::Text)];
        if which != Stats::Averages {
            columns.extend(
                STAT_NAMES
                    .iter()
                    .map(|(total, bare, _)| (if prefixed { *total } else { *bare }, Ty::Numeric)),
            );
        }
        if which != Stats::Totals {
            columns.extend(
                STAT_NAMES
                    .iter()
                    .map(|(_, bare, avg)| (if prefixed { *avg } else { *bare }, Ty::Numeric)),
            );
        }
        if prefixed {
            // The name older exporters (Debian's) read: queries.
            columns.push(("total_requests", Ty::Numeric));
        }
        let mut t = Table::new(&columns);
        let mut marks = self.door.marks.lock().expect("marks lock");
        for (name, pool) in self.each_pool() {
            let now = pool.pool_stats().wire;
            let (elapsed, then) = marks.since(&name, &now);
            let mut row = vec![text(&name)];
            if which != Stats::Averages {
                row.extend(totals(&now).map(text));
            }
            if which != Stats::Totals {
                row.extend(averages(&now, &then, elapsed).map(text));
            }
            if prefixed {
                row.push(text(now.queries));
            }
            t.rows.push(row);
        }
        t
    }

    fn databases(&self) -> Table {
        let i = Ty::Int4;
        let mut t = Table::new(&[
            ("name", Ty::Text),
            ("host", Ty::Text),
            ("port", i),
            ("database", Ty::Text),
            ("force_user", Ty::Text),
            ("pool_size", i),
            ("min_pool_size", i),
            ("reserve_pool_size", i),
            ("server_lifetime", i),
            ("pool_mode", Ty::Text),
            ("load_balance_hosts", Ty::Text),
            ("max_connections", i),
            ("current_connections", i),
            ("max_client_connections", i),
            ("current_client_connections", i),
            ("paused", i),
            ("disabled", i),
            ("reserve_pool", i),
        ]);
        let mut infos = self.door.registry.list_pools();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        for info in infos {
            let target = poolplane::ConnInfo::parse(&info.database_url).ok();
            let param = |key: &str| {
                target
                    .as_ref()
                    .and_then(|t| t.param(key).map(str::to_owned))
            };
            let c = &info.config;
            let current = self
                .door
                .registry
                .pool(&info.name)
                .map_or(0, |p| p.pool_stats().connections);
            let max_clients = match c.max_client_connections {
                0 => self.door.options.max_clients as u64,
                n => u64::from(n),
            };
            t.rows.push(vec![
                text(&info.name),
                param("host"),
                text(param("port").unwrap_or_else(|| "5432".into())),
                param("dbname"),
                param("user"),
                text(c.max_connections),
                text(c.min_connections),
                text(0),
                text(c.max_lifetime_secs),
                text(c.pool_mode),
                None,
                text(c.max_connections),
                text(current),
                text(max_clients),
                text(self.door.infos(Some(&info.name)).len()),
                text(u8::from(self.door.is_paused(&info.name))),
                text(0),
                text(0),
            ]);
        }
        t
    }

    fn lists(&self) -> Table {
        let mut t = Table::new(&[("list", Ty::Text), ("items", Ty::Int4)]);
        let pools = self.each_pool();
        let mut users: Vec<String> = pools.iter().filter_map(|(_, p)| p.login().0).collect();
        users.sort();
        users.dedup();
        let servers: usize = pools.iter().map(|(_, p)| p.backends().len()).sum();
        let clients = self.door.infos(None).len();
        for (list, items) in [
            ("databases", pools.len()),
            ("users", users.len() + self.door.users().len()),
            ("peers", 0),
            ("pools", pools.len()),
            ("peer_pools", 0),
            ("free_clients", 0),
            ("used_clients", clients),
            ("login_clients", 0),
            ("free_servers", 0),
            ("used_servers", servers),
            ("dns_names", 0),
            ("dns_zones", 0),
            ("dns_queries", 0),
            ("dns_pending", 0),
        ] {
            t.rows.push(vec![text(list), text(items)]);
        }
        t
    }

    fn config(&self) -> Table {
        let mut t = Table::new(&[
            ("key", Ty::Text),
            ("value", Ty::Text),
            ("default", Ty::Text),
            ("changeable", Ty::Text),
        ]);
        let o = &self.door.options;
        for (key, value, default) in [
            ("listen_addr", o.listen.ip().to_string(), "127.0.0.1"),
            ("listen_port", o.listen.port().to_string(), "6432"),
            ("max_client_conn", o.max_clients.to_string(), "10000"),
            ("pool_mode", "transaction".to_owned(), "transaction"),
            ("stats_period", STATS_PERIOD.as_secs().to_string(), "15"),
            (
                "client_tls_sslmode",
                match (o.tls.is_some(), o.tls_required) {
                    (_, true) => "require",
                    (true, false) => "allow",
                    (false, false) => "disable",
                }
                .to_owned(),
                "disable",
            ),
        ] {
            t.rows
                .push(vec![text(key), text(value), text(default), text("no")]);
        }
        t
    }

    /// PAUSE, RESUME, RECONNECT and KILL (of one pool, or every pool),
    /// KILL_CLIENT and RELOAD.
    async fn control(
        &self,
        command: &str,
        arg: Option<&str>,
        out: &mut BytesMut,
    ) -> Result<(), Refusal> {
        if command == "reload" {
            // The users file, as SIGHUP re-reads it.
            let count = self
                .door
                .reload_users()
                .map_err(|e| Refusal("F0000", format!("RELOAD: {e}")))?;
            frame::notice(out, "00000", &format!("the users file holds {count} users"));
            complete(out, "RELOAD");
            return Ok(());
        }
        if command == "kill_client" {
            let id = arg.and_then(|a| a.parse::<u64>().ok()).ok_or_else(|| {
                Refusal(
                    "42601",
                    "KILL_CLIENT needs a client id (SHOW CLIENTS)".into(),
                )
            })?;
            if !self.door.kill_client(id) {
                return Err(Refusal("42704", format!("no such client: {id}")));
            }
            complete(out, "KILL_CLIENT");
            return Ok(());
        }
        let pools: Vec<(String, Arc<AdvancedConnectionPool>)> = match arg {
            Some(name) => {
                let pool = self
                    .door
                    .registry
                    .pool(name)
                    .map_err(|_| Refusal("3D000", format!("no such database: {name}")))?;
                vec![(name.to_owned(), pool)]
            }
            None if command == "kill" => {
                return Err(Refusal("42601", "KILL needs a database".into()));
            }
            None => self.each_pool(),
        };
        for (name, pool) in &pools {
            match command {
                "pause" => {
                    let busy = self.door.pause(name, PAUSE_WAIT).await;
                    if busy > 0 {
                        frame::notice(
                            out,
                            "01000",
                            &format!(
                                "pool \"{name}\" is paused; {busy} client(s) still hold a backend after {} s",
                                PAUSE_WAIT.as_secs()
                            ),
                        );
                    }
                }
                "resume" => self.door.resume(name),
                "reconnect" => {
                    pool.reconnect();
                }
                _ => {
                    for client in self.door.infos(Some(name)) {
                        client.kill.cancel();
                    }
                }
            }
        }
        complete(out, &command.to_ascii_uppercase());
        Ok(())
    }
}

/// Which of SHOW STATS' column groups.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stats {
    All,
    Totals,
    Averages,
}

/// SHOW STATS' counters: the total's name, the bare name (STATS_TOTALS and
/// STATS_AVERAGES), the average's name.
const STAT_NAMES: [(&str, &str, &str); 12] = [
    (
        "total_server_assignment_count",
        "server_assignment_count",
        "avg_server_assignment_count",
    ),
    ("total_xact_count", "xact_count", "avg_xact_count"),
    ("total_query_count", "query_count", "avg_query_count"),
    ("total_received", "bytes_received", "avg_recv"),
    ("total_sent", "bytes_sent", "avg_sent"),
    ("total_xact_time", "xact_time", "avg_xact_time"),
    ("total_query_time", "query_time", "avg_query_time"),
    ("total_wait_time", "wait_time", "avg_wait_time"),
    (
        "total_client_parse_count",
        "client_parse_count",
        "avg_client_parse_count",
    ),
    (
        "total_server_parse_count",
        "server_parse_count",
        "avg_server_parse_count",
    ),
    ("total_bind_count", "bind_count", "avg_bind_count"),
    (
        "total_client_login_count",
        "client_login_count",
        "avg_client_login_count",
    ),
];

/// The totals, in STAT_NAMES' order. A transaction's time and a query's are
/// both the time a client held its backend (poolplane does not time
/// statements within a transaction).
fn totals(s: &WireStats) -> [u64; 12] {
    [
        s.assignments,
        s.transactions,
        s.queries,
        s.bytes_in,
        s.bytes_out,
        s.held_us,
        s.held_us,
        s.wait_us,
        s.client_parses,
        s.server_parses,
        s.binds,
        s.logins,
    ]
}

/// The averages over the period from `then`: counts and bytes per second;
/// times in microseconds per transaction, per query and per assignment.
fn averages(now: &WireStats, then: &WireStats, elapsed: Duration) -> [u64; 12] {
    let (a, b) = (totals(now), totals(then));
    let d: Vec<u64> = a.iter().zip(b).map(|(x, y)| x.saturating_sub(y)).collect();
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = |n: u64| (n as f64 / secs).round() as u64;
    let per = |total: u64, count: u64| total.checked_div(count).unwrap_or(0);
    [
        rate(d[0]),
        rate(d[1]),
        rate(d[2]),
        rate(d[3]),
        rate(d[4]),
        per(d[5], d[1]),
        per(d[6], d[2]),
        per(d[7], d[0]),
        rate(d[8]),
        rate(d[9]),
        rate(d[10]),
        rate(d[11]),
    ]
}

/// SHOW CLIENTS' and SHOW SERVERS' columns, with `extra` after them.
fn socket_columns(extra: &[(&'static str, Ty)]) -> Vec<(&'static str, Ty)> {
    let (s, i) = (Ty::Text, Ty::Int4);
    let mut columns = vec![
        ("type", s),
        ("user", s),
        ("database", s),
        ("replication", s),
        ("state", s),
        ("addr", s),
        ("port", i),
        ("local_addr", s),
        ("local_port", i),
        ("connect_time", s),
        ("request_time", s),
        ("wait", i),
        ("wait_us", i),
        ("close_needed", i),
        ("ptr", s),
        ("link", s),
        ("remote_pid", i),
        ("tls", s),
        ("application_name", s),
        ("prepared_statements", i),
        ("id", Ty::Int8),
    ];
    columns.extend_from_slice(extra);
    columns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_rates_and_times_per_event() {
        let then = WireStats::default();
        let now = WireStats {
            assignments: 30,
            transactions: 30,
            queries: 60,
            bytes_in: 1500,
            held_us: 3000,
            wait_us: 300,
            ..WireStats::default()
        };
        let avg = averages(&now, &then, Duration::from_secs(15));
        assert_eq!(avg[..4], [2, 2, 4, 100]);
        // 3,000 µs over 30 transactions, over 60 queries; 300 µs over 30 waits.
        assert_eq!(avg[5..8], [100, 50, 10]);
        assert_eq!(totals(&now)[5], 3000);
    }
}
