//! One check per kind of value, shared by the flags and the config file: each
//! takes the value as written and returns it checked, or the problem only (the
//! caller names the flag or key, and the value).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::{
    Algorithm, Backend, Listen, MAX_BUSY_POLL_MICROS, MAX_CONNECTIONS, MAX_HEADER_BYTES,
    MAX_RETRIES, MAX_WEIGHT, MIN_HEADER_BYTES, SendProxy,
};
use crate::access;
use crate::log::Level;
use crate::proxy_protocol::Cidr;

/// A credential read from a file: compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Whether `given` is this secret, in a time that depends on the secret's
    /// length only (not on where a guess first differs).
    pub fn matches(&self, given: &[u8]) -> bool {
        let mine = &self.0;
        let mut diff = mine.len() ^ given.len();
        for (i, &m) in mine.iter().enumerate() {
            let g = given.get(i).copied().unwrap_or(!m);
            diff |= usize::from(std::hint::black_box(m ^ g));
        }
        diff == 0
    }
}

/// Shortest admin token accepted.
const MIN_TOKEN_BYTES: usize = 16;

/// The admin token in the file at `path`: its content, less surrounding white
/// space (a trailing newline).
pub fn admin_token(path: &str) -> Result<Secret, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let token = text.trim_ascii();
    if !token.iter().all(u8::is_ascii_graphic) {
        return Err(format!(
            "the token in {path} must be printable ASCII without spaces"
        ));
    }
    if token.len() < MIN_TOKEN_BYTES {
        return Err(format!(
            "the token in {path} has {} bytes, fewer than {MIN_TOKEN_BYTES} (make one with: head -c 24 /dev/urandom | base64 > {path})",
            token.len()
        ));
    }
    Ok(Secret(token.to_vec()))
}

fn in_range(n: u64, lo: u64, hi: u64) -> Result<u64, String> {
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be {lo} to {hi}"))
    }
}

pub fn workers(n: u64) -> Result<usize, String> {
    in_range(n, 1, 1024).map(|n| n as usize)
}

pub fn max_header_bytes(n: u64) -> Result<usize, String> {
    in_range(n, MIN_HEADER_BYTES as u64, MAX_HEADER_BYTES as u64).map(|n| n as usize)
}

/// Microseconds.
pub fn busy_poll(n: u64) -> Result<Duration, String> {
    in_range(n, 0, MAX_BUSY_POLL_MICROS).map(Duration::from_micros)
}

pub fn retries(n: u64) -> Result<u32, String> {
    in_range(n, 0, u64::from(MAX_RETRIES)).map(|n| n as u32)
}

/// Health-check `rise` and `fall`.
pub fn streak(n: u64) -> Result<u32, String> {
    in_range(n, 1, 1000).map(|n| n as u32)
}

pub fn max_fails(n: u64) -> Result<u32, String> {
    in_range(n, 0, 1_000_000).map(|n| n as u32)
}

/// A number of connections (0 to 10,000,000; what 0 means is the setting's).
pub fn connections(n: u64) -> Result<usize, String> {
    in_range(n, 0, MAX_CONNECTIONS as u64).map(|n| n as usize)
}

/// Any byte count (0 usually means "no limit").
pub fn bytes(n: u64) -> Result<u64, String> {
    Ok(n)
}

pub fn weight(n: u64) -> Result<u32, String> {
    in_range(n, 1, u64::from(MAX_WEIGHT)).map(|n| n as u32)
}

/// A switch: given (or `true` in the file) turns it on.
pub fn on(b: bool) -> Result<bool, String> {
    Ok(b)
}

pub fn algorithm(name: &str) -> Result<Algorithm, String> {
    Algorithm::parse(name).ok_or_else(|| format!("unknown; one of {}", Algorithm::NAMES))
}

pub fn log_level(name: &str) -> Result<Level, String> {
    Level::parse(name).ok_or_else(|| format!("one of {}", Level::NAMES))
}

pub fn access_log_format(name: &str) -> Result<access::Format, String> {
    access::Format::parse(name).ok_or_else(|| "combined or json".to_string())
}

/// A path, or `-` for standard output.
pub fn access_log(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("a path, or - for standard output".into());
    }
    Ok(path.to_string())
}

/// A header name (an RFC 9110 token).
pub fn header_name(name: &str) -> Result<String, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err("not a header name".into());
    }
    Ok(name.to_string())
}

pub fn health_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must start with / and be printable ASCII without spaces".into());
    }
    Ok(path.to_string())
}

pub fn handover(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("a path for a Unix socket".into());
    }
    Ok(PathBuf::from(path))
}

/// A listen address, `host:port`, optionally followed by `,tls` and/or
/// `,proxy-protocol`.
pub fn listen(text: &str) -> Result<Listen, String> {
    let mut parts = text.split(',');
    let addr = address(parts.next().unwrap_or_default())?;
    let mut listen = Listen::plain(addr);
    for option in parts {
        let flag = match option {
            "tls" => &mut listen.tls,
            "proxy-protocol" => &mut listen.proxy_protocol,
            _ => {
                return Err(format!(
                    "unknown option {option:?}: the options are tls and proxy-protocol (host:port,tls,proxy-protocol)"
                ));
            }
        };
        if std::mem::replace(flag, true) {
            return Err(format!("{option} is given twice"));
        }
    }
    Ok(listen)
}

/// An SRV name: `_service._proto.domain`.
pub fn srv_name(text: &str) -> Result<String, String> {
    let labels: Vec<&str> = text.trim_end_matches('.').split('.').collect();
    let valid = labels.len() >= 3
        && labels[0].starts_with('_')
        && labels[1].starts_with('_')
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err("expected an SRV name like _http._tcp.example.org".into());
    }
    Ok(text.trim_end_matches('.').to_string())
}

/// Networks, `CIDR[,CIDR...]`.
pub fn networks(text: &str) -> Result<Vec<Cidr>, String> {
    text.split(',').map(Cidr::parse).collect()
}

/// A file the proxy reads (a certificate, a key): checked when it is read.
pub fn file(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("a file path".into());
    }
    Ok(PathBuf::from(path))
}

/// Resolve `host:port` (a name or an IP literal, `[v6]:port` for IPv6) to its first
/// address. Port 0 is refused: a listener or backend on a random port is a mistake
/// in a configuration.
pub fn address(text: &str) -> Result<SocketAddr, String> {
    match literal_address(text)? {
        Ok(addr) => Ok(addr),
        Err((host, port)) => resolve(host, port),
    }
}

/// The first address of `host` (getaddrinfo).
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| "name has no addresses".into()),
        Err(e) => Err(format!("cannot resolve: {e}")),
    }
}

/// `host:port` checked: the address if `host` is an IP literal, else the name
/// and port, not resolved yet.
#[allow(clippy::type_complexity)]
fn literal_address(text: &str) -> Result<Result<SocketAddr, (&str, u16)>, String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h, p),
        _ => return Err("expected host:port".into()),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| "port must be a number from 1 to 65535".to_string())?;
    if port == 0 {
        return Err("port 0 is not allowed".into());
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(Ok(SocketAddr::new(ip, port)));
    }
    if host.is_empty() || host.contains(['[', ']', '/', ' ']) {
        return Err("not a valid host name".into());
    }
    Ok(Err((host, port)))
}

/// A backend: `host:port` or `http://host:port` (a trailing `/` is fine; any other
/// path, or any other scheme, is refused), optionally followed by `,weight=N`,
/// `,send-proxy` or `,send-proxy-v2`.
pub fn backend(full: &str) -> Result<Backend, String> {
    let mut parts = full.split(',');
    let text = parts.next().unwrap_or_default();
    let (mut weight, mut send_proxy) = (None, None);
    for option in parts {
        if let Some(w) = option.strip_prefix("weight=") {
            let w = w
                .parse::<u32>()
                .ok()
                .filter(|w| (1..=MAX_WEIGHT).contains(w))
                .ok_or_else(|| format!("weight=N takes N from 1 to {MAX_WEIGHT}"))?;
            if weight.replace(w).is_some() {
                return Err("weight is given twice".into());
            }
            continue;
        }
        let version = match option {
            "send-proxy" => SendProxy::V1,
            "send-proxy-v2" => SendProxy::V2,
            _ => {
                return Err(format!(
                    "unknown option {option:?}: the options are weight=N (1 to {MAX_WEIGHT}), send-proxy and send-proxy-v2"
                ));
            }
        };
        if send_proxy.replace(version).is_some() {
            return Err("send-proxy is given twice".into());
        }
    }
    let weight = weight.unwrap_or(1);
    let (rest, tls) = match text.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (rest, false),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (rest, true),
        Some((scheme, _)) => {
            return Err(format!(
                "scheme {scheme}:// is not supported, only http:// and https://"
            ));
        }
        None => (text, false),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err("a backend is host:port, without a path".into());
    }
    if tls {
        crate::tls::server_name(authority)?;
    }
    // A name is resolved once the whole configuration is known (see
    // `Settings::build`): with --dns-server, not by getaddrinfo at all.
    let addr = match literal_address(authority)? {
        Ok(addr) => addr,
        Err((_, port)) => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port),
    };
    Ok(Backend {
        addr,
        authority: authority.to_string(),
        weight,
        tls,
        send_proxy: send_proxy.unwrap_or_default(),
        label: None,
    })
}

/// A backend's `send_proxy` key in the config file: `"v1"` or `"v2"` (or
/// `"off"`).
pub fn send_proxy(text: &str) -> Result<SendProxy, String> {
    match text {
        "v1" => Ok(SendProxy::V1),
        "v2" => Ok(SendProxy::V2),
        "off" => Ok(SendProxy::Off),
        _ => Err("must be \"v1\", \"v2\" or \"off\"".into()),
    }
}

/// A duration: a whole number with a unit, `ms`, `s` or `m` (`500ms`, `30s`,
/// `2m`), between 1 ms and 1 hour.
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
        "" => return Err("needs a unit: ms, s or m (500ms, 30s, 2m)".into()),
        other => {
            return Err(format!(
                "unknown unit {other}: use ms, s or m (500ms, 30s, 2m)"
            ));
        }
    };
    if d < Duration::from_millis(1) || d > Duration::from_secs(3600) {
        return Err("must be between 1ms and 60m".into());
    }
    Ok(d)
}

/// A duration that may be zero for "off" (`0`, `0s`, `0ms`).
pub fn duration_or_off(text: &str) -> Result<Duration, String> {
    if !text.is_empty() && text.trim_end_matches(['m', 's']) == "0" {
        return Ok(Duration::ZERO);
    }
    duration(text).map_err(|e| format!("{e}, or 0 for off"))
}

/// How a value is shown in `--help` and messages: durations as they are
/// written (`30s`, `500ms`), lists joined by commas.
pub trait Show {
    fn show(&self) -> String;
}

impl Show for Duration {
    fn show(&self) -> String {
        let ms = self.as_millis();
        if self.is_zero() {
            // Off: what both `duration_or_off` and a count of microseconds take.
            "0".into()
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) && ms > 0 {
            format!("{}s", ms / 1000)
        } else if self.as_micros().is_multiple_of(1000) {
            format!("{ms}ms")
        } else {
            // Only busy-poll is finer than a millisecond; it is set in microseconds.
            self.as_micros().to_string()
        }
    }
}

macro_rules! show_by_display {
    ($($t:ty),*) => {
        $(impl Show for $t {
            fn show(&self) -> String {
                self.to_string()
            }
        })*
    };
}
show_by_display!(u32, u64, usize, bool, String, SocketAddr, Algorithm);

impl Show for Level {
    fn show(&self) -> String {
        self.name().to_string()
    }
}

impl Show for access::Format {
    fn show(&self) -> String {
        self.name().to_string()
    }
}

impl Show for Secret {
    fn show(&self) -> String {
        "(a token)".into()
    }
}

impl Show for PathBuf {
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl<T: Show> Show for Vec<T> {
    fn show(&self) -> String {
        self.iter().map(Show::show).collect::<Vec<_>>().join(", ")
    }
}

impl Show for Listen {
    fn show(&self) -> String {
        let mut out = self.addr.to_string();
        if self.tls {
            out.push_str(",tls");
        }
        if self.proxy_protocol {
            out.push_str(",proxy-protocol");
        }
        out
    }
}

impl Show for Cidr {
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Show for Backend {
    fn show(&self) -> String {
        self.name().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends() {
        let b = backend("127.0.0.1:9000").unwrap();
        assert_eq!(
            (b.addr.port(), b.authority.as_str(), b.weight),
            (9000, "127.0.0.1:9000", 1)
        );
        assert_eq!(
            backend("http://127.0.0.1:9000/").unwrap().authority,
            "127.0.0.1:9000"
        );
        assert_eq!(backend("127.0.0.1:9000,weight=7").unwrap().weight, 7);
        let b = backend("127.0.0.1:9000,send-proxy-v2,weight=3").unwrap();
        assert_eq!((b.send_proxy, b.weight), (SendProxy::V2, 3));
        assert_eq!(
            backend("127.0.0.1:9000,send-proxy").unwrap().send_proxy,
            SendProxy::V1
        );
        let https = backend("https://localhost:8443,weight=2").unwrap();
        assert!(https.tls && https.weight == 2 && https.authority == "localhost:8443");
        assert!(!backend("http://127.0.0.1:9000").unwrap().tls);
        assert_eq!(
            backend("[::1]:80").unwrap().addr,
            "[::1]:80".parse().unwrap()
        );
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "ftp://127.0.0.1:1",
            "127.0.0.1:1/path",
            "127.0.0.1:1,weight=0",
            "127.0.0.1:1,weight=1001",
            "127.0.0.1:1,max=3",
            "127.0.0.1:1,send-proxy,send-proxy-v2",
            "127.0.0.1:1,weight=2,weight=3",
            "127.0.0.1:1,",
            ":80",
            "bad host:80",
        ] {
            assert!(backend(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn listeners() {
        let l = listen("127.0.0.1:443,tls,proxy-protocol").unwrap();
        assert!(l.tls && l.proxy_protocol && l.addr.port() == 443);
        assert_eq!(l.show(), "127.0.0.1:443,tls,proxy-protocol");
        let l = listen("[::1]:80,proxy-protocol").unwrap();
        assert!(!l.tls && l.proxy_protocol);
        assert_eq!(listen("127.0.0.1:80").unwrap().show(), "127.0.0.1:80");
        for bad in [
            "127.0.0.1:80,",
            "127.0.0.1:80,tls,tls",
            "127.0.0.1:80,proxy",
            "127.0.0.1:80,TLS",
        ] {
            assert!(listen(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(networks("10.0.0.0/8,::1").unwrap().len(), 2);
        assert!(networks("10.0.0.0/8,").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "5", "s", "1h", "0s", "61m", "-1s", "1.5s", " 1s"] {
            assert!(duration(bad).is_err(), "{bad:?} accepted");
        }
        for d in ["500ms", "30s", "2m", "1ms"] {
            assert_eq!(duration(d).unwrap().show(), d);
        }
        assert_eq!(Duration::from_micros(50).show(), "50");
        assert_eq!(Duration::ZERO.show(), "0");
    }
}
