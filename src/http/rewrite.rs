//! Writing the heads the proxy sends: the request head toward the backend and the
//! response head toward the client.
//!
//! Both strip hop-by-hop fields (RFC 9110 §7.6.1): Connection and every field it
//! names, Keep-Alive, Proxy-Connection, TE, Trailer and Upgrade. The framing
//! fields are never stripped, even when Connection names them: the body is relayed
//! as it was framed, so the peer must be told the same framing. Content-Length
//! is written once in normal form, so a list like `5, 5` never reaches a peer that
//! might read it differently. Writing goes into a caller-owned Vec whose capacity is
//! reused, so a steady stream of requests allocates nothing.

use std::io::Write;
use std::net::IpAddr;

use super::fields::{
    FieldKind, field_kind, list_elements, named_by_connection, split_absolute_form,
};
use super::framing::{Framing, RequestInfo};

/// Does some Connection field name an option other than `close` / `keep-alive`?
/// Only then must every other field be checked against it; usually none does.
fn has_connection_options(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| field_kind(h.name) == FieldKind::Connection)
        .flat_map(|h| list_elements(h.value))
        .any(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
}

/// Append the decimal digits of `n` (what `write!` does, minus the formatting
/// machinery, which costs more than the rest of a head rewrite).
fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Append an address: IPv4 by hand, IPv6 through its Display (RFC 5952 form).
fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                put_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Where the proxy is sending a request, for the fields it adds.
#[derive(Clone, Copy, Debug)]
pub struct Forwarding<'a> {
    /// The client's address, appended to X-Forwarded-For.
    pub client_ip: IpAddr,
    /// Replace Host with this (`--rewrite-host`); `None` keeps the client's.
    pub host: Option<&'a str>,
    /// The client spoke TLS to us: `X-Forwarded-Proto: https`.
    pub https: bool,
    /// The X-Request-Id to send when the client sent none that is valid.
    pub request_id: u128,
}

/// A client's X-Request-Id is kept if it is 1 to 128 visible ASCII characters
/// other than `"`, `,` and `\` (what logs and other proxies can carry as one
/// token); another one is replaced.
fn valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b'\\'))
}

/// Write the request head sent to the backend. The request line keeps the client's
/// method, target and version (a 1.0 request stays 1.0, so the backend will not
/// answer it with chunked, which a 1.0 client could not read). An absolute-form
/// target is sent in origin-form, with its authority as the Host (RFC 9112 §3.2.2:
/// the target's authority wins over the Host field), so the backend cannot see two
/// different hosts. A 1.0 request's Expect is dropped: it is to be ignored.
/// Returns where the X-Request-Id's value is in `out` (the client's, or the
/// one made from `fwd.request_id`), for the access log.
pub fn write_request_head(
    out: &mut Vec<u8>,
    req: &httparse::Request<'_, '_>,
    info: &RequestInfo,
    fwd: Forwarding<'_>,
) -> std::ops::Range<usize> {
    out.clear();
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    let target = req.path.unwrap_or("/");
    let absolute = if target.starts_with('/') {
        None
    } else {
        split_absolute_form(target)
    };
    match absolute {
        Some((_, path)) => {
            if !path.starts_with('/') {
                out.push(b'/');
            }
            out.extend_from_slice(path.as_bytes());
        }
        None => out.extend_from_slice(target.as_bytes()),
    }
    let host = fwd.host.or(absolute.map(|(authority, _)| authority));
    out.extend_from_slice(if info.version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    let check_options = has_connection_options(req.headers);
    let mut forwarded_for = false;
    let mut request_id = None;
    for h in req.headers.iter() {
        match field_kind(h.name) {
            FieldKind::Connection | FieldKind::HopByHop | FieldKind::ContentLength => {}
            FieldKind::XForwardedProto => {}
            // The first valid one is kept as it came; the rest are dropped, so
            // the backend and the log see one id.
            FieldKind::XRequestId => {
                if request_id.is_none()
                    && valid_request_id(h.value)
                    && !(check_options && named_by_connection(req.headers, h.name))
                {
                    let start = out.len() + h.name.len() + 2;
                    put_field(out, h.name.as_bytes(), h.value);
                    request_id = Some(start..start + h.value.len());
                }
            }
            FieldKind::XForwardedFor => forwarded_for = true,
            FieldKind::Host if host.is_some() => {}
            FieldKind::Expect if info.version == 0 => {}
            FieldKind::Upgrade => {
                if info.upgrade {
                    put_field(out, h.name.as_bytes(), h.value);
                }
            }
            FieldKind::Host | FieldKind::TransferEncoding => {
                put_field(out, h.name.as_bytes(), h.value)
            }
            FieldKind::Expect | FieldKind::Other => {
                if !(check_options && named_by_connection(req.headers, h.name)) {
                    put_field(out, h.name.as_bytes(), h.value);
                }
            }
        }
    }
    if let Some(host) = host {
        put_field(out, b"Host", host.as_bytes());
    }
    if let Framing::Length(n) = info.framing {
        out.extend_from_slice(b"Content-Length: ");
        put_u64(out, n);
        out.extend_from_slice(b"\r\n");
    }
    if info.version == 0 {
        // Ask a 1.0-speaking exchange to keep the backend connection open.
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    } else if info.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if forwarded_for {
        for h in req
            .headers
            .iter()
            .filter(|h| field_kind(h.name) == FieldKind::XForwardedFor)
        {
            out.extend_from_slice(h.value);
            out.extend_from_slice(b", ");
        }
    }
    put_ip(out, fwd.client_ip);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(if fwd.https {
        b"X-Forwarded-Proto: https\r\n"
    } else {
        b"X-Forwarded-Proto: http\r\n"
    });
    match request_id {
        Some(range) => {
            out.extend_from_slice(b"\r\n");
            range
        }
        None => {
            out.extend_from_slice(b"X-Request-Id: ");
            let start = out.len();
            put_hex128(out, fwd.request_id);
            out.extend_from_slice(b"\r\n\r\n");
            start..start + 32
        }
    }
}

/// 32 lowercase hex digits, made on the stack and appended in one copy.
#[inline]
fn put_hex128(out: &mut Vec<u8>, v: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((v >> ((31 - i) * 4)) & 0xf) as usize];
    }
    out.extend_from_slice(&digits);
}

/// With `--rewrite-host`, a request moved to another backend must name that one:
/// replace the `Host: old` line the rewrite wrote with `Host: new`.
pub fn retarget_host(head: &mut Vec<u8>, old: &str, new: &str) {
    let mut line = Vec::with_capacity(old.len() + 10);
    line.extend_from_slice(b"\r\nHost: ");
    line.extend_from_slice(old.as_bytes());
    line.extend_from_slice(b"\r\n");
    if let Some(at) = head.windows(line.len()).position(|w| w == line.as_slice()) {
        let start = at + 8;
        head.splice(start..start + old.len(), new.bytes());
    }
}

/// How the client connection continues after a response, which decides the
/// Connection field the proxy adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientConnection {
    /// HTTP/1.1 persistent: no field needed.
    KeepAlive11,
    /// HTTP/1.0 client that asked for keep-alive: say yes explicitly.
    KeepAlive10,
    /// The proxy closes after this response.
    Close,
    /// A 101 switching protocols: Upgrade is kept and `Connection: upgrade` added.
    Upgrade,
}

/// Write the response head sent to the client: the proxy's own version, the
/// backend's status and reason, its end-to-end fields, and our Connection field.
pub fn write_response_head(
    out: &mut Vec<u8>,
    resp: &httparse::Response<'_, '_>,
    content_length: Option<u64>,
    conn: ClientConnection,
) {
    let status = resp.code.unwrap_or(502);
    out.extend_from_slice(b"HTTP/1.1 ");
    put_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let check_options = has_connection_options(resp.headers);
    for h in resp.headers.iter() {
        match field_kind(h.name) {
            FieldKind::Connection | FieldKind::HopByHop | FieldKind::ContentLength => {}
            // Framing is never hop-by-hop: the body is relayed as framed, so the
            // client must read the same framing, whatever Connection lists.
            FieldKind::TransferEncoding => put_field(out, h.name.as_bytes(), h.value),
            FieldKind::Upgrade => {
                // Named by Connection, but the one field a switch must keep.
                if conn == ClientConnection::Upgrade {
                    put_field(out, h.name.as_bytes(), h.value);
                }
            }
            _ => {
                if !(check_options && named_by_connection(resp.headers, h.name)) {
                    put_field(out, h.name.as_bytes(), h.value);
                }
            }
        }
    }
    if let Some(n) = content_length {
        out.extend_from_slice(b"Content-Length: ");
        put_u64(out, n);
        out.extend_from_slice(b"\r\n");
    }
    match conn {
        ClientConnection::KeepAlive11 => {}
        ClientConnection::KeepAlive10 => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ClientConnection::Close => out.extend_from_slice(b"Connection: close\r\n"),
        ClientConnection::Upgrade => out.extend_from_slice(b"Connection: upgrade\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::analyze_request;

    fn rewrite(raw: &[u8], host: Option<&str>) -> String {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete());
        let info = analyze_request(&req).unwrap();
        let mut out = Vec::new();
        let fwd = Forwarding {
            client_ip: "10.1.2.3".parse().unwrap(),
            host,
            https: false,
            request_id: 0xfeed,
        };
        write_request_head(&mut out, &req, &info, fwd);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_retried_request_names_its_new_backend() {
        let mut head = rewrite(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Some("a:1")).into_bytes();
        retarget_host(&mut head, "a:1", "backend-b:8080");
        let head = String::from_utf8(head).unwrap();
        assert!(head.contains("\r\nHost: backend-b:8080\r\n"), "{head}");
        assert!(!head.contains("a:1"), "{head}");
    }

    #[test]
    fn strips_hop_by_hop_and_adds_forwarding() {
        let out = rewrite(
            b"GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: x\r\nTrailer: y\r\nAccept: */*\r\nX-Forwarded-Proto: https\r\n\r\n",
            None,
        );
        assert_eq!(
            out,
            "GET /a?b HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Request-Id: 0000000000000000000000000000feed\r\n\r\n"
        );
    }

    #[test]
    fn appends_to_existing_forwarded_for_and_rewrites_host() {
        let out = rewrite(
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nContent-Length: 3, 3\r\n\r\n",
            Some("backend:81"),
        );
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: backend:81\r\nContent-Length: 3\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Request-Id: 0000000000000000000000000000feed\r\n\r\n"
        );
    }

    #[test]
    fn http10_keeps_version_and_asks_for_keep_alive() {
        let out = rewrite(b"GET / HTTP/1.0\r\n\r\n", None);
        assert_eq!(
            out,
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Request-Id: 0000000000000000000000000000feed\r\n\r\n"
        );
    }

    #[test]
    fn numbers_and_addresses_are_written_like_display() {
        for n in [0u64, 7, 10, 99, 100, 65535, u64::MAX] {
            let mut out = Vec::new();
            put_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.20.30.4",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            put_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().into_bytes());
        }
    }

    #[test]
    fn framing_fields_survive_a_connection_that_names_them() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding, Content-Length\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(raw).unwrap().is_complete());
        let mut out = Vec::new();
        write_response_head(&mut out, &resp, None, ClientConnection::KeepAlive11);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let out = rewrite(
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
            None,
        );
        assert!(out.contains("\r\nTransfer-Encoding: chunked\r\n"), "{out}");
    }

    #[test]
    fn response_head_strips_and_sets_connection() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nContent-Length: 2\r\nServer: s\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(raw).unwrap().is_complete());
        let mut out = Vec::new();
        write_response_head(&mut out, &resp, Some(2), ClientConnection::KeepAlive10);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn a_valid_request_id_is_kept_and_another_replaced() {
        let kept = rewrite(
            b"GET / HTTP/1.1\r\nHost: x\r\nx-request-id: abc-123\r\nX-Request-Id: second\r\n\r\n",
            None,
        );
        assert!(kept.contains("\r\nx-request-id: abc-123\r\n"), "{kept}");
        assert!(!kept.contains("second") && !kept.contains("feed"), "{kept}");
        for bad in ["a,b", "a\"b", "", &"x".repeat(129)] {
            let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: {bad}\r\n\r\n");
            let out = rewrite(raw.as_bytes(), None);
            assert!(
                out.ends_with("X-Request-Id: 0000000000000000000000000000feed\r\n\r\n")
                    && out.matches("equest-Id").count() == 1,
                "{bad:?}: {out}"
            );
        }
    }
}
