//! What the proxy does with a head `http::head` accepted: pick the backend,
//! capture the access-log fields and write the rewritten head (requests), or
//! decide what the client is told about the connection (responses).

use std::net::IpAddr;
use std::time::Instant;

use crate::backends::select;
use crate::http::head::{self, Answer, Limits};
use crate::http::rewrite::{self, Forwarding};
use crate::http::{BadResponse, Framing, Reject, RequestInfo, ResponseInfo};

use super::bufs::Bufs;
use super::plan::{Plan, Shared};
use super::session::Fail;

/// Read the request head at the front of `bufs.req` (`http::head`); on success
/// the backend is chosen and the rewritten head is in `bufs.req_head`. Returns the
/// head's length in the buffer, what it says, and the backend.
pub(super) fn parse_request_head(
    bufs: &mut Bufs,
    client_ip: IpAddr,
    https: bool,
    shared: &Shared,
    plan: &Plan,
    now: Instant,
    request_id: u128,
) -> Result<Option<(usize, RequestInfo, usize)>, Fail> {
    let logging = shared.access.is_some();
    let Bufs {
        req: data,
        req_head,
        log_request,
        log_referer,
        log_user_agent,
        log_host,
        log_request_id,
        ..
    } = bufs;
    if logging {
        // A head that fails to parse is logged with "-".
        log_request.clear();
        log_referer.clear();
        log_user_agent.clear();
        log_host.clear();
        log_request_id.clear();
    }
    let limits = Limits {
        max_header_bytes: shared.max_header_bytes,
        max_body_bytes: plan.config.max_body_bytes,
    };
    let seen = |req: &httparse::Request<'_, '_>| {
        if logging {
            capture_for_log([log_request, log_referer, log_user_agent, log_host], req);
        }
    };
    let accept = |req: &httparse::Request<'_, '_>, info: &RequestInfo| {
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
            return Err(Reject::Unavailable);
        };
        let fwd = Forwarding {
            client_ip,
            https,
            host: shared
                .rewrite_host
                .then(|| plan.health.member(backend).authority.as_str()),
            request_id,
        };
        let id = rewrite::write_request_head(req_head, req, info, fwd);
        if logging {
            log_request_id.extend_from_slice(&req_head[id]);
        }
        Ok(backend)
    };
    head::read_request(data.filled(), limits, seen, accept).map_err(Fail::Reject)
}

/// Keep what the access log shows of a request (copied: the head is consumed).
#[cold]
#[inline(never)]
pub(super) fn capture_for_log(into: [&mut Vec<u8>; 4], req: &httparse::Request<'_, '_>) {
    let [line, referer, user_agent, host] = into;
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
        } else if h.name.eq_ignore_ascii_case("host") {
            host.extend_from_slice(h.value);
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
    let Bufs {
        resp: data,
        resp_head,
        ..
    } = bufs;
    let accept = |resp: &httparse::Response<'_, '_>, info: &ResponseInfo| match head::answer(
        req,
        info,
        req_done,
        *close_after,
    )? {
        Answer::Interim(conn) => {
            if let Some(conn) = conn {
                rewrite::write_response_head(resp_head, resp, None, conn);
            }
            Ok(ResponseHead {
                final_framing: None,
                reusable: false,
                status: info.status,
            })
        }
        Answer::Final { conn, close } => {
            *close_after = close;
            rewrite::write_response_head(resp_head, resp, info.content_length, conn);
            Ok(ResponseHead {
                final_framing: Some(info.framing),
                reusable: info.reusable,
                status: info.status,
            })
        }
    };
    match head::read_response(data.filled(), req.is_head, accept) {
        Ok(Some((n, _, head))) => {
            data.consume(n);
            Ok(Some(head))
        }
        Ok(None) => Ok(None),
        Err(BadResponse) => Err(Fail::Reject(Reject::BadGateway)),
    }
}
