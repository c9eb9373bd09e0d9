//! A TCP proxy in front of a database port whose faults can be switched at run time.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Size of one forwarded chunk: large enough for a PostgreSQL result page, small enough that
/// latency applies per message rather than per connection.
const CHUNK: usize = 16 * 1024;

/// Listen backlog of the proxy's socket (what `TcpListener::bind` uses too).
const BACKLOG: u32 = 1024;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Forward bytes both ways, as if the proxy were not there.
    Pass,
    /// Close the listening socket: new connections are refused by the kernel (`ECONNREFUSED`).
    /// Open connections keep working.
    Refuse,
    /// Accept new connections but never forward them, and freeze open ones: no byte moves either
    /// way until the mode changes. Models a hung server or a silently dropped network.
    Stall,
    /// Forward, but hold every chunk this long first, in both directions.
    Latency(Duration),
}

/// A TCP proxy on `127.0.0.1` in front of an upstream address, with runtime-switchable faults.
///
/// Point a client at [`FaultProxy::addr`] (or rewrite its URL with [`FaultProxy::url`]), then
/// change the [`Mode`] or [`reset`](FaultProxy::reset_all) its connections while it runs. The proxy
/// counts the connections it accepted and those still open. Dropping it stops the listener and
/// closes every connection.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use ballast_testkit::proxy::{FaultProxy, Mode};
///
/// let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let proxy = FaultProxy::start(upstream.local_addr()?).await?;
/// proxy.set_mode(Mode::Refuse);
/// proxy.wait_for_mode().await;
/// let refused = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap_err();
/// assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener_task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped by `reset_all`; every connection watches it.
    resets: watch::Sender<u64>,
    /// Set by the listener task once it has applied the current mode.
    applied: watch::Sender<Mode>,
    accepted: AtomicU64,
    open: AtomicUsize,
}

impl FaultProxy {
    /// Starts a proxy on an ephemeral port of `127.0.0.1` that forwards to `upstream`, in
    /// [`Mode::Pass`].
    ///
    /// # Errors
    ///
    /// Binding the listening socket failed.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            mode: watch::Sender::new(Mode::Pass),
            resets: watch::Sender::new(0),
            applied: watch::Sender::new(Mode::Pass),
            accepted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        });
        let listener_task = tokio::spawn(listen(addr, Some(listener), Arc::clone(&shared)));
        Ok(FaultProxy {
            addr,
            shared,
            listener_task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` with its host and port replaced by the proxy's.
    ///
    /// # Panics
    ///
    /// If `url` is not a URL with a host.
    pub fn url(&self, url: &str) -> String {
        crate::db::with_host_port(url, self.addr)
    }

    /// Switches the mode. Takes effect at once for open connections; [`FaultProxy::wait_for_mode`]
    /// waits until the listening socket reflects it too.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Waits until the listener has applied the current mode (closed or reopened its socket).
    pub async fn wait_for_mode(&self) {
        let wanted = self.mode();
        let mut applied = self.shared.applied.subscribe();
        // The listener task lives as long as `self`, so the sender cannot be gone.
        let _ = applied.wait_for(|mode| *mode == wanted).await;
    }

    /// Resets every open connection: both sides see a TCP RST (`ECONNRESET`), as when a network
    /// device or the server's host drops them. New connections are unaffected.
    pub fn reset_all(&self) {
        self.shared
            .resets
            .send_modify(|generation| *generation += 1);
    }

    /// How many connections the proxy has accepted since it started.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// How many accepted connections are still open.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.listener_task.abort();
        // Connections watch `resets`; a last bump closes them all.
        self.reset_all();
    }
}

/// Binds `addr` again after the socket was closed for [`Mode::Refuse`].
fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn listen(addr: SocketAddr, mut listener: Option<TcpListener>, shared: Arc<Shared>) {
    let mut mode = shared.mode.subscribe();
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Refuse {
            listener = None;
        } else if listener.is_none() {
            match rebind(addr) {
                Ok(bound) => listener = Some(bound),
                Err(_) => {
                    // The port is briefly unavailable; try again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        shared.applied.send_replace(current);
        match &listener {
            Some(bound) => {
                tokio::select! {
                    accepted = bound.accept() => {
                        if let Ok((client, _)) = accepted {
                            shared.accepted.fetch_add(1, Ordering::SeqCst);
                            shared.open.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(serve(client, Arc::clone(&shared)));
                        }
                    }
                    changed = mode.changed() => if changed.is_err() { return },
                }
            }
            None => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Keeps `open` right however a connection task ends, aborts included.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let _guard = OpenGuard(Arc::clone(&shared));
    let mut resets = shared.resets.subscribe();
    resets.borrow_and_update();
    let mut mode = shared.mode.subscribe();

    let connect = async {
        wait_while_stalled(&mut mode).await;
        TcpStream::connect(shared.upstream).await
    };
    let upstream = tokio::select! {
        upstream = connect => upstream,
        _ = resets.changed() => return abort(&client, None),
    };
    let Ok(mut upstream) = upstream else {
        // The upstream is down: the client sees its connection reset, as it would through a
        // load balancer whose backend is gone.
        return abort(&client, None);
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let reset = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let forward = async {
            tokio::join!(
                pump(client_read, upstream_write, shared.mode.subscribe()),
                pump(upstream_read, client_write, shared.mode.subscribe()),
            )
        };
        tokio::select! {
            _ = forward => false,
            _ = resets.changed() => true,
        }
    };
    if reset {
        abort(&client, Some(&upstream));
    }
}

/// Makes `stream` (and `other`) close with a TCP RST instead of a FIN when dropped.
fn abort(stream: &TcpStream, other: Option<&TcpStream>) {
    let _ = stream.set_zero_linger();
    if let Some(other) = other {
        let _ = other.set_zero_linger();
    }
}

async fn wait_while_stalled(mode: &mut watch::Receiver<Mode>) {
    let _ = mode.wait_for(|mode| *mode != Mode::Stall).await;
}

/// Copies `from` to `to` under the proxy's mode until `from` ends or either side fails; then
/// shuts `to` down for writing so the peer sees the end too.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0; CHUNK];
    loop {
        wait_while_stalled(&mut mode).await;
        let read = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        wait_while_stalled(&mut mode).await;
        let latency = match *mode.borrow() {
            Mode::Latency(delay) => Some(delay),
            _ => None,
        };
        if let Some(delay) = latency {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
