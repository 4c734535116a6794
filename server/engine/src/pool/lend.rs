//! A pooled connection's socket, shared by two speakers: tokio-postgres' driver
//! (the typed API) and, while a wire client holds the connection, the front door.
//!
//! The driver reads and writes through a [`Lendable`]; [`Link::lend`] takes the
//! socket out from under it once the driver has nothing in flight (every
//! ReadyForQuery it is owed has arrived, and both directions sit at a message
//! boundary: watched on the wire, since the Client's API cannot tell), and
//! [`Link::give_back`] puts it back, with any bytes read past the last message in
//! front of the driver's input, and wakes the driver (the reactor kept only the
//! last reader's waker).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// A byte stream to a database server (TCP, Unix socket or TLS over either).
pub trait BackendIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> BackendIo for T {}

/// A boxed [`BackendIo`]: what the front door reads and writes while it holds a
/// connection.
pub struct BoxIo(Box<dyn BackendIo>);

impl BoxIo {
    pub(crate) fn new(io: impl BackendIo) -> Self {
        Self(Box::new(io))
    }
}

impl AsyncRead for BoxIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoxIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Splits a byte stream of protocol messages (tag byte, i32 length) into
/// messages, across reads of any size, and reports each message's tag once its
/// header is complete.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message's body still to come.
    left: usize,
}

impl Frames {
    fn feed(&mut self, mut data: &[u8], mut on_tag: impl FnMut(u8)) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                let len = i32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.left = usize::try_from(len).unwrap_or(4).saturating_sub(4);
                self.have = 0;
                on_tag(self.header[0]);
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }
}

/// What the driver is still owed: one ReadyForQuery per Sync or Query it wrote.
#[derive(Debug, Default)]
struct Watch {
    on: bool,
    sent: Frames,
    received: Frames,
    /// The tag ('S' or 'Q') of each request whose ReadyForQuery is still due.
    owed: VecDeque<u8>,
}

impl Watch {
    fn wrote(&mut self, data: &[u8]) {
        if !self.on {
            return;
        }
        let owed = &mut self.owed;
        self.sent.feed(data, |tag| {
            if tag == b'S' || tag == b'Q' {
                owed.push_back(tag);
            }
        });
    }

    fn read(&mut self, data: &[u8]) {
        if !self.on {
            return;
        }
        let owed = &mut self.owed;
        self.received.feed(data, |tag| match tag {
            b'Z' => {
                owed.pop_front();
            }
            // COPY FROM STDIN started by an extended-protocol Execute: the Sync
            // sent with it is ignored by the server (its ReadyForQuery comes
            // after the Sync that follows CopyDone).
            b'G' if owed.front() == Some(&b'S') => {
                owed.pop_front();
            }
            _ => {}
        });
    }

    fn idle(&self) -> bool {
        self.owed.is_empty() && self.sent.at_boundary() && self.received.at_boundary()
    }
}

struct Slot {
    io: Option<BoxIo>,
    /// Bytes the front door read past its last message, served to the driver first.
    readback: Bytes,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    watch: Watch,
    /// The TLS session's channel binding, taken by the driver's authentication.
    binding: Option<ChannelBinding>,
}

fn keep_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The shared socket of one pooled connection.
#[derive(Clone)]
pub(crate) struct Link {
    slot: Arc<Mutex<Slot>>,
    idle: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

/// Why the socket could not be lent.
#[derive(Debug, thiserror::Error)]
pub enum LendError {
    /// The driver still had a request in flight at the deadline.
    #[error("the connection was still busy with an earlier request")]
    Busy,
    /// The socket is gone (already lent, or the connection is closing).
    #[error("the connection's socket is gone")]
    Gone,
}

impl Link {
    pub(crate) fn new(io: BoxIo) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Slot {
                io: Some(io),
                readback: Bytes::new(),
                read_waker: None,
                write_waker: None,
                watch: Watch::default(),
                binding: None,
            })),
            idle: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().expect("link lock")
    }

    /// The stream tokio-postgres' driver uses.
    pub(crate) fn stream(&self) -> Lendable {
        Lendable(self.clone())
    }

    /// Starts watching the driver's traffic (after the startup handshake, whose
    /// messages are not framed like the rest).
    pub(crate) fn watch(&self) {
        self.lock().watch.on = true;
    }

    /// Takes the socket once the driver has nothing in flight, waiting until
    /// `deadline` at most.
    pub(crate) async fn lend(&self, wait: std::time::Duration) -> Result<BoxIo, LendError> {
        // The common case: idle now, no waiting set up.
        if let Some(io) = self.take_if_idle() {
            return io;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut slot = self.lock();
                if slot.watch.idle() && slot.readback.is_empty() {
                    return slot.io.take().ok_or(LendError::Gone);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(LendError::Busy);
            }
        }
    }

    fn take_if_idle(&self) -> Option<Result<BoxIo, LendError>> {
        let mut slot = self.lock();
        (slot.watch.idle() && slot.readback.is_empty())
            .then(|| slot.io.take().ok_or(LendError::Gone))
    }

    /// Puts the socket back under the driver; `unread` (whole messages the
    /// front door read past its last reply: notices, notifications) comes first.
    ///
    /// The driver is woken only if it has something to do now: bytes to read
    /// back, or a write it tried while the socket was lent (a dropped
    /// statement's Close). Otherwise it stays parked until the Client next sends
    /// it a request (which wakes it and re-registers its interest in the
    /// socket): waking it after every wire transaction would cost a task switch
    /// each. A server that closed an idle connection meanwhile is noticed by
    /// the checkout's validation of connections idle past its threshold.
    pub(crate) fn give_back(&self, io: BoxIo, unread: Bytes) {
        let (read, write) = {
            let mut slot = self.lock();
            slot.io = Some(io);
            let read = if unread.is_empty() {
                None
            } else {
                slot.read_waker.take()
            };
            slot.readback = unread;
            (read, slot.write_waker.take())
        };
        for waker in [read, write].into_iter().flatten() {
            waker.wake();
        }
    }

    fn after_read(&self, slot: &mut Slot, data: &[u8]) {
        slot.watch.read(data);
        if slot.watch.idle() {
            self.idle.notify_waiters();
        }
    }
}

/// The driver's side of a [`Link`]: reads and writes the socket while it is
/// not lent, and waits (parked, its waker kept) while it is.
pub(crate) struct Lendable(Link);

impl AsyncRead for Lendable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let link = &self.0;
        let mut guard = link.lock();
        let slot = &mut *guard;
        if !slot.readback.is_empty() {
            let n = slot.readback.len().min(buf.remaining());
            let chunk = slot.readback.split_to(n);
            buf.put_slice(&chunk);
            link.after_read(slot, &chunk);
            return Poll::Ready(Ok(()));
        }
        let Some(io) = slot.io.as_mut() else {
            keep_waker(&mut slot.read_waker, cx);
            return Poll::Pending;
        };
        let before = buf.filled().len();
        match Pin::new(io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = &buf.filled()[before..];
                slot.watch.read(filled);
                if slot.watch.idle() {
                    link.idle.notify_waiters();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                keep_waker(&mut slot.read_waker, cx);
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Lendable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut slot = self.0.lock();
        let slot = &mut *slot;
        let Some(io) = slot.io.as_mut() else {
            keep_waker(&mut slot.write_waker, cx);
            return Poll::Pending;
        };
        match Pin::new(io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                slot.watch.wrote(&data[..n]);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                keep_waker(&mut slot.write_waker, cx);
                Poll::Pending
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut slot = self.0.lock();
        let slot = &mut *slot;
        let Some(io) = slot.io.as_mut() else {
            keep_waker(&mut slot.write_waker, cx);
            return Poll::Pending;
        };
        let polled = Pin::new(io).poll_flush(cx);
        if polled.is_pending() {
            keep_waker(&mut slot.write_waker, cx);
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut slot = self.0.lock();
        match slot.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            // Lent: the front door's holder closes it.
            None => Poll::Ready(Ok(())),
        }
    }
}

impl TlsStream for Lendable {
    fn channel_binding(&self) -> ChannelBinding {
        self.0
            .lock()
            .binding
            .take()
            .unwrap_or_else(ChannelBinding::none)
    }
}

/// A TLS connector for a [`Lendable`]: the handshake runs on the socket inside
/// it and the TLS stream goes back in, so the lendable layer sits above TLS.
pub(crate) struct LendTls<T>(pub(crate) T);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<T> TlsConnect<Lendable> for LendTls<T>
where
    T: TlsConnect<BoxIo> + Send + 'static,
    T::Stream: Send + 'static,
    T::Future: Send,
{
    type Stream = Lendable;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Lendable, BoxError>> + Send>>;

    fn connect(self, stream: Lendable) -> Self::Future {
        Box::pin(async move {
            let io = stream.0.lock().io.take().ok_or("the socket is gone")?;
            let tls = self.0.connect(io).await.map_err(Into::into)?;
            let binding = tls.channel_binding();
            {
                let mut slot = stream.0.lock();
                slot.binding = Some(binding);
                slot.io = Some(BoxIo::new(tls));
            }
            Ok(stream)
        })
    }
}

/// Where a connection went: where a cancel request for it goes too.
#[derive(Debug, Clone)]
pub(crate) enum Address {
    Tcp {
        ip: std::net::IpAddr,
        port: u16,
        /// The host name, for TLS (server name and verification).
        host: Option<String>,
    },
    Unix(std::path::PathBuf),
}

impl Address {
    /// The host name TLS is started with (as tokio-postgres does).
    pub(crate) fn tls_name(&self) -> &str {
        match self {
            Address::Tcp { host, .. } => host.as_deref().unwrap_or(""),
            Address::Unix(_) => "",
        }
    }

    /// Opens a socket to it with `pg`'s connect timeout, TCP_NODELAY and
    /// keepalives (which `connect_raw` leaves to its caller).
    pub(crate) async fn open(&self, pg: &tokio_postgres::Config) -> io::Result<BoxIo> {
        let timeout = pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(std::time::Duration::from_secs(3600));
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connection timed out");
        match self {
            Address::Tcp { ip, port, .. } => {
                let stream =
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect((*ip, *port)))
                        .await
                        .map_err(|_| timed_out())??;
                stream.set_nodelay(true)?;
                if pg.get_keepalives() {
                    let mut keepalive =
                        socket2::TcpKeepalive::new().with_time(pg.get_keepalives_idle());
                    if let Some(interval) = pg.get_keepalives_interval() {
                        keepalive = keepalive.with_interval(interval);
                    }
                    if let Some(retries) = pg.get_keepalives_retries() {
                        keepalive = keepalive.with_retries(retries);
                    }
                    socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
                }
                if let Some(user_timeout) = pg.get_tcp_user_timeout() {
                    socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(*user_timeout))?;
                }
                Ok(BoxIo::new(stream))
            }
            Address::Unix(path) => {
                let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| timed_out())??;
                Ok(BoxIo::new(stream))
            }
        }
    }

    /// Every address `pg` names, in order (hosts, with their hostaddr and port).
    pub(crate) async fn all_of(pg: &tokio_postgres::Config) -> io::Result<Vec<Address>> {
        use tokio_postgres::config::Host;
        let mut all = Vec::new();
        for (i, host) in pg.get_hosts().iter().enumerate() {
            let port = pg
                .get_ports()
                .get(i)
                .or_else(|| pg.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(name) => {
                    let host = Some(name.clone());
                    if let Some(ip) = pg.get_hostaddrs().get(i) {
                        all.push(Address::Tcp {
                            ip: *ip,
                            port,
                            host,
                        });
                        continue;
                    }
                    for addr in tokio::net::lookup_host((name.as_str(), port)).await? {
                        all.push(Address::Tcp {
                            ip: addr.ip(),
                            port,
                            host: host.clone(),
                        });
                    }
                }
                Host::Unix(dir) => all.push(Address::Unix(dir.join(format!(".s.PGSQL.{port}")))),
            }
        }
        Ok(all)
    }
}

/// A connection opened over a [`Link`].
pub(crate) struct Opened {
    pub client: tokio_postgres::Client,
    /// The driver's task (aborted if dropped before it is kept).
    pub driver: super::manager::AbortOnDrop,
    pub link: Link,
    pub address: Address,
}

/// Opens a connection whose socket can be lent: the first of `pg`'s addresses
/// that answers, with TLS as `tls` says.
pub(crate) async fn connect(
    tls: &crate::tls::PgTls,
    pg: &tokio_postgres::Config,
) -> Result<Opened, super::manager::OpenError> {
    use super::manager::OpenError;
    let mut last = None;
    for address in Address::all_of(pg).await.map_err(OpenError::Socket)? {
        match connect_to(tls, pg, &address).await {
            Ok((client, connection, link)) => {
                link.watch();
                let driver = super::manager::AbortOnDrop(Some(tokio::spawn(async move {
                    let _ = connection.await;
                })));
                if let Err(e) = check_session_attrs(&client, pg).await {
                    last = Some(e);
                    continue;
                }
                return Ok(Opened {
                    client,
                    driver,
                    link,
                    address,
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        OpenError::Socket(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the target names no host",
        ))
    }))
}

/// `target_session_attrs=read-write`: a server in read-only mode is skipped
/// (what tokio-postgres' own connect checks, which `connect_raw` does not).
async fn check_session_attrs(
    client: &tokio_postgres::Client,
    pg: &tokio_postgres::Config,
) -> Result<(), super::manager::OpenError> {
    use super::manager::OpenError;
    use tokio_postgres::config::TargetSessionAttrs;
    if pg.get_target_session_attrs() != TargetSessionAttrs::ReadWrite {
        return Ok(());
    }
    let rows = client
        .simple_query("SHOW transaction_read_only")
        .await
        .map_err(OpenError::Postgres)?;
    let read_only = rows.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("on"),
        _ => false,
    });
    if read_only {
        return Err(OpenError::Socket(io::Error::other(
            "the server is in read-only mode (target_session_attrs=read-write)",
        )));
    }
    Ok(())
}

async fn connect_to(
    tls: &crate::tls::PgTls,
    pg: &tokio_postgres::Config,
    address: &Address,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<Lendable, Lendable>,
        Link,
    ),
    super::manager::OpenError,
> {
    use super::manager::OpenError;
    use tokio_postgres::tls::MakeTlsConnect;
    let once = |pg: tokio_postgres::Config| async move {
        let link = Link::new(address.open(&pg).await.map_err(OpenError::Socket)?);
        let mut connector = tls.connector.clone();
        let inner = MakeTlsConnect::<BoxIo>::make_tls_connect(&mut connector, address.tls_name())
            .map_err(|e| OpenError::Socket(io::Error::other(e)))?;
        let (client, driver) = pg
            .connect_raw(link.stream(), LendTls(inner))
            .await
            .map_err(OpenError::Postgres)?;
        Ok::<_, OpenError>((client, driver, link))
    };
    match once(pg.clone()).await {
        // libpq's `allow`: plaintext first, TLS when the server refuses it.
        Err(OpenError::Postgres(e))
            if tls.mode == crate::conninfo::SslMode::Allow && e.as_db_error().is_some() =>
        {
            let mut with_tls = pg.clone();
            with_tls.ssl_mode(tokio_postgres::config::SslMode::Require);
            once(with_tls).await
        }
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(i32::try_from(body.len()).unwrap() + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn frames_are_found_across_any_split() {
        let mut stream = message(b'P', b"\0SELECT 1\0\0\0");
        stream.extend(message(b'S', b""));
        stream.extend(message(b'Q', b"SELECT 2\0"));
        for chunk in 1..stream.len() {
            let mut frames = Frames::default();
            let mut tags = Vec::new();
            for part in stream.chunks(chunk) {
                frames.feed(part, |t| tags.push(t));
            }
            assert_eq!(tags, b"PSQ", "chunks of {chunk}");
            assert!(frames.at_boundary());
        }
    }

    #[test]
    fn idle_once_every_ready_for_query_arrived() {
        let mut watch = Watch {
            on: true,
            ..Watch::default()
        };
        watch.wrote(&[message(b'B', b"x"), message(b'E', b"y"), message(b'S', b"")].concat());
        watch.wrote(&message(b'Q', b"SELECT 1\0"));
        assert!(!watch.idle());
        watch.read(&[message(b'2', b""), message(b'C', b"SELECT 1\0")].concat());
        watch.read(&message(b'Z', b"I")[..3]);
        assert!(!watch.idle(), "half a message");
        watch.read(&message(b'Z', b"I")[3..]);
        assert!(!watch.idle(), "one ReadyForQuery still owed");
        watch.read(&message(b'Z', b"I"));
        assert!(watch.idle());
    }

    #[test]
    fn extended_copy_in_owes_one_ready_for_query() {
        let mut watch = Watch {
            on: true,
            ..Watch::default()
        };
        // Bind, Execute, Sync; then (in COPY mode) CopyData, CopyDone, Sync.
        watch.wrote(&[message(b'B', b""), message(b'E', b""), message(b'S', b"")].concat());
        watch.read(&[message(b'2', b""), message(b'G', b"\0\0\0")].concat());
        watch.wrote(
            &[
                message(b'd', b"1\n"),
                message(b'c', b""),
                message(b'S', b""),
            ]
            .concat(),
        );
        assert!(!watch.idle());
        watch.read(&[message(b'C', b"COPY 1\0"), message(b'Z', b"I")].concat());
        assert!(watch.idle());
    }

    #[test]
    fn simple_copy_in_is_not_confused_with_extended() {
        let mut watch = Watch {
            on: true,
            ..Watch::default()
        };
        watch.wrote(&message(b'Q', b"COPY t FROM STDIN\0"));
        watch.read(&message(b'G', b"\0\0\0"));
        watch.wrote(&message(b'c', b""));
        assert!(!watch.idle());
        watch.read(&[message(b'C', b"COPY 0\0"), message(b'Z', b"I")].concat());
        assert!(watch.idle());
    }
}
