//! Round-robin, keep-alive reuse on both sides, pipelining, concurrency, and the
//! spread of connections over workers.

mod common;

use std::io::Write;
use std::net::SocketAddr;

use common::*;

fn backend_names(proxy: SocketAddr, n: usize) -> Vec<String> {
    let mut r = Reader::new(connect(proxy));
    (0..n)
        .map(|_| {
            r.stream
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let resp = r.response();
            assert_eq!(resp.status, 200);
            resp.text()
        })
        .collect()
}

#[test]
fn max_idle_per_backend_bounds_the_pool() {
    let origins = origins(1);
    let addrs = [origins[0].local_addr()];
    // None kept: every request opens a connection of its own.
    let proxy = proxy_with(&addrs, |c| {
        c.workers = 1;
        c.tune.max_idle_per_backend = 0;
    });
    assert_eq!(backend_names(proxy.local_addrs()[0], 20).len(), 20);
    assert_eq!(origins[0].requests(), 20);
    assert_eq!(origins[0].connections(), 20, "a pool of size 0 reused one");
    drop(proxy);
    // One kept: sequential requests share it.
    let proxy = proxy_with(&addrs, |c| {
        c.workers = 1;
        c.tune.max_idle_per_backend = 1;
    });
    assert_eq!(backend_names(proxy.local_addrs()[0], 20).len(), 20);
    assert_eq!(origins[0].requests(), 40);
    assert_eq!(
        origins[0].connections(),
        21,
        "sequential requests did not share one"
    );
}

#[test]
fn round_robin_is_exact_over_two_and_three_backends() {
    for n in [2, 3] {
        let origins = origins(n);
        let addrs: Vec<_> = origins.iter().map(|o| o.local_addr()).collect();
        let proxy = proxy_for(&addrs, 2);
        let names = backend_names(proxy.local_addrs()[0], 4 * n);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(
                name,
                &format!("backend {}\n", addrs[i % n]),
                "request {i} of {names:?}"
            );
        }
    }
}

#[test]
fn keep_alive_reuses_connections_on_both_sides() {
    let origins = origins(2);
    let addrs: Vec<_> = origins.iter().map(|o| o.local_addr()).collect();
    let proxy = proxy_for(&addrs, 1);
    let names = backend_names(proxy.local_addrs()[0], 200);
    assert_eq!(names.len(), 200);
    let backend_conns: u64 = origins.iter().map(|o| o.connections()).sum();
    let backend_reqs: u64 = origins.iter().map(|o| o.requests()).sum();
    assert_eq!(backend_reqs, 200);
    assert!(
        backend_conns <= 4,
        "200 requests over one client connection used {backend_conns} backend connections"
    );
    assert_eq!(
        proxy.counts()[0].accepted,
        1,
        "the client connection was reused"
    );
}

#[test]
fn ten_pipelined_requests_in_one_write_are_answered_in_order() {
    let origins = origins(2);
    let addrs: Vec<_> = origins.iter().map(|o| o.local_addr()).collect();
    let proxy = proxy_for(&addrs, 1);
    let mut batch = Vec::new();
    for i in 1..=10 {
        batch.extend_from_slice(format!("GET /size/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(&batch).unwrap();
    let mut r = Reader::new(s);
    for i in 1..=10 {
        let resp = r.response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), i, "response {i} out of order");
    }
}

#[test]
fn pipelined_requests_then_half_close_are_all_answered() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    let mut batch = Vec::new();
    for i in 1..=5 {
        batch.extend_from_slice(format!("GET /size/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    s.write_all(&batch).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut r = Reader::new(s);
    for i in 1..=5 {
        assert_eq!(r.response().body.len(), i);
    }
    r.expect_closed();
}

#[test]
fn two_hundred_clients_times_two_hundred_requests_all_match() {
    let origins = origins(2);
    let addrs: Vec<_> = origins.iter().map(|o| o.local_addr()).collect();
    let proxy = proxy_for(&addrs, 2);
    let addr = proxy.local_addrs()[0];
    let threads: Vec<_> = (0..200)
        .map(|client| {
            std::thread::spawn(move || {
                let mut r = Reader::new(connect(addr));
                for i in 0..200 {
                    let tag = format!("c{client}-r{i}");
                    r.stream
                        .write_all(
                            format!("GET /echo?{tag} HTTP/1.1\r\nHost: t\r\nX-Tag: {tag}\r\n\r\n")
                                .as_bytes(),
                        )
                        .unwrap();
                    let resp = r.response();
                    assert_eq!(resp.status, 200);
                    let text = resp.text();
                    assert!(
                        text.starts_with(&format!("GET /echo?{tag} HTTP/1.1\r\n")),
                        "{tag} got {text}"
                    );
                    assert!(
                        text.contains(&format!("X-Tag: {tag}\r\n")),
                        "{tag} got {text}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    // A worker counts a request just after writing its last byte, so the count may
    // trail the client's read by a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let total = loop {
        let total: u64 = proxy.counts().iter().map(|c| c.requests).sum();
        if total >= 40_000 || std::time::Instant::now() > deadline {
            break total;
        }
        // Back-off between two looks.
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(total, 40_000);
    assert_no_open_connections(&proxy);
}

#[test]
fn two_workers_share_the_connections() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 2);
    let addr = proxy.local_addrs()[0];
    // SO_REUSEPORT hashes each connection's 4-tuple; with 200 connections the
    // chance that one worker gets none is 2^-199.
    for _ in 0..200 {
        assert_eq!(get(addr, "/").status, 200);
    }
    let counts = proxy.counts();
    assert_eq!(counts.len(), 2);
    assert_eq!(counts.iter().map(|c| c.accepted).sum::<u64>(), 200);
    for (i, c) in counts.iter().enumerate() {
        assert!(c.accepted > 0, "worker {i} accepted nothing: {counts:?}");
    }
}

#[test]
fn backends_answering_http10_or_close_are_not_pooled() {
    for answer in [
        &b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ] {
        // The backend would happily go on; the proxy must not ask it to.
        let backend = Scripted::answering(answer);
        let proxy = proxy_for(&[backend.addr], 1);
        let mut r = Reader::new(connect(proxy.local_addrs()[0]));
        for _ in 0..3 {
            r.stream
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let resp = r.response();
            assert_eq!(resp.text(), "ok");
            assert_eq!(
                resp.header("connection"),
                None,
                "the client connection stays keep-alive"
            );
        }
        let conns = backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(conns, 3, "{:?}", String::from_utf8_lossy(answer));
    }
}

#[test]
fn every_listen_address_serves_including_ipv6() {
    let origins = origins(1);
    let v6_backend =
        corelb::Origin::start("[::1]:0".parse().unwrap(), 1, None).expect("origin on ::1");
    let proxy = proxy_with(&[origins[0].local_addr(), v6_backend.local_addr()], |c| {
        c.listen = [loopback(), loopback(), "[::1]:0".parse().unwrap()]
            .map(corelb::config::Listen::plain)
            .to_vec();
        c.workers = 2;
    });
    let addrs = proxy.local_addrs().to_vec();
    assert_eq!(addrs.len(), 3);
    assert_ne!(addrs[0], addrs[1]);
    assert!(addrs[2].is_ipv6());
    let mut names = Vec::new();
    for addr in &addrs {
        for _ in 0..2 {
            let resp = get(*addr, "/");
            assert_eq!(resp.status, 200, "via {addr}");
            names.push(resp.text());
        }
    }
    // Both backends, the IPv6 one included, answered; the client address of an IPv6
    // client is forwarded as such.
    assert!(names.iter().any(|n| n.contains("[::1]")), "{names:?}");
    let (echo, _) = roundtrip(addrs[2], b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        echo.text().contains("X-Forwarded-For: ::1\r\n"),
        "{}",
        echo.text()
    );
}

/// A backend that answers "slow" after `delay`, keeping connections alive.
fn slow_backend(delay: std::time::Duration) -> Scripted {
    Scripted::start(move |mut s, _| {
        while read_head(&mut s).is_some() {
            // The slowness under test.
            std::thread::sleep(delay);
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                .is_err()
            {
                return;
            }
        }
    })
}

/// `clients` threads, each sending `each` requests; the bodies they got.
fn run_clients(addr: std::net::SocketAddr, clients: usize, each: usize) -> Vec<String> {
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut r = Reader::new(connect(addr));
                (0..each)
                    .map(|_| {
                        r.stream
                            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                            .unwrap();
                        r.response().text()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn least_connections_sends_load_around_a_slow_backend() {
    use corelb::config::Algorithm;
    let slow = slow_backend(std::time::Duration::from_millis(100));
    let fast = origins(1);
    for (algorithm, at_most) in [
        (Algorithm::LeastConnections, 0.25),
        (Algorithm::PowerOfTwo, 0.25),
    ] {
        let proxy = proxy_with(&[slow.addr, fast[0].local_addr()], |c| {
            c.workers = 2;
            c.algorithm = algorithm;
        });
        let texts = run_clients(proxy.local_addrs()[0], 8, 10);
        let share = texts.iter().filter(|t| *t == "slow").count() as f64 / 80.0;
        assert!(
            share <= at_most,
            "{algorithm}: {share} of requests went to the slow backend"
        );
        assert_no_open_connections(&proxy);
        assert_eq!(
            proxy.inflight(),
            [0, 0],
            "{algorithm}: in-flight counts leaked"
        );
    }
}

#[test]
fn weighted_round_robin_follows_the_weights() {
    let origins: Vec<corelb::Origin> = ["a", "b"]
        .iter()
        .map(|b| corelb::Origin::start(loopback(), 1, Some((*b).into())).unwrap())
        .collect();
    let mut cfg = corelb::ProxyConfig::new(
        vec![loopback()],
        origins
            .iter()
            .zip([3, 1])
            .map(|(o, weight)| corelb::Backend {
                weight,
                ..backend_of(o.local_addr())
            })
            .collect(),
    );
    cfg.workers = 1;
    cfg.algorithm = corelb::config::Algorithm::WeightedRoundRobin;
    let proxy = corelb::Proxy::start(cfg).unwrap();
    let texts = run_clients(proxy.local_addrs()[0], 1, 400);
    assert_eq!(texts.iter().filter(|t| *t == "a").count(), 300);
}

#[test]
fn hash_on_a_header_keeps_a_user_on_one_backend() {
    let origins: Vec<corelb::Origin> = (0..3)
        .map(|i| corelb::Origin::start(loopback(), 1, Some(format!("o{i}"))).unwrap())
        .collect();
    let addrs: Vec<_> = origins.iter().map(|o| o.local_addr()).collect();
    let proxy = proxy_with(&addrs, |c| {
        c.algorithm = corelb::config::Algorithm::Hash;
        c.hash_header = Some("X-User".into());
    });
    let addr = proxy.local_addrs()[0];
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let backends: std::collections::HashSet<String> = (0..5)
            .map(|_| {
                let raw = format!(
                    "GET / HTTP/1.1\r\nHost: t\r\nX-User: u{user}\r\nConnection: close\r\n\r\n"
                );
                roundtrip(addr, raw.as_bytes()).0.text()
            })
            .collect();
        assert_eq!(backends.len(), 1, "user {user} moved: {backends:?}");
        seen.extend(backends);
    }
    assert_eq!(seen.len(), 3, "30 users all on {seen:?}");
}
