//! Slow clients: a slow reader is not a stalled one (the proxy measures what
//! the kernel has sent, not only its own writes).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

/// The byte at offset `i` of the test bodies: a pattern that shows a lost,
/// doubled or moved byte.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// A backend that answers one request with a `SIZE`-byte body of `pattern`,
/// then holds the connection open; it sends on `closed` when the proxy closes it.
fn big_answer<const SIZE: usize>(closed: crossbeam_channel::Sender<Instant>) -> Scripted {
    Scripted::start(move |mut s, _| {
        if read_head(&mut s).is_none() {
            return;
        }
        let body: Vec<u8> = (0..SIZE).map(pattern).collect();
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body);
        // Keep the connection open: the response ends by its length.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let _ = closed.send(Instant::now());
    })
}

/// A client that stops reading a large response is still cut off: between one
/// and two body timeouts after the last byte moved (the first expiry only notes
/// what the kernel holds for it), and it never gets the whole body.
#[test]
fn a_client_that_stops_reading_is_cut_off_within_two_body_timeouts() {
    const SIZE: usize = 16 << 20;
    let (closed, backend_closed) = crossbeam_channel::bounded(1);
    let backend = big_answer::<SIZE>(closed);
    let body_timeout = Duration::from_millis(500);
    let proxy = proxy_with(&[backend.addr], |c| {
        c.timeouts.body = body_timeout;
    });
    // A small receive buffer, so that the kernels cannot hold the whole body.
    let mut s = connect_small_window(proxy.local_addrs()[0]);
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let sent = Instant::now();
    // The exchange is cut when the proxy closes the backend connection (the
    // client's ends after a linger for what was already sent).
    let took = backend_closed
        .recv_timeout(IO_TIMEOUT)
        .expect("the proxy cuts the exchange")
        - sent;
    let bound = 2 * body_timeout + Duration::from_millis(600);
    assert!(took <= bound, "closed after {took:?}, bound {bound:?}");
    let (got, _) = read_until_end(&mut s);
    assert!(got.len() < SIZE, "a cut response: {} bytes", got.len());
    eprintln!(
        "a stalled reader was closed {took:?} after its request (body timeout {body_timeout:?})"
    );
}

/// A client reading a 4 MB response at 32 KB/s for over twice the body
/// timeout keeps its connection, then gets every byte in order.
#[test]
fn a_client_reading_at_32_kb_per_second_keeps_its_connection_and_gets_every_byte() {
    const SIZE: usize = 4 << 20;
    let (closed, _) = crossbeam_channel::bounded(1);
    let backend = big_answer::<SIZE>(closed);
    // A Linux client reading at 32 KB/s reopens its window every 2 to 4 s:
    // that is the progress the proxy can see, so the body timeout is longer.
    let body_timeout = Duration::from_secs(5);
    let proxy = proxy_with(&[backend.addr], |c| {
        c.timeouts.body = body_timeout;
    });
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.connect(&proxy.local_addrs()[0].into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = Vec::with_capacity(SIZE + 256);
    let rate = 32 * 1024; // bytes per second
    let started = Instant::now();
    let slow_for = 2 * body_timeout + Duration::from_secs(1);
    let mut chunk = [0u8; 4096];
    while started.elapsed() < slow_for {
        // Never ahead of 32 KB/s since the start.
        let allowed = (started.elapsed().as_secs_f64() * rate as f64) as usize;
        if got.len() + chunk.len() > allowed {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match s.read(&mut chunk) {
            Ok(0) => panic!(
                "closed after {} bytes, {:?} in",
                got.len(),
                started.elapsed()
            ),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("{e} after {} bytes", got.len()),
        }
    }
    let slow_bytes = got.len();
    // Now at full speed to the end of the response.
    let mut big = vec![0u8; 1 << 16];
    let head_end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = s.read(&mut big).unwrap();
        assert!(n > 0, "closed in the head");
        got.extend_from_slice(&big[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    while got.len() < head_end + SIZE {
        match s.read(&mut big) {
            Ok(0) => panic!("closed after {} of {SIZE} body bytes", got.len() - head_end),
            Ok(n) => got.extend_from_slice(&big[..n]),
            Err(e) => panic!("{e} after {} body bytes", got.len() - head_end),
        }
    }
    let body = &got[head_end..];
    assert_eq!(body.len(), SIZE, "no byte more");
    if let Some(i) = (0..SIZE).find(|&i| body[i] != pattern(i)) {
        panic!("body byte {i} is {} not {}", body[i], pattern(i));
    }
    eprintln!(
        "read {slow_bytes} bytes at 32 KB/s over {slow_for:?} (body timeout {body_timeout:?}), then the rest"
    );
}

/// Twenty clients each uploading a 1 MB body at one byte per second hold no
/// backend connection: the body is buffered first, and theirs neither ends nor
/// fills the buffer. A normal request is served meanwhile. With
/// `--stream-uploads`, the same clients hold one backend connection each.
#[test]
fn one_byte_per_second_uploads_hold_no_backend_connection() {
    for stream in [false, true] {
        let backend = Scripted::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let proxy = proxy_with(&[backend.addr], |c| c.tune.stream_uploads = stream);
        let addr = proxy.local_addrs()[0];
        let mut uploads: Vec<std::net::TcpStream> = (0..20)
            .map(|_| {
                let mut s = connect(addr);
                s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n")
                    .unwrap();
                s
            })
            .collect();
        wait_until(
            || proxy.counts()[0].open == 20,
            "the proxy holds the 20 uploads",
        );
        let started = Instant::now();
        for second in 1..=3 {
            while started.elapsed() < Duration::from_secs(second) {
                std::thread::sleep(Duration::from_millis(10));
            }
            for s in &mut uploads {
                s.write_all(b"x").unwrap();
            }
        }
        let held = backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst);
        if stream {
            assert_eq!(held, 20, "streamed, each upload has its backend connection");
        } else {
            assert_eq!(held, 0, "buffered, no upload reached the backend");
            let mut s = connect(addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            assert_eq!(Reader::new(s).response().text(), "ok");
        }
        eprintln!(
            "stream_uploads={stream}: 20 uploads at 1 B/s for 3 s held {held} backend connections"
        );
    }
}

/// Buffered, a chunked body that turns out malformed is refused with 400 before
/// any of the request reaches a backend; a complete one goes through whole.
#[test]
fn a_buffered_body_is_judged_before_it_reaches_a_backend() {
    let backend = Scripted::start(|mut s, _| {
        while let Some(head) = read_head(&mut s) {
            // The chunked body: to its last chunk and empty trailer.
            let mut body = Vec::new();
            let mut byte = [0u8; 1];
            while !body.ends_with(b"0\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                body.push(byte[0]);
            }
            let text = format!("{} {}", head.lines().next().unwrap_or(""), body.len());
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            );
            if s.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_with(&[backend.addr], |_| {});
    let addr = proxy.local_addrs()[0];
    let mut s = connect(addr);
    s.write_all(
        b"POST /late HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .unwrap();
    s.write_all(b"zz\r\n").unwrap();
    let mut r = Reader::new(s);
    assert_eq!(r.response().status, 400);
    r.expect_closed();
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing of the bad request reached the backend"
    );
    let mut s = connect(addr);
    s.write_all(
        b"POST /good HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .unwrap();
    s.write_all(b"0\r\n\r\n").unwrap();
    let resp = Reader::new(s).response();
    assert_eq!(resp.text(), "POST /good HTTP/1.1 13");
}
