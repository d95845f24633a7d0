//! One exchange (a request and its response) as data: what each direction has
//! seen so far, as an enum per direction whose variants carry only what that
//! state needs, so a state that cannot happen cannot be written down.

use std::time::Instant;

use crate::http::{BodyScanner, RequestInfo};
use crate::io::buffer::Buf;

/// The request direction: the rewritten head (`Bufs::req_head`), then body bytes
/// as they are found in `Bufs::req`, to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReqState {
    /// Head or body bytes are still to go out.
    Sending {
        /// Where the body ends.
        body: BodyScanner,
        /// Bytes of `Bufs::req`, after the kept ones, known to be body and not
        /// yet sent.
        pending: usize,
        kept: Kept,
    },
    /// Every byte of the request went out.
    Sent { kept: Kept },
    /// The backend stopped taking the request after it began to answer: the
    /// rest of the body is read and dropped, and the connection closes after the
    /// response (see `Worker::finish_exchange`).
    Dropping { body: BodyScanner },
}

impl ReqState {
    /// Every byte of the request has come from the client (sent on or not).
    pub(super) fn read_whole(&self) -> bool {
        match self {
            ReqState::Sending { body, .. } | ReqState::Dropping { body } => body.is_done(),
            ReqState::Sent { .. } => true,
        }
    }
}

/// Body bytes sent to a backend that may yet turn out not to have read them (a
/// pooled connection that went stale as the request went out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kept {
    /// The first `n` bytes of `Bufs::req` went out and are kept until the first
    /// response byte: all of the request can still be sent again. (A `u32`, as a
    /// buffer holds at most `config::MAX_HEADER_BYTES` bytes: it keeps an idle
    /// session within its budget, see `session::tests`.)
    All(u32),
    /// Sent bytes were let go: the request can no longer be sent again.
    Released,
}

impl Kept {
    /// How many sent bytes are kept at the front of `Bufs::req`.
    pub(super) fn len(self) -> usize {
        match self {
            Kept::All(n) => n as usize,
            Kept::Released => 0,
        }
    }
}

/// The response direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RespState {
    /// No final response head yet, after `interim` 1xx ones (more than
    /// `MAX_INTERIM` is a 502): a local error response can still be sent.
    Waiting { interim: u16 },
    /// The final head is queued; its body is being relayed.
    Body {
        /// Where the body ends.
        body: BodyScanner,
        /// Bytes at the front of `Bufs::resp` known to be body, not yet written.
        pending: usize,
        /// The backend connection may be pooled once the body is out.
        reusable: bool,
    },
    /// The backend switched protocols (101): bytes flow both ways, unparsed,
    /// until both sides have closed. Each flag: our sending side toward the
    /// backend / the client is shut (its peer ended its stream and everything it
    /// sent is delivered).
    Tunnel {
        backend_shut: bool,
        client_shut: bool,
    },
}

impl RespState {
    pub(super) const WAITING: RespState = RespState::Waiting { interim: 0 };

    /// The final head is in: its body, or a tunnel.
    pub(super) fn is_body(&self) -> bool {
        matches!(self, RespState::Body { .. })
    }

    pub(super) fn is_tunnel(&self) -> bool {
        matches!(self, RespState::Tunnel { .. })
    }

    /// Response body bytes known and not yet written.
    pub(super) fn pending(&self) -> usize {
        match self {
            RespState::Body { pending, .. } => *pending,
            _ => 0,
        }
    }
}

/// One request and its response, relayed.
pub(super) struct Exchange {
    pub(super) req: RequestInfo,
    pub(super) sending: ReqState,
    pub(super) resp: RespState,
    /// The backend connection it uses (none while one is being found, or while
    /// the body is buffered).
    pub(super) upstream: Option<usize>,
    /// The request body is read into the request buffer before a backend
    /// connection is taken (see `Worker::step_buffering`).
    pub(super) buffering: bool,
    pub(super) close_after: bool,
    pub(super) backend: usize,
    pub(super) retried: bool,
    /// Times the request was moved to another backend after a failure.
    pub(super) attempts: u8,
    /// A failure of this request on `backend` was counted against it already:
    /// the retry went to the same backend (the only one up), and one request
    /// counts against one backend once.
    pub(super) charged: bool,
    /// The exchange counts as in flight on `backend` (see `Worker::hold`).
    pub(super) holding: bool,
    /// The final response's status, once its head is parsed.
    pub(super) status: u16,
    /// When the request head was parsed (the loop's clock).
    pub(super) started: Instant,
}

impl Exchange {
    /// An exchange whose request head was parsed at `started` (the loop's clock).
    pub(super) fn new(req: RequestInfo, backend: usize, started: Instant) -> Exchange {
        Exchange {
            req,
            sending: ReqState::Sending {
                body: BodyScanner::new(req.framing),
                pending: 0,
                kept: Kept::All(0),
            },
            resp: RespState::WAITING,
            upstream: None,
            buffering: false,
            close_after: !req.keep_alive,
            backend,
            retried: false,
            attempts: 0,
            charged: false,
            holding: false,
            status: 0,
            started,
        }
    }

    /// Every byte of the request went to the backend.
    pub(super) fn req_sent(&self) -> bool {
        matches!(self.sending, ReqState::Sent { .. })
    }

    /// Request body bytes known and not yet sent.
    pub(super) fn req_pending(&self) -> usize {
        match self.sending {
            ReqState::Sending { pending, .. } => pending,
            _ => 0,
        }
    }

    /// Sent request bytes kept for a replay.
    pub(super) fn kept(&self) -> Kept {
        match self.sending {
            ReqState::Sending { kept, .. } | ReqState::Sent { kept } => kept,
            ReqState::Dropping { .. } => Kept::Released,
        }
    }

    /// Let the kept bytes go (consumed from `req`): the request will not, or
    /// cannot, be sent again.
    pub(super) fn release_kept(&mut self, req: &mut Buf) {
        match &mut self.sending {
            ReqState::Sending { kept, .. } | ReqState::Sent { kept } => {
                req.consume(kept.len());
                *kept = Kept::Released;
            }
            ReqState::Dropping { .. } => {}
        }
    }

    /// Make the whole request pending again, to send it anew from its head (the
    /// caller resets `Bufs::req_head_sent`); false if it cannot be (bytes of it
    /// were let go).
    pub(super) fn rewind(&mut self) -> bool {
        let (body, pending, kept) = match self.sending {
            ReqState::Sending {
                body,
                pending,
                kept: Kept::All(kept),
            } => (body, pending, kept),
            // All of the body was seen: a scanner that is done.
            ReqState::Sent {
                kept: Kept::All(kept),
            } => (BodyScanner::Length(0), 0, kept),
            _ => return false,
        };
        self.sending = ReqState::Sending {
            body,
            pending: pending + kept as usize,
            kept: Kept::All(0),
        };
        true
    }
}
