//! The load balancer: one mio event loop per worker thread, relaying HTTP/1.1
//! exchanges between clients and a pool of backends.
//!
//! A worker owns everything it touches: its listeners, a slab of client sessions,
//! a slab of upstream connections, an idle pool per backend and a buffer pool. The
//! only state shared between workers is `Shared`: the backend list (read-only), the
//! round-robin counter (one atomic add per request) and per-worker counters.
//!
//! Every socket is registered once, edge-triggered, for both directions, and its
//! readiness is cached (`Ready`): an operation is tried only while the cache says it
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
//! rules, each checked by `check_invariants` in debug builds: buffers return to the
//! pool empty (`Recycle`); a backend connection is pooled only at a message
//! boundary and never handed out after anything arrived on it (`checkout`); a
//! request is replayed only if that cannot send it twice (`retry_or`).

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Token};
use slab::Slab;

use crate::access;
use crate::admin::Admin;
use crate::balance::Padded;
use crate::buffer::{Buf, Pool, Recycle};
use crate::config::{ProxyConfig, Timeouts};
use crate::framing::{
    BodyScanner, Framing, MAX_HEADERS, Reject, RequestInfo, analyze_request, analyze_response,
    classify_parse_error, has_bare_lf, oversized_head,
};
use crate::health::{Checker, Health, Member};
use crate::metrics::{self, WorkerMetrics};
use crate::net::{self, Control, StartError, WorkerContext, Workers};
use crate::rewrite::{self, ClientConnection, Forwarding};
use crate::select::{self, Select};
use crate::splice::Pipe;

#[cfg(debug_assertions)]
mod invariants;

/// Smallest per-direction buffer; bigger heads limits get bigger buffers.
const MIN_BUF_SIZE: usize = 32 * 1024;
/// Most bytes discarded from a closing client.
const MAX_DRAIN_BYTES: u32 = 1 << 20;
/// Most idle connections kept per backend per worker.
const MAX_IDLE_PER_BACKEND: usize = 1024;
/// At shutdown, how long a connection between requests may take to send its next
/// one (answered with `Connection: close`) before it is closed.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Longest gap between timer checks (shorter when a timeout is shorter).
const MAX_SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Buffer sets (about 66 KB each) kept for reuse per worker: enough to serve a
/// steady load without malloc, few enough that a burst does not pin memory.
const MAX_FREE_BUFS: usize = 64;
/// A Content-Length response body with at least this much still to come is moved
/// with splice(2), not copied through the buffer.
const SPLICE_MIN: u64 = 64 * 1024;
/// A request that is not idempotent is sent on a pooled connection only if it has
/// been idle at most this long: a backend closing idle connections (gunicorn after
/// 2 s, Node and Apache after 5 s) may close one just as a request goes out on it,
/// and such a request cannot be replayed.
const NON_IDEMPOTENT_MAX_IDLE: Duration = Duration::from_secs(1);
/// Most state-machine steps one session takes per pass of the loop: a step moves
/// at most one 32 KiB buffer each way, and a splice counts one step per
/// `SPLICE_STEP_BYTES` it moved, so a turn moves at most 256 KiB either way. A
/// session that could go on is driven again after the others have had their
/// turn, so one client streaming at full speed cannot starve the rest of its
/// worker (`scripts/fairness.py` measures it).
const MAX_STEPS_PER_TURN: u8 = 8;
/// The bytes a splice moves per step counted: as many as a buffered step. With a
/// full-speed spliced download beside 20 light clients (`scripts/fairness.py`),
/// 2 MiB turns put their p99 at about 6x its unloaded value, 512 KiB turns at
/// about 5x, 256 KiB turns at about 4x. The price is more passes of the loop per
/// large response: 1.2x the CPU per 1 MiB response of 2 MiB turns
/// (`scripts/cpu_per_request.py`, 6 interleaved rounds).
const SPLICE_STEP_BYTES: usize = 32 * 1024;
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

/// Per-worker counters, written by their worker only and read by anyone.
#[derive(Default)]
pub struct WorkerStats {
    pub accepted: AtomicU64,
    pub requests: AtomicU64,
    /// Client connections open now.
    pub open: AtomicU64,
    /// The number of the plan (configuration) this worker serves with.
    pub plan: AtomicU64,
}

/// What every worker reads and a reload leaves alone: counters, the access log,
/// and the settings that take a restart.
struct Shared {
    metrics: Vec<Padded<WorkerMetrics>>,
    access: Option<Arc<access::Sink>>,
    stats: Vec<Padded<WorkerStats>>,
    max_header_bytes: usize,
    rewrite_host: bool,
    busy_poll: Duration,
    /// The configuration in force: what the admin endpoint shows, and what the
    /// next reload starts from. Workers hold their own `Arc` of it.
    current: Mutex<Arc<Plan>>,
}

impl Shared {
    fn current(&self) -> Arc<Plan> {
        Arc::clone(&self.current.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One configuration's backends and how requests are spread over them, with the
/// settings each new request follows. A reload makes a new one; backends that
/// stay keep their `Member` (health, counters, in-flight count), and each worker
/// its idle connections to them.
pub struct Plan {
    /// 0 at start, one more at each reload.
    number: u64,
    /// What this was built from (restart-only settings are those in force).
    config: ProxyConfig,
    health: Arc<Health>,
    selector: Box<dyn Select>,
    /// The selector reads requests in flight / hash keys (else they are not kept).
    count_inflight: bool,
    hash_key: bool,
}

impl Plan {
    /// Build over `config`'s backends, taking the state of those that are already
    /// `members` (same address and name).
    fn build(number: u64, config: ProxyConfig, workers: usize, members: &[Arc<Member>]) -> Plan {
        let members = config
            .backends
            .iter()
            .map(|b| {
                members
                    .iter()
                    .find(|m| m.addr == b.addr && m.authority == b.authority)
                    .cloned()
                    .unwrap_or_else(|| Member::new(b.addr, b.authority.clone(), workers))
            })
            .collect();
        let health = Arc::new(Health::of(members, config.passive, config.log_health));
        let backends: Vec<(&str, u32)> = config
            .backends
            .iter()
            .map(|b| (b.authority.as_str(), b.weight))
            .collect();
        let selector = select::build(config.algorithm, &backends);
        Plan {
            number,
            count_inflight: selector.uses_inflight(),
            hash_key: selector.uses_key(),
            selector,
            health,
            config,
        }
    }
}

/// A snapshot of one worker's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    pub accepted: u64,
    pub requests: u64,
    /// Client connections open at the time of the snapshot.
    pub open: u64,
}

/// The per-worker counters of a proxy, readable from any thread.
#[derive(Clone)]
pub struct ProxyStats(Arc<Shared>);

impl ProxyStats {
    fn view<'a>(&'a self, plan: &'a Plan) -> metrics::View<'a> {
        let s = &self.0;
        let health = &plan.health;
        metrics::View {
            config: &plan.config,
            reloads: plan.number,
            backends: health
                .members()
                .iter()
                .enumerate()
                .map(|(b, m)| metrics::BackendView {
                    name: &m.authority,
                    up: health.is_up(b),
                    inflight: m.inflight(),
                    per_worker: m.counts().map(|c| c.snapshot()).collect(),
                })
                .collect(),
            workers: self
                .counts()
                .iter()
                .map(|c| (c.accepted, c.requests, c.open))
                .collect(),
            metrics: s.metrics.iter().map(|m| &m.0).collect(),
        }
    }

    /// The Prometheus text exposition of every counter (the admin `/metrics`).
    pub fn prometheus(&self) -> String {
        metrics::prometheus(&self.view(&self.0.current()))
    }

    /// The admin `/status` JSON.
    pub fn status_json(&self) -> String {
        metrics::status_json(&self.view(&self.0.current()))
    }

    /// Accepted connections and completed requests, per worker.
    pub fn counts(&self) -> Vec<WorkerCounts> {
        self.0
            .stats
            .iter()
            .map(|s| WorkerCounts {
                accepted: s.0.accepted.load(Ordering::Relaxed),
                requests: s.0.requests.load(Ordering::Relaxed),
                open: s.0.open.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// A running proxy. Dropping it (or `shutdown`) stops every worker.
pub struct Proxy {
    workers: Workers,
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
        let (addrs, listeners) = net::bind_listeners(&config.listen, workers)?;
        Proxy::start_bound(config, addrs, listeners)
    }

    /// Start on listening sockets taken over from a running corelb (see
    /// `handover`); addresses without one are bound afresh. Also returns the taken
    /// addresses no longer listened on.
    pub fn start_adopting(
        config: ProxyConfig,
        taken: Vec<std::net::TcpListener>,
    ) -> Result<(Proxy, Vec<SocketAddr>), StartError> {
        if config.backends.is_empty() {
            return Err(StartError::NoBackends);
        }
        let workers = config.workers.max(1);
        let (addrs, listeners, dropped) = net::adopt_listeners(&config.listen, workers, taken)?;
        Ok((Proxy::start_bound(config, addrs, listeners)?, dropped))
    }

    fn start_bound(
        config: ProxyConfig,
        addrs: Vec<SocketAddr>,
        listeners: Vec<Vec<mio::net::TcpListener>>,
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
        let plan = Arc::new(Plan::build(0, config.clone(), workers, &[]));
        let checker = match &config.health_check {
            Some(check) => Some(
                Checker::spawn(Arc::clone(&plan.health), check.clone())
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
            current: Mutex::new(plan),
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
        let admin = match config.admin {
            Some(addr) => Some(
                Admin::start(addr, ProxyStats(Arc::clone(&shared)))
                    .map_err(|source| StartError::Admin { addr, source })?,
            ),
            None => None,
        };
        Ok(Proxy {
            workers,
            addrs,
            shared,
            listener_fds,
            checker: Arc::new(Mutex::new(checker)),
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

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Backends that joined and left, by `host:port`.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Restart-only settings that differ from those in force (not applied).
    pub need_restart: Vec<&'static str>,
    /// Nothing that a reload applies changed.
    pub unchanged: bool,
    /// Every worker confirmed it serves new requests with the new configuration
    /// (a worker busy for longer than a second confirms later).
    pub confirmed: bool,
}

/// Applies a new configuration to a running proxy, from any thread.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    controls: Vec<net::ControlHandle>,
    checker: Arc<Mutex<Option<Checker>>>,
}

impl Reloader {
    /// Apply `config`: backends, algorithm, health checks and passive health,
    /// timeouts, retries, `--max-connections` and `--max-body-bytes` take effect in
    /// every worker for each new request; exchanges in flight finish as they began.
    /// Backends that stay (same address and name) keep their health, counters and
    /// pooled connections. The restart-only settings keep their running values and
    /// are listed in the result.
    pub fn reload(&self, mut config: ProxyConfig) -> Result<Reloaded, StartError> {
        if config.backends.is_empty() {
            return Err(StartError::NoBackends);
        }
        // One reload at a time: the lock is held throughout.
        let mut current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let old = &current.config;
        let mut result = Reloaded::default();
        // The settings that shape sockets, threads and buffers made once: a
        // reload reports a change and keeps the running value.
        macro_rules! restart_only {
            ($($field:ident => $flag:literal),* $(,)?) => {
                $(if config.$field != old.$field {
                    result.need_restart.push($flag);
                    config.$field = old.$field.clone();
                })*
            };
        }
        restart_only!(
            listen => "--listen",
            workers => "--workers",
            admin => "--admin",
            access_log => "--access-log",
            max_header_bytes => "--max-header-bytes",
            rewrite_host => "--rewrite-host",
            pin => "--pin",
            busy_poll => "--busy-poll",
        );
        config.log_health = old.log_health;
        if config == *old {
            result.unchanged = true;
            return Ok(result);
        }
        let has = |list: &[crate::config::Backend], b: &crate::config::Backend| {
            list.iter()
                .any(|o| o.addr == b.addr && o.authority == b.authority)
        };
        result.added = (config.backends.iter())
            .filter(|b| !has(&old.backends, b))
            .map(|b| b.authority.clone())
            .collect();
        result.removed = (old.backends.iter())
            .filter(|b| !has(&config.backends, b))
            .map(|b| b.authority.clone())
            .collect();
        let plan = Arc::new(Plan::build(
            current.number + 1,
            config,
            self.controls.len(),
            current.health.members(),
        ));
        // The old checks stop before the workers switch; the new ones start on the
        // new set, each backend from its last verdict.
        let mut checker = self.checker.lock().unwrap_or_else(|e| e.into_inner());
        drop(checker.take());
        if plan.config.health_check.is_none() {
            // Without checks, no check verdict may keep a backend out.
            plan.health.checks_off();
        }
        for c in &self.controls {
            c.send(Control::Reload(Arc::clone(&plan)));
        }
        if let Some(check) = &plan.config.health_check {
            *checker = Some(
                Checker::spawn(Arc::clone(&plan.health), check.clone())
                    .map_err(StartError::Spawn)?,
            );
        }
        let number = plan.number;
        *current = plan;
        drop(current);
        // Wait for every worker to switch, so that "reloaded" means it.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let stats = &self.shared.stats;
            if stats
                .iter()
                .all(|s| s.0.plan.load(Ordering::Relaxed) >= number)
            {
                result.confirmed = true;
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(result)
    }
}

/// Cached readiness of one socket (edge-triggered: flags stay set until an
/// operation returns WouldBlock).
#[derive(Clone, Copy, Debug, Default)]
struct Ready {
    readable: bool,
    writable: bool,
    /// The peer has shut down its side: keep reading until end of stream.
    read_closed: bool,
}

impl Ready {
    fn update(&mut self, ev: &mio::event::Event) {
        // An error or hang-up is reported through the next read or write.
        self.readable |= ev.is_readable() || ev.is_read_closed() || ev.is_error();
        self.writable |= ev.is_writable() || ev.is_write_closed() || ev.is_error();
        self.read_closed |= ev.is_read_closed();
    }
}

/// Outcome of one read into a buffer.
enum ReadOutcome {
    Data,
    Eof,
    Blocked,
}

/// Read once into `buf`, keeping `ready` in step. A short read on a socket whose peer
/// has not closed means the kernel queue is empty (Linux, epoll edge-triggered: new
/// data raises a new edge), so the flag is cleared without a read that fails.
fn read_into(sock: &mut TcpStream, buf: &mut Buf, ready: &mut Ready) -> io::Result<ReadOutcome> {
    match buf.read_from(sock) {
        Ok((0, _)) => Ok(ReadOutcome::Eof),
        Ok((_, short)) => {
            if short && !ready.read_closed {
                ready.readable = false;
            }
            Ok(ReadOutcome::Data)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            ready.readable = false;
            Ok(ReadOutcome::Blocked)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(ReadOutcome::Blocked),
        Err(e) => Err(e),
    }
}

/// Read what the client sent into `buf`; an end of stream sets `eof`. Returns
/// whether anything happened; a read error closes the session.
fn read_client(
    sock: &mut TcpStream,
    buf: &mut Buf,
    ready: &mut Ready,
    eof: &mut bool,
) -> Result<bool, Fail> {
    match read_into(sock, buf, ready) {
        Ok(ReadOutcome::Data) => Ok(true),
        Ok(ReadOutcome::Eof) => {
            *eof = true;
            Ok(true)
        }
        Ok(ReadOutcome::Blocked) => Ok(false),
        Err(_) => Err(Fail::Close),
    }
}

/// Write `head` then `body` with one writev; returns bytes written (0 when blocked).
fn write_two(
    sock: &mut TcpStream,
    head: &[u8],
    body: &[u8],
    ready: &mut Ready,
) -> io::Result<usize> {
    let total = head.len() + body.len();
    let result = if head.is_empty() {
        sock.write(body)
    } else if body.is_empty() {
        sock.write(head)
    } else {
        sock.write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
    };
    match result {
        Ok(n) => {
            if n < total {
                ready.writable = false;
            }
            Ok(n)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            ready.writable = false;
            Ok(0)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// The buffers of a session with something in flight.
struct Bufs {
    /// Bytes from the client: request head, body, and any pipelined requests.
    req: Buf,
    /// Bytes from the backend: response head and body.
    resp: Buf,
    /// The rewritten request head, and how much of it the backend has taken.
    req_head: Vec<u8>,
    req_head_sent: usize,
    /// Response heads (interim and final, or a local error), and how much is written.
    resp_head: Vec<u8>,
    resp_head_sent: usize,
    /// For large response bodies (see `SPLICE_MIN`), made on first use and kept.
    pipe: Option<Pipe>,
    /// Making a pipe failed (out of descriptors): relay through the buffer instead.
    no_pipe: bool,
    /// For the access log (kept only when it is on): the request line, Referer and
    /// User-Agent, response body bytes written, and when the response head came.
    log_request: Vec<u8>,
    log_referer: Vec<u8>,
    log_user_agent: Vec<u8>,
    resp_bytes: u64,
    head_at: Option<Instant>,
}

impl Bufs {
    fn new(size: usize) -> Box<Bufs> {
        Box::new(Bufs {
            req: Buf::with_capacity(size),
            resp: Buf::with_capacity(size),
            req_head: Vec::with_capacity(1024),
            req_head_sent: 0,
            resp_head: Vec::with_capacity(1024),
            resp_head_sent: 0,
            pipe: None,
            no_pipe: false,
            log_request: Vec::new(),
            log_referer: Vec::new(),
            log_user_agent: Vec::new(),
            resp_bytes: 0,
            head_at: None,
        })
    }

    /// Response body bytes wait in the pipe.
    fn piped(&self) -> bool {
        self.pipe.as_ref().is_some_and(|p| !p.is_empty())
    }
}

impl Recycle for Box<Bufs> {
    /// Everything a session left goes: unread or unforwarded request bytes
    /// (pipelined requests, half a head), response bytes, heads, bytes in the
    /// pipe (the pipe itself is dropped then), and the log fields. A head buffer
    /// grown past `MAX_KEPT_HEAD` is given back to the allocator.
    fn reset(&mut self) {
        self.req.clear();
        self.resp.clear();
        for head in [&mut self.req_head, &mut self.resp_head] {
            head.clear();
            if head.capacity() > MAX_KEPT_HEAD {
                *head = Vec::with_capacity(1024);
            }
        }
        self.req_head_sent = 0;
        self.resp_head_sent = 0;
        if self.piped() {
            self.pipe = None;
        }
        self.no_pipe = false;
        for field in [
            &mut self.log_request,
            &mut self.log_referer,
            &mut self.log_user_agent,
        ] {
            field.clear();
            if field.capacity() > MAX_KEPT_HEAD {
                *field = Vec::new();
            }
        }
        self.resp_bytes = 0;
        self.head_at = None;
    }

    fn is_clean(&self) -> bool {
        self.req.is_empty()
            && self.resp.is_empty()
            && self.req_head.is_empty()
            && self.resp_head.is_empty()
            && self.req_head_sent == 0
            && self.resp_head_sent == 0
            && !self.piped()
            && self.log_request.is_empty()
            && self.log_referer.is_empty()
            && self.log_user_agent.is_empty()
            && self.resp_bytes == 0
            && self.head_at.is_none()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is being relayed to a backend and its response back.
    Exchange,
    /// Writing our last bytes, then shutting down our side.
    Closing,
    /// Our side is shut; discarding input until the client closes.
    Draining,
    /// A response was cut short after part of it went out (its backend failed):
    /// what was sent is delivered first (closing now, with input unread, would be
    /// a reset that destroys it, and the answers to earlier requests still on
    /// their way), then the connection is reset: for a body delimited by the
    /// close, a clean close would tell the client it has all of it.
    Aborting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RespState {
    /// No final response head yet: a local error response can still be sent.
    Waiting,
    /// The final head is queued; its body is being relayed.
    Body,
    /// The backend switched protocols (101): bytes flow both ways, unparsed,
    /// until both sides have closed.
    Tunnel,
}

/// What to do with a session whose step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// Close the client (and its backend connection) now.
    Close,
    /// End the client connection once what was sent is delivered, with a reset
    /// (see `Phase::Aborting`).
    Abort,
    /// Reset the client connection now.
    Reset,
    /// Answer with this local response if no response has started, then close.
    Reject(Reject),
    /// The reused backend connection was stale: send the request again on a new one.
    Retry,
    /// The backend failed (connect error or timeout, reset, or closed before
    /// answering): count it against the backend, then send the request to another
    /// one if `may_retry` and retries are left, else answer with `reject`.
    Backend { reject: Reject, may_retry: bool },
}

type Step = Result<bool, Fail>;

/// One client connection.
struct Client {
    sock: TcpStream,
    ip: IpAddr,
    ready: Ready,
    bufs: Option<Box<Bufs>>,
    phase: Phase,
    deadline: Instant,
    /// The client has shut down its sending side.
    eof: bool,
    drained: u32,
    /// When closing, wait for the client to close first: it may still be sending
    /// (a refused request, or a body the backend did not wait for).
    linger: bool,
    /// A relay write was held back until the end of the event batch, and the
    /// client is in `Worker::flush_queue`.
    queued: bool,
    /// It used up its turn and is in `Worker::yielded`.
    yielded: bool,
    /// The pass of the loop (`Worker::turn`) in which it was last driven, and the
    /// steps it took in that pass.
    turn: u16,
    steps: u8,
    /// The backend connection of the exchange in progress.
    upstream: Option<usize>,
    /// The exchange in progress (or the last one, between requests).
    x: Exchange,
}

impl Client {
    /// In an exchange, everything the client sent so far has gone to the backend
    /// and more of the request body is to come: the exchange waits on the client.
    /// Not while a client that sent `Expect: 100-continue` and no body byte yet
    /// still waits for the backend's 100.
    #[inline]
    fn waits_on_client_body(&self) -> bool {
        let x = &self.x;
        // Cheapest first: most requests have no body (or all of it is in).
        if x.req_body.is_done() || x.upload_failed || x.req_pending != 0 {
            return false;
        }
        if self
            .bufs
            .as_ref()
            .is_none_or(|b| b.req_head_sent != b.req_head.len())
        {
            return false;
        }
        let awaiting_continue = x.req.expect_continue
            && x.interim == 0
            && x.req_body == BodyScanner::new(x.req.framing);
        !awaiting_continue
    }

    /// Before the final response head, a head waits to be written to a client
    /// that does not take it: the exchange waits on the client, not the backend.
    fn waits_on_client_reading(&self) -> bool {
        self.bufs
            .as_ref()
            .is_some_and(|b| b.resp_head_sent < b.resp_head.len())
    }

    /// Bytes wait to go out on either side of the exchange (checked after a step
    /// that held its writes back).
    fn wants_flush(&self) -> bool {
        self.phase == Phase::Exchange
            && self.bufs.as_ref().is_some_and(|b| {
                b.req_head_sent < b.req_head.len()
                    || self.x.req_pending > 0
                    || b.resp_head_sent < b.resp_head.len()
                    || self.x.resp_pending > 0
            })
    }
}

/// One request and its response, relayed: what each direction has seen so far.
struct Exchange {
    req: RequestInfo,
    req_body: BodyScanner,
    /// Bytes of `bufs.req`, after the retained ones, known to be request body and
    /// not yet sent.
    req_pending: usize,
    /// Body bytes at the front of `bufs.req` that were sent on a reused backend
    /// connection but are kept until its first response byte, to be sent again if
    /// it turns out to be stale.
    req_retained: usize,
    /// Every byte of the request can still be sent again (nothing was released).
    replayable: bool,
    req_done: bool,
    /// The backend stopped taking the request after it began to answer.
    upload_failed: bool,
    resp: RespState,
    resp_body: BodyScanner,
    /// Bytes at the front of `bufs.resp` known to be response body, not yet written.
    resp_pending: usize,
    upstream_reusable: bool,
    close_after: bool,
    backend: usize,
    retried: bool,
    /// Times the request was moved to another backend after a failure.
    attempts: u8,
    /// The exchange counts as in flight on `backend` (see `Worker::hold`).
    holding: bool,
    /// The final response's status, once its head is parsed.
    status: u16,
    /// Interim (1xx) responses received so far; more than `MAX_INTERIM` is a 502.
    interim: u16,
    /// When the request head was parsed (the loop's clock).
    started: Instant,
    /// In a tunnel: our sending side toward the backend / the client is shut.
    backend_shut: bool,
    client_shut: bool,
}

impl Exchange {
    /// An exchange whose request head was parsed at `started` (the loop's clock).
    fn new(req: RequestInfo, backend: usize, started: Instant) -> Exchange {
        Exchange {
            req,
            req_body: BodyScanner::new(req.framing),
            req_pending: 0,
            req_retained: 0,
            replayable: true,
            req_done: false,
            upload_failed: false,
            resp: RespState::Waiting,
            resp_body: BodyScanner::new(Framing::None),
            resp_pending: 0,
            upstream_reusable: false,
            close_after: !req.keep_alive,
            backend,
            retried: false,
            attempts: 0,
            holding: false,
            status: 0,
            interim: 0,
            started,
            backend_shut: false,
            client_shut: false,
        }
    }

    /// The state of a connection that has not sent a request yet.
    fn none(now: Instant) -> Exchange {
        let req = RequestInfo {
            version: 1,
            framing: Framing::None,
            keep_alive: true,
            is_head: false,
            idempotent: true,
            expect_continue: false,
            upgrade: false,
        };
        Exchange {
            req_done: true,
            ..Exchange::new(req, 0, now)
        }
    }
}

/// One connection to a backend, either serving a client or idle in the pool.
struct Upstream {
    sock: TcpStream,
    backend: usize,
    ready: Ready,
    connected: bool,
    /// It carried an earlier exchange: a failure before any byte may mean it went stale.
    reused: bool,
    /// Bytes arrived for the current exchange.
    received: bool,
    eof: bool,
    /// The stream ended with a reset (or another read error), not a FIN.
    reset: bool,
    client: Option<usize>,
    idle_since: Instant,
}

fn client_token(key: usize) -> Token {
    Token(key << 1)
}

fn upstream_token(key: usize) -> Token {
    Token((key << 1) | 1)
}

/// A backend as one worker sees it. Exchanges and backend connections name their
/// backend by its index in `Worker::locals`, which a reload does not change.
struct Local {
    member: Arc<Member>,
    /// Idle connections to it, most recently used last (LIFO).
    idle: Vec<usize>,
    /// In the configuration in force. One that a reload removed stays while
    /// connections still refer to it, and its place is then reused.
    live: bool,
    /// Until then, no connection to it is pooled: it sent bytes that belong to no
    /// response (see `DISTRUST`).
    distrust_until: Instant,
}

struct Worker {
    id: usize,
    ctx: WorkerContext,
    shared: Arc<Shared>,
    /// The configuration in force here.
    plan: Arc<Plan>,
    /// Every backend this worker has connections for, or may pick.
    locals: Vec<Local>,
    /// `plan`'s backend index -> index in `locals`.
    map: Vec<usize>,
    clients: Slab<Client>,
    upstreams: Slab<Upstream>,
    bufs: Pool<Box<Bufs>>,
    now: Instant,
    timeouts: Timeouts,
    sweep_interval: Duration,
    accept_paused: bool,
    /// `--max-connections` reached: not accepting until a connection closes.
    at_limit: bool,
    /// Access log lines not yet written out.
    access: access::Buffer,
    expired: Vec<usize>,
    /// Set once shutdown has begun: when the worker stops regardless.
    shutdown_deadline: Option<Instant>,
    nodelay: net::NodelayInherited,
    /// While events are being handled, relay writes wait for the end of the batch:
    /// sent together, they wake each peer (backend, client) once for many messages
    /// instead of once per message.
    defer_writes: bool,
    flush_queue: Vec<usize>,
    /// Sessions to drive again after the next poll (see `resume_yielded`).
    yielded: Vec<usize>,
    /// Passes of the loop so far (wrapping).
    turn: u16,
    /// No line about backend surplus bytes is logged before this (one per second).
    quiet_surplus_until: Instant,
}

impl Worker {
    fn run(mut ctx: WorkerContext, shared: Arc<Shared>) -> io::Result<()> {
        ctx.register_listeners()?;
        let buf_size = MIN_BUF_SIZE.max(shared.max_header_bytes);
        let plan = shared.current();
        let timeouts = plan.config.timeouts;
        let mut w = Worker {
            id: ctx.id,
            locals: Vec::new(),
            map: Vec::new(),
            plan: Arc::clone(&plan),
            ctx,
            shared,
            clients: Slab::with_capacity(1024),
            upstreams: Slab::with_capacity(1024),
            bufs: Pool::new(buf_size, MAX_FREE_BUFS, Bufs::new),
            now: Instant::now(),
            timeouts,
            sweep_interval: MAX_SWEEP_INTERVAL,
            accept_paused: false,
            at_limit: false,
            access: access::Buffer::default(),
            expired: Vec::new(),
            shutdown_deadline: None,
            nodelay: net::NodelayInherited::Unknown,
            defer_writes: false,
            flush_queue: Vec::with_capacity(1024),
            yielded: Vec::with_capacity(64),
            turn: 0,
            quiet_surplus_until: Instant::now(),
        };
        w.adopt(plan);
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = w.now + w.sweep_interval;
        let busy_poll = w.shared.busy_poll;
        let mut last_busy = w.now;
        loop {
            // Busy polling: for a moment after events, poll without sleeping. A sleeping
            // worker costs every peer that writes to it a wakeup (and itself a context
            // switch), which on a loaded machine is more than the spin costs.
            let timeout = if !w.yielded.is_empty() || w.now.duration_since(last_busy) < busy_poll {
                Duration::ZERO
            } else {
                next_sweep.saturating_duration_since(w.now)
            };
            if let Err(e) = w.ctx.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e);
            }
            w.now = Instant::now();
            w.turn = w.turn.wrapping_add(1);
            if !events.is_empty() {
                last_busy = w.now;
            }
            w.defer_writes = true;
            // Backend readiness first: a pooled connection that got bytes or an end
            // of stream in this batch is known as such before any session of the
            // batch can take it (see `checkout`).
            for ev in events.iter() {
                let t = ev.token();
                if t.0 & 1 == 1
                    && net::listener_index(t, w.ctx.listeners.len()).is_none()
                    && let Some(u) = w.upstreams.get_mut(t.0 >> 1)
                {
                    u.ready.update(ev);
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    net::WAKER_TOKEN => {
                        while let Ok(message) = w.ctx.control.try_recv() {
                            match message {
                                Control::Shutdown => w.begin_shutdown(),
                                Control::Reload(plan) => {
                                    w.adopt(plan);
                                    next_sweep = next_sweep.min(w.now + w.sweep_interval);
                                }
                            }
                        }
                    }
                    t => match net::listener_index(t, w.ctx.listeners.len()) {
                        Some(i) => w.accept(i),
                        None if t.0 & 1 == 0 => {
                            let ck = t.0 >> 1;
                            if let Some(c) = w.clients.get_mut(ck) {
                                c.ready.update(ev);
                                w.drive(ck);
                            }
                        }
                        None => w.on_upstream_event(t.0 >> 1),
                    },
                }
            }
            w.flush_deferred();
            if !w.yielded.is_empty() {
                w.resume_yielded();
            }
            w.resume_accepting();
            w.metrics()
                .upstream_open
                .store(w.upstreams.len() as u64, Ordering::Relaxed);
            if w.now >= next_sweep {
                w.sweep();
                next_sweep = w.now + w.sweep_interval;
            }
            if let Some(deadline) = w.shutdown_deadline
                && (w.clients.is_empty() || w.now >= deadline)
            {
                // Sessions dropped here close with a FIN, except those whose
                // response is cut short (aborting, or a body still under way),
                // which must end with a reset.
                let cut_short = |c: &Client| {
                    c.phase == Phase::Aborting
                        || (c.phase == Phase::Exchange && c.x.resp == RespState::Body)
                };
                for (_, c) in w.clients.iter().filter(|(_, c)| cut_short(c)) {
                    let _ = socket2::SockRef::from(&c.sock).set_linger(Some(Duration::ZERO));
                }
                w.flush_access_log();
                return Ok(());
            }
        }
    }

    /// Serve new requests with `plan` (at start, and on each reload). Backends
    /// that stay keep their place in `locals` and their idle connections; those
    /// that left lose their idle connections, and their place is reused once no
    /// connection refers to it. Exchanges in flight are not touched.
    fn adopt(&mut self, plan: Arc<Plan>) {
        for l in &mut self.locals {
            l.live = false;
        }
        let members = plan.health.members();
        let mut map: Vec<Option<usize>> = members
            .iter()
            .map(|m| {
                let i = self.locals.iter().position(|l| Arc::ptr_eq(&l.member, m))?;
                self.locals[i].live = true;
                Some(i)
            })
            .collect();
        for l in self.locals.iter_mut().filter(|l| !l.live) {
            for uk in l.idle.drain(..) {
                self.upstreams.remove(uk);
            }
        }
        let mut used = vec![false; self.locals.len()];
        for (_, u) in self.upstreams.iter() {
            used[u.backend] = true;
        }
        for (_, c) in self.clients.iter() {
            if c.phase == Phase::Exchange || c.x.holding {
                used[c.x.backend] = true;
            }
        }
        for (m, slot) in members.iter().zip(&mut map) {
            if slot.is_some() {
                continue;
            }
            let local = Local {
                member: Arc::clone(m),
                idle: Vec::new(),
                live: true,
                distrust_until: self.now,
            };
            let free = (0..self.locals.len()).find(|&i| !self.locals[i].live && !used[i]);
            *slot = Some(match free {
                Some(i) => {
                    self.locals[i] = local;
                    i
                }
                None => {
                    self.locals.push(local);
                    used.push(false);
                    self.locals.len() - 1
                }
            });
        }
        self.map = map.into_iter().flatten().collect();
        self.timeouts = plan.config.timeouts;
        self.stats().plan.store(plan.number, Ordering::Relaxed);
        self.sweep_interval =
            (self.timeouts.shortest() / 4).clamp(Duration::from_millis(1), MAX_SWEEP_INTERVAL);
        self.plan = plan;
    }

    /// Add an access log line for the exchange of client `ck`, answered with
    /// `status` by `backend` (`None`: by corelb itself); `timed`: it has a start time.
    #[cold]
    #[inline(never)]
    fn log_access(&mut self, ck: usize, status: u16, backend: Option<usize>, timed: bool) {
        let Some(sink) = &self.shared.access else {
            return;
        };
        let c = &self.clients[ck];
        let Some(bufs) = c.bufs.as_ref() else {
            return;
        };
        let local = backend.is_none();
        let entry = access::Entry {
            client: c.ip,
            request: &bufs.log_request,
            referer: &bufs.log_referer,
            user_agent: &bufs.log_user_agent,
            status,
            bytes: if local { 0 } else { bufs.resp_bytes },
            backend: backend.map(|b| self.locals[b].member.authority.as_str()),
            upstream: bufs
                .head_at
                .filter(|_| !local)
                .map(|t| t.saturating_duration_since(c.x.started)),
            total: if timed {
                self.now.saturating_duration_since(c.x.started)
            } else {
                Duration::ZERO
            },
        };
        self.access.add(sink.format, &entry);
        if self.access.out.len() >= access::FLUSH_AT {
            self.flush_access_log();
        }
    }

    #[inline(never)]
    fn flush_access_log(&mut self) {
        if let Some(sink) = &self.shared.access
            && !self.access.out.is_empty()
        {
            sink.write(&self.access.out);
            self.access.out.clear();
        }
    }

    /// Accept again once the connection limit has room (connections closed).
    fn resume_accepting(&mut self) {
        let limit = self.plan.config.max_connections;
        if self.at_limit && (limit == 0 || self.clients.len() < limit) {
            self.at_limit = false;
            for i in 0..self.ctx.listeners.len() {
                self.accept(i);
            }
        }
    }

    /// Stop accepting, close idle clients, and let exchanges in flight finish
    /// (each then closes). The loop ends when no client is left or the grace
    /// period is over.
    fn begin_shutdown(&mut self) {
        self.shutdown_deadline = Some(self.now + self.timeouts.shutdown);
        // Closing the listeners refuses new connections (the kernel resets those
        // still queued, which were never accepted).
        self.ctx.listeners.clear();
        self.accept_paused = false;
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for ck in keys {
            let c = &mut self.clients[ck];
            match c.phase {
                // Between requests, or before the first: a request may be on its way
                // (a client that sends just as we close would see its request fail).
                // It gets a moment to arrive and is answered with `Connection: close`
                // (see `start_exchange`); a connection still silent then is closed.
                Phase::Head => c.deadline = c.deadline.min(self.now + DRAIN_GRACE),
                // The response will say `Connection: close`, unless its head is out
                // already: then the client may send one more request, which is
                // answered that way (the connection drains like an idle one).
                Phase::Exchange if c.x.resp == RespState::Waiting => c.x.close_after = true,
                Phase::Exchange => {}
                Phase::Closing | Phase::Draining | Phase::Aborting => {}
            }
        }
    }

    fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.id].0
    }

    fn metrics(&self) -> &WorkerMetrics {
        &self.shared.metrics[self.id].0
    }

    fn accept(&mut self, i: usize) {
        loop {
            let limit = self.plan.config.max_connections;
            if limit > 0 && self.clients.len() >= limit {
                // Leave the rest in the backlog; `resume_accepting` comes back.
                self.at_limit = true;
                return;
            }
            let (sock, peer) = match self.ctx.listeners[i].accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // Out of descriptors or memory: try again on the next sweep rather
                    // than spin; the listener's edge will not fire again by itself.
                    // One log line per burst: the flag clears at the next accept.
                    if !self.accept_paused {
                        crate::log!(
                            crate::log::Level::Warn,
                            "corelb: worker {}: cannot accept ({e}); retrying every sweep",
                            self.id
                        );
                    }
                    self.accept_paused = true;
                    return;
                }
            };
            self.accept_paused = false;
            self.nodelay.apply(&sock);
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            let mut sock = sock;
            if self
                .ctx
                .poll
                .registry()
                .register(
                    &mut sock,
                    client_token(key),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            entry.insert(Client {
                sock,
                ip: peer.ip(),
                ready: Ready::default(),
                bufs: None,
                phase: Phase::Head,
                deadline: self.now + self.timeouts.idle,
                eof: false,
                drained: 0,
                linger: false,
                queued: false,
                yielded: false,
                turn: 0,
                steps: 0,
                upstream: None,
                x: Exchange::none(self.now),
            });
            self.stats().accepted.fetch_add(1, Ordering::Relaxed);
            self.stats().open.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An event on a backend connection (its readiness was noted before the batch
    /// was handled, see `Worker::run`).
    fn on_upstream_event(&mut self, uk: usize) {
        let Some(u) = self.upstreams.get(uk) else {
            return;
        };
        match u.client {
            Some(ck) => self.drive(ck),
            None => self.check_idle_upstream(uk),
        }
    }

    /// An idle pooled connection became readable: the backend closed it, or sent
    /// bytes nobody asked for. Either way it cannot be reused.
    #[cold]
    fn check_idle_upstream(&mut self, uk: usize) {
        let u = &mut self.upstreams[uk];
        match leftover_seen(u) {
            Leftover::Nothing => {}
            found => {
                let backend = u.backend;
                self.locals[backend].idle.retain(|&k| k != uk);
                self.discard_upstream(uk, found);
            }
        }
    }

    /// Close a backend connection that must not be reused, counting and logging
    /// bytes it sent that belong to no response.
    /// Bytes that belong to no response mean the backend's connections cannot be
    /// trusted to stay in step (the next ones may come late, after a reuse, and be
    /// taken for the next response): this worker closes its idle ones to that
    /// backend and pools none for `DISTRUST`.
    #[cold]
    fn discard_upstream(&mut self, uk: usize, found: Leftover) {
        let u = self.upstreams.remove(uk);
        if found == Leftover::Bytes {
            self.metrics()
                .upstream_surplus
                .fetch_add(1, Ordering::Relaxed);
            let local = &mut self.locals[u.backend];
            local.distrust_until = self.now + DISTRUST;
            for idle in local.idle.drain(..) {
                self.upstreams.remove(idle);
            }
            if self.now >= self.quiet_surplus_until {
                self.quiet_surplus_until = self.now + Duration::from_secs(1);
                crate::log!(
                    crate::log::Level::Warn,
                    "corelb: backend {} sent bytes beyond the end of a response; worker {} closes its connections to it and reuses none for {} s (at most one such line per second per worker)",
                    local.member.authority,
                    self.id,
                    DISTRUST.as_secs()
                );
            }
        }
    }

    /// A pooled connection to `backend` that is safe to send a request on, or
    /// `None`: the most recently used one (LIFO: the least likely to be stale) on
    /// which nothing has arrived since its last response ended. One that got bytes
    /// or an end of stream (seen in this batch's events, or by a read now) is
    /// closed and the next is tried. With `max_idle`, only a connection idle for
    /// at most that long is taken (older ones stay for other requests).
    fn checkout(&mut self, backend: usize, max_idle: Option<Duration>) -> Option<usize> {
        // The usual case, kept short: the newest idle connection, nothing on it.
        let idle = &mut self.locals[backend].idle;
        let &uk = idle.last()?;
        let ready = self.upstreams[uk].ready;
        if max_idle.is_none() && !ready.readable && !ready.read_closed {
            idle.pop();
            return Some(uk);
        }
        self.checkout_carefully(backend, max_idle)
    }

    #[cold]
    #[inline(never)]
    fn checkout_carefully(&mut self, backend: usize, max_idle: Option<Duration>) -> Option<usize> {
        while let Some(&uk) = self.locals[backend].idle.last() {
            let u = &mut self.upstreams[uk];
            if max_idle.is_some_and(|max| self.now.saturating_duration_since(u.idle_since) > max) {
                // The rest of the list has been idle even longer.
                return None;
            }
            self.locals[backend].idle.pop();
            // A request that must not be replayed pays for a read that makes sure
            // nothing arrived since the last poll (the flags are as of then).
            let found = if max_idle.is_some() {
                leftover(u)
            } else {
                leftover_seen(u)
            };
            if found == Leftover::Nothing {
                return Some(uk);
            }
            self.discard_upstream(uk, found);
        }
        None
    }

    /// Send the writes held back during the event batch.
    fn flush_deferred(&mut self) {
        self.defer_writes = false;
        for i in 0..self.flush_queue.len() {
            let ck = self.flush_queue[i];
            // A client closed during the batch may have had its key reused by a new
            // one, which is not queued.
            if let Some(c) = self.clients.get_mut(ck)
                && c.queued
            {
                c.queued = false;
                self.drive(ck);
            }
        }
        self.flush_queue.clear();
    }

    /// Sessions that used up their turn (see `MAX_STEPS_PER_TURN`) while they
    /// could still move: driven again after the next poll, which does not sleep.
    /// One that used up this pass's turn already (woken by an event) takes no
    /// step and goes back on the list.
    fn resume_yielded(&mut self) {
        let mut again = std::mem::take(&mut self.yielded);
        for &ck in &again {
            // A session closed since may have had its key reused by a new one,
            // which is not marked.
            if let Some(c) = self.clients.get_mut(ck)
                && c.yielded
            {
                c.yielded = false;
                self.drive(ck);
            }
        }
        again.clear();
        // Keep the longer list's capacity, and what was yielded meanwhile.
        again.append(&mut self.yielded);
        self.yielded = again;
    }

    /// Run a session until it can make no more progress or has used up its turn,
    /// handling failures.
    fn drive(&mut self, ck: usize) {
        let c = &mut self.clients[ck];
        if c.turn != self.turn {
            // The first drive in this pass: a new turn.
            c.turn = self.turn;
            c.steps = 0;
        }
        let more = loop {
            match self.pump(ck) {
                Ok(more) => break more,
                Err(fail) => {
                    if !self.fail(ck, fail) {
                        return;
                    }
                }
            }
        };
        let now = self.now;
        let c = &mut self.clients[ck];
        if more && !c.yielded {
            c.yielded = true;
            self.yielded.push(ck);
        }
        if self.defer_writes && c.wants_flush() && !c.queued {
            c.queued = true;
            self.flush_queue.push(ck);
        }
        if c.phase == Phase::Exchange {
            let connecting = c.upstream.is_some_and(|uk| !self.upstreams[uk].connected);
            if !connecting {
                // Waiting for the backend's head is the response timeout; waiting
                // for body bytes, from either side, the body timeout.
                c.deadline = now
                    + if c.x.resp == RespState::Waiting
                        && !c.waits_on_client_body()
                        && !c.waits_on_client_reading()
                    {
                        self.timeouts.response
                    } else {
                        self.timeouts.body
                    };
            }
        }
        #[cfg(debug_assertions)]
        self.check_invariants(ck);
    }

    /// Step a session's state machine while it makes progress, until it has
    /// taken `MAX_STEPS_PER_TURN` steps in this pass of the loop (however many
    /// times it is driven in it); returns whether it could still move.
    fn pump(&mut self, ck: usize) -> Result<bool, Fail> {
        loop {
            let c = &mut self.clients[ck];
            if c.steps >= MAX_STEPS_PER_TURN {
                return Ok(true);
            }
            c.steps += 1;
            let progress = match c.phase {
                Phase::Head => self.step_head(ck)?,
                Phase::Exchange => self.step_exchange(ck)?,
                Phase::Closing => self.step_closing(ck)?,
                Phase::Draining => self.step_draining(ck)?,
                Phase::Aborting => step_aborting(&self.clients[ck])?,
            };
            if !progress {
                return Ok(false);
            }
        }
    }

    /// Handle a failed step; returns whether the session still exists.
    fn fail(&mut self, ck: usize, fail: Fail) -> bool {
        match fail {
            Fail::Close => {
                self.close_client(ck);
                false
            }
            Fail::Abort => {
                self.unhold(ck);
                let now = self.now;
                let c = &mut self.clients[ck];
                if let Some(uk) = c.upstream.take() {
                    self.upstreams.remove(uk);
                }
                if let Some(bufs) = c.bufs.take() {
                    self.bufs.give(bufs);
                }
                c.phase = Phase::Aborting;
                c.deadline = now + self.timeouts.linger;
                true
            }
            Fail::Reset => {
                let sock = socket2::SockRef::from(&self.clients[ck].sock);
                let _ = sock.set_linger(Some(Duration::ZERO));
                self.close_client(ck);
                false
            }
            Fail::Reject(reject) => {
                let now = self.now;
                let c = &mut self.clients[ck];
                // The final head may be queued but, while not one byte of it is out,
                // the client can still get an error response instead.
                let final_head_unsent = c
                    .bufs
                    .as_ref()
                    .is_some_and(|b| b.resp_head_sent == 0 && !b.resp_head.is_empty());
                // So is a head (interim or final) of which some bytes are out.
                let head_partly_out = c.bufs.as_ref().is_some_and(|b| b.resp_head_sent > 0);
                let started = (c.x.resp == RespState::Body && !final_head_unsent)
                    || c.x.resp == RespState::Tunnel
                    || head_partly_out;
                if matches!(c.phase, Phase::Closing | Phase::Draining | Phase::Aborting) {
                    self.close_client(ck);
                    return false;
                }
                if started {
                    // Part of a response is already out: ending the connection is the
                    // only signal left.
                    return self.fail(ck, Fail::Abort);
                }
                if let Some(uk) = c.upstream.take() {
                    self.upstreams.remove(uk);
                }
                if std::mem::take(&mut c.x.holding) {
                    self.locals[c.x.backend].member.release();
                }
                let bufs = c.bufs.get_or_insert_with(|| self.bufs.take());
                // The request answered: the exchange's, or the head being parsed.
                let head_request = if c.phase == Phase::Exchange {
                    c.x.req.is_head
                } else {
                    bufs.req.filled().starts_with(b"HEAD ")
                };
                bufs.resp.clear();
                bufs.resp_head.clear();
                bufs.resp_head
                    .extend_from_slice(reject.response_to(head_request));
                self.shared.metrics[self.id].0.local.count(reject.status());
                bufs.resp_head_sent = 0;
                c.x.resp_pending = 0;
                c.linger = true;
                // Timed from its head only if the refused request got that far.
                let timed = c.phase == Phase::Exchange;
                c.phase = Phase::Closing;
                c.deadline = now + self.timeouts.linger;
                if self.shared.access.is_some() {
                    self.log_access(ck, reject.status(), None, timed);
                }
                true
            }
            Fail::Backend { reject, may_retry } => {
                let c = &mut self.clients[ck];
                let failed = c.x.backend;
                self.plan.health.record_failure(&self.locals[failed].member);
                if !may_retry || u32::from(c.x.attempts) >= self.plan.config.retries {
                    return self.fail(ck, Fail::Reject(reject));
                }
                let Some(next) = self.other_backend(failed) else {
                    return self.fail(ck, Fail::Reject(reject));
                };
                // Released even if a reload has since chosen an algorithm that does
                // not count: the count must not stay on the backend that failed.
                self.unhold(ck);
                self.hold(ck, next);
                crate::log!(
                    crate::log::Level::Debug,
                    "corelb: request moved from backend {} to {} ({})",
                    self.locals[failed].member.authority,
                    self.locals[next].member.authority,
                    reject.status()
                );
                let c = &mut self.clients[ck];
                c.x.attempts += 1;
                if self.shared.rewrite_host
                    && let Some(bufs) = c.bufs.as_mut()
                {
                    rewrite::retarget_host(
                        &mut bufs.req_head,
                        &self.locals[failed].member.authority,
                        &self.locals[next].member.authority,
                    );
                }
                self.resend(ck, next, true)
            }
            Fail::Retry => {
                let c = &mut self.clients[ck];
                c.x.retried = true;
                let backend = c.x.backend;
                self.resend(ck, backend, false)
            }
        }
    }

    /// Send the request again, from its start, to `backend` (on a pooled connection
    /// if `reuse` allows); returns whether the session still exists.
    fn resend(&mut self, ck: usize, backend: usize, reuse: bool) -> bool {
        self.metrics().retries.fetch_add(1, Ordering::Relaxed);
        let c = &mut self.clients[ck];
        c.x.backend = backend;
        c.x.req_done = false;
        if let Some(uk) = c.upstream.take() {
            self.upstreams.remove(uk);
        }
        if let Some(bufs) = c.bufs.as_mut() {
            bufs.req_head_sent = 0;
            bufs.resp.clear();
        }
        // What was sent is sent again: the retained bytes are pending once more.
        c.x.req_pending += c.x.req_retained;
        c.x.req_retained = 0;
        match self.connect_upstream(ck, backend, reuse) {
            Ok(()) => true,
            Err(f) => self.fail(ck, f),
        }
    }

    /// An up backend other than `failed` for a retry (the failed one if it is the
    /// only one up); `None` if all are down. Both are indexes in `locals`.
    fn other_backend(&self, failed: usize) -> Option<usize> {
        let plan = &self.plan;
        let now = plan.health.ms_at(self.now);
        let mut pick = None;
        for i in 0..plan.health.len() {
            // Varying keys, so a hash ring offers other backends too.
            pick = plan
                .selector
                .pick_at(select::mix(i as u64), &plan.health, now)
                .map(|b| self.map[b]);
            if pick != Some(failed) {
                break;
            }
        }
        pick
    }

    fn close_client(&mut self, ck: usize) {
        self.unhold(ck);
        self.stats().open.fetch_sub(1, Ordering::Relaxed);
        let mut c = self.clients.remove(ck);
        if let Some(uk) = c.upstream.take() {
            self.upstreams.remove(uk);
        }
        if let Some(bufs) = c.bufs.take() {
            self.bufs.give(bufs);
        }
    }

    /// Waiting for a request head: read, parse, and start the exchange.
    fn step_head(&mut self, ck: usize) -> Step {
        let c = &mut self.clients[ck];
        if c.bufs.is_none() && !c.ready.readable && !c.eof {
            return Ok(false);
        }
        let bufs = c.bufs.get_or_insert_with(|| self.bufs.take());
        if !bufs.req.is_empty()
            && let Some((n, info, backend)) =
                parse_request_head(bufs, c.ip, &self.shared, &self.plan, self.now)?
        {
            bufs.req.consume(n);
            self.start_exchange(ck, info, self.map[backend])?;
            return Ok(true);
        }
        if c.eof {
            // End of stream between requests, or in the middle of a head.
            return Err(Fail::Close);
        }
        if c.ready.readable {
            if bufs.req.is_empty() {
                c.deadline = self.now + self.timeouts.header;
            }
            return match read_into(&mut c.sock, &mut bufs.req, &mut c.ready) {
                Ok(ReadOutcome::Data) => Ok(true),
                Ok(ReadOutcome::Eof) => {
                    c.eof = true;
                    Ok(true)
                }
                Ok(ReadOutcome::Blocked) => {
                    if bufs.req.is_empty() {
                        c.deadline = self.now + self.timeouts.idle;
                    }
                    Ok(false)
                }
                Err(_) => Err(Fail::Close),
            };
        }
        if bufs.req.is_empty() {
            // Idle keep-alive connection: it holds no buffers.
            if let Some(bufs) = c.bufs.take() {
                self.bufs.give(bufs);
            }
        }
        Ok(false)
    }

    fn start_exchange(&mut self, ck: usize, info: RequestInfo, backend: usize) -> Result<(), Fail> {
        let c = &mut self.clients[ck];
        let bufs = c.bufs.as_mut().ok_or(Fail::Close)?;
        bufs.req_head_sent = 0;
        bufs.resp_head.clear();
        bufs.resp_head_sent = 0;
        bufs.resp.clear();
        bufs.resp_bytes = 0;
        bufs.head_at = None;
        c.x = Exchange::new(info, backend, self.now);
        c.x.close_after |= self.shutdown_deadline.is_some();
        c.phase = Phase::Exchange;
        c.deadline = self.now + self.timeouts.response;
        self.hold(ck, backend);
        self.connect_upstream(ck, backend, true)
    }

    /// Count the exchange as in flight on `backend`, for the algorithms that
    /// compare loads (nothing is counted for the others).
    /// The exchange must not be held already (see `unhold`).
    fn hold(&mut self, ck: usize, backend: usize) {
        if self.plan.count_inflight {
            self.locals[backend].member.acquire();
            let x = &mut self.clients[ck].x;
            x.backend = backend;
            x.holding = true;
        }
    }

    /// The exchange is over (or moved): stop counting it (even if a reload has
    /// since chosen an algorithm that does not count).
    fn unhold(&mut self, ck: usize) {
        if let Some(c) = self.clients.get_mut(ck)
            && std::mem::take(&mut c.x.holding)
        {
            self.locals[c.x.backend].member.release();
        }
    }

    /// Give the client a backend connection: an idle pooled one if `reuse` allows and
    /// one exists (LIFO: the most recently used is the least likely to be stale),
    /// else a new non-blocking connect.
    fn connect_upstream(&mut self, ck: usize, backend: usize, reuse: bool) -> Result<(), Fail> {
        // A request that must not be replayed avoids connections idle long enough
        // for the backend to be closing them as it arrives (see README, upstream pool).
        let max_idle = (!self.clients[ck].x.req.idempotent).then_some(NON_IDEMPOTENT_MAX_IDLE);
        let pooled = if reuse {
            self.checkout(backend, max_idle)
        } else {
            None
        };
        let counter = match pooled {
            Some(_) => &self.shared.metrics[self.id].0.upstream_reuses,
            None => &self.shared.metrics[self.id].0.upstream_connects,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let uk = match pooled {
            Some(uk) => {
                let u = &mut self.upstreams[uk];
                u.client = Some(ck);
                u.received = false;
                uk
            }
            None => {
                let addr = self.locals[backend].member.addr;
                let mut sock = TcpStream::connect(addr).map_err(|_| Fail::Backend {
                    reject: Reject::BadGateway,
                    may_retry: true,
                })?;
                let _ = sock.set_nodelay(true);
                let entry = self.upstreams.vacant_entry();
                let uk = entry.key();
                self.ctx
                    .poll
                    .registry()
                    .register(
                        &mut sock,
                        upstream_token(uk),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|_| Fail::Reject(Reject::BadGateway))?;
                entry.insert(Upstream {
                    sock,
                    backend,
                    ready: Ready::default(),
                    connected: false,
                    reused: false,
                    received: false,
                    eof: false,
                    reset: false,
                    client: Some(ck),
                    idle_since: self.now,
                });
                self.clients[ck].deadline = self.now + self.timeouts.connect;
                uk
            }
        };
        self.clients[ck].upstream = Some(uk);
        Ok(())
    }

    /// Relay one exchange: client -> backend (request) and backend -> client
    /// (response), then recycle the connections once the response is out.
    fn step_exchange(&mut self, ck: usize) -> Step {
        let c = &mut self.clients[ck];
        let Some(uk) = c.upstream else {
            return Err(Fail::Reject(Reject::BadGateway));
        };
        let u = &mut self.upstreams[uk];
        if c.x.resp == RespState::Tunnel {
            return relay_tunnel(c, u);
        }
        let defer = self.defer_writes;
        let max_body = self.plan.config.max_body_bytes;
        let progress = check_connected(u)?
            | relay_request(c, u, defer, max_body)?
            | relay_response(c, u, defer)?;
        if self.shared.access.is_some()
            && c.x.status != 0
            && let Some(bufs) = c.bufs.as_mut()
        {
            bufs.head_at.get_or_insert(self.now);
        }
        if c.x.resp == RespState::Tunnel {
            // The 101 is queued; from here on this session is a tunnel.
            let (backend, took) = (c.x.backend, self.now.saturating_duration_since(c.x.started));
            self.stats().requests.fetch_add(1, Ordering::Relaxed);
            self.locals[backend].member.finished(self.id, 101, took);
            if self.shared.access.is_some() {
                self.log_access(ck, 101, Some(backend), true);
            }
            return Ok(true);
        }
        let bufs = c.bufs.as_ref().ok_or(Fail::Close)?;
        if c.x.resp == RespState::Body
            && bufs.resp_head.is_empty()
            && c.x.resp_pending == 0
            && !bufs.piped()
        {
            let until_close_ended =
                c.x.resp_body == BodyScanner::UntilClose && u.eof && bufs.resp.is_empty();
            if until_close_ended && u.reset {
                // A body delimited by the close, ended by a reset: a clean close
                // would tell the client it has all of it.
                return Err(Fail::Abort);
            }
            if c.x.resp_body.is_done() || until_close_ended {
                self.finish_exchange(ck)?;
                return Ok(true);
            }
            if u.eof {
                // The backend closed in the middle of a delimited body: the client must
                // see the truncation, and only the end of the connection says so.
                return Err(Fail::Abort);
            }
        }
        Ok(progress)
    }

    /// The response has been written in full: recycle or close the backend
    /// connection, then wait for the next request or close.
    fn finish_exchange(&mut self, ck: usize) -> Result<(), Fail> {
        self.stats().requests.fetch_add(1, Ordering::Relaxed);
        self.unhold(ck);
        let x = &self.clients[ck].x;
        let took = self.now.saturating_duration_since(x.started);
        self.locals[x.backend]
            .member
            .finished(self.id, x.status, took);
        if self.shared.access.is_some() {
            let (status, backend) = (x.status, x.backend);
            self.log_access(ck, status, Some(backend), true);
        }
        let now = self.now;
        let c = &mut self.clients[ck];
        let bufs = c.bufs.as_mut().ok_or(Fail::Close)?;
        if let Some(uk) = c.upstream.take() {
            let u = &mut self.upstreams[uk];
            // Bytes after the end of the response (already read, or still in the
            // socket: the last read may not have drained it, as after a splice of
            // exactly the remaining length) belong to no exchange: never pool them.
            let found = if !bufs.resp.is_empty() {
                Leftover::Bytes
            } else {
                leftover_seen(u)
            };
            bufs.resp.clear();
            let local = &mut self.locals[u.backend];
            if found == Leftover::Nothing
                && now >= local.distrust_until
                && local.live
                && c.x.upstream_reusable
                && c.x.req_done
                && local.idle.len() < MAX_IDLE_PER_BACKEND
            {
                u.client = None;
                u.reused = true;
                u.idle_since = now;
                local.idle.push(uk);
            } else {
                self.discard_upstream(uk, found);
            }
        }
        let c = &mut self.clients[ck];
        let bufs = c.bufs.as_mut().ok_or(Fail::Close)?;
        bufs.resp.clear();
        c.x.resp = RespState::Waiting;
        if c.x.close_after || !c.x.req_done {
            // The client may still be sending: the rest of this request's body,
            // or, if it did not ask to close, requests pipelined behind it. A
            // close with their bytes unread would be a reset, which can destroy
            // the response still on its way (see `step_closing`).
            c.linger |= !c.x.req_done || c.x.req.keep_alive;
            c.phase = Phase::Closing;
            c.deadline = now + self.timeouts.linger;
        } else {
            c.phase = Phase::Head;
            c.deadline = now + self.timeouts.idle;
            if self.shutdown_deadline.is_some() {
                c.deadline = c.deadline.min(now + DRAIN_GRACE);
            }
        }
        Ok(())
    }

    /// Flush what is queued for the client, then shut down our sending side.
    fn step_closing(&mut self, ck: usize) -> Step {
        let c = &mut self.clients[ck];
        let bufs = c.bufs.get_or_insert_with(|| self.bufs.take());
        let head = &bufs.resp_head[bufs.resp_head_sent..];
        if !head.is_empty() {
            if !c.ready.writable {
                return Ok(false);
            }
            let n = write_two(&mut c.sock, head, &[], &mut c.ready).map_err(|_| Fail::Close)?;
            bufs.resp_head_sent += n;
            if bufs.resp_head_sent < bufs.resp_head.len() {
                return Ok(n > 0);
            }
        }
        bufs.resp_head.clear();
        bufs.resp_head_sent = 0;
        // Closing with unread input sends a reset, which can destroy the response
        // still in flight to the client. With no input pending (the last read drained
        // the socket, nothing is buffered) and none expected, a plain close sends a
        // FIN after the data; otherwise shut down our side and read until the client
        // closes (nginx's "lingering close", with the same heuristic).
        let input_pending = c.ready.readable || !bufs.req.is_empty();
        if c.eof || (!c.linger && !input_pending) {
            return Err(Fail::Close);
        }
        let _ = c.sock.shutdown(Shutdown::Write);
        c.phase = Phase::Draining;
        c.drained = 0;
        Ok(true)
    }

    fn step_draining(&mut self, ck: usize) -> Step {
        let c = &mut self.clients[ck];
        let bufs = c.bufs.get_or_insert_with(|| self.bufs.take());
        if !c.ready.readable {
            return Ok(false);
        }
        bufs.req.clear();
        match read_into(&mut c.sock, &mut bufs.req, &mut c.ready) {
            Ok(ReadOutcome::Data) => {
                c.drained += bufs.req.len() as u32;
                bufs.req.clear();
                if c.drained > MAX_DRAIN_BYTES {
                    return Err(Fail::Close);
                }
                Ok(true)
            }
            Ok(ReadOutcome::Blocked) => Ok(false),
            Ok(ReadOutcome::Eof) | Err(_) => Err(Fail::Close),
        }
    }

    /// Timers: expired sessions, stale idle backend connections, paused accepts.
    fn sweep(&mut self) {
        #[cfg(debug_assertions)]
        self.check_all_invariants();
        let now = self.now;
        self.expired.clear();
        // Aborting sessions too: whether what they sent is delivered is not an
        // event, so it is checked at each sweep.
        self.expired.extend(
            self.clients
                .iter()
                .filter(|(_, c)| c.deadline <= now || c.phase == Phase::Aborting)
                .map(|(k, _)| k),
        );
        for i in 0..self.expired.len() {
            let ck = self.expired[i];
            let c = &self.clients[ck];
            let fail = match c.phase {
                Phase::Aborting if c.deadline > now => {
                    self.drive(ck);
                    continue;
                }
                // Not delivered within the linger time: reset anyway.
                Phase::Aborting => Fail::Reset,
                Phase::Head if c.bufs.as_ref().is_some_and(|b| !b.req.is_empty()) => {
                    Fail::Reject(Reject::Timeout)
                }
                Phase::Exchange if c.x.resp == RespState::Waiting => {
                    let connecting = c.upstream.is_some_and(|uk| !self.upstreams[uk].connected);
                    if connecting {
                        // Connect timeout: another backend, or 502.
                        Fail::Backend {
                            reject: Reject::BadGateway,
                            may_retry: true,
                        }
                    } else if c.waits_on_client_body() {
                        // The client stopped sending its body: its stall, not the
                        // backend's (RFC 9110 §15.5.9), and never counted against it.
                        Fail::Reject(Reject::Timeout)
                    } else if c.waits_on_client_reading() {
                        // The client stopped reading (an interim head is out in
                        // part or waits): its stall too. Only a close is left.
                        Fail::Close
                    } else {
                        Fail::Backend {
                            reject: Reject::GatewayTimeout,
                            may_retry: false,
                        }
                    }
                }
                // A body that stalled (either side) is cut short: the client must
                // be able to tell, which for a body delimited by the close only a
                // reset does (after what was sent is delivered).
                Phase::Exchange if c.x.resp == RespState::Body => Fail::Abort,
                _ => Fail::Close,
            };
            if self.fail(ck, fail) {
                self.drive(ck);
            }
        }
        self.plan.health.notice_recoveries();
        self.flush_access_log();
        let upstream_idle = self.timeouts.upstream_idle;
        for local in &mut self.locals {
            let upstreams = &mut self.upstreams;
            local.idle.retain(|&uk| {
                let keep = now.duration_since(upstreams[uk].idle_since) < upstream_idle;
                if !keep {
                    upstreams.remove(uk);
                }
                keep
            });
        }
        if self.accept_paused {
            for i in 0..self.ctx.listeners.len() {
                self.accept(i);
            }
        }
    }
}

/// What a backend connection that owes no response holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leftover {
    Nothing,
    /// Bytes that belong to no response.
    Bytes,
    /// An end of stream (or an error).
    Closed,
}

/// Look for bytes or an end of stream waiting on a backend connection that owes
/// no response: one read, which on a quiet socket fails with WouldBlock.
#[cold]
fn leftover(u: &mut Upstream) -> Leftover {
    if u.eof || u.ready.read_closed {
        return Leftover::Closed;
    }
    let mut scratch = [0u8; 64];
    loop {
        return match u.sock.read(&mut scratch) {
            Ok(0) => Leftover::Closed,
            Ok(_) => Leftover::Bytes,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                u.ready.readable = false;
                Leftover::Nothing
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => Leftover::Closed,
        };
    }
}

/// An aborting session resets its connection once the kernel has nothing left
/// to send on it, nor any byte unacknowledged (SIOCOUTQ).
#[cold]
fn step_aborting(c: &Client) -> Step {
    if !matches!(c.sock.take_error(), Ok(None)) {
        // The client reset (or the socket failed): nothing more can be delivered.
        return Err(Fail::Reset);
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ on a TCP socket) writes one int through the
    // pointer, which points at a live local.
    let r = unsafe { libc::ioctl(c.sock.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if r != 0 || queued == 0 {
        return Err(Fail::Reset);
    }
    Ok(false)
}

/// `leftover`, but only when the connection's state says something may have come
/// (an end of stream, or readiness not yet cleared by a read that found nothing):
/// a socket drained by a short read raises a new edge for anything that arrives.
fn leftover_seen(u: &mut Upstream) -> Leftover {
    if u.eof || u.ready.readable || u.ready.read_closed {
        leftover(u)
    } else {
        Leftover::Nothing
    }
}

/// A new backend connection: has the connect finished, or failed?
fn check_connected(u: &mut Upstream) -> Step {
    const REFUSED: Fail = Fail::Backend {
        reject: Reject::BadGateway,
        may_retry: true,
    };
    let mut progress = false;
    if !u.connected && (u.ready.writable || u.ready.readable) {
        match u.sock.take_error() {
            Ok(None) => {}
            _ => return Err(REFUSED),
        }
        match u.sock.peer_addr() {
            Ok(_) => {
                u.connected = true;
                progress = true;
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                u.ready.readable = false;
                u.ready.writable = false;
            }
            Err(_) => return Err(REFUSED),
        }
    }

    Ok(progress)
}

/// The first response bytes arrived: the request will not be sent again, so the
/// body bytes kept for a replay are let go.
fn answer_began(x: &mut Exchange, req: &mut Buf, u: &mut Upstream) {
    u.received = true;
    req.consume(x.req_retained);
    x.req_retained = 0;
    x.replayable = false;
}

/// Client -> backend: read the request body (or pipelined requests, bounded by the
/// buffer), find where the body ends, and send the head and body bytes.
fn relay_request(c: &mut Client, u: &mut Upstream, defer: bool, max_body: u64) -> Step {
    let bufs = c.bufs.as_mut().ok_or(Fail::Close)?;
    let mut progress = false;
    // Bytes kept for a replay must not stall the upload: when they fill the
    // buffer, let them go (this request can then no longer be retried).
    if bufs.req.is_full() && c.x.req_retained > 0 {
        bufs.req.consume(c.x.req_retained);
        c.x.req_retained = 0;
        c.x.replayable = false;
    }
    // Client -> buffer: request body, or pipelined requests (bounded by the buffer).
    if c.ready.readable && !c.eof && !bufs.req.is_full() {
        progress |= read_client(&mut c.sock, &mut bufs.req, &mut c.ready, &mut c.eof)?;
    }
    let known = c.x.req_retained + c.x.req_pending;
    if !c.x.req_body.is_done() && bufs.req.len() > known {
        let n =
            c.x.req_body
                .scan(&bufs.req.filled()[known..])
                .map_err(|_| Fail::Reject(Reject::BadRequest))?;
        c.x.req_pending += n;
        progress |= n > 0;
        if max_body > 0 && c.x.req_body.chunked_data() > max_body {
            return Err(Fail::Reject(Reject::BodyTooLarge));
        }
    }
    if c.eof && !c.x.req_body.is_done() {
        // Everything buffered is scanned and the body is still short: the client
        // gave up in the middle of its request.
        return Err(Fail::Close);
    }

    if c.x.upload_failed {
        // The backend stopped taking the request after it began to answer: the
        // rest of the body is read and dropped (the connection closes after the
        // response, see `finish_exchange`).
        bufs.req.consume(c.x.req_pending);
        c.x.req_pending = 0;
        return Ok(progress);
    }
    // Buffer -> backend: the rewritten head, then body bytes as they are known.
    if u.connected && !c.x.req_done {
        let head = &bufs.req_head[bufs.req_head_sent..];
        if !defer && u.ready.writable && (!head.is_empty() || c.x.req_pending > 0) {
            let body = &bufs.req.filled()[c.x.req_retained..c.x.req_retained + c.x.req_pending];
            match write_two(&mut u.sock, head, body, &mut u.ready) {
                Ok(n) => {
                    let from_head = n.min(head.len());
                    let from_body = n - from_head;
                    bufs.req_head_sent += from_head;
                    c.x.req_pending -= from_body;
                    if c.x.replayable {
                        c.x.req_retained += from_body;
                    } else {
                        bufs.req.consume(from_body);
                    }
                    progress |= n > 0;
                }
                Err(_) => {
                    // An early answer and then a close with the body unread (a
                    // reset) leaves the answer waiting behind the failed write.
                    if !u.received
                        && !bufs.resp.is_full()
                        && let Ok(ReadOutcome::Data) =
                            read_into(&mut u.sock, &mut bufs.resp, &mut u.ready)
                    {
                        answer_began(&mut c.x, &mut bufs.req, u);
                    }
                    if u.received {
                        // It has begun to answer: not a failure, and its answer stands.
                        c.x.upload_failed = true;
                        return Ok(true);
                    }
                    return Err(retry_or(c, u, Reject::BadGateway));
                }
            }
        }
        if bufs.req_head_sent == bufs.req_head.len()
            && c.x.req_pending == 0
            && c.x.req_body.is_done()
        {
            c.x.req_done = true;
            progress = true;
        }
    }

    Ok(progress)
}

/// Backend -> client: read, parse the response head (interim ones too), find where
/// the body ends, and write the heads and body bytes to the client.
fn relay_response(c: &mut Client, u: &mut Upstream, defer: bool) -> Step {
    let bufs = c.bufs.as_mut().ok_or(Fail::Close)?;
    if splicing(bufs, &c.x) {
        return splice_body(c, u);
    }
    let mut progress = false;
    // Backend -> buffer.
    if u.connected && u.ready.readable && !u.eof && !bufs.resp.is_full() {
        match read_into(&mut u.sock, &mut bufs.resp, &mut u.ready) {
            Ok(ReadOutcome::Data) => {
                answer_began(&mut c.x, &mut bufs.req, u);
                progress = true;
            }
            Ok(ReadOutcome::Eof) => {
                u.eof = true;
                progress = true;
            }
            Ok(ReadOutcome::Blocked) => {}
            Err(_) => {
                // Reset: the end of the stream, but not a clean one.
                u.eof = true;
                u.reset = true;
                progress = true;
            }
        }
    }

    if c.x.resp == RespState::Waiting {
        if bufs.resp.is_empty() {
            if u.eof {
                return Err(retry_or(c, u, Reject::BadGateway));
            }
        } else if bufs.resp_head.is_empty() {
            // One head at a time: the next one (interim or final) is parsed only once
            // the one before is out, so interim responses to a client that does not
            // read them back up in the bounded buffer and stop the backend's reads.
            match parse_response_head(bufs, &c.x.req, c.x.req_done, &mut c.x.close_after)? {
                Some(head) => {
                    progress = true;
                    if head.status == 101 {
                        c.x.resp = RespState::Tunnel;
                        c.x.status = 101;
                        return Ok(true);
                    }
                    match head.final_framing {
                        Some(framing) => {
                            c.x.status = head.status;
                            c.x.resp = RespState::Body;
                            c.x.resp_body = BodyScanner::new(framing);
                            c.x.upstream_reusable = head.reusable;
                        }
                        None => {
                            c.x.interim += 1;
                            if c.x.interim > MAX_INTERIM {
                                return Err(Fail::Reject(Reject::BadGateway));
                            }
                        }
                    }
                }
                None if bufs.resp.is_full() => return Err(Fail::Reject(Reject::BadGateway)),
                None if u.eof => return Err(Fail::Reject(Reject::BadGateway)),
                None => {}
            }
        }
    }

    if c.x.resp == RespState::Body && !c.x.resp_body.is_done() && bufs.resp.len() > c.x.resp_pending
    {
        let n =
            c.x.resp_body
                .scan(&bufs.resp.filled()[c.x.resp_pending..])
                .map_err(|_| Fail::Reject(Reject::BadGateway))?;
        c.x.resp_pending += n;
        progress |= n > 0;
    }

    // Buffer -> client: queued heads (interim and final), then body bytes.
    let head = &bufs.resp_head[bufs.resp_head_sent..];
    if !defer && c.ready.writable && (!head.is_empty() || c.x.resp_pending > 0) {
        let body = &bufs.resp.filled()[..c.x.resp_pending];
        match write_two(&mut c.sock, head, body, &mut c.ready) {
            Ok(n) => {
                let from_head = n.min(head.len());
                bufs.resp_head_sent += from_head;
                bufs.resp.consume(n - from_head);
                c.x.resp_pending -= n - from_head;
                bufs.resp_bytes += (n - from_head) as u64;
                progress |= n > 0;
            }
            Err(_) => return Err(Fail::Close),
        }
    }
    if bufs.resp_head_sent == bufs.resp_head.len() {
        bufs.resp_head.clear();
        bufs.resp_head_sent = 0;
    }

    Ok(progress)
}

/// After a 101: relay bytes both ways as they come, the 101 head first. When one
/// side ends its stream and everything it sent is delivered, the other side's
/// sending half is shut; once both are, the session closes. The backend connection
/// is never reused.
fn relay_tunnel(c: &mut Client, u: &mut Upstream) -> Step {
    let bufs = c.bufs.as_mut().ok_or(Fail::Close)?;
    let mut progress = false;
    // Client -> backend.
    if c.ready.readable && !c.eof && !bufs.req.is_full() {
        progress |= read_client(&mut c.sock, &mut bufs.req, &mut c.ready, &mut c.eof)?;
    }
    if !bufs.req.is_empty() && u.ready.writable && !c.x.backend_shut {
        let n = write_two(&mut u.sock, &[], bufs.req.filled(), &mut u.ready)
            .map_err(|_| Fail::Close)?;
        bufs.req.consume(n);
        progress |= n > 0;
    }
    if c.eof && bufs.req.is_empty() && !c.x.backend_shut {
        let _ = u.sock.shutdown(Shutdown::Write);
        c.x.backend_shut = true;
        progress = true;
    }
    // Backend -> client.
    if u.ready.readable && !u.eof && !bufs.resp.is_full() {
        match read_into(&mut u.sock, &mut bufs.resp, &mut u.ready) {
            Ok(ReadOutcome::Data) => progress = true,
            Ok(ReadOutcome::Eof) | Err(_) => {
                u.eof = true;
                progress = true;
            }
            Ok(ReadOutcome::Blocked) => {}
        }
    }
    let head = &bufs.resp_head[bufs.resp_head_sent..];
    if c.ready.writable && (!head.is_empty() || !bufs.resp.is_empty()) && !c.x.client_shut {
        let n = write_two(&mut c.sock, head, bufs.resp.filled(), &mut c.ready)
            .map_err(|_| Fail::Close)?;
        let from_head = n.min(head.len());
        bufs.resp_head_sent += from_head;
        bufs.resp.consume(n - from_head);
        progress |= n > 0;
    }
    if bufs.resp_head_sent == bufs.resp_head.len() {
        bufs.resp_head.clear();
        bufs.resp_head_sent = 0;
    }
    if u.eof && bufs.resp.is_empty() && bufs.resp_head.is_empty() && !c.x.client_shut {
        let _ = c.sock.shutdown(Shutdown::Write);
        c.x.client_shut = true;
        progress = true;
    }
    if c.x.backend_shut && c.x.client_shut {
        // Both directions are finished.
        return Err(Fail::Close);
    }
    Ok(progress)
}

/// Whether the response body goes through the pipe: bytes are in it already, or
/// everything buffered is out and much of a Content-Length body is still to come.
fn splicing(bufs: &mut Bufs, x: &Exchange) -> bool {
    if bufs.piped() {
        return true;
    }
    let large = matches!(x.resp_body, BodyScanner::Length(n) if n >= SPLICE_MIN);
    if !(large
        && x.resp == RespState::Body
        && x.resp_pending == 0
        && bufs.resp.is_empty()
        && bufs.resp_head.is_empty()
        && !bufs.no_pipe)
    {
        return false;
    }
    if bufs.pipe.is_none() {
        match Pipe::new() {
            Ok(p) => bufs.pipe = Some(p),
            Err(_) => bufs.no_pipe = true,
        }
    }
    bufs.pipe.is_some()
}

/// Backend -> pipe -> client, for the rest of a Content-Length body.
fn splice_body(c: &mut Client, u: &mut Upstream) -> Step {
    let bufs = c.bufs.as_mut().ok_or(Fail::Close)?;
    let pipe = bufs.pipe.as_mut().ok_or(Fail::Close)?;
    let BodyScanner::Length(remaining) = &mut c.x.resp_body else {
        return Err(Fail::Close);
    };
    // One drain and one fill per step: the session's turn bounds how much it
    // moves before the others get theirs (see `MAX_STEPS_PER_TURN`).
    let mut moved = false;
    if !pipe.is_empty() && c.ready.writable {
        match pipe.drain(c.sock.as_raw_fd()) {
            Ok(n) => {
                moved |= n > 0;
                bufs.resp_bytes += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.ready.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Fail::Close),
        }
    }
    if *remaining > 0 && pipe.room() > 0 && u.ready.readable && !u.eof {
        let max = usize::try_from(*remaining).map_or(SPLICE_STEP, |r| r.min(SPLICE_STEP));
        match pipe.fill(u.sock.as_raw_fd(), max) {
            Ok(0) => u.eof = true,
            Ok(n) => {
                *remaining -= n as u64;
                moved = true;
                // The step counts one; each further `SPLICE_STEP_BYTES`, one more.
                let more = n.saturating_sub(1) / SPLICE_STEP_BYTES;
                c.steps = c.steps.saturating_add(more.min(usize::from(u8::MAX)) as u8);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => u.ready.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Reset: like end of stream, which the caller sees as a truncated body.
            Err(_) => u.eof = true,
        }
    }
    Ok(moved)
}

/// The backend connection failed before any response byte. A reused one may just
/// have gone stale (the backend closed it as the request went out): the request is
/// sent again on a fresh connection, once, if nothing of it was sent, or if it is
/// idempotent and all of it is still at hand (see `Exchange::req_retained`). A
/// request that may have been received and must not be replayed (RFC 9110 §9.2.2)
/// gets `reject`; a stale connection is not counted against the backend. A fresh
/// connection's failure is the backend's, and the request may go to another one
/// under the same rule.
fn retry_or(c: &Client, u: &Upstream, reject: Reject) -> Fail {
    let nothing_sent = c.bufs.as_ref().is_none_or(|b| b.req_head_sent == 0);
    let replayable = nothing_sent || (c.x.req.idempotent && c.x.replayable);
    if u.reused && !u.received {
        return if replayable && !c.x.retried {
            Fail::Retry
        } else {
            Fail::Reject(reject)
        };
    }
    Fail::Backend {
        reject,
        may_retry: !u.received && replayable,
    }
}

/// Parse the request head at the front of `bufs.req`. On success the backend is
/// chosen and the rewritten head is in `bufs.req_head`; returns the head's length
/// in the buffer, what it says, and the backend.
fn parse_request_head(
    bufs: &mut Bufs,
    client_ip: IpAddr,
    shared: &Shared,
    plan: &Plan,
    now: Instant,
) -> Result<Option<(usize, RequestInfo, usize)>, Fail> {
    if shared.access.is_some() {
        // A head that fails to parse is logged with "-".
        bufs.log_request.clear();
        bufs.log_referer.clear();
        bufs.log_user_agent.clear();
    }
    let data = bufs.req.filled();
    // Uninitialised: zero-filling 100 headers (3.2 KB) per request costs more than
    // parsing a short head.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let n = match req.parse_with_uninit_headers(data, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if data.len() >= shared.max_header_bytes => {
            return Err(Fail::Reject(oversized_head(data, shared.max_header_bytes)));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Fail::Reject(classify_parse_error(e, data))),
    };
    if n > shared.max_header_bytes {
        return Err(Fail::Reject(oversized_head(data, shared.max_header_bytes)));
    }
    if has_bare_lf(&data[..n]) {
        return Err(Fail::Reject(Reject::BadRequest));
    }
    if shared.access.is_some() {
        capture_for_log(
            [
                &mut bufs.log_request,
                &mut bufs.log_referer,
                &mut bufs.log_user_agent,
            ],
            &req,
        );
    }
    let info = analyze_request(&req).map_err(Fail::Reject)?;
    if let Framing::Length(n) = info.framing
        && plan.config.max_body_bytes > 0
        && n > plan.config.max_body_bytes
    {
        return Err(Fail::Reject(Reject::BodyTooLarge));
    }
    let key = if plan.hash_key {
        let header = plan.config.hash_header.as_deref().and_then(|name| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
        });
        match header {
            Some(h) => select::key_of_bytes(h.value),
            None => select::key_of_ip(client_ip),
        }
    } else {
        0
    };
    let now = plan.health.ms_at(now);
    let Some(backend) = plan.selector.pick_at(key, &plan.health, now) else {
        plan.health.report_all_down();
        return Err(Fail::Reject(Reject::Unavailable));
    };
    let fwd = Forwarding {
        client_ip,
        host: shared
            .rewrite_host
            .then(|| plan.health.member(backend).authority.as_str()),
    };
    rewrite::write_request_head(&mut bufs.req_head, &req, &info, fwd);
    Ok(Some((n, info, backend)))
}

/// Keep what the access log shows of a request (copied: the head is consumed).
#[cold]
#[inline(never)]
fn capture_for_log(into: [&mut Vec<u8>; 3], req: &httparse::Request<'_, '_>) {
    let [line, referer, user_agent] = into;
    line.extend_from_slice(req.method.unwrap_or("").as_bytes());
    line.push(b' ');
    line.extend_from_slice(req.path.unwrap_or("").as_bytes());
    line.extend_from_slice(if req.version == Some(0) {
        b" HTTP/1.0"
    } else {
        b" HTTP/1.1"
    });
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("referer") {
            referer.extend_from_slice(h.value);
        } else if h.name.eq_ignore_ascii_case("user-agent") {
            user_agent.extend_from_slice(h.value);
        }
    }
}

/// A parsed response head.
struct ResponseHead {
    /// `Some` for the final response (its body framing); `None` for an interim 1xx.
    final_framing: Option<Framing>,
    reusable: bool,
    /// The status; a 101 (only accepted for an upgrade request) starts a tunnel.
    status: u16,
}

/// Parse the response head at the front of `bufs.resp` and queue its rewrite in
/// `bufs.resp_head`. A final response that comes before the whole request went
/// out (`req_done` false: an early answer) says `Connection: close`, as does one
/// delimited by the backend's close; `close_after` is set for both.
#[inline(never)]
fn parse_response_head(
    bufs: &mut Bufs,
    req: &RequestInfo,
    req_done: bool,
    close_after: &mut bool,
) -> Result<Option<ResponseHead>, Fail> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        bufs.resp.filled(),
        &mut headers,
    );
    let n = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Fail::Reject(Reject::BadGateway)),
    };
    if has_bare_lf(&bufs.resp.filled()[..n]) {
        return Err(Fail::Reject(Reject::BadGateway));
    }
    let info =
        analyze_response(&resp, req.is_head).map_err(|_| Fail::Reject(Reject::BadGateway))?;
    if (100..200).contains(&info.status) {
        // A 101 switches to a tunnel, if one was asked for (otherwise it is a backend
        // error). Other interim responses go to 1.1 clients only (RFC 9110 §15.2).
        let conn = match info.status {
            101 if !req.upgrade => return Err(Fail::Reject(Reject::BadGateway)),
            101 => Some(ClientConnection::Upgrade),
            _ if req.version == 1 => Some(ClientConnection::KeepAlive11),
            _ => None,
        };
        if let Some(conn) = conn {
            rewrite::write_response_head(&mut bufs.resp_head, &resp, None, conn);
        }
        bufs.resp.consume(n);
        return Ok(Some(ResponseHead {
            final_framing: None,
            reusable: false,
            status: info.status,
        }));
    }
    if req.version == 0 && info.framing == Framing::Chunked {
        // A 1.0 client cannot read chunked, and the backend was asked in 1.0.
        return Err(Fail::Reject(Reject::BadGateway));
    }
    if info.framing == Framing::UntilClose || !req_done {
        // After an early answer the rest of the request body is still to come;
        // the client is told the connection ends, rather than promised a
        // keep-alive the proxy could not keep.
        *close_after = true;
    }
    let conn = if *close_after {
        ClientConnection::Close
    } else if req.version == 0 {
        ClientConnection::KeepAlive10
    } else {
        ClientConnection::KeepAlive11
    };
    rewrite::write_response_head(&mut bufs.resp_head, &resp, info.content_length, conn);
    bufs.resp.consume(n);
    Ok(Some(ResponseHead {
        final_framing: Some(info.framing),
        reusable: info.reusable,
        status: info.status,
    }))
}

#[cfg(test)]
mod tests {
    /// An idle keep-alive connection costs its slab entry and nothing else (no
    /// buffers), so this size is the user-space cost of an idle client; the budget
    /// is 0.5 KB per idle connection in all (issue 3), kernel socket memory apart.
    #[test]
    fn idle_client_fits_the_memory_budget() {
        // A slab entry is the value plus a tag (rounded to the value's alignment).
        let size = std::mem::size_of::<super::Client>() + std::mem::align_of::<super::Client>();
        assert!(size <= 256, "an idle client costs {size} bytes");
    }
}
