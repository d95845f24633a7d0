//! The session fuzzer: a real corelb (a debug build, so its isolation invariants
//! are checked after every step) between many concurrent clients and two scripted
//! backends, all driven by one seeded random schedule: pipelining, partial
//! writes, half-closes and resets at random points, stalled uploads, slow readers;
//! backends that answer early, send surplus bytes, close or reset, answer with
//! garbage, send interim responses, close-delimited, chunked and splice-sized
//! bodies, and leave stale pooled connections behind.
//!
//! The oracle shares no code with `src/`: it reads every byte with `wire` (written
//! for the tests from RFC 9112). Every request carries a unique id; the backend
//! echoes it in a header, in the body it answers with, and with a digest of the
//! request body it received. The oracle checks that every response a client gets
//! answers the request it sent on that connection, in order, with the right bytes;
//! that a local error or a closed connection is explained by a fault the schedule
//! put there; that no request reaches a backend unless a client sent all of it,
//! with the same body; that no request that is not idempotent reaches a backend
//! twice; and that the proxy never pipelines requests onto a backend connection.
//!
//! `cargo test` runs a bounded version: the seeds in `session_fuzz_seeds.txt`
//! (every seed that ever failed) and a few fixed ones. `scripts/session-fuzz.sh
//! [SECONDS]` (or `CORELB_FUZZ_SECONDS=600 cargo test --test session_fuzz --
//! --nocapture`) runs new seeds until the time is up. A failure prints its seed;
//! `CORELB_FUZZ_SEED=N` replays one.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wire;
use common::{backend_of, loopback};
use corelb::{Proxy, ProxyConfig};

// ---------------------------------------------------------------------------
// Randomness and content

/// splitmix64: small, seedable, good enough to spread a schedule.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A size spread over orders of magnitude, up to `max`.
    fn size(&mut self, max: u64) -> u64 {
        let bits = self.below(64 - u64::from(max.leading_zeros()) + 1);
        (self.next() & ((1u64 << bits) - 1)).min(max)
    }
}

/// FNV-1a, for the request-body digest the backend sends back.
fn digest(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `n` bytes of `tag;` repeated: whose bytes they are can be read anywhere.
fn pattern(tag: &str, n: usize) -> Vec<u8> {
    let unit = format!("{tag};");
    unit.bytes().cycle().take(n).collect()
}

// ---------------------------------------------------------------------------
// What a request asks of the backend

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length,
    Chunked,
    Close,
}

/// A backend misbehaviour that costs the request its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Reset the connection instead of answering.
    Reset,
    /// Send the head and half the body, then reset.
    ResetMid,
    /// Answer with a head that cannot be relayed (two Content-Lengths).
    Bad,
}

/// How the backend answers one request (sent to it in `X-Fuzz-Plan`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Plan {
    status: u16,
    framing: Framing,
    len: usize,
    interim: u8,
    fault: Option<Fault>,
    /// Answer as soon as the head is read, then close (the body is never read).
    early: bool,
    /// Bytes that belong to no response, right after this one.
    surplus: bool,
    /// Close the connection after answering.
    close_after: bool,
    /// Read the next request on this connection whole, then close without a byte:
    /// a stale pooled connection, as seen from the proxy.
    stale_next: bool,
    /// Write the answer in small pieces.
    slow: bool,
    pause_ms: u64,
}

impl Plan {
    fn random(rng: &mut Rng, has_body: bool) -> Plan {
        let mut p = Plan {
            status: 200,
            framing: Framing::Length,
            len: rng.size(300_000) as usize,
            interim: 0,
            fault: None,
            early: false,
            surplus: false,
            close_after: false,
            stale_next: false,
            slow: false,
            pause_ms: 0,
        };
        match rng.below(100) {
            0..=54 => {}
            55..=79 => p.framing = Framing::Chunked,
            80..=89 => p.framing = Framing::Close,
            90..=94 => p.status = 204,
            _ => p.status = 304,
        }
        if p.status != 200 {
            p.len = 0;
        }
        if rng.chance(8) {
            // Now and then more than the proxy relays (64): that is a 502.
            p.interim = if rng.chance(5) {
                70
            } else {
                1 + rng.below(3) as u8
            };
        }
        if rng.chance(10) {
            p.fault = Some(match rng.below(3) {
                0 => Fault::Reset,
                1 => Fault::ResetMid,
                _ => Fault::Bad,
            });
        }
        p.early = has_body && p.fault.is_none() && rng.chance(8);
        p.surplus = rng.chance(6);
        p.close_after = rng.chance(6);
        p.stale_next = rng.chance(6);
        p.slow = rng.chance(8);
        if rng.chance(10) {
            p.pause_ms = rng.below(20);
        }
        p
    }

    fn encode(&self) -> String {
        let framing = match self.framing {
            Framing::Length => "len",
            Framing::Chunked => "chunked",
            Framing::Close => "close",
        };
        let fault = match self.fault {
            None => "none",
            Some(Fault::Reset) => "reset",
            Some(Fault::ResetMid) => "resetmid",
            Some(Fault::Bad) => "bad",
        };
        format!(
            "{} {} {} {} {} {} {} {} {} {} {}",
            self.status,
            framing,
            self.len,
            self.interim,
            fault,
            self.early as u8,
            self.surplus as u8,
            self.close_after as u8,
            self.stale_next as u8,
            self.slow as u8,
            self.pause_ms
        )
    }

    fn decode(text: &str) -> Option<Plan> {
        let f: Vec<&str> = text.split(' ').collect();
        if f.len() != 11 {
            return None;
        }
        let flag = |s: &str| s == "1";
        Some(Plan {
            status: f[0].parse().ok()?,
            framing: match f[1] {
                "len" => Framing::Length,
                "chunked" => Framing::Chunked,
                "close" => Framing::Close,
                _ => return None,
            },
            len: f[2].parse().ok()?,
            interim: f[3].parse().ok()?,
            fault: match f[4] {
                "none" => None,
                "reset" => Some(Fault::Reset),
                "resetmid" => Some(Fault::ResetMid),
                "bad" => Some(Fault::Bad),
                _ => return None,
            },
            early: flag(f[5]),
            surplus: flag(f[6]),
            close_after: flag(f[7]),
            stale_next: flag(f[8]),
            slow: flag(f[9]),
            pause_ms: f[10].parse().ok()?,
        })
    }
}

// ---------------------------------------------------------------------------
// The backends

/// What the backends saw, shared by both and read by the oracle.
#[derive(Default)]
struct BackendLog {
    /// Every request read whole: id -> (times, body digest of the last one).
    received: HashMap<String, (u32, u64)>,
    /// Every request head that reached a backend, whole request or not: id -> times.
    heads: HashMap<String, u32>,
    /// Requests read whole and then dropped without a byte (stale connections).
    killed: HashSet<String>,
    /// Requests answered early, before their body was read.
    early: HashSet<String>,
    violations: Vec<String>,
}

type Log = Arc<Mutex<BackendLog>>;

/// A backend connection read through a buffer, so that bytes beyond one request
/// (the proxy pipelining) are seen.
struct BackendConn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl BackendConn {
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn head(&mut self, log: &Log) -> Option<wire::Head> {
        loop {
            match wire::request_head(&self.buf) {
                Ok(Some((head, n))) => {
                    self.buf.drain(..n);
                    return Some(head);
                }
                Ok(None) => {
                    if !self.fill() {
                        if !self.buf.is_empty() {
                            // The proxy closed in the middle of a head: it gave up on
                            // a request it had started to send (a client went away).
                        }
                        return None;
                    }
                }
                Err(e) => {
                    let text =
                        String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)]).into_owned();
                    log.lock()
                        .unwrap()
                        .violations
                        .push(format!("the proxy sent a bad request head ({e}): {text:?}"));
                    return None;
                }
            }
        }
    }

    fn body(&mut self, head: &wire::Head, log: &Log) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        match wire::request_body(head) {
            Ok(wire::Body::None) => {}
            Ok(wire::Body::Length(n)) => {
                let n = n as usize;
                while self.buf.len() < n {
                    if !self.fill() {
                        return None;
                    }
                }
                body = self.buf.drain(..n).collect();
            }
            Ok(wire::Body::Chunked) => {
                let mut d = wire::Dechunk::default();
                loop {
                    match d.feed(&self.buf, &mut body, true) {
                        Ok(n) => {
                            self.buf.drain(..n);
                        }
                        Err(e) => {
                            log.lock()
                                .unwrap()
                                .violations
                                .push(format!("the proxy sent a bad chunked body: {e}"));
                            return None;
                        }
                    }
                    if d.is_done() {
                        break;
                    }
                    if !self.fill() {
                        return None;
                    }
                }
            }
            Ok(wire::Body::Close) | Err(_) => {
                log.lock()
                    .unwrap()
                    .violations
                    .push(format!("the proxy sent unframed request {}", head.start));
                return None;
            }
        }
        Some(body)
    }

    /// Write `data`, in small pieces if `slow`.
    /// Write `data`, in pieces now and then pausing when `slow`; the bytes from
    /// `whole_from` on go in one write.
    fn send(&mut self, data: &[u8], slow: bool, whole_from: usize, rng: &mut Rng) -> bool {
        if !slow {
            return self.s.write_all(data).is_ok();
        }
        let (data, whole) = data.split_at(whole_from.min(data.len()));
        let mut rest = data;
        while !rest.is_empty() {
            let n = (1 + rng.below(4096) as usize).min(rest.len());
            if self.s.write_all(&rest[..n]).is_err() {
                return false;
            }
            rest = &rest[n..];
            if rng.chance(20) {
                // A slow backend: a pause now and then between pieces.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.s.write_all(whole).is_ok()
    }

    fn reset(self) {
        let _ = socket2::SockRef::from(&self.s).set_linger(Some(Duration::ZERO));
    }

    /// Reset once the kernel has nothing left to send (a reset discards what it
    /// still holds: the answer would be cut by the backend itself).
    fn reset_when_delivered(self) {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut queued: libc::c_int = 0;
            // SAFETY: TIOCOUTQ writes one int through a pointer to a live local.
            let r = unsafe { libc::ioctl(self.s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
            if r != 0 || queued == 0 || Instant::now() > deadline {
                break;
            }
            // Back-off before the next look at the send queue.
            std::thread::sleep(Duration::from_millis(1));
        }
        self.reset();
    }
}

/// One backend connection: read requests, answer each as its plan says.
fn backend_conn(s: TcpStream, log: Log, seed: u64) {
    let mut rng = Rng(seed);
    let mut c = BackendConn { s, buf: Vec::new() };
    let mut kill_next = false;
    loop {
        let Some(head) = c.head(&log) else { return };
        let id = head.get("x-fuzz-id").unwrap_or("").to_string();
        let Some(plan) = head.get("x-fuzz-plan").and_then(Plan::decode) else {
            log.lock().unwrap().violations.push(format!(
                "a request without a plan reached a backend: {:?}",
                head.raw
            ));
            return;
        };
        *log.lock().unwrap().heads.entry(id.clone()).or_insert(0) += 1;
        if plan.early && !kill_next {
            log.lock().unwrap().early.insert(id.clone());
            let (answer, _) = response(&id, &plan, "early", &head);
            let _ = c.send(&answer, plan.slow, answer.len(), &mut rng);
            if rng.chance(50) {
                // The rest of the body is still on its way: close our side, and
                // read until the proxy closes (a lingering close).
                let _ = c.s.shutdown(Shutdown::Write);
                while c.fill() {
                    c.buf.clear();
                }
            } else {
                // Or, once the answer is delivered, close with the body unread,
                // which is a reset: the answer must stand, and the failed upload
                // is not the backend's failure.
                c.reset_when_delivered();
            }
            return;
        }
        let expects_continue = head
            .get("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
        if expects_continue
            && !kill_next
            && c.s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        let Some(body) = c.body(&head, &log) else {
            return;
        };
        {
            let mut log = log.lock().unwrap();
            let entry = log.received.entry(id.clone()).or_insert((0, 0));
            entry.0 += 1;
            entry.1 = digest(&body);
            if kill_next {
                log.killed.insert(id.clone());
            }
        }
        if kill_next {
            // Read whole, never answered: the proxy must not replay it unless it
            // is idempotent.
            return;
        }
        if !c.buf.is_empty() {
            let extra = String::from_utf8_lossy(&c.buf[..c.buf.len().min(120)]).into_owned();
            log.lock().unwrap().violations.push(format!(
                "the proxy sent bytes beyond request {id} before its answer (pipelining): {extra:?}"
            ));
            return;
        }
        if plan.pause_ms > 0 {
            // The plan's delay before answering (a slow backend).
            std::thread::sleep(Duration::from_millis(plan.pause_ms));
        }
        match plan.fault {
            Some(Fault::Reset) => return c.reset(),
            Some(Fault::Bad) => {
                let _ = c.s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                );
                return;
            }
            _ => {}
        }
        let digest_text = format!("{:016x}", digest(&body));
        let (mut answer, head_end) = response(&id, &plan, &digest_text, &head);
        if plan.fault == Some(Fault::ResetMid) {
            // Half the body; a bodiless answer loses the end of its head.
            let cut = (head_end + (answer.len() - head_end) / 2).min(answer.len() - 1);
            let _ = c.s.write_all(&answer[..cut]);
            return c.reset();
        }
        let to_head = head.method == "HEAD";
        let delimited_by_close = plan.framing == Framing::Close && !to_head && plan.status == 200;
        // Surplus after a body that ends with the close would be body. It goes
        // in one write with the answer's last byte, so it is there by the time
        // the proxy has the whole answer: surplus that comes later, once the
        // connection carries the next request, no proxy can tell from its answer
        // (README, Isolation). Sent in separate pieces, a pause (or, under load,
        // the backend thread losing its core) between the answer's end and the
        // surplus can make it late: one violation, seed 1796191670, with a
        // 16-thread `cargo test` loop sharing the two cores, which its replay
        // did not repeat.
        let whole_from = answer.len().saturating_sub(1);
        if plan.surplus && !delimited_by_close {
            answer.extend_from_slice(
                b"HTTP/1.1 200 OK\r\nX-Fuzz-Id: SURPLUS\r\nContent-Length: 7\r\n\r\nSURPLUS",
            );
        }
        if !c.send(&answer, plan.slow, whole_from, &mut rng) {
            return;
        }
        if plan.close_after || delimited_by_close {
            return;
        }
        kill_next = plan.stale_next;
    }
}

/// The answer to request `id`: interim heads, then the final head and body; and
/// where the final head ends in it.
fn response(id: &str, plan: &Plan, digest_text: &str, req: &wire::Head) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    for _ in 0..plan.interim {
        out.extend_from_slice(
            b"HTTP/1.1 103 Early Hints\r\nLink: </fuzz.css>; rel=preload\r\n\r\n",
        );
    }
    let bodiless = req.method == "HEAD" || plan.status != 200;
    let reason = match plan.status {
        204 => "No Content",
        304 => "Not Modified",
        _ => "OK",
    };
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {reason}\r\nX-Fuzz-Id: {id}\r\nX-Fuzz-Body: {digest_text}\r\n",
            plan.status
        )
        .as_bytes(),
    );
    let body = pattern(id, plan.len);
    match plan.framing {
        _ if plan.status != 200 => {}
        Framing::Length => {
            out.extend_from_slice(format!("Content-Length: {}\r\n", plan.len).as_bytes())
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Close => {}
    }
    if plan.close_after || plan.early {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let head_end = out.len();
    if bodiless {
        return (out, head_end);
    }
    match plan.framing {
        Framing::Length | Framing::Close => out.extend_from_slice(&body),
        Framing::Chunked => {
            // Chunk sizes from the body's own length, so the plan decides them.
            let mut rest = &body[..];
            let mut step = 1 + plan.len % 7919;
            while !rest.is_empty() {
                let n = step.min(rest.len());
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                step = step * 3 % 65_521 + 1;
            }
            out.extend_from_slice(b"0\r\nX-Fuzz-Trailer: 1\r\n\r\n");
        }
    }
    (out, head_end)
}

struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    fn start(log: Log, seed: u64) -> Backend {
        let listener = TcpListener::bind(loopback()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                        let log = Arc::clone(&log);
                        n += 1;
                        let seed = seed ^ n.wrapping_mul(0x2545_F491_4F6C_DD1D);
                        std::thread::spawn(move || backend_conn(s, log, seed));
                    }
                    // Nothing to accept: back off, then look at `stop` again.
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Backend {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The clients

const METHODS: [(&str, bool); 6] = [
    ("GET", true),
    ("HEAD", true),
    ("POST", false),
    ("PUT", true),
    ("DELETE", true),
    ("PATCH", false),
];

#[derive(Clone, Debug)]
struct Request {
    id: String,
    method: &'static str,
    idempotent: bool,
    body: Vec<u8>,
    plan: Plan,
    /// The client asks to close after this one.
    close: bool,
    /// `Expect: 100-continue`: the body goes out once a 100 (or an answer) came,
    /// or after 20 ms without one.
    expect: bool,
    bytes: Vec<u8>,
    /// Offset of the body in `bytes`.
    body_at: usize,
}

impl Request {
    fn random(rng: &mut Rng, id: String) -> Request {
        let (method, idempotent) = METHODS[match rng.below(100) {
            0..=39 => 0,
            40..=49 => 1,
            50..=74 => 2,
            75..=84 => 3,
            85..=92 => 4,
            _ => 5,
        }];
        let with_body = matches!(method, "POST" | "PUT" | "PATCH") || rng.chance(5);
        let mut body = if with_body {
            pattern(&format!("req-{id}"), rng.size(100_000) as usize)
        } else {
            Vec::new()
        };
        let chunked = with_body && rng.chance(40);
        let plan = Plan::random(rng, !body.is_empty());
        if plan.early {
            // Large enough to be still on its way when the early answer comes.
            body = pattern(&format!("req-{id}"), 200_000 + rng.size(200_000) as usize);
        }
        let close = rng.chance(8);
        let expect = !body.is_empty() && rng.chance(20);
        let mut head = format!(
            "{method} /fuzz/{id} HTTP/1.1\r\nHost: fuzz\r\nX-Fuzz-Id: {id}\r\nX-Fuzz-Plan: {}\r\n",
            plan.encode()
        );
        if chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
        } else if with_body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        if expect {
            head.push_str("Expect: 100-continue\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        let body_at = bytes.len();
        if chunked {
            let mut rest = &body[..];
            while !rest.is_empty() {
                let n = (1 + rng.below(20_000) as usize).min(rest.len());
                bytes.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                bytes.extend_from_slice(&rest[..n]);
                bytes.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        } else {
            bytes.extend_from_slice(&body);
        }
        Request {
            id,
            method,
            idempotent,
            body,
            plan,
            close,
            expect,
            bytes,
            body_at,
        }
    }

    /// What the backend must send back: the answer can only be this one.
    fn expected_body(&self) -> Vec<u8> {
        if self.method == "HEAD" || self.plan.status != 200 {
            Vec::new()
        } else {
            pattern(&self.id, self.plan.len)
        }
    }
}

/// How a client connection misbehaves, at which request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientFault {
    None,
    /// Send part of the request's head, then close (FIN).
    PartialHeadClose(usize),
    /// Send part of the request (head or body), then reset.
    ResetMidRequest(usize),
    /// Send the head and part of the body, then stop sending (the body timeout).
    StallBody(usize),
    /// Shut down the sending side after the last request.
    HalfClose,
    /// Reset after reading the first byte of the answer to this request.
    ResetMidResponse(usize),
}

#[derive(Clone, Debug)]
struct ConnPlan {
    requests: Vec<Request>,
    depth: usize,
    fault: ClientFault,
    /// Split writes into random pieces.
    dribble: bool,
    slow_reader: bool,
}

impl ConnPlan {
    fn random(rng: &mut Rng, tag: &str) -> ConnPlan {
        let n = 1 + rng.below(6) as usize;
        let requests: Vec<Request> = (0..n)
            .map(|i| Request::random(rng, format!("{tag}.{i}")))
            .collect();
        let at = rng.below(n as u64) as usize;
        let fault = match rng.below(100) {
            0..=4 => ClientFault::PartialHeadClose(at),
            5..=9 => ClientFault::ResetMidRequest(at),
            10..=11 if !requests[at].body.is_empty() => ClientFault::StallBody(at),
            12..=16 => ClientFault::HalfClose,
            17..=20 => ClientFault::ResetMidResponse(at),
            _ => ClientFault::None,
        };
        ConnPlan {
            requests,
            depth: 1 + rng.below(4) as usize,
            fault,
            dribble: rng.chance(25),
            slow_reader: rng.chance(15),
        }
    }
}

/// What happened to one request, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Answered by the backend, with the right bytes.
    Answered,
    /// Answered by corelb itself with this status.
    Local(u16),
    /// Not answered: the connection ended first.
    Unanswered,
}

/// The record of one client connection, for the oracle.
struct ConnReport {
    plan: ConnPlan,
    /// Request ids the client sent whole, with their body digests.
    sent: Vec<(String, u64)>,
    outcomes: Vec<(String, Outcome)>,
    violations: Vec<String>,
}

/// Signals between a connection's writer and reader.
struct Shared {
    /// Requests the writer has started to send, in order (index into the plan).
    started: Mutex<VecDeque<usize>>,
    /// Final answers the reader has taken so far.
    answered: AtomicUsize,
    /// The reader saw the connection end (or was told to stop).
    ended: AtomicBool,
    /// The writer is done: everything sent, or it gave up.
    writer_done: AtomicBool,
    /// The writer reset or closed the connection on purpose.
    aborted: AtomicBool,
    /// A write failed with a reset: the reset was reported to the writer, and a
    /// read after it sees a plain end of stream.
    write_reset: AtomicBool,
    /// Interim responses the reader has seen so far (a writer waiting for a 100
    /// Continue watches it).
    interims: AtomicUsize,
}

fn write_dribbled(
    s: &mut TcpStream,
    data: &[u8],
    dribble: bool,
    rng: &mut Rng,
) -> std::io::Result<()> {
    if !dribble {
        return s.write_all(data);
    }
    let mut rest = data;
    while !rest.is_empty() {
        let n = (1 + rng.below(3000) as usize).min(rest.len());
        s.write_all(&rest[..n])?;
        rest = &rest[n..];
        if rng.chance(10) {
            // Dribbling: a pause now and then between pieces.
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    Ok(())
}

/// The writing half of a client connection.
fn writer(
    mut s: TcpStream,
    plan: &ConnPlan,
    shared: &Shared,
    mut rng: Rng,
    sent: &Mutex<Vec<(String, u64)>>,
) {
    let finish = |shared: &Shared| shared.writer_done.store(true, Ordering::SeqCst);
    for (i, req) in plan.requests.iter().enumerate() {
        // Pipelining depth: wait until fewer than `depth` answers are owed.
        let deadline = Instant::now() + Duration::from_secs(20);
        while i - shared.answered.load(Ordering::SeqCst).min(i) >= plan.depth {
            if shared.ended.load(Ordering::SeqCst) || Instant::now() > deadline {
                return finish(shared);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if shared.ended.load(Ordering::SeqCst) {
            return finish(shared);
        }
        shared.started.lock().unwrap().push_back(i);
        let cut =
            |rng: &mut Rng, lo: usize, hi: usize| lo + rng.below((hi - lo).max(1) as u64) as usize;
        match plan.fault {
            ClientFault::PartialHeadClose(at) if at == i => {
                let n = cut(&mut rng, 1, req.body_at - 2);
                let _ = write_dribbled(&mut s, &req.bytes[..n], plan.dribble, &mut rng);
                shared.aborted.store(true, Ordering::SeqCst);
                let _ = s.shutdown(Shutdown::Write);
                return finish(shared);
            }
            ClientFault::ResetMidRequest(at) if at == i => {
                let n = cut(&mut rng, 1, req.bytes.len());
                let _ = write_dribbled(&mut s, &req.bytes[..n], plan.dribble, &mut rng);
                shared.aborted.store(true, Ordering::SeqCst);
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                shared.ended.store(true, Ordering::SeqCst);
                return finish(shared);
            }
            ClientFault::StallBody(at) if at == i => {
                let n = cut(&mut rng, req.body_at, req.bytes.len());
                let _ = write_dribbled(&mut s, &req.bytes[..n], plan.dribble, &mut rng);
                shared.aborted.store(true, Ordering::SeqCst);
                // Stay silent until the reader sees the end.
                let deadline = Instant::now() + Duration::from_secs(20);
                while !shared.ended.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                return finish(shared);
            }
            _ => {}
        }
        let written = if req.expect {
            // The head, then the body once a 100 Continue (or an answer) came, or
            // after 20 ms, as curl does after a second.
            let (seen, answered) = (
                shared.interims.load(Ordering::SeqCst),
                shared.answered.load(Ordering::SeqCst),
            );
            write_dribbled(&mut s, &req.bytes[..req.body_at], plan.dribble, &mut rng).and_then(
                |()| {
                    let wait = Instant::now() + Duration::from_millis(20);
                    while Instant::now() < wait
                        && shared.interims.load(Ordering::SeqCst) == seen
                        && shared.answered.load(Ordering::SeqCst) == answered
                    {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    write_dribbled(&mut s, &req.bytes[req.body_at..], plan.dribble, &mut rng)
                },
            )
        } else {
            write_dribbled(&mut s, &req.bytes, plan.dribble, &mut rng)
        };
        if let Err(e) = written {
            // The connection was closed on us (after an early answer, say).
            if e.kind() == ErrorKind::ConnectionReset {
                shared.write_reset.store(true, Ordering::SeqCst);
            }
            return finish(shared);
        }
        sent.lock()
            .unwrap()
            .push((req.id.clone(), digest(&req.body)));
        if req.close {
            break;
        }
        if req.plan.fault == Some(Fault::ResetMid) && req.plan.framing == Framing::Close {
            // Its answer will end in a reset, which the reader must see itself: a
            // write after it would be told of the reset instead, and the reader
            // would see a plain end of stream.
            break;
        }
    }
    if plan.fault == ClientFault::HalfClose {
        let _ = s.shutdown(Shutdown::Write);
    }
    finish(shared);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    Data,
    /// A clean end of stream.
    End,
    /// A reset (or another read error).
    Reset,
    /// Nothing came within the deadline (or the writer ended the connection).
    Quiet,
}

/// Read bytes into `buf`, waiting up to `wait`.
fn fill(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    slow: bool,
    rng: &mut Rng,
    shared: &Shared,
    wait: Duration,
) -> Fill {
    let mut chunk = [0u8; 65536];
    let want = if slow {
        1 + rng.below(4096) as usize
    } else {
        chunk.len()
    };
    let deadline = Instant::now() + wait;
    loop {
        match s.read(&mut chunk[..want]) {
            Ok(0) => return Fill::End,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if slow && rng.chance(10) {
                    // A slow reader: a pause now and then between reads.
                    std::thread::sleep(Duration::from_millis(1));
                }
                return Fill::Data;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if shared.ended.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return Fill::Quiet;
                }
            }
            Err(_) => return Fill::Reset,
        }
    }
}

/// Longest wait for an answer (the proxy's own timeouts are shorter).
const ANSWER_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for the proxy to close after it said it would (its linger time
/// is 1 s here).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Run one client connection and judge what it saw.
fn client_conn(addr: SocketAddr, plan: ConnPlan, seed: u64) -> ConnReport {
    let mut rng = Rng(seed);
    let mut violations = Vec::new();
    let mut outcomes = Vec::new();
    let s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            return ConnReport {
                plan,
                sent: Vec::new(),
                outcomes,
                violations: vec![format!("connect failed: {e}")],
            };
        }
    };
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let shared = Arc::new(Shared {
        started: Mutex::new(VecDeque::new()),
        answered: AtomicUsize::new(0),
        ended: AtomicBool::new(false),
        writer_done: AtomicBool::new(false),
        aborted: AtomicBool::new(false),
        write_reset: AtomicBool::new(false),
        interims: AtomicUsize::new(0),
    });
    let sent = Arc::new(Mutex::new(Vec::new()));
    let writer_thread = {
        let (s, plan, shared, rng, sent) = (
            s.try_clone().unwrap(),
            plan.clone(),
            Arc::clone(&shared),
            Rng(rng.next()),
            Arc::clone(&sent),
        );
        std::thread::spawn(move || writer(s, &plan, &shared, rng, &sent))
    };
    let mut s = s;
    let mut buf = Vec::new();
    // From which request on an answer may be missing: after a local error, a
    // `Connection: close`, a cut-short answer, or a fault of the client's.
    let mut excused_from: Option<usize> = match plan.fault {
        ClientFault::PartialHeadClose(i) | ClientFault::StallBody(i) => Some(i),
        // A reset may discard what the proxy had not read yet.
        ClientFault::ResetMidRequest(_) | ClientFault::ResetMidResponse(_) => Some(0),
        ClientFault::None | ClientFault::HalfClose => None,
    };
    let excuse = |from: usize, ex: &mut Option<usize>| *ex = Some(ex.map_or(from, |e| e.min(from)));
    'conn: loop {
        // The request this answer must be for.
        let front = loop {
            if let Some(&i) = shared.started.lock().unwrap().front() {
                break Some(i);
            }
            if shared.writer_done.load(Ordering::SeqCst) {
                break shared.started.lock().unwrap().front().copied();
            }
            // Back-off. No deadline of its own: the writer always gets done (each
            // of its waits has a deadline, each of its writes a timeout).
            std::thread::sleep(Duration::from_micros(200));
        };
        let Some(i) = front else {
            if !buf.is_empty() {
                violations.push(format!(
                    "bytes after the last answer: {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            break;
        };
        let req = &plan.requests[i];
        if plan.fault == ClientFault::ResetMidResponse(i) {
            // Wait for the first byte of the answer, then reset.
            if buf.is_empty() {
                let _ = fill(&mut s, &mut buf, false, &mut rng, &shared, ANSWER_WAIT);
            }
            shared.aborted.store(true, Ordering::SeqCst);
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            break;
        }
        // The head (interim ones skipped, each checked).
        let mut interim = 0;
        let mut continued = false;
        let head = loop {
            match wire::response_head(&buf) {
                Ok(Some((head, n))) => {
                    buf.drain(..n);
                    if (100..200).contains(&head.status) {
                        shared.interims.fetch_add(1, Ordering::SeqCst);
                        if head.status == 100 && req.expect && !continued {
                            continued = true;
                            continue;
                        }
                        interim += 1;
                        if head.status != 103 || interim > req.plan.interim.min(64) {
                            violations.push(format!(
                                "{}: unexpected interim response {:?}",
                                req.id, head.start
                            ));
                        }
                        continue;
                    }
                    break Some(head);
                }
                Ok(None) => match fill(
                    &mut s,
                    &mut buf,
                    plan.slow_reader,
                    &mut rng,
                    &shared,
                    ANSWER_WAIT,
                ) {
                    Fill::Data => {}
                    Fill::End | Fill::Reset | Fill::Quiet => {
                        if !buf.is_empty() {
                            violations.push(format!(
                                "{}: the connection ended inside a response head: {:?}",
                                req.id,
                                String::from_utf8_lossy(&buf)
                            ));
                        }
                        break None;
                    }
                },
                Err(e) => {
                    violations.push(format!(
                        "{}: malformed response head ({e}): {:?}",
                        req.id,
                        String::from_utf8_lossy(&buf[..buf.len().min(300)])
                    ));
                    break 'conn;
                }
            }
        };
        let Some(head) = head else {
            // Ended with this request (and those behind it) unanswered.
            break;
        };
        let body_kind = match wire::response_body(&head, req.method == "HEAD") {
            Ok(b) => b,
            Err(e) => {
                violations.push(format!("{}: bad framing ({e}): {:?}", req.id, head.raw));
                break;
            }
        };
        // The body, read with the oracle's own framing.
        let mut body = Vec::new();
        let mut dechunk = wire::Dechunk::default();
        let mut ended_by = Fill::Data;
        let complete = loop {
            let done = match body_kind {
                wire::Body::None => true,
                wire::Body::Length(n) => {
                    let take = (n as usize - body.len()).min(buf.len());
                    body.extend(buf.drain(..take));
                    body.len() == n as usize
                }
                wire::Body::Chunked => match dechunk.feed(&buf, &mut body, true) {
                    Ok(n) => {
                        buf.drain(..n);
                        dechunk.is_done()
                    }
                    Err(e) => {
                        violations.push(format!("{}: bad chunked body: {e}", req.id));
                        break 'conn;
                    }
                },
                wire::Body::Close => {
                    body.append(&mut buf);
                    false
                }
            };
            if done {
                break true;
            }
            ended_by = fill(
                &mut s,
                &mut buf,
                plan.slow_reader,
                &mut rng,
                &shared,
                ANSWER_WAIT,
            );
            match ended_by {
                Fill::Data => {}
                // A body delimited by the close is complete when all of it came,
                // however the connection then ended (an early answer may be
                // followed by a reset). One that came short must have ended in a
                // reset, which the reader sees itself: the writer stops after a
                // request whose answer is planned to end so (see `writer`).
                Fill::End | Fill::Reset if body_kind == wire::Body::Close => {
                    let whole = body.len() == req.expected_body().len();
                    if !whole && ended_by == Fill::End {
                        violations.push(format!(
                            "{}: a body delimited by the close ended cleanly after {} of {} bytes",
                            req.id,
                            body.len(),
                            req.expected_body().len()
                        ));
                    }
                    break whole;
                }
                Fill::End => break false,
                Fill::Reset | Fill::Quiet => break false,
            }
        };
        shared.started.lock().unwrap().pop_front();
        shared.answered.fetch_add(1, Ordering::SeqCst);
        let closing = head.connection_has("close") || body_kind == wire::Body::Close;
        match head.get("x-fuzz-id") {
            Some(id) if id == req.id => {
                if !complete {
                    // Cut short: only a backend that reset mid-body explains it.
                    if req.plan.fault != Some(Fault::ResetMid) && excused_from.is_none_or(|e| i < e)
                    {
                        violations.push(format!(
                            "{}: answer cut short after {} bytes ({ended_by:?}): {} {:?} ({:?}), after {:?}; connection {:?} depth {}",
                            req.id,
                            body.len(),
                            req.method,
                            req.plan,
                            body_kind,
                            head.raw,
                            plan.fault,
                            plan.depth
                        ));
                    }
                    outcomes.push((req.id.clone(), Outcome::Unanswered));
                    excuse(i, &mut excused_from);
                    break;
                }
                let expected = req.expected_body();
                if body != expected {
                    let at = body
                        .iter()
                        .zip(&expected)
                        .position(|(a, b)| a != b)
                        .unwrap_or(body.len().min(expected.len()));
                    violations.push(format!(
                        "{}: wrong body ({} bytes, {} expected; differs at {at}: {:?}) for {} {:?}, after {:?}",
                        req.id,
                        body.len(),
                        expected.len(),
                        String::from_utf8_lossy(&body[at..body.len().min(at + 60)]),
                        req.method,
                        req.plan,
                        head.raw
                    ));
                }
                if head.status != req.plan.status {
                    violations.push(format!(
                        "{}: status {} for a planned {}",
                        req.id, head.status, req.plan.status
                    ));
                }
                let digest_seen = head.get("x-fuzz-body").unwrap_or("");
                if digest_seen != "early" && digest_seen != format!("{:016x}", digest(&req.body)) {
                    violations.push(format!("{}: the backend received another body", req.id));
                }
                if interim != req.plan.interim && req.plan.fault.is_none() {
                    violations.push(format!(
                        "{}: {} interim responses for {} sent",
                        req.id, interim, req.plan.interim
                    ));
                }
                if matches!(req.plan.fault, Some(Fault::Reset | Fault::Bad)) {
                    violations.push(format!(
                        "{}: answered although its backend was to fail",
                        req.id
                    ));
                }
                outcomes.push((req.id.clone(), Outcome::Answered));
            }
            Some(other) => {
                violations.push(format!(
                    "{}: got the answer to {other} (status {}, {} body bytes)",
                    req.id,
                    head.status,
                    body.len()
                ));
                break;
            }
            None => {
                // corelb's own answer: it must close the connection after it.
                if !head.connection_has("close") {
                    violations.push(format!(
                        "{}: local {} without Connection: close",
                        req.id, head.status
                    ));
                }
                outcomes.push((req.id.clone(), Outcome::Local(head.status)));
                excuse(i + 1, &mut excused_from);
            }
        }
        if closing
            || outcomes
                .last()
                .is_some_and(|(_, o)| matches!(o, Outcome::Local(_)))
        {
            excuse(i + 1, &mut excused_from);
            // Nothing may follow, and the connection must end.
            let after = if buf.is_empty() {
                fill(&mut s, &mut buf, false, &mut rng, &shared, CLOSE_WAIT)
            } else {
                Fill::Data
            };
            match after {
                Fill::Data => violations.push(format!(
                    "{}: bytes after a response that said close: {:?}",
                    req.id,
                    String::from_utf8_lossy(&buf[..buf.len().min(200)])
                )),
                Fill::Quiet if !shared.ended.load(Ordering::SeqCst) => violations.push(format!(
                    "{}: the connection stayed open after Connection: close",
                    req.id
                )),
                _ => {}
            }
            break;
        }
    }
    shared.ended.store(true, Ordering::SeqCst);
    let _ = writer_thread.join();
    // Whatever was started and is not answered: excused, or a violation.
    let started: Vec<usize> = shared.started.lock().unwrap().iter().copied().collect();
    for i in started {
        let req = &plan.requests[i];
        if outcomes.iter().any(|(id, _)| id == &req.id) {
            continue;
        }
        outcomes.push((req.id.clone(), Outcome::Unanswered));
        // A backend that failed this request ends the connection for those
        // behind it too (the proxy answers 502 and closes, or resets).
        if req.plan.fault.is_some() {
            excuse(i, &mut excused_from);
        }
        if excused_from.is_none_or(|e| i < e) {
            violations.push(format!(
                "{}: sent and never answered, with nothing to explain it",
                req.id
            ));
        }
    }
    if !violations.is_empty() && std::env::var_os("CORELB_FUZZ_DUMP").is_some() {
        eprintln!(
            "connection plan: depth {} fault {:?} dribble {} slow reader {}",
            plan.depth, plan.fault, plan.dribble, plan.slow_reader
        );
        for r in &plan.requests {
            eprintln!(
                "  {} {} body {} close {} {:?}",
                r.id,
                r.method,
                r.body.len(),
                r.close,
                r.plan
            );
        }
        eprintln!("  outcomes {outcomes:?}");
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    ConnReport {
        plan,
        sent,
        outcomes,
        violations,
    }
}

// ---------------------------------------------------------------------------
// One run: a proxy, two backends, clients; then the oracle's verdict

struct Run {
    /// Requests planned, and those a client started to send.
    requests: usize,
    started: usize,
    answered: usize,
    local: usize,
}

fn run(seed: u64, clients: usize, conns_per_client: usize) -> Result<Run, Vec<String>> {
    let log: Log = Arc::default();
    let backends = [
        Backend::start(Arc::clone(&log), seed ^ 1),
        Backend::start(Arc::clone(&log), seed ^ 2),
    ];
    let mut cfg = ProxyConfig::new(
        vec![loopback()],
        backends.iter().map(|b| backend_of(b.addr)).collect(),
    );
    cfg.workers = if seed.is_multiple_of(3) { 2 } else { 1 };
    // Large bodies copied through the buffer, or (every other seed) spliced.
    cfg.tune.splice = seed.is_multiple_of(2);
    cfg.retries = 2;
    // Health is not under test: a backend fault must not take a backend out.
    cfg.passive.max_fails = 0;
    cfg.timeouts.header = Duration::from_secs(2);
    cfg.timeouts.body = Duration::from_millis(500);
    cfg.timeouts.response = Duration::from_secs(5);
    cfg.timeouts.idle = Duration::from_secs(5);
    cfg.timeouts.linger = Duration::from_secs(1);
    let proxy = Proxy::start(cfg).expect("proxy starts");
    let addr = proxy.local_addrs()[0];
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = Rng(seed.wrapping_mul(1000 + t as u64 + 1));
                (0..conns_per_client)
                    .map(|c| {
                        let plan = ConnPlan::random(&mut rng, &format!("{seed}.{t}.{c}"));
                        client_conn(addr, plan, rng.next())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut reports = Vec::new();
    for t in threads {
        match t.join() {
            Ok(r) => reports.extend(r),
            Err(_) => return Err(vec!["a client thread panicked".into()]),
        }
    }
    let mut violations: Vec<String> = reports.iter().flat_map(|r| r.violations.clone()).collect();
    // The proxy must have closed every session (none leaked); its worker threads
    // must be alive (a broken invariant panics one).
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.counts().iter().any(|c| c.open > 0) {
        if Instant::now() > deadline {
            violations.push(format!(
                "sessions left open after every client closed: {:?}",
                proxy.counts()
            ));
            break;
        }
        // Back-off between two looks.
        std::thread::sleep(Duration::from_millis(10));
    }
    if PANICS.load(Ordering::SeqCst) > 0 {
        violations
            .push("a thread panicked (a proxy worker breaking an invariant?): see above".into());
    }
    drop(proxy);
    drop(backends);
    let log = log.lock().unwrap();
    violations.extend(log.violations.iter().cloned());
    let all: HashMap<&str, &Request> = reports
        .iter()
        .flat_map(|r| r.plan.requests.iter())
        .map(|q| (q.id.as_str(), q))
        .collect();
    let sent: HashMap<&str, u64> = reports
        .iter()
        .flat_map(|r| r.sent.iter())
        .map(|(id, d)| (id.as_str(), *d))
        .collect();
    for (id, &(_, body)) in &log.received {
        if !all.contains_key(id.as_str()) {
            violations.push(format!(
                "a backend received a request no client made: {id:?}"
            ));
            continue;
        };
        match sent.get(id.as_str()) {
            None => violations.push(format!(
                "{id}: reached a backend whole, but its client never sent all of it"
            )),
            Some(&d) if d != body => {
                violations.push(format!("{id}: reached a backend with another body"))
            }
            _ => {}
        }
    }
    // Nothing that is not idempotent may reach a backend twice, whole or not.
    for (id, &times) in &log.heads {
        if let Some(req) = all.get(id.as_str())
            && times > 1
            && !req.idempotent
        {
            violations.push(format!(
                "{id}: a {} reached the backends {times} times",
                req.method
            ));
        }
    }
    // Every local error must be explained.
    let mut stats = Run {
        requests: all.len(),
        started: reports.iter().map(|r| r.outcomes.len()).sum(),
        answered: 0,
        local: 0,
    };
    for r in &reports {
        for (id, outcome) in &r.outcomes {
            let req = all[id.as_str()];
            match outcome {
                Outcome::Answered => stats.answered += 1,
                Outcome::Unanswered => {}
                Outcome::Local(status) => {
                    stats.local += 1;
                    let client_fault = matches!(r.plan.fault,
                        ClientFault::StallBody(i) | ClientFault::ResetMidRequest(i) | ClientFault::PartialHeadClose(i)
                            if r.plan.requests[i].id == *id);
                    let explained = match status {
                        408 => client_fault,
                        // A failing backend; more interim responses than relayed; or
                        // a stale connection under a request that could not be
                        // replayed: not idempotent, or its body perhaps no longer
                        // all at hand (over 16 KiB, or requests pipelined behind it
                        // filling the 32 KiB buffer).
                        502 => {
                            req.plan.fault.is_some()
                                || req.plan.interim > 64
                                || (log.killed.contains(id)
                                    && (!req.idempotent
                                        || req.bytes.len() - req.body_at > 16 * 1024
                                        || r.plan.depth > 1))
                        }
                        _ => false,
                    };
                    if !explained {
                        violations.push(format!(
                            "{id}: local {status} with nothing to explain it (plan {:?})",
                            req.plan
                        ));
                    }
                }
            }
        }
    }
    if violations.is_empty() {
        Ok(stats)
    } else {
        Err(violations)
    }
}

/// Panics in any thread of this test (a worker that breaks an invariant panics).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

fn check(seed: u64, clients: usize, conns: usize) -> Run {
    count_panics();
    let started = Instant::now();
    match run(seed, clients, conns) {
        Ok(stats) => {
            eprintln!(
                "session fuzz seed {seed}: {} requests planned, {} sent, {} answered by a backend, {} local answers, {:.1} s",
                stats.requests,
                stats.started,
                stats.answered,
                stats.local,
                started.elapsed().as_secs_f64()
            );
            stats
        }
        Err(violations) => {
            let shown: Vec<&String> = violations.iter().take(20).collect();
            panic!(
                "session fuzz seed {seed} failed ({} violations; replay with CORELB_FUZZ_SEED={seed}, and add it to tests/session_fuzz_seeds.txt):\n{}",
                violations.len(),
                shown
                    .iter()
                    .map(|v| format!("  {v}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }
    }
}

fn regression_seeds() -> Vec<u64> {
    let text = include_str!("session_fuzz_seeds.txt");
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().expect("a seed in session_fuzz_seeds.txt"))
        .collect()
}

#[test]
fn session_fuzz() {
    if let Ok(seed) = std::env::var("CORELB_FUZZ_SEED") {
        check(seed.parse().expect("CORELB_FUZZ_SEED is a number"), 8, 12);
        return;
    }
    if let Ok(seconds) = std::env::var("CORELB_FUZZ_SECONDS") {
        // The long mode: new seeds until the time is up.
        let seconds: u64 = seconds.parse().expect("CORELB_FUZZ_SECONDS is a number");
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs());
        let (mut runs, mut requests) = (0u64, 0usize);
        while Instant::now() < end {
            requests += check(seed, 8, 12).requests;
            runs += 1;
            seed += 1;
        }
        eprintln!("session fuzz: {runs} runs, {requests} requests, no violation");
        return;
    }
    // The bounded run: every seed that ever failed, and a few fixed ones (a few
    // seconds in all in a debug build).
    let mut seeds = regression_seeds();
    seeds.extend((1..=6).filter(|s| !seeds.contains(s)).collect::<Vec<_>>());
    for seed in seeds {
        check(seed, 8, 12);
    }
}
