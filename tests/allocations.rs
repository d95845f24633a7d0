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
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
