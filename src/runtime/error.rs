//! Which step of starting up failed: the error of every step that can fail
//! before a worker runs.

use std::fmt;
use std::io;
use std::net::SocketAddr;

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
