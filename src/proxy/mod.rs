//! The load balancer: one mio event loop per worker thread, relaying HTTP/1.1
//! exchanges between clients and a pool of backends.
//!
//! A worker (`worker`) owns everything it touches: its listeners, a slab of client
//! sessions (`session`, each exchange as data in `exchange`), a slab of upstream
//! connections and an idle pool per backend (`upstream`), and a buffer pool. What
//! workers share is `Shared` and the `Plan` in force (`plan`): the backend list
//! and their health (read-only), the round-robin counter (one atomic add per
//! request) and per-worker counters. A reload (`reload`) hands every worker a new
//! plan.
//!
//! Every socket is registered once, edge-triggered, for both directions, and its
//! readiness is cached (`io::Ready`): an operation is tried only while the cache says it
//! may succeed, and a `WouldBlock` clears the flag until the next event. A session
//! is driven by `Worker::pump`, which steps its state machine until nothing moves
//! or its turn is used up (`MAX_STEPS_PER_TURN`: then it goes on after the others).
//!
//! A session's life: `Phase::Head` (waiting for a request head, holding no buffers
//! when idle) -> `Phase::Exchange` (request streamed to a backend, response streamed
//! back) -> `Head` again for keep-alive, or `Closing` (flush, then close; or, when
//! the client may still be sending, shut down our side) -> `Draining` (discard what
//! the client still sends, so our last response is not destroyed by a reset) ->
//! closed. `Aborting` delivers what was sent, then resets (a response delimited by
//! the close that its backend cut short).
//!
//! Isolation (no byte of one client or exchange reaches another) rests on three
//! rules, each checked by `check_invariants` (`invariants`) in debug builds:
//! buffers return to the pool empty (`Recycle`); a backend connection is pooled
//! only at a message boundary and never handed out after anything arrived on it
//! (`upstream::checkout`); a request is replayed only if that cannot send it twice
//! (`fail::retry_or`). Bytes move in `relay`; heads are read by `http::head` and
//! acted on in `head`.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::access;
use crate::admin::Admin;
use crate::backends::Checker;
use crate::config::{Listen, ProxyConfig};
use crate::counters::Padded;
use crate::runtime::{self, StartError, Workers};

mod bufs;
mod closing;
mod control;
mod exchange;
mod fail;
mod head;
#[cfg(debug_assertions)]
mod invariants;
mod plan;
mod preamble;
mod relay;
mod reload;
mod session;
mod upstream;
mod worker;

use plan::Shared;
pub use plan::{Plan, ProxyStats, WorkerCounts, WorkerStats};
pub use reload::{Reloaded, Reloader};
use worker::Worker;

/// Smallest per-direction buffer; bigger heads limits get bigger buffers.
const MIN_BUF_SIZE: usize = 32 * 1024;

/// A buffer's size once a body streams through it (a read filled a whole
/// chunk; `io::buffer::Buf`), while exchanges with short messages keep
/// borrowing `MIN_BUF_SIZE` chunks: with 63 KiB chunks for everything, 8,000
/// connections took 71.8 MB at their peak against 43.5 MB.
///
/// 63 KiB: the largest size whose every write still fits in one segment of the
/// loopback interface (MTU 65536, MSS 65483 with timestamps). A 64 KiB write
/// goes out as a full segment and a 53-byte one, which doubles the packets
/// the kernel handles on both ends; that, not the buffer size, is why 64 and
/// 128 KiB measured worse than 32 KiB. Against 32 KiB, 63 KiB cost 0.83x the
/// CPU per 1 MiB response (60 KiB 0.79x; `scripts/cpu_per_request.py --baseline
/// --scenarios s1m_c16`, 5 and 7 interleaved rounds); on a real network the
/// NIC cuts segments anyway and the size is no worse there. The chunks are
/// borrowed per read (`io::buffer`), so an idle or waiting connection holds
/// none of it.
const STREAM_BUF_SIZE: usize = 63 * 1024;

/// Most bytes discarded from a closing client.
const MAX_DRAIN_BYTES: u32 = 1 << 20;

/// At shutdown, how long a connection between requests may take to send its next
/// one (answered with `Connection: close`) before it is closed.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Longest gap between timer checks (shorter when a timeout is shorter).
const MAX_SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Buffer sets (about 2.3 KB each: heads and log fields; the 32 KiB buffers are
/// borrowed only while they hold bytes) kept for reuse per worker at most: enough
/// to serve 1000 clients in flight without malloc (each holds a set until its
/// exchange ends); what a burst took beyond the steady need is freed by the trim.
const MAX_FREE_BUFS: usize = 1024;

/// How often a worker gives back what a burst took (`Worker::trim_memory`): what
/// went unused for a whole interval is freed, so memory is back to its steady
/// figure at most two intervals after a burst.
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Session and backend-connection slots a worker starts with, and keeps however
/// quiet it gets.
const MIN_SLOTS: usize = 1024;

/// A Content-Length response body with at least this much still to come is moved
/// with splice(2), not copied through the buffer.
const SPLICE_MIN: u64 = 64 * 1024;

/// A request that is not idempotent is sent on a pooled connection only if it has
/// been idle at most this long: a backend closing idle connections (gunicorn after
/// 2 s, Node and Apache after 5 s) may close one just as a request goes out on it,
/// and such a request cannot be replayed.
const NON_IDEMPOTENT_MAX_IDLE: Duration = Duration::from_secs(1);

/// Most state-machine steps one session takes per pass of the loop: a step counts
/// one more for each further `STEP_BYTES` it moved to or from its client (a
/// buffer's worth, or what a splice drained), so a turn moves about 256 KiB with
/// the client at most, whatever the buffer size. A session that could go on is
/// driven again after the others have had their turn, so one client streaming
/// at full speed cannot starve the rest of its worker (`scripts/fairness.py`
/// measures it).
const MAX_STEPS_PER_TURN: u8 = 8;

/// The bytes a step moves with its client counted as one step. With a
/// full-speed spliced download beside 20 light clients (`scripts/fairness.py`),
/// 2 MiB turns put their p99 at about 6x its unloaded value, 512 KiB turns at
/// about 5x, 256 KiB turns at about 4x. The price is more passes of the loop per
/// large response: 1.2x the CPU per 1 MiB response of 2 MiB turns
/// (`scripts/cpu_per_request.py`, 6 interleaved rounds).
const STEP_BYTES: u64 = 32 * 1024;

/// How long a worker pools no connection to a backend after it sent bytes that
/// belong to no response: each request gets a fresh connection, so late surplus
/// from a backend that miscounts its bodies reaches nobody.
const DISTRUST: Duration = Duration::from_secs(10);

/// Most interim (1xx) responses relayed for one request; one more is a 502. Real
/// backends send one or two (100 Continue, 103 Early Hints, a 102 now and then).
const MAX_INTERIM: u16 = 64;

/// Most bytes one splice moves from the backend into the pipe (the pipe's size):
/// few large splices cost fewer syscalls than many small ones.
const SPLICE_STEP: usize = 256 * 1024;

/// Largest capacity a head or log buffer keeps when it goes back to the pool: more
/// than any head the proxy writes, so it only ever trims a buffer something grew.
const MAX_KEPT_HEAD: usize = 64 * 1024;

/// The certificates of the TLS listeners and the roots of `https://`
/// backends, each if something uses it.
pub(super) fn load_tls(config: &ProxyConfig) -> Result<plan::Loaded, StartError> {
    let server = if config.serves_tls() {
        Some(crate::tls::ServerTls::load(&config.tls).map_err(StartError::Tls)?)
    } else {
        None
    };
    let client = if config.reaches_tls() {
        Some(
            crate::tls::client_config(config.backend_ca.as_deref())
                .map_err(StartError::BackendTls)?,
        )
    } else {
        None
    };
    Ok((server, client))
}

/// A running proxy. Dropping it (or `shutdown`) stops every worker.
pub struct Proxy {
    workers: Workers<Arc<Plan>>,
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    /// The health-check thread, if checks are on (stopped when dropped).
    checker: Arc<Mutex<Option<Checker>>>,
    /// The admin endpoint, if on (stopped when dropped).
    admin: Option<Admin>,
    /// Every worker's listening sockets, for a handover to a successor. Owned by
    /// the workers, which close them when they shut down.
    listener_fds: Vec<std::os::fd::RawFd>,
}

impl Proxy {
    /// Bind every listen address once per worker and start the workers.
    pub fn start(config: ProxyConfig) -> Result<Proxy, StartError> {
        if config.backends.is_empty() {
            return Err(StartError::NoBackends);
        }
        let workers = config.workers.max(1);
        let (addrs, listeners) = runtime::bind_listeners(&config.listen_addrs(), workers)?;
        Proxy::start_bound(config, addrs, listeners, None)
    }

    /// Start on listening sockets taken over from a running corelb (see
    /// `handover`); addresses without one are bound afresh. Also returns the taken
    /// addresses no longer listened on.
    pub fn start_adopting(
        config: ProxyConfig,
        taken: Vec<std::net::TcpListener>,
        taken_admin: Option<std::net::TcpListener>,
    ) -> Result<(Proxy, Vec<SocketAddr>), StartError> {
        if config.backends.is_empty() {
            return Err(StartError::NoBackends);
        }
        let workers = config.workers.max(1);
        let (addrs, listeners, dropped) =
            runtime::adopt_listeners(&config.listen_addrs(), workers, taken)?;
        // The admin endpoint's socket, if it is still at the configured address;
        // else it is closed here and the address bound afresh.
        let admin = taken_admin.filter(|l| {
            let (Some(want), Ok(have)) = (config.admin, l.local_addr()) else {
                return false;
            };
            runtime::serves_address(want, have)
        });
        Ok((
            Proxy::start_bound(config, addrs, listeners, admin)?,
            dropped,
        ))
    }

    fn start_bound(
        config: ProxyConfig,
        addrs: Vec<SocketAddr>,
        listeners: Vec<Vec<mio::net::TcpListener>>,
        taken_admin: Option<std::net::TcpListener>,
    ) -> Result<Proxy, StartError> {
        let workers = listeners.len();
        let listener_fds = listeners.iter().flatten().map(|l| l.as_raw_fd()).collect();
        let access = match &config.access_log {
            Some(a) => Some(access::Sink::open(a).map_err(|source| {
                StartError::AccessLog {
                    path: a
                        .path
                        .as_ref()
                        .map_or("-".into(), |p| p.display().to_string()),
                    source,
                }
            })?),
            None => None,
        };
        let tls = load_tls(&config)?;
        let plan = Arc::new(Plan::build(0, config.clone(), tls, workers, &[]));
        let checker = match &config.health_check {
            Some(check) => Some(
                Checker::spawn(
                    Arc::clone(&plan.health),
                    check.clone(),
                    plan.backend_tls.clone(),
                )
                .map_err(StartError::Spawn)?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared {
            stats: (0..workers).map(|_| Padded::default()).collect(),
            metrics: (0..workers).map(|_| Padded::default()).collect(),
            access,
            max_header_bytes: config.max_header_bytes,
            rewrite_host: config.rewrite_host,
            busy_poll: config.busy_poll,
            listens: (config.listen.iter().zip(&addrs))
                .map(|(l, &addr)| Listen { addr, ..*l })
                .collect(),
            current: Mutex::new(plan),
            retired: Mutex::new(Vec::new()),
        });
        let for_workers = Arc::clone(&shared);
        // Read the allowed cores here, before any thread is pinned to one of them.
        let cores = if config.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let workers = Workers::spawn("corelb", listeners, move |ctx| {
            if !cores.is_empty() {
                let core = cores[ctx.id % cores.len()];
                if !core_affinity::set_for_current(core) {
                    crate::log!(
                        crate::log::Level::Warn,
                        "corelb: worker {} could not be pinned to core {}",
                        ctx.id,
                        core.id
                    );
                }
            }
            if let Err(e) = Worker::run(ctx, Arc::clone(&for_workers)) {
                crate::log!(crate::log::Level::Error, "corelb: worker stopped: {e}");
            }
        })?;
        let checker = Arc::new(Mutex::new(checker));
        let report = Reloader {
            shared: Arc::clone(&shared),
            controls: workers.controls(),
            checker: Arc::clone(&checker),
        };
        let admin = match (config.admin, taken_admin) {
            (Some(addr), Some(listener)) => Some(
                Admin::start_on(listener, report)
                    .map_err(|source| StartError::Admin { addr, source })?,
            ),
            (Some(addr), None) => Some(
                Admin::start(addr, report).map_err(|source| StartError::Admin { addr, source })?,
            ),
            (None, _) => None,
        };
        Ok(Proxy {
            workers,
            addrs,
            shared,
            listener_fds,
            checker,
            admin,
        })
    }

    /// Requests in flight per backend, as the load-comparing algorithms see them
    /// (always zeros for the others, which do not count).
    pub fn inflight(&self) -> Vec<usize> {
        let plan = self.shared.current();
        plan.health.members().iter().map(|m| m.inflight()).collect()
    }

    /// Where the admin endpoint listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::local_addr)
    }

    /// The listening sockets' descriptors (valid until `shutdown` begins).
    pub fn listener_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.listener_fds.clone()
    }

    /// The admin endpoint's listening socket, if it is on (valid until it stops).
    pub fn admin_fd(&self) -> Option<std::os::fd::RawFd> {
        self.admin.as_ref().map(Admin::listener_fd)
    }

    /// Stop serving the admin endpoint (a successor that took it over answers on
    /// it from now on, rather than both in turn while this one drains).
    pub fn stop_admin(&mut self) {
        drop(self.admin.take());
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Accepted connections and completed requests, per worker.
    pub fn counts(&self) -> Vec<WorkerCounts> {
        self.stats().counts()
    }

    /// A handle on the counters that outlives the proxy's owner (for reports).
    pub fn stats(&self) -> ProxyStats {
        ProxyStats(Arc::clone(&self.shared))
    }

    /// A handle that applies a new configuration to the running proxy.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: Arc::clone(&self.shared),
            controls: self.workers.controls(),
            checker: Arc::clone(&self.checker),
        }
    }

    /// Apply a new configuration (see `Reloader::reload`).
    pub fn reload(&self, config: ProxyConfig) -> Result<Reloaded, StartError> {
        self.reloader().reload(config)
    }

    /// Stop accepting, let exchanges in flight finish (within the shutdown grace
    /// period), and wait for the workers. Returns the final counters.
    pub fn shutdown(mut self) -> Vec<WorkerCounts> {
        self.workers.shutdown();
        drop(
            self.checker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        self.counts()
    }
}
