//! Nothing hangs: every wait has a timeout, shortened here so the tests are quick.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::*;
use corelb::config::Timeouts;

fn short() -> Timeouts {
    Timeouts {
        idle: Duration::from_millis(300),
        header: Duration::from_millis(300),
        connect: Duration::from_millis(300),
        response: Duration::from_millis(300),
        body: Duration::from_millis(300),
        linger: Duration::from_millis(300),
        upstream_idle: Duration::from_millis(300),
        shutdown: Duration::from_millis(300),
    }
}

#[test]
fn slow_request_head_gets_408() {
    let origins = origins(1);
    let proxy = proxy_with(&[origins[0].local_addr()], |c| c.timeouts = short());
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"GET / HTTP/1.1\r\nHost:").unwrap();
    let start = Instant::now();
    let mut r = Reader::new(s);
    let resp = r.response();
    assert_eq!(resp.status, 408);
    r.expect_closed();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(origins[0].connections(), 0);
}

#[test]
fn idle_keep_alive_client_is_closed_silently() {
    let origins = origins(1);
    let proxy = proxy_with(&[origins[0].local_addr()], |c| c.timeouts = short());
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().status, 200);
    let start = Instant::now();
    r.expect_closed();
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        start.elapsed()
    );
}

#[test]
fn silent_backend_gets_504() {
    let backend = Scripted::start(|mut s, _| {
        let _ = read_head(&mut s);
        // Silent, the connection open, well past the 300 ms response timeout.
        std::thread::sleep(Duration::from_secs(2));
    });
    let proxy = proxy_with(&[backend.addr], |c| c.timeouts = short());
    let start = Instant::now();
    let (resp, mut r) = roundtrip(proxy.local_addrs()[0], b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 504);
    r.expect_closed();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn backend_stalling_mid_body_closes_the_client() {
    let backend = Scripted::start(|mut s, _| {
        if read_head(&mut s).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome");
            // The stall: well past the 300 ms body timeout.
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let proxy = proxy_with(&[backend.addr], |c| c.timeouts = short());
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        got.ends_with(b"some"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn idle_pooled_backend_connection_is_closed() {
    let closed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&closed);
    let backend = Scripted::start(move |mut s, _| {
        while read_head(&mut s).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
        // read_head returned None: the proxy closed the idle connection (or the
        // 10 s read timeout passed, which the assertion below would catch).
        flag.store(true, Ordering::SeqCst);
    });
    let proxy = proxy_with(&[backend.addr], |c| c.timeouts = short());
    let mut r = Reader::new(connect(proxy.local_addrs()[0]));
    r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.response().text(), "ok");
    let start = Instant::now();
    while !closed.load(Ordering::SeqCst) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "idle backend connection was kept"
        );
        // Back-off between two looks at the flag.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_lets_the_request_in_flight_finish() {
    // The backend holds each request until the test sees the shutdown under way
    // (and drops `release`), so that the busy one is still in flight when the
    // shutdown begins however slow the machine.
    let (release, held) = mpsc::channel::<()>();
    let held = Mutex::new(held);
    let backend = Scripted::start(move |mut s, _| {
        if read_head(&mut s).is_some() {
            let _ = held.lock().unwrap().recv_timeout(IO_TIMEOUT);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate");
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let addr = proxy.local_addrs()[0];
    let mut busy = Reader::new(connect(addr));
    busy.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut idle = Reader::new(connect(addr));
    idle.stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n")
        .unwrap();
    let mut finishing = Reader::new(connect(addr));
    finishing.stream.write_all(b"GET /y HTTP/1.1\r\n").unwrap();
    // The proxy has all three before it stops (one not yet accepted would be
    // refused), and the busy one's request is at the backend.
    wait_until(
        || proxy.counts()[0].accepted == 3,
        "the proxy accepts the three clients",
    );
    wait_until(
        || backend.connections.load(Ordering::SeqCst) == 1,
        "the busy request reaches the backend",
    );
    let start = Instant::now();
    let stopper = std::thread::spawn(move || proxy.shutdown());
    // The shutdown has begun once the listener is closed: new connections are
    // refused (a probe accepted before that closes at once, being dropped).
    wait_until(
        || std::net::TcpStream::connect(addr).is_err(),
        "the shutdown closes the listener",
    );
    // A client in the middle of its first head may still finish it: it is served,
    // told that the connection closes.
    finishing.stream.write_all(b"Host: t\r\n\r\n").unwrap();
    // The requests at the backend are answered only now.
    drop(release);
    // One that does not finish gets a 408 after a moment (1 s), not its full
    // header timeout.
    let resp = idle.response();
    assert_eq!(resp.status, 408);
    idle.expect_closed();
    drop(idle);
    assert!(
        start.elapsed() < Duration::from_millis(1800),
        "unfinished head kept {:?}",
        start.elapsed()
    );
    // New connections are still refused.
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
    let resp = finishing.response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    drop(finishing);
    // The busy one gets its whole response, told that the connection closes.
    let resp = busy.response();
    assert_eq!((resp.status, resp.text().as_str()), (200, "late"));
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    busy.expect_closed();
    // Like any client that saw the end of stream, close; the worker then exits
    // (it waits for this, up to the linger timeout, so no reset hits the response).
    drop(busy);
    let counts = stopper.join().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        start.elapsed()
    );
    assert_eq!(counts[0].requests, 2);
}

#[test]
fn shutdown_gives_up_after_the_grace_period() {
    let backend = Scripted::start(|mut s, _| {
        let _ = read_head(&mut s);
        // Never answers within the 300 ms grace period.
        std::thread::sleep(Duration::from_secs(3));
    });
    let proxy = proxy_with(&[backend.addr], |c| {
        c.timeouts.shutdown = Duration::from_millis(300);
    });
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    // The request is in flight: the proxy connected to the backend for it.
    wait_until(
        || backend.connections.load(Ordering::SeqCst) == 1,
        "the request reaches the backend",
    );
    let start = Instant::now();
    proxy.shutdown();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "shutdown took {took:?}"
    );
}
