//! Test helpers: start origins and proxies in-process on 127.0.0.1:0, talk raw HTTP
//! over std sockets with timeouts, and run scripted backends that misbehave on purpose.
#![allow(dead_code)]

pub mod tls;
pub mod wire;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corelb::{Backend, Origin, Proxy, ProxyConfig};

/// Every socket operation in a test gives up after this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn loopback() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

/// A loopback port that refuses connections: bound but never listening, so
/// nothing else (another test binding port 0) can take it while this lives.
pub struct ClosedPort {
    sock: socket2::Socket,
    pub addr: SocketAddr,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&loopback().into()).unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        ClosedPort { sock, addr }
    }

    /// Give the port up (to start a backend on it); returns it.
    pub fn release(self) -> SocketAddr {
        drop(self.sock);
        self.addr
    }
}

pub fn origins(n: usize) -> Vec<Origin> {
    (0..n)
        .map(|_| Origin::start(loopback(), 1, None).expect("origin starts"))
        .collect()
}

pub fn backend_of(addr: SocketAddr) -> Backend {
    Backend::new(addr)
}

pub fn proxy_for(addrs: &[SocketAddr], workers: usize) -> Proxy {
    proxy_with(addrs, |c| c.workers = workers)
}

pub fn proxy_with(addrs: &[SocketAddr], tweak: impl FnOnce(&mut ProxyConfig)) -> Proxy {
    let mut cfg = ProxyConfig::new(
        vec![loopback()],
        addrs.iter().map(|&a| backend_of(a)).collect(),
    );
    cfg.workers = 1;
    tweak(&mut cfg);
    Proxy::start(cfg).expect("proxy starts")
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// One response as read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads responses from a stream (a socket, or TLS over one), keeping bytes
/// that arrive beyond one response.
pub struct Reader<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: Read> Reader<S> {
    pub fn new(stream: S) -> Reader<S> {
        Reader {
            stream,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 64 * 1024];
        let read = loop {
            match self.stream.read(&mut chunk) {
                // A signal to this process (seen once in 47 runs of tests/cli.rs at
                // 16 threads) is no reason to give up.
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            // A TLS peer that ends without a close_notify is, to HTTP, an end
            // of stream like any other (its framing says whether it was whole).
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
                ) =>
            {
                0
            }
            Err(e) => panic!("read failed (timeout means the proxy hung): {e}"),
        }
    }

    /// Read exactly one response (framing per RFC 9112, read by `wire`, not by
    /// corelb's own code; `head_request` for HEAD). The body is kept unless
    /// `discard_body`, in which case only its length is checked and `body` holds
    /// nothing. Interim (1xx) responses are skipped.
    pub fn response_opts(
        &mut self,
        head_request: bool,
        discard_body: bool,
    ) -> Option<(Response, u64)> {
        let (head, framing) = loop {
            match wire::response_head(&self.buf).expect("proxy sent a malformed response head") {
                Some((head, n)) => {
                    let framing =
                        wire::response_body(&head, head_request).expect("proxy sent bad framing");
                    self.buf.drain(..n);
                    break (head, framing);
                }
                None => {
                    if self.fill() == 0 {
                        assert!(
                            self.buf.is_empty(),
                            "connection closed inside a response head"
                        );
                        return None;
                    }
                }
            }
        };
        let mut body = Vec::new();
        let mut length = 0u64;
        let mut dechunk = wire::Dechunk::default();
        loop {
            let (n, done) = match framing {
                wire::Body::None => (0, true),
                wire::Body::Length(total) => {
                    let n = (total - length).min(self.buf.len() as u64) as usize;
                    if !discard_body {
                        body.extend_from_slice(&self.buf[..n]);
                    }
                    (n, length + n as u64 == total)
                }
                wire::Body::Chunked => {
                    // The body is kept as sent, chunk framing included.
                    let n = dechunk
                        .feed(&self.buf, &mut Vec::new(), false)
                        .expect("proxy sent a bad chunked body");
                    if !discard_body {
                        body.extend_from_slice(&self.buf[..n]);
                    }
                    (n, dechunk.is_done())
                }
                wire::Body::Close => {
                    let n = self.buf.len();
                    if !discard_body {
                        body.extend_from_slice(&self.buf);
                    }
                    (n, false)
                }
            };
            length += n as u64;
            self.buf.drain(..n);
            if done {
                break;
            }
            if self.fill() == 0 {
                assert_eq!(
                    framing,
                    wire::Body::Close,
                    "connection closed inside a body"
                );
                break;
            }
        }
        let resp = Response {
            status: head.status,
            head: head.raw,
            body,
        };
        if (100..200).contains(&resp.status) {
            return self.response_opts(head_request, discard_body);
        }
        Some((resp, length))
    }

    pub fn response(&mut self) -> Response {
        self.response_opts(false, false).expect("a response").0
    }

    /// After a response that ends the connection: nothing more arrives, then EOF.
    pub fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes after the response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let n = self.fill();
        assert_eq!(
            n,
            0,
            "expected the connection to close, got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// Send a raw request on a new connection and read one response.
pub fn roundtrip(proxy: SocketAddr, raw: &[u8]) -> (Response, Reader) {
    let mut s = connect(proxy);
    s.write_all(raw).unwrap();
    let mut r = Reader::new(s);
    let resp = r.response();
    (resp, r)
}

pub fn get(proxy: SocketAddr, path: &str) -> Response {
    roundtrip(
        proxy,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .0
}

/// A backend whose every connection is handled by `script`, in its own thread.
/// Counts connections; stops when dropped.
pub struct Scripted {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scripted {
    pub fn start(script: impl Fn(TcpStream, usize) + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind(loopback()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, s) = (Arc::clone(&connections), Arc::clone(&stop));
        let script = Arc::new(script);
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                        let n = c.fetch_add(1, Ordering::SeqCst);
                        let script = Arc::clone(&script);
                        std::thread::spawn(move || script(stream, n));
                    }
                    // Nothing to accept: back off, then look at `stop` again.
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Scripted {
            addr,
            connections,
            stop,
            thread: Some(thread),
        }
    }
}

impl Scripted {
    /// A backend that answers every request head with `answer`, until the
    /// connection closes (it reads heads only: requests must have no body).
    pub fn answering(answer: &'static [u8]) -> Scripted {
        Scripted::start(move |mut s, _| {
            while read_head(&mut s).is_some() {
                if s.write_all(answer).is_err() {
                    return;
                }
            }
        })
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read one request head (up to the empty line) from a scripted backend's stream.
pub fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Write then close our side and wait for the peer to close, so no reset is sent.
pub fn write_and_close(mut s: TcpStream, bytes: &[u8]) {
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut sink = [0u8; 1024];
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Everything `s` receives until the peer closes (or the read fails); fails the
/// test if that takes longer than `IO_TIMEOUT`.
pub fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let started = Instant::now();
    let (got, _) = read_until_end(s);
    assert!(started.elapsed() < IO_TIMEOUT, "the response never ended");
    got
}

/// Everything `s` receives until the stream ends, and how it ended: `None` for a
/// clean end of stream, else the read error (a reset, or the read timeout).
pub fn read_until_end(s: &mut TcpStream) -> (Vec<u8>, Option<ErrorKind>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e.kind())),
        }
    }
}

/// Resident memory of this process, in KiB (Linux).
pub fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// Resident memory of process `pid` ("self" for this one), in KiB (Linux).
pub fn rss_kib_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Wait up to 5 s until no worker of `proxy` holds a client connection: after the
/// clients have closed, every session must be gone (no leak).
pub fn assert_no_open_connections(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts = proxy.counts();
        if counts.iter().all(|c| c.open == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sessions left open after every client closed: {counts:?}"
        );
        // Back-off between two looks.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request as a scripted backend read it (with `wire`, not corelb's code).
pub struct Received {
    pub head: wire::Head,
    /// The body, chunk framing removed.
    pub body: Vec<u8>,
}

/// Read one whole request (head, then a Content-Length or chunked body) from a
/// scripted backend's stream; `None` if the stream ends or is not HTTP. Heads and
/// chunked bodies are read byte by byte, so nothing after the request is taken.
pub fn read_request(s: &mut TcpStream) -> Option<Received> {
    let raw = read_head(s)?;
    let (head, _) = wire::request_head(raw.as_bytes()).ok()??;
    let mut body = Vec::new();
    match wire::request_body(&head).ok()? {
        wire::Body::None => {}
        wire::Body::Length(n) => {
            body.resize(usize::try_from(n).ok()?, 0);
            s.read_exact(&mut body).ok()?;
        }
        wire::Body::Chunked => {
            let mut decoder = wire::Dechunk::default();
            let mut byte = [0u8; 1];
            while !decoder.is_done() {
                s.read_exact(&mut byte).ok()?;
                decoder.feed(&byte, &mut body, true).ok()?;
            }
        }
        wire::Body::Close => return None,
    }
    Some(Received { head, body })
}

/// Wait up to `IO_TIMEOUT` for `condition`, polling every millisecond; fails the
/// test with `what` if it never holds.
pub fn wait_until(condition: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether `proxy` reports backend `addr` as taking requests (the `up` of its
/// status page: health checks and passive health agree).
pub fn backend_up(proxy: &Proxy, addr: SocketAddr) -> bool {
    let status = proxy.stats().status_json();
    let key = format!("{{\"address\":\"{addr}\",\"up\":");
    let at = status
        .find(&key)
        .unwrap_or_else(|| panic!("{addr} is not in the status: {status}"));
    status[at + key.len()..].starts_with("true")
}

/// The sum of the samples of `metric` whose labels contain `with`.
pub fn metric(proxy: &Proxy, metric: &str, with: &str) -> u64 {
    proxy
        .stats()
        .prometheus()
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// No failure was counted against a backend of `proxy`, whose passive limit is
/// one failure: each is up, and none was kept in by the last-backend rule (which
/// is what a failure counted against a lone backend shows).
pub fn assert_no_failure_counted(proxy: &Proxy) {
    let status = proxy.stats().status_json();
    assert!(
        status.contains("\"last_backend_kept\":false") && !status.contains("\"up\":false"),
        "a failure was counted against a backend: {status}"
    );
}

/// A client connection with a small receive buffer (4 KiB asked for), so that a
/// response backs up in the proxy instead of in the kernel while it does not read.
pub fn connect_small_window(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}
