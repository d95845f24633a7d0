//! Protocol upgrades: a WebSocket handshake through the proxy to the built-in
//! backend's `/ws` echo, then frames both ways through the tunnel. An upgrade the
//! backend declines stays HTTP, and nothing after the request is tunnelled.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The accept value for `KEY`, as RFC 6455 §1.3 gives it.
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn handshake(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A masked client frame (RFC 6455 §5.2).
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Read one unmasked server frame: (first byte, payload).
fn read_frame(s: &mut impl Read) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0; len as usize];
    s.read_exact(&mut payload).unwrap();
    (head[0], payload)
}

/// Read a response head byte by byte, so no tunnel byte after it is consumed.
fn read_response_head(s: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed in the head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[test]
fn websocket_frames_are_echoed_through_the_tunnel() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(handshake("/ws").as_bytes()).unwrap();
    let head = read_response_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
        "{head}"
    );

    s.write_all(&frame(0x81, b"hello")).unwrap();
    assert_eq!(read_frame(&mut s), (0x81, b"hello".to_vec()));

    // Several frames in one write, one of them larger than a small-frame length.
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 253) as u8).collect();
    let mut burst = frame(0x82, &big);
    burst.extend(frame(0x89, b"ping?"));
    burst.extend(frame(0x01, b"frag"));
    burst.extend(frame(0x80, b"ment"));
    s.write_all(&burst).unwrap();
    assert_eq!(read_frame(&mut s), (0x82, big));
    assert_eq!(
        read_frame(&mut s),
        (0x8a, b"ping?".to_vec()),
        "ping -> pong"
    );
    assert_eq!(read_frame(&mut s), (0x01, b"frag".to_vec()));
    assert_eq!(read_frame(&mut s), (0x80, b"ment".to_vec()));

    // Close: echoed, then the backend closes and so does the tunnel.
    s.write_all(&frame(0x88, &1000u16.to_be_bytes())).unwrap();
    assert_eq!(read_frame(&mut s), (0x88, 1000u16.to_be_bytes().to_vec()));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes after the close: {rest:?}");
    // Half-closes are relayed as such: the session ends once the client closes too.
    drop(s);
    assert_no_open_connections(&proxy);
}

#[test]
fn a_client_half_close_reaches_the_backend_and_the_answer_still_arrives() {
    // The backend switches, reads until end of stream, then sends what it read.
    let backend = Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: upgrade\r\n\r\n",
            )
            .unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            write_and_close(s, &got);
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: raw\r\nConnection: upgrade\r\n\r\nearly bytes, ",
    )
    .unwrap();
    let head = read_response_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s.write_all(b"late bytes").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"early bytes, late bytes");
    drop(s);
    assert_no_open_connections(&proxy);
}

#[test]
fn a_declined_upgrade_stays_http_and_nothing_is_tunnelled() {
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let ended = Arc::new(AtomicBool::new(false));
    let (log, end) = (Arc::clone(&seen), Arc::clone(&ended));
    let backend = Scripted::start(move |mut s, _| {
        if let Some(head) = read_head(&mut s) {
            log.lock().unwrap().extend_from_slice(head.as_bytes());
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
                .unwrap();
            // Record whatever else arrives on this connection, until the proxy
            // closes it (or the read timeout passes).
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
        end.store(true, Ordering::SeqCst);
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    let mut out = handshake("/").into_bytes();
    out.extend(frame(0x81, b"not http"));
    s.write_all(&out).unwrap();
    let mut r = Reader::new(s);
    let resp = r.response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "no");
    assert!(resp.header("upgrade").is_none());
    // The frame bytes are read as the next request: refused, never forwarded.
    assert_eq!(r.response().status, 400);
    r.expect_closed();
    drop(r);
    // Stopping the proxy closes the backend connection (pooled after the 200):
    // once the backend has seen that end, it has recorded everything the proxy
    // ever sent it.
    proxy.shutdown();
    wait_until(
        || ended.load(Ordering::SeqCst),
        "the backend connection ends",
    );
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "the proxy opened another backend connection"
    );
    let seen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(seen.contains("Upgrade: websocket\r\n"), "{seen:?}");
    assert!(seen.contains("Connection: upgrade\r\n"), "{seen:?}");
    assert!(
        seen.ends_with("\r\n\r\n"),
        "tunnel bytes reached the backend: {seen:?}"
    );
}

#[test]
fn a_switch_nobody_asked_for_is_502() {
    let backend = Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            write_and_close(
                s,
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            );
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let (resp, _) = roundtrip(proxy.local_addrs()[0], b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 502);
}

#[test]
fn upgrade_is_ignored_on_http_10_and_with_a_body() {
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let log = Arc::clone(&seen);
    let backend = Scripted::start(move |mut s, _| {
        while let Some(head) = read_head(&mut s) {
            let body = if head.contains("Content-Length: 2") {
                2
            } else {
                0
            };
            let mut b = vec![0; body];
            s.read_exact(&mut b).unwrap();
            log.lock().unwrap().extend_from_slice(head.as_bytes());
            s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
            )
            .unwrap();
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let (resp, _) = roundtrip(
        proxy.local_addrs()[0],
        b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let (resp, _) = roundtrip(
        proxy.local_addrs()[0],
        b"POST / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_eq!(resp.status, 200);
    let deadline = Instant::now() + IO_TIMEOUT;
    while String::from_utf8_lossy(&seen.lock().unwrap())
        .matches("\r\n\r\n")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the backend never logged both heads"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(!seen.to_ascii_lowercase().contains("upgrade"), "{seen:?}");
}

#[test]
fn the_backends_ws_route_wants_a_handshake() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    // Direct: the 426 names the protocol.
    let (resp, _) = roundtrip(
        origins[0].local_addr(),
        b"GET /ws HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(resp.status, 426);
    assert_eq!(resp.header("upgrade").as_deref(), Some("websocket"));
    // Through the proxy: a wrong version is no handshake either.
    let bad = handshake("/ws").replace("Version: 13", "Version: 8");
    let (resp, _) = roundtrip(proxy.local_addrs()[0], bad.as_bytes());
    assert_eq!(resp.status, 426);
}

/// The same tunnel with TLS on the client's side: frames both ways, a large one
/// among them, then the close; the end of the tunnel is a TLS close_notify.
#[test]
fn websocket_frames_are_echoed_through_a_tunnel_over_tls() {
    use common::tls::*;
    let origins = origins(1);
    let ca = Ca::new("ws CA");
    let dir = TempDir::new("ws-tls");
    let files = write_pair(&dir, "site", &ca.leaf(&["localhost"]));
    let proxy = proxy_with(&[origins[0].local_addr()], |c| {
        c.listen = vec![tls_listen()];
        c.tls = vec![files];
    });
    let mut s = tls_connect(proxy.local_addrs()[0], "localhost", &client_config(&ca.pem)).unwrap();
    s.write_all(handshake("/ws").as_bytes()).unwrap();
    let head = read_response_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // Three frames near the origin's largest (64 KiB less a header) in one
    // write: many TLS records each way, split across reads.
    let bigs: Vec<Vec<u8>> = (0..3u32)
        .map(|k| (0..60_000u32).map(|i| ((i + k) % 251) as u8).collect())
        .collect();
    let mut burst = frame(0x81, b"hello");
    for big in &bigs {
        burst.extend(frame(0x82, big));
    }
    s.write_all(&burst).unwrap();
    assert_eq!(read_frame(&mut s), (0x81, b"hello".to_vec()));
    for big in bigs {
        assert_eq!(read_frame(&mut s), (0x82, big));
    }
    s.write_all(&frame(0x88, &1000u16.to_be_bytes())).unwrap();
    assert_eq!(read_frame(&mut s), (0x88, 1000u16.to_be_bytes().to_vec()));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("a clean close_notify");
    assert!(rest.is_empty(), "bytes after the close: {rest:?}");
    drop(s);
    assert_no_open_connections(&proxy);
}
