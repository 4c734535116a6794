//! The listener, and each client's way in: SSLRequest and TLS, the startup
//! message, SCRAM, the pool's parameters, BackendKeyData; CancelRequests.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use poolplane::{AdvancedConnectionPool, ConnectionPoolService};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::frame;
use crate::prepared::Statements;
use crate::scram::{self, Binding, Exchange, Failure, Verifier};
use crate::session::{ClientHandle, Session};
use crate::users::Users;

/// How the front door listens and whom it lets in.
#[derive(Clone)]
pub struct FrontDoorOptions {
    /// Where it listens.
    pub listen: SocketAddr,
    /// TLS for clients (SSLRequest), with the certificate's DER (for channel
    /// binding).
    pub tls: Option<(Arc<rustls::ServerConfig>, Vec<u8>)>,
    /// Refuse clients that do not start TLS.
    pub tls_required: bool,
    /// The users file (re-read by [`FrontDoor::reload_users`]).
    pub users_file: Option<PathBuf>,
    /// The most clients connected at once.
    pub max_clients: usize,
    /// The longest message a client may send.
    pub max_message_bytes: usize,
    /// How long a client has from connecting to being logged in.
    pub login_timeout: Duration,
}

impl std::fmt::Debug for FrontDoorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoorOptions")
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("tls_required", &self.tls_required)
            .field("users_file", &self.users_file)
            .field("max_clients", &self.max_clients)
            .finish_non_exhaustive()
    }
}

impl Default for FrontDoorOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            tls: None,
            tls_required: false,
            users_file: None,
            max_clients: 10_000,
            max_message_bytes: 64 << 20,
            login_timeout: Duration::from_secs(15),
        }
    }
}

/// Why the front door did not start.
#[derive(Debug, thiserror::Error)]
pub enum FrontDoorError {
    /// The options are not usable.
    #[error("{0}")]
    Config(String),
    /// The address could not be bound.
    #[error("--pg-listen {addr}: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
}

/// A CancelRequest's key: poolplane's own, per client.
type Key = (i32, i32);

/// What every session shares.
pub(crate) struct Door {
    pub registry: Arc<ConnectionPoolService>,
    pub options: FrontDoorOptions,
    users: RwLock<Arc<Users>>,
    pub statements: Statements,
    cancels: Mutex<HashMap<Key, Arc<ClientHandle>>>,
    /// The SCRAM verifier of each pool's own user, by pool name, with the
    /// password's digest it was made from.
    verifiers: Mutex<HashMap<String, ([u8; 32], Verifier)>>,
    /// Each pool's server parameters (for ParameterStatus), by pool name, with
    /// the pool they were read from (a rebuilt pool reads them again).
    parameters: Mutex<HashMap<String, ParametersOf>>,
    clients: Arc<tokio::sync::Semaphore>,
    /// Every logged-in client, by id.
    pub connected: Mutex<HashMap<u64, Arc<crate::clients::ClientInfo>>>,
    /// Each pool's pause switch, by pool name.
    pauses: Mutex<HashMap<String, Arc<crate::clients::Pause>>>,
    next_client: std::sync::atomic::AtomicU64,
    pub token: CancellationToken,
    /// Where SHOW STATS' averages run from.
    pub marks: Mutex<crate::admin::Marks>,
}

/// The running front door.
pub struct FrontDoor {
    door: Arc<Door>,
    local_addr: SocketAddr,
    tasks: TaskTracker,
}

impl std::fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoor")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// A front door bound to its address, not yet accepting.
pub struct BoundFrontDoor {
    listener: TcpListener,
    local_addr: SocketAddr,
    options: FrontDoorOptions,
    users: Users,
}

impl std::fmt::Debug for BoundFrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundFrontDoor")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl BoundFrontDoor {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts accepting clients for `registry`'s pools; stops when `parent` is
    /// cancelled (or at [`FrontDoor::shutdown`]).
    pub fn start(
        self,
        registry: Arc<ConnectionPoolService>,
        parent: &CancellationToken,
    ) -> FrontDoor {
        let Self {
            listener,
            local_addr,
            options,
            users,
        } = self;
        let door = Arc::new(Door {
            registry,
            clients: Arc::new(tokio::sync::Semaphore::new(options.max_clients)),
            options,
            users: RwLock::new(Arc::new(users)),
            statements: Statements::default(),
            cancels: Mutex::default(),
            verifiers: Mutex::default(),
            parameters: Mutex::default(),
            connected: Mutex::default(),
            pauses: Mutex::default(),
            next_client: std::sync::atomic::AtomicU64::new(1),
            token: parent.child_token(),
            marks: Mutex::default(),
        });
        let tasks = TaskTracker::new();
        tasks.spawn(accept(Arc::clone(&door), listener, tasks.clone()));
        tracing::info!(%local_addr, "PostgreSQL front door listening");
        FrontDoor {
            door,
            local_addr,
            tasks,
        }
    }
}

impl FrontDoor {
    /// Checks the options, reads the users file and binds the address.
    pub async fn bind(options: FrontDoorOptions) -> Result<BoundFrontDoor, FrontDoorError> {
        if !options.listen.ip().is_loopback() && options.users_file.is_none() {
            return Err(FrontDoorError::Config(format!(
                "--pg-listen {} is not a loopback address and no client credentials are configured: give --pg-users-file, or listen on a loopback address",
                options.listen
            )));
        }
        if options.tls_required && options.tls.is_none() {
            return Err(FrontDoorError::Config(
                "--pg-tls-required needs a certificate (--pg-tls-cert and --pg-tls-key, or the gRPC server's --tls-cert)".into(),
            ));
        }
        if !(1..=1_000_000).contains(&options.max_clients) {
            return Err(FrontDoorError::Config(
                "--pg-max-clients: must be between 1 and 1000000".into(),
            ));
        }
        let users = match &options.users_file {
            Some(path) => Users::load(path)
                .map_err(|e| FrontDoorError::Config(format!("--pg-users-file: {e}")))?,
            None => Users::default(),
        };
        let bind_error = |error| FrontDoorError::Bind {
            addr: options.listen,
            error,
        };
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(BoundFrontDoor {
            listener,
            local_addr,
            options,
            users,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The clients connected now (of `pool` only, if given), oldest first.
    pub fn clients(&self, pool: Option<&str>) -> Vec<crate::ClientSnapshot> {
        self.door.clients(pool)
    }

    /// Pauses `pool`'s front door: a client's next transaction waits (up to
    /// the pool's acquire timeout), those in flight finish. Returns how many
    /// clients still hold a backend when `wait` ran out (0: drained).
    pub async fn pause(&self, pool: &str, wait: Duration) -> usize {
        self.door.pause(pool, wait).await
    }

    /// Resumes `pool`'s front door: waiting clients go on.
    pub fn resume(&self, pool: &str) {
        self.door.resume(pool);
    }

    /// Ends client `id` (FATAL 57P01; a transaction it is inside is rolled
    /// back); false if no such client is connected.
    pub fn kill_client(&self, id: u64) -> bool {
        self.door.kill_client(id)
    }

    /// Re-reads the users file; returns how many users it holds. On an error
    /// the users in force stay.
    pub fn reload_users(&self) -> Result<usize, String> {
        self.door.reload_users()
    }

    /// Stops accepting, ends idle sessions at once and busy ones when their
    /// transaction ends, waiting at most `grace` for them.
    pub async fn shutdown(&self, grace: Duration) {
        self.door.token.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }
}

async fn accept(door: Arc<Door>, listener: TcpListener, tasks: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            () = door.token.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of descriptors and the like: wait a little, keep serving.
                tracing::warn!(%error, "PostgreSQL front door: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let door = Arc::clone(&door);
        tasks.spawn(async move {
            let token = door.token.clone();
            tokio::select! {
                () = serve(door, tcp, peer) => {}
                // Past the shutdown grace the task is dropped with the runtime;
                // a cancelled door ends logins that have not finished.
                () = async { token.cancelled().await; std::future::pending::<()>().await } => {}
            }
        });
    }
}

/// A client's socket, plain or TLS.
pub(crate) enum ClientIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Between the plain socket and its TLS session (a failed handshake).
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the client's socket is gone")
}

impl ClientIo {
    fn is_tls(&self) -> bool {
        matches!(self, ClientIo::Tls(_))
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientIo::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, data),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
            ClientIo::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientIo::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientIo::Gone => Poll::Ready(Err(gone())),
        }
    }
}

/// Closes a client's socket after a FATAL: our side first, then what it still
/// sends is read and dropped for a moment, so that the close is not a reset
/// that could overtake the FATAL.
pub(crate) async fn close_gently(client: &mut ClientIo) {
    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
    let mut sink = [0u8; 8192];
    let drain = async {
        let mut total = 0usize;
        while total < (1 << 20) {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(100), drain).await;
}

/// A FATAL error for the client, ending its connection.
pub(crate) struct Fatal {
    pub code: &'static str,
    pub message: String,
}

impl Fatal {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

async fn serve(door: Arc<Door>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let Ok(permit) = Arc::clone(&door.clients).try_acquire_owned() else {
        let mut tcp = tcp;
        let mut out = BytesMut::new();
        frame::error(
            &mut out,
            "FATAL",
            "53300",
            "sorry, too many clients already",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&out)).await;
        return;
    };
    let mut client = ClientIo::Plain(tcp);
    let login =
        tokio::time::timeout(door.options.login_timeout, log_in(&door, &mut client, peer)).await;
    let session = match login {
        Ok(Ok(Some(Login::Pool(session)))) => *session,
        Ok(Ok(Some(Login::Console(console)))) => {
            console.run(&mut client).await;
            close_gently(&mut client).await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(fatal)) => {
            let mut out = BytesMut::new();
            frame::error(&mut out, "FATAL", fatal.code, &fatal.message);
            let _ = tokio::time::timeout(Duration::from_secs(1), client.write_all(&out)).await;
            close_gently(&mut client).await;
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "PostgreSQL front door: the client did not log in in time");
            return;
        }
    };
    let key = session.key;
    let handle = Arc::clone(&session.handle);
    let info = Arc::clone(&session.info);
    door.cancels
        .lock()
        .expect("cancels lock")
        .insert(key, handle);
    door.connected
        .lock()
        .expect("clients lock")
        .insert(info.id, Arc::clone(&info));
    session.run(client).await;
    door.cancels.lock().expect("cancels lock").remove(&key);
    door.connected
        .lock()
        .expect("clients lock")
        .remove(&info.id);
    drop(permit);
}

/// The longest startup packet accepted (PostgreSQL's own limit).
const MAX_STARTUP: usize = 10_000;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_3: i32 = 196_608;

/// Reads one startup-phase packet (length, then code and body).
async fn read_packet(client: &mut ClientIo) -> Result<Option<Vec<u8>>, Fatal> {
    let mut len = [0u8; 4];
    match client.read_exact(&mut len).await {
        Ok(_) => {}
        Err(_) => return Ok(None),
    }
    let len = i32::from_be_bytes(len);
    let len = usize::try_from(len).unwrap_or(0);
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(Fatal::new("08P01", "invalid length of startup packet"));
    }
    let mut body = vec![0u8; len - 4];
    if client.read_exact(&mut body).await.is_err() {
        return Ok(None);
    }
    Ok(Some(body))
}

/// The startup message's parameters.
fn parameters(body: &[u8]) -> Result<Vec<(String, String)>, Fatal> {
    let mut rest = body;
    let mut out = Vec::new();
    loop {
        let name = frame::cstr(&mut rest)
            .ok_or_else(|| Fatal::new("08P01", "invalid startup packet layout"))?;
        if name.is_empty() {
            return Ok(out);
        }
        let value = frame::cstr(&mut rest)
            .ok_or_else(|| Fatal::new("08P01", "invalid startup packet layout"))?;
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
}

/// SSLRequest, GSSENCRequest and CancelRequest, up to the startup message's
/// parameters; `None` for a CancelRequest or a client gone.
async fn negotiate(
    door: &Arc<Door>,
    client: &mut ClientIo,
    peer: SocketAddr,
) -> Result<Option<Vec<(String, String)>>, Fatal> {
    loop {
        let Some(packet) = read_packet(client).await? else {
            return Ok(None);
        };
        let code = i32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
        match code {
            SSL_REQUEST if !client.is_tls() => {
                let Some((config, _)) = &door.options.tls else {
                    let _ = client.write_all(b"N").await;
                    continue;
                };
                let _ = client.write_all(b"S").await;
                let ClientIo::Plain(tcp) = std::mem::replace(client, ClientIo::Gone) else {
                    return Ok(None);
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
                match acceptor.accept(tcp).await {
                    Ok(tls) => *client = ClientIo::Tls(Box::new(tls)),
                    Err(error) => {
                        tracing::debug!(%peer, %error, "PostgreSQL front door: TLS handshake failed");
                        return Ok(None);
                    }
                }
            }
            GSSENC_REQUEST => {
                let _ = client.write_all(b"N").await;
            }
            CANCEL_REQUEST if packet.len() == 12 => {
                let pid = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
                let secret = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
                door.cancel((pid, secret)).await;
                return Ok(None);
            }
            PROTOCOL_3 => return Ok(Some(parameters(&packet[4..])?)),
            _ => {
                return Err(Fatal::new(
                    "0A000",
                    format!(
                        "unsupported frontend protocol {}.{}",
                        code >> 16,
                        code & 0xffff
                    ),
                ));
            }
        }
    }
}

/// What a client logged in to.
enum Login {
    /// A pool.
    Pool(Box<Session>),
    /// The admin console.
    Console(crate::admin::Console),
}

/// Startup to ReadyForQuery; `None` for a CancelRequest or a client gone.
async fn log_in(
    door: &Arc<Door>,
    client: &mut ClientIo,
    peer: SocketAddr,
) -> Result<Option<Login>, Fatal> {
    let Some(params) = negotiate(door, client, peer).await? else {
        return Ok(None);
    };
    if door.options.tls_required && !client.is_tls() {
        return Err(Fatal::new(
            "28000",
            "this server requires TLS (connect with sslmode=require)",
        ));
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let user = get("user").ok_or_else(|| {
        Fatal::new(
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    let database = get("database").unwrap_or_else(|| user.clone());
    if crate::admin::NAMES.contains(&database.as_str()) {
        return console_log_in(door, client, &user, &database, peer).await;
    }
    let Ok(pool) = door.registry.pool(&database) else {
        return Err(Fatal::new(
            "3D000",
            format!("database \"{database}\" does not exist"),
        ));
    };
    let verifier = door.verifier_for(&pool, &user);
    authenticate(door, client, &database, verifier, &user, peer).await?;
    let wanted = crate::session::wanted_settings(&params)?;
    let info = Arc::new(crate::clients::ClientInfo::new(
        door.next_client
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        &database,
        &user,
        &get("application_name").unwrap_or_default(),
        peer,
        client.is_tls(),
        CancellationToken::new(),
    ));
    let session = Session::new(door, &pool, wanted, info)?;
    let mut out = BytesMut::new();
    frame::authentication(&mut out, 0, &[]);
    for (name, value) in session.reported_parameters(&pool).await? {
        frame::parameter(&mut out, &name, &value);
    }
    frame::backend_key(&mut out, session.key.0, session.key.1);
    frame::ready(&mut out, b'I');
    client
        .write_all(&out)
        .await
        .map_err(|_| Fatal::new("08006", "the client went away"))?;
    tracing::debug!(%peer, %user, pool = %database, "PostgreSQL client logged in");
    Ok(Some(Login::Pool(Box::new(session))))
}

/// A login to the admin console: users of the users file with a role.
async fn console_log_in(
    door: &Arc<Door>,
    client: &mut ClientIo,
    user: &str,
    database: &str,
    peer: SocketAddr,
) -> Result<Option<Login>, Fatal> {
    let users = door.users();
    // A user of the file without a role learns it only after proving its
    // password; anyone else cannot log in.
    let (role, verifier) = match users.get(user) {
        Some(entry) => (entry.role, entry.verifier.clone()),
        None => (None, Verifier::impossible(user)),
    };
    authenticate(door, client, database, verifier, user, peer).await?;
    let role = role.ok_or_else(|| Fatal::new("28000", "not allowed"))?;
    let mut out = BytesMut::new();
    frame::authentication(&mut out, 0, &[]);
    for (name, value) in [
        (
            "server_version",
            concat!(env!("CARGO_PKG_VERSION"), "/poolplane"),
        ),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "on"),
        ("application_name", ""),
    ] {
        frame::parameter(&mut out, name, value);
    }
    frame::backend_key(&mut out, 0, 0);
    frame::ready(&mut out, b'I');
    client
        .write_all(&out)
        .await
        .map_err(|_| Fatal::new("08006", "the client went away"))?;
    tracing::info!(%peer, %user, "PostgreSQL front door: admin console login");
    Ok(Some(Login::Console(crate::admin::Console::new(door, role))))
}

/// A pool's server parameters and the pool instance they came from.
type ParametersOf = (
    std::sync::Weak<AdvancedConnectionPool>,
    Arc<Vec<(String, String)>>,
);

impl Door {
    /// The clients connected now (of `pool` only, if given), oldest first.
    pub(crate) fn clients(&self, pool: Option<&str>) -> Vec<crate::ClientSnapshot> {
        self.infos(pool).iter().map(|c| c.snapshot()).collect()
    }

    /// What the door keeps of the clients connected now (of `pool` only, if
    /// given), oldest first.
    pub(crate) fn infos(&self, pool: Option<&str>) -> Vec<Arc<crate::clients::ClientInfo>> {
        let connected = self.connected.lock().expect("clients lock");
        let mut all: Vec<_> = connected
            .values()
            .filter(|c| pool.is_none_or(|p| c.pool == p))
            .cloned()
            .collect();
        drop(connected);
        all.sort_by_key(|c| c.id);
        all
    }

    /// See [`FrontDoor::pause`].
    pub(crate) async fn pause(&self, pool: &str, wait: Duration) -> usize {
        self.pause_of(pool)
            .on
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let busy = || {
            self.clients(Some(pool))
                .iter()
                .filter(|c| c.state == crate::ClientState::Active)
                .count()
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = busy();
            if now == 0 || tokio::time::Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// See [`FrontDoor::resume`].
    pub(crate) fn resume(&self, pool: &str) {
        let pause = self.pause_of(pool);
        pause.on.store(false, std::sync::atomic::Ordering::SeqCst);
        pause.resumed.notify_waiters();
    }

    /// Whether `pool` is paused.
    pub(crate) fn is_paused(&self, pool: &str) -> bool {
        self.pauses
            .lock()
            .expect("pauses lock")
            .get(pool)
            .is_some_and(|p| p.on.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// See [`FrontDoor::kill_client`].
    pub(crate) fn kill_client(&self, id: u64) -> bool {
        let client = self
            .connected
            .lock()
            .expect("clients lock")
            .get(&id)
            .cloned();
        match client {
            Some(client) => {
                client.kill.cancel();
                true
            }
            None => false,
        }
    }

    /// See [`FrontDoor::reload_users`].
    pub(crate) fn reload_users(&self) -> Result<usize, String> {
        let Some(path) = &self.options.users_file else {
            return Ok(0);
        };
        let users = Users::load(path)?;
        let count = users.len();
        *self.users.write().expect("users lock") = Arc::new(users);
        Ok(count)
    }

    /// The users file's users now.
    pub(crate) fn users(&self) -> Arc<Users> {
        Arc::clone(&self.users.read().expect("users lock"))
    }

    /// The pause switch of `pool` (made on first use).
    pub(crate) fn pause_of(&self, pool: &str) -> Arc<crate::clients::Pause> {
        let mut pauses = self.pauses.lock().expect("pauses lock");
        Arc::clone(pauses.entry(pool.to_owned()).or_default())
    }

    /// The server parameters of `pool`'s database, read once per pool.
    pub(crate) async fn parameters(
        &self,
        pool: &Arc<AdvancedConnectionPool>,
    ) -> Result<Arc<Vec<(String, String)>>, Fatal> {
        {
            let cache = self.parameters.lock().expect("parameters lock");
            if let Some((of, known)) = cache.get(pool.name())
                && std::ptr::eq(of.as_ptr(), Arc::as_ptr(pool))
            {
                return Ok(Arc::clone(known));
            }
        }
        let read = Arc::new(crate::session::server_parameters(pool).await?);
        self.parameters.lock().expect("parameters lock").insert(
            pool.name().to_owned(),
            (Arc::downgrade(pool), Arc::clone(&read)),
        );
        Ok(read)
    }

    /// The verifier `user` logs in to `pool` with; one no password matches for
    /// a user that may not (so the exchange looks the same either way).
    fn verifier_for(&self, pool: &AdvancedConnectionPool, user: &str) -> Verifier {
        let users = Arc::clone(&self.users.read().expect("users lock"));
        if let Some(entry) = users.get(user) {
            return if entry.may_use(pool.name()) {
                entry.verifier.clone()
            } else {
                Verifier::impossible(user)
            };
        }
        match pool.login() {
            (Some(own), Some(password)) if own == user && !password.is_empty() => {
                let digest: [u8; 32] =
                    ring::digest::digest(&ring::digest::SHA256, password.expose())
                        .as_ref()
                        .try_into()
                        .expect("32 bytes");
                let mut cache = self.verifiers.lock().expect("verifiers lock");
                if let Some((known, verifier)) = cache.get(pool.name())
                    && *known == digest
                {
                    return verifier.clone();
                }
                let verifier = Verifier::from_password(
                    password.expose(),
                    &scram::random::<16>(),
                    scram::ITERATIONS,
                );
                cache.insert(pool.name().to_owned(), (digest, verifier.clone()));
                verifier
            }
            _ => Verifier::impossible(user),
        }
    }

    /// Forwards a CancelRequest to the backend running that client's
    /// statement now; a key nobody holds, or a client with nothing running, is
    /// ignored (as PostgreSQL does).
    async fn cancel(&self, key: Key) {
        let handle = self
            .cancels
            .lock()
            .expect("cancels lock")
            .get(&key)
            .cloned();
        let Some(handle) = handle else { return };
        let running = handle.running.lock().expect("running lock").clone();
        if let Some(cancel) = running {
            cancel.cancel().await;
        }
    }
}

/// Reads a SASL message ('p') of the startup phase.
async fn read_sasl(client: &mut ClientIo) -> Result<BytesMut, Fatal> {
    let mut header = [0u8; 5];
    client
        .read_exact(&mut header)
        .await
        .map_err(|_| Fatal::new("08006", "the client went away"))?;
    let len = usize::try_from(i32::from_be_bytes([
        header[1], header[2], header[3], header[4],
    ]))
    .unwrap_or(0);
    if header[0] != b'p' || !(4..=MAX_STARTUP).contains(&len) {
        return Err(Fatal::new("08P01", "expected a SASL response"));
    }
    let mut body = BytesMut::zeroed(len - 4);
    client
        .read_exact(&mut body)
        .await
        .map_err(|_| Fatal::new("08006", "the client went away"))?;
    Ok(body)
}

/// SCRAM with `verifier` for `user` logging in to `database` (a pool, or the
/// console).
async fn authenticate(
    door: &Door,
    client: &mut ClientIo,
    database: &str,
    verifier: Verifier,
    user: &str,
    peer: SocketAddr,
) -> Result<(), Fatal> {
    let end_point = match (&door.options.tls, client.is_tls()) {
        (Some((_, cert)), true) => Some(scram::end_point(cert)),
        _ => None,
    };
    let mut out = BytesMut::new();
    let mut mechanisms = Vec::new();
    if end_point.is_some() {
        mechanisms.extend_from_slice(b"SCRAM-SHA-256-PLUS\0");
    }
    mechanisms.extend_from_slice(b"SCRAM-SHA-256\0\0");
    frame::authentication(&mut out, 10, &mechanisms);
    let gone = |_| Fatal::new("08006", "the client went away");
    client.write_all(&out).await.map_err(gone)?;
    let initial = read_sasl(client).await?;
    let mut rest = &initial[..];
    let mechanism = frame::cstr(&mut rest).unwrap_or_default();
    let plus = match mechanism {
        b"SCRAM-SHA-256-PLUS" if end_point.is_some() => true,
        b"SCRAM-SHA-256" => false,
        _ => {
            return Err(Fatal::new(
                "08P01",
                "client selected an invalid SASL authentication mechanism",
            ));
        }
    };
    if rest.len() < 4 {
        return Err(Fatal::new("08P01", "malformed SASL message"));
    }
    let first = &rest[4..];
    let failed = || {
        tracing::warn!(%peer, %user, pool = %database, "PostgreSQL front door: password authentication failed");
        Fatal::new(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
    };
    let binding = Binding {
        plus,
        end_point: end_point.as_deref(),
    };
    let (exchange, server_first) = match Exchange::start(verifier, first, &binding) {
        Ok(started) => started,
        Err(Failure::Protocol(why)) => return Err(Fatal::new("08P01", why)),
        Err(Failure::WrongPassword) => return Err(failed()),
    };
    out.clear();
    frame::authentication(&mut out, 11, server_first.as_bytes());
    client.write_all(&out).await.map_err(gone)?;
    let last = read_sasl(client).await?;
    match exchange.finish(&last) {
        Ok(server_final) => {
            out.clear();
            frame::authentication(&mut out, 12, server_final.as_bytes());
            client.write_all(&out).await.map_err(gone)?;
            Ok(())
        }
        Err(Failure::WrongPassword) => Err(failed()),
        Err(Failure::Protocol(why)) => Err(Fatal::new("08P01", why)),
    }
}

impl FrontDoorOptions {
    /// TLS for clients from a PEM certificate chain and key.
    pub fn tls_from_pem(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<(Arc<rustls::ServerConfig>, Vec<u8>), FrontDoorError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let unusable = |what: &str, e: &dyn std::fmt::Display| {
            FrontDoorError::Config(format!("--pg-tls-{what}: {e}"))
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| unusable("cert", &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| unusable("cert", &e))?;
        let leaf = chain
            .first()
            .ok_or_else(|| unusable("cert", &"no certificate in it"))?
            .to_vec();
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| unusable("key", &e))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable("cert", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| unusable("key", &e))?;
        Ok((Arc::new(config), leaf))
    }
}
