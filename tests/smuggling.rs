//! Request-smuggling defences beyond the framing table: request targets, Host,
//! Expect, early answers, strict backend responses and upstream pool hygiene. A
//! recording backend keeps the raw bytes it receives on each connection, so every
//! test can say exactly what reached it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Raw bytes received on each backend connection, in order of connection.
type Log = Arc<Mutex<Vec<Vec<u8>>>>;

/// A backend that records every byte and answers each request (head plus a
/// Content-Length or chunked body) with `200 ok`, keeping the connection open.
fn recorder() -> (Scripted, Log) {
    let log: Log = Arc::default();
    let shared = Arc::clone(&log);
    let backend = Scripted::start(move |mut s, n| {
        let record = |bytes: &[u8]| {
            let mut log = shared.lock().unwrap();
            if log.len() <= n {
                log.resize(n + 1, Vec::new());
            }
            log[n].extend_from_slice(bytes);
        };
        record(b"");
        while let Some(head) = read_head(&mut s) {
            record(head.as_bytes());
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let chunked = head
                .to_ascii_lowercase()
                .contains("\r\ntransfer-encoding: chunked\r\n");
            if chunked {
                // Byte by byte, so nothing after the body is taken.
                let mut decoder = wire::Dechunk::default();
                let mut byte = [0u8; 1];
                while !decoder.is_done() {
                    if s.read_exact(&mut byte).is_err()
                        || decoder.feed(&byte, &mut Vec::new(), false).is_err()
                    {
                        return;
                    }
                    record(&byte);
                }
            } else {
                let mut body = vec![0; length];
                if s.read_exact(&mut body).is_err() {
                    return;
                }
                record(&body);
            }
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    });
    (backend, log)
}

/// Everything the backend received, all connections together.
fn received(log: &Log) -> String {
    let log = log.lock().unwrap();
    log.iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

/// Wait until the backend log contains `needle` (it is written by another thread).
fn wait_for(log: &Log, needle: &str) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !received(log).contains(needle) {
        assert!(Instant::now() < deadline, "backend never saw {needle:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn send(proxy: SocketAddr, raw: &[u8]) -> (Response, Reader) {
    roundtrip(proxy, raw)
}

#[test]
fn absolute_form_is_forwarded_in_origin_form_with_the_targets_host() {
    let (backend, log) = recorder();
    let proxy = proxy_for(&[backend.addr], 1);
    let (resp, _) = send(
        proxy.local_addrs()[0],
        b"GET http://Example.com:8080/a/b?c=d HTTP/1.1\r\nHost: other.example\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let (resp, _) = send(
        proxy.local_addrs()[0],
        b"GET https://example.net?q HTTP/1.1\r\nHost: example.net\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let seen = received(&log);
    assert!(
        seen.starts_with("GET /a/b?c=d HTTP/1.1\r\n"),
        "target not in origin-form: {seen:?}"
    );
    assert!(seen.contains("\r\nHost: Example.com:8080\r\n"), "{seen:?}");
    assert!(
        !seen.contains("other.example"),
        "the client's Host survived: {seen:?}"
    );
    assert!(seen.contains("GET /?q HTTP/1.1\r\n"), "{seen:?}");
    assert_eq!(seen.matches("Host:").count(), 2, "{seen:?}");
}

#[test]
fn asterisk_form_only_with_options() {
    let (backend, log) = recorder();
    let proxy = proxy_for(&[backend.addr], 1);
    let (resp, _) = send(
        proxy.local_addrs()[0],
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    wait_for(&log, "OPTIONS * HTTP/1.1\r\n");
    for raw in [
        &b"GET * HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET example.com:80 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET ftp://example.com/ HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET http://user@example.com/ HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let (resp, mut r) = send(proxy.local_addrs()[0], raw);
        assert_eq!(resp.status, 400, "{:?}", String::from_utf8_lossy(raw));
        r.expect_closed();
    }
    assert_eq!(received(&log).matches("HTTP/1.1\r\n").count(), 1);
}

#[test]
fn long_targets_are_served_up_to_the_limit_then_414() {
    let (backend, log) = recorder();
    let proxy = proxy_for(&[backend.addr], 1);
    let target = format!("/{}", "a".repeat(8000));
    let (resp, _) = send(
        proxy.local_addrs()[0],
        format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    );
    assert_eq!(resp.status, 200, "an 8000-octet target is supported");
    wait_for(&log, &format!("GET {target} HTTP/1.1\r\n"));
    let target = format!("/{}", "a".repeat(20_000));
    let (resp, mut r) = send(
        proxy.local_addrs()[0],
        format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    );
    assert_eq!(resp.status, 414);
    r.expect_closed();
    assert!(!received(&log).contains(&target));
}

#[test]
fn invalid_hosts_are_400() {
    let (backend, log) = recorder();
    let proxy = proxy_for(&[backend.addr], 1);
    for host in ["a b", "a/b", "user@a", "a:8x", "", "[::1", "a%zz", "a,b"] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let (resp, mut r) = send(proxy.local_addrs()[0], raw.as_bytes());
        assert_eq!(resp.status, 400, "Host: {host:?}");
        r.expect_closed();
    }
    assert_eq!(received(&log), "", "a bad Host reached the backend");
}

#[test]
fn http2_preface_is_refused() {
    let (backend, log) = recorder();
    let proxy = proxy_for(&[backend.addr], 1);
    let (resp, mut r) = send(proxy.local_addrs()[0], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert!(
        resp.status == 505 || resp.status == 400,
        "status {}",
        resp.status
    );
    r.expect_closed();
    assert_eq!(received(&log), "");
}

#[test]
fn unknown_expectation_is_417_and_a_10_expectation_is_ignored() {
    let (backend, log) = recorder();
    let proxy = proxy_for(&[backend.addr], 1);
    let (resp, mut r) = send(
        proxy.local_addrs()[0],
        b"POST / HTTP/1.1\r\nHost: t\r\nExpect: pigeons\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_eq!(resp.status, 417);
    r.expect_closed();
    let (resp, _) = send(
        proxy.local_addrs()[0],
        b"POST /ten HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_eq!(resp.status, 200);
    wait_for(&log, "POST /ten HTTP/1.0\r\n");
    let seen = received(&log);
    assert!(!seen.contains("pigeons"), "{seen:?}");
    assert!(
        !seen.contains("Expect"),
        "a 1.0 Expect was forwarded: {seen:?}"
    );
}

#[test]
fn nothing_after_connection_close_is_forwarded() {
    let (backend, log) = recorder();
    let proxy = proxy_for(&[backend.addr], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(
        b"GET /first HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /second HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut r = Reader::new(s);
    assert_eq!(r.response().status, 200);
    r.expect_closed();
    let seen = received(&log);
    assert!(seen.contains("GET /first"), "{seen:?}");
    assert!(!seen.contains("/second"), "{seen:?}");
}

#[test]
fn an_early_answer_while_the_body_is_unread_closes_both_sides() {
    // The backend answers 413 after the head and never reads the body.
    let backend = Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            let _ = s.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!");
            // Hold the connection open: only the proxy may decide to drop it.
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut sink = [0u8; 65536];
            while Instant::now() < deadline {
                match s.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    });
    // Streamed uploads, so that the backend answers while most of the body is
    // still unsent (buffered, a 1 MB body fills the buffer first anyway).
    let proxy = proxy_with(&[backend.addr], |c| c.tune.stream_uploads = true);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    s.write_all(&[b'x'; 1000]).unwrap();
    let mut r = Reader::new(s);
    let resp = r.response();
    assert_eq!(resp.status, 413);
    assert_eq!(resp.text(), "big!");
    r.expect_closed();
    // A later request must not reuse the connection the unread body was left on.
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n")
        .unwrap();
    let mut r = Reader::new(s);
    assert_eq!(r.response().status, 413);
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the backend connection with an unread body was reused"
    );
}

#[test]
fn ambiguous_backend_responses_are_502_and_the_connection_dropped() {
    let answers: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    ];
    for answer in answers {
        let answer = answer.to_vec();
        // The first connection's first answer is bad; every other answer is good.
        let backend = Scripted::start(move |mut s, n| {
            let mut first = n == 0;
            while read_head(&mut s).is_some() {
                let out: &[u8] = if first {
                    &answer
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                };
                first = false;
                if s.write_all(out).is_err() {
                    return;
                }
            }
        });
        let proxy = proxy_for(&[backend.addr], 1);
        let mut s = connect(proxy.local_addrs()[0]);
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        // A bad head is a 502; a bad chunk after the head went out is a close.
        assert!(
            text.starts_with("HTTP/1.1 502") || !text.contains("\r\n0\r\n\r\n"),
            "{text:?}"
        );
        let resp = get(proxy.local_addrs()[0], "/again");
        assert_eq!(resp.status, 200);
        assert_eq!(
            backend
                .connections
                .load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the connection that sent {:?} was reused",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn a_refused_request_leaves_the_pool_clean() {
    let (backend, log) = recorder();
    let proxy = proxy_for(&[backend.addr], 1);
    let bad: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /smuggled2 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\nGET /smuggled3 HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    // Warm the pool first, so a refused request has a pooled connection to spoil.
    assert_eq!(get(proxy.local_addrs()[0], "/warm").status, 200);
    for raw in bad {
        let _ = send(proxy.local_addrs()[0], raw);
        let good = TcpStream::connect(proxy.local_addrs()[0]).unwrap();
        good.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut r = Reader::new(good);
        r.stream
            .write_all(b"GET /good HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(r.response().text(), "ok");
    }
    let seen = received(&log);
    let requests: Vec<&str> = seen
        .split("\r\n\r\n")
        .filter_map(|h| h.lines().next())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        requests,
        [
            "GET /warm HTTP/1.1",
            "GET /good HTTP/1.1",
            "GET /good HTTP/1.1",
            "GET /good HTTP/1.1"
        ],
        "the backend log holds exactly the good requests: {seen:?}"
    );
}

#[test]
fn bad_chunk_framing_is_400_and_reaches_the_backend_not_at_all() {
    let (backend, log) = recorder();
    let proxy = proxy_for(&[backend.addr], 1);
    // Warm the pool: the refused requests would otherwise have a pooled connection
    // to write to at once.
    assert_eq!(get(proxy.local_addrs()[0], "/warm").status, 200);
    let long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(1100));
    let bodies: &[&[u8]] = &[
        b"00000000000000001\r\nx\r\n0\r\n\r\n",
        long_ext.as_bytes(),
        b"1;a\x00b\r\nx\r\n0\r\n\r\n",
        b"1\r\nx0\r\n\r\n",
        b"1\r\nx\n0\r\n\r\n",
        b"1\nx\r\n0\r\n\r\n",
        b"0\r\nTrailer\r\n\r\n",
    ];
    for body in bodies {
        let mut raw =
            b"POST /bad HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(body);
        let (resp, mut r) = send(proxy.local_addrs()[0], &raw);
        assert_eq!(resp.status, 400, "{:?}", String::from_utf8_lossy(body));
        r.expect_closed();
    }
    assert_eq!(get(proxy.local_addrs()[0], "/after").status, 200);
    let seen = received(&log);
    assert!(
        !seen.contains("/bad"),
        "a refused request reached the backend: {seen:?}"
    );
}

#[test]
fn a_body_that_turns_bad_later_is_cut_and_never_completes_at_the_backend() {
    let (backend, log) = recorder();
    // Streamed uploads: the head goes on before the body is in. (Buffered, the
    // bad chunk is found before any of the request reaches a backend: see
    // tests/slow_clients.rs.)
    let proxy = proxy_with(&[backend.addr], |c| c.tune.stream_uploads = true);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(
        b"POST /late HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .unwrap();
    // The head streams on before the rest of the body exists.
    wait_for(&log, "POST /late");
    s.write_all(b"zz\r\n").unwrap();
    let mut r = Reader::new(s);
    assert_eq!(r.response().status, 400);
    r.expect_closed();
    // The backend saw a prefix, then its connection closed: no answer was produced
    // for that request, and the next request goes on a fresh connection.
    assert_eq!(get(proxy.local_addrs()[0], "/next").status, 200);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2, "the cut connection was reused");
    assert!(!String::from_utf8_lossy(&log[0]).contains("zz"));
}
