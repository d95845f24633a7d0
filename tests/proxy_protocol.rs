//! PROXY protocol on the listeners: a balancer in front sends a header (v1 text
//! or v2 binary) before the client's bytes, and the client address it gives is
//! the one the backend is told. Connections from peers not allowed to send one,
//! and connections whose header is missing, broken or late, are closed and
//! counted, and nothing of theirs reaches a backend. The headers here are
//! written out by hand from the specification, not by corelb's code.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use corelb::Proxy;
use corelb::config::Listen;
use corelb::proxy_protocol::Cidr;

/// A backend that answers every request with the X-Forwarded-For it was sent,
/// and counts the requests it saw.
fn xff_echo() -> (Scripted, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    let backend = Scripted::start(move |mut s, _| {
        while let Some(req) = read_request(&mut s) {
            count.fetch_add(1, Ordering::SeqCst);
            let body = req.head.get("x-forwarded-for").unwrap_or("-").to_string();
            let out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    });
    (backend, seen)
}

fn pp_listen() -> Listen {
    Listen {
        proxy_protocol: true,
        ..Listen::plain(loopback())
    }
}

/// A proxy whose first listener takes PROXY headers from loopback and whose
/// second is plain.
fn pp_proxy(backend: SocketAddr, from: &str) -> Proxy {
    proxy_with(&[backend], |c| {
        c.listen = vec![pp_listen(), Listen::plain(loopback())];
        c.proxy_protocol_from = from.split(',').map(|n| Cidr::parse(n).unwrap()).collect();
        c.timeouts.header = Duration::from_millis(300);
    })
}

/// A v2 PROXY header (PROXY command, TCP over IPv4) for 192.0.2.7:4242 ->
/// 198.51.100.1:443, with one TLV after the addresses.
fn v2_tcp4() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12 + 6]);
    h.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1]);
    h.extend_from_slice(&[0x10, 0x92, 0x01, 0xbb]);
    // PP2_TYPE_AUTHORITY "a.b"
    h.extend_from_slice(&[0x02, 0, 3, b'a', b'.', b'b']);
    h
}

/// The same for TCP over IPv6: 2001:db8::7 port 1 -> 2001:db8::1 port 2.
fn v2_tcp6() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x21, 0, 36]);
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    src[15] = 7;
    let mut dst = src;
    dst[15] = 1;
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&[0, 1, 0, 2]);
    h
}

/// Send `preamble` then two requests on one connection; the two bodies.
fn two_requests_after(addr: SocketAddr, preamble: &[u8]) -> (String, String) {
    let mut s = connect(addr);
    let mut out = preamble.to_vec();
    out.extend_from_slice(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(&out).unwrap();
    let mut r = Reader::new(s);
    let first = r.response();
    r.stream
        .write_all(b"GET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let second = r.response();
    assert_eq!((first.status, second.status), (200, 200));
    (first.text(), second.text())
}

#[test]
fn the_address_in_a_header_is_the_client_the_backend_is_told_of() {
    let (backend, _) = xff_echo();
    let proxy = pp_proxy(backend.addr, "127.0.0.0/8,::1");
    let addr = proxy.local_addrs()[0];
    let v1 = b"PROXY TCP4 203.0.113.9 198.51.100.1 51000 443\r\n";
    assert_eq!(
        two_requests_after(addr, v1),
        ("203.0.113.9".into(), "203.0.113.9".into())
    );
    let v1_6 = b"PROXY TCP6 2001:db8::9 2001:db8::1 51000 443\r\n";
    assert_eq!(two_requests_after(addr, v1_6).0, "2001:db8::9");
    assert_eq!(two_requests_after(addr, &v2_tcp4()).1, "192.0.2.7");
    assert_eq!(two_requests_after(addr, &v2_tcp6()).0, "2001:db8::7");
    // UNKNOWN (v1) and LOCAL (v2, the balancer's own check): the connection's
    // own address.
    assert_eq!(
        two_requests_after(addr, b"PROXY UNKNOWN\r\n").0,
        "127.0.0.1"
    );
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert_eq!(two_requests_after(addr, &local).0, "127.0.0.1");
    // The plain listener beside it takes no header.
    assert_eq!(get(proxy.local_addrs()[1], "/").text(), "127.0.0.1");
    assert_eq!(
        metric(&proxy, "corelb_proxy_headers_total{", "version=\"1\""),
        3
    );
    assert_eq!(
        metric(&proxy, "corelb_proxy_headers_total{", "version=\"2\""),
        3
    );
}

#[test]
fn a_header_that_comes_in_pieces_is_read_whole() {
    let (backend, _) = xff_echo();
    let proxy = pp_proxy(backend.addr, "127.0.0.1");
    let mut s = connect(proxy.local_addrs()[0]);
    let header = v2_tcp4();
    for piece in header.chunks(5) {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
        // Pacing, not a wait: each piece goes out in a segment of its own.
        std::thread::sleep(Duration::from_millis(10));
    }
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(Reader::new(s).response().text(), "192.0.2.7");
}

/// Each of these is closed without a response, counted under `reason`, and
/// nothing of it reaches the backend.
#[test]
fn connections_without_a_good_header_are_closed_and_counted() {
    let (backend, seen) = xff_echo();
    let proxy = pp_proxy(backend.addr, "127.0.0.1");
    let addr = proxy.local_addrs()[0];
    let request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut oversized = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    oversized.extend_from_slice(&[0x21, 0x11, 0x10, 0x00]);
    oversized.extend_from_slice(&[0; 4096]);
    let mut truncated_tlv = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    truncated_tlv.extend_from_slice(&[0x21, 0x11, 0, 15]);
    truncated_tlv.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 2]);
    truncated_tlv.extend_from_slice(&[0x02, 0, 9]);
    let mut long_v1 = b"PROXY UNKNOWN ".to_vec();
    long_v1.resize(200, b'x');
    long_v1.extend_from_slice(b"\r\n");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no header", request.to_vec(), "missing"),
        (
            "TLS instead",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00".to_vec(),
            "missing",
        ),
        (
            "v1 without CR",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n".to_vec(),
            "malformed",
        ),
        ("v1 over 107 bytes", long_v1, "malformed"),
        (
            "v1 bad address",
            b"PROXY TCP4 192.0.2.999 192.0.2.2 1 2\r\n".to_vec(),
            "malformed",
        ),
        ("v2 over its limit", oversized, "malformed"),
        ("v2 TLV past its end", truncated_tlv, "malformed"),
        (
            "v2 version 1",
            {
                let mut h = v2_tcp4();
                h[12] = 0x11;
                h
            },
            "malformed",
        ),
        (
            "v2 UDP",
            {
                let mut h = v2_tcp4();
                h[13] = 0x12;
                h
            },
            "malformed",
        ),
    ];
    for (what, bytes, reason) in cases {
        let before = metric(
            &proxy,
            "corelb_proxy_header_failures_total{",
            &format!("reason=\"{reason}\""),
        );
        let mut s = connect(addr);
        let mut out = bytes.clone();
        out.extend_from_slice(request);
        let _ = s.write_all(&out);
        let (got, _) = read_until_end(&mut s);
        assert!(
            got.is_empty(),
            "{what}: answered {:?}",
            String::from_utf8_lossy(&got)
        );
        wait_until(
            || {
                metric(
                    &proxy,
                    "corelb_proxy_header_failures_total{",
                    &format!("reason=\"{reason}\""),
                ) == before + 1
            },
            &format!("{what} counted as {reason}"),
        );
    }
    // A header cut short and then nothing: closed at the header timeout.
    let mut s = connect(addr);
    s.write_all(&v2_tcp4()[..20]).unwrap();
    let (got, _) = read_until_end(&mut s);
    assert!(got.is_empty());
    wait_until(
        || {
            metric(
                &proxy,
                "corelb_proxy_header_failures_total{",
                "reason=\"timeout\"",
            ) == 1
        },
        "the late header counted as a timeout",
    );
    // A header cut short by the close.
    let mut s = connect(addr);
    s.write_all(b"PROXY TCP4 192.0").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, _) = read_until_end(&mut s);
    assert!(got.is_empty());
    wait_until(
        || {
            metric(
                &proxy,
                "corelb_proxy_header_failures_total{",
                "reason=\"closed\"",
            ) == 1
        },
        "the header cut by a close counted as closed",
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "a request reached the backend"
    );
    assert_no_open_connections(&proxy);
}

#[test]
fn a_peer_not_allowed_to_send_headers_is_closed_unread() {
    let (backend, seen) = xff_echo();
    // Only a network that is not loopback may send headers.
    let proxy = pp_proxy(backend.addr, "10.0.0.0/8");
    let mut s = connect(proxy.local_addrs()[0]);
    let _ = s.write_all(
        b"PROXY TCP4 203.0.113.9 198.51.100.1 51000 443\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let (got, _) = read_until_end(&mut s);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    wait_until(
        || {
            metric(
                &proxy,
                "corelb_proxy_header_failures_total{",
                "reason=\"untrusted\"",
            ) == 1
        },
        "the untrusted peer counted",
    );
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

/// A second header on the same connection, or one sent to a plain listener, is
/// no request: 400, the connection closes, and the backend sees nothing of it.
#[test]
fn a_header_where_a_request_belongs_is_a_bad_request() {
    let (backend, seen) = xff_echo();
    let proxy = pp_proxy(backend.addr, "127.0.0.1");
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(
        b"PROXY TCP4 203.0.113.9 198.51.100.1 51000 443\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut r = Reader::new(s);
    assert_eq!(r.response().text(), "203.0.113.9");
    r.stream
        .write_all(
            b"PROXY TCP4 192.0.2.66 198.51.100.1 1 443\r\nGET /evil HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
    assert_eq!(r.response().status, 400);
    r.expect_closed();
    for header in [
        v2_tcp4(),
        b"PROXY TCP4 192.0.2.66 198.51.100.1 1 443\r\n".to_vec(),
    ] {
        let mut s = connect(proxy.local_addrs()[1]);
        let mut out = header;
        out.extend_from_slice(b"GET /evil HTTP/1.1\r\nHost: t\r\n\r\n");
        s.write_all(&out).unwrap();
        let mut r = Reader::new(s);
        assert_eq!(r.response().status, 400);
        r.expect_closed();
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "only the first request went through"
    );
}

#[test]
fn tls_comes_after_the_header() {
    use common::tls::*;
    let (backend, _) = xff_echo();
    let ca = Ca::new("pp CA");
    let dir = TempDir::new("pp-tls");
    let files = write_pair(&dir, "site", &ca.leaf(&["localhost"]));
    let proxy = proxy_with(&[backend.addr], |c| {
        c.listen = vec![Listen {
            tls: true,
            ..pp_listen()
        }];
        c.tls = vec![files];
        c.proxy_protocol_from = vec![Cidr::parse("127.0.0.1").unwrap()];
    });
    let mut sock = TcpStream::connect(proxy.local_addrs()[0]).unwrap();
    sock.write_all(&v2_tcp6()).unwrap();
    let stream = tls_over(sock, "localhost", &client_config(&ca.pem)).unwrap();
    let mut r = Reader::new(stream);
    r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().text(), "2001:db8::7");
}

/// A free loopback port (bound once and let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET through `addr` from the local address `from`; the body.
fn get_from(from: &str, addr: SocketAddr) -> String {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from.parse().unwrap(), 0).into())
        .unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = Reader::new(s);
    let resp = r.response();
    assert_eq!(resp.status, 200, "{}", resp.head);
    resp.text()
}

/// HAProxy (`haproxy -db`) running `sections` after a shared global and
/// defaults part in `mode`, until dropped; `None` (and a line saying the test
/// skipped) when it is not installed. Waits until every port in `listens`
/// accepts connections.
struct Haproxy {
    child: std::process::Child,
    _dir: common::tls::TempDir,
}

impl Haproxy {
    fn start(tag: &str, mode: &str, sections: &str, listens: &[u16]) -> Option<Haproxy> {
        if std::process::Command::new("haproxy")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!("skipped: haproxy is not installed (apt-get install haproxy)");
            return None;
        }
        let dir = common::tls::TempDir::new(tag);
        let config = dir.write(
            "haproxy.cfg",
            &format!(
                "global\n  maxconn 100\ndefaults\n  mode {mode}\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n{sections}"
            ),
        );
        let child = std::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let haproxy = Haproxy { child, _dir: dir };
        let up = |port: &u16| TcpStream::connect(("127.0.0.1", *port)).is_ok();
        wait_until(|| listens.iter().all(up), "haproxy listens");
        Some(haproxy)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy in `mode tcp` in front, as a real L4 balancer: one frontend sends
/// v1 headers (`send-proxy`), one v2 (`send-proxy-v2`), both from 127.0.0.2,
/// the one peer corelb believes. A client at 127.0.0.3 is the address the
/// backend is told of, whichever way it came.
#[test]
fn haproxy_in_front_passes_the_client_address_in_v1_and_v2() {
    let (backend, _) = xff_echo();
    let proxy = pp_proxy(backend.addr, "127.0.0.2");
    let corelb = proxy.local_addrs()[0];
    let (v1, v2) = (free_port(), free_port());
    let Some(haproxy) = Haproxy::start(
        "pp-haproxy",
        "tcp",
        &format!(
            "listen v1\n  bind 127.0.0.1:{v1}\n  server corelb {corelb} send-proxy source 127.0.0.2\n\
             listen v2\n  bind 127.0.0.1:{v2}\n  server corelb {corelb} send-proxy-v2 source 127.0.0.2\n"
        ),
        &[v1, v2],
    ) else {
        return;
    };
    let seen = (
        get_from("127.0.0.3", SocketAddr::from(([127, 0, 0, 1], v1))),
        get_from("127.0.0.3", SocketAddr::from(([127, 0, 0, 1], v2))),
    );
    drop(haproxy);
    assert_eq!(seen, ("127.0.0.3".into(), "127.0.0.3".into()));
    // (The probes that waited for HAProxy's ports made connections too.)
    for version in ["version=\"1\"", "version=\"2\""] {
        assert!(metric(&proxy, "corelb_proxy_headers_total{", version) >= 1);
    }
    // The client itself, straight to corelb, is no balancer.
    let mut s = connect(corelb);
    let _ = s.write_all(b"PROXY TCP4 203.0.113.9 198.51.100.1 1 2\r\n");
    assert!(read_until_end(&mut s).0.is_empty());
}

/// Read a PROXY header at the start of a backend connection, by the
/// specification (not corelb's parser): the client and destination it names as
/// "ip:port ip:port", or "local" for v1 UNKNOWN and v2 LOCAL; `None` if the
/// connection does not begin with one.
fn read_proxy_header(s: &mut TcpStream) -> Option<String> {
    use std::io::Read;
    let mut first = [0u8; 6];
    s.read_exact(&mut first).ok()?;
    if &first == b"PROXY " {
        let mut line = first.to_vec();
        while !line.ends_with(b"\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).ok()?;
            line.push(b[0]);
            if line.len() > 107 {
                return None;
            }
        }
        let line = String::from_utf8(line).ok()?;
        let f: Vec<&str> = line.trim_end().split(' ').collect();
        return match f[1] {
            "UNKNOWN" => Some("local".into()),
            "TCP4" => Some(format!("{}:{} {}:{}", f[2], f[4], f[3], f[5])),
            "TCP6" => Some(format!("[{}]:{} [{}]:{}", f[2], f[4], f[3], f[5])),
            _ => None,
        };
    }
    let mut rest = [0u8; 10];
    s.read_exact(&mut rest).ok()?;
    let head: Vec<u8> = first.iter().chain(&rest).copied().collect();
    if head[..12] != *b"\r\n\r\n\0\r\nQUIT\n" {
        return None;
    }
    let mut body = vec![0u8; usize::from(u16::from_be_bytes([head[14], head[15]]))];
    s.read_exact(&mut body).ok()?;
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match (head[12], head[13]) {
        (0x20, _) => Some("local".into()),
        (0x21, 0x11) => {
            let ip = |at: usize| {
                std::net::Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3])
            };
            Some(format!("{}:{} {}:{}", ip(0), port(8), ip(4), port(10)))
        }
        (0x21, 0x21) => {
            let ip = |at: usize| {
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&body[at..at + 16]).unwrap())
            };
            Some(format!(
                "[{}]:{} [{}]:{}",
                ip(0),
                port(32),
                ip(16),
                port(34)
            ))
        }
        _ => None,
    }
}

/// A backend that wants a PROXY header first (closing a connection without
/// one) and answers each request with "<what the header said> conn=<n>".
fn proxy_aware_backend() -> Scripted {
    Scripted::start(|mut s, n| {
        let Some(said) = read_proxy_header(&mut s) else {
            return;
        };
        while let Some(req) = read_request(&mut s) {
            let body = if req.head.target == "/health" {
                "ok".to_string()
            } else {
                format!("{said} conn={n}")
            };
            let out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// Each new connection to a `send-proxy` backend tells it the client, and a
/// connection told one client's address serves that client connection only:
/// two clients taking turns get two backend connections, each always its own;
/// when a client leaves, its idle connection closes.
#[test]
fn a_send_proxy_backend_never_sees_one_client_on_another_clients_connection() {
    for version in [corelb::config::SendProxy::V1, corelb::config::SendProxy::V2] {
        let backend = proxy_aware_backend();
        let proxy = proxy_with(&[], |c| {
            c.backends = vec![corelb::Backend {
                send_proxy: version,
                ..corelb::Backend::new(backend.addr)
            }];
        });
        let listener = proxy.local_addrs()[0];
        let (mut a, mut b) = (
            Reader::new(connect(listener)),
            Reader::new(connect(listener)),
        );
        let (a_addr, b_addr) = (
            a.stream.local_addr().unwrap(),
            b.stream.local_addr().unwrap(),
        );
        let mut seen = Vec::new();
        for _ in 0..3 {
            for (r, me) in [(&mut a, a_addr), (&mut b, b_addr)] {
                r.stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    .unwrap();
                let text = r.response().text();
                assert!(
                    text.starts_with(&format!("{me} {listener} ")),
                    "{version:?}: {me} was shown as {text}"
                );
                seen.push((me, text));
            }
        }
        // One backend connection per client, the same one every time.
        for me in [a_addr, b_addr] {
            let mut conns: Vec<&String> = seen
                .iter()
                .filter(|(m, _)| *m == me)
                .map(|(_, t)| t)
                .collect();
            conns.dedup();
            assert_eq!(
                conns.len(),
                1,
                "{version:?}: {me} used several connections: {conns:?}"
            );
        }
        assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
        drop(a);
        wait_until(
            || metric(&proxy, "corelb_upstream_connections{", "") == 1,
            "the departed client's backend connection closes",
        );
    }
}

/// Behind a balancer and in front of a `send-proxy-v2` backend, corelb passes
/// on the client and destination its own PROXY header gave.
#[test]
fn the_address_a_balancer_gave_is_the_one_passed_on() {
    let backend = proxy_aware_backend();
    let proxy = proxy_with(&[], |c| {
        c.listen = vec![pp_listen()];
        c.proxy_protocol_from = vec![Cidr::parse("127.0.0.1").unwrap()];
        c.backends = vec![corelb::Backend {
            send_proxy: corelb::config::SendProxy::V2,
            ..corelb::Backend::new(backend.addr)
        }];
    });
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(
        b"PROXY TCP6 2001:db8::9 2001:db8::1 51000 443\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        Reader::new(s).response().text(),
        "[2001:db8::9]:51000 [2001:db8::1]:443 conn=0"
    );
}

/// Health checks to a backend that wants PROXY headers send the
/// specification's header for a balancer's own connection, so it stays up.
#[test]
fn health_checks_to_a_send_proxy_backend_send_a_header_of_their_own() {
    for version in [corelb::config::SendProxy::V1, corelb::config::SendProxy::V2] {
        let backend = proxy_aware_backend();
        let proxy = proxy_with(&[], |c| {
            c.backends = vec![corelb::Backend {
                send_proxy: version,
                ..corelb::Backend::new(backend.addr)
            }];
            let mut check = corelb::config::CheckConfig::new("/health".into());
            check.interval = Duration::from_millis(50);
            check.fall = 1;
            c.health_check = Some(check);
        });
        wait_until(
            || backend.connections.load(Ordering::SeqCst) >= 3,
            "a few checks ran",
        );
        assert!(
            proxy.stats().status_json().contains("\"up\":true"),
            "{version:?}"
        );
        assert_eq!(get(proxy.local_addrs()[0], "/").status, 200);
    }
}

/// HAProxy as the real receiver: an HTTP frontend with `accept-proxy` behind a
/// `send-proxy-v2` (then `send-proxy`) backend of corelb's sets
/// X-Forwarded-For from the source it was told; a client at 127.0.0.3 is the
/// address that arrives.
#[test]
fn haproxy_behind_reads_the_headers_corelb_sends() {
    let (origin, _) = xff_echo();
    let port = free_port();
    let Some(haproxy) = Haproxy::start(
        "pp-haproxy-behind",
        "http",
        &format!(
            "frontend fe\n  bind 127.0.0.1:{port} accept-proxy\n  http-request set-header X-Forwarded-For %[src]\n  default_backend be\n\
             backend be\n  server origin {}\n",
            origin.addr
        ),
        &[port],
    ) else {
        return;
    };
    let mut seen = Vec::new();
    for version in [corelb::config::SendProxy::V2, corelb::config::SendProxy::V1] {
        let proxy = proxy_with(&[], |c| {
            c.backends = vec![corelb::Backend {
                send_proxy: version,
                ..corelb::Backend::new(SocketAddr::from(([127, 0, 0, 1], port)))
            }];
        });
        seen.push(get_from("127.0.0.3", proxy.local_addrs()[0]));
    }
    drop(haproxy);
    assert_eq!(seen, ["127.0.0.3", "127.0.0.3"]);
}
