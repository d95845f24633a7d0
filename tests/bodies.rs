//! Message bodies and response framing through the proxy: chunked both ways, large
//! streams with bounded memory, bodiless responses, close-delimited responses,
//! HTTP/1.0 clients and 100-continue.

mod common;

use std::io::{Read, Write};
use std::time::Instant;

use common::*;

#[test]
fn chunked_request_body_reaches_the_backend_intact() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let body = "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let (resp, _) = roundtrip(
        proxy.local_addrs()[0],
        format!("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
            .as_bytes(),
    );
    assert_eq!(resp.status, 200);
    let echoed = resp.text();
    assert!(
        echoed.contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{echoed}"
    );
    assert!(echoed.ends_with(&format!("\r\n\r\n{body}")), "{echoed}");
}

#[test]
fn chunked_response_is_relayed_and_the_connection_kept() {
    let backend = Scripted::answering(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nT: 1\r\n\r\n",
    );
    let proxy = proxy_for(&[backend.addr], 1);
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    for _ in 0..3 {
        r.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let resp = r.response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("transfer-encoding").as_deref(), Some("chunked"));
        assert_eq!(
            resp.text(),
            "4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nT: 1\r\n\r\n"
        );
    }
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

const BIG: u64 = 50 * 1024 * 1024;

#[test]
fn fifty_mib_download_streams_with_bounded_memory() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let before = rss_kib();
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(format!("GET /size/{BIG} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut r = Reader::new(s);
    let (resp, len) = r.response_opts(false, true).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(len, BIG);
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB for a 50 MiB download"
    );
    // The connection is still usable afterwards.
    r.stream
        .write_all(b"GET /size/3 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().text(), "abc");
}

#[test]
fn download_bytes_arrive_in_order() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let resp = get(proxy.local_addrs()[0], "/size/3000000");
    assert_eq!(resp.body.len(), 3_000_000);
    assert!(
        resp.body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == b'a' + (i % 26) as u8),
        "body corrupted"
    );
}

#[test]
fn fifty_mib_upload_streams_with_bounded_memory() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let before = rss_kib();
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {BIG}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let chunk = vec![b'u'; 256 * 1024];
    let mut sent = 0u64;
    while sent < BIG {
        s.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
    }
    let mut r = Reader::new(s);
    let resp = r.response();
    assert_eq!(resp.status, 200);
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB for a 50 MiB upload"
    );
    assert_eq!(origins[0].requests(), 1);
}

#[test]
fn chunked_upload_of_many_chunks() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("1000\r\n{}\r\n", "c".repeat(0x1000));
    for _ in 0..2000 {
        s.write_all(chunk.as_bytes()).unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut r = Reader::new(s);
    assert_eq!(r.response().status, 200);
    r.stream
        .write_all(b"GET /size/2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().text(), "ab");
}

#[test]
fn head_204_and_304_have_no_body() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    r.stream
        .write_all(b"HEAD /size/100 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (resp, len) = r.response_opts(true, false).unwrap();
    assert_eq!((resp.status, len), (200, 0));
    assert_eq!(resp.header("content-length").as_deref(), Some("100"));
    for code in [204, 304] {
        r.stream
            .write_all(format!("GET /status/{code} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let resp = r.response();
        assert_eq!(resp.status, code);
        assert!(resp.body.is_empty());
    }
    // All on one connection: nothing was left over to confuse the next response.
    r.stream
        .write_all(b"GET /size/4 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().text(), "abcd");
}

#[test]
fn close_delimited_response_closes_the_client_too() {
    let backend = Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            write_and_close(
                s,
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
            );
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let (resp, mut r) = roundtrip(proxy.local_addrs()[0], b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    assert_eq!(resp.text(), "until the end");
    r.expect_closed();
}

#[test]
fn http10_client_without_keep_alive_is_closed() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let (resp, mut r) = roundtrip(proxy.local_addrs()[0], b"GET /size/5 HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "abcde");
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    r.expect_closed();
}

#[test]
fn http10_client_with_keep_alive_is_kept() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    for _ in 0..3 {
        r.stream
            .write_all(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let resp = r.response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("connection").as_deref(), Some("keep-alive"));
        assert!(
            resp.text().starts_with("GET /echo HTTP/1.0\r\n"),
            "{}",
            resp.text()
        );
    }
}

#[test]
fn connection_close_is_honoured() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let (resp, mut r) = roundtrip(
        proxy.local_addrs()[0],
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    r.expect_closed();
    assert_eq!(
        origins[0].requests(),
        1,
        "the request after Connection: close was forwarded"
    );
}

#[test]
fn expect_100_continue_is_relayed() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"data").unwrap();
    let mut r = Reader::new(s);
    let resp = r.response();
    assert_eq!(resp.status, 200);
    assert!(resp.text().ends_with("\r\n\r\ndata"));
}

#[test]
fn host_is_kept_unless_rewrite_host() {
    let origins = origins(1);
    let addr = origins[0].local_addr();
    let plain = proxy_for(&[addr], 1);
    let (resp, _) = roundtrip(
        plain.local_addrs()[0],
        b"GET /echo HTTP/1.1\r\nHost: client.example\r\n\r\n",
    );
    assert!(
        resp.text().contains("\r\nHost: client.example\r\n"),
        "{}",
        resp.text()
    );
    let rewriting = proxy_with(&[addr], |c| c.rewrite_host = true);
    let (resp, _) = roundtrip(
        rewriting.local_addrs()[0],
        b"GET /echo HTTP/1.1\r\nHost: client.example\r\n\r\n",
    );
    assert!(
        resp.text().contains(&format!("\r\nHost: {addr}\r\n")),
        "{}",
        resp.text()
    );
}

#[test]
fn request_with_body_then_half_close_is_answered() {
    // The proxy may read head, body and end of stream in one go: the body must be
    // forwarded before the end of stream is judged.
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nq=42")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut r = Reader::new(s);
    let resp = r.response();
    assert_eq!(resp.status, 200);
    assert!(resp.text().ends_with("\r\n\r\nq=42"), "{}", resp.text());
    r.expect_closed();
}

#[test]
fn slow_reader_gets_a_large_body_intact_then_keeps_the_connection() {
    const LEN: usize = 4_000_000;
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(format!("GET /size/{LEN} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    // Read in small sips with pauses, so the proxy meets a full client socket.
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut head_end = None;
    while head_end.is_none_or(|h| got.len() < h + LEN) {
        assert!(
            Instant::now() < deadline,
            "stalled after {} bytes",
            got.len()
        );
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if head_end.is_none() {
            head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if got.len() / 200_000 != (got.len() - n) / 200_000 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let h = head_end.unwrap();
    assert_eq!(got.len() - h, LEN, "more bytes than the body");
    assert!(
        got[h..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == b'a' + (i % 26) as u8),
        "body corrupted"
    );
    s.write_all(b"GET /size/3 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(Reader::new(s).response().text(), "abc");
}
