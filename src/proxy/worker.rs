//! The worker: one mio event loop, its listeners, its client and backend
//! connections, accept, shutdown, turns, and the timer sweep.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Token};
use slab::Slab;

use crate::access;
use crate::config::Timeouts;
use crate::counters::WorkerMetrics;
use crate::counters::{ProxyFailure, TLS_FAILED_TIMEOUT};
use crate::http::Reject;
use crate::io::Ready;
use crate::io::buffer::{self, Pool};
use crate::io::stream::{Stream, Tls};
use crate::runtime::{self, Control, WorkerContext};

use super::bufs::Bufs;
use super::exchange::RespState;
use super::plan::{Plan, Shared, WorkerStats};
use super::session::{Client, Fail, Phase, Timer, Wait};
use super::upstream::{Local, Upstream};
use super::{
    DRAIN_GRACE, MAX_FREE_BUFS, MAX_SWEEP_INTERVAL, MIN_BUF_SIZE, MIN_SLOTS, TRIM_INTERVAL,
};

pub(super) fn client_token(key: usize) -> Token {
    Token(key << 1)
}

pub(super) fn upstream_token(key: usize) -> Token {
    Token((key << 1) | 1)
}

pub(super) struct Worker {
    pub(super) id: usize,
    pub(super) ctx: WorkerContext<Arc<Plan>>,
    pub(super) shared: Arc<Shared>,
    /// The configuration in force here.
    pub(super) plan: Arc<Plan>,
    /// Every backend this worker has connections for, or may pick.
    pub(super) locals: Vec<Local>,
    /// `plan`'s backend index -> index in `locals`.
    pub(super) map: Vec<usize>,
    pub(super) clients: Slab<Client>,
    pub(super) upstreams: Slab<Upstream>,
    pub(super) bufs: Pool<Box<Bufs>>,
    pub(super) now: Instant,
    pub(super) timeouts: Timeouts,
    pub(super) sweep_interval: Duration,
    pub(super) accept_paused: bool,
    /// `--max-connections` reached: not accepting until a connection closes.
    pub(super) at_limit: bool,
    /// Access log lines not yet written out.
    pub(super) access: access::Buffer,
    pub(super) expired: Vec<usize>,
    /// Connections per backend (by `locals` index), counted at each sweep.
    per_backend: Vec<u64>,
    /// Set once shutdown has begun: when the worker stops regardless.
    pub(super) shutdown_deadline: Option<Instant>,
    pub(super) nodelay: runtime::NodelayInherited,
    /// While events are being handled, relay writes wait for the end of the batch:
    /// sent together, they wake each peer (backend, client) once for many messages
    /// instead of once per message.
    pub(super) defer_writes: bool,
    pub(super) flush_queue: Vec<usize>,
    /// Sessions to drive again after the next poll (see `resume_yielded`).
    pub(super) yielded: Vec<usize>,
    /// Passes of the loop so far (wrapping).
    pub(super) turn: u16,
    /// No line about backend surplus bytes is logged before this (one per second).
    pub(super) quiet_surplus_until: Instant,
    /// No line about a backend's TLS failing is logged before this (one per second).
    pub(super) quiet_tls_until: Instant,
    /// When the sweep next gives back memory a burst left (`trim_memory`).
    pub(super) next_trim: Instant,
    /// Client connections accepted so far: the next one's `Client::id`.
    connections_made: u64,
    /// X-Request-Ids made here: a random upper half for this worker (ids of
    /// other workers and other runs differ), and a count below it.
    pub(super) request_id_seed: u128,
    pub(super) requests_seen: u64,
    /// Which of `ctx.listeners` speak TLS, and which expect a PROXY header
    /// first (by the address each is bound to).
    listener_kinds: Vec<(bool, bool)>,
}

impl Worker {
    pub(super) fn run(mut ctx: WorkerContext<Arc<Plan>>, shared: Arc<Shared>) -> io::Result<()> {
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
            clients: Slab::with_capacity(MIN_SLOTS),
            upstreams: Slab::with_capacity(MIN_SLOTS),
            bufs: Pool::new(buf_size, MAX_FREE_BUFS, Bufs::new),
            now: Instant::now(),
            timeouts,
            sweep_interval: MAX_SWEEP_INTERVAL,
            accept_paused: false,
            at_limit: false,
            access: access::Buffer::default(),
            expired: Vec::new(),
            per_backend: Vec::new(),
            shutdown_deadline: None,
            nodelay: runtime::NodelayInherited::Unknown,
            defer_writes: false,
            flush_queue: Vec::with_capacity(1024),
            yielded: Vec::with_capacity(64),
            turn: 0,
            quiet_surplus_until: Instant::now(),
            quiet_tls_until: Instant::now(),
            next_trim: Instant::now() + TRIM_INTERVAL,
            connections_made: 0,
            request_id_seed: u128::from(random_u64()) << 64,
            requests_seen: 0,
            listener_kinds: Vec::new(),
        };
        w.listener_kinds = (w.ctx.listeners.iter())
            .map(|l| {
                let addr = l.local_addr().ok();
                let kind = w.shared.listens.iter().find(|k| Some(k.addr) == addr);
                kind.map_or((false, false), |k| (k.tls, k.proxy_protocol))
            })
            .collect();
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
                    && runtime::listener_index(t, w.ctx.listeners.len()).is_none()
                    && let Some(u) = w.upstreams.get_mut(t.0 >> 1)
                {
                    u.ready.update(ev);
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    runtime::WAKER_TOKEN => {
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
                    t => match runtime::listener_index(t, w.ctx.listeners.len()) {
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
                    c.phase.is_aborting() || c.exchange().is_some_and(|x| x.resp.is_body())
                };
                for (_, c) in w.clients.iter().filter(|(_, c)| cut_short(c)) {
                    let _ = socket2::SockRef::from(c.io.tcp()).set_linger(Some(Duration::ZERO));
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
    pub(super) fn adopt(&mut self, plan: Arc<Plan>) {
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
            if let Some(x) = c.exchange() {
                used[x.backend] = true;
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
        // Sized here, not in the sweep, which allocates nothing.
        self.per_backend.resize(self.locals.len(), 0);
        self.timeouts = plan.config.timeouts;
        self.stats().plan.store(plan.number, Ordering::Relaxed);
        self.sweep_interval =
            (self.timeouts.shortest() / 4).clamp(Duration::from_millis(1), MAX_SWEEP_INTERVAL);
        self.plan = plan;
    }

    /// Add an access log line for the exchange of client `ck`, answered with
    /// `status` by `backend` (`None`: by corelb itself), timed from `started` (the
    /// parse of its head) if it got that far.
    #[cold]
    #[inline(never)]
    pub(super) fn log_access(
        &mut self,
        ck: usize,
        status: u16,
        backend: Option<usize>,
        started: Option<Instant>,
    ) {
        let Some(sink) = &self.shared.access else {
            return;
        };
        let c = &self.clients[ck];
        let Some(bufs) = c.bufs.as_ref() else {
            return;
        };
        let local = backend.is_none();
        // A refused head that did not parse whole may still have a request
        // line that says what was asked.
        let request = if bufs.log_request.is_empty() {
            request_line(bufs.req.filled())
        } else {
            &bufs.log_request[..]
        };
        let entry = access::Entry {
            client: c.ip,
            request,
            referer: &bufs.log_referer,
            user_agent: &bufs.log_user_agent,
            host: &bufs.log_host,
            request_id: &bufs.log_request_id,
            worker: self.id,
            status,
            // corelb's own answer: the body of the response queued for it.
            bytes: if local {
                own_body_len(&bufs.resp_head)
            } else {
                bufs.resp_bytes
            },
            backend: backend.map(|b| self.locals[b].member.name.as_str()),
            upstream: bufs
                .head_at
                .filter(|_| !local)
                .zip(started)
                .map(|(head, started)| head.saturating_duration_since(started)),
            total: started.map_or(Duration::ZERO, |s| self.now.saturating_duration_since(s)),
            tls: c
                .io
                .tls_session()
                .map(|(version, cipher, sni)| access::Tls {
                    version,
                    cipher,
                    sni,
                }),
        };
        self.access.add(sink.format, &entry);
        if self.access.out.len() >= access::FLUSH_AT {
            self.flush_access_log();
        }
    }

    #[inline(never)]
    pub(super) fn flush_access_log(&mut self) {
        if let Some(sink) = &self.shared.access
            && !self.access.out.is_empty()
        {
            sink.write(&self.access.out);
            self.access.out.clear();
        }
    }

    /// Accept again once the connection limit has room (connections closed).
    pub(super) fn resume_accepting(&mut self) {
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
    pub(super) fn begin_shutdown(&mut self) {
        self.shutdown_deadline = Some(self.now + self.timeouts.shutdown);
        // Closing the listeners refuses new connections (the kernel resets those
        // still queued, which were never accepted).
        self.ctx.listeners.clear();
        self.accept_paused = false;
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for ck in keys {
            let c = &mut self.clients[ck];
            match &mut c.phase {
                // Between requests, or before the first: a request may be on its way
                // (a client that sends just as we close would see its request fail).
                // It gets a moment to arrive and is answered with `Connection: close`
                // (see `start_exchange`); a connection still silent then is closed.
                Phase::Preamble | Phase::Head => {
                    c.timer.at = c.timer.at.min(self.now + DRAIN_GRACE)
                }
                // The response will say `Connection: close`, unless its head is out
                // already: then the client may send one more request, which is
                // answered that way (the connection drains like an idle one).
                Phase::Exchange(x) if matches!(x.resp, RespState::Waiting { .. }) => {
                    x.close_after = true
                }
                Phase::Exchange(_) => {}
                Phase::Closing | Phase::Draining | Phase::Aborting => {}
            }
        }
    }

    pub(super) fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.id].0
    }

    pub(super) fn metrics(&self) -> &WorkerMetrics {
        &self.shared.metrics[self.id].0
    }

    pub(super) fn accept(&mut self, i: usize) {
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
            let (tls, proxy_protocol) = self.listener_kinds.get(i).copied().unwrap_or_default();
            if proxy_protocol && !self.proxy_header_allowed(peer.ip()) {
                // Its header would be a forged client address: closed unread.
                self.proxy_header_failed(ProxyFailure::Untrusted, peer.ip());
                continue;
            }
            self.nodelay.apply(&sock);
            let mut io = if tls {
                // The handshake runs in this loop, as the client's bytes come.
                let conn =
                    self.plan.tls.as_ref().and_then(|tls| {
                        rustls::ServerConnection::new(Arc::clone(&tls.config)).ok()
                    });
                let Some(conn) = conn else {
                    continue;
                };
                Stream::Tls(Tls::new(sock, rustls::Connection::Server(conn)))
            } else {
                Stream::Plain(sock)
            };
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            if self
                .ctx
                .poll
                .registry()
                .register(
                    io.tcp_mut(),
                    client_token(key),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            entry.insert(Client {
                io,
                ip: peer.ip(),
                proxied: None,
                id: {
                    self.connections_made += 1;
                    self.connections_made
                },
                private_upstreams: false,
                ready: Ready::default(),
                bufs: None,
                // A PROXY header comes at once, ahead of everything: the header
                // timeout runs from the accept.
                phase: if proxy_protocol {
                    Phase::Preamble
                } else {
                    Phase::Head
                },
                timer: if proxy_protocol {
                    Timer::new(self.now + self.timeouts.header, Wait::Preamble)
                } else {
                    Timer::new(self.now + self.timeouts.idle, Wait::Idle)
                },
                eof: false,
                drained: 0,
                linger: false,
                queued: false,
                yielded: false,
                turn: 0,
                steps: 0,
            });
            self.stats().accepted.fetch_add(1, Ordering::Relaxed);
            self.stats().open.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Send the writes held back during the event batch.
    pub(super) fn flush_deferred(&mut self) {
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
    pub(super) fn resume_yielded(&mut self) {
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

    /// A body or tunnel timer expired, but the bytes the kernel holds for the
    /// client (and the backend) are going out: a slow reader, not a stalled one,
    /// which gets no writable event while a large send queue drains. The timer is
    /// re-armed and true returned. The first look only notes the queue and looks
    /// again one body timeout later; a queue that has not shrunk by then, or is
    /// empty, is no progress. So a stalled peer is cut between one and two body
    /// timeouts after its last byte moved. (A Linux receiver reading slowly from
    /// a large buffer reopens its window in steps of 64 KiB or more: at 32 KB/s
    /// the sender sees the queue move every 2 to 4 s, which a body timeout
    /// shorter than that cannot tell from a stall.)
    fn still_sending(&mut self, ck: usize) -> bool {
        let c = &self.clients[ck];
        // A TLS session closing with records still to go: over plain TCP the
        // kernel would go on sending what was written after the close, but
        // records rustls holds would be lost, so the close waits while they move.
        let closing_tls =
            c.timer.wait == Wait::Linger && matches!(c.phase, Phase::Closing) && c.io.pending_out();
        let waits = matches!(
            c.timer.wait,
            Wait::Body | Wait::Tunnel | Wait::ClientReading
        ) && matches!(c.phase, Phase::Exchange(_));
        if !closing_tls && !waits {
            return false;
        }
        let backend = c.upstream().and_then(|uk| self.upstreams.get(uk));
        let queued = crate::io::unsent(c.io.tcp()).unwrap_or(0).saturating_add(
            backend
                .and_then(|u| crate::io::unsent(u.io.tcp()))
                .unwrap_or(0),
        );
        let before = c.timer.unsent;
        if queued == 0 || (queued >= before && before != u32::MAX) {
            return false;
        }
        let again = if closing_tls {
            self.timeouts.linger
        } else {
            self.timeouts.body
        };
        let c = &mut self.clients[ck];
        c.timer = Timer {
            at: self.now + again,
            wait: c.timer.wait,
            unsent: queued,
        };
        true
    }

    /// Timers: expired sessions, stale idle backend connections, paused accepts.
    pub(super) fn sweep(&mut self) {
        #[cfg(debug_assertions)]
        self.check_all_invariants();
        let now = self.now;
        self.expired.clear();
        // Aborting sessions too: whether what they sent is delivered is not an
        // event, so it is checked at each sweep.
        self.expired.extend(
            self.clients
                .iter()
                .filter(|(_, c)| c.timer.at <= now || c.phase.is_aborting())
                .map(|(k, _)| k),
        );
        for i in 0..self.expired.len() {
            let ck = self.expired[i];
            let c = &self.clients[ck];
            if c.phase.is_aborting() && c.timer.at > now {
                self.drive(ck);
                continue;
            }
            if self.still_sending(ck) {
                continue;
            }
            let c = &self.clients[ck];
            // What the timer waited for says what its expiry means.
            let fail = match c.timer.wait {
                // A TLS handshake not finished within the header timeout: no
                // 408 can be sent over it.
                Wait::Head if c.io.handshaking() => {
                    self.metrics().tls_failures[TLS_FAILED_TIMEOUT].fetch_add(1, Ordering::Relaxed);
                    Fail::Close
                }
                Wait::Preamble => {
                    let ip = c.ip;
                    self.proxy_header_failed(ProxyFailure::Timeout, ip);
                    Fail::Close
                }
                Wait::Idle | Wait::Tunnel | Wait::ClientReading => Fail::Close,
                Wait::Head | Wait::ClientBody => Fail::Reject(Reject::Timeout),
                // Connect timeout: another backend, or 502.
                Wait::Connect => Fail::Backend {
                    reject: Reject::BadGateway,
                    may_retry: true,
                },
                Wait::Response => Fail::Backend {
                    reject: Reject::GatewayTimeout,
                    may_retry: false,
                },
                // A body that stalled (either side) is cut short: the client must
                // be able to tell, which for a body delimited by the close only a
                // reset does (after what was sent is delivered).
                Wait::Body => Fail::Abort,
                // Not delivered within the linger time: reset anyway.
                Wait::Linger if c.phase.is_aborting() => Fail::Reset,
                Wait::Linger => Fail::Close,
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
            // A drained or disabled backend keeps no idle connection.
            let pools = local.member.pools();
            local.idle.retain(|&uk| {
                let keep = pools && upstreams[uk].idle_for(now) < upstream_idle;
                if !keep {
                    upstreams.remove(uk);
                }
                keep
            });
        }
        // Published for /status and /metrics: when a drained backend is done.
        self.per_backend.iter_mut().for_each(|n| *n = 0);
        for (_, u) in &self.upstreams {
            self.per_backend[u.backend] += 1;
        }
        for (local, &n) in self.locals.iter().zip(&self.per_backend) {
            local.member.set_connections(self.id, n);
        }
        if self.accept_paused {
            for i in 0..self.ctx.listeners.len() {
                self.accept(i);
            }
        }
        if now >= self.next_trim {
            self.next_trim = now + TRIM_INTERVAL;
            self.trim_memory();
        }
    }

    /// Give back what a burst took once it has passed: the buffers and buffer
    /// sets nobody took since the last trim, and the slots of the session tables
    /// past the last one in use when the tables are mostly empty; then, if any
    /// of that was freed, the allocator's free pages.
    fn trim_memory(&mut self) {
        let mut freed = buffer::trim_chunks() + self.bufs.trim();
        if self.clients.capacity() > 4 * self.clients.len().max(MIN_SLOTS) {
            self.clients.shrink_to_fit();
            freed += 1;
        }
        if self.upstreams.capacity() > 4 * self.upstreams.len().max(MIN_SLOTS) {
            self.upstreams.shrink_to_fit();
            freed += 1;
        }
        if freed > 0 {
            buffer::release_free_memory();
        }
    }
}

/// The first line of `head` if it has a request line's shape (`METHOD TARGET
/// HTTP/1.x`, printable ASCII), for the log of a head refused before it parsed.
fn request_line(head: &[u8]) -> &[u8] {
    let Some(end) = head
        .iter()
        .take(8192)
        .position(|&b| b == b'\r' || b == b'\n')
    else {
        return b"";
    };
    let line = &head[..end];
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return b"";
    };
    let shaped = !method.is_empty()
        && method.iter().all(u8::is_ascii_uppercase)
        && !target.is_empty()
        && target.iter().all(u8::is_ascii_graphic)
        && matches!(version, b"HTTP/1.0" | b"HTTP/1.1");
    if shaped { line } else { b"" }
}

/// The body length of a whole response queued in `response` (head and body):
/// what corelb's own answers send.
fn own_body_len(response: &[u8]) -> u64 {
    response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| (response.len() - at - 4) as u64)
}

/// 64 bits nobody can guess in advance (std's per-process random keys, mixed
/// with the time).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}
