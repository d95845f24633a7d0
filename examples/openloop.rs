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
//! the stall shows up in every target's tail (README, "Latest run").
//!
//! Due times are kept to the nanosecond with a timerfd (tokio's and epoll's
//! timers round to the millisecond, which bunches requests). How late the
//! generator itself was in sending a request that found its connection free
//! is reported as `send_lag_*`: a figure near the latencies means the
//! generator, not the target, was measured.
//!
//! One thread, one `mio` loop, keep-alive connections, `GET` only, answers
//! framed by `Content-Length` (the bench origins'); any other framing, status
//! or a closed connection counts as an error. Prints one JSON object.
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
    /// requests per second, over all connections
    #[argh(option)]
    rate: f64,
    /// keep-alive connections (default 50)
    #[argh(option, default = "50")]
    connections: usize,
    /// seconds during which requests fall due (default 10)
    #[argh(option, default = "10.0")]
    seconds: f64,
    /// seconds to wait after the last due time for answers still owed (default 5)
    #[argh(option, default = "5.0")]
    grace: f64,
}

const TIMER: Token = Token(usize::MAX);
/// Longest latency recorded: a minute, in nanoseconds.
const MAX_NS: u64 = 60_000_000_000;

struct Conn {
    stream: Option<mio::net::TcpStream>,
    /// Due times of requests for this connection not yet answered; the first
    /// is on the wire when `sent` is set.
    due: VecDeque<Instant>,
    sent: bool,
    out: usize,
    input: Vec<u8>,
}

struct Run {
    request: Vec<u8>,
    addr: SocketAddr,
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    if !(args.rate > 0.0 && args.rate.is_finite())
        || args.connections == 0
        || !(args.seconds > 0.0 && args.seconds.is_finite())
        || !(args.grace >= 0.0 && args.grace.is_finite())
        || !args.addr.ip().is_loopback()
    {
        eprintln!(
            "openloop: --rate, --connections and --seconds must be above 0, --grace at least 0, and --addr on loopback"
        );
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openloop: {e}");
            ExitCode::from(2)
        }
    }
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
        first_error: None,
    };
    let mut conns = Vec::with_capacity(args.connections);
    for k in 0..args.connections {
        let mut stream = connect(args.addr)?;
        poll.registry()
            .register(&mut stream, Token(k), Interest::READABLE)?;
        conns.push(Conn {
            stream: Some(stream),
            due: VecDeque::new(),
            sent: false,
            out: 0,
            input: Vec::with_capacity(64 * 1024),
        });
    }

    let ns_per_request = 1e9 / args.rate;
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs_f64(args.seconds);
    let give_up = end + Duration::from_secs_f64(args.grace);
    let due_at = |n: u64| start + Duration::from_nanos((n as f64 * ns_per_request) as u64);
    let mut next: u64 = 0;
    let mut owed: u64 = 0;
    let mut events = Events::with_capacity(1024);
    loop {
        let now = Instant::now();
        // Every request due by now goes to its connection.
        loop {
            let due = due_at(next);
            if due > now || due >= end {
                break;
            }
            let k = (next % conns.len() as u64) as usize;
            conns[k].due.push_back(due);
            owed += 1;
            if !conns[k].sent {
                // The connection is free: any delay in sending is the generator's.
                let lag = now.saturating_duration_since(due).as_nanos().max(1);
                run.send_lag.saturating_record(lag as u64);
                send(&mut conns[k], k, &mut run, &poll);
            }
            next += 1;
        }
        let scheduling = due_at(next) < end;
        if !scheduling && owed == 0 {
            break;
        }
        if now >= give_up {
            break;
        }
        arm(&timer, if scheduling { due_at(next) } else { give_up }, now)?;
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
            if event.is_writable() && conns[k].sent {
                flush(&mut conns[k], k, &mut run, &poll);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                owed -= receive(&mut conns[k], k, &mut run, &poll);
            }
        }
    }
    let unanswered = owed;
    let seconds = args.seconds;
    let pct = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
    println!(
        "{{\"rate\":{},\"seconds\":{},\"connections\":{},\"ok\":{},\"errors\":{},\"unanswered\":{},\"rps\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p99_9_ms\":{:.3},\"p99_99_ms\":{:.3},\"max_ms\":{:.3},\"send_lag_p99_ms\":{:.3},\"send_lag_max_ms\":{:.3},\"first_error\":{}}}",
        args.rate,
        seconds,
        args.connections,
        run.ok,
        run.errors,
        unanswered,
        run.ok as f64 / seconds,
        pct(&run.latency, 0.5),
        pct(&run.latency, 0.9),
        pct(&run.latency, 0.99),
        pct(&run.latency, 0.999),
        pct(&run.latency, 0.9999),
        run.latency.max() as f64 / 1e6,
        pct(&run.send_lag, 0.99),
        run.send_lag.max() as f64 / 1e6,
        match &run.first_error {
            Some(e) => format!("{e:?}"),
            None => "null".to_string(),
        }
    );
    Ok(())
}

fn connect(addr: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(mio::net::TcpStream::from_std(stream))
}

/// Put the connection's first owed request on the wire.
fn send(c: &mut Conn, k: usize, run: &mut Run, poll: &Poll) {
    if c.due.is_empty() {
        return;
    }
    c.sent = true;
    c.out = 0;
    flush(c, k, run, poll);
}

/// Write what is left of the request on the wire.
fn flush(c: &mut Conn, k: usize, run: &mut Run, poll: &Poll) {
    let Some(stream) = c.stream.as_mut() else {
        return;
    };
    while c.out < run.request.len() {
        match stream.write(&run.request[c.out..]) {
            Ok(n) => c.out += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = poll.registry().reregister(
                    stream,
                    Token(k),
                    Interest::READABLE | Interest::WRITABLE,
                );
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // The read side sees the failure too and counts it.
                note(run, format!("write: {e}"));
                return;
            }
        }
    }
    let _ = poll
        .registry()
        .reregister(stream, Token(k), Interest::READABLE);
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
                settled += fail(c, k, run, poll, "the target closed the connection".into());
                return settled;
            }
            Ok(n) => c.input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                settled += fail(c, k, run, poll, format!("read: {e}"));
                return settled;
            }
        }
        match answer(&c.input) {
            Ok(None) => {}
            Ok(Some((len, status))) if len == c.input.len() && c.sent => {
                let now = Instant::now();
                let due = c.due.pop_front().expect("a sent request is owed");
                if status == 200 {
                    run.ok += 1;
                    run.latency
                        .saturating_record(now.duration_since(due).as_nanos().max(1) as u64);
                } else {
                    run.errors += 1;
                    note(run, format!("status {status}"));
                }
                settled += 1;
                c.input.clear();
                c.sent = false;
                if !c.due.is_empty() {
                    send(c, k, run, poll);
                }
            }
            Ok(Some(_)) => {
                settled += fail(c, k, run, poll, "bytes beyond the answer".into());
                return settled;
            }
            Err(e) => {
                settled += fail(c, k, run, poll, e);
                return settled;
            }
        }
    }
    settled
}

/// The length and status of the answer at the start of `input` once all of it
/// is in, `None` while more is needed.
fn answer(input: &[u8]) -> Result<Option<(usize, u16)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("answer head: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let mut length = None;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("answer framed by Transfer-Encoding, not Content-Length".into());
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        }
    }
    let Some(length) = length else {
        return Err("answer without Content-Length".into());
    };
    Ok((input.len() >= head + length).then_some((head + length, status)))
}

/// The connection failed: the request on the wire is an error, the others are
/// sent again on a new connection (or are errors too if none can be made).
fn fail(c: &mut Conn, k: usize, run: &mut Run, poll: &Poll, why: String) -> u64 {
    let mut settled = 0;
    if c.sent {
        note(run, why);
        c.due.pop_front();
        run.errors += 1;
        settled += 1;
    }
    c.sent = false;
    c.input.clear();
    if let Some(mut old) = c.stream.take() {
        let _ = poll.registry().deregister(&mut old);
    }
    let again = connect(run.addr).and_then(|mut stream| {
        poll.registry()
            .register(&mut stream, Token(k), Interest::READABLE)?;
        Ok(stream)
    });
    match again {
        Ok(stream) => {
            c.stream = Some(stream);
            if !c.due.is_empty() {
                send(c, k, run, poll);
            }
        }
        Err(_) => {
            settled += c.due.len() as u64;
            run.errors += c.due.len() as u64;
            c.due.clear();
            note(run, "could not connect again".into());
        }
    }
    settled
}

fn note(run: &mut Run, why: String) {
    if run.first_error.is_none() {
        run.first_error = Some(why);
    }
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

/// Make the timer fire at `when` (at once if that has passed).
fn arm(timer: &OwnedFd, when: Instant, now: Instant) -> io::Result<()> {
    let wait = when
        .saturating_duration_since(now)
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
