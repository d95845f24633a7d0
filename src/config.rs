//! Validated configuration, and the parsing of addresses given on the command line.
//!
//! Everything here runs once at start; errors name the flag and the problem in one
//! line, because the CLI prints them as they are and exits with code 2.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Default for `--busy-poll`, in microseconds, and its upper bound.
pub const DEFAULT_BUSY_POLL_MICROS: u64 = 50;
pub const MAX_BUSY_POLL_MICROS: u64 = 10_000;

/// Default for `--max-header-bytes`.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Bounds for `--max-header-bytes`: below 1 KiB real browsers fail, above 1 MiB a
/// single connection could pin too much memory.
pub const MIN_HEADER_BYTES: usize = 1024;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Default `--retries`.
pub const DEFAULT_RETRIES: u32 = 2;
/// Most `--max-connections` accepted (per worker).
pub const MAX_CONNECTIONS: usize = 10_000_000;
/// Most `--retries` accepted: more only repeats the same failures.
pub const MAX_RETRIES: u32 = 16;
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// One backend of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Where to connect (resolved once at start).
    pub addr: SocketAddr,
    /// `host:port` as the operator wrote it, sent as Host with `--rewrite-host`.
    pub authority: String,
    /// Relative share for weighted-round-robin and hash (1 to 1000; default 1).
    pub weight: u32,
}

/// How long the proxy waits before giving up on a peer; each is a flag of `serve`.
/// The defaults follow common proxy practice (nginx, HAProxy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// An idle keep-alive client is closed silently.
    pub idle: Duration,
    /// A client must complete its request head this long after its first byte: 408.
    pub header: Duration,
    /// A new backend connection must be established: another backend, or 502.
    pub connect: Duration,
    /// The response head must begin within this long of the last progress: 504.
    pub response: Duration,
    /// A body (either way) or a tunnel may go this long without a byte: close.
    pub body: Duration,
    /// A closing client may keep sending this long before we close anyway.
    pub linger: Duration,
    /// Idle pooled backend connections are closed after this long.
    pub upstream_idle: Duration,
    /// On shutdown, exchanges in flight may finish for this long.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: Duration::from_secs(60),
            header: Duration::from_secs(10),
            connect: Duration::from_secs(3),
            response: Duration::from_secs(60),
            body: Duration::from_secs(60),
            linger: Duration::from_secs(5),
            upstream_idle: Duration::from_secs(30),
            shutdown: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// The shortest of them: timers are checked several times within it.
    pub fn shortest(&self) -> Duration {
        [
            self.idle,
            self.header,
            self.connect,
            self.response,
            self.body,
            self.linger,
            self.upstream_idle,
            self.shutdown,
        ]
        .into_iter()
        .min()
        .unwrap_or(Duration::from_secs(1))
    }
}

/// Everything a proxy needs to start.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Addresses to listen on; every worker binds each of them (SO_REUSEPORT).
    /// Port 0 is allowed here (tests): the first bind picks the port, the rest share it.
    pub listen: Vec<SocketAddr>,
    pub backends: Vec<Backend>,
    pub workers: usize,
    pub max_header_bytes: usize,
    pub rewrite_host: bool,
    /// Pin worker i to the i-th core this process may run on.
    pub pin: bool,
    /// After handling events, keep polling without sleeping for this long.
    pub busy_poll: Duration,
    pub timeouts: Timeouts,
    /// Times a failed request may move to another backend (connect failures, or
    /// idempotent requests with no response byte yet).
    pub retries: u32,
    /// Passive health: failures that take a backend out, and for how long.
    pub passive: crate::backends::Passive,
    /// Log backend state changes to stderr.
    pub log_health: bool,
    /// Active health checks, when a path is given.
    pub health_check: Option<crate::backends::CheckConfig>,
    /// Most client connections per worker (0: no limit); at the limit a worker
    /// stops accepting and new connections wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request body accepted (0: no limit); larger ones get 413.
    pub max_body_bytes: u64,
    pub algorithm: crate::backends::select::Algorithm,
    /// For `hash`: the header whose value is the key (else the client address).
    pub hash_header: Option<String>,
    /// Where the admin endpoint listens (off when `None`).
    pub admin: Option<SocketAddr>,
    /// The access log (off when `None`).
    pub access_log: Option<crate::access::Config>,
}

impl ProxyConfig {
    /// A configuration with the defaults of the CLI.
    pub fn new(listen: Vec<SocketAddr>, backends: Vec<Backend>) -> ProxyConfig {
        ProxyConfig {
            listen,
            backends,
            workers: available_cores(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            rewrite_host: false,
            pin: false,
            busy_poll: Duration::from_micros(DEFAULT_BUSY_POLL_MICROS),
            timeouts: Timeouts::default(),
            retries: DEFAULT_RETRIES,
            passive: crate::backends::Passive::default(),
            log_health: true,
            health_check: None,
            max_connections: 0,
            max_body_bytes: 0,
            algorithm: crate::backends::select::Algorithm::RoundRobin,
            hash_header: None,
            admin: None,
            access_log: None,
        }
    }
}

/// Number of cores this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A problem with one flag's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagError {
    pub flag: &'static str,
    pub value: String,
    pub problem: String,
}

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.flag, self.problem)
        } else {
            write!(f, "{} {}: {}", self.flag, self.value, self.problem)
        }
    }
}

impl std::error::Error for FlagError {}

fn flag_error(flag: &'static str, value: &str, problem: impl Into<String>) -> FlagError {
    FlagError {
        flag,
        value: value.to_string(),
        problem: problem.into(),
    }
}

/// Resolve `host:port` (a name or an IP literal, `[v6]:port` for IPv6) to its first
/// address. Port 0 is refused: a listener or backend on a random port is a mistake
/// on the command line.
pub fn resolve(flag: &'static str, text: &str) -> Result<SocketAddr, FlagError> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h, p),
        _ => return Err(flag_error(flag, text, "expected host:port")),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| flag_error(flag, text, "port must be a number from 1 to 65535"))?;
    if port == 0 {
        return Err(flag_error(flag, text, "port 0 is not allowed"));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host.contains(['[', ']', '/', ' ']) {
        return Err(flag_error(flag, text, "not a valid host name"));
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| flag_error(flag, text, "name has no addresses")),
        Err(e) => Err(flag_error(flag, text, format!("cannot resolve: {e}"))),
    }
}

/// Parse a `--backend` value: `host:port` or `http://host:port` (a trailing `/` is
/// fine; any other path, or any other scheme, is refused).
pub fn parse_backend(full: &str) -> Result<Backend, FlagError> {
    // `host:port,weight=N`
    let (text, weight) = match full.split_once(',') {
        None => (full, 1),
        Some((text, option)) => {
            let weight = option
                .strip_prefix("weight=")
                .and_then(|w| w.parse::<u32>().ok())
                .filter(|w| (1..=MAX_WEIGHT).contains(w))
                .ok_or_else(|| {
                    flag_error(
                        "--backend",
                        full,
                        format!("the only option is weight=N, N from 1 to {MAX_WEIGHT}"),
                    )
                })?;
            (text, weight)
        }
    };
    let rest = match text.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(flag_error(
                "--backend",
                text,
                format!("scheme {scheme}:// is not supported, only http://"),
            ));
        }
        None => text,
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(flag_error(
            "--backend",
            text,
            "a backend is host:port, without a path",
        ));
    }
    let addr = resolve("--backend", authority).map_err(|mut e| {
        e.value = text.to_string();
        e
    })?;
    Ok(Backend {
        addr,
        authority: authority.to_string(),
        weight,
    })
}

/// Parse a `--listen` value.
pub fn parse_listen(text: &str) -> Result<SocketAddr, FlagError> {
    resolve("--listen", text)
}

/// Parse a duration as the CLI takes it: a whole number with a unit, `ms`, `s` or
/// `m` (`500ms`, `30s`, `2m`). Between 1 ms and 1 hour. The error quotes `text`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    duration(text).map_err(|problem| format!("{text:?} {problem}"))
}

/// `parse_duration` whose error is the problem only (the caller names the value).
pub fn duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "is not a duration like 500ms, 30s or 2m".to_string())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err("needs a unit: ms, s or m (500ms, 30s, 2m)".into()),
    };
    if d < Duration::from_millis(1) || d > Duration::from_secs(3600) {
        return Err("must be between 1ms and 60m".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends() {
        let b = parse_backend("127.0.0.1:9000").unwrap();
        assert_eq!(b.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(b.authority, "127.0.0.1:9000");
        let b = parse_backend("http://localhost:9001/").unwrap();
        assert_eq!(b.addr.port(), 9001);
        assert!(b.addr.ip().is_loopback());
        assert_eq!(b.authority, "localhost:9001");
        assert_eq!(
            parse_backend("[::1]:80").unwrap().addr,
            "[::1]:80".parse().unwrap()
        );
        for bad in [
            "https://a:1",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:x",
            "http://a:1/p",
            ":80",
            "127.0.0.1:70000",
        ] {
            let e = parse_backend(bad).unwrap_err();
            assert_eq!(e.flag, "--backend", "{bad}");
            assert!(e.to_string().starts_with("--backend "), "{e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "30", "s", "1.5s", "-1s", "0s", "61m", "5h", "10 s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
