//! Listening sockets and worker threads, shared by the proxy and the built-in origin.
//!
//! Every worker owns one SO_REUSEPORT socket per listen address, so the kernel
//! spreads new connections over the workers and no accept lock exists. Workers are
//! told what to do over a crossbeam channel and woken with a mio::Waker; this module
//! owns that plumbing and the error type of every step that can fail at start.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpListener;
use mio::{Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

/// Kernel accept queue length per socket.
const BACKLOG: i32 = 1024;

/// Token of the waker that the control plane uses to interrupt `poll`.
pub const WAKER_TOKEN: Token = Token(usize::MAX - 1);

/// Token of the i-th listener of a worker. Connection tokens count up from 0, so the
/// top of the range never collides with them.
pub fn listener_token(i: usize) -> Token {
    Token(usize::MAX - 2 - i)
}

/// The inverse of `listener_token`.
pub fn listener_index(token: Token, listeners: usize) -> Option<usize> {
    let i = (usize::MAX - 2).checked_sub(token.0)?;
    (i < listeners).then_some(i)
}

/// Which step of starting up failed.
#[derive(Debug)]
pub enum StartError {
    /// Another socket already listens there (a plain bind without SO_REUSEPORT failed).
    AddrInUse { addr: SocketAddr },
    /// Creating, configuring, binding or listening on a socket failed.
    Listen {
        addr: SocketAddr,
        step: &'static str,
        source: io::Error,
    },
    /// The event loop or its waker could not be created.
    Poll(io::Error),
    /// A worker thread could not be spawned.
    Spawn(io::Error),
    /// A proxy was configured without any backend.
    NoBackends,
    /// The admin endpoint could not listen.
    Admin { addr: SocketAddr, source: io::Error },
    /// The access log could not be opened.
    AccessLog { path: String, source: io::Error },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::AddrInUse { addr } => write!(f, "--listen {addr}: address already in use"),
            StartError::Listen { addr, step, source } => {
                write!(f, "--listen {addr}: {step} failed: {source}")
            }
            StartError::Poll(e) => write!(f, "cannot create event loop: {e}"),
            StartError::Spawn(e) => write!(f, "cannot start worker thread: {e}"),
            StartError::NoBackends => write!(f, "--backend: at least one backend is required"),
            StartError::Admin { addr, source } => write!(f, "--admin {addr}: {source}"),
            StartError::AccessLog { path, source } => write!(f, "--access-log {path}: {source}"),
        }
    }
}

impl std::error::Error for StartError {}

fn socket_for(addr: SocketAddr, reuse_port: bool) -> Result<Socket, StartError> {
    let step = |step: &'static str| move |source| StartError::Listen { addr, step, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(step("socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(step("set SO_REUSEADDR"))?;
    if reuse_port {
        socket
            .set_reuse_port(true)
            .map_err(step("set SO_REUSEPORT"))?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(step("set IPV6_V6ONLY"))?;
    }
    socket
        .set_nonblocking(true)
        .map_err(step("set O_NONBLOCK"))?;
    // Linux copies TCP_NODELAY to accepted sockets, sparing a setsockopt per
    // connection (workers check this once and set it themselves if not).
    socket
        .set_tcp_nodelay(true)
        .map_err(step("set TCP_NODELAY"))?;
    Ok(socket)
}

/// Fail early if something already listens on `addr`. SO_REUSEPORT would let us
/// share a port with another process of the same user (another corelb, say) and
/// silently split its traffic; a bind without it conflicts with any listener.
fn check_free(addr: SocketAddr) -> Result<(), StartError> {
    let probe = socket_for(addr, false)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(StartError::AddrInUse { addr }),
        Err(source) => Err(StartError::Listen {
            addr,
            step: "bind",
            source,
        }),
    }
}

fn bind_one(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let socket = socket_for(addr, true)?;
    socket
        .bind(&addr.into())
        .map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => StartError::AddrInUse { addr },
            _ => StartError::Listen {
                addr,
                step: "bind",
                source,
            },
        })?;
    socket
        .listen(BACKLOG)
        .map_err(|source| StartError::Listen {
            addr,
            step: "listen",
            source,
        })?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Bind every listen address once per worker. Returns the bound addresses (port 0
/// resolved to the port the first bind got) and the listeners, one Vec per worker.
pub fn bind_listeners(
    addrs: &[SocketAddr],
    workers: usize,
) -> Result<(Vec<SocketAddr>, Vec<Vec<TcpListener>>), StartError> {
    let mut bound = Vec::with_capacity(addrs.len());
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for &addr in addrs {
        if addr.port() != 0 {
            check_free(addr)?;
        }
        let first = bind_one(addr)?;
        let actual = first.local_addr().map_err(|source| StartError::Listen {
            addr,
            step: "getsockname",
            source,
        })?;
        bound.push(actual);
        per_worker[0].push(first);
        for listeners in per_worker.iter_mut().skip(1) {
            listeners.push(bind_one(actual)?);
        }
    }
    Ok((bound, per_worker))
}

/// Like `bind_listeners`, but start from listening sockets taken over from another
/// process (see `handover`). Each address gets the taken sockets that listen on it,
/// spread over the workers (a worker may accept on several); a worker left without
/// one binds a new socket into the same SO_REUSEPORT group. Taken sockets on
/// addresses no longer configured are returned, to be closed once taken over.
#[allow(clippy::type_complexity)]
pub fn adopt_listeners(
    addrs: &[SocketAddr],
    workers: usize,
    taken: Vec<std::net::TcpListener>,
) -> Result<(Vec<SocketAddr>, Vec<Vec<TcpListener>>, Vec<SocketAddr>), StartError> {
    let mut taken: Vec<(SocketAddr, std::net::TcpListener)> = taken
        .into_iter()
        .filter_map(|l| Some((l.local_addr().ok()?, l)))
        .collect();
    let mut bound = Vec::with_capacity(addrs.len());
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for &addr in addrs {
        let (mine, rest): (Vec<_>, Vec<_>) = taken
            .into_iter()
            .partition(|(a, _)| *a == addr || (addr.port() == 0 && a.ip() == addr.ip()));
        taken = rest;
        if mine.is_empty() {
            // A new address: bind it as on a fresh start.
            let (mut b, listeners) = bind_listeners(&[addr], workers)?;
            bound.append(&mut b);
            for (w, l) in listeners.into_iter().enumerate() {
                per_worker[w].extend(l);
            }
            continue;
        }
        let actual = mine[0].0;
        bound.push(actual);
        let count = mine.len();
        for (i, (_, l)) in mine.into_iter().enumerate() {
            per_worker[i % workers].push(TcpListener::from_std(l));
        }
        for listeners in per_worker.iter_mut().skip(count) {
            listeners.push(bind_one(actual)?);
        }
    }
    let dropped = taken.iter().map(|(a, _)| *a).collect();
    Ok((bound, per_worker, dropped))
}

/// A message from the control plane to a worker.
pub enum Control {
    /// Close everything and return from the loop.
    Shutdown,
    /// Serve new requests with this configuration (a reload).
    Reload(Arc<crate::proxy::Plan>),
}

impl Control {
    pub fn is_shutdown(&self) -> bool {
        matches!(self, Control::Shutdown)
    }
}

/// Where to send a worker control messages; sending wakes it.
#[derive(Clone)]
pub struct ControlHandle {
    control: Sender<Control>,
    waker: Arc<Waker>,
}

impl ControlHandle {
    /// Send `message` and wake the worker. A worker that has exited has dropped its
    /// receiver: then nothing happens.
    pub fn send(&self, message: Control) {
        let _ = self.control.send(message);
        let _ = self.waker.wake();
    }
}

/// What a worker thread starts with.
pub struct WorkerContext {
    pub id: usize,
    pub poll: Poll,
    pub listeners: Vec<TcpListener>,
    pub control: Receiver<Control>,
}

impl WorkerContext {
    /// Register the listeners (readable, edge-triggered, once for their lifetime).
    pub fn register_listeners(&mut self) -> io::Result<()> {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            self.poll
                .registry()
                .register(l, listener_token(i), Interest::READABLE)?;
        }
        Ok(())
    }
}

struct WorkerHandle {
    control: ControlHandle,
    thread: Option<JoinHandle<()>>,
}

/// A set of running worker threads; dropping it shuts them down and joins them.
pub struct Workers {
    handles: Vec<WorkerHandle>,
}

impl Workers {
    /// Start one named thread per listener set, each running `run`.
    pub fn spawn<F>(
        name: &str,
        listeners: Vec<Vec<TcpListener>>,
        run: F,
    ) -> Result<Workers, StartError>
    where
        F: Fn(WorkerContext) + Send + Sync + 'static,
    {
        let run = Arc::new(run);
        let mut workers = Workers {
            handles: Vec::new(),
        };
        for (id, listeners) in listeners.into_iter().enumerate() {
            let poll = Poll::new().map_err(StartError::Poll)?;
            let waker =
                Arc::new(Waker::new(poll.registry(), WAKER_TOKEN).map_err(StartError::Poll)?);
            let (tx, rx) = crossbeam_channel::unbounded();
            let ctx = WorkerContext {
                id,
                poll,
                listeners,
                control: rx,
            };
            let run = Arc::clone(&run);
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{id}"))
                .spawn(move || run(ctx))
                .map_err(StartError::Spawn)?;
            workers.handles.push(WorkerHandle {
                control: ControlHandle { control: tx, waker },
                thread: Some(thread),
            });
        }
        Ok(workers)
    }

    /// Where to send each worker control messages.
    pub fn controls(&self) -> Vec<ControlHandle> {
        self.handles.iter().map(|h| h.control.clone()).collect()
    }

    /// Tell every worker to stop, then wait for them.
    pub fn shutdown(&mut self) {
        for h in &self.handles {
            h.control.send(Control::Shutdown);
        }
        for h in &mut self.handles {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether sockets accepted from a listener with TCP_NODELAY already have it.
/// Checked once per worker on its first connection, then trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodelayInherited {
    Unknown,
    Yes,
    No,
}

impl NodelayInherited {
    /// Make sure `sock` has TCP_NODELAY, with a syscall only where needed.
    pub fn apply(&mut self, sock: &mio::net::TcpStream) {
        if *self == NodelayInherited::Unknown {
            *self = if sock.nodelay().unwrap_or(false) {
                NodelayInherited::Yes
            } else {
                NodelayInherited::No
            };
        }
        if *self == NodelayInherited::No {
            let _ = sock.set_nodelay(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_have_nodelay() {
        let (addrs, mut listeners) = bind_listeners(&[([127, 0, 0, 1], 0).into()], 1).unwrap();
        let _client = std::net::TcpStream::connect(addrs[0]).unwrap();
        let listener = listeners[0].pop().unwrap();
        let accepted = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        };
        let mut inherited = NodelayInherited::Unknown;
        inherited.apply(&accepted);
        assert_ne!(inherited, NodelayInherited::Unknown);
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY missing on an accepted socket"
        );
    }
}
