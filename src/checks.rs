//! Invariants of the pure framing code, as functions that panic when one fails.
//! They run the proxy's own head pipeline (`http::head`), not a copy of it.
//! The fuzz targets in fuzz/ feed them arbitrary bytes, and tests/fuzz_regressions.rs
//! replays every input the fuzzers ever found, so a fixed bug stays fixed.
//!
//! The invariants are about what the proxy sends on: whatever a client or backend
//! sends, a head the proxy accepts is rewritten into one that parses again, with
//! CRLF line endings only, and with the same framing. A proxy whose output could be
//! read two ways would be a smuggling vector of its own making.

use std::net::{IpAddr, Ipv4Addr};

use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{self, Answer, Limits};
use crate::http::rewrite::{self, Forwarding};
use crate::http::{
    Framing, MAX_HEADERS, RequestInfo, analyze_request, analyze_response, has_bare_lf,
};

/// Room for the fields the rewrite adds (Content-Length, Connection, Host,
/// X-Forwarded-For, X-Forwarded-Proto).
const REPARSE_HEADERS: usize = MAX_HEADERS + 8;

/// Read `data` as a request head through the proxy's own pipeline
/// (`http::head::read_request`); if accepted, rewrite it and check the result
/// parses completely, has no bare LF and frames the same.
pub fn request_head(data: &[u8]) {
    let limits = Limits {
        max_header_bytes: crate::config::MAX_HEADER_BYTES,
        max_body_bytes: 0,
    };
    let mut out = Vec::new();
    let fwd = Forwarding {
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        host: None,
        https: false,
        request_id: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
    };
    let accepted = head::read_request(
        data,
        limits,
        |_| {},
        |req, info| {
            rewrite::write_request_head(&mut out, req, info, fwd);
            Ok(())
        },
    );
    let Ok(Some((_, info, ()))) = accepted else {
        return;
    };
    assert!(!has_bare_lf(&out), "bare LF in the rewritten head {out:?}");
    let mut headers = [httparse::EMPTY_HEADER; REPARSE_HEADERS];
    let mut again = httparse::Request::new(&mut headers);
    match again.parse(&out) {
        Ok(httparse::Status::Complete(m)) => assert_eq!(m, out.len(), "{out:?}"),
        other => panic!("rewritten head does not parse ({other:?}): {out:?}"),
    }
    let info2 = analyze_request(&again)
        .unwrap_or_else(|e| panic!("rewritten head refused ({e:?}): {out:?}"));
    assert_eq!(info2.framing, info.framing, "{out:?}");
    assert_eq!(info2.version, info.version, "{out:?}");
    assert_eq!(info2.is_head, info.is_head, "{out:?}");
    assert_eq!(info2.upgrade, info.upgrade, "{out:?}");
    assert_eq!(info2.expect_continue, info.expect_continue, "{out:?}");
}

/// Read `data[1..]` as a response head through the proxy's own pipeline
/// (`http::head::read_response`, then `http::head::answer`: what the client is
/// told), to the request `data[0]` describes (bit 0: HEAD, bit 1: HTTP/1.1,
/// bit 2: it asked for an upgrade, bit 3: all of it was sent, bit 4: the client
/// connection ends after it); if accepted, rewrite it as the proxy does and check
/// the result parses and frames the same.
pub fn response_head(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let bit = |i: u8| flags >> i & 1 == 1;
    let req = RequestInfo {
        version: u8::from(bit(1)),
        framing: Framing::None,
        keep_alive: true,
        is_head: bit(0),
        idempotent: true,
        expect_continue: false,
        upgrade: bit(2),
    };
    let to_head = req.is_head;
    let mut out = Vec::new();
    let accepted = head::read_response(data, to_head, |resp, info| {
        match head::answer(&req, info, bit(3), bit(4))? {
            Answer::Interim(Some(conn)) => rewrite::write_response_head(&mut out, resp, None, conn),
            Answer::Interim(None) => {}
            Answer::Final { conn, .. } => {
                rewrite::write_response_head(&mut out, resp, info.content_length, conn)
            }
        }
        Ok(())
    });
    let Ok(Some((_, info, ()))) = accepted else {
        return;
    };
    if out.is_empty() {
        // An interim response a 1.0 client is not sent.
        assert!((100..200).contains(&info.status) && req.version == 0);
        return;
    }
    assert!(!has_bare_lf(&out), "bare LF in the rewritten head {out:?}");
    let mut headers = [httparse::EMPTY_HEADER; REPARSE_HEADERS];
    let mut again = httparse::Response::new(&mut headers);
    match again.parse(&out) {
        Ok(httparse::Status::Complete(m)) => assert_eq!(m, out.len(), "{out:?}"),
        other => panic!("rewritten head does not parse ({other:?}): {out:?}"),
    }
    let info2 = analyze_response(&again, to_head)
        .unwrap_or_else(|e| panic!("rewritten head refused ({e:?}): {out:?}"));
    assert_eq!(info2.status, info.status, "{out:?}");
    assert_eq!(info2.framing, info.framing, "{out:?}");
    if info.status >= 200 {
        // An interim head is relayed without Content-Length, which a 1xx must
        // not carry (RFC 9110 §8.6) and which frames nothing.
        assert_eq!(info2.content_length, info.content_length, "{out:?}");
    }
}

/// Decode `data[1..]` as a chunked body in one piece and in pieces of a size
/// `data[0]` picks: both must agree on whether it is valid, where it ends, and
/// must never claim more bytes than they were given.
pub fn chunked(data: &[u8]) {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let whole = decode(data, data.len().max(1));
    let pieces = decode(data, usize::from(split % 16) + 1);
    assert_eq!(whole, pieces, "one piece vs pieces of {}", split % 16 + 1);
}

/// Feed `data` in pieces of `step` bytes: (valid so far, bytes of the body, done).
fn decode(data: &[u8], step: usize) -> (bool, usize, bool) {
    let mut d = ChunkedDecoder::new();
    let mut used = 0;
    for piece in data.chunks(step) {
        match d.feed(piece) {
            Ok(n) => {
                assert!(n <= piece.len(), "claimed {n} of {} bytes", piece.len());
                used += n;
                if d.is_done() {
                    return (true, used, true);
                }
                assert_eq!(n, piece.len(), "stopped early without being done");
            }
            Err(_) => return (false, 0, false),
        }
    }
    (true, used, d.is_done())
}

/// A PROXY protocol header: whatever the bytes, reading one never panics, a
/// header read whole lies inside the bytes and reads the same from exactly its
/// own bytes, more bytes are asked for only while fewer than the longest header
/// came, and a prefix of a header read whole is never refused (a header that
/// arrives in pieces is read like one that arrives at once).
pub fn proxy_header(data: &[u8]) {
    use crate::proxy_protocol::{MAX_HEADER, parse};
    match parse(data) {
        Ok(Some(h)) => {
            assert!(h.len <= data.len() && h.len <= MAX_HEADER, "{h:?}");
            assert_eq!(parse(&data[..h.len]), Ok(Some(h)), "its own bytes");
            for n in 1..h.len {
                assert_eq!(parse(&data[..n]), Ok(None), "a prefix of {n} bytes");
            }
        }
        Ok(None) => assert!(
            data.len() < MAX_HEADER,
            "asked for more after {}",
            data.len()
        ),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_accept_ordinary_input() {
        request_head(b"POST http://a.example/x HTTP/1.1\r\nHost: b\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\n");
        request_head(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        );
        response_head(b"\x00HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        response_head(
            b"\x06HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        );
        chunked(b"\x023\r\nabc\r\n0\r\nT: v\r\n\r\nextra");
        assert_eq!(decode(b"3\r\nabc\r\n0\r\n\r\nGET", 2), (true, 13, true));
        assert_eq!(decode(b"3\r\nab", 1), (true, 5, false));
        assert_eq!(decode(b"z\r\n", 1), (false, 0, false));
    }
}
