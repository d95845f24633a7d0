//! How a session ends: writing its last bytes and shutting down our side
//! (`Phase::Closing`), reading what the client still sends until it closes
//! (`Phase::Draining`), a reset once a cut-short response is delivered
//! (`Phase::Aborting`), and over TLS the goodbye a close owes first: the
//! records rustls still holds, then a close_notify.

use std::os::fd::AsRawFd;

use crate::io::ReadOutcome;

use super::MAX_DRAIN_BYTES;
use super::exchange::RespState;
use super::session::{Client, Fail, Phase, Step, Timer, Wait, read_counted};
use super::worker::Worker;

impl Client {
    /// Over TLS, a close of this session now must first send what rustls holds
    /// and a close_notify: a TLS session whose socket still works, between
    /// responses (or before a response began), and not already closing. In the
    /// middle of a response a close cuts it short anyway, and a bare TCP close
    /// is what tells the client so.
    pub(super) fn owes_close_notify(&self) -> bool {
        let between = match &self.phase {
            // Before the PROXY header, TLS has not begun.
            Phase::Preamble => false,
            Phase::Head => true,
            Phase::Exchange(x) => {
                x.resp == RespState::WAITING
                    && self.bufs.as_ref().is_none_or(|b| b.resp_head_sent == 0)
            }
            Phase::Closing | Phase::Draining | Phase::Aborting => false,
        };
        between && self.io.may_close_notify()
    }
}

impl Worker {
    /// A TLS client that ends between responses (it went away, or its idle
    /// time is up): the records rustls still holds are the end of the last
    /// response, so they go out first, then a close_notify, within the linger
    /// time (see `step_closing`). A bare close would cut that response short.
    pub(super) fn close_gracefully(&mut self, ck: usize) {
        self.unhold(ck);
        let now = self.now;
        let c = &mut self.clients[ck];
        if let Some(uk) = c.take_upstream() {
            self.upstreams.remove(uk);
        }
        if let Some(bufs) = c.bufs.as_mut() {
            bufs.resp_head.clear();
            bufs.resp_head_sent = 0;
        }
        c.linger = false;
        c.phase = Phase::Closing;
        c.timer = Timer::new(now + self.timeouts.linger, Wait::Linger);
    }

    /// Flush what is queued for the client, then shut down our sending side.
    pub(super) fn step_closing(&mut self, ck: usize) -> Step {
        let c = &mut self.clients[ck];
        let bufs = c.bufs.get_or_insert_with(|| self.bufs.take());
        let head = &bufs.resp_head[bufs.resp_head_sent..];
        if !head.is_empty() {
            if !c.ready.writable {
                return Ok(false);
            }
            let n =
                c.io.write_two(head, &[], &mut c.ready)
                    .map_err(|_| Fail::Close)?;
            self.shared.metrics[self.id].0.client.sent(n);
            bufs.resp_head_sent += n;
            if bufs.resp_head_sent < bufs.resp_head.len() {
                return Ok(n > 0);
            }
        }
        bufs.resp_head.clear();
        bufs.resp_head_sent = 0;
        // Over TLS, a close_notify says the end is meant, and every record must be
        // out before the socket closes.
        match c.io.close_notify(&mut c.ready) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(_) => return Err(Fail::Close),
        }
        // Closing with unread input sends a reset, which can destroy the response
        // still in flight to the client. With no input pending (the last read drained
        // the socket, nothing is buffered) and none expected, a plain close sends a
        // FIN after the data; otherwise shut down our side and read until the client
        // closes (nginx's "lingering close", with the same heuristic).
        let input_pending = c.ready.readable || !bufs.req.is_empty();
        if c.eof || (!c.linger && !input_pending) {
            return Err(Fail::Close);
        }
        let _ = c.io.shutdown_write(&mut c.ready);
        c.phase = Phase::Draining;
        c.drained = 0;
        Ok(true)
    }

    pub(super) fn step_draining(&mut self, ck: usize) -> Step {
        let c = &mut self.clients[ck];
        let bufs = c.bufs.get_or_insert_with(|| self.bufs.take());
        if !c.ready.readable {
            return Ok(false);
        }
        bufs.req.clear();
        let client = &self.shared.metrics[self.id].0.client;
        match read_counted(&mut c.io, &mut bufs.req, &mut c.ready, client) {
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
}

/// An aborting session resets its connection once the kernel has nothing left
/// to send on it, nor any byte unacknowledged (SIOCOUTQ).
#[cold]
pub(super) fn step_aborting(c: &Client) -> Step {
    if !matches!(c.io.tcp().take_error(), Ok(None)) {
        // The client reset (or the socket failed): nothing more can be delivered.
        return Err(Fail::Reset);
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ on a TCP socket) writes one int through the
    // pointer, which points at a live local.
    let r = unsafe { libc::ioctl(c.io.tcp().as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    // Over TLS, records rustls holds are still to go (the session flushes
    // them as the socket takes them).
    if r != 0 || (queued == 0 && !c.io.pending_out()) {
        return Err(Fail::Reset);
    }
    Ok(false)
}
