//! The buffers of a session with something in flight (`Bufs`), and what
//! recycling them clears.

use std::time::Instant;

use crate::io::buffer::{Buf, Recycle};
use crate::io::splice::Pipe;

use super::MAX_KEPT_HEAD;

/// The buffers of a session with something in flight.
pub(super) struct Bufs {
    /// Bytes from the client: request head, body, and any pipelined requests.
    pub(super) req: Buf,
    /// Bytes from the backend: response head and body.
    pub(super) resp: Buf,
    /// The rewritten request head, and how much of it the backend has taken.
    pub(super) req_head: Vec<u8>,
    pub(super) req_head_sent: usize,
    /// Response heads (interim and final, or a local error), and how much is written.
    pub(super) resp_head: Vec<u8>,
    pub(super) resp_head_sent: usize,
    /// For large response bodies (see `SPLICE_MIN`), made on first use and kept.
    pub(super) pipe: Option<Pipe>,
    /// Making a pipe failed (out of descriptors): relay through the buffer instead.
    pub(super) no_pipe: bool,
    /// This exchange may move a large response body through the pipe (`--splice`),
    /// and some of it went that way.
    pub(super) splice: bool,
    pub(super) spliced: bool,
    /// For the access log (kept only when it is on): the request line, Referer and
    /// User-Agent, response body bytes written, and when the response head came.
    pub(super) log_request: Vec<u8>,
    pub(super) log_referer: Vec<u8>,
    pub(super) log_user_agent: Vec<u8>,
    pub(super) log_host: Vec<u8>,
    pub(super) log_request_id: Vec<u8>,
    pub(super) resp_bytes: u64,
    pub(super) head_at: Option<Instant>,
}

impl Bufs {
    pub(super) fn new(size: usize) -> Box<Bufs> {
        Box::new(Bufs {
            req: Buf::with_sizes(size, size.max(super::STREAM_BUF_SIZE)),
            resp: Buf::with_sizes(size, size.max(super::STREAM_BUF_SIZE)),
            req_head: Vec::with_capacity(1024),
            req_head_sent: 0,
            resp_head: Vec::with_capacity(1024),
            resp_head_sent: 0,
            pipe: None,
            no_pipe: false,
            splice: false,
            spliced: false,
            log_request: Vec::new(),
            log_referer: Vec::new(),
            log_user_agent: Vec::new(),
            log_host: Vec::new(),
            log_request_id: Vec::new(),
            resp_bytes: 0,
            head_at: None,
        })
    }

    /// Response body bytes wait in the pipe.
    pub(super) fn piped(&self) -> bool {
        self.pipe.as_ref().is_some_and(|p| !p.is_empty())
    }
}

impl Recycle for Box<Bufs> {
    /// Everything a session left goes: unread or unforwarded request bytes
    /// (pipelined requests, half a head), response bytes, heads, bytes in the
    /// pipe (the pipe itself is dropped then), and the log fields. A head buffer
    /// grown past `MAX_KEPT_HEAD` is given back to the allocator.
    fn reset(&mut self) {
        self.req.reset();
        self.resp.reset();
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
        self.splice = false;
        self.spliced = false;
        for field in [
            &mut self.log_request,
            &mut self.log_referer,
            &mut self.log_user_agent,
            &mut self.log_host,
            &mut self.log_request_id,
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
        self.req.is_clean()
            && self.resp.is_clean()
            && self.req_head.is_empty()
            && self.resp_head.is_empty()
            && self.req_head_sent == 0
            && self.resp_head_sent == 0
            && !self.piped()
            && !self.splice
            && !self.spliced
            && self.log_request.is_empty()
            && self.log_referer.is_empty()
            && self.log_user_agent.is_empty()
            && self.log_host.is_empty()
            && self.log_request_id.is_empty()
            && self.resp_bytes == 0
            && self.head_at.is_none()
    }
}
