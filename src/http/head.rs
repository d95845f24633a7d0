//! From bytes to an accepted head: the one pipeline the proxy, the fuzz targets
//! (`checks`) and the benchmark all run. Parse with httparse, refuse what
//! RFC 9112 and our policy refuse (bare LF, oversized heads, ambiguous framing,
//! bodies over the limit), and hand the accepted head to the caller, which
//! chooses a backend, keeps log fields and writes the rewritten head. Nothing
//! here does I/O or reads the configuration.

use std::mem::MaybeUninit;

use super::framing::{
    BadResponse, Framing, MAX_HEADERS, RequestInfo, ResponseInfo, analyze_request, analyze_response,
};
use super::reject::{Reject, classify_parse_error, has_bare_lf, oversized_head};
use super::rewrite::ClientConnection;

/// What a request head may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest head, in bytes: a larger one is 431 (or 414 for its line).
    pub max_header_bytes: usize,
    /// Largest declared body (0: no limit): a larger Content-Length is 413.
    pub max_body_bytes: u64,
}

/// Read the request head at the front of `data`. `Ok(None)`: it is not complete
/// yet. A head that parses is shown to `seen` before any other check (the access
/// log keeps its request line even when it is refused); one that passes every
/// check is handed to `accept` with what it says, and `accept`'s answer is
/// returned with the head's length.
// Always inlined: it runs once per request, and its caller's closures then
// compile into the proxy's own path (scripts/instructions.sh: 10 fewer
// instructions per request).
#[inline(always)]
pub fn read_request<R>(
    data: &[u8],
    limits: Limits,
    seen: impl FnOnce(&httparse::Request<'_, '_>),
    accept: impl FnOnce(&httparse::Request<'_, '_>, &RequestInfo) -> Result<R, Reject>,
) -> Result<Option<(usize, RequestInfo, R)>, Reject> {
    // Uninitialised: zero-filling 100 headers (3.2 KB) per request costs more than
    // parsing a short head.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let n = match req.parse_with_uninit_headers(data, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if data.len() >= limits.max_header_bytes => {
            return Err(oversized_head(data, limits.max_header_bytes));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(classify_parse_error(e, data)),
    };
    if n > limits.max_header_bytes {
        return Err(oversized_head(data, limits.max_header_bytes));
    }
    if has_bare_lf(&data[..n]) {
        return Err(Reject::BadRequest);
    }
    seen(&req);
    let info = analyze_request(&req)?;
    if let Framing::Length(len) = info.framing
        && limits.max_body_bytes > 0
        && len > limits.max_body_bytes
    {
        return Err(Reject::BodyTooLarge);
    }
    let accepted = accept(&req, &info)?;
    Ok(Some((n, info, accepted)))
}

/// Read the response head at the front of `data` (the answer to a HEAD request
/// when `to_head`). `Ok(None)`: not complete yet. An accepted head is handed to
/// `accept` with what it says, and `accept`'s answer is returned with the head's
/// length. A head that does not parse, has a bare LF or frames its body
/// ambiguously is a `BadResponse` (the proxy answers 502).
pub fn read_response<R>(
    data: &[u8],
    to_head: bool,
    accept: impl FnOnce(&httparse::Response<'_, '_>, &ResponseInfo) -> Result<R, BadResponse>,
) -> Result<Option<(usize, ResponseInfo, R)>, BadResponse> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        data,
        &mut headers,
    );
    let n = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse),
    };
    if has_bare_lf(&data[..n]) {
        return Err(BadResponse);
    }
    let info = analyze_response(&resp, to_head)?;
    let accepted = accept(&resp, &info)?;
    Ok(Some((n, info, accepted)))
}

/// What the client is told of a response head the proxy accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An interim (1xx) response: relayed with this Connection handling, or not
    /// at all (`None`: a 1.0 client gets no interim responses, RFC 9110 §15.2).
    Interim(Option<ClientConnection>),
    /// The final response, with this Connection handling; `close` when the
    /// client connection ends after it.
    Final { conn: ClientConnection, close: bool },
}

/// How response `resp` to request `req` goes to the client. `req_done`: the
/// whole request went out (a final answer before that is an early answer);
/// `close`: the client connection already ends after this exchange. A 101
/// nobody asked for, or chunked to a 1.0 client, is a `BadResponse` (502).
pub fn answer(
    req: &RequestInfo,
    resp: &ResponseInfo,
    req_done: bool,
    close: bool,
) -> Result<Answer, BadResponse> {
    if (100..200).contains(&resp.status) {
        // A 101 switches to a tunnel, if one was asked for (otherwise it is a
        // backend error). Other interim responses go to 1.1 clients only.
        return Ok(Answer::Interim(match resp.status {
            101 if !req.upgrade => return Err(BadResponse),
            101 => Some(ClientConnection::Upgrade),
            _ if req.version == 1 => Some(ClientConnection::KeepAlive11),
            _ => None,
        }));
    }
    if req.version == 0 && resp.framing == Framing::Chunked {
        // A 1.0 client cannot read chunked, and the backend was asked in 1.0.
        return Err(BadResponse);
    }
    // After an early answer the rest of the request body is still to come: the
    // client is told the connection ends, rather than promised a keep-alive the
    // proxy could not keep. So is it when the body ends at the backend's close.
    let close = close || resp.framing == Framing::UntilClose || !req_done;
    let conn = if close {
        ClientConnection::Close
    } else if req.version == 0 {
        ClientConnection::KeepAlive10
    } else {
        ClientConnection::KeepAlive11
    };
    Ok(Answer::Final { conn, close })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 100,
        max_body_bytes: 10,
    };

    fn request(data: &[u8]) -> Result<Option<usize>, Reject> {
        read_request(data, LIMITS, |_| {}, |_, _| Ok(())).map(|r| r.map(|(n, _, ())| n))
    }

    #[test]
    fn request_heads_are_refused_before_the_caller_sees_them() {
        assert_eq!(
            request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"),
            Ok(Some(27))
        );
        assert_eq!(request(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(
            request(b"GET / HTTP/1.1\nHost: a\r\n\r\n"),
            Err(Reject::BadRequest)
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(request(long.as_bytes()), Err(Reject::HeadTooLarge));
        let big = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(request(big), Err(Reject::BodyTooLarge));
        let both = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(request(both), Err(Reject::BadRequest));
    }

    #[test]
    fn the_caller_sees_a_parsed_head_even_when_it_is_refused_later() {
        let mut seen = None;
        let both = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let r = read_request(
            both,
            LIMITS,
            |req| seen = req.path.map(String::from),
            |_, _| -> Result<(), Reject> { panic!("accepted") },
        );
        assert_eq!(r.err(), Some(Reject::BadRequest));
        assert_eq!(seen.as_deref(), Some("/x"));
        // The caller's own refusal (no backend) is the answer.
        let r = read_request(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            LIMITS,
            |_| {},
            |_, _| Err::<(), _>(Reject::Unavailable),
        );
        assert_eq!(r.err(), Some(Reject::Unavailable));
    }

    #[test]
    fn response_heads() {
        let accept = |_: &httparse::Response<'_, '_>, i: &ResponseInfo| Ok(i.status);
        let ok = read_response(b"HTTP/1.1 204 No Content\r\n\r\n", false, accept);
        assert_eq!(ok.map(|r| r.map(|(n, _, s)| (n, s))), Ok(Some((27, 204))));
        assert_eq!(
            read_response(b"HTTP/1.1 200 OK\r\n", false, accept).ok(),
            Some(None)
        );
        assert!(read_response(b"HTTP/1.1 200 OK\n\r\n", false, accept).is_err());
        assert!(read_response(b"junk\r\n\r\n", false, accept).is_err());
    }
}
