//! One client session: its phases (`Phase`; only `Phase::Exchange`
//! carries an exchange, see `exchange`), its timer (`Timer`: when, and what it
//! waits for), and the steps that move it from one request head to the next
//! (`Worker::drive` and `Worker::pump`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::counters::{TLS_FAILED_CLOSED, Traffic};
use crate::http::{BodyScanner, Framing, Reject, RequestInfo};
use crate::io::buffer::Buf;
use crate::io::stream::{Stream, tls_failure};
use crate::io::{ReadOutcome, Ready};

use super::bufs::Bufs;
use super::closing::step_aborting;
use super::exchange::{Exchange, ReqState, RespState};
use super::head::parse_request_head;
use super::relay::{Meters, relay_request, relay_response, relay_tunnel, take_request};
use super::upstream::{Leftover, Role, check_connected, leftover_seen};
use super::worker::Worker;
use super::{DRAIN_GRACE, MAX_STEPS_PER_TURN, STEP_BYTES};

/// A read from `io` into `buf`, the bytes it brought counted as received on
/// `traffic` (a client's or a backend's).
#[inline]
pub(super) fn read_counted(
    io: &mut Stream,
    buf: &mut Buf,
    ready: &mut Ready,
    traffic: &Traffic,
) -> std::io::Result<ReadOutcome> {
    let before = buf.len();
    let read = io.read_into(buf, ready);
    traffic.received(buf.len() - before);
    read
}

/// Read what the client sent into `buf`; an end of stream sets `eof`. Returns
/// whether anything happened; a read error closes the session.
pub(super) fn read_client(
    io: &mut Stream,
    buf: &mut Buf,
    ready: &mut Ready,
    eof: &mut bool,
    traffic: &Traffic,
) -> Result<bool, Fail> {
    match read_counted(io, buf, ready, traffic) {
        Ok(ReadOutcome::Data) => Ok(true),
        Ok(ReadOutcome::Eof) => {
            *eof = true;
            Ok(true)
        }
        Ok(ReadOutcome::Blocked) => Ok(false),
        Err(_) => Err(Fail::Close),
    }
}

/// Where a session is in its life; only an exchange carries one.
pub(super) enum Phase {
    /// On a `proxy-protocol` listener, waiting for (the rest of) the PROXY
    /// header that comes before anything of the client's.
    Preamble,
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is being relayed to a backend and its response back.
    Exchange(Exchange),
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

impl Phase {
    pub(super) fn is_aborting(&self) -> bool {
        matches!(self, Phase::Aborting)
    }
}

/// What a session's timer waits for, and so what its expiry means (see
/// `Worker::sweep`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// A PROXY header (the header timeout, from the accept): close.
    Preamble,
    /// The next request, between requests or before the first: close silently.
    Idle,
    /// The rest of a request head: 408.
    Head,
    /// A backend connection being set up: another backend, or 502.
    Connect,
    /// The backend's response head: 504, counted against the backend.
    Response,
    /// The client's request body, before any response: 408, the client's stall
    /// (RFC 9110 §15.5.9), never counted against the backend.
    ClientBody,
    /// The client to read a head queued for it, before the final one: its stall
    /// too; only a close is left.
    ClientReading,
    /// A response body moving either way: it is cut short (`Fail::Abort`).
    Body,
    /// A tunnel moving either way: closed.
    Tunnel,
    /// A closing, draining or aborting connection to finish (the linger time).
    Linger,
}

/// When a session's timer expires, and what it waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Timer {
    pub(super) at: Instant,
    pub(super) wait: Wait,
    /// Bytes the kernel still held for the peers when the timer was last looked
    /// at on expiry (`u32::MAX`: not looked at since it was armed); see
    /// `Worker::still_sending`.
    pub(super) unsent: u32,
}

impl Timer {
    pub(super) fn new(at: Instant, wait: Wait) -> Timer {
        Timer {
            at,
            wait,
            unsent: u32::MAX,
        }
    }
}

/// What to do with a session whose step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fail {
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

pub(super) type Step = Result<bool, Fail>;

/// One client connection.
pub(super) struct Client {
    /// The connection: plain, or TLS (`io::stream`).
    pub(super) io: Stream,
    /// The client's address: the peer's, or the one its PROXY header gave.
    pub(super) ip: IpAddr,
    /// The client's and the destination's addresses from a PROXY header (for a
    /// `send-proxy` backend); boxed, as most connections have none.
    pub(super) proxied: Option<Box<(SocketAddr, SocketAddr)>>,
    /// This connection, among all the worker ever had (never reused, unlike
    /// its slab key): what a backend connection private to it names.
    pub(super) id: u64,
    /// Backend connections private to it may be idle in the pool (see
    /// `Upstream::owner`): they close with it.
    pub(super) private_upstreams: bool,
    pub(super) ready: Ready,
    pub(super) bufs: Option<Box<Bufs>>,
    pub(super) phase: Phase,
    pub(super) timer: Timer,
    /// The client has shut down its sending side.
    pub(super) eof: bool,
    pub(super) drained: u32,
    /// When closing, wait for the client to close first: it may still be sending
    /// (a refused request, or a body the backend did not wait for).
    pub(super) linger: bool,
    /// A relay write was held back until the end of the event batch, and the
    /// client is in `Worker::flush_queue`.
    pub(super) queued: bool,
    /// It used up its turn and is in `Worker::yielded`.
    pub(super) yielded: bool,
    /// The pass of the loop (`Worker::turn`) in which it was last driven, and the
    /// steps it took in that pass.
    pub(super) turn: u16,
    pub(super) steps: u8,
}

impl Client {
    /// The exchange in progress, if there is one.
    pub(super) fn exchange(&self) -> Option<&Exchange> {
        match &self.phase {
            Phase::Exchange(x) => Some(x),
            _ => None,
        }
    }

    pub(super) fn exchange_mut(&mut self) -> Option<&mut Exchange> {
        match &mut self.phase {
            Phase::Exchange(x) => Some(x),
            _ => None,
        }
    }

    /// The backend connection of the exchange in progress.
    pub(super) fn upstream(&self) -> Option<usize> {
        self.exchange().and_then(|x| x.upstream)
    }

    /// Let go of the exchange's backend connection (the caller closes or pools it).
    pub(super) fn take_upstream(&mut self) -> Option<usize> {
        self.exchange_mut().and_then(|x| x.upstream.take())
    }

    /// In an exchange, everything the client sent so far has gone to the backend
    /// and more of the request body is to come: the exchange waits on the client.
    /// Not while a client that sent `Expect: 100-continue` and no body byte yet
    /// still waits for the backend's 100.
    #[inline]
    pub(super) fn waits_on_client_body(&self) -> bool {
        // Cheapest first: most requests have no body (or all of it is in).
        let Phase::Exchange(
            x @ Exchange {
                sending:
                    ReqState::Sending {
                        body, pending: 0, ..
                    },
                ..
            },
        ) = &self.phase
        else {
            return false;
        };
        if body.is_done()
            || self
                .bufs
                .as_ref()
                .is_none_or(|b| b.req_head_sent != b.req_head.len())
        {
            return false;
        }
        let awaiting_continue = x.req.expect_continue
            && x.resp == RespState::WAITING
            && *body == BodyScanner::new(x.req.framing);
        !awaiting_continue
    }

    /// Before the final response head, a head waits to be written to a client
    /// that does not take it: the exchange waits on the client, not the backend.
    pub(super) fn waits_on_client_reading(&self) -> bool {
        self.bufs
            .as_ref()
            .is_some_and(|b| b.resp_head_sent < b.resp_head.len())
    }

    /// Bytes wait to go out on either side of the exchange (checked after a step
    /// that held its writes back).
    pub(super) fn wants_flush(&self) -> bool {
        if self.io.pending_out() {
            return true;
        }
        let Phase::Exchange(x) = &self.phase else {
            return false;
        };
        self.bufs.as_ref().is_some_and(|b| {
            b.req_head_sent < b.req_head.len()
                || x.req_pending() > 0
                || b.resp_head_sent < b.resp_head.len()
                || x.resp.pending() > 0
        })
    }
}

impl Worker {
    /// Run a session until it can make no more progress or has used up its turn,
    /// handling failures.
    pub(super) fn drive(&mut self, ck: usize) {
        let c = &mut self.clients[ck];
        if c.turn != self.turn {
            // The first drive in this pass: a new turn.
            c.turn = self.turn;
            c.steps = 0;
        }
        let mut failed = false;
        let (more, moved) = loop {
            match self.pump(ck) {
                Ok(pumped) => break pumped,
                Err(fail) => {
                    if !self.fail(ck, fail) {
                        return;
                    }
                    failed = true;
                }
            }
        };
        let now = self.now;
        let c = &mut self.clients[ck];
        let moved = moved || failed;
        if more && !c.yielded {
            c.yielded = true;
            self.yielded.push(ck);
        }
        if self.defer_writes
            && !c.queued
            && (c.wants_flush()
                || c.upstream()
                    .and_then(|uk| self.upstreams.get(uk))
                    .is_some_and(|u| u.io.pending_out()))
        {
            c.queued = true;
            self.flush_queue.push(ck);
        }
        // An exchange's timer is re-armed when it moved, for what it waits for
        // now: the backend's head (the response timeout), or body bytes from
        // either side (the body timeout).
        if moved && let Phase::Exchange(x) = &c.phase {
            let wait = match x.resp {
                RespState::Body { .. } => Some(Wait::Body),
                RespState::Tunnel { .. } => Some(Wait::Tunnel),
                // A connect (or TLS handshake) in progress keeps its connect timer.
                RespState::Waiting { .. }
                    if x.upstream.is_some_and(|uk| self.upstreams[uk].setting_up()) =>
                {
                    None
                }
                RespState::Waiting { .. } if x.buffering || c.waits_on_client_body() => {
                    Some(Wait::ClientBody)
                }
                RespState::Waiting { .. } if c.waits_on_client_reading() => {
                    Some(Wait::ClientReading)
                }
                RespState::Waiting { .. } => Some(Wait::Response),
            };
            if let Some(wait) = wait {
                let after = if wait == Wait::Response {
                    self.timeouts.response
                } else {
                    self.timeouts.body
                };
                c.timer = Timer::new(now + after, wait);
            }
        }
        #[cfg(debug_assertions)]
        self.check_invariants(ck);
    }

    /// Step a session's state machine while it makes progress, until it has
    /// taken `MAX_STEPS_PER_TURN` steps in this pass of the loop (however many
    /// times it is driven in it); returns whether it could still move, and
    /// whether it moved.
    pub(super) fn pump(&mut self, ck: usize) -> Result<(bool, bool), Fail> {
        let mut moved = false;
        loop {
            let c = &mut self.clients[ck];
            if c.steps >= MAX_STEPS_PER_TURN {
                return Ok((true, moved));
            }
            c.steps += 1;
            // TLS records the socket did not take yet go out first.
            if c.io.pending_out() && c.ready.writable && !self.defer_writes {
                c.io.flush(&mut c.ready).map_err(|_| Fail::Close)?;
            }
            let progress = match c.phase {
                Phase::Preamble => self.step_preamble(ck)?,
                Phase::Head => self.step_head(ck)?,
                Phase::Exchange(_) => self.step_exchange_charged(ck)?,
                Phase::Closing => self.step_closing(ck)?,
                Phase::Draining => self.step_draining(ck)?,
                Phase::Aborting => step_aborting(&self.clients[ck])?,
            };
            if !progress {
                return Ok((false, moved));
            }
            moved = true;
        }
    }

    /// `step_exchange`, where what the step moved with its client past the
    /// first `STEP_BYTES` counts as more steps (the other phases move a buffer
    /// at most).
    fn step_exchange_charged(&mut self, ck: usize) -> Step {
        let before = self.metrics().client.total();
        let progress = self.step_exchange(ck)?;
        let bytes = self.metrics().client.total().wrapping_sub(before);
        if bytes > STEP_BYTES {
            let more = ((bytes - 1) / STEP_BYTES).min(u64::from(u8::MAX)) as u8;
            let c = &mut self.clients[ck];
            c.steps = c.steps.saturating_add(more);
        }
        Ok(progress)
    }

    pub(super) fn close_client(&mut self, ck: usize) {
        self.unhold(ck);
        self.stats().open.fetch_sub(1, Ordering::Relaxed);
        let mut c = self.clients.remove(ck);
        if let Some(uk) = c.take_upstream() {
            self.upstreams.remove(uk);
        }
        if c.private_upstreams {
            self.close_private_upstreams(c.id);
        }
        if let Some(bufs) = c.bufs.take() {
            self.bufs.give(bufs);
        }
    }

    /// Waiting for a request head: read, parse, and start the exchange.
    pub(super) fn step_head(&mut self, ck: usize) -> Step {
        let c = &mut self.clients[ck];
        if c.bufs.is_none() && !c.ready.readable && !c.eof {
            return Ok(false);
        }
        let bufs = c.bufs.get_or_insert_with(|| self.bufs.take());
        if !bufs.req.is_empty()
            && let Some((n, info, backend)) = parse_request_head(
                bufs,
                c.ip,
                c.io.is_tls(),
                &self.shared,
                &self.plan,
                self.now,
                {
                    // A new id per parse: this worker's random half, then a count.
                    self.requests_seen = self.requests_seen.wrapping_add(1);
                    self.request_id_seed | u128::from(self.requests_seen)
                },
            )?
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
            // The header timeout runs from a request's first byte (over TLS, the
            // first byte of the handshake or record that brings it), however many
            // reads the head takes.
            if bufs.req.is_empty() && c.timer.wait != Wait::Head {
                c.timer = Timer::new(self.now + self.timeouts.header, Wait::Head);
            }
            let handshaking = c.io.handshaking();
            let client = &self.shared.metrics[self.id].0.client;
            let read = read_counted(&mut c.io, &mut bufs.req, &mut c.ready, client);
            if handshaking {
                self.handshake_step(ck, &read);
            }
            let c = &mut self.clients[ck];
            return match read {
                Ok(ReadOutcome::Data) => Ok(true),
                Ok(ReadOutcome::Eof) => {
                    c.eof = true;
                    Ok(true)
                }
                Ok(ReadOutcome::Blocked) => {
                    if c.bufs.as_ref().is_some_and(|b| b.req.is_empty()) && !c.io.begun() {
                        c.timer = Timer::new(self.now + self.timeouts.idle, Wait::Idle);
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

    /// Count what a read in the middle of a client's TLS handshake did: the
    /// handshake finished, or failed (and why).
    #[cold]
    fn handshake_step(&mut self, ck: usize, read: &std::io::Result<ReadOutcome>) {
        let io = &mut self.clients[ck].io;
        let failed = match read {
            Err(e) => Some(tls_failure(e).map_or(TLS_FAILED_CLOSED, |t| t.failure.index())),
            Ok(ReadOutcome::Eof) if io.handshaking() => Some(TLS_FAILED_CLOSED),
            Ok(_) => None,
        };
        let version = if io.take_established() {
            io.tls_version().map(|v| (v, usize::from(io.tls_resumed())))
        } else {
            None
        };
        let metrics = self.metrics();
        if let Some((v, resumed)) = version {
            metrics.tls_handshakes[v][resumed].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(reason) = failed {
            metrics.tls_failures[reason].fetch_add(1, Ordering::Relaxed);
            if let Err(e) = read {
                crate::log!(
                    crate::log::Level::Debug,
                    "corelb: TLS handshake with {} failed: {e}",
                    self.clients[ck].ip
                );
            }
        }
    }

    pub(super) fn start_exchange(
        &mut self,
        ck: usize,
        info: RequestInfo,
        backend: usize,
    ) -> Result<(), Fail> {
        let c = &mut self.clients[ck];
        let bufs = c.bufs.as_mut().ok_or(Fail::Close)?;
        bufs.req_head_sent = 0;
        bufs.resp_head.clear();
        bufs.resp_head_sent = 0;
        bufs.resp.clear();
        // A new exchange begins with small chunks (see `Buf::settle`).
        bufs.req.settle();
        bufs.resp.settle();
        bufs.resp_bytes = 0;
        bufs.head_at = None;
        // A pipe moves bytes between sockets; over TLS they must pass through rustls.
        bufs.splice = self.plan.config.tune.splice && !c.io.is_tls();
        bufs.spliced = false;
        let mut x = Exchange::new(info, backend, self.now);
        x.close_after |= self.shutdown_deadline.is_some();
        // A body is buffered first (up to the request buffer), so a slow
        // uploader holds no backend connection meanwhile; not a client that
        // waits for a 100 Continue before it sends its body.
        x.buffering = !self.plan.config.tune.stream_uploads
            && !info.expect_continue
            && matches!(&x.sending, ReqState::Sending { body, .. } if !body.is_done());
        let buffering = x.buffering;
        c.phase = Phase::Exchange(x);
        if buffering {
            c.timer = Timer::new(self.now + self.timeouts.body, Wait::ClientBody);
            return Ok(());
        }
        self.hold(ck, backend);
        // Arms the timer: a connect, or the response head on a pooled connection
        // (a failure to connect arms its own, in `fail`).
        self.connect_upstream(ck, backend, true)
    }

    /// Relay one exchange: client -> backend (request) and backend -> client
    /// (response), then recycle the connections once the response is out.
    pub(super) fn step_exchange(&mut self, ck: usize) -> Step {
        let c = &mut self.clients[ck];
        let Some(uk) = c.upstream() else {
            if c.exchange().is_some_and(|x| x.buffering) {
                return self.step_buffering(ck);
            }
            return Err(Fail::Reject(Reject::BadGateway));
        };
        let u = &mut self.upstreams[uk];
        let m = Meters {
            client: &self.shared.metrics[self.id].0.client,
            backend: self.locals[u.backend].member.traffic(self.id),
        };
        if c.exchange().is_none_or(|x| x.resp.is_tunnel()) {
            return relay_tunnel(c, u, m);
        }
        let defer = self.defer_writes;
        let max_body = self.plan.config.max_body_bytes;
        // To an `https://` backend: records rustls made (the handshake, the
        // request it held until then) go out as the socket takes them.
        if !defer && u.io.pending_out() && u.ready.writable && u.io.flush(&mut u.ready).is_err() {
            return Err(Fail::Backend {
                reject: Reject::BadGateway,
                may_retry: !u.received,
            });
        }
        let progress = check_connected(u)?
            | relay_request(c, u, defer, max_body, m)?
            | relay_response(c, u, defer, m)?;
        let Phase::Exchange(x) = &c.phase else {
            return Err(Fail::Close);
        };
        if self.shared.access.is_some()
            && x.status != 0
            && let Some(bufs) = c.bufs.as_mut()
        {
            bufs.head_at.get_or_insert(self.now);
        }
        if x.resp.is_tunnel() {
            // The 101 is queued; from here on this session is a tunnel.
            let (backend, started) = (x.backend, x.started);
            let took = self.now.saturating_duration_since(started);
            self.stats().requests.fetch_add(1, Ordering::Relaxed);
            self.locals[backend].member.finished(self.id, 101, took);
            if self.shared.access.is_some() {
                self.log_access(ck, 101, Some(backend), Some(started));
            }
            return Ok(true);
        }
        let bufs = c.bufs.as_ref().ok_or(Fail::Close)?;
        if let RespState::Body {
            body, pending: 0, ..
        } = x.resp
            && bufs.resp_head.is_empty()
            && !bufs.piped()
        {
            let until_close_ended =
                body == BodyScanner::UntilClose && u.eof && bufs.resp.is_empty();
            if until_close_ended && u.reset {
                // A body delimited by the close, ended by a reset: a clean close
                // would tell the client it has all of it.
                return Err(Fail::Abort);
            }
            if body.is_done() || until_close_ended {
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

    /// Read the request body into the request buffer until all of it is there,
    /// or the buffer is full; then take a backend connection and relay as usual.
    /// Meanwhile the exchange waits on the client (the body timeout, then 408),
    /// and nothing of it reaches, or is counted against, a backend.
    fn step_buffering(&mut self, ck: usize) -> Step {
        let max_body = self.plan.config.max_body_bytes;
        let c = &mut self.clients[ck];
        let progress = take_request(c, max_body, &self.shared.metrics[self.id].0.client)?;
        let (Phase::Exchange(x), Some(bufs)) = (&mut c.phase, c.bufs.as_ref()) else {
            return Err(Fail::Close);
        };
        let all_in = match &x.sending {
            ReqState::Sending { body, .. } => body.is_done(),
            _ => true,
        };
        if !all_in && !bufs.req.is_full() {
            return Ok(progress);
        }
        x.buffering = false;
        let mut backend = x.backend;
        // The backend picked with the head may have gone out meanwhile (down,
        // drained, disabled): another one then, as for a retry.
        let now_ms = self.plan.health.ms_at(self.now);
        if !self.locals[backend].member.takes_requests(now_ms) {
            let gone = backend;
            backend = self
                .other_backend(gone)
                .ok_or(Fail::Reject(Reject::Unavailable))?;
            let c = &mut self.clients[ck];
            if let Some(x) = c.exchange_mut() {
                x.backend = backend;
            }
            // The head names the backend it was written for (`--rewrite-host`).
            if self.shared.rewrite_host
                && let Some(bufs) = c.bufs.as_mut()
            {
                crate::http::rewrite::retarget_host(
                    &mut bufs.req_head,
                    &self.locals[gone].member.name,
                    &self.locals[backend].member.name,
                );
            }
        }
        self.hold(ck, backend);
        self.connect_upstream(ck, backend, true)?;
        Ok(true)
    }

    /// The response has been written in full: recycle or close the backend
    /// connection, then wait for the next request or close.
    pub(super) fn finish_exchange(&mut self, ck: usize) -> Result<(), Fail> {
        self.stats().requests.fetch_add(1, Ordering::Relaxed);
        self.unhold(ck);
        let Phase::Exchange(x) = &self.clients[ck].phase else {
            return Err(Fail::Close);
        };
        let (status, backend, started) = (x.status, x.backend, x.started);
        if self.clients[ck].bufs.as_ref().is_some_and(|b| b.spliced) {
            self.metrics().spliced.fetch_add(1, Ordering::Relaxed);
        }
        // What the end of the exchange decides: whether its backend connection
        // may be pooled, and whether the client connection stays open.
        // A backend may answer a request with `Expect: 100-continue` without
        // reading its body and keep the connection open (RFC 9110 §10.1.1 wants it
        // to close or read and discard the body; not every server does): it would
        // read that body as a request of its own, and its answer would go to the
        // next exchange on the connection. Such a connection is never pooled.
        let expected_body =
            x.req.expect_continue && !matches!(x.req.framing, Framing::None | Framing::Length(0));
        let reusable = matches!(x.resp, RespState::Body { reusable: true, .. })
            && x.req_sent()
            && !expected_body;
        let close = x.close_after || !x.req_sent();
        let linger = !x.req_sent() || x.req.keep_alive;
        let took = self.now.saturating_duration_since(started);
        self.locals[backend].member.finished(self.id, status, took);
        if self.shared.access.is_some() {
            self.log_access(ck, status, Some(backend), Some(started));
        }
        let now = self.now;
        let c = &mut self.clients[ck];
        let (Some(bufs), Phase::Exchange(x)) = (c.bufs.as_mut(), &mut c.phase) else {
            return Err(Fail::Close);
        };
        if let Some(uk) = x.upstream.take() {
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
                && local.member.pools()
                && reusable
                && local.idle.len() < self.plan.config.tune.max_idle_per_backend
            {
                u.role = Role::Idle { since: now };
                // Bytes the backend still sends after this response must arrive
                // while the connection is idle, where they are caught, not be held
                // back (Nagle) until the next request carries our ACK and then be
                // read as its answer, and the next, and the next.
                crate::io::ack_now(u.io.tcp());
                local.idle.push(uk);
            } else {
                self.discard_upstream(uk, found);
            }
        }
        let c = &mut self.clients[ck];
        let bufs = c.bufs.as_mut().ok_or(Fail::Close)?;
        bufs.resp.clear();
        if close {
            // The client may still be sending: the rest of this request's body,
            // or, if it did not ask to close, requests pipelined behind it. A
            // close with their bytes unread would be a reset, which can destroy
            // the response still on its way (see `step_closing`).
            c.linger |= linger;
            c.phase = Phase::Closing;
            c.timer = Timer::new(now + self.timeouts.linger, Wait::Linger);
        } else {
            c.phase = Phase::Head;
            // The next head, and a body buffered before its backend is chosen,
            // are read into small chunks again (see `Buf::settle`).
            bufs.req.settle();
            bufs.resp.settle();
            // Bytes of a pipelined request already here are a head begun.
            let wait = if bufs.req.is_empty() {
                Wait::Idle
            } else {
                Wait::Head
            };
            c.timer = Timer::new(now + self.timeouts.idle, wait);
            if self.shutdown_deadline.is_some() {
                c.timer.at = c.timer.at.min(now + DRAIN_GRACE);
            }
        }
        Ok(())
    }
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
