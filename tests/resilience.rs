//! Backend failure: retries on another backend, passive health (a failing backend
//! is taken out and tried again after a cool-down), and a backend killed under
//! load. What takes the last backend out, and 503, are in `backend_state.rs`.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use corelb::Origin;
use corelb::config::Passive;

fn status_of(proxy: SocketAddr, raw: &[u8]) -> Response {
    roundtrip(proxy, raw).0
}

#[test]
fn a_refused_connect_moves_the_request_to_the_next_backend() {
    let origins = origins(1);
    let closed = ClosedPort::new();
    let dead = closed.addr;
    let proxy = proxy_with(&[dead, origins[0].local_addr()], |c| {
        c.workers = 1;
        // Never take the dead one out, so every other request meets it first.
        c.passive = Passive {
            max_fails: 0,
            window: Duration::from_secs(10),
        };
    });
    for _ in 0..20 {
        // POST too: nothing of it was sent, so it is safe to move.
        let resp = status_of(
            proxy.local_addrs()[0],
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        );
        assert_eq!(resp.status, 200);
    }
    assert_eq!(origins[0].requests(), 20);
}

#[test]
fn retries_are_bounded_then_502() {
    for retries in [0u32, 2] {
        let holes: Vec<Scripted> = (0..4).map(|_| black_hole()).collect();
        let addrs: Vec<SocketAddr> = holes.iter().map(|h| h.addr).collect();
        let proxy = proxy_with(&addrs, |c| {
            c.workers = 1;
            c.retries = retries;
            c.passive.max_fails = 0;
        });
        let started = Instant::now();
        let resp = get(proxy.local_addrs()[0], "/");
        assert_eq!(resp.status, 502, "retries {retries}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let tries: usize = holes
            .iter()
            .map(|h| h.connections.load(Ordering::SeqCst))
            .sum();
        assert_eq!(tries as u32, retries + 1, "one try plus {retries} retries");
    }
}

#[test]
fn a_failing_backend_is_taken_out_then_tried_again() {
    let origins = origins(1);
    let closed = ClosedPort::new();
    let flaky = closed.addr;
    let proxy = proxy_with(&[flaky, origins[0].local_addr()], |c| {
        c.workers = 1;
        // No retries: a request sent to the dead backend fails, which shows
        // whether it is still being picked.
        c.retries = 0;
        c.passive = Passive {
            max_fails: 2,
            window: Duration::from_millis(500),
        };
    });
    let addr = proxy.local_addrs()[0];
    let statuses: Vec<u16> = (0..4).map(|_| get(addr, "/").status).collect();
    assert_eq!(statuses, [502, 200, 502, 200], "two failures take it out");
    for _ in 0..10 {
        assert_eq!(get(addr, "/").status, 200, "picked while out");
    }
    // The backend comes back on the same port; after the cool-down it gets traffic.
    let revived = Origin::start(closed.release(), 1, Some("revived".into())).unwrap();
    wait_until(
        || backend_up(&proxy, flaky),
        "the cool-down ends and the proxy counts the backend up again",
    );
    let texts: Vec<String> = (0..10).map(|_| get(addr, "/").text()).collect();
    assert_eq!(
        texts.iter().filter(|t| *t == "revived").count(),
        5,
        "traffic did not return evenly: {texts:?}"
    );
    drop(revived);
}

/// A backend that reads a request head and then closes without answering.
fn black_hole() -> Scripted {
    Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            drop(s);
        }
    })
}

#[test]
fn an_idempotent_request_is_retried_after_a_backend_drops_it_and_a_post_is_not() {
    let origins = origins(1);
    let hole = black_hole();
    let proxy = proxy_with(&[hole.addr, origins[0].local_addr()], |c| {
        c.workers = 1;
        c.passive.max_fails = 0;
    });
    let addr = proxy.local_addrs()[0];
    // Round-robin starts at the black hole: the GET was sent there, then moved.
    let resp = status_of(
        addr,
        b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    // The POST is sent to the black hole too (the counter is at it again) and must
    // not be repeated: the backend may have acted on it.
    let _ = status_of(
        addr,
        b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let resp = status_of(
        addr,
        b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert_eq!(resp.status, 502);
    assert_eq!(origins[0].requests(), 2, "the POST was sent twice");
}

#[test]
fn killing_a_backend_under_load_fails_only_requests_in_flight() {
    let keep = Origin::start(loopback(), 1, Some("keep".into())).unwrap();
    let doomed = Origin::start(loopback(), 1, Some("doomed".into())).unwrap();
    let proxy = proxy_with(&[keep.local_addr(), doomed.local_addr()], |c| {
        c.workers = 2;
        c.passive = Passive {
            max_fails: 2,
            window: Duration::from_secs(30),
        };
    });
    let addr = proxy.local_addrs()[0];
    let killed = Arc::new(AtomicBool::new(false));
    let errors_after = Arc::new(AtomicUsize::new(0));
    let done_after = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (killed, errors_after, done_after) = (
                Arc::clone(&killed),
                Arc::clone(&errors_after),
                Arc::clone(&done_after),
            );
            std::thread::spawn(move || {
                let mut errors_before_kill = 0;
                let mut settle_until = None;
                while done_after.load(Ordering::Relaxed) < 800 {
                    let resp = status_of(
                        addr,
                        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                    );
                    if !killed.load(Ordering::Relaxed) {
                        errors_before_kill += usize::from(resp.status != 200);
                        continue;
                    }
                    // Requests that started before the kill may fail; give them 100 ms.
                    let settle = *settle_until
                        .get_or_insert_with(|| Instant::now() + Duration::from_millis(100));
                    if Instant::now() > settle {
                        if resp.status != 200 {
                            errors_after.fetch_add(1, Ordering::Relaxed);
                        }
                        done_after.fetch_add(1, Ordering::Relaxed);
                    }
                }
                errors_before_kill
            })
        })
        .collect();
    // The load is on both backends before the kill.
    wait_until(
        || keep.requests() >= 50 && doomed.requests() >= 50,
        "both backends serve the load",
    );
    doomed.shutdown();
    killed.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    for c in clients {
        assert_eq!(c.join().unwrap(), 0, "errors before the kill");
        assert!(Instant::now() < deadline);
    }
    assert_eq!(
        errors_after.load(Ordering::Relaxed),
        0,
        "errors once the kill had settled"
    );
    assert!(keep.requests() > 800);
    let _ = std::io::stderr().flush();
}

/// A loopback listener whose accept queue is full, so a new connect hangs (Linux
/// drops the SYN); returns it with the connections that fill it.
fn full_backlog() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&loopback().into()).unwrap();
    s.listen(1).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => fillers.push(c),
            Err(_) => return (s, fillers, addr),
        }
    }
    panic!("the accept queue never filled");
}

#[test]
fn connect_timeout_against_a_full_backlog_moves_on_or_is_502() {
    let (_listener, _fillers, stuck) = full_backlog();
    let origins = origins(1);
    let timeout = Duration::from_millis(200);
    let proxy = proxy_with(&[stuck, origins[0].local_addr()], |c| {
        c.timeouts.connect = timeout;
        c.passive.max_fails = 0;
    });
    // The first request meets the stuck backend and moves on after the timeout.
    let started = Instant::now();
    assert_eq!(get(proxy.local_addrs()[0], "/").status, 200);
    let took = started.elapsed();
    assert!(
        took >= timeout,
        "answered in {took:?}: the connect did not hang"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");

    let alone = proxy_with(&[stuck], |c| {
        c.timeouts.connect = timeout;
        c.retries = 0;
    });
    let started = Instant::now();
    assert_eq!(get(alone.local_addrs()[0], "/").status, 502);
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A backend answering every request (health checks included) with `status`
/// while `healthy` is false, and 200 "toggled" while it is true.
fn toggled(healthy: Arc<AtomicBool>) -> Scripted {
    Scripted::start(move |mut s, _| {
        while let Some(head) = read_head(&mut s) {
            let answer: &[u8] = if healthy.load(Ordering::SeqCst) {
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ntoggled"
            } else {
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nsick"
            };
            if s.write_all(answer).is_err() || head.contains("Connection: close") {
                return;
            }
        }
    })
}

fn checked(path: &str) -> corelb::config::CheckConfig {
    let mut check = corelb::config::CheckConfig::new(path.into());
    check.interval = Duration::from_millis(50);
    check.timeout = Duration::from_millis(50);
    check.rise = 2;
    check.fall = 2;
    check
}

/// Wait until `pred` holds for `n` requests in a row through `addr`.
fn wait_for_texts(addr: SocketAddr, n: usize, pred: impl Fn(&str) -> bool) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    let mut run = 0;
    while run < n {
        assert!(Instant::now() < deadline, "traffic never settled");
        if pred(&get(addr, "/").text()) {
            run += 1;
        } else {
            run = 0;
            // Back-off before the next look.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    started.elapsed()
}

#[test]
fn a_health_path_answering_500_takes_its_backend_out_and_rise_brings_it_back() {
    let origins = origins(1);
    let healthy = Arc::new(AtomicBool::new(false));
    let sick = toggled(Arc::clone(&healthy));
    let proxy = proxy_with(&[sick.addr, origins[0].local_addr()], |c| {
        c.health_check = Some(checked("/health"));
    });
    let addr = proxy.local_addrs()[0];
    // Out after `fall` failed checks: every request then goes to the origin.
    wait_for_texts(addr, 10, |t| t.starts_with("backend "));
    // Healthy again: back after `rise` passing checks, sharing evenly.
    healthy.store(true, Ordering::SeqCst);
    let took = wait_for_texts(addr, 1, |t| t == "toggled");
    assert!(
        took >= Duration::from_millis(50),
        "back after {took:?}, before 2 checks"
    );
    let texts: Vec<String> = (0..10).map(|_| get(addr, "/").text()).collect();
    assert_eq!(
        texts.iter().filter(|t| *t == "toggled").count(),
        5,
        "{texts:?}"
    );
}

#[test]
fn a_backend_that_does_not_answer_checks_is_taken_out() {
    let origins = origins(1);
    let (_listener, _fillers, stuck) = full_backlog();
    let proxy = proxy_with(&[stuck, origins[0].local_addr()], |c| {
        c.health_check = Some(checked("/"));
        c.retries = 0;
        c.passive.max_fails = 0;
    });
    let addr = proxy.local_addrs()[0];
    // With no retries and no passive health, only the checks keep requests away.
    wait_until(
        || !backend_up(&proxy, stuck),
        "the checks take the stuck backend out",
    );
    assert!(backend_up(&proxy, origins[0].local_addr()));
    for _ in 0..6 {
        assert_eq!(get(addr, "/").status, 200);
    }
}

#[test]
fn bodies_over_max_body_bytes_are_413() {
    let origins = origins(1);
    let proxy = proxy_with(&[origins[0].local_addr()], |c| c.max_body_bytes = 10);
    let addr = proxy.local_addrs()[0];
    let (resp, mut r) = roundtrip(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n01234567890",
    );
    assert_eq!(resp.status, 413);
    r.expect_closed();
    assert_eq!(origins[0].connections(), 0, "a refused body was forwarded");
    let (resp, mut r) = roundtrip(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n5\r\n67890\r\n0\r\n\r\n",
    );
    assert_eq!(resp.status, 413);
    r.expect_closed();
    assert_eq!(
        origins[0].requests(),
        0,
        "the backend completed an oversized request"
    );
    // At the limit is fine, chunked or not (chunk framing does not count).
    let (resp, _) = roundtrip(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let (resp, _) = roundtrip(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789",
    );
    assert_eq!(resp.status, 200);
}

#[test]
fn at_max_connections_new_clients_wait_in_the_backlog() {
    let origins = origins(1);
    let proxy = proxy_with(&[origins[0].local_addr()], |c| c.max_connections = 2);
    let addr = proxy.local_addrs()[0];
    let mut held: Vec<Reader> = (0..2)
        .map(|_| {
            let mut r = Reader::new(connect(addr));
            r.stream
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert_eq!(r.response().status, 200);
            r
        })
        .collect();
    // The third connects (the kernel queues it) but is not served...
    let mut third = connect(addr);
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // ...which is known once the worker has been through its events after the
    // third arrived: it answers a later request on a held connection, and still
    // has accepted only two.
    held[0]
        .stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(held[0].response().status, 200);
    assert_eq!(proxy.counts()[0].accepted, 2, "accepted beyond the limit");
    third.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let waited = std::io::Read::read(&mut third, &mut byte);
    assert!(
        waited
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "served beyond the limit: {waited:?}"
    );
    third.set_nonblocking(false).unwrap();
    // ...until one of the first two leaves.
    held.pop();
    let mut r = Reader::new(third);
    assert_eq!(r.response().status, 200);
    assert_eq!(proxy.counts()[0].accepted, 3);
}

#[test]
fn slowloris_connections_get_408_without_delaying_normal_clients() {
    // 500 slow clients and their 500 accepted sockets share this process's limit.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let origins = origins(1);
    let header_timeout = Duration::from_millis(800);
    let proxy = proxy_with(&[origins[0].local_addr()], |c| {
        c.workers = 2;
        c.timeouts.header = header_timeout;
    });
    let addr = proxy.local_addrs()[0];
    let mut slow: Vec<std::net::TcpStream> = (0..500).map(|_| connect(addr)).collect();
    for s in &mut slow {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    }
    let started = Instant::now();
    let dripping = Arc::new(AtomicBool::new(true));
    let drip = {
        let dripping = Arc::clone(&dripping);
        let writers: Vec<std::net::TcpStream> =
            slow.iter().map(|s| s.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            let mut writers = writers;
            // One header byte per connection every 100 ms: never a complete head.
            while dripping.load(Ordering::Relaxed) {
                for w in &mut writers {
                    let _ = w.write_all(b"X");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Normal clients meanwhile: each answered at once.
    let mut slowest = Duration::ZERO;
    while started.elapsed() < header_timeout {
        let t = Instant::now();
        assert_eq!(get(addr, "/").status, 200);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(300),
        "a normal request took {slowest:?}"
    );
    // Every slow client gets its 408 and a close, soon after the timeout.
    for s in slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = Reader::new(s);
        assert_eq!(r.response().status, 408);
    }
    assert!(started.elapsed() < header_timeout + Duration::from_secs(3));
    dripping.store(false, Ordering::Relaxed);
    drip.join().unwrap();
    assert_no_open_connections(&proxy);
}
