//! Listening sockets: a thread accepts clients and starts a thread per connection.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::conn::serve_stream_with;
use crate::{ExportError, ExportSet};

/// Where a server listens when not told otherwise: NBD's port, loopback only.
pub const DEFAULT_TCP_ADDR: &str = "127.0.0.1:10809";

/// Tuning for a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Threads serving one connection's requests concurrently (the connection's own thread
    /// is one of them); 0 or 1 serves them one at a time.
    pub workers_per_connection: usize,
    /// How long a client may take over the handshake before it is hung up on, so that
    /// idle sockets cannot hold threads; `None` waits for ever. Transmission has no limit.
    pub handshake_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers_per_connection: 8,
            handshake_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// The address a server listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// An NBD server listening on one socket and serving an [`ExportSet`]. Dropping it (or
/// [`Server::shutdown`]) stops accepting, hangs up on every client and joins all threads.
pub struct Server {
    shared: Arc<Shared>,
    addr: ListenAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    exports: ExportSet,
    config: ServerConfig,
    stopping: AtomicBool,
    conns: Mutex<Conns>,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    /// A handle on each live connection's socket, to hang up at shutdown.
    live: HashMap<u64, Stream>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on a TCP address, e.g. [`DEFAULT_TCP_ADDR`] or `127.0.0.1:0` for any free port.
    pub fn bind_tcp(
        exports: ExportSet,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> Result<Self, ExportError> {
        Self::bind_tcp_with(exports, addr, ServerConfig::default())
    }

    pub fn bind_tcp_with(
        exports: ExportSet,
        addr: impl ToSocketAddrs + fmt::Debug,
        config: ServerConfig,
    ) -> Result<Self, ExportError> {
        let bind_err = |source| ExportError::Bind {
            addr: format!("{addr:?}").trim_matches('"').to_string(),
            source,
        };
        let listener = TcpListener::bind(&addr).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        Self::start(exports, config, ListenAddr::Tcp(local), move |shared| {
            accept_loop(shared, || listener.accept().map(|(s, _)| Stream::Tcp(s)))
        })
    }

    /// Listens on a Unix socket at `path`, which must not exist yet; removed at shutdown.
    pub fn bind_unix(exports: ExportSet, path: impl AsRef<Path>) -> Result<Self, ExportError> {
        Self::bind_unix_with(exports, path, ServerConfig::default())
    }

    pub fn bind_unix_with(
        exports: ExportSet,
        path: impl AsRef<Path>,
        config: ServerConfig,
    ) -> Result<Self, ExportError> {
        let path = path.as_ref().to_path_buf();
        let listener = UnixListener::bind(&path).map_err(|source| ExportError::Bind {
            addr: path.display().to_string(),
            source,
        })?;
        Self::start(exports, config, ListenAddr::Unix(path), move |shared| {
            accept_loop(shared, || listener.accept().map(|(s, _)| Stream::Unix(s)))
        })
    }

    fn start(
        exports: ExportSet,
        config: ServerConfig,
        addr: ListenAddr,
        run: impl FnOnce(&Arc<Shared>) + Send + 'static,
    ) -> Result<Self, ExportError> {
        let shared = Arc::new(Shared {
            exports,
            config,
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Conns::default()),
        });
        let s = shared.clone();
        let accept = thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || run(&s))
            .map_err(|source| ExportError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        info!(%addr, "NBD server listening");
        Ok(Server {
            shared,
            addr,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// The address clients connect to (the real port when bound to port 0).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The exports this server offers; changes are seen by later handshakes.
    pub fn exports(&self) -> &ExportSet {
        &self.shared.exports
    }

    /// Blocks until [`Server::shutdown`] is called from another thread.
    pub fn wait(&self) {
        let handle = lock(&self.accept).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Stops accepting, hangs up on every client (requests in flight may go unanswered),
    /// and joins every thread. Idempotent.
    pub fn shutdown(&self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        self.wake_accept();
        self.wait();
        let (live, threads) = {
            let mut c = lock(&self.shared.conns);
            (std::mem::take(&mut c.live), std::mem::take(&mut c.threads))
        };
        for stream in live.values() {
            stream.shutdown();
        }
        for t in threads {
            let _ = t.join();
        }
        if let ListenAddr::Unix(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
        info!(addr = %self.addr, "NBD server stopped");
    }

    /// Unblocks the accept thread by connecting to ourselves.
    fn wake_accept(&self) {
        match &self.addr {
            ListenAddr::Tcp(a) => {
                let mut a = *a;
                if a.ip().is_unspecified() {
                    a.set_ip(match a {
                        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    });
                }
                let _ = TcpStream::connect_timeout(&a, Duration::from_secs(1));
            }
            ListenAddr::Unix(p) => {
                let _ = UnixStream::connect(p);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn accept_loop(shared: &Arc<Shared>, mut accept: impl FnMut() -> io::Result<Stream>) {
    loop {
        let stream = accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => spawn_connection(shared, stream),
            Err(e) => {
                // Typically out of file descriptors: back off rather than spin.
                warn!("accepting a connection failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn spawn_connection(shared: &Arc<Shared>, stream: Stream) {
    let peer = stream.peer();
    let (Ok(handle), Ok(reader)) = (stream.try_clone(), stream.try_clone()) else {
        warn!(%peer, "cannot duplicate the client socket; hanging up");
        return;
    };
    let mut conns = lock(&shared.conns);
    if shared.stopping.load(Ordering::SeqCst) {
        // Checked under the lock that shutdown takes, so no client slips past it.
        stream.shutdown();
        return;
    }
    conns.threads.retain(|t| !t.is_finished());
    let id = conns.next_id;
    conns.next_id += 1;
    let s = shared.clone();
    let who = peer.clone();
    let spawned = thread::Builder::new()
        .name(format!("nbd-conn-{id}"))
        .spawn(move || {
            let peer = who;
            debug!(%peer, "client connected");
            // The socket's timeout covers both of its handles.
            stream.set_read_timeout(s.config.handshake_timeout);
            let entered = || stream.set_read_timeout(None);
            match serve_stream_with(&s.exports, &s.config, reader, &stream, entered) {
                Ok(()) => debug!(%peer, "connection closed"),
                Err(e) => info!(%peer, "closing connection: {e}"),
            }
            stream.shutdown();
            lock(&s.conns).live.remove(&id);
        });
    match spawned {
        Ok(t) => {
            conns.live.insert(id, handle);
            conns.threads.push(t);
        }
        Err(e) => warn!(%peer, "cannot start a connection thread: {e}"),
    }
}

/// A client socket of either kind.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => {
                // Replies are written whole; don't let Nagle hold them back.
                s.set_nodelay(true)?;
                Stream::Tcp(s.try_clone()?)
            }
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) {
        let _ = match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) => s.set_read_timeout(timeout),
        };
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Stream::Unix(_) => "unix".into(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
