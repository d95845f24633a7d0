//! TLS to backends: `https://` backends are reached over TLS from the workers'
//! loops, their certificates verified for their host against `--backend-ca`
//! (or the system's roots), their connections pooled as plain ones are; a
//! certificate that does not verify is a 502, counted and logged. The backends
//! are rustls servers with certificates the tests make (rcgen).

mod common;

use common::tls::*;
use common::*;
use corelb::{Proxy, ProxyConfig};

fn proxy_to(backend: corelb::Backend, ca: Option<std::path::PathBuf>) -> Proxy {
    let mut c = ProxyConfig::new(vec![loopback()], vec![backend]);
    c.workers = 1;
    c.backend_ca = ca;
    c.passive.max_fails = 0;
    Proxy::start(c).expect("proxy starts")
}

#[test]
fn requests_reach_an_https_backend_over_one_pooled_verified_connection() {
    let dir = TempDir::new("https-ok");
    let ca = Ca::new("backend CA");
    let backend = TlsBackend::start(&ca.leaf(&["localhost"]));
    let proxy = proxy_to(backend.backend(), Some(dir.write("ca.pem", &ca.pem)));
    let addr = proxy.local_addrs()[0];
    for i in 0..3 {
        let resp = get(addr, &format!("/r{i}"));
        assert_eq!(resp.status, 200, "{}", resp.head);
        // SNI names the backend's host; one connection carries them all.
        assert_eq!(resp.text(), format!("/r{i} sni=localhost conn=0"));
    }
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// Certificates that must not be trusted: each gets a 502 (never the backend's
/// answer), counted as a certificate failure.
#[test]
fn a_backend_certificate_that_does_not_verify_gets_502() {
    let dir = TempDir::new("https-bad");
    let ca = Ca::new("backend CA");
    let ca_file = dir.write("ca.pem", &ca.pem);
    let expired = ca.leaf_with(&["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let other_host = ca.leaf(&["other.test"]);
    let unknown_issuer = Ca::new("nobody's CA").leaf(&["localhost"]);
    for (what, pair, ca) in [
        ("expired", &expired, Some(ca_file.clone())),
        ("for another host", &other_host, Some(ca_file.clone())),
        (
            "from an unknown issuer",
            &unknown_issuer,
            Some(ca_file.clone()),
        ),
        // Without --backend-ca the system's roots decide, and they do not know
        // the tests' CA.
        (
            "from the tests' CA, system roots",
            &ca.leaf(&["localhost"]),
            None,
        ),
    ] {
        let backend = TlsBackend::start(pair);
        let proxy = proxy_to(backend.backend(), ca);
        let resp = get(proxy.local_addrs()[0], "/");
        assert_eq!(resp.status, 502, "a certificate {what}");
        assert!(
            metric(&proxy, "corelb_upstream_tls_failures_total{", "certificate") >= 1,
            "a certificate {what} is counted"
        );
    }
}

#[test]
fn health_checks_reach_https_backends_over_tls() {
    let dir = TempDir::new("https-check");
    let ca = Ca::new("backend CA");
    let good = TlsBackend::start(&ca.leaf(&["localhost"]));
    let expired = TlsBackend::start(&ca.leaf_with(&["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }));
    let mut c = ProxyConfig::new(vec![loopback()], vec![good.backend(), expired.backend()]);
    c.workers = 1;
    c.backend_ca = Some(dir.write("ca.pem", &ca.pem));
    let mut check = corelb::config::CheckConfig::new("/health".into());
    // Generous for a TLS handshake in a debug build, on a loaded machine.
    check.interval = std::time::Duration::from_millis(300);
    check.timeout = std::time::Duration::from_millis(300);
    check.fall = 1;
    c.health_check = Some(check);
    let proxy = Proxy::start(c).unwrap();
    let up = |b: &TlsBackend| {
        let status = proxy.stats().status_json();
        let key = format!("{{\"address\":\"localhost:{}\",\"up\":", b.addr.port());
        let at = status.find(&key).expect("the backend is in the status");
        status[at + key.len()..].starts_with("true")
    };
    wait_until(
        || !up(&expired) && up(&good),
        "the expired one is down, the good one up",
    );
    // Requests go to the good one only.
    for _ in 0..4 {
        assert_eq!(get(proxy.local_addrs()[0], "/").status, 200);
    }
}

/// TLS records for `plain`, as the connection would send them next.
fn records(s: &mut ServerStream, plain: &[u8]) -> Vec<u8> {
    use std::io::Write;
    s.conn.writer().write_all(plain).unwrap();
    let mut out = Vec::new();
    while s.conn.wants_write() {
        s.conn.write_tls(&mut out).unwrap();
    }
    out
}

/// A backend that answers its first request and then sends the first `split`
/// bytes of a record holding a forged response (with the answer, or a moment
/// later while the connection is idle); the rest of that record goes out when
/// the next request comes on the connection, ahead of that request's true
/// answer. Whatever rustls holds of a record shows in no read: a connection
/// left so must not be pooled, or the forged response is the next client's.
fn half_record_backend(
    pair: &(String, String),
    split: usize,
    idle_first: bool,
    go: crossbeam_channel::Receiver<()>,
) -> TlsBackend {
    use std::io::Write;
    TlsBackend::scripted(pair, move |mut s, n| {
        let mut first = true;
        let mut rest = Vec::new();
        while let Some(head) = read_tls_head(&mut s) {
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            let body = format!("{path} conn={n}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut out = std::mem::take(&mut rest);
            out.extend(records(&mut s, answer.as_bytes()));
            if first {
                first = false;
                let forged = records(
                    &mut s,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Forged: yes\r\n\r\nFORGED",
                );
                rest = forged[split..].to_vec();
                if idle_first {
                    s.sock.write_all(&out).unwrap();
                    // Once the client has its answer (the connection is idle).
                    let _ = go.recv_timeout(std::time::Duration::from_secs(10));
                    out.clear();
                }
                out.extend_from_slice(&forged[..split]);
            }
            if s.sock.write_all(&out).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_backend_connection_with_half_a_record_held_is_never_reused() {
    let dir = TempDir::new("https-half");
    let ca = Ca::new("backend CA");
    let ca_file = dir.write("ca.pem", &ca.pem);
    let pair = ca.leaf(&["localhost"]);
    for (split, idle_first) in [(1, false), (3, false), (5, false), (40, false), (3, true)] {
        let (go, wait) = crossbeam_channel::bounded(1);
        let backend = half_record_backend(&pair, split, idle_first, wait);
        let proxy = proxy_to(backend.backend(), Some(ca_file.clone()));
        let addr = proxy.local_addrs()[0];
        let first = get(addr, "/a");
        assert_eq!(first.text(), "/a conn=0");
        let _ = go.send(());
        if idle_first {
            // The half record arrives while the connection is idle: wait until
            // corelb has looked at it (it closes the connection).
            wait_until(
                || metric(&proxy, "corelb_upstream_connections{", "") == 0,
                "the idle connection with half a record is closed",
            );
        }
        let second = get(addr, "/b");
        assert_eq!(
            (second.status, second.text().as_str()),
            (200, "/b conn=1"),
            "split {split}, idle {idle_first}: {}",
            second.head
        );
        assert!(second.header("x-forged").is_none());
    }
}

/// A backend that takes the TCP connection and never answers the TLS hello:
/// the connect timeout covers the handshake, and the request (a POST, which
/// is never sent twice once it may have reached a backend) goes to the other
/// backend, as no byte of it can have left rustls before the handshake ended.
#[test]
fn a_backend_that_stalls_the_handshake_times_out_as_a_connect_and_is_passed_over() {
    let dir = TempDir::new("https-stall");
    let ca = Ca::new("backend CA");
    let good = TlsBackend::start(&ca.leaf(&["localhost"]));
    let silent = std::net::TcpListener::bind(loopback()).unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = std::sync::Arc::clone(&held);
    std::thread::spawn(move || {
        for s in silent.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let mut stalled = good.backend();
    stalled.addr.set_port(silent_port);
    stalled.authority = format!("localhost:{silent_port}");
    let mut c = ProxyConfig::new(vec![loopback()], vec![stalled, good.backend()]);
    c.workers = 1;
    c.backend_ca = Some(dir.write("ca.pem", &ca.pem));
    c.timeouts.connect = std::time::Duration::from_millis(200);
    c.timeouts.response = std::time::Duration::from_secs(30);
    let proxy = Proxy::start(c).unwrap();
    for i in 0..4 {
        let started = std::time::Instant::now();
        let (resp, _) = roundtrip(
            proxy.local_addrs()[0],
            format!("POST /p{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert!(
            resp.text().starts_with(&format!("/p{i} ")),
            "{}",
            resp.text()
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
    assert!(
        !held.lock().unwrap().is_empty(),
        "the stalled backend was tried"
    );
}

/// A handshake that fails (a certificate that does not verify) sent no byte of
/// the request either: a POST goes on to the other backend.
#[test]
fn a_post_passes_over_a_backend_whose_certificate_fails() {
    let dir = TempDir::new("https-post-retry");
    let ca = Ca::new("backend CA");
    let good = TlsBackend::start(&ca.leaf(&["localhost"]));
    let bad = TlsBackend::start(&ca.leaf(&["other.test"]));
    let mut c = ProxyConfig::new(vec![loopback()], vec![bad.backend(), good.backend()]);
    c.workers = 1;
    c.backend_ca = Some(dir.write("ca.pem", &ca.pem));
    let proxy = Proxy::start(c).unwrap();
    for i in 0..4 {
        let (resp, _) = roundtrip(
            proxy.local_addrs()[0],
            format!("POST /p{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.status, 200, "{}", resp.head);
    }
    assert!(bad.connections.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // The request rustls held during the failed handshake never went out: it
    // counts as sent to the backend that got it, not to the one that failed.
    let bytes = |name: &str, backend: &corelb::Backend| {
        metric(&proxy, name, &format!("backend=\"{}\"", backend.name()))
    };
    let sent = "corelb_backend_sent_bytes_total";
    let received = "corelb_backend_received_bytes_total";
    assert_eq!(bytes(sent, &bad.backend()), 0);
    assert_eq!(bytes(received, &bad.backend()), 0);
    wait_until(
        || bytes(received, &good.backend()) > 0,
        "the answers are counted",
    );
    assert!(bytes(sent, &good.backend()) >= 4 * 40);
}

/// A record that does not decrypt in the middle of a body: the client's
/// response is cut short, and the failure is counted like one before the
/// response.
#[test]
fn a_broken_record_mid_body_is_counted() {
    use std::io::Write;
    let dir = TempDir::new("https-mid-body");
    let ca = Ca::new("backend CA");
    let (go, wait) = crossbeam_channel::bounded::<()>(1);
    let backend = TlsBackend::scripted(&ca.leaf(&["localhost"]), move |mut s, _| {
        if read_tls_head(&mut s).is_some() {
            let out = records(
                &mut s,
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf",
            );
            let _ = s.sock.write_all(&out);
            // The broken record comes once the client has the part before it.
            let _ = wait.recv_timeout(std::time::Duration::from_secs(10));
            let mut out = vec![0x17, 0x03, 0x03, 0x00, 0x20];
            out.extend_from_slice(&[0x55; 0x20]);
            let _ = s.sock.write_all(&out);
            let _ = read_tls_head(&mut s);
        }
    });
    let proxy = proxy_to(backend.backend(), Some(dir.write("ca.pem", &ca.pem)));
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 256];
    while !got.ends_with(b"half") {
        match std::io::Read::read(&mut s, &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    go.send(()).unwrap();
    got.extend(read_until_end(&mut s).0);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 OK") && text.ends_with("half"),
        "{text}"
    );
    wait_until(
        || metric(&proxy, "corelb_upstream_tls_failures_total{", "") >= 1,
        "the broken record is counted",
    );
}
