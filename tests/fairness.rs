//! One client streaming at full speed must not starve the other clients of its
//! worker. Measured against the stream's own progress rather than the clock: a
//! light client's requests must all be answered while the heavy stream moves a
//! bounded amount, so the test does not depend on how fast the machine is (timing
//! figures are for `scripts/fairness.py`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;

/// The light client must be done before the heavy stream has moved this much more
/// after it started. With fair turns (at most 256 KiB per turn) the stream moved
/// 10 to 40 MiB during the 20 light requests here; before, the loop kept driving
/// the stream and it reached this limit in most runs.
const HEAVY_LIMIT: u64 = 256 << 20;
const LIGHT_REQUESTS: usize = 20;

/// A backend that answers `GET /light` with `ok`, streams an endless body for
/// `GET /download`, and reads and discards everything after the head of
/// `POST /upload`. Every connection has its own thread, so the backend never
/// makes one client wait for another.
fn backend() -> Scripted {
    Scripted::start(|mut s, _| {
        let block = vec![b'x'; 64 * 1024];
        while let Some(head) = read_head(&mut s) {
            if head.starts_with("POST /upload ") {
                let mut sink = vec![0u8; 256 * 1024];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
            if head.starts_with("GET /download ") {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000\r\n\r\n");
                while s.write_all(&block).is_ok() {}
                return;
            }
            if head.starts_with("GET /chunked ") {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                let mut chunk = b"10000\r\n".to_vec();
                chunk.extend_from_slice(&block);
                chunk.extend_from_slice(b"\r\n");
                while s.write_all(&chunk).is_ok() {}
                return;
            }
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    })
}

/// The heavy stream's progress, shared with the test.
#[derive(Default)]
struct Progress {
    moved: AtomicU64,
    /// It stops once `moved` reaches this (0: no limit yet), or at `stop`.
    limit: AtomicU64,
    stop: AtomicBool,
}

impl Progress {
    fn go_on(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        !self.stop.load(Ordering::Relaxed)
            && (limit == 0 || self.moved.load(Ordering::Relaxed) < limit)
    }

    fn add(&self, n: usize) {
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Run the heavy stream in a thread, and the light client beside it; returns how
/// much the stream moved between the light client's first request and its last
/// answer. The stream stops at `HEAVY_LIMIT` past that first request (so a
/// starved light client is answered, late, and the test fails rather than hangs).
fn light_beside(heavy: fn(TcpStream, &Progress)) -> u64 {
    let backend = backend();
    let proxy = proxy_for(&[backend.addr], 1);
    let addr = proxy.local_addrs()[0];
    let progress = Arc::new(Progress::default());
    let stream = connect(addr);
    let thread = {
        let progress = Arc::clone(&progress);
        std::thread::spawn(move || heavy(stream, &progress))
    };
    // The light client starts once the stream runs at full speed.
    wait_until(
        || progress.moved.load(Ordering::Relaxed) > 16 << 20,
        "the heavy stream gets going",
    );
    let mut light = Reader::new(connect(addr));
    let start = progress.moved.load(Ordering::Relaxed);
    progress.limit.store(start + HEAVY_LIMIT, Ordering::Relaxed);
    for _ in 0..LIGHT_REQUESTS {
        light
            .stream
            .write_all(b"GET /light HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(light.response().text(), "ok");
    }
    let during = progress.moved.load(Ordering::Relaxed) - start;
    progress.stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
    during
}

fn upload(mut s: TcpStream, progress: &Progress) {
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut chunk = b"10000\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(b'u', 0x10000));
    chunk.extend_from_slice(b"\r\n");
    while progress.go_on() && s.write_all(&chunk).is_ok() {
        progress.add(chunk.len());
    }
}

fn download(s: TcpStream, progress: &Progress) {
    read_stream(s, b"GET /download HTTP/1.1\r\nHost: t\r\n\r\n", progress)
}

fn chunked_download(s: TcpStream, progress: &Progress) {
    read_stream(s, b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n", progress)
}

fn read_stream(mut s: TcpStream, request: &[u8], progress: &Progress) {
    s.write_all(request).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    while progress.go_on() {
        match s.read(&mut buf) {
            Ok(n) if n > 0 => progress.add(n),
            _ => return,
        }
    }
}

fn assert_fair(what: &str, during: u64) {
    eprintln!("{what}: {during} bytes moved during the light requests");
    assert!(
        during < HEAVY_LIMIT,
        "{LIGHT_REQUESTS} light requests were answered only after the {what} had moved {during} more bytes"
    );
}

/// One test for the three streams, one after the other: run side by side, they
/// would share the machine's cores and slow each other down, which hides
/// starvation instead of showing it.
#[test]
fn a_full_speed_stream_does_not_starve_a_light_client_of_its_worker() {
    assert_fair("upload", light_beside(upload));
    assert_fair("download", light_beside(download));
    assert_fair("chunked download", light_beside(chunked_download));
}
