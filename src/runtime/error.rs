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
    /// A TLS certificate or key could not be read, or they do not match.
    Tls(String),
    /// The certificate authorities for `https://` backends could not be read.
    BackendTls(String),
}

impl StartError {
    /// The setting the failure is about (its name in the settings table), if
    /// one: a caller that knows how the user gave it names it that way.
    pub fn setting(&self) -> Option<&'static str> {
        match self {
            StartError::AddrInUse { .. } | StartError::Listen { .. } => Some("listen"),
            StartError::NoBackends => Some("backend"),
            StartError::Admin { .. } => Some("admin"),
            StartError::AccessLog { .. } => Some("access_log"),
            StartError::Tls(_) => Some("tls_cert"),
            StartError::BackendTls(_) => Some("backend_ca"),
            StartError::Poll(_) | StartError::Spawn(_) => None,
        }
    }

    /// What went wrong, without the setting's name: `127.0.0.1:80: address
    /// already in use` (see `describe`).
    pub fn detail(&self) -> String {
        match self {
            StartError::AddrInUse { addr } => format!("{addr}: address already in use"),
            StartError::Listen { addr, step, source } => {
                format!("{addr}: {step} failed: {source}")
            }
            StartError::Poll(e) => format!("cannot create event loop: {e}"),
            StartError::Spawn(e) => format!("cannot start worker thread: {e}"),
            StartError::NoBackends => "at least one is required".into(),
            StartError::Admin { addr, source } => format!("{addr}: {source}"),
            StartError::AccessLog { path, source } => format!("{path}: {source}"),
            StartError::Tls(problem) | StartError::BackendTls(problem) => problem.clone(),
        }
    }
}

impl StartError {
    /// The error with its setting named `name` (as the caller's user gave it):
    /// `--listen 127.0.0.1:80: address already in use`, `backend: at least one
    /// is required`.
    pub fn describe(&self, name: &str) -> String {
        match self {
            StartError::NoBackends => format!("{name}: {}", self.detail()),
            _ => format!("{name} {}", self.detail()),
        }
    }
}

/// The setting's name (as in the config file) and the detail.
impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.setting() {
            Some(name) => f.write_str(&self.describe(name)),
            None => f.write_str(&self.detail()),
        }
    }
}

impl std::error::Error for StartError {}
