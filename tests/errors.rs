//! Every refusal: the status on the wire, the connection closed after it, and
//! nothing of the bad request forwarded. Then backends that fail: 502, never a hang.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Send `raw`, expect `status`, a closed connection, and no request at the backend.
fn assert_rejected(raw: &[u8], status: u16) {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let (resp, mut r) = roundtrip(proxy.local_addrs()[0], raw);
    let shown = String::from_utf8_lossy(raw);
    assert_eq!(resp.status, status, "{shown:?}");
    assert_eq!(
        resp.header("connection").as_deref(),
        Some("close"),
        "{shown:?}"
    );
    assert!(resp.header("content-length").is_some(), "{shown:?}");
    assert!(!resp.body.is_empty(), "{shown:?}");
    r.expect_closed();
    assert_eq!(origins[0].connections(), 0, "{shown:?} reached the backend");
}

#[test]
fn ambiguous_framing_is_400() {
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: \r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3,\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3.0\r\n\r\nabc",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n",
    ];
    for raw in cases {
        assert_rejected(raw, 400);
    }
}

#[test]
fn malformed_heads_are_400() {
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
        b"GET / HTTP/1.1\nHost: t\n\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\n folded: x\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: t\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTX/1.1\r\nHost: t\r\n\r\n",
    ];
    for raw in cases {
        assert_rejected(raw, 400);
    }
}

#[test]
fn bad_chunked_body_is_400_and_the_backend_connection_dropped() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let (resp, mut r) = roundtrip(
        proxy.local_addrs()[0],
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(resp.status, 400);
    r.expect_closed();
    assert_eq!(
        origins[0].requests(),
        0,
        "the backend answered a request with a broken body"
    );
}

#[test]
fn unknown_coding_and_connect_are_501() {
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: pigeons, chunked\r\n\r\n0\r\n\r\n",
        501,
    );
    assert_rejected(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        501,
    );
}

#[test]
fn other_http_versions_are_505() {
    assert_rejected(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505);
    assert_rejected(b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505);
}

#[test]
fn oversized_heads_are_431() {
    let long = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_rejected(long.as_bytes(), 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..101 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_rejected(many.as_bytes(), 431);
    // A head over the limit that never ends is refused without waiting for the end.
    let endless = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Long: {}",
        "a".repeat(20_000)
    );
    assert_rejected(endless.as_bytes(), 431);
}

#[test]
fn max_header_bytes_is_configurable() {
    let origins = origins(1);
    let proxy = proxy_with(&[origins[0].local_addr()], |c| c.max_header_bytes = 2048);
    let head = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
        "a".repeat(3000)
    );
    let (resp, _) = roundtrip(proxy.local_addrs()[0], head.as_bytes());
    assert_eq!(resp.status, 431);
    let head = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
        "a".repeat(1500)
    );
    let (resp, _) = roundtrip(proxy.local_addrs()[0], head.as_bytes());
    assert_eq!(resp.status, 200);
}

#[test]
fn nothing_after_a_bad_request_is_forwarded() {
    assert_rejected(
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
    );
}

#[test]
fn unreachable_backend_is_502_quickly() {
    let dead = ClosedPort::new();
    let proxy = proxy_for(&[dead.addr], 1);
    let start = Instant::now();
    let (resp, mut r) = roundtrip(proxy.local_addrs()[0], b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 502);
    r.expect_closed();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "502 took {:?}",
        start.elapsed()
    );
}

/// A refusal of a request read to its end has nothing to wait for: the session
/// ends at once, even while the client keeps its socket open (a lingering close
/// would hold it, and a shutdown, for the whole linger time).
#[test]
fn a_refused_whole_request_does_not_linger() {
    let dead = ClosedPort::new();
    let proxy = proxy_with(&[dead.addr], |c| {
        c.timeouts.linger = Duration::from_secs(60)
    });
    let (resp, mut r) = roundtrip(proxy.local_addrs()[0], b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 502);
    r.expect_closed();
    // `r` still holds the client's socket.
    assert_no_open_connections(&proxy);
    drop(r);
}

#[test]
fn backend_reset_before_any_byte_is_502() {
    let backend = Scripted::start(|mut s, _| {
        let _ = read_head(&mut s);
        // SO_LINGER 0: close sends a reset instead of a FIN.
        let sock = socket2::SockRef::from(&s);
        let _ = sock.set_linger(Some(Duration::ZERO));
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let (resp, mut r) = roundtrip(proxy.local_addrs()[0], b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 502);
    r.expect_closed();
}

#[test]
fn backend_closing_without_answer_is_502() {
    let backend = Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            write_and_close(s, b"");
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let (resp, _) = roundtrip(proxy.local_addrs()[0], b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 502);
}

#[test]
fn malformed_backend_responses_are_502() {
    let answers: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n",
    ];
    for answer in answers {
        let answer = answer.to_vec();
        let backend = Scripted::start(move |mut s, _| {
            if read_head(&mut s).is_some() {
                write_and_close(s, &answer);
            }
        });
        let proxy = proxy_for(&[backend.addr], 1);
        let (resp, mut r) = roundtrip(proxy.local_addrs()[0], b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(
            resp.status,
            502,
            "{:?}",
            String::from_utf8_lossy(&resp.body)
        );
        r.expect_closed();
    }
}

/// A backend whose first connection answers one request ("first"), then takes the
/// next one (head and `body` bytes) and vanishes with a reset, unanswered. Every
/// later connection answers each request with its body, or "fresh" if it has none.
fn stale_after_one(body: usize) -> Scripted {
    Scripted::start(move |mut s, n| {
        if n == 0 {
            if read_head(&mut s).is_some() {
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
                    .unwrap();
            }
            let _ = read_head(&mut s);
            let _ = std::io::Read::read_exact(&mut s, &mut vec![0u8; body]);
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            return;
        }
        while read_head(&mut s).is_some() {
            let mut received = vec![0u8; body];
            std::io::Read::read_exact(&mut s, &mut received).unwrap();
            let text = if body == 0 {
                "fresh".to_string()
            } else {
                String::from_utf8_lossy(&received).into_owned()
            };
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            );
            if s.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    })
}

#[test]
fn stale_pooled_connection_is_retried_once_on_a_fresh_one() {
    // A keep-alive race the proxy cannot see coming.
    let backend = stale_after_one(0);
    let proxy = proxy_for(&[backend.addr], 1);
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().text(), "first");
    r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let resp = r.response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "fresh");
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn backend_closing_mid_body_closes_the_client() {
    let backend = Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            write_and_close(
                s,
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
            );
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let got = read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("only part"), "{text}");
}

#[test]
fn one_bad_client_does_not_affect_another() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let addr = proxy.local_addrs()[0];
    let mut good = Reader::new(connect(addr));
    good.stream
        .write_all(b"GET /size/1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(good.response().status, 200);
    let (bad, _) = roundtrip(addr, b"\x00\x01\x02garbage\r\n\r\n");
    assert_eq!(bad.status, 400);
    good.stream
        .write_all(b"GET /size/2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(good.response().text(), "ab");
}

#[test]
fn stale_pooled_connection_is_retried_with_the_request_body() {
    // PUT: idempotent, so it may be sent again (a POST is not: tests/isolation.rs).
    let backend = stale_after_one(11);
    let proxy = proxy_for(&[backend.addr], 1);
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().text(), "first");
    r.stream
        .write_all(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world")
        .unwrap();
    let resp = r.response();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.text(),
        "hello world",
        "the body was sent again in full"
    );
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn refused_request_still_uploading_gets_its_whole_response() {
    // The client keeps sending a large body after a request that is refused at its
    // head: the proxy must drain it rather than reset the connection, or the reset
    // could destroy the 400 before the client reads it.
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\n")
        .unwrap();
    let mut writer = s.try_clone().unwrap();
    let uploader = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..8 {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    // The whole upload goes out (the proxy drains it) or fails (it reset the
    // connection) before the client reads anything: a reset would have destroyed
    // the 400 waiting unread in the client's receive buffer.
    uploader.join().unwrap();
    let mut r = Reader::new(s);
    let resp = r.response();
    assert_eq!(resp.status, 400);
    assert_eq!(resp.text(), "Bad Request\n");
}

#[test]
fn a_proxy_without_backends_is_a_start_error() {
    let cfg = corelb::ProxyConfig::new(vec![loopback()], Vec::new());
    let err = corelb::Proxy::start(cfg)
        .err()
        .expect("no backends must not start");
    // A library error names the setting, not a command-line flag: the caller
    // knows how its user gave it.
    assert_eq!(err.setting(), Some("backend"));
    assert_eq!(err.to_string(), "backend: at least one is required");
    assert!(!err.to_string().contains("--"), "{err}");
}

#[test]
fn backend_closing_mid_large_body_closes_the_client_after_what_it_sent() {
    // Large enough that with --splice the body goes through the pipe.
    const PART: usize = 300 * 1024;
    let backend = Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
            out.extend(std::iter::repeat_n(b'x', PART));
            write_and_close(s, &out);
        }
    });
    for splice in [false, true] {
        let proxy = proxy_with(&[backend.addr], |c| c.tune.splice = splice);
        closes_after_what_it_sent(proxy.local_addrs()[0], PART);
    }
}

fn closes_after_what_it_sent(proxy: SocketAddr, part: usize) {
    let mut s = connect(proxy);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let got = read_until_closed(&mut s);
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(
        got.len() - head_end,
        part,
        "body bytes relayed before the close"
    );
    assert!(got[head_end..].iter().all(|&b| b == b'x'));
}

#[test]
fn a_body_delimited_by_the_close_that_ends_in_a_reset_is_passed_on_as_a_reset() {
    // No Content-Length: the body ends when the backend closes. A reset instead
    // of a FIN means it was cut short, which a clean close would hide.
    let backend = Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nthe first half");
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (got, end) = read_until_end(&mut s);
    assert_eq!(
        end,
        Some(std::io::ErrorKind::ConnectionReset),
        "after {:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn answers_still_on_their_way_are_delivered_before_that_reset() {
    // Two pipelined requests: a 1 MiB answer, then one delimited by the close and
    // cut short by a reset. The client reads only once both are written: the
    // reset must wait until the first answer (and what came of the second) has
    // been delivered, or it would destroy them.
    let wrote = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&wrote);
    let backend = Scripted::start(move |mut s, _| {
        while let Some(head) = read_head(&mut s) {
            if head.starts_with("GET /big ") {
                let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
                answer.extend(std::iter::repeat_n(b'b', 1 << 20));
                if s.write_all(&answer).is_err() {
                    return;
                }
            } else {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nthe first half");
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                count.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let mut s = connect_small_window(proxy.local_addrs()[0]);
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /cut HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    wait_until(
        || wrote.load(Ordering::SeqCst) == 1,
        "the backend wrote both answers",
    );
    let (got, end) = read_until_end(&mut s);
    let text = String::from_utf8_lossy(&got);
    let first = text.find("\r\n\r\n").map(|h| h + 4).unwrap_or(0);
    assert!(
        text[first..].starts_with(&"b".repeat(1 << 20)),
        "the first answer was cut: {} bytes in all",
        got.len()
    );
    assert!(
        text.ends_with("the first half"),
        "{:?}",
        &text[text.len().saturating_sub(100)..]
    );
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset));
}

#[test]
fn a_body_delimited_by_the_close_that_stalls_ends_in_a_reset() {
    // The backend sends part of a close-delimited body and then nothing: at the
    // body timeout the client must see a reset, not a clean close that would make
    // the part look whole.
    let backend = Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nthe first half");
            // Then nothing more, until the proxy gives up.
            read_until_end(&mut s);
        }
    });
    let proxy = proxy_with(&[backend.addr], |c| {
        c.timeouts.body = Duration::from_millis(200);
        c.timeouts.linger = Duration::from_millis(500);
    });
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (got, end) = read_until_end(&mut s);
    assert!(String::from_utf8_lossy(&got).ends_with("the first half"));
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset));
}
