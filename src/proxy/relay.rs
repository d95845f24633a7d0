//! Moving bytes of an exchange: the request body to the backend, the response to
//! the client (copied, or spliced for large bodies), and tunnels after a 101.

use std::io;
use std::os::fd::AsRawFd;

use crate::counters::Traffic;
use crate::http::{BodyScanner, Reject};
use crate::io::ReadOutcome;
use crate::io::buffer::Buf;
use crate::io::splice::Pipe;
use crate::io::stream::tls_failure;

use super::bufs::Bufs;
use super::exchange::{Exchange, Kept, ReqState, RespState};
use super::fail::retry_or;
use super::head::parse_response_head;
use super::session::{Client, Fail, Phase, Step, read_client, read_counted};
use super::upstream::Upstream;
use super::{MAX_INTERIM, SPLICE_MIN, SPLICE_STEP};

/// Where an exchange's relay counts the bytes it moves: its worker's client
/// traffic, and its worker's traffic with the exchange's backend.
#[derive(Clone, Copy)]
pub(super) struct Meters<'a> {
    pub(super) client: &'a Traffic,
    pub(super) backend: &'a Traffic,
}

/// The first response bytes arrived: the request will not be sent again, so the
/// body bytes kept for a replay are let go.
pub(super) fn answer_began(x: &mut Exchange, req: &mut Buf, u: &mut Upstream) {
    u.received = true;
    x.release_kept(req);
}

/// Client -> buffer: read the request body (or pipelined requests, bounded by the
/// buffer) and find where the body ends, in what is buffered after the bytes
/// already known; the bytes found become pending for the backend.
/// Always inlined into `relay_request`, on every exchange's path: as a call
/// it cost about 130 more instructions per request (scripts/instructions.sh).
#[inline(always)]
pub(super) fn take_request(c: &mut Client, max_body: u64, client: &Traffic) -> Step {
    let (Phase::Exchange(x), Some(bufs)) = (&mut c.phase, c.bufs.as_mut()) else {
        return Err(Fail::Close);
    };
    let mut progress = false;
    // Bytes kept for a replay must not stall the upload: when they fill the
    // buffer, let them go (this request can then no longer be retried).
    if bufs.req.is_full() && x.kept().len() > 0 {
        x.release_kept(&mut bufs.req);
    }
    // Client -> buffer: request body, or pipelined requests (bounded by the buffer).
    if c.ready.readable && !c.eof && !bufs.req.is_full() {
        progress |= read_client(&mut c.io, &mut bufs.req, &mut c.ready, &mut c.eof, client)?;
    }
    // Find where the body ends, in what is buffered after the bytes already known.
    let (body, known) = match &mut x.sending {
        ReqState::Sending {
            body,
            pending,
            kept,
        } => (Some(body), kept.len() + *pending),
        ReqState::Dropping { body } => (Some(body), 0),
        ReqState::Sent { .. } => (None, 0),
    };
    if let Some(body) = body
        && !body.is_done()
    {
        let mut n = 0;
        if bufs.req.len() > known {
            n = body
                .scan(&bufs.req.filled()[known..])
                .map_err(|_| Fail::Reject(Reject::BadRequest))?;
            // Judged as bytes arrive (a reload that lowers the limit does not
            // cut short a body already past it while it is stalled).
            if max_body > 0 && body.chunked_data() > max_body {
                return Err(Fail::Reject(Reject::BodyTooLarge));
            }
        }
        if c.eof && !body.is_done() {
            // Everything buffered is scanned and the body is still short: the
            // client gave up in the middle of its request.
            return Err(Fail::Close);
        }
        progress |= n > 0;
        match &mut x.sending {
            ReqState::Sending { pending, .. } => *pending += n,
            // The backend stopped taking the request after it began to answer:
            // the rest of the body is read and dropped.
            ReqState::Dropping { .. } => bufs.req.consume(n),
            ReqState::Sent { .. } => {}
        }
    }
    Ok(progress)
}

/// Client -> backend: take what the client sent (`take_request`), then send the
/// head and body bytes.
pub(super) fn relay_request(
    c: &mut Client,
    u: &mut Upstream,
    defer: bool,
    max_body: u64,
    m: Meters<'_>,
) -> Step {
    let mut progress = take_request(c, max_body, m.client)?;
    let (Phase::Exchange(x), Some(bufs)) = (&mut c.phase, c.bufs.as_mut()) else {
        return Err(Fail::Close);
    };

    // Buffer -> backend: the rewritten head, then body bytes as they are known.
    let ReqState::Sending {
        body,
        pending,
        kept,
    } = x.sending
    else {
        return Ok(progress);
    };
    if !u.connected() {
        return Ok(progress);
    }
    if u.held_in_handshake > 0 && !u.io.handshaking() {
        m.backend.sent(std::mem::take(&mut u.held_in_handshake));
    }
    let head = &bufs.req_head[bufs.req_head_sent..];
    if !defer && u.ready.writable && (!head.is_empty() || pending > 0) {
        let at = kept.len();
        match u
            .io
            .write_two(head, &bufs.req.filled()[at..at + pending], &mut u.ready)
        {
            Ok(n) => {
                if u.io.handshaking() {
                    u.held_in_handshake += n;
                } else {
                    m.backend.sent(n);
                }
                let from_head = n.min(head.len());
                let from_body = n - from_head;
                bufs.req_head_sent += from_head;
                let kept = match kept {
                    // At most a buffer's size (see `Kept::All`).
                    Kept::All(k) => Kept::All(k + from_body as u32),
                    Kept::Released => {
                        bufs.req.consume(from_body);
                        Kept::Released
                    }
                };
                x.sending = ReqState::Sending {
                    body,
                    pending: pending - from_body,
                    kept,
                };
                progress |= n > 0;
            }
            Err(_) => {
                // An early answer and then a close with the body unread (a
                // reset) leaves the answer waiting behind the failed write.
                if !u.received
                    && !bufs.resp.is_full()
                    && let Ok(ReadOutcome::Data) =
                        read_counted(&mut u.io, &mut bufs.resp, &mut u.ready, m.backend)
                {
                    answer_began(x, &mut bufs.req, u);
                }
                if u.received {
                    // It has begun to answer: not a failure, and its answer
                    // stands. What of the body is known is dropped with the rest.
                    bufs.req.consume(pending);
                    x.sending = ReqState::Dropping { body };
                    return Ok(true);
                }
                return Err(retry_or(x, bufs, u, Reject::BadGateway));
            }
        }
    }
    if let ReqState::Sending {
        body,
        pending: 0,
        kept,
    } = x.sending
        && body.is_done()
        && bufs.req_head_sent == bufs.req_head.len()
    {
        x.sending = ReqState::Sent { kept };
        progress = true;
    }

    Ok(progress)
}

/// Backend -> client: read, parse the response head (interim ones too), find where
/// the body ends, and write the heads and body bytes to the client.
pub(super) fn relay_response(c: &mut Client, u: &mut Upstream, defer: bool, m: Meters<'_>) -> Step {
    let (Phase::Exchange(x), Some(bufs)) = (&mut c.phase, c.bufs.as_mut()) else {
        return Err(Fail::Close);
    };
    // A pipe moves bytes between two sockets: not out of a TLS backend's.
    if !u.io.is_tls() && splicing(bufs, x) {
        return splice_body(c, u, m);
    }
    let mut progress = false;
    // Backend -> buffer.
    if u.connected() && u.ready.readable && !u.eof && !bufs.resp.is_full() {
        match read_counted(&mut u.io, &mut bufs.resp, &mut u.ready, m.backend) {
            Ok(ReadOutcome::Data) => {
                answer_began(x, &mut bufs.req, u);
                progress = true;
            }
            Ok(ReadOutcome::Eof) => {
                u.eof = true;
                progress = true;
            }
            Ok(ReadOutcome::Blocked) => {}
            Err(e) => {
                // Reset: the end of the stream, but not a clean one. A TLS
                // backend that failed its handshake (a certificate that does not
                // verify, say) is the same to the exchange, and says why.
                if let Some(tls) = tls_failure(&e) {
                    u.tls_failed = Some((tls.failure, tls.error.to_string()));
                }
                u.eof = true;
                u.reset = true;
                progress = true;
            }
        }
    }

    if let RespState::Waiting { interim } = x.resp {
        if bufs.resp.is_empty() {
            if u.eof {
                return Err(retry_or(x, bufs, u, Reject::BadGateway));
            }
        } else if bufs.resp_head.is_empty() {
            // One head at a time: the next one (interim or final) is parsed only once
            // the one before is out, so interim responses to a client that does not
            // read them back up in the bounded buffer and stop the backend's reads.
            let req_sent = x.req_sent();
            match parse_response_head(bufs, &x.req, req_sent, &mut x.close_after)? {
                Some(head) => {
                    progress = true;
                    if head.status == 101 {
                        x.resp = RespState::Tunnel {
                            backend_shut: false,
                            client_shut: false,
                        };
                        x.status = 101;
                        return Ok(true);
                    }
                    match head.final_framing {
                        Some(framing) => {
                            x.status = head.status;
                            x.resp = RespState::Body {
                                body: BodyScanner::new(framing),
                                pending: 0,
                                reusable: head.reusable,
                            };
                        }
                        None if interim >= MAX_INTERIM => {
                            return Err(Fail::Reject(Reject::BadGateway));
                        }
                        None => {
                            x.resp = RespState::Waiting {
                                interim: interim + 1,
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

    if let RespState::Body { body, pending, .. } = &mut x.resp
        && !body.is_done()
        && bufs.resp.len() > *pending
    {
        let n = body
            .scan(&bufs.resp.filled()[*pending..])
            .map_err(|_| Fail::Reject(Reject::BadGateway))?;
        *pending += n;
        progress |= n > 0;
    }

    // Buffer -> client: queued heads (interim and final), then body bytes.
    let head = &bufs.resp_head[bufs.resp_head_sent..];
    let pending = x.resp.pending();
    if !defer && c.ready.writable && (!head.is_empty() || pending > 0) {
        let body = &bufs.resp.filled()[..pending];
        match c.io.write_two(head, body, &mut c.ready) {
            Ok(n) => {
                m.client.sent(n);
                let from_head = n.min(head.len());
                let from_body = n - from_head;
                bufs.resp_head_sent += from_head;
                bufs.resp.consume(from_body);
                if let RespState::Body { pending, .. } = &mut x.resp {
                    *pending -= from_body;
                }
                bufs.resp_bytes += from_body as u64;
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
pub(super) fn relay_tunnel(c: &mut Client, u: &mut Upstream, m: Meters<'_>) -> Step {
    let Phase::Exchange(Exchange {
        resp:
            RespState::Tunnel {
                mut backend_shut,
                mut client_shut,
            },
        ..
    }) = c.phase
    else {
        return Err(Fail::Close);
    };
    let result = tunnel_step(c, u, &mut backend_shut, &mut client_shut, m);
    if let Some(x) = c.exchange_mut() {
        x.resp = RespState::Tunnel {
            backend_shut,
            client_shut,
        };
    }
    result
}

/// One step of `relay_tunnel`, with its two flags: our sending side toward the
/// backend / the client is shut.
fn tunnel_step(
    c: &mut Client,
    u: &mut Upstream,
    backend_shut: &mut bool,
    client_shut: &mut bool,
    m: Meters<'_>,
) -> Step {
    let bufs = c.bufs.as_mut().ok_or(Fail::Close)?;
    let mut progress = false;
    // Client -> backend.
    if c.ready.readable && !c.eof && !bufs.req.is_full() {
        progress |= read_client(&mut c.io, &mut bufs.req, &mut c.ready, &mut c.eof, m.client)?;
    }
    if u.io.pending_out() && u.ready.writable {
        u.io.flush(&mut u.ready).map_err(|_| Fail::Close)?;
    }
    if !bufs.req.is_empty() && u.ready.writable && !*backend_shut {
        let n =
            u.io.write_two(&[], bufs.req.filled(), &mut u.ready)
                .map_err(|_| Fail::Close)?;
        m.backend.sent(n);
        bufs.req.consume(n);
        progress |= n > 0;
    }
    if c.eof && bufs.req.is_empty() && !*backend_shut && u.io.shutdown_write(&mut u.ready) {
        *backend_shut = true;
        progress = true;
    }
    // Backend -> client.
    if u.ready.readable && !u.eof && !bufs.resp.is_full() {
        match read_counted(&mut u.io, &mut bufs.resp, &mut u.ready, m.backend) {
            Ok(ReadOutcome::Data) => progress = true,
            Ok(ReadOutcome::Eof) | Err(_) => {
                u.eof = true;
                progress = true;
            }
            Ok(ReadOutcome::Blocked) => {}
        }
    }
    let head = &bufs.resp_head[bufs.resp_head_sent..];
    if c.ready.writable && (!head.is_empty() || !bufs.resp.is_empty()) && !*client_shut {
        let n =
            c.io.write_two(head, bufs.resp.filled(), &mut c.ready)
                .map_err(|_| Fail::Close)?;
        m.client.sent(n);
        let from_head = n.min(head.len());
        bufs.resp_head_sent += from_head;
        bufs.resp.consume(n - from_head);
        progress |= n > 0;
    }
    if bufs.resp_head_sent == bufs.resp_head.len() {
        bufs.resp_head.clear();
        bufs.resp_head_sent = 0;
    }
    // Over TLS a close_notify goes first, and the TCP side is shut once it is
    // out (else this comes back when the socket takes it).
    if u.eof
        && bufs.resp.is_empty()
        && bufs.resp_head.is_empty()
        && !*client_shut
        && c.io.shutdown_write(&mut c.ready)
    {
        *client_shut = true;
        progress = true;
    }
    if *backend_shut && *client_shut {
        // Both directions are finished.
        return Err(Fail::Close);
    }
    Ok(progress)
}

/// Whether the response body goes through the pipe: bytes are in it already, or
/// everything buffered is out and much of a Content-Length body is still to come.
pub(super) fn splicing(bufs: &mut Bufs, x: &Exchange) -> bool {
    if bufs.piped() {
        return true;
    }
    let large = bufs.splice
        && matches!(
            x.resp,
            RespState::Body { body: BodyScanner::Length(n), pending: 0, .. } if n >= SPLICE_MIN
        );
    if !(large && bufs.resp.is_empty() && bufs.resp_head.is_empty() && !bufs.no_pipe) {
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
pub(super) fn splice_body(c: &mut Client, u: &mut Upstream, m: Meters<'_>) -> Step {
    let (Some(bufs), Phase::Exchange(x)) = (c.bufs.as_mut(), &mut c.phase) else {
        return Err(Fail::Close);
    };
    let pipe = bufs.pipe.as_mut().ok_or(Fail::Close)?;
    let RespState::Body {
        body: BodyScanner::Length(remaining),
        ..
    } = &mut x.resp
    else {
        return Err(Fail::Close);
    };
    // One drain and one fill per step: the session's turn bounds how much it
    // moves before the others get theirs (see `MAX_STEPS_PER_TURN`).
    let mut moved = false;
    if !pipe.is_empty() && c.ready.writable {
        match pipe.drain(c.io.tcp().as_raw_fd()) {
            Ok(n) => {
                moved |= n > 0;
                m.client.sent(n);
                bufs.resp_bytes += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.ready.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Fail::Close),
        }
    }
    if *remaining > 0 && pipe.room() > 0 && u.ready.readable && !u.eof {
        let max = usize::try_from(*remaining).map_or(SPLICE_STEP, |r| r.min(SPLICE_STEP));
        match pipe.fill(u.io.tcp().as_raw_fd(), max) {
            Ok(0) => u.eof = true,
            Ok(n) => {
                m.backend.received(n);
                *remaining -= n as u64;
                moved = true;
                bufs.spliced = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => u.ready.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Reset: like end of stream, which the caller sees as a truncated body.
            Err(_) => u.eof = true,
        }
    }
    Ok(moved)
}
