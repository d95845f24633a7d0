//! An open-loop HTTP/1.1 load generator for `scripts/bench.sh`'s fixed-rate runs.
//!
//! Request `n` falls due at `start + n / rate` and goes to connection `n % C`,
//! whatever the answers before it did; its latency runs from that due time to
//! the last byte of its answer. A connection still waiting for an answer when
//! its next request falls due sends that request as soon as the answer is in,
//! and the wait counts in its latency (the correction for coordinated omission,
//! as in wrk2). Latencies go into an HdrHistogram: fixed memory, no allocation
//! while the run goes on. oha, which the script used before, keeps every
//! result in one growing vector; each doubling of it stalls the generator and
//! the stall shows up in every target's tail (README, "Earlier full run").
//!
//! The timer is a timerfd armed to the nanosecond (tokio's and epoll's timers
//! round to the millisecond, which bunches requests). How late the generator
//! itself was in sending a request that found its connection free is reported
//! as `send_lag_*`: a figure near the latencies means the generator, not the
//! target, was measured.
//!
//! One thread, one `mio` loop, keep-alive connections (a connection lost or
//! closed by `Connection: close` is opened again without blocking the loop),
//! `GET` only, answers framed by `Content-Length` (the bench origins'). A
//! status other than 200, other framing, bytes nobody asked for and a
//! connection lost with a request on it count as errors; requests still owed
//! when the grace period ends, as unanswered. `rps` is the answers divided by
//! the time from the first due time to the last answer, so a target that falls
//! behind shows below the offered rate. Prints one JSON object; a bad argument
//! is one line on stderr and exit code 2.
//!
//! `cargo run --release --example openloop -- --addr 127.0.0.1:8080 --path /size/16 --rate 10000 --connections 50 --seconds 10`

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

#[derive(argh::FromArgs)]
/// Send GET requests at a fixed rate and report latency percentiles as JSON.
struct Args {
    /// the target, an IP address and port on this machine
    #[argh(option)]
    addr: SocketAddr,
    /// the request target (default /)
    #[argh(option, default = "String::from(\"/\")")]
    path: String,
    /// requests per second, over all connections (at most 10,000,000)
    #[argh(option)]
    rate: f64,
    /// keep-alive connections (default 50, at most 100,000)
    #[argh(option, default = "50")]
    connections: usize,
    /// seconds during which requests fall due (default 10, at most 86,400)
    #[argh(option, default = "10.0")]
    seconds: f64,
    /// seconds to wait after the last due time for answers still owed (default 5,
    /// at most 3,600)
    #[argh(option, default = "5.0")]
    grace: f64,
}

const TIMER: Token = Token(usize::MAX);
/// Requests owed at most: a target this far behind ends the run (memory stays
/// bounded whatever the rate and duration).
const MAX_OWED: u64 = 1_000_000;
/// Longest latency recorded: a minute, in nanoseconds.
const MAX_NS: u64 = 60_000_000_000;

struct Conn {
    /// None after a connection could not be made; the next request due on it
    /// tries again.
    stream: Option<mio::net::TcpStream>,
    /// A connect is under way: nothing is sent until it completes.
    connecting: bool,
    /// Due times of requests for this connection not yet answered; the first
    /// is on the wire when `sent` is set.
    due: VecDeque<Instant>,
    sent: bool,
    /// Bytes of the request on the wire already written.
    out: usize,
    /// Registered for writable events (a write would have blocked).
    writing: bool,
    input: Vec<u8>,
}

struct Run {
    request: Vec<u8>,
    addr: SocketAddr,
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
    ok: u64,
    errors: u64,
    last_answer: Option<Instant>,
    first_error: Option<String>,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let args =
        match <Args as argh::FromArgs>::from_args(&["openloop"], strs.get(1..).unwrap_or(&[])) {
            Ok(args) => args,
            Err(early) => {
                if early.status.is_ok() {
                    print!("{}", early.output);
                    return ExitCode::SUCCESS;
                }
                // argh's message can span lines; one line, as everywhere here.
                let msg = early
                    .output
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                return usage(&msg);
            }
        };
    if !(args.rate > 0.0 && args.rate <= 1e7) {
        return usage("--rate must be above 0 and at most 10000000");
    }
    if !(1..=100_000).contains(&args.connections) {
        return usage("--connections must be from 1 to 100000");
    }
    if !(args.seconds > 0.0 && args.seconds <= 86_400.0) {
        return usage("--seconds must be above 0 and at most 86400");
    }
    if !(args.grace >= 0.0 && args.grace <= 3_600.0) {
        return usage("--grace must be from 0 to 3600");
    }
    if !args.addr.ip().is_loopback() {
        return usage("--addr must be a loopback address (127.0.0.0/8 or ::1)");
    }
    if !args.path.starts_with('/') || !args.path.bytes().all(|b| b.is_ascii_graphic()) {
        return usage("--path must start with / and hold only visible ASCII characters");
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openloop: {e}");
            ExitCode::from(2)
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("openloop: {msg} (see openloop --help)");
    ExitCode::from(2)
}

fn run(args: &Args) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let timer = timerfd()?;
    poll.registry()
        .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;
    let mut run = Run {
        request: format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: corelb-openloop\r\n\r\n",
            args.path, args.addr
        )
        .into_bytes(),
        addr: args.addr,
        latency: Histogram::new_with_bounds(1, MAX_NS, 3).map_err(io::Error::other)?,
        send_lag: Histogram::new_with_bounds(1, MAX_NS, 3).map_err(io::Error::other)?,
        ok: 0,
        errors: 0,
        last_answer: None,
        first_error: None,
    };
    // Every connection is open before the first request falls due.
    let mut conns = Vec::with_capacity(args.connections);
    for k in 0..args.connections {
        let stream = std::net::TcpStream::connect(args.addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        poll.registry()
            .register(&mut stream, Token(k), Interest::READABLE)?;
        conns.push(Conn {
            stream: Some(stream),
            connecting: false,
            due: VecDeque::new(),
            sent: false,
            out: 0,
            writing: false,
            input: Vec::with_capacity(64 * 1024),
        });
    }

    let ns_per_request = 1e9 / args.rate;
    let start = Instant::now() + Duration::from_millis(20);
    // Both bounded in main: a day and an hour at most.
    let end = start + Duration::from_secs_f64(args.seconds);
    let give_up = end + Duration::from_secs_f64(args.grace);
    let due_at = |n: u64| start + Duration::from_nanos((n as f64 * ns_per_request) as u64);
    let mut next: u64 = 0;
    let mut owed: u64 = 0;
    let mut cut_short = false;
    let mut events = Events::with_capacity(1024);
    loop {
        let now = Instant::now();
        // Every request due by now goes to its connection.
        loop {
            let due = due_at(next);
            if due > now || due >= end || cut_short {
                break;
            }
            if owed >= MAX_OWED {
                cut_short = true;
                note(
                    &mut run,
                    format!("{MAX_OWED} requests owed at once: the run stopped sending"),
                );
                break;
            }
            next += 1;
            let k = ((next - 1) % conns.len() as u64) as usize;
            let c = &mut conns[k];
            c.due.push_back(due);
            owed += 1;
            if c.stream.is_none() {
                owed -= reconnect(c, k, &mut run, &poll);
            } else if !c.sent && !c.connecting {
                // The connection is free: any delay in sending is the generator's.
                let lag = Instant::now().saturating_duration_since(due);
                run.send_lag.saturating_record(lag.as_nanos().max(1) as u64);
                owed -= send(c, k, &mut run, &poll);
            }
        }
        let scheduling = due_at(next) < end && !cut_short;
        if !scheduling && owed == 0 {
            break;
        }
        if Instant::now() >= give_up {
            break;
        }
        arm(&timer, if scheduling { due_at(next) } else { give_up })?;
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r?,
        }
        for event in events.iter() {
            if event.token() == TIMER {
                let mut ticks = [0u8; 8];
                // SAFETY: reads at most 8 bytes into `ticks`; the timerfd is
                // non-blocking and its count is not needed.
                let _ = unsafe { libc::read(timer.as_raw_fd(), ticks.as_mut_ptr().cast(), 8) };
                continue;
            }
            let k = event.token().0;
            let c = &mut conns[k];
            if c.connecting {
                owed -= connected(c, k, &mut run, &poll);
                if c.connecting || c.stream.is_none() {
                    continue;
                }
            }
            if event.is_writable() && c.sent {
                owed -= flush(c, k, &mut run, &poll);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                owed -= receive(c, k, &mut run, &poll);
            }
        }
    }
    let unanswered = owed;
    let pct = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
    let span = run
        .last_answer
        .map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
    println!(
        "{{\"rate\":{},\"seconds\":{},\"connections\":{},\"ok\":{},\"errors\":{},\"unanswered\":{},\"rps\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p99_9_ms\":{:.3},\"p99_99_ms\":{:.3},\"max_ms\":{:.3},\"send_lag_p50_ms\":{:.3},\"send_lag_p99_ms\":{:.3},\"send_lag_max_ms\":{:.3},\"cut_short\":{},\"first_error\":{}}}",
        args.rate,
        args.seconds,
        args.connections,
        run.ok,
        run.errors,
        unanswered,
        if span > 0.0 {
            run.ok as f64 / span
        } else {
            0.0
        },
        pct(&run.latency, 0.5),
        pct(&run.latency, 0.9),
        pct(&run.latency, 0.99),
        pct(&run.latency, 0.999),
        pct(&run.latency, 0.9999),
        run.latency.max() as f64 / 1e6,
        pct(&run.send_lag, 0.5),
        pct(&run.send_lag, 0.99),
        run.send_lag.max() as f64 / 1e6,
        cut_short,
        match &run.first_error {
            Some(e) => json_string(e),
            None => "null".to_string(),
        }
    );
    Ok(())
}

/// Put the connection's first owed request on the wire. Returns how many
/// requests were settled (failed) on the way.
fn send(c: &mut Conn, k: usize, run: &mut Run, poll: &Poll) -> u64 {
    if c.due.is_empty() || c.stream.is_none() || c.connecting {
        return 0;
    }
    c.sent = true;
    c.out = 0;
    flush(c, k, run, poll)
}

/// Write what is left of the request on the wire. Returns how many requests
/// were settled (failed).
fn flush(c: &mut Conn, k: usize, run: &mut Run, poll: &Poll) -> u64 {
    let Some(stream) = c.stream.as_mut() else {
        return 0;
    };
    while c.out < run.request.len() {
        match stream.write(&run.request[c.out..]) {
            Ok(0) => return fail(c, k, run, poll, "write: no progress".into()),
            Ok(n) => c.out += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !c.writing {
                    c.writing = true;
                    let _ = poll.registry().reregister(
                        stream,
                        Token(k),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                }
                return 0;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return fail(c, k, run, poll, format!("write: {e}")),
        }
    }
    if c.writing {
        c.writing = false;
        let _ = poll
            .registry()
            .reregister(stream, Token(k), Interest::READABLE);
    }
    0
}

/// Read what arrived; count each answer completed. Returns how many requests
/// were settled (answered or failed).
fn receive(c: &mut Conn, k: usize, run: &mut Run, poll: &Poll) -> u64 {
    let mut settled = 0;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let Some(stream) = c.stream.as_mut() else {
            return settled;
        };
        match stream.read(&mut chunk) {
            Ok(0) => {
                return settled + fail(c, k, run, poll, "the target closed the connection".into());
            }
            Ok(n) => c.input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return settled,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return settled + fail(c, k, run, poll, format!("read: {e}")),
        }
        if !c.sent {
            run.errors += 1;
            note(run, "bytes nobody asked for".into());
            return settled + fail(c, k, run, poll, "bytes nobody asked for".into());
        }
        match answer(&c.input) {
            Ok(None) => {}
            Ok(Some(done)) if done.len == c.input.len() => {
                let now = Instant::now();
                let due = c.due.pop_front().expect("a sent request is owed");
                if done.status == 200 {
                    run.ok += 1;
                    run.last_answer = Some(now);
                    run.latency
                        .saturating_record(now.duration_since(due).as_nanos().max(1) as u64);
                } else {
                    run.errors += 1;
                    note(run, format!("status {}", done.status));
                }
                settled += 1;
                c.input.clear();
                c.sent = false;
                if done.close {
                    // Not an error: the next request goes on a new connection.
                    drop_stream(c, poll);
                    return settled + reconnect(c, k, run, poll);
                }
                settled += send(c, k, run, poll);
                if c.connecting || c.stream.is_none() {
                    // Sending failed and a new connection is on its way.
                    return settled;
                }
            }
            Ok(Some(_)) => {
                return settled + fail(c, k, run, poll, "bytes beyond the answer".into());
            }
            Err(e) => return settled + fail(c, k, run, poll, e),
        }
    }
}

/// An answer all of whose bytes are in.
struct Done {
    len: usize,
    status: u16,
    /// It said `Connection: close`.
    close: bool,
}

/// The answer at the start of `input` once all of it is in, `None` while more
/// is needed.
fn answer(input: &[u8]) -> Result<Option<Done>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("answer head: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let mut length = None;
    let mut close = false;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("answer framed by Transfer-Encoding, not Content-Length".into());
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        }
        if h.name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let Some(len) = length.and_then(|l| head.checked_add(l)) else {
        return Err("answer without a usable Content-Length".into());
    };
    Ok((input.len() >= len).then_some(Done { len, status, close }))
}

/// The connection failed: the request on the wire is an error, the others are
/// sent on a new connection. Returns how many requests were settled.
fn fail(c: &mut Conn, k: usize, run: &mut Run, poll: &Poll, why: String) -> u64 {
    let mut settled = 0;
    if c.sent {
        note(run, why);
        c.due.pop_front();
        run.errors += 1;
        settled += 1;
    }
    c.sent = false;
    drop_stream(c, poll);
    settled + reconnect(c, k, run, poll)
}

fn drop_stream(c: &mut Conn, poll: &Poll) {
    if let Some(mut old) = c.stream.take() {
        let _ = poll.registry().deregister(&mut old);
    }
    c.connecting = false;
    c.writing = false;
    c.input.clear();
}

/// Start a connect that does not block the loop; the requests owed wait for it.
/// If it fails at once they are errors (settled, returned), and the next
/// request due on this connection tries again.
fn reconnect(c: &mut Conn, k: usize, run: &mut Run, poll: &Poll) -> u64 {
    let started = mio::net::TcpStream::connect(run.addr).and_then(|mut stream| {
        poll.registry().register(
            &mut stream,
            Token(k),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(stream)
    });
    match started {
        Ok(stream) => {
            c.stream = Some(stream);
            c.connecting = true;
            0
        }
        Err(e) => give_up_on(c, run, format!("connect: {e}")),
    }
}

/// A connect under way reported an event: go on once it is made. Returns how
/// many requests were settled (failed, if it was not made).
fn connected(c: &mut Conn, k: usize, run: &mut Run, poll: &Poll) -> u64 {
    let Some(stream) = c.stream.as_mut() else {
        return 0;
    };
    let outcome = match stream.take_error() {
        Ok(Some(e)) | Err(e) => Err(e),
        Ok(None) => match stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(false) => 0,
        Ok(true) => {
            let _ = stream.set_nodelay(true);
            let _ = poll
                .registry()
                .reregister(stream, Token(k), Interest::READABLE);
            c.connecting = false;
            c.writing = false;
            send(c, k, run, poll)
        }
        Err(e) => {
            drop_stream(c, poll);
            give_up_on(c, run, format!("connect: {e}"))
        }
    }
}

/// No connection could be made: every request owed on it is an error.
fn give_up_on(c: &mut Conn, run: &mut Run, why: String) -> u64 {
    let n = c.due.len() as u64;
    if n > 0 {
        note(run, why);
    }
    run.errors += n;
    c.due.clear();
    c.sent = false;
    n
}

fn note(run: &mut Run, why: String) {
    if run.first_error.is_none() {
        run.first_error = Some(why);
    }
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn timerfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor returned is owned from here on.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make the timer fire at `when` (at once if that has passed). The clock is
/// read here, just before arming, so the work done since the loop last read it
/// does not make the timer late.
fn arm(timer: &OwnedFd, when: Instant) -> io::Result<()> {
    let wait = when
        .saturating_duration_since(Instant::now())
        .max(Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
    let rc = unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
