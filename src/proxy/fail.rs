//! Where a request fails: counting a failure against its backend, retrying on
//! another one when that cannot send the request twice, or answering locally.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::backends::select;
use crate::http::Reject;
use crate::http::rewrite::{self};

use super::bufs::Bufs;
use super::exchange::{Exchange, Kept};
use super::session::{Fail, Phase, Timer, Wait};
use super::upstream::Upstream;
use super::worker::Worker;

impl Worker {
    /// Handle a failed step; returns whether the session still exists.
    pub(super) fn fail(&mut self, ck: usize, fail: Fail) -> bool {
        match fail {
            Fail::Close => {
                if self.clients[ck].owes_close_notify() {
                    self.close_gracefully(ck);
                    return true;
                }
                self.close_client(ck);
                false
            }
            Fail::Abort => {
                self.unhold(ck);
                // A TLS backend that failed mid-body is counted and logged too.
                if let Some(uk) = self.clients[ck].upstream() {
                    self.backend_tls_failed(uk);
                }
                let now = self.now;
                let c = &mut self.clients[ck];
                if let Some(uk) = c.take_upstream() {
                    self.upstreams.remove(uk);
                }
                if let Some(bufs) = c.bufs.take() {
                    self.bufs.give(bufs);
                }
                c.phase = Phase::Aborting;
                c.timer = Timer::new(now + self.timeouts.linger, Wait::Linger);
                true
            }
            Fail::Reset => {
                let sock = socket2::SockRef::from(self.clients[ck].io.tcp());
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
                let started = c.exchange().is_some_and(|x| {
                    (x.resp.is_body() && !final_head_unsent) || x.resp.is_tunnel()
                }) || head_partly_out;
                if matches!(c.phase, Phase::Closing | Phase::Draining | Phase::Aborting) {
                    self.close_client(ck);
                    return false;
                }
                if started {
                    // Part of a response is already out: ending the connection is the
                    // only signal left.
                    return self.fail(ck, Fail::Abort);
                }
                if let Some(uk) = c.take_upstream() {
                    self.upstreams.remove(uk);
                }
                let exchange = c.exchange().map(|x| (x.req.is_head, x.started));
                // A request read to its end leaves the client nothing to send
                // that the refusal cuts off: the close need not linger unless
                // more input is pending (see `step_closing`), as nginx decides.
                let read_whole = c.exchange().is_some_and(|x| x.sending.read_whole());
                self.unhold(ck);
                let c = &mut self.clients[ck];
                let bufs = c.bufs.get_or_insert_with(|| self.bufs.take());
                // The request answered: the exchange's, or the head being parsed.
                let head_request = match exchange {
                    Some((is_head, _)) => is_head,
                    None => bufs.req.filled().starts_with(b"HEAD "),
                };
                bufs.resp.clear();
                bufs.resp_head.clear();
                bufs.resp_head
                    .extend_from_slice(reject.response_to(head_request));
                self.shared.metrics[self.id].0.local.count(reject.status());
                bufs.resp_head_sent = 0;
                c.linger = !read_whole;
                c.phase = Phase::Closing;
                c.timer = Timer::new(now + self.timeouts.linger, Wait::Linger);
                if self.shared.access.is_some() {
                    // Timed from its head only if the refused request got that far.
                    let started = exchange.map(|(_, started)| started);
                    self.log_access(ck, reject.status(), None, started);
                }
                true
            }
            Fail::Backend { reject, may_retry } => {
                let Some(x) = self.clients[ck].exchange() else {
                    return self.fail(ck, Fail::Close);
                };
                let (failed, attempts, upstream) = (x.backend, x.attempts, x.upstream);
                if let Some(uk) = upstream {
                    self.backend_tls_failed(uk);
                }
                let Some(x) = self.clients[ck].exchange() else {
                    return self.fail(ck, Fail::Close);
                };
                if !x.charged {
                    self.plan.health.record_failure(&self.locals[failed].member);
                }
                if !may_retry || u32::from(attempts) >= self.plan.config.retries {
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
                    self.locals[failed].member.name,
                    self.locals[next].member.name,
                    reject.status()
                );
                let c = &mut self.clients[ck];
                if let Some(x) = c.exchange_mut() {
                    x.attempts += 1;
                    x.charged = next == failed;
                }
                if self.shared.rewrite_host
                    && let Some(bufs) = c.bufs.as_mut()
                {
                    rewrite::retarget_host(
                        &mut bufs.req_head,
                        &self.locals[failed].member.name,
                        &self.locals[next].member.name,
                    );
                }
                self.resend(ck, next, true)
            }
            Fail::Retry => {
                let Some(x) = self.clients[ck].exchange_mut() else {
                    return self.fail(ck, Fail::Close);
                };
                x.retried = true;
                let backend = x.backend;
                self.resend(ck, backend, false)
            }
        }
    }

    /// Log and count why TLS to a backend failed, if it did (at most one line
    /// per second per worker).
    #[cold]
    fn backend_tls_failed(&mut self, uk: usize) {
        let Some((failure, why)) = self.upstreams.get_mut(uk).and_then(|u| u.tls_failed.take())
        else {
            return;
        };
        self.metrics().upstream_tls_failures[failure.index()].fetch_add(1, Ordering::Relaxed);
        if self.now >= self.quiet_tls_until {
            self.quiet_tls_until = self.now + Duration::from_secs(1);
            let backend = self.upstreams[uk].backend;
            crate::log!(
                crate::log::Level::Warn,
                "corelb: backend {}: {why} (at most one such line per second per worker)",
                self.locals[backend].member.name
            );
        }
    }

    /// Send the request again, from its start, to `backend` (on a pooled connection
    /// if `reuse` allows); returns whether the session still exists.
    pub(super) fn resend(&mut self, ck: usize, backend: usize, reuse: bool) -> bool {
        let c = &mut self.clients[ck];
        let Some(x) = c.exchange_mut() else {
            return self.fail(ck, Fail::Close);
        };
        // What was sent is sent again: the kept bytes are pending once more.
        if !x.rewind() {
            // Bytes of it were let go (`retry_or` does not ask for this).
            return self.fail(ck, Fail::Reject(Reject::BadGateway));
        }
        x.backend = backend;
        self.metrics().retries.fetch_add(1, Ordering::Relaxed);
        let c = &mut self.clients[ck];
        if let Some(uk) = c.take_upstream() {
            self.upstreams.remove(uk);
        }
        if let Some(bufs) = c.bufs.as_mut() {
            bufs.req_head_sent = 0;
            bufs.resp.clear();
        }
        match self.connect_upstream(ck, backend, reuse) {
            Ok(()) => true,
            Err(f) => self.fail(ck, f),
        }
    }

    /// An up backend other than `failed` for a retry (the failed one if it is the
    /// only one up); `None` if all are down. Both are indexes in `locals`.
    pub(super) fn other_backend(&self, failed: usize) -> Option<usize> {
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
}

/// The backend connection failed before any response byte. A reused one may just
/// have gone stale (the backend closed it as the request went out): the request is
/// sent again on a fresh connection, once, if nothing of it was sent, or if it is
/// idempotent and all of it is still at hand (see `exchange::Kept`). A
/// request that may have been received and must not be replayed (RFC 9110 §9.2.2)
/// gets `reject`; a stale connection is not counted against the backend. A fresh
/// connection's failure is the backend's, and the request may go to another one
/// under the same rule.
pub(super) fn retry_or(x: &Exchange, bufs: &Bufs, u: &Upstream, reject: Reject) -> Fail {
    // Over TLS, what went into a handshake that never finished reached no
    // backend: rustls sends no application data before the end of it.
    let nothing_sent = bufs.req_head_sent == 0 || u.io.handshaking();
    let kept_all = matches!(x.kept(), Kept::All(_));
    let replayable = kept_all && (nothing_sent || x.req.idempotent);
    if u.reused() && !u.received {
        return if replayable && !x.retried {
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
