//! Memory stays flat for a client that never reads while its backend floods it,
//! whatever the backend sends: interim responses without end, or a final response
//! with an endless body (Content-Length, copied and with `--splice` spliced;
//! chunked; delimited by the close), or a tunnel. The proxy runs as its own process (the binary), so its
//! resident memory is its own.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Most the proxy's resident memory may grow while one client is flooded.
const MAX_GROWTH_KIB: u64 = 4 * 1024;
/// The backend gives up after this much (a proxy that never pushes back would
/// otherwise take it all).
const FLOOD_LIMIT: u64 = 64 << 20;

struct Corelb(Child);

impl Drop for Corelb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind(loopback()).unwrap().local_addr().unwrap()
}

fn start_corelb(backend: SocketAddr, splice: bool) -> (Corelb, SocketAddr) {
    let listen = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_corelb"))
        .args([
            "serve",
            "--backend",
            &backend.to_string(),
            "--listen",
            &listen.to_string(),
            "--workers",
            "1",
            "--log-level",
            "error",
        ])
        .args(splice.then_some("--splice"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proxy = Corelb(child);
    wait_until(
        || std::net::TcpStream::connect(listen).is_ok(),
        "corelb listens",
    );
    (proxy, listen)
}

/// What the backend sends after the request head, before the flood.
const KINDS: [(&str, &[u8], &[u8]); 5] = [
    (
        "interim responses",
        b"",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n",
    ),
    (
        "a Content-Length body",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n",
        &[b'x'; 16384],
    ),
    (
        "a chunked body",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"10\r\n0123456789abcdef\r\n",
    ),
    (
        "a body delimited by the close",
        b"HTTP/1.1 200 OK\r\n\r\n",
        &[b'y'; 16384],
    ),
    (
        "a tunnel",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: flood\r\nConnection: upgrade\r\n\r\n",
        &[b'z'; 16384],
    ),
];

/// A backend that answers the first request of each connection with a short
/// `200` (the warm-up), and the others with `head` and then `unit` over and over
/// until a write has been blocked for half a second (the proxy pushes back) or
/// `FLOOD_LIMIT` is sent. `sent` counts the flood's bytes; `done` is set after.
fn flooding_backend(kind: usize, sent: Arc<AtomicU64>, done: Arc<AtomicU64>) -> Scripted {
    Scripted::start(move |mut s, n| {
        let Some(_) = read_head(&mut s) else { return };
        let (_, head, unit) = KINDS[kind];
        if n == 0 {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            return;
        }
        s.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let _ = s.write_all(head);
        let mut total = 0u64;
        while total < FLOOD_LIMIT {
            match s.write(unit) {
                Ok(n) => total += n as u64,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(_) => break,
            }
        }
        sent.store(total, Ordering::SeqCst);
        done.store(1, Ordering::SeqCst);
        // Hold the connection open while the proxy's memory is read.
        let mut sink = [0u8; 1];
        let _ = s.read(&mut sink);
    })
}

#[test]
fn a_client_that_never_reads_costs_no_memory_whatever_its_backend_sends() {
    let mut report = Vec::new();
    // Every kind through the buffer, and the Content-Length body once more
    // through the pipe (`--splice`).
    let cases = (0..KINDS.len()).map(|k| (k, false)).chain([(1, true)]);
    for (kind, splice) in cases {
        let what = format!(
            "{}{}",
            KINDS[kind].0,
            if splice { " (spliced)" } else { "" }
        );
        let (sent, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let backend = flooding_backend(kind, Arc::clone(&sent), Arc::clone(&done));
        let (proxy, addr) = start_corelb(backend.addr, splice);
        // Warm up: a whole exchange, so buffers and pools exist before the baseline.
        let warm = get(addr, "/");
        assert_eq!(warm.status, 200);
        let before = rss_kib_of(&proxy.0.id().to_string());
        let mut client = connect_small_window(addr);
        let request: &[u8] = if kind == 4 {
            b"GET /flood HTTP/1.1\r\nHost: t\r\nUpgrade: flood\r\nConnection: upgrade\r\n\r\n"
        } else {
            b"GET /flood HTTP/1.1\r\nHost: t\r\n\r\n"
        };
        client.write_all(request).unwrap();
        let started = Instant::now();
        wait_until(
            || done.load(Ordering::SeqCst) == 1,
            "the backend floods until it is pushed back",
        );
        let after = rss_kib_of(&proxy.0.id().to_string());
        let flooded = sent.load(Ordering::SeqCst);
        report.push(format!(
            "{what}: {} MiB sent in {:.1} s, RSS {before} -> {after} KiB",
            flooded >> 20,
            started.elapsed().as_secs_f64()
        ));
        assert!(
            flooded < FLOOD_LIMIT,
            "{what}: the proxy took all {FLOOD_LIMIT} bytes from the backend without pushing back (RSS {before} -> {after} KiB)"
        );
        assert!(
            after <= before + MAX_GROWTH_KIB,
            "{what}: the proxy grew from {before} to {after} KiB"
        );
        drop(client);
    }
    eprintln!("{}", report.join("\n"));
}
