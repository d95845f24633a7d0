//! The built-in origin server (`corelb backend`): a small, fast HTTP/1.1 server for
//! the demo, the tests and the benchmarks. Nothing on the proxy's path uses it
//! (`tests/layout.rs` checks).
//!
//! One mio loop per worker, like the proxy. It keeps connections alive, answers
//! pipelined requests in order, reads and discards request bodies (Content-Length
//! and chunked, through the same framing code as the proxy), and has four routes:
//! - any path: 200 with a short body naming the backend;
//! - `/size/N`: N bytes of body, streamed from a static pattern (so 1 GiB costs no memory);
//! - `/status/CODE`: that status;
//! - `/echo`: the request head and body it received, as the response body;
//! - `/ws`: a WebSocket handshake (RFC 6455), then every frame echoed back (a ping
//!   gets a pong, a close gets a close); frames up to 64 KiB.
//!   `/ws?sink` discards what it receives and `/ws?source` sends one endless frame:
//!   one-way tunnels at full speed, for benchmarks.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mio::net::TcpStream;
use mio::{Events, Interest, Token};
use slab::Slab;

use crate::http::{BodyScanner, Framing, MAX_HEADERS, RequestInfo, analyze_request};
use crate::io::buffer::Buf;
use crate::io::{ReadOutcome, Ready, read_into, write_two};
use crate::runtime::{self, StartError, WorkerContext, Workers};

pub mod demo;
mod websocket;

pub use websocket::websocket_accept;
use websocket::{websocket_frame, websocket_key};

const READ_BUF: usize = 64 * 1024;

/// Largest body `/echo` returns; longer ones get 413.
const MAX_ECHO: usize = 8 * 1024 * 1024;

/// Stop parsing further pipelined requests while this much output is queued.
const MAX_QUEUED_OUTPUT: usize = 256 * 1024;

/// The body pattern of `/size/N`: byte i is `b'a' + i % 26`.
fn pattern_byte(i: u64) -> u8 {
    b'a' + (i % 26) as u8
}

/// 64 KiB of the pattern plus 26 bytes, so any offset modulo 26 starts a full slice.
fn pattern_block() -> &'static [u8] {
    static BLOCK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BLOCK.get_or_init(|| (0..(64 * 1024 + 26) as u64).map(pattern_byte).collect())
}

/// Counters of a running origin.
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
}

/// A running origin; dropping it stops it.
pub struct Origin {
    workers: Workers<()>,
    addr: SocketAddr,
    counters: Arc<Counters>,
}

impl Origin {
    /// Start an origin on `listen` (port 0 picks a free port) with `workers` loops.
    /// `body` replaces the default body ("backend ADDR\n") of the catch-all route.
    pub fn start(
        listen: SocketAddr,
        workers: usize,
        body: Option<String>,
    ) -> Result<Origin, StartError> {
        let (addrs, listeners) = runtime::bind_listeners(&[listen], workers.max(1))?;
        let addr = addrs[0];
        let body: Arc<[u8]> = body
            .unwrap_or_else(|| format!("backend {addr}\n"))
            .into_bytes()
            .into();
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        let workers = Workers::spawn("origin", listeners, move |ctx| {
            if let Err(e) = run(ctx, Arc::clone(&body), &c) {
                eprintln!("corelb backend: worker stopped: {e}");
            }
        })?;
        Ok(Origin {
            workers,
            addr,
            counters,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }

    /// A reader of the request count that outlives the origin's owner (for reports).
    pub fn requests_counter(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let counters = Arc::clone(&self.counters);
        move || counters.requests.load(Ordering::Relaxed)
    }

    pub fn shutdown(mut self) {
        self.workers.shutdown();
    }
}

/// A request whose head is parsed and whose body is still being read.
struct InFlight {
    info: RequestInfo,
    body: BodyScanner,
    route: Route,
    /// For `/echo`: the raw head and body so far.
    echo: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Hello,
    Size(u64),
    Status(u16),
    Echo,
    WebSocket(Tunnel),
    Invalid,
}

/// What a WebSocket connection does after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tunnel {
    /// `/ws`: every frame echoed back.
    Echo,
    /// `/ws?sink`: everything received is discarded; nothing is sent.
    Sink,
    /// `/ws?source`: one endless binary frame of the pattern, sent as fast as the
    /// peer takes it; nothing is read.
    Source,
}

fn route(target: &str) -> Route {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/echo" {
        Route::Echo
    } else if path == "/ws" {
        Route::WebSocket(match query {
            "sink" => Tunnel::Sink,
            "source" => Tunnel::Source,
            _ => Tunnel::Echo,
        })
    } else if let Some(n) = path.strip_prefix("/size/") {
        n.parse().map_or(Route::Invalid, Route::Size)
    } else if let Some(code) = path.strip_prefix("/status/") {
        match code.parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) => Route::Status(c),
            _ => Route::Invalid,
        }
    } else {
        Route::Hello
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

struct Conn {
    sock: TcpStream,
    inbuf: Buf,
    out: Vec<u8>,
    out_sent: usize,
    /// Pattern bytes of a `/size/N` body still to send, and how many were sent.
    fill_left: u64,
    fill_sent: u64,
    current: Option<InFlight>,
    close_after_flush: bool,
    eof: bool,
    /// Cached readiness, kept as the proxy keeps it (`io::Ready`).
    ready: Ready,
    /// The connection switched to WebSocket: input is frames, not requests.
    websocket: Option<Tunnel>,
    /// It used up its turn and is in the list to serve after the next poll.
    listed: bool,
}

fn run(mut ctx: WorkerContext<()>, body: Arc<[u8]>, counters: &Counters) -> io::Result<()> {
    ctx.register_listeners()?;
    let mut conns: Slab<Conn> = Slab::new();
    let mut nodelay = runtime::NodelayInherited::Unknown;
    let mut events = Events::with_capacity(1024);
    // Connections that used up their turn (see `serve`), served again after the
    // next poll, which then does not sleep.
    let mut again: Vec<usize> = Vec::new();
    let mut resume: Vec<usize> = Vec::new();
    loop {
        let timeout = (!again.is_empty()).then_some(std::time::Duration::ZERO);
        if let Err(e) = ctx.poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        std::mem::swap(&mut again, &mut resume);
        // A key can be listed twice when a listed connection closed and a new one
        // took its key: serve each once.
        resume.sort_unstable();
        resume.dedup();
        for key in resume.drain(..) {
            if let Some(conn) = conns.get_mut(key) {
                conn.listed = false;
                match serve(conn, &body, counters) {
                    Served::Close => drop(conns.remove(key)),
                    Served::More => {
                        conn.listed = true;
                        again.push(key);
                    }
                    Served::Idle => {}
                }
            }
        }
        for ev in events.iter() {
            let t = ev.token();
            if t == runtime::WAKER_TOKEN {
                if ctx.control.try_iter().any(|c| c.is_shutdown()) {
                    return Ok(());
                }
            } else if let Some(i) = runtime::listener_index(t, ctx.listeners.len()) {
                loop {
                    match ctx.listeners[i].accept() {
                        Ok((mut sock, _)) => {
                            nodelay.apply(&sock);
                            let entry = conns.vacant_entry();
                            let token = Token(entry.key());
                            if ctx
                                .poll
                                .registry()
                                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                                .is_ok()
                            {
                                counters.connections.fetch_add(1, Ordering::Relaxed);
                                entry.insert(Conn {
                                    sock,
                                    inbuf: Buf::with_capacity(READ_BUF),
                                    out: Vec::new(),
                                    out_sent: 0,
                                    fill_left: 0,
                                    fill_sent: 0,
                                    current: None,
                                    close_after_flush: false,
                                    eof: false,
                                    ready: Ready {
                                        readable: true,
                                        writable: true,
                                        read_closed: false,
                                    },
                                    websocket: None,
                                    listed: false,
                                });
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            } else if let Some(conn) = conns.get_mut(t.0) {
                conn.ready.update(ev);
                match serve(conn, &body, counters) {
                    Served::Close => drop(conns.remove(t.0)),
                    Served::More if !conn.listed => {
                        conn.listed = true;
                        again.push(t.0);
                    }
                    Served::More | Served::Idle => {}
                }
            }
        }
    }
}

/// What `serve` left a connection in.
enum Served {
    /// Nothing more can move until the next event.
    Idle,
    /// It used up its turn and could go on.
    More,
    /// Close it.
    Close,
}

/// Passes of `serve`'s loop one connection gets per turn (each moves at most one
/// 64 KiB read and 256 KiB of writes), so one fast stream does not starve the
/// other connections of its worker.
const SERVE_TURN: usize = 8;

/// Make progress on one connection, up to its turn.
fn serve(c: &mut Conn, body: &[u8], counters: &Counters) -> Served {
    for _ in 0..SERVE_TURN {
        let mut progress = false;
        if c.ready.readable
            && !c.eof
            && !c.inbuf.is_full()
            && c.out.len() - c.out_sent < MAX_QUEUED_OUTPUT
            && c.fill_left == 0
        {
            match read_into(&mut c.sock, &mut c.inbuf, &mut c.ready) {
                Ok(ReadOutcome::Eof) => {
                    c.eof = true;
                    progress = true;
                }
                Ok(ReadOutcome::Data) => progress = true,
                Ok(ReadOutcome::Blocked) => {}
                Err(_) => return Served::Close,
            }
        }
        while !c.close_after_flush
            && c.fill_left == 0
            && c.out.len() - c.out_sent < MAX_QUEUED_OUTPUT
        {
            match handle_input(c, body, counters) {
                Some(true) => progress = true,
                Some(false) => break,
                None => {
                    c.close_after_flush = true;
                    progress = true;
                }
            }
        }
        match flush(c) {
            Ok(p) => progress |= p,
            Err(_) => return Served::Close,
        }
        let flushed = c.out_sent == c.out.len() && c.fill_left == 0;
        if flushed && (c.close_after_flush || (c.eof && c.current.is_none())) {
            return Served::Close;
        }
        if c.eof && c.current.is_some() && c.inbuf.is_empty() {
            return Served::Close;
        }
        if !progress {
            return Served::Idle;
        }
    }
    Served::More
}

/// Write queued output, then pattern bytes, at most four writes' worth. Returns
/// whether anything was written.
fn flush(c: &mut Conn) -> io::Result<bool> {
    let mut progress = false;
    for _ in 0..4 {
        if !c.ready.writable {
            return Ok(progress);
        }
        let chunk: &[u8] = if c.out_sent < c.out.len() {
            &c.out[c.out_sent..]
        } else if c.fill_left > 0 {
            let start = (c.fill_sent % 26) as usize;
            let len = (c.fill_left).min(64 * 1024) as usize;
            &pattern_block()[start..start + len]
        } else {
            c.out.clear();
            c.out_sent = 0;
            return Ok(progress);
        };
        let n = write_two(&mut c.sock, chunk, &[], &mut c.ready)?;
        if n == 0 {
            // Blocked (the readiness cache says so now) or interrupted.
            continue;
        }
        progress = true;
        if c.out_sent < c.out.len() {
            c.out_sent += n;
        } else {
            c.fill_left -= n as u64;
            c.fill_sent += n as u64;
        }
    }
    Ok(progress)
}

/// Parse what is buffered: a head, or body bytes of the request in flight. Returns
/// Some(true) on progress, Some(false) when more input is needed, None on a request
/// so bad the connection must close (its error response is already queued).
fn handle_input(c: &mut Conn, body: &[u8], counters: &Counters) -> Option<bool> {
    match c.websocket {
        Some(Tunnel::Echo) => return websocket_frame(c),
        Some(Tunnel::Sink) => {
            let n = c.inbuf.len();
            c.inbuf.consume(n);
            return Some(n > 0);
        }
        Some(Tunnel::Source) => return Some(false),
        None => {}
    }
    if c.current.is_none() {
        if c.inbuf.is_empty() {
            return Some(false);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(c.inbuf.filled()) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if !c.inbuf.is_full() => return Some(false),
            _ => {
                respond(c, 400, false, b"bad request\n", true, 1);
                return None;
            }
        };
        let info = match analyze_request(&req) {
            Ok(info) => info,
            Err(reject) => {
                respond(c, reject.status(), false, b"bad request\n", true, 1);
                return None;
            }
        };
        let route = route(req.path.unwrap_or("/"));
        if let Route::WebSocket(tunnel) = route {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            let key = websocket_key(&req, &info);
            c.inbuf.consume(n);
            let Some(key) = key else {
                // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
                let text = "a WebSocket handshake is expected here\n";
                let _ = write!(
                    c.out,
                    "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
                return None;
            };
            let _ = write!(
                c.out,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                websocket_accept(&key)
            );
            if tunnel == Tunnel::Source {
                // One binary frame (FIN, opcode 2) with a 64-bit length of 2^62:
                // the pattern follows for as long as anyone reads.
                let len = 1u64 << 62;
                c.out.extend_from_slice(&[0x82, 127]);
                c.out.extend_from_slice(&len.to_be_bytes());
                c.fill_left = len;
                c.fill_sent = 0;
            }
            c.websocket = Some(tunnel);
            return Some(true);
        }
        let echo = if route == Route::Echo {
            c.inbuf.filled()[..n].to_vec()
        } else {
            Vec::new()
        };
        if info.expect_continue && info.framing != Framing::None && info.version == 1 {
            c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        c.inbuf.consume(n);
        c.current = Some(InFlight {
            info,
            body: BodyScanner::new(info.framing),
            route,
            echo,
        });
        return Some(true);
    }
    let Some(inflight) = c.current.as_mut() else {
        return Some(false);
    };
    if !inflight.body.is_done() {
        if c.inbuf.is_empty() {
            return Some(false);
        }
        let n = match inflight.body.scan(c.inbuf.filled()) {
            Ok(n) => n,
            Err(_) => {
                respond(c, 400, false, b"bad chunked body\n", true, 1);
                return None;
            }
        };
        if inflight.route == Route::Echo {
            if inflight.echo.len() + n > MAX_ECHO {
                respond(c, 413, false, b"echo body too large\n", true, 1);
                return None;
            }
            inflight.echo.extend_from_slice(&c.inbuf.filled()[..n]);
        }
        c.inbuf.consume(n);
        if !inflight.body.is_done() {
            return Some(n > 0);
        }
    }
    let Some(done) = c.current.take() else {
        return Some(false);
    };
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let close = !done.info.keep_alive;
    let head_only = done.info.is_head;
    let v = done.info.version;
    match done.route {
        Route::Hello => respond(c, 200, head_only, body, close, v),
        Route::Echo => respond(c, 200, head_only, &done.echo, close, v),
        Route::Status(code) => {
            let text = format!("status {code}\n");
            respond(c, code, head_only, text.as_bytes(), close, v)
        }
        // Unreachable: `/ws` is answered when its head is parsed.
        Route::Invalid | Route::WebSocket(_) => {
            respond(c, 400, head_only, b"bad route\n", close, v)
        }
        Route::Size(n) => {
            write_head(c, 200, Some(n), close, v);
            if !head_only {
                c.fill_left = n;
                c.fill_sent = 0;
            }
        }
    }
    if close {
        c.close_after_flush = true;
    }
    Some(true)
}

fn write_head(c: &mut Conn, code: u16, len: Option<u64>, close: bool, version: u8) {
    let _ = write!(
        c.out,
        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain\r\n",
        reason(code)
    );
    if let Some(n) = len {
        let _ = write!(c.out, "Content-Length: {n}\r\n");
    }
    if close {
        c.out.extend_from_slice(b"Connection: close\r\n");
    } else if version == 0 {
        c.out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    c.out.extend_from_slice(b"\r\n");
}

/// Queue a complete response. 204 and 304 carry no body (and no length);
/// `head_only` (a HEAD request) keeps the length but drops the body.
fn respond(c: &mut Conn, code: u16, head_only: bool, body: &[u8], close: bool, version: u8) {
    let bodiless = code == 204 || code == 304;
    let len = if bodiless {
        None
    } else {
        Some(body.len() as u64)
    };
    write_head(c, code, len, close, version);
    if !bodiless && !head_only {
        c.out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/"), Route::Hello);
        assert_eq!(route("/anything?x=1"), Route::Hello);
        assert_eq!(route("/size/10"), Route::Size(10));
        assert_eq!(route("/size/x"), Route::Invalid);
        assert_eq!(route("/ws?x"), Route::WebSocket(Tunnel::Echo));
        assert_eq!(route("/ws?sink"), Route::WebSocket(Tunnel::Sink));
        assert_eq!(route("/ws?source"), Route::WebSocket(Tunnel::Source));
        assert_eq!(route("/status/204"), Route::Status(204));
        assert_eq!(route("/status/100"), Route::Invalid);
        assert_eq!(route("/echo"), Route::Echo);
    }

    #[test]
    fn pattern_slices_line_up() {
        let block = pattern_block();
        for start in 0..26u64 {
            assert_eq!(block[start as usize], pattern_byte(start));
        }
    }
}
