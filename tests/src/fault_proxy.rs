//! `FaultProxy`: a TCP proxy on 127.0.0.1:0 between a pool and PostgreSQL that a
//! test can cut (every open connection closed, new ones refused at once), slow
//! down, blackhole (new connections accepted and never answered), or restore.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct State {
    cut: AtomicBool,
    blackhole: AtomicBool,
    delay_ms: AtomicU64,
    /// Connections inside their delay now, and the most there ever were at once.
    delayed: AtomicU64,
    peak_delayed: AtomicU64,
    /// Blackholed connections, held open until restore.
    held: std::sync::Mutex<JoinSet<()>>,
    connections: std::sync::Mutex<JoinSet<()>>,
}

/// A running proxy; stops (closing every connection) on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    token: CancellationToken,
}

impl FaultProxy {
    /// Starts a proxy to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let token = CancellationToken::new();
        let (st, stop) = (Arc::clone(&state), token.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                if st.cut.load(Ordering::Acquire) {
                    drop(client); // refused: closed before a byte is read
                    continue;
                }
                if st.blackhole.load(Ordering::Acquire) {
                    // Accepted, then silence: held (never read, never answered)
                    // until the proxy is restored, cut or dropped.
                    st.held.lock().expect("proxy lock").spawn(async move {
                        let _held = client;
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                let delay = Duration::from_millis(st.delay_ms.load(Ordering::Relaxed));
                st.connections.lock().expect("proxy lock").spawn(forward(
                    client,
                    upstream,
                    delay,
                    Arc::clone(&st),
                ));
            }
            st.connections.lock().expect("proxy lock").abort_all();
            st.held.lock().expect("proxy lock").abort_all();
        });
        Ok(Self { addr, state, token })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::Release);
        self.state
            .connections
            .lock()
            .expect("proxy lock")
            .abort_all();
    }

    /// Lets connections through again (ends cut and blackhole; the blackholed
    /// connections are closed).
    pub fn restore(&self) {
        self.state.blackhole.store(false, Ordering::Release);
        self.state.held.lock().expect("proxy lock").abort_all();
        self.state.cut.store(false, Ordering::Release);
    }

    /// Accepts new connections and never answers them (a host that takes TCP and
    /// then says nothing); connections already through keep working.
    pub fn blackhole(&self) {
        self.state.blackhole.store(true, Ordering::Release);
    }

    /// Connections held by the blackhole now (accepted, never answered).
    pub fn blackholed(&self) -> usize {
        self.state.held.lock().expect("proxy lock").len()
    }

    /// The most connections that were waiting out their delay at the same time
    /// (opened in parallel, this is more than one).
    pub fn peak_delayed(&self) -> u64 {
        self.state.peak_delayed.load(Ordering::Acquire)
    }

    /// Delays the start of every new connection by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.token.cancel();
        self.state
            .connections
            .lock()
            .expect("proxy lock")
            .abort_all();
        self.state.held.lock().expect("proxy lock").abort_all();
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, delay: Duration, st: Arc<State>) {
    if !delay.is_zero() {
        let now = st.delayed.fetch_add(1, Ordering::AcqRel) + 1;
        st.peak_delayed.fetch_max(now, Ordering::AcqRel);
        tokio::time::sleep(delay).await;
        st.delayed.fetch_sub(1, Ordering::AcqRel);
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
