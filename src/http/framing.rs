//! Message framing rules of HTTP/1.1 (RFC 9112 §6), as pure functions with no I/O.
//!
//! This file owns every decision about where a message ends and whether a
//! connection may carry another one: which of Content-Length, Transfer-Encoding or
//! connection close delimits a body, which header combinations are ambiguous
//! (and so rejected), and what the Connection header asks for. The proxy, the
//! built-in origin and the tests all go through here, so a framing rule lives in
//! exactly one place.

use super::fields::{
    FieldKind, field_kind, is_known_coding, is_valid_authority, list_elements,
    parse_content_length, split_absolute_form, trim_ows,
};
use super::reject::Reject;

/// Most header fields accepted in a request or response head (more: 431 / 502).
pub const MAX_HEADERS: usize = 100;

/// How the body of one message is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (no framing headers on a request; HEAD, 1xx, 204, 304 responses).
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked transfer coding; the message ends at the last chunk and trailer section.
    Chunked,
    /// The body runs until the sender closes the connection (responses only).
    UntilClose,
}

/// What the proxy needs to know about a valid request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub framing: Framing,
    /// The client may send another request on this connection (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// HEAD: the response has no body whatever its headers say (RFC 9110 §9.3.2).
    pub is_head: bool,
    /// The method is idempotent (RFC 9110 §9.2.2): GET, HEAD, OPTIONS, TRACE, PUT,
    /// DELETE. Only such a request may be sent again after part of it went out.
    pub idempotent: bool,
    /// `Expect: 100-continue` was sent (RFC 9110 §10.1.1).
    pub expect_continue: bool,
    /// A protocol switch is asked for (an Upgrade field named by Connection, in a
    /// bodiless 1.1 request): the backend's 101 turns the connection into a tunnel.
    pub upgrade: bool,
}

/// A response head that cannot be relayed safely; the proxy answers 502 instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadResponse;

/// What the proxy needs to know about a valid response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseInfo {
    pub status: u16,
    pub framing: Framing,
    /// The backend will accept another request on this connection.
    pub reusable: bool,
    /// The Content-Length field's value (also on HEAD and 304 answers, where it
    /// describes the representation rather than this message's body).
    pub content_length: Option<u64>,
}

/// Summary of all Transfer-Encoding fields of a message, in order (RFC 9112 §6.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Codings {
    present: bool,
    /// Number of codings listed in all fields together.
    count: u32,
    /// How many of them are `chunked`.
    chunked: u32,
    /// The final coding is `chunked` (with no parameters).
    chunked_last: bool,
    /// A coding we do not know, or a malformed element.
    unknown: bool,
}

impl Codings {
    fn add_field(&mut self, value: &[u8]) {
        self.present = true;
        for element in list_elements(value) {
            self.count += 1;
            let is_chunked = element.eq_ignore_ascii_case(b"chunked");
            if is_chunked {
                self.chunked += 1;
            } else if !is_known_coding(element) {
                self.unknown = true;
            }
            self.chunked_last = is_chunked;
        }
    }

    /// Chunked applied once and last: the only framing a recipient can rely on.
    fn chunked_is_final_once(&self) -> bool {
        self.chunked_last && self.chunked == 1
    }
}

/// The fields of a head that decide framing and persistence, collected in one pass.
#[derive(Clone, Copy, Debug, Default)]
struct FramingFields {
    /// The Content-Length, if any; several fields must agree.
    content_length: Option<u64>,
    codings: Codings,
    /// `close` / `keep-alive` among the Connection options.
    close: bool,
    keep_alive: bool,
    hosts: u32,
    /// Every Host field's value is a valid `uri-host [":" port]`.
    hosts_valid: bool,
    expect_continue: bool,
    /// An Expect field with anything but `100-continue`.
    expect_other: bool,
    /// An Upgrade field with a value, and `upgrade` among the Connection options.
    upgrade_field: bool,
    connection_upgrade: bool,
}

impl FramingFields {
    /// `None` if Content-Length is invalid or its values disagree (RFC 9112 §6.3 item 5).
    fn collect(headers: &[httparse::Header<'_>]) -> Option<FramingFields> {
        let mut f = FramingFields {
            hosts_valid: true,
            ..FramingFields::default()
        };
        for h in headers {
            match field_kind(h.name) {
                FieldKind::ContentLength => {
                    let n = parse_content_length(h.value)?;
                    if f.content_length.is_some_and(|prev| prev != n) {
                        return None;
                    }
                    f.content_length = Some(n);
                }
                FieldKind::TransferEncoding => f.codings.add_field(h.value),
                FieldKind::Connection => {
                    for token in list_elements(h.value) {
                        f.close |= token.eq_ignore_ascii_case(b"close");
                        f.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                        f.connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                    }
                }
                FieldKind::Upgrade => f.upgrade_field |= !trim_ows(h.value).is_empty(),
                FieldKind::Host => {
                    f.hosts += 1;
                    f.hosts_valid &= is_valid_authority(h.value);
                }
                FieldKind::Expect => {
                    for e in list_elements(h.value) {
                        if e.eq_ignore_ascii_case(b"100-continue") {
                            f.expect_continue = true;
                        } else {
                            f.expect_other = true;
                        }
                    }
                    // An empty Expect value expects nothing we could meet.
                    f.expect_other |= trim_ows(h.value).is_empty();
                }
                _ => {}
            }
        }
        Some(f)
    }
}

/// The request-target forms a reverse proxy accepts (RFC 9112 §3.2): origin-form;
/// absolute-form with an `http` or `https` scheme, which is forwarded in origin-form
/// (see `split_absolute_form`); and `*` for OPTIONS only. Authority-form belongs to
/// CONNECT, which is refused before this.
fn check_target(method: &str, target: &str) -> Result<(), Reject> {
    if target.starts_with('/') {
        return Ok(());
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(())
        } else {
            Err(Reject::BadRequest)
        };
    }
    match split_absolute_form(target) {
        Some(_) => Ok(()),
        None => Err(Reject::BadRequest),
    }
}

/// Decide the framing and connection handling of a parsed request head, or why it
/// must be refused. Rules: RFC 9112 §6.1, §6.3, §9.3; RFC 9110 §7.2.
pub fn analyze_request(req: &httparse::Request<'_, '_>) -> Result<RequestInfo, Reject> {
    let version = req.version.ok_or(Reject::BadRequest)?;
    let method = req.method.ok_or(Reject::BadRequest)?;
    // RFC 9112 §3.2: the target is ASCII (RFC 3986); httparse also lets raw UTF-8
    // through, which backends decode in different ways.
    if !req
        .path
        .is_some_and(|p| p.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Reject::BadRequest);
    }
    if method == "CONNECT" {
        // Tunnelling is not implemented.
        return Err(Reject::NotImplemented);
    }
    check_target(method, req.path.unwrap_or(""))?;
    let FramingFields {
        content_length,
        codings,
        close,
        keep_alive: keep_alive_token,
        hosts,
        hosts_valid,
        expect_continue,
        expect_other,
        upgrade_field,
        connection_upgrade,
    } = FramingFields::collect(req.headers).ok_or(Reject::BadRequest)?;
    // RFC 9112 §3.2: a 1.1 request needs exactly one Host; more than one is always an
    // error, and so is a value that is not an authority (RFC 9110 §7.2).
    if hosts > 1 || (version == 1 && hosts == 0) || !hosts_valid {
        return Err(Reject::BadRequest);
    }
    // RFC 9110 §10.1.1: an expectation we cannot meet is 417; a 1.0 request's
    // expectations are ignored (and not forwarded, see `rewrite`).
    if version == 1 && expect_other {
        return Err(Reject::ExpectationFailed);
    }
    let expect_continue = expect_continue && version == 1;
    let framing = if codings.present {
        // §6.1: TE with CL is a smuggling vector; TE in 1.0 cannot be trusted;
        // without chunked last (exactly once) the length cannot be determined.
        if content_length.is_some() || version == 0 || !codings.chunked_is_final_once() {
            return Err(Reject::BadRequest);
        }
        if codings.unknown {
            return Err(Reject::NotImplemented);
        }
        Framing::Chunked
    } else {
        match content_length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    let keep_alive = if version == 1 {
        !close
    } else {
        keep_alive_token && !close
    };
    Ok(RequestInfo {
        version,
        framing,
        keep_alive,
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        expect_continue,
        // RFC 9110 §7.8: Upgrade in a 1.0 request is ignored. One with a body is
        // forwarded without it: the tunnel would start in the middle of the body.
        upgrade: version == 1 && upgrade_field && connection_upgrade && framing == Framing::None,
    })
}

/// Decide the framing of a parsed response head (RFC 9112 §6.3), given the request
/// it answers. `Err` means the response is malformed and becomes a 502.
pub fn analyze_response(
    resp: &httparse::Response<'_, '_>,
    request_is_head: bool,
) -> Result<ResponseInfo, BadResponse> {
    let version = resp.version.ok_or(BadResponse)?;
    let status = resp.code.ok_or(BadResponse)?;
    if !(100..=999).contains(&status) {
        return Err(BadResponse);
    }
    let FramingFields {
        content_length,
        codings,
        close,
        ..
    } = FramingFields::collect(resp.headers).ok_or(BadResponse)?;
    // Both framing headers at once "ought to be handled as an error" (§6.3 item 3);
    // a proxy that guessed would open the door to response splitting.
    if codings.present && (content_length.is_some() || version == 0 || codings.chunked > 1) {
        return Err(BadResponse);
    }
    let bodiless =
        request_is_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if bodiless {
        Framing::None
    } else if codings.present {
        if codings.chunked_last {
            Framing::Chunked
        } else {
            // §6.3 item 4: a response whose final coding is not chunked is delimited by close.
            Framing::UntilClose
        }
    } else {
        match content_length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // Backends answering 1.0 (even with keep-alive) are not pooled: 1.0 keep-alive
    // is an extension with too many broken implementations to rely on.
    let reusable = version == 1 && !close && framing != Framing::UntilClose;
    Ok(ResponseInfo {
        status,
        framing,
        reusable,
        content_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::classify_parse_error;

    fn request(raw: &[u8]) -> Result<RequestInfo, Reject> {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(raw) {
            Ok(httparse::Status::Complete(_)) => analyze_request(&req),
            Ok(httparse::Status::Partial) => panic!("test head incomplete"),
            Err(e) => Err(classify_parse_error(e, raw)),
        }
    }

    fn response(raw: &[u8], head: bool) -> Result<ResponseInfo, BadResponse> {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(raw) {
            Ok(httparse::Status::Complete(_)) => analyze_response(&resp, head),
            _ => Err(BadResponse),
        }
    }

    #[test]
    fn request_targets_hosts_and_expectations() {
        let ok: &[&[u8]] = &[
            b"GET /a?b HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
            b"GET http://a.example/x HTTP/1.1\r\nHost: other\r\n\r\n",
            b"GET HTTPS://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"GET http://a.example?q HTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a%2Db_c~d\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.0\r\nExpect: pigeons\r\n\r\n",
        ];
        for raw in ok {
            request(raw).unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(raw)));
        }
        let refused: &[(&[u8], Reject)] = &[
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", Reject::BadRequest),
            (
                b"GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n",
                Reject::BadRequest,
            ),
            (
                b"GET ftp://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
                Reject::BadRequest,
            ),
            (
                b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
                Reject::BadRequest,
            ),
            (
                b"GET http://u@a.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
                Reject::BadRequest,
            ),
            (
                b"GET http://a.example/#f HTTP/1.1\r\nHost: a\r\n\r\n",
                Reject::BadRequest,
            ),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Reject::BadRequest),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", Reject::BadRequest),
            (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", Reject::BadRequest),
            (b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", Reject::BadRequest),
            (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", Reject::BadRequest),
            (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", Reject::BadRequest),
            (b"GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", Reject::BadRequest),
            (b"GET / HTTP/1.0\r\nHost: a,b\r\n\r\n", Reject::BadRequest),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: pigeons\r\n\r\n",
                Reject::ExpectationFailed,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, x\r\n\r\n",
                Reject::ExpectationFailed,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect:\r\n\r\n",
                Reject::ExpectationFailed,
            ),
        ];
        for (raw, reject) in refused {
            assert_eq!(
                request(raw),
                Err(*reject),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let one_zero = request(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert!(!one_zero.expect_continue, "1.0 expectations are ignored");
        assert_eq!(split_absolute_form("http://h:1/p?q"), Some(("h:1", "/p?q")));
        assert_eq!(split_absolute_form("http://h?q"), Some(("h", "?q")));
        assert_eq!(split_absolute_form("/p"), None);
    }

    #[test]
    fn request_framing_table() {
        use Framing::*;
        let ok: &[(&[u8], Framing, bool)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None, true),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", None, false),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n", None, false),
            (b"GET / HTTP/1.0\r\n\r\n", None, false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", None, true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", Length(5), true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", None, true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", Length(7), true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Length(5), true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Length(5), true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Chunked, true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n", Chunked, true),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", Chunked, true),
        ];
        for (raw, framing, keep_alive) in ok {
            let info = request(raw)
                .unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(raw)));
            assert_eq!(info.framing, *framing, "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(
                info.keep_alive,
                *keep_alive,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn request_rejections_table() {
        use Reject::*;
        let bad: &[(&[u8], Reject)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: pigeons\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", BadRequest),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: pigeons, chunked\r\n\r\n", NotImplemented),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n", NotImplemented),
            (b"GET / HTTP/1.1\r\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", BadRequest),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", NotImplemented),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", VersionNotSupported),
            (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", VersionNotSupported),
            (b"GET / HTXP/1.1\r\nHost: a\r\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", BadRequest),
            (b"GET / HTTP/1.1\r\nHo\x01st: a\r\n\r\n", BadRequest),
            ("GET /\u{3b4} HTTP/1.1\r\nHost: a\r\n\r\n".as_bytes(), BadRequest),
        ];
        for (raw, reject) in bad {
            assert_eq!(
                request(raw),
                Err(*reject),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..100 {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(request(&raw), Err(Reject::HeadTooLarge));
    }

    #[test]
    fn response_framing_table() {
        use Framing::*;
        let ok: &[(&[u8], bool, Framing, bool)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                false,
                Length(3),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                true,
                None,
                true,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, None, true),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false,
                None,
                true,
            ),
            (b"HTTP/1.1 100 Continue\r\n\r\n", false, None, true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false,
                UntilClose,
                false,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", false, UntilClose, false),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false,
                Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                false,
                Length(1),
                false,
            ),
        ];
        for (raw, head, framing, reusable) in ok {
            let info = response(raw, *head).unwrap();
            assert_eq!(info.framing, *framing, "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(
                info.reusable,
                *reusable,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                response(raw, false),
                Err(BadResponse),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
