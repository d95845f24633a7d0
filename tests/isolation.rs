//! Isolation: no byte of one client or one exchange ever reaches another. Each test
//! plays an attacker (or an unlucky client, or a broken backend) and then checks
//! that the next, innocent exchange sees only its own bytes: what the backend
//! received, and what the client got back.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Request lines the backend received, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// A backend that answers every request with `200` and a body made of the request
/// line it received and the request body, so each response says what reached the
/// backend. `/fail...` is read and then the connection is closed unanswered.
fn echo_backend() -> (Scripted, Seen) {
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let backend = Scripted::start(move |mut s, _| {
        while let Some(req) = read_request(&mut s) {
            log.lock().unwrap().push(req.head.start.clone());
            if req.head.target.starts_with("/fail") {
                return;
            }
            let mut body = req.head.start.clone().into_bytes();
            body.push(b'\n');
            body.extend_from_slice(&req.body);
            let mut out =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            out.extend_from_slice(&body);
            if s.write_all(&out).is_err() {
                return;
            }
        }
    });
    (backend, seen)
}

/// An innocent client's request on a new connection: it must be answered with
/// exactly what it sent, and the backend must have seen exactly its request line.
fn victim(proxy: SocketAddr, seen: &Seen, n: usize) {
    let line = format!("GET /victim/{n} HTTP/1.1");
    let request = format!("{line}\r\nHost: v\r\nCookie: secret={n}\r\n\r\n");
    let (resp, _) = roundtrip(proxy, request.as_bytes());
    assert_eq!(resp.status, 200, "victim {n} got {:?}", resp.head);
    assert_eq!(resp.text(), format!("{line}\n"), "victim {n}'s answer");
    assert_eq!(
        seen.lock().unwrap().last().map(String::as_str),
        Some(line.as_str()),
        "the backend's last request should be victim {n}'s"
    );
}

/// Close with a reset (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

#[test]
fn a_partial_head_left_by_a_closed_connection_never_reaches_the_next_client() {
    let (backend, seen) = echo_backend();
    let proxy = proxy_for(&[backend.addr], 1);
    let addr = proxy.local_addrs()[0];
    let attacks: [&[u8]; 3] = [
        // An unfinished header line: the victim's request line would become its value.
        b"GET /attacker-action HTTP/1.1\r\nX-Swallow: ",
        // A head with a body length, unfinished: the victim's request would be its body.
        b"POST /steal HTTP/1.1\r\nContent-Length: 200\r\nX: ",
        // Just a request line.
        b"GET /attacker-action HTTP/1.1\r\n",
    ];
    for (i, attack) in attacks.iter().enumerate() {
        let mut a = connect(addr);
        a.write_all(attack).unwrap();
        a.shutdown(Shutdown::Write).unwrap();
        // The proxy sees the bytes and the end of stream, and closes.
        assert!(read_until_closed(&mut a).is_empty());
        assert_no_open_connections(&proxy);
        victim(addr, &seen, i);
    }
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|l| l.starts_with("GET /victim/")),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[test]
fn pipelined_requests_left_by_a_closed_connection_are_never_answered_to_another() {
    let (backend, seen) = echo_backend();
    // The failure in part 2 must not take the lone backend out (issue 13).
    let proxy = proxy_with(&[backend.addr], |c| c.passive.max_fails = 0);
    let addr = proxy.local_addrs()[0];
    // 1. `Connection: close` on the first, a second one behind it, then a half-close.
    let mut a = connect(addr);
    a.write_all(
        b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /left-behind HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    a.shutdown(Shutdown::Write).unwrap();
    let got = String::from_utf8(read_until_closed(&mut a)).unwrap();
    assert!(got.contains("GET /a HTTP/1.1\n"), "{got}");
    assert_no_open_connections(&proxy);
    victim(addr, &seen, 1);
    // 2. A backend failure (502) ends the exchange with a request still buffered.
    let mut a = connect(addr);
    a.write_all(
        b"GET /fail HTTP/1.1\r\nHost: a\r\n\r\nGET /left-behind HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    let mut r = Reader::new(a);
    assert_eq!(r.response().status, 502);
    drop(r);
    assert_no_open_connections(&proxy);
    victim(addr, &seen, 2);
    // 3. A complete request answered, then half a head, then a reset.
    let a = connect(addr);
    let mut r = Reader::new(a);
    r.stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /attacker-action HTTP/1.1\r\nX: ")
        .unwrap();
    assert_eq!(r.response().status, 200);
    reset(r.stream);
    assert_no_open_connections(&proxy);
    victim(addr, &seen, 3);
    assert!(
        !seen
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("left-behind") || l.contains("attacker")),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[test]
fn thousands_of_half_heads_do_not_disturb_later_clients() {
    let (backend, seen) = echo_backend();
    let proxy = proxy_for(&[backend.addr], 1);
    let addr = proxy.local_addrs()[0];
    for _ in 0..10 {
        let conns: Vec<TcpStream> = (0..100)
            .map(|_| {
                let mut s = connect(addr);
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ")
                    .unwrap();
                s
            })
            .collect();
        drop(conns);
    }
    assert_no_open_connections(&proxy);
    for n in 0..100 {
        victim(addr, &seen, n);
    }
}

#[test]
fn a_client_that_pipelines_megabytes_and_leaves_does_not_poison_the_worker() {
    let (backend, seen) = echo_backend();
    let proxy = proxy_for(&[backend.addr], 1);
    let addr = proxy.local_addrs()[0];
    let mut a = connect(addr);
    a.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let request = b"GET /flood HTTP/1.1\r\nHost: a\r\n\r\n";
    let flood: Vec<u8> = request
        .iter()
        .copied()
        .cycle()
        .take(request.len() * 20_000)
        .collect();
    // It never reads: the proxy stops reading it once its answers back up, and the
    // write stalls. What it wrote is gone with it.
    let _ = a.write_all(&flood);
    reset(a);
    assert_no_open_connections(&proxy);
    let before = seen.lock().unwrap().len();
    for n in 0..20 {
        victim(addr, &seen, n);
    }
    let seen = seen.lock().unwrap();
    // A flood request the proxy forwarded before the client left may still be
    // recorded after `before` was read (the backend was reading it); none may
    // come once the victims began, and the victims' come in order.
    let after: Vec<&str> = seen[before..].iter().map(String::as_str).collect();
    let first_victim = after
        .iter()
        .position(|l| l.starts_with("GET /victim/"))
        .expect("the victims reached the backend");
    assert!(
        after[..first_victim]
            .iter()
            .all(|l| l.starts_with("GET /flood ")),
        "{after:?}"
    );
    let victims: Vec<String> = (0..20)
        .map(|n| format!("GET /victim/{n} HTTP/1.1"))
        .collect();
    assert_eq!(
        after[first_victim..],
        victims.iter().map(String::as_str).collect::<Vec<_>>()[..],
        "only the victims' requests once they began"
    );
}

/// A backend whose first answer (on whichever connection) is `first`, written at
/// once, and every later one `200 good`. Counts connections; `wrote` is set once
/// the first answer is written in full.
fn answers_first_then_good(first: Vec<u8>) -> (Scripted, Arc<AtomicBool>) {
    let first: Arc<[u8]> = first.into();
    let answered = Arc::new(AtomicUsize::new(0));
    let wrote = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&wrote);
    let backend = Scripted::start(move |mut s, _| {
        while read_request(&mut s).is_some() {
            let first_answer = answered.fetch_add(1, Ordering::SeqCst) == 0;
            let out: &[u8] = if first_answer {
                &first
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood"
            };
            if s.write_all(out).is_err() {
                return;
            }
            flag.fetch_or(first_answer, Ordering::SeqCst);
        }
    });
    (backend, wrote)
}

#[test]
fn surplus_backend_bytes_after_a_body_never_reach_the_next_request() {
    // Bodies under and over the splice threshold (64 KiB), copied and (with
    // `--splice`) spliced, each followed by a whole fake response, or by bytes a
    // miscounted Content-Length left over.
    for (length, splice) in [
        (100usize, false),
        (70_000, false),
        (300_000, false),
        (300_000, true),
    ] {
        for surplus in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"[..],
            &b"\xc3\xa9tc"[..],
        ] {
            let mut first =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n").into_bytes();
            first.extend(std::iter::repeat_n(b'x', length));
            first.extend_from_slice(surplus);
            let (backend, wrote) = answers_first_then_good(first);
            let proxy = proxy_with(&[backend.addr], |c| c.tune.splice = splice);
            let addr = proxy.local_addrs()[0];
            // The client reads only once the backend has written everything, so
            // the surplus is already waiting when the body's last byte is relayed;
            // its next request is pipelined, so it goes out as soon as the first
            // exchange ends.
            let mut s = connect_small_window(addr);
            s.write_all(
                b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\nHost: t\r\n\r\n",
            )
            .unwrap();
            wait_until(
                || wrote.load(Ordering::SeqCst),
                "the backend wrote its answer",
            );
            let mut r = Reader::new(s);
            let resp = r.response();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body.len(), length);
            assert!(resp.body.iter().all(|&b| b == b'x'));
            for i in 0..3 {
                if i > 0 {
                    r.stream
                        .write_all(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
                        .unwrap();
                }
                let resp = r.response();
                assert_eq!(
                    (resp.status, resp.text().as_str()),
                    (200, "good"),
                    "after a {length}-byte body and surplus {surplus:?}"
                );
            }
            // The body took the path it was meant to: the first read holds at
            // most 32 KiB of it, so with --splice the rest goes through the pipe.
            assert_eq!(
                metric(&proxy, "corelb_spliced_responses_total{", ""),
                u64::from(splice),
                "responses spliced, for a {length}-byte body with splice={splice}"
            );
            // The connection that sent surplus is closed, and for a while each
            // request to that backend gets a fresh one.
            assert_eq!(
                backend.connections.load(Ordering::SeqCst),
                4,
                "the connection that sent surplus must not be reused, nor any other"
            );
        }
    }
}

#[test]
fn late_surplus_on_an_idle_connection_is_caught_and_the_backend_is_not_pooled_for_a_while() {
    // The answer, then (once the client has it) bytes nobody asked for: they
    // arrive while the connection is idle in the pool.
    let sent_surplus = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&sent_surplus);
    let client_has_it = Arc::new(AtomicBool::new(false));
    let has_it = Arc::clone(&client_has_it);
    let answered = Arc::new(AtomicUsize::new(0));
    let backend = Scripted::start(move |mut s, _| {
        while read_request(&mut s).is_some() {
            let first = answered.fetch_add(1, Ordering::SeqCst) == 0;
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
            if first {
                wait_until(
                    || has_it.load(Ordering::SeqCst),
                    "the client has the answer",
                );
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!");
                flag.store(true, Ordering::SeqCst);
            }
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let addr = proxy.local_addrs()[0];
    assert_eq!(get(addr, "/").text(), "ok");
    client_has_it.store(true, Ordering::SeqCst);
    wait_until(
        || sent_surplus.load(Ordering::SeqCst),
        "the backend sends surplus",
    );
    // The idle connection sees the bytes and is closed (the metric counts it).
    let metrics = || proxy.stats().prometheus();
    wait_until(
        || metrics().contains("corelb_upstream_surplus_total{worker=\"0\"} 1"),
        "the surplus is noticed",
    );
    for _ in 0..3 {
        assert_eq!(get(addr, "/").text(), "ok");
    }
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        4,
        "after surplus, each request gets a fresh connection"
    );
}

#[test]
fn surplus_after_a_chunked_body_closes_the_backend_connection() {
    let (backend, _) = answers_first_then_good(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!".to_vec(),
    );
    let proxy = proxy_for(&[backend.addr], 1);
    let addr = proxy.local_addrs()[0];
    assert_eq!(get(addr, "/").status, 200);
    assert_eq!(get(addr, "/").text(), "good");
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
}

/// A backend whose every connection answers its first request, then reads the
/// second whole and closes without a byte: from the proxy's side, a stale pooled
/// connection. Counts the POSTs it reads.
fn stale_after_one(posts: Arc<AtomicUsize>) -> Scripted {
    Scripted::start(move |mut s, _| {
        let mut n = 0;
        while let Some(req) = read_request(&mut s) {
            if req.head.method == "POST" {
                posts.fetch_add(1, Ordering::SeqCst);
            }
            if n == 1 {
                return;
            }
            n += 1;
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    })
}

#[test]
fn a_post_is_never_sent_twice_when_a_pooled_connection_turns_out_stale() {
    let posts = Arc::new(AtomicUsize::new(0));
    let backend = stale_after_one(Arc::clone(&posts));
    let proxy = proxy_with(&[backend.addr], |c| c.passive.max_fails = 0);
    let addr = proxy.local_addrs()[0];
    let mut r = Reader::new(connect(addr));
    r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().status, 200);
    r.stream
        .write_all(b"POST /pay HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n12345")
        .unwrap();
    let resp = r.response();
    assert_eq!(
        resp.status, 502,
        "a POST that may have been received is not replayed"
    );
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "the backend got the POST once"
    );
    // A GET in the same situation is replayed on a fresh connection.
    let mut r = Reader::new(connect(addr));
    r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().status, 200);
    r.stream
        .write_all(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().status, 200);
}

#[test]
fn a_post_avoids_a_pooled_connection_that_has_been_idle_for_a_second() {
    // As above, but the POST comes after the pooled connection has been idle
    // for over a second: it goes out on a fresh connection instead, and succeeds.
    let backend = stale_after_one(Arc::default());
    let proxy = proxy_with(&[backend.addr], |c| c.passive.max_fails = 0);
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().status, 200);
    let answered = std::time::Instant::now();
    wait_until(
        || answered.elapsed() > Duration::from_millis(1100),
        "the pooled connection ages",
    );
    r.stream
        .write_all(b"POST /pay HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n12345")
        .unwrap();
    assert_eq!(r.response().status, 200);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
    // The idle connection stays for idempotent requests (it is the stale one here).
    r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().status, 200);
}

#[test]
fn connection_naming_transfer_encoding_does_not_unframe_a_response() {
    let backend = Scripted::answering(
        b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding, Content-Length\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let proxy = proxy_for(&[backend.addr], 1);
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    for _ in 0..2 {
        r.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let resp = r.response();
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("transfer-encoding").as_deref(),
            Some("chunked"),
            "{}",
            resp.head
        );
        assert_eq!(resp.text(), "5\r\nhello\r\n0\r\n\r\n");
    }
}

#[test]
fn connection_naming_framing_fields_of_a_request_does_not_unframe_it() {
    let (backend, _) = echo_backend();
    let proxy = proxy_for(&[backend.addr], 1);
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    r.stream
        .write_all(b"POST /a HTTP/1.1\r\nHost: t\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().text(), "POST /a HTTP/1.1\nabc");
    r.stream
        .write_all(b"POST /b HTTP/1.1\r\nHost: t\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nxyz")
        .unwrap();
    assert_eq!(r.response().text(), "POST /b HTTP/1.1\nxyz");
}

#[test]
fn endless_interim_responses_end_in_a_502() {
    // 103 Early Hints without end, to a client that reads them.
    let backend = Scripted::start(|mut s, _| {
        if read_request(&mut s).is_some() {
            while s
                .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                .is_ok()
            {}
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let got = String::from_utf8_lossy(&read_until_closed(&mut s)).into_owned();
    let interim = got.matches("HTTP/1.1 103 ").count();
    assert_eq!(interim, 64, "64 interim responses are relayed, then a 502");
    // The last message is a whole 502 that closes the connection, read by the
    // tests' own reader.
    let last = &got[got.rfind("HTTP/1.1 ").unwrap()..];
    let (head, n) = wire::response_head(last.as_bytes())
        .unwrap()
        .unwrap_or_else(|| panic!("after {interim} interim responses: ...{last:?}"));
    assert_eq!(head.status, 502, "{last:?}");
    assert!(head.connection_has("close"), "{last:?}");
    let body = wire::response_body(&head, false).unwrap();
    assert_eq!(
        body,
        wire::Body::Length((last.len() - n) as u64),
        "{last:?}"
    );
}

#[test]
fn an_early_answer_says_close_or_keeps_the_connection_usable() {
    // The backend answers as soon as it has the head, without reading the body.
    let backend = Scripted::start(|mut s, _| {
        while read_head(&mut s).is_some() {
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                .is_err()
            {
                return;
            }
        }
    });
    // Streamed uploads: the backend gets the head before the body is in (a
    // buffered body would wait for its end, which this client sends only after
    // the answer).
    let proxy = proxy_with(&[backend.addr], |c| c.tune.stream_uploads = true);
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    r.stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .unwrap();
    let resp = r.response();
    assert_eq!(resp.text(), "early");
    if resp
        .header("connection")
        .is_some_and(|c| c.eq_ignore_ascii_case("close"))
    {
        r.expect_closed();
    } else {
        // It promised keep-alive: the rest of the body and another request must work.
        r.stream
            .write_all(b"0\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(r.response().status, 200, "keep-alive was promised");
    }
}

#[test]
fn a_client_that_stalls_its_upload_gets_408_and_the_backend_stays_up() {
    let (backend, seen) = echo_backend();
    let proxy = proxy_with(&[backend.addr], |c| {
        c.timeouts.body = Duration::from_millis(300);
        c.timeouts.response = Duration::from_millis(300);
        c.passive.max_fails = 3;
    });
    let addr = proxy.local_addrs()[0];
    let stalled: Vec<Reader> = (0..4)
        .map(|_| {
            let mut s = connect(addr);
            s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\npart")
                .unwrap();
            Reader::new(s)
        })
        .collect();
    for mut r in stalled {
        assert_eq!(r.response().status, 408, "the stall is the client's");
    }
    for n in 0..3 {
        victim(addr, &seen, n);
    }
}

#[test]
fn an_early_answer_stands_when_the_backend_then_stops_reading_the_upload() {
    // The backend refuses a large upload as soon as it has the head, and closes
    // with the body unread (a reset). Its 413 is the answer; the failed upload is
    // not a backend failure (one would take this backend out).
    let backend = Scripted::start(|mut s, _| {
        if let Some(head) = read_head(&mut s) {
            if head.starts_with("POST ") {
                let _ = s.write_all(
                    b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n",
                );
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                return;
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let proxy = proxy_with(&[backend.addr], |c| c.passive.max_fails = 1);
    let addr = proxy.local_addrs()[0];
    for _ in 0..3 {
        let mut s = connect(addr);
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n")
            .unwrap();
        let writer = {
            let mut s = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let block = vec![b'u'; 64 * 1024];
                for _ in 0..64 {
                    if s.write_all(&block).is_err() {
                        return;
                    }
                }
            })
        };
        let mut r = Reader::new(s);
        let resp = r.response();
        assert_eq!(resp.status, 413, "{}", resp.head);
        assert_eq!(resp.text(), "too big\n");
        drop(r);
        writer.join().unwrap();
    }
    assert_no_failure_counted(&proxy);
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn a_client_that_stops_reading_interim_responses_is_not_blamed_on_the_backend() {
    // The client pipelines a 2 MiB download and a request answered after 60
    // interim heads of 30 KB, and reads nothing. The kernel takes about 3 MB on
    // its behalf here: the download fits, the heads after it back up in the proxy.
    let link = format!("Link: <{}>; rel=preload\r\n", "/x".repeat(15_000));
    let backend = Scripted::start(move |mut s, _| {
        while let Some(head) = read_head(&mut s) {
            let mut out = Vec::new();
            if head.starts_with("GET /big ") {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n");
                out.extend(std::iter::repeat_n(b'b', 2 << 20));
                if s.write_all(&out).is_err() {
                    return;
                }
                continue;
            }
            if head.starts_with("GET /hints ") {
                for _ in 0..60 {
                    out.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\n");
                    out.extend_from_slice(link.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            if s.write_all(&out).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_with(&[backend.addr], |c| {
        c.passive.max_fails = 1;
        c.timeouts.response = Duration::from_millis(300);
        c.timeouts.body = Duration::from_millis(300);
        c.timeouts.linger = Duration::from_secs(1);
    });
    let addr = proxy.local_addrs()[0];
    let mut stalled = connect_small_window(addr);
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /hints HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // The proxy gives up on the client that does not read, and closes it.
    wait_until(
        || proxy.counts().iter().any(|c| c.accepted == 1),
        "the proxy accepts the client",
    );
    wait_until(
        || proxy.counts().iter().all(|c| c.open == 0),
        "the proxy closes the stalled client",
    );
    assert_no_failure_counted(&proxy);
    assert_eq!(get(addr, "/").status, 200);
    // It was the interim heads that backed up: the download and some of them
    // got out, the answer did not.
    let got = read_until_closed(&mut stalled);
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains(&"b".repeat(2 << 20)), "the download was cut");
    assert!(
        text.contains("HTTP/1.1 103 Early Hints"),
        "no interim head got out"
    );
    assert_eq!(
        text.matches("HTTP/1.1 200").count(),
        1,
        "the second answer got out: nothing backed up"
    );
}

#[test]
fn a_client_waiting_for_100_continue_is_not_blamed_for_the_wait() {
    // The client sends `Expect: 100-continue` and waits for the 100, which the
    // backend never sends: the backend is the one too slow (504), not the client.
    let backend = Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            read_until_end(&mut s);
        }
    });
    let proxy = proxy_with(&[backend.addr], |c| {
        c.timeouts.body = Duration::from_millis(200);
        c.timeouts.response = Duration::from_millis(400);
    });
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"PUT /f HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut r = Reader::new(s);
    assert_eq!(r.response().status, 504);
}

/// The request line's target, from a head `read_head` returned.
fn target_of(head: &str) -> String {
    head.split(' ').nth(1).unwrap_or("").to_string()
}

#[test]
fn a_late_surplus_held_back_by_nagle_shifts_no_later_answer() {
    // The backend leaves Nagle on (a socket's default). After a 204 it writes a
    // whole fake response in a second write, which its kernel holds back until
    // the 204 is acknowledged. Were that ACK left to ride on the next request,
    // the fake would come out just after that request and be read as its
    // answer, and so would every later answer, each one exchange late: every
    // client after the first would get the one before's. Acknowledged when the
    // connection goes back to the pool, the fake arrives while it is idle and is
    // caught (tests before and after the fix: 20 of 20 victims wrong, then 0).
    //
    // That holds only if the kernel did hold the fake back: a backend thread
    // descheduled between its two writes (a loaded machine) writes the fake
    // after the ACK, and so late that it is a late answer, which no HTTP/1.1
    // proxy can tell from a real one (README, "Isolation"). The backend checks
    // its own send queue after the second write; a run where the 204 was
    // already acknowledged is not this case, and is played again.
    const HELD_BACK: usize = 10;
    for _ in 0..HELD_BACK {
        if late_surplus_case_after_a_held_back_fake() {
            return;
        }
    }
    panic!("in {HELD_BACK} runs the backend's kernel never held the fake back");
}

/// One run of `a_late_surplus_held_back_by_nagle_shifts_no_later_answer`: false
/// if the backend's kernel did not hold the fake back (nothing was tested).
fn late_surplus_case_after_a_held_back_fake() -> bool {
    const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    const FAKE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN";
    let held_back = Arc::new(AtomicBool::new(false));
    let held = Arc::clone(&held_back);
    let backend = Scripted::start(move |mut s, _| {
        while let Some(head) = read_head(&mut s) {
            let target = target_of(&head);
            if target == "/evil" {
                let _ = s.write_all(NO_CONTENT);
                let _ = s.write_all(FAKE);
                // Both still unacknowledged: the 204 was in flight when the fake
                // was written, so Nagle held the fake back.
                if send_queue(&s) == NO_CONTENT.len() + FAKE.len() {
                    held.store(true, Ordering::SeqCst);
                }
                continue;
            }
            let out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{target}",
                target.len()
            );
            if s.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_with(&[backend.addr], |c| c.passive.max_fails = 0);
    let addr = proxy.local_addrs()[0];
    // A few exchanges first, so the backend connection is in its steady
    // request-answer rhythm (where the kernel delays its ACKs).
    for _ in 0..3 {
        assert_eq!(get(addr, "/warm").text(), "/warm");
    }
    assert_eq!(get(addr, "/evil").status, 204);
    let mut wrong = Vec::new();
    for n in 0..20 {
        let path = format!("/victim/{n}");
        let got = get(addr, &path).text();
        if got != path {
            wrong.push((path, got));
        }
    }
    if !held_back.load(Ordering::SeqCst) {
        return false;
    }
    assert!(wrong.is_empty(), "answers to other exchanges: {wrong:?}");
    assert_eq!(
        metric(&proxy, "corelb_upstream_surplus_total{", ""),
        1,
        "the fake answer was caught on the idle connection"
    );
    true
}

/// Bytes written to `s` that its kernel has not yet had acknowledged (sent or
/// not), by Linux's `SIOCOUTQ`.
fn send_queue(s: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ on Linux) writes one int through the pointer.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    assert_eq!(rc, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    usize::try_from(queued).unwrap_or(0)
}

#[test]
fn a_body_the_backend_skipped_after_expect_100_continue_is_never_answered_to_another() {
    // The attacker sends `Expect: 100-continue` with its body at once, and the
    // body is a request. The backend answers 401 without reading the body and
    // keeps the connection open, so it reads the body as the next request; it
    // answers it when more comes on the connection (as a pipelining server
    // would). Were the connection pooled, the next client's request would get
    // the smuggled request's answer.
    let backend = Scripted::start(|mut s, _| {
        let mut smuggled = false;
        while let Some(head) = read_head(&mut s) {
            let target = target_of(&head);
            let out = match target.as_str() {
                // No body read: what follows the head is taken for a request.
                "/auth" => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_string(),
                "/smuggled" => {
                    smuggled = true;
                    continue;
                }
                _ => {
                    let mut out = String::new();
                    if std::mem::take(&mut smuggled) {
                        out.push_str("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED");
                    }
                    out.push_str(&format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{target}",
                        target.len()
                    ));
                    out
                }
            };
            if s.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_with(&[backend.addr], |c| c.passive.max_fails = 0);
    let addr = proxy.local_addrs()[0];
    let body = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let attack = format!(
        "POST /auth HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (resp, _) = roundtrip(addr, attack.as_bytes());
    assert_eq!(resp.status, 401);
    for n in 0..3 {
        let path = format!("/victim/{n}");
        assert_eq!(get(addr, &path).text(), path, "victim {n}'s answer");
    }
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        2,
        "the connection that carried the Expect request is not reused; the next one is"
    );
}
