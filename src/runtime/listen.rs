//! Listening sockets: one SO_REUSEPORT socket per listen address per worker, so
//! the kernel spreads new connections over the workers and no accept lock
//! exists; adopting sockets handed over by a predecessor; the tokens that name
//! them in a worker's poll.

use std::io;
use std::net::SocketAddr;

use mio::Token;
use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use super::error::StartError;

/// Kernel accept queue length per socket.
const BACKLOG: i32 = 1024;

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

/// Whether a socket bound to `have` serves the configured address `want` (port
/// 0 asks for any port on that address).
pub fn serves_address(want: SocketAddr, have: SocketAddr) -> bool {
    want == have || (want.port() == 0 && want.ip() == have.ip())
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
            .partition(|(a, _)| serves_address(addr, *a));
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
