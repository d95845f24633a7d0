//! Backend connections: what each is doing (`Role`: connecting, busy, idle),
//! connecting, the per-backend idle pool (`checkout`), and what a pooled
//! connection may hold (`Leftover`): only a connection at a message boundary is
//! ever handed to another exchange.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Interest;
use mio::net::TcpStream;

use crate::backends::Member;
use crate::config::SendProxy;
use crate::http::Reject;
use crate::io::Ready;
use crate::io::stream::{Stream, Tls, TlsFailure};

use super::session::{Fail, Step, Timer, Wait};
use super::worker::{Worker, upstream_token};
use super::{DISTRUST, NON_IDEMPOTENT_MAX_IDLE};

/// One connection to a backend, either serving a client or idle in the pool.
pub(super) struct Upstream {
    /// The connection: plain, or TLS for an `https://` backend.
    pub(super) io: Stream,
    pub(super) backend: usize,
    pub(super) ready: Ready,
    pub(super) role: Role,
    /// Bytes arrived for the current exchange.
    pub(super) received: bool,
    pub(super) eof: bool,
    /// The stream ended with a reset (or another read error), not a FIN.
    pub(super) reset: bool,
    /// TLS to the backend failed (its handshake, a record), and why: logged and
    /// counted when the exchange fails with it.
    pub(super) tls_failed: Option<(TlsFailure, String)>,
    /// The client connection (`Client::id`) it is private to: to a backend
    /// that gets PROXY headers, a connection told one client's address serves
    /// that client connection only. 0: shared by all.
    pub(super) owner: u64,
    /// The PROXY header to send first, once the TCP connect is done (before a
    /// TLS handshake too).
    pub(super) preface: Option<Box<[u8]>>,
    /// Request bytes rustls took while the handshake to an `https://` backend
    /// was still going: counted as sent once it is done; a failed handshake
    /// sent none (and the request goes to another backend, counted there).
    pub(super) held_in_handshake: usize,
}

/// What a backend connection is doing, with what that needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// A new connection being set up for session `client`.
    Connecting { client: usize },
    /// Carrying the exchange of session `client`. `reused`: it carried an
    /// earlier one, so a failure before any byte may mean it went stale.
    Busy { client: usize, reused: bool },
    /// In its backend's idle pool since then (it has carried an exchange).
    Idle { since: Instant },
}

impl Upstream {
    /// The session it serves, if it is not idle.
    pub(super) fn client(&self) -> Option<usize> {
        match self.role {
            Role::Connecting { client } | Role::Busy { client, .. } => Some(client),
            Role::Idle { .. } => None,
        }
    }

    pub(super) fn connected(&self) -> bool {
        !matches!(self.role, Role::Connecting { .. })
    }

    /// Its TCP connect, or over TLS its handshake, is not done: the connect
    /// timeout still applies, and a failure then is one no request byte
    /// reached the backend through (rustls sends none before the handshake
    /// ends), so the request may go to another backend.
    pub(super) fn setting_up(&self) -> bool {
        !self.connected() || self.io.handshaking()
    }

    /// It carried an earlier exchange (idle ones all have).
    pub(super) fn reused(&self) -> bool {
        matches!(
            self.role,
            Role::Busy { reused: true, .. } | Role::Idle { .. }
        )
    }

    /// How long it has been idle (zero if it is not).
    pub(super) fn idle_for(&self, now: Instant) -> Duration {
        match self.role {
            Role::Idle { since } => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        }
    }
}

/// A backend as one worker sees it. Exchanges and backend connections name their
/// backend by its index in `Worker::locals`, which a reload does not change.
pub(super) struct Local {
    pub(super) member: Arc<Member>,
    /// Idle connections to it, most recently used last (LIFO).
    pub(super) idle: Vec<usize>,
    /// In the configuration in force. One that a reload removed stays while
    /// connections still refer to it, and its place is then reused.
    pub(super) live: bool,
    /// Until then, no connection to it is pooled: it sent bytes that belong to no
    /// response (see `DISTRUST`).
    pub(super) distrust_until: Instant,
}

impl Worker {
    /// An event on a backend connection (its readiness was noted before the batch
    /// was handled, see `Worker::run`).
    pub(super) fn on_upstream_event(&mut self, uk: usize) {
        let Some(u) = self.upstreams.get(uk) else {
            return;
        };
        match u.client() {
            Some(ck) => self.drive(ck),
            None => self.check_idle_upstream(uk),
        }
    }

    /// An idle pooled connection became readable: the backend closed it, or sent
    /// bytes nobody asked for. Either way it cannot be reused.
    #[cold]
    pub(super) fn check_idle_upstream(&mut self, uk: usize) {
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
    pub(super) fn discard_upstream(&mut self, uk: usize, found: Leftover) {
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
                    local.member.name,
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
    /// `owner` is the client connection asking (`Client::id`) when the backend
    /// gets PROXY headers, else 0: only a connection of that owner is taken.
    pub(super) fn checkout(
        &mut self,
        backend: usize,
        max_idle: Option<Duration>,
        owner: u64,
    ) -> Option<usize> {
        // The usual case, kept short: the newest idle connection, nothing on it.
        let idle = &mut self.locals[backend].idle;
        let &uk = idle.last()?;
        let u = &self.upstreams[uk];
        if owner == 0
            && u.owner == 0
            && max_idle.is_none()
            && !u.ready.readable
            && !u.ready.read_closed
        {
            idle.pop();
            return Some(uk);
        }
        if owner != 0 {
            return self.checkout_own(backend, max_idle, owner);
        }
        self.checkout_carefully(backend, max_idle)
    }

    /// `checkout` of a connection private to the client connection `owner`.
    #[cold]
    #[inline(never)]
    fn checkout_own(
        &mut self,
        backend: usize,
        max_idle: Option<Duration>,
        owner: u64,
    ) -> Option<usize> {
        loop {
            let idle = &mut self.locals[backend].idle;
            let at = idle
                .iter()
                .rposition(|&k| self.upstreams[k].owner == owner)?;
            let uk = idle[at];
            let u = &mut self.upstreams[uk];
            if max_idle.is_some_and(|max| u.idle_for(self.now) > max) {
                // Too old for this request (its others are older still); it
                // stays for the next one of this client that may take it.
                return None;
            }
            idle.remove(at);
            if let Some(uk) = self.vet(uk, max_idle.is_some()) {
                return Some(uk);
            }
        }
    }

    /// An idle connection just taken off its list: it, if nothing came on it
    /// since its last response, else it is closed and `None`. A request that
    /// must not be replayed (`careful`) pays for a read that makes sure
    /// nothing arrived since the last poll (the flags are as of then).
    fn vet(&mut self, uk: usize, careful: bool) -> Option<usize> {
        let u = &mut self.upstreams[uk];
        let found = if careful {
            leftover(u)
        } else {
            leftover_seen(u)
        };
        if found == Leftover::Nothing {
            return Some(uk);
        }
        self.discard_upstream(uk, found);
        None
    }

    /// A client connection that ends takes the idle connections private to it
    /// (to backends that get PROXY headers) along: nobody else may use them.
    pub(super) fn close_private_upstreams(&mut self, owner: u64) {
        let upstreams = &mut self.upstreams;
        for local in &mut self.locals {
            local.idle.retain(|&uk| {
                let mine = upstreams[uk].owner == owner;
                if mine {
                    upstreams.remove(uk);
                }
                !mine
            });
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn checkout_carefully(
        &mut self,
        backend: usize,
        max_idle: Option<Duration>,
    ) -> Option<usize> {
        while let Some(&uk) = self.locals[backend].idle.last() {
            let u = &mut self.upstreams[uk];
            if max_idle.is_some_and(|max| u.idle_for(self.now) > max) {
                // The rest of the list has been idle even longer.
                return None;
            }
            self.locals[backend].idle.pop();
            // A connection private to a client is no one else's (a backend
            // stops or starts getting PROXY headers only as a new member, so
            // none is here; should one be, it is closed).
            if u.owner != 0 {
                self.discard_upstream(uk, Leftover::Closed);
                continue;
            }
            if let Some(uk) = self.vet(uk, max_idle.is_some()) {
                return Some(uk);
            }
        }
        None
    }

    /// Count the exchange as in flight on `backend`, for the algorithms that
    /// compare loads (nothing is counted for the others).
    /// The exchange must not be held already (see `unhold`).
    pub(super) fn hold(&mut self, ck: usize, backend: usize) {
        if self.plan.count_inflight
            && let Some(x) = self.clients[ck].exchange_mut()
        {
            self.locals[backend].member.acquire();
            x.backend = backend;
            x.holding = true;
        }
    }

    /// The exchange is over (or moved): stop counting it (even if a reload has
    /// since chosen an algorithm that does not count).
    pub(super) fn unhold(&mut self, ck: usize) {
        if let Some(x) = self.clients.get_mut(ck).and_then(|c| c.exchange_mut())
            && std::mem::take(&mut x.holding)
        {
            self.locals[x.backend].member.release();
        }
    }

    /// Give the client a backend connection: an idle pooled one if `reuse` allows and
    /// one exists (LIFO: the most recently used is the least likely to be stale),
    /// else a new non-blocking connect.
    pub(super) fn connect_upstream(
        &mut self,
        ck: usize,
        backend: usize,
        reuse: bool,
    ) -> Result<(), Fail> {
        // A request that must not be replayed avoids connections idle long enough
        // for the backend to be closing them as it arrives (see README, upstream pool).
        let idempotent = self.clients[ck].exchange().is_none_or(|x| x.req.idempotent);
        let max_idle = (!idempotent).then_some(NON_IDEMPOTENT_MAX_IDLE);
        let send_proxy = self.locals[backend].member.send_proxy;
        let owner = match send_proxy {
            SendProxy::Off => 0,
            _ => self.clients[ck].id,
        };
        let pooled = if reuse {
            self.checkout(backend, max_idle, owner)
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
                u.role = Role::Busy {
                    client: ck,
                    reused: true,
                };
                u.received = false;
                // Connected already: the wait is for the response head (a resend
                // from the sweep must not keep an expired connect timer).
                self.clients[ck].timer =
                    Timer::new(self.now + self.timeouts.response, Wait::Response);
                uk
            }
            None => {
                let preface = match send_proxy {
                    SendProxy::Off => None,
                    version => Some(self.proxy_header_for(ck, version)?),
                };
                let member = &self.locals[backend].member;
                let sock = TcpStream::connect(member.addr).map_err(|_| Fail::Backend {
                    reject: Reject::BadGateway,
                    may_retry: true,
                })?;
                let _ = sock.set_nodelay(true);
                // An `https://` backend: the handshake starts with the request's
                // first write (rustls holds the request until it is done).
                let mut io = match (&member.tls, &self.plan.backend_tls) {
                    (Some(name), Some(config)) => {
                        let conn = rustls::ClientConnection::new(Arc::clone(config), name.clone())
                            .map_err(|_| Fail::Reject(Reject::BadGateway))?;
                        Stream::Tls(Tls::new(sock, rustls::Connection::Client(conn)))
                    }
                    _ => Stream::Plain(sock),
                };
                let entry = self.upstreams.vacant_entry();
                let uk = entry.key();
                self.ctx
                    .poll
                    .registry()
                    .register(
                        io.tcp_mut(),
                        upstream_token(uk),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|_| Fail::Reject(Reject::BadGateway))?;
                entry.insert(Upstream {
                    io,
                    backend,
                    ready: Ready::default(),
                    role: Role::Connecting { client: ck },
                    received: false,
                    eof: false,
                    reset: false,
                    tls_failed: None,
                    owner,
                    preface,
                    held_in_handshake: 0,
                });
                if owner != 0 {
                    self.clients[ck].private_upstreams = true;
                }
                self.clients[ck].timer =
                    Timer::new(self.now + self.timeouts.connect, Wait::Connect);
                uk
            }
        };
        match self.clients[ck].exchange_mut() {
            Some(x) => x.upstream = Some(uk),
            None => {
                self.upstreams.remove(uk);
                return Err(Fail::Close);
            }
        }
        Ok(())
    }
}

/// What a backend connection that owes no response holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Leftover {
    Nothing,
    /// Bytes that belong to no response.
    Bytes,
    /// An end of stream (or an error).
    Closed,
    /// Over TLS, part of a record: it may be a late session ticket cut by the
    /// network as well as bytes of no response, so the connection is closed
    /// without distrusting the backend.
    Unfinished,
}

/// Look for bytes or an end of stream waiting on a backend connection that owes
/// no response: one read, which on a quiet socket fails with WouldBlock.
#[cold]
pub(super) fn leftover(u: &mut Upstream) -> Leftover {
    if u.eof || u.ready.read_closed {
        return Leftover::Closed;
    }
    let mut scratch = [0u8; 64];
    loop {
        return match u.io.read_some(&mut scratch) {
            Ok(0) => Leftover::Closed,
            Ok(_) => Leftover::Bytes,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                u.ready.readable = false;
                if u.io.mid_record() {
                    Leftover::Unfinished
                } else {
                    Leftover::Nothing
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => Leftover::Closed,
        };
    }
}

/// `leftover`, but only when the connection's state says something may have come
/// (an end of stream, or readiness not yet cleared by a read that found nothing):
/// a socket drained by a short read raises a new edge for anything that arrives.
pub(super) fn leftover_seen(u: &mut Upstream) -> Leftover {
    if u.eof || u.ready.readable || u.ready.read_closed || u.io.mid_record() {
        leftover(u)
    } else {
        Leftover::Nothing
    }
}

/// A new backend connection: has the connect finished, or failed?
pub(super) fn check_connected(u: &mut Upstream) -> Step {
    const REFUSED: Fail = Fail::Backend {
        reject: Reject::BadGateway,
        may_retry: true,
    };
    let mut progress = false;
    if let Role::Connecting { client } = u.role
        && (u.ready.writable || u.ready.readable)
    {
        match u.io.tcp().take_error() {
            Ok(None) => {}
            _ => return Err(REFUSED),
        }
        match u.io.tcp().peer_addr() {
            Ok(_) => {
                // The PROXY header goes first, alone on the new connection: a
                // socket that has sent nothing takes a hundred bytes whole.
                if let Some(preface) = u.preface.take() {
                    let sent = io::Write::write(&mut u.io.tcp(), &preface);
                    if !sent.is_ok_and(|n| n == preface.len()) {
                        return Err(REFUSED);
                    }
                }
                u.role = Role::Busy {
                    client,
                    reused: false,
                };
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
