//! The isolation invariants, as code: what a session or a backend connection may
//! hold in each state. Checked after every drive of a session and at every sweep
//! in debug and test builds (so every test and the session fuzzer run them);
//! compiled out of release builds.

use super::MAX_INTERIM;
use super::exchange::RespState;
use super::session::Phase;
use super::worker::Worker;

impl Worker {
    /// Panic with what broke if session `ck` (or its backend connection) is in a
    /// state that could let bytes of one exchange reach another.
    pub(super) fn check_invariants(&self, ck: usize) {
        if let Err(broken) = self.session_invariants(ck) {
            panic!("session {ck} breaks an invariant: {broken}");
        }
    }

    /// Every session, every backend connection and every idle list.
    pub(super) fn check_all_invariants(&self) {
        for (ck, c) in self.clients.iter() {
            self.check_invariants(ck);
            // The flags that say a session is in a list, and the lists (a session
            // marked yielded but not listed would never be driven again).
            assert!(
                !c.queued,
                "session {ck} is marked for a flush after the flush"
            );
            assert!(
                !c.yielded || self.yielded.contains(&ck),
                "session {ck} is marked yielded but is not in the list"
            );
        }
        for (uk, u) in self.upstreams.iter() {
            let listed = self.locals[u.backend]
                .idle
                .iter()
                .filter(|&&k| k == uk)
                .count();
            let ok = match u.client() {
                Some(ck) => {
                    listed == 0
                        && self
                            .clients
                            .get(ck)
                            .is_some_and(|c| c.upstream() == Some(uk))
                }
                // Idle: pooled exactly once, nothing of an exchange left on it, and
                // nothing seen arriving since (that closes it at once).
                None => listed == 1 && !u.eof && !u.ready.readable && !u.ready.read_closed,
            };
            assert!(ok, "backend connection {uk} breaks an invariant");
        }
        for (b, local) in self.locals.iter().enumerate() {
            for &uk in &local.idle {
                assert!(
                    self.upstreams
                        .get(uk)
                        .is_some_and(|u| u.client().is_none() && u.backend == b),
                    "idle list {b} holds {uk}, which is not idle there"
                );
            }
        }
    }

    fn session_invariants(&self, ck: usize) -> Result<(), &'static str> {
        fn ensure(ok: bool, broken: &'static str) -> Result<(), &'static str> {
            if ok { Ok(()) } else { Err(broken) }
        }
        let c = &self.clients[ck];
        if let Some(b) = &c.bufs {
            for buf in [&b.req, &b.resp] {
                ensure(
                    !buf.is_empty() || !buf.holds_storage(),
                    "an empty buffer holds on to its storage",
                )?;
            }
        }
        if let Some(x) = c.exchange()
            && let Some(uk) = x.upstream
        {
            let u = self
                .upstreams
                .get(uk)
                .ok_or("its backend connection is gone")?;
            ensure(
                u.client() == Some(ck),
                "its backend connection serves another session",
            )?;
            ensure(
                u.backend == x.backend,
                "its backend connection is to another backend",
            )?;
            ensure(
                !self.locals[u.backend].idle.contains(&uk),
                "its backend connection is also in the idle pool",
            )?;
        }
        match &c.phase {
            Phase::Preamble => {
                ensure(
                    c.bufs.is_none(),
                    "before its PROXY header, it holds buffers",
                )?;
            }
            Phase::Head => {
                if let Some(b) = &c.bufs {
                    ensure(
                        b.resp.is_empty(),
                        "between requests, response bytes are left",
                    )?;
                    ensure(
                        b.resp_head.is_empty() && b.resp_head_sent == 0,
                        "between requests, a response head is left",
                    )?;
                    ensure(
                        !b.piped(),
                        "between requests, response bytes are in the pipe",
                    )?;
                }
            }
            Phase::Exchange(x) => {
                let b = c.bufs.as_ref().ok_or("in an exchange without buffers")?;
                ensure(
                    x.upstream.is_some() != x.buffering,
                    "in an exchange without a backend connection (or buffering with one)",
                )?;
                ensure(
                    x.kept().len() + x.req_pending() <= b.req.len(),
                    "more request bytes accounted for than buffered",
                )?;
                ensure(
                    x.resp.pending() <= b.resp.len(),
                    "more response bytes pending than buffered",
                )?;
                ensure(
                    b.req_head_sent <= b.req_head.len(),
                    "more of the request head sent than it has",
                )?;
                ensure(
                    b.resp_head_sent <= b.resp_head.len(),
                    "more of a response head sent than it has",
                )?;
                ensure(
                    !x.req_sent() || b.req_head_sent == b.req_head.len(),
                    "the request is sent with bytes of its head unsent",
                )?;
                ensure(
                    !matches!(x.resp, RespState::Waiting { interim } if interim > MAX_INTERIM),
                    "more interim responses than allowed",
                )?;
                ensure(
                    b.resp_head.windows(4).filter(|w| w == b"\r\n\r\n").count() <= 1,
                    "more than one response head queued",
                )?;
                ensure(
                    !b.piped() || x.resp.is_body(),
                    "pipe bytes outside a response body",
                )?;
            }
            Phase::Closing | Phase::Draining | Phase::Aborting => {
                ensure(
                    !c.phase.is_aborting() || c.bufs.is_none(),
                    "aborting with buffers",
                )?;
            }
        }
        Ok(())
    }
}
