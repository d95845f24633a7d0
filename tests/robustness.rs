//! Inputs split at every byte, misbehaving peers, and random garbage: the proxy
//! answers correctly or refuses, never hangs, and keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::*;

/// Write `bytes` one byte per write (TCP_NODELAY: one segment each, mostly).
fn trickle(s: &mut std::net::TcpStream, bytes: &[u8]) {
    for b in bytes {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
}

#[test]
fn request_sent_one_byte_at_a_time() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    trickle(&mut s, b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n");
    trickle(
        &mut s,
        b"GET /size/3 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
    );
    let mut r = Reader::new(s);
    let first = r.response();
    assert_eq!(first.status, 200);
    assert!(
        first.text().ends_with("\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n"),
        "{}",
        first.text()
    );
    assert_eq!(r.response().text(), "abc");
}

#[test]
fn response_sent_one_byte_at_a_time() {
    let backend = Scripted::start(|mut s, _| {
        while read_head(&mut s).is_some() {
            trickle(
                &mut s,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            );
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    for _ in 0..2 {
        r.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let resp = r.response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "5\r\nhello\r\n0\r\n\r\n");
    }
}

#[test]
fn interim_and_final_response_split_anywhere() {
    let full = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    for split in [1, 10, 44, 45, 46, 60, full.len() - 1] {
        let backend = Scripted::start(move |mut s, _| {
            if read_head(&mut s).is_some() {
                s.write_all(&full[..split]).unwrap();
                // The split: the proxy gets the two parts in separate reads, mostly.
                std::thread::sleep(Duration::from_millis(20));
                s.write_all(&full[split..]).unwrap();
                let _ = read_head(&mut s);
            }
        });
        let proxy = proxy_for(&[backend.addr], 1);
        let mut s = connect(proxy.local_addrs()[0]);
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut r = Reader::new(s);
        // `response` skips the relayed 103 and returns the final response.
        let resp = r.response();
        assert_eq!(
            (resp.status, resp.text().as_str()),
            (200, "ok"),
            "split at {split}"
        );
    }
}

/// xorshift64*: deterministic, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Send `input`, shut our side, and read until the proxy closes. Returns the first
/// status line's code, if any. Panics if the proxy does not close in time.
fn send_and_drain(addr: std::net::SocketAddr, input: &[u8]) -> Option<u16> {
    let mut s = connect(addr);
    let _ = s.write_all(input);
    let _ = s.shutdown(Shutdown::Write);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "proxy hung on {:?}: {e} after {:?}",
                String::from_utf8_lossy(input),
                start.elapsed()
            ),
        }
    }
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
}

#[test]
fn random_garbage_and_mutated_requests() {
    let origins = origins(2);
    let addrs: Vec<_> = origins.iter().map(|o| o.local_addr()).collect();
    let proxy = proxy_for(&addrs, 1);
    let addr = proxy.local_addrs()[0];
    let seeds: &[&[u8]] = &[
        b"GET /size/5 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let tokens: &[&[u8]] = &[
        b"\r\n", b"\n", b"\r", b" ", b":", b",", b"\0", b"\x7f", b"\xff", b"chunked", b"0", b"-",
    ];
    for round in 0..400 {
        let input: Vec<u8> = if round % 4 == 0 {
            (0..rng.below(200)).map(|_| rng.next() as u8).collect()
        } else {
            let mut m = seeds[rng.below(seeds.len())].to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(m.len());
                match rng.below(3) {
                    0 => m[at] = rng.next() as u8,
                    1 => {
                        m.remove(at);
                    }
                    _ => {
                        let t = tokens[rng.below(tokens.len())];
                        m.splice(at..at, t.iter().copied());
                    }
                }
            }
            m
        };
        if let Some(status) = send_and_drain(addr, &input) {
            assert!(
                status == 200 || (400..=505).contains(&status),
                "round {round}: status {status} for {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
    // Still serving, and nothing leaked into the pool that answers the next client wrongly.
    for _ in 0..4 {
        assert_eq!(get(addr, "/size/7").text(), "abcdefg");
    }
    // And no session outlived its client.
    assert_no_open_connections(&proxy);
}
