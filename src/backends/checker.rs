//! Active health checks: one thread that asks every backend for `--health-path`
//! each interval and feeds the verdicts to `Health` (rise / fall hysteresis).
//!
//! A round checks the backends concurrently, on a mio loop of its own (no async
//! runtime): up to `MAX_PARALLEL` checks are in progress at once, each with its
//! own deadline, and each verdict is recorded as soon as it is known. So a round
//! over many dead or silent backends takes about one `--health-timeout`, not one
//! per backend, and a live backend's pass is not held up by the dead ones.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::health::{AdminState, Health};
use crate::config::CheckConfig;
use crate::io::buffer::Buf;
use crate::io::stream::{Stream, Tls};
use crate::io::{ReadOutcome, Ready};
use crate::log::Level;

/// Checks in progress at once (each holds a socket). A round over more failing
/// backends than this takes one timeout per `MAX_PARALLEL` of them.
const MAX_PARALLEL: usize = 512;

/// How often a round in progress looks whether it was told to stop.
const STOP_POLL: Duration = Duration::from_millis(50);

/// The health-check thread; dropping it stops the thread.
pub struct Checker {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checker {
    /// Start checking the backends of `health` off the workers' path, on one
    /// thread. A backend starts from its last verdict.
    /// `https://` backends are checked over TLS with `tls` (their certificate
    /// verified as for requests).
    pub fn spawn(
        health: Arc<Health>,
        config: CheckConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> std::io::Result<Checker> {
        let poll = Poll::new()?;
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("corelb-health".into())
            .spawn(move || run_checks(&health, &config, tls, poll, &stopped))?;
        Ok(Checker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        // Closing the channel wakes the thread from its wait.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_checks(
    health: &Health,
    config: &CheckConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    mut poll: Poll,
    stopped: &Receiver<()>,
) {
    let mut round = Round {
        poll: &mut poll,
        events: Events::with_capacity(256),
        probes: Vec::new(),
        free: Vec::new(),
        tls,
    };
    loop {
        if round.run(health, config, stopped).is_err() {
            return;
        }
        match stopped.recv_timeout(config.interval) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// Told to stop (a reload or shutdown) in the middle of a round.
struct Stopped;

/// One check in progress.
struct Probe {
    backend: usize,
    /// Plain, or TLS for an `https://` backend.
    io: Stream,
    ready: Ready,
    /// Where the answer's bytes are read (its status line is copied to `line`).
    buf: Buf,
    deadline: Instant,
    stage: Stage,
    request: Vec<u8>,
    sent: usize,
    line: Vec<u8>,
    /// To a backend that gets PROXY headers, the one a health check sends
    /// first, once connected: the specification's own (v1 `UNKNOWN`, v2 `LOCAL`).
    preface: &'static [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Connect,
    Send,
    Read,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Send => "send",
            Stage::Read => "read",
        }
    }
}

/// The state of one round, kept between rounds so its buffers are reused.
struct Round<'p> {
    poll: &'p mut Poll,
    events: Events,
    /// Checks in progress, by slot (the slot is the mio token).
    probes: Vec<Option<Probe>>,
    free: Vec<usize>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Round<'_> {
    /// Check every backend once; Err if told to stop meanwhile.
    fn run(
        &mut self,
        health: &Health,
        config: &CheckConfig,
        stopped: &Receiver<()>,
    ) -> Result<(), Stopped> {
        let mut next = 0;
        let mut open = 0;
        let mut unchecked = 0;
        loop {
            if !matches!(stopped.try_recv(), Err(TryRecvError::Empty)) {
                self.close_all();
                return Err(Stopped);
            }
            while open < MAX_PARALLEL && next < health.len() {
                let b = next;
                next += 1;
                if health.member(b).admin_state() == AdminState::Disabled {
                    // Out for maintenance: not checked (see `AdminState`).
                    continue;
                }
                match self.start(health, config, b) {
                    Ok(()) => open += 1,
                    Err(Some(why)) => health.record_check(b, false, config.rise, config.fall, &why),
                    // This process's trouble, not the backend's: no verdict.
                    Err(None) => unchecked += 1,
                }
            }
            if open == 0 {
                if unchecked > 0 {
                    crate::log!(
                        Level::Warn,
                        "corelb: health checks: out of file descriptors; {unchecked} backends were not checked this round"
                    );
                }
                return Ok(());
            }
            let now = Instant::now();
            let soonest = self.probes.iter().flatten().map(|p| p.deadline).min();
            let wait = soonest
                .map_or(STOP_POLL, |d| d.saturating_duration_since(now))
                .min(STOP_POLL);
            match self.poll.poll(&mut self.events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    crate::log!(Level::Error, "corelb: health checks stop: poll: {e}");
                    self.close_all();
                    return Err(Stopped);
                }
            }
            let ready: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for slot in ready {
                if let Some(p) = self.probes[slot].as_mut() {
                    // Whatever the event, both ways are worth a try: an
                    // operation that cannot go on says so and clears its flag.
                    p.ready.readable = true;
                    p.ready.writable = true;
                }
                if let Some(verdict) = self.probes[slot].as_mut().and_then(advance) {
                    open -= 1;
                    self.finish(slot, health, config, verdict);
                }
            }
            let now = Instant::now();
            for slot in 0..self.probes.len() {
                if let Some(p) = &self.probes[slot]
                    && p.deadline <= now
                {
                    let why = format!("{}: no answer within {:?}", p.stage.name(), config.timeout);
                    open -= 1;
                    self.finish(slot, health, config, Err(why));
                }
            }
        }
    }

    /// Begin the check of backend `b`: a non-blocking connect. Err(Some(why)):
    /// it failed at once; Err(None): this process is out of descriptors or
    /// memory, which says nothing of the backend.
    fn start(
        &mut self,
        health: &Health,
        config: &CheckConfig,
        b: usize,
    ) -> Result<(), Option<String>> {
        let m = health.member(b);
        let sock = TcpStream::connect(m.addr).map_err(|e| match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => None,
            _ => Some(format!("health check: connect: {e}")),
        })?;
        let mut io = match (&m.tls, &self.tls) {
            (Some(name), Some(config)) => {
                let conn = rustls::ClientConnection::new(Arc::clone(config), name.clone())
                    .map_err(|e| Some(format!("health check: TLS: {e}")))?;
                Stream::Tls(Tls::new(sock, rustls::Connection::Client(conn)))
            }
            _ => Stream::Plain(sock),
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.probes.push(None);
            self.probes.len() - 1
        });
        if let Err(e) = self.poll.registry().register(
            io.tcp_mut(),
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free.push(slot);
            crate::log!(
                Level::Warn,
                "corelb: health checks: cannot watch a socket: {e}"
            );
            return Err(None);
        }
        self.probes[slot] = Some(Probe {
            backend: b,
            io,
            ready: Ready::default(),
            buf: Buf::with_capacity(1024),
            deadline: Instant::now() + config.timeout,
            stage: Stage::Connect,
            request: request(&m.authority, &config.path),
            sent: 0,
            line: Vec::with_capacity(64),
            preface: crate::proxy_protocol::health_check_header(m.send_proxy),
        });
        Ok(())
    }

    /// Record the verdict of the check in `slot` and free the slot.
    fn finish(
        &mut self,
        slot: usize,
        health: &Health,
        config: &CheckConfig,
        verdict: Result<u16, String>,
    ) {
        let Some(mut p) = self.probes[slot].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(p.io.tcp_mut());
        self.free.push(slot);
        let why = match &verdict {
            Ok(status) => format!("health check: {status}"),
            Err(e) => format!("health check: {e}"),
        };
        health.record_check(p.backend, verdict.is_ok(), config.rise, config.fall, &why);
    }

    fn close_all(&mut self) {
        for slot in 0..self.probes.len() {
            if let Some(mut p) = self.probes[slot].take() {
                let _ = self.poll.registry().deregister(p.io.tcp_mut());
                self.free.push(slot);
            }
        }
    }
}

/// The check's request: `GET path`, closing the connection after the answer.
fn request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: corelb-health-check\r\n\r\n"
    )
    .into_bytes()
}

/// Move a check on as far as its socket allows: None while it waits, else the
/// verdict (Ok with a 2xx or 3xx status; Err with why not).
fn advance(p: &mut Probe) -> Option<Result<u16, String>> {
    let failed = |stage: Stage, e: io::Error| Some(Err(format!("{}: {e}", stage.name())));
    if p.stage == Stage::Connect {
        match p.io.tcp().take_error() {
            Ok(Some(e)) | Err(e) => return failed(Stage::Connect, e),
            Ok(None) => {}
        }
        match p.io.tcp().peer_addr() {
            Ok(_) => {
                // Alone on a new connection: the socket takes it whole.
                if !p.preface.is_empty() {
                    match io::Write::write(&mut p.io.tcp(), p.preface) {
                        Ok(n) if n == p.preface.len() => {}
                        Ok(_) => return Some(Err("connect: the PROXY header did not fit".into())),
                        Err(e) => return failed(Stage::Connect, e),
                    }
                }
                p.stage = Stage::Send;
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
            Err(e) => return failed(Stage::Connect, e),
        }
    }
    while p.stage == Stage::Send {
        match p.io.write_two(&p.request[p.sent..], &[], &mut p.ready) {
            Ok(n) => {
                p.sent += n;
                if p.sent == p.request.len() {
                    p.stage = Stage::Read;
                } else if n == 0 {
                    return None;
                }
            }
            Err(e) => return failed(Stage::Send, e),
        }
    }
    // Over TLS, the records (the handshake, then the request) go out as the
    // socket takes them; reading drives the handshake on.
    if let Err(e) = p.io.flush(&mut p.ready) {
        return failed(Stage::Send, e);
    }
    loop {
        if p.line.contains(&b'\n') {
            return Some(status_of(&p.line));
        }
        if p.line.len() > 1024 {
            return Some(Err("status line too long".into()));
        }
        match p.io.read_into(&mut p.buf, &mut p.ready) {
            Ok(ReadOutcome::Eof) => return Some(Err("closed before answering".into())),
            Ok(ReadOutcome::Data) => {
                p.line.extend_from_slice(p.buf.filled());
                p.buf.clear();
            }
            Ok(ReadOutcome::Blocked) => return None,
            Err(e) => return failed(Stage::Read, e),
        }
    }
}

/// The verdict on a status line "HTTP/1.x NNN ...": Ok for 2xx and 3xx.
fn status_of(line: &[u8]) -> Result<u16, String> {
    let status = line
        .get(9..12)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<u16>().ok())
        .filter(|_| {
            // "HTTP/1.0" or "HTTP/1.1", a space, three digits, then a space or
            // the line's end.
            (line.starts_with(b"HTTP/1.0 ") || line.starts_with(b"HTTP/1.1 "))
                && matches!(line.get(12), Some(b' ' | b'\r' | b'\n'))
        })
        .ok_or_else(|| "not an HTTP/1.x response".to_string())?;
    if (200..400).contains(&status) {
        Ok(status)
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n"), Ok(204));
        assert_eq!(status_of(b"HTTP/1.0 302 Found\r\n"), Ok(302));
        assert_eq!(
            status_of(b"HTTP/1.1 503 Busy\r\n"),
            Err("status 503".into())
        );
        assert!(status_of(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(status_of(b"HTTP/1.1 2x0 Odd\r\n").is_err());
        assert!(status_of(b"HTTP/1.1 2000 Odd\r\n").is_err());
        assert!(status_of(b"HTTP/1.7 200 Odd\r\n").is_err());
        assert_eq!(status_of(b"HTTP/1.1 200\r\n"), Ok(200));
    }
}
