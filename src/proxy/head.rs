//! Request and response heads: parsing, refusing, picking the backend, capturing
//! the access-log fields and writing the rewritten head.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::time::Instant;

use crate::backends::select;
use crate::http::rewrite::{self, ClientConnection, Forwarding};
use crate::http::{
    Framing, MAX_HEADERS, Reject, RequestInfo, analyze_request, analyze_response,
    classify_parse_error, has_bare_lf, oversized_head,
};

use super::plan::{Plan, Shared};
use super::session::{Bufs, Fail};

/// Parse the request head at the front of `bufs.req`. On success the backend is
/// chosen and the rewritten head is in `bufs.req_head`; returns the head's length
/// in the buffer, what it says, and the backend.
pub(super) fn parse_request_head(
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
pub(super) fn capture_for_log(into: [&mut Vec<u8>; 3], req: &httparse::Request<'_, '_>) {
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
pub(super) struct ResponseHead {
    /// `Some` for the final response (its body framing); `None` for an interim 1xx.
    pub(super) final_framing: Option<Framing>,
    pub(super) reusable: bool,
    /// The status; a 101 (only accepted for an upgrade request) starts a tunnel.
    pub(super) status: u16,
}

/// Parse the response head at the front of `bufs.resp` and queue its rewrite in
/// `bufs.resp_head`. A final response that comes before the whole request went
/// out (`req_done` false: an early answer) says `Connection: close`, as does one
/// delimited by the backend's close; `close_after` is set for both.
#[inline(never)]
pub(super) fn parse_response_head(
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
