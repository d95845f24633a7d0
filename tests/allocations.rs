//! Zero heap allocations per proxied request in steady state (keep-alive, small
//! bodies), counted by a global allocator that sees every thread: the proxy
//! worker, the built-in origin and this client. The client and the origin's `/`
//! route allocate nothing per request either, so any count is the proxy's.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        count_for_worker();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        count_for_worker();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests count allocations process-wide: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";

/// Send one request and read its whole response into `buf` without allocating:
/// the response is small, fixed-length and ends with the origin's body.
fn one_request(s: &mut std::net::TcpStream, buf: &mut [u8; 4096], body: &[u8]) {
    s.write_all(REQUEST).unwrap();
    let mut got = 0;
    loop {
        got += s.read(&mut buf[got..]).unwrap();
        assert!(got > 0, "connection closed");
        if buf[..got].ends_with(body) {
            break;
        }
    }
}

#[test]
fn steady_state_requests_allocate_nothing() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let origin = corelb::Origin::start(loopback(), 1, Some("hello".into())).unwrap();
    let proxy = proxy_for(&[origin.local_addr()], 1);
    let mut clients: Vec<_> = (0..4).map(|_| connect(proxy.local_addrs()[0])).collect();
    let mut buf = [0u8; 4096];
    // Warm up: buffers, pools, slab and idle lists reach their working size.
    for _ in 0..500 {
        for c in clients.iter_mut() {
            one_request(c, &mut buf, b"hello");
        }
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let rounds = 2_500;
    for _ in 0..rounds {
        for c in clients.iter_mut() {
            one_request(c, &mut buf, b"hello");
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(
        allocations,
        0,
        "{allocations} heap allocations over {} proxied requests",
        rounds * clients.len()
    );
}

/// The worker thread's id, once known: its allocations are counted apart
/// (`WORKER_ALLOCATIONS`), so a client that allocates (a TLS client does, per
/// record) does not blur the proxy's count.
static WORKER_TID: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(-1);
static WORKER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static TID: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// Called by the allocator: count if this is the worker thread.
fn count_for_worker() {
    let tid = TID.with(|t| {
        if t.get() == 0 {
            // SAFETY: gettid takes no arguments and cannot fail.
            t.set(unsafe { libc::syscall(libc::SYS_gettid) });
        }
        t.get()
    });
    if tid == WORKER_TID.load(Ordering::Relaxed) {
        WORKER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

/// The thread id of this process's thread named `name` (from /proc).
fn thread_named(name: &str) -> i64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return task.file_name().to_str().unwrap().parse().unwrap();
        }
    }
    panic!("no thread named {name}");
}

/// TLS keep-alive requests, after the handshake: the worker's own allocations
/// per request, counted on its thread alone. rustls' buffered API keeps each
/// record it decrypts and each it encrypts in a `Vec` of its own, so a request
/// and its response cost a few allocations each way; the bound below is what
/// that comes to, and any more would be ours.
#[test]
fn tls_keep_alive_requests_allocate_only_rustls_records() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use common::tls::*;
    let origin = corelb::Origin::start(loopback(), 1, Some("hello".into())).unwrap();
    let ca = Ca::new("alloc CA");
    let dir = TempDir::new("alloc");
    let files = write_pair(&dir, "site", &ca.leaf(&["localhost"]));
    let proxy = proxy_with(&[origin.local_addr()], |c| {
        c.listen = vec![tls_listen()];
        c.tls = vec![files];
    });
    let client = client_config(&ca.pem);
    let mut clients: Vec<_> = (0..4)
        .map(|_| tls_connect(proxy.local_addrs()[0], "localhost", &client).unwrap())
        .collect();
    let mut buf = [0u8; 4096];
    let mut one = |s: &mut TlsStream| {
        s.write_all(REQUEST).unwrap();
        let mut got = 0;
        loop {
            got += s.read(&mut buf[got..]).unwrap();
            assert!(got > 0, "connection closed");
            if buf[..got].ends_with(b"hello") {
                break;
            }
        }
    };
    for _ in 0..500 {
        for c in clients.iter_mut() {
            one(c);
        }
    }
    WORKER_TID.store(thread_named("corelb-0"), Ordering::SeqCst);
    let before = WORKER_ALLOCATIONS.load(Ordering::SeqCst);
    let rounds = 2_500;
    for _ in 0..rounds {
        for c in clients.iter_mut() {
            one(c);
        }
    }
    let allocations = WORKER_ALLOCATIONS.load(Ordering::SeqCst) - before;
    let requests = (rounds * clients.len()) as u64;
    let per_request = allocations as f64 / requests as f64;
    eprintln!(
        "TLS keep-alive: {allocations} allocations over {requests} requests ({per_request:.2} each)"
    );
    assert!(allocations > 0, "the worker thread was not found counting");
    assert!(
        per_request <= 2.0,
        "{per_request:.2} allocations per TLS request (rustls' records alone cost 2)"
    );
}
