//! Settings from the command line and from the config file (`--config FILE`,
//! TOML), merged into one `ProxyConfig`.
//!
//! Each source fills a `Settings`, where `None` means "not set here". The flags win
//! over the file, the file over the defaults. Both sources check each value with
//! the same functions, so a value means the same and fails the same way wherever
//! it is written; only the name in the message differs (`--connect-timeout` or
//! `timeouts.connect` with its line). Checks that involve two settings run once,
//! after the merge.
//!
//! The file is read into toml's spanned document tree and walked key by key, so
//! every error is found in one pass, unknown keys included, each with its line.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::access;
use crate::backends::CheckConfig;
use crate::backends::select::Algorithm;
use crate::config::{self, Backend, ProxyConfig};
use crate::log::Level;

/// What one source sets; `None`: not set there.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub listen: Option<Vec<SocketAddr>>,
    pub backends: Option<Vec<Backend>>,
    pub workers: Option<usize>,
    pub algorithm: Option<Algorithm>,
    pub hash_header: Option<String>,
    pub admin: Option<SocketAddr>,
    pub rewrite_host: Option<bool>,
    pub pin: Option<bool>,
    pub busy_poll: Option<Duration>,
    pub retries: Option<u32>,
    pub log_level: Option<Level>,
    /// A path, or `-` for standard output.
    pub access_log: Option<String>,
    pub access_log_format: Option<access::Format>,
    pub handover: Option<PathBuf>,
    pub health_path: Option<String>,
    pub health_interval: Option<Duration>,
    pub health_timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub max_fails: Option<u32>,
    pub fail_window: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub header_timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub response_timeout: Option<Duration>,
    pub body_timeout: Option<Duration>,
    pub upstream_idle_timeout: Option<Duration>,
    pub shutdown_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_body_bytes: Option<u64>,
}

/// What the merged settings give besides the proxy's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Built {
    pub config: ProxyConfig,
    pub log_level: Level,
    pub handover: Option<PathBuf>,
}

impl Settings {
    /// These settings, with `base` filling what they leave unset.
    pub fn over(self, base: Settings) -> Settings {
        macro_rules! merge {
            ($($field:ident),* $(,)?) => {
                Settings { $($field: self.$field.or(base.$field)),* }
            };
        }
        merge!(
            listen,
            backends,
            workers,
            algorithm,
            hash_header,
            admin,
            rewrite_host,
            pin,
            busy_poll,
            retries,
            log_level,
            access_log,
            access_log_format,
            handover,
            health_path,
            health_interval,
            health_timeout,
            rise,
            fall,
            max_fails,
            fail_window,
            idle_timeout,
            header_timeout,
            connect_timeout,
            response_timeout,
            body_timeout,
            upstream_idle_timeout,
            shutdown_timeout,
            max_connections,
            max_header_bytes,
            max_body_bytes,
        )
    }

    /// The configuration, with defaults for what is unset, after the checks that
    /// involve more than one setting. The error names both spellings of what is
    /// wrong (`--flag` / `file.key`).
    pub fn build(&self) -> Result<Built, String> {
        let backends = match &self.backends {
            Some(b) if !b.is_empty() => b.clone(),
            _ => {
                return Err(
                    "no backend: give --backend, or [[backend]] tables in the config file".into(),
                );
            }
        };
        let listen = self
            .listen
            .clone()
            .unwrap_or_else(|| vec![SocketAddr::from(([127, 0, 0, 1], 8080))]);
        let mut cfg = ProxyConfig::new(listen, backends);
        cfg.workers = self.workers.unwrap_or_else(config::available_cores);
        let algorithm = self.algorithm.unwrap_or(Algorithm::RoundRobin);
        if let Some(name) = &self.hash_header
            && algorithm != Algorithm::Hash
        {
            return Err(format!(
                "--hash-header (hash_header) {name}: only with algorithm hash"
            ));
        }
        cfg.algorithm = algorithm;
        cfg.hash_header = self.hash_header.clone();
        cfg.admin = self.admin;
        cfg.rewrite_host = self.rewrite_host.unwrap_or(false);
        cfg.pin = self.pin.unwrap_or(false);
        if let Some(b) = self.busy_poll {
            cfg.busy_poll = b;
        }
        if let Some(r) = self.retries {
            cfg.retries = r;
        }
        cfg.access_log = self.access_log.as_ref().map(|path| access::Config {
            path: (path != "-").then(|| path.into()),
            format: self.access_log_format.unwrap_or(access::Format::Combined),
        });
        cfg.health_check = match &self.health_path {
            None => None,
            Some(path) => {
                let mut check = CheckConfig::new(path.clone());
                if let Some(i) = self.health_interval {
                    check.interval = i;
                }
                if let Some(t) = self.health_timeout {
                    check.timeout = t;
                }
                if check.timeout > check.interval {
                    return Err(format!(
                        "--health-timeout (health.timeout) {:?}: must not be longer than the \
                         interval ({:?})",
                        check.timeout, check.interval
                    ));
                }
                check.rise = self.rise.unwrap_or(check.rise);
                check.fall = self.fall.unwrap_or(check.fall);
                Some(check)
            }
        };
        if let Some(m) = self.max_fails {
            cfg.passive.max_fails = m;
        }
        if let Some(w) = self.fail_window {
            cfg.passive.window = w;
        }
        let t = &mut cfg.timeouts;
        for (set, field) in [
            (self.idle_timeout, &mut t.idle),
            (self.header_timeout, &mut t.header),
            (self.connect_timeout, &mut t.connect),
            (self.response_timeout, &mut t.response),
            (self.body_timeout, &mut t.body),
            (self.upstream_idle_timeout, &mut t.upstream_idle),
            (self.shutdown_timeout, &mut t.shutdown),
        ] {
            if let Some(d) = set {
                *field = d;
            }
        }
        if let Some(m) = self.max_connections {
            cfg.max_connections = m;
        }
        if let Some(m) = self.max_header_bytes {
            cfg.max_header_bytes = m;
        }
        if let Some(m) = self.max_body_bytes {
            cfg.max_body_bytes = m;
        }
        Ok(Built {
            config: cfg,
            log_level: self.log_level.unwrap_or(Level::Info),
            handover: self.handover.clone(),
        })
    }
}

// One check per kind of value, shared by the flags and the file. Each returns the
// problem only; the caller names the flag or key.

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
    in_range(
        n,
        config::MIN_HEADER_BYTES as u64,
        config::MAX_HEADER_BYTES as u64,
    )
    .map(|n| n as usize)
}

/// `--busy-poll`: microseconds.
pub fn busy_poll(n: u64) -> Result<Duration, String> {
    in_range(n, 0, config::MAX_BUSY_POLL_MICROS).map(Duration::from_micros)
}

pub fn retries(n: u64) -> Result<u32, String> {
    in_range(n, 0, u64::from(config::MAX_RETRIES)).map(|n| n as u32)
}

/// `--rise` and `--fall`.
pub fn streak(n: u64) -> Result<u32, String> {
    in_range(n, 1, 1000).map(|n| n as u32)
}

pub fn max_fails(n: u64) -> Result<u32, String> {
    in_range(n, 0, 1_000_000).map(|n| n as u32)
}

pub fn max_connections(n: u64) -> Result<usize, String> {
    in_range(n, 0, config::MAX_CONNECTIONS as u64).map(|n| n as usize)
}

pub fn weight(n: u64) -> Result<u32, String> {
    in_range(n, 1, u64::from(config::MAX_WEIGHT)).map(|n| n as u32)
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

pub fn address(text: &str) -> Result<SocketAddr, String> {
    config::resolve("", text).map_err(|e| e.problem)
}

pub fn handover(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("a path for a Unix socket".into());
    }
    Ok(PathBuf::from(path))
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    /// 1-based; `None` when the problem has no place (an unreadable file).
    pub line: Option<usize>,
    /// The key, as a path: `timeouts.connect`, `backend[2].address`.
    pub key: String,
    pub problem: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.key.is_empty() {
            f.write_str(&self.problem)
        } else {
            write!(f, "{}: {}", self.key, self.problem)
        }
    }
}

/// Read and check a config file: every problem found, or the settings it makes.
pub fn load_file(path: &Path) -> Result<Settings, Vec<FileError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![FileError {
            line: None,
            key: String::new(),
            problem: format!("cannot read: {e}"),
        }]
    })?;
    parse_file(&text)
}

/// Check a config file's text: every problem found, or the settings it makes.
pub fn parse_file(text: &str) -> Result<Settings, Vec<FileError>> {
    let doc = match DeTable::parse(text) {
        Ok(d) => d,
        Err(e) => {
            return Err(vec![FileError {
                line: e.span().map(|s| line_of(text, s.start)),
                key: String::new(),
                problem: format!("not valid TOML: {}", e.message().trim_end()),
            }]);
        }
    };
    let mut walk = Walk {
        text,
        errors: Vec::new(),
        out: Settings::default(),
    };
    walk.top(doc.get_ref());
    if walk.errors.is_empty() {
        Ok(walk.out)
    } else {
        walk.errors.sort_by_key(|e| e.line);
        Err(walk.errors)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

type Value<'i> = Spanned<DeValue<'i>>;

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The walk over a parsed file: fills `out`, collects `errors`.
struct Walk<'t> {
    text: &'t str,
    errors: Vec<FileError>,
    out: Settings,
}

impl Walk<'_> {
    fn error(&mut self, at: &Value<'_>, key: &str, problem: impl Into<String>) {
        self.errors.push(FileError {
            line: Some(line_of(self.text, at.span().start)),
            key: key.to_string(),
            problem: problem.into(),
        });
    }

    fn string<T>(
        &mut self,
        v: &Value<'_>,
        key: &str,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let DeValue::String(s) = v.get_ref() else {
            self.error(
                v,
                key,
                format!("expected a string, found {}", kind(v.get_ref())),
            );
            return None;
        };
        match check(s) {
            Ok(t) => Some(t),
            Err(problem) => {
                self.error(v, key, format!("{s:?}: {problem}"));
                None
            }
        }
    }

    fn integer<T>(
        &mut self,
        v: &Value<'_>,
        key: &str,
        check: impl FnOnce(u64) -> Result<T, String>,
    ) -> Option<T> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.error(
                v,
                key,
                format!("expected an integer, found {}", kind(v.get_ref())),
            );
            return None;
        };
        let Ok(n) = u64::from_str_radix(i.as_str(), i.radix()) else {
            self.error(v, key, format!("{}: must not be negative", i.as_str()));
            return None;
        };
        match check(n) {
            Ok(t) => Some(t),
            Err(problem) => {
                self.error(v, key, format!("{n}: {problem}"));
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(
                    v,
                    key,
                    format!("expected true or false, found {}", kind(other)),
                );
                None
            }
        }
    }

    fn duration(&mut self, v: &Value<'_>, key: &str) -> Option<Duration> {
        if !matches!(v.get_ref(), DeValue::String(_)) {
            let found = kind(v.get_ref());
            self.error(
                v,
                key,
                format!("expected a duration like \"30s\" or \"500ms\", found {found}"),
            );
            return None;
        }
        self.string(v, key, config::duration)
    }

    fn table<'a, 'i>(&mut self, v: &'a Value<'i>, key: &str) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(v, key, format!("expected a table, found {}", kind(other)));
                None
            }
        }
    }

    fn unknown(&mut self, at: &Spanned<std::borrow::Cow<'_, str>>, key: &str, known: &str) {
        self.errors.push(FileError {
            line: Some(line_of(self.text, at.span().start)),
            key: key.to_string(),
            problem: format!("unknown key; known here: {known}"),
        });
    }

    fn top(&mut self, doc: &DeTable<'_>) {
        const KNOWN: &str = "listen, workers, algorithm, hash_header, admin, rewrite_host, \
            pin, busy_poll, retries, log_level, access_log, access_log_format, handover, \
            [[backend]], [health], [timeouts], [limits]";
        for (k, v) in doc.iter() {
            let key = k.get_ref().as_ref();
            match key {
                "listen" => self.out.listen = self.listen(v),
                "workers" => self.out.workers = self.integer(v, key, workers),
                "algorithm" => self.out.algorithm = self.string(v, key, algorithm),
                "hash_header" => self.out.hash_header = self.string(v, key, header_name),
                "admin" => self.out.admin = self.string(v, key, address),
                "rewrite_host" => self.out.rewrite_host = self.boolean(v, key),
                "pin" => self.out.pin = self.boolean(v, key),
                "busy_poll" => self.out.busy_poll = self.integer(v, key, busy_poll),
                "retries" => self.out.retries = self.integer(v, key, retries),
                "log_level" => self.out.log_level = self.string(v, key, log_level),
                "access_log" => self.out.access_log = self.string(v, key, access_log),
                "access_log_format" => {
                    self.out.access_log_format = self.string(v, key, access_log_format)
                }
                "handover" => self.out.handover = self.string(v, key, handover),
                "backend" => self.out.backends = self.backends(v),
                "health" => self.health(v),
                "timeouts" => self.timeouts(v),
                "limits" => self.limits(v),
                _ => self.unknown(k, key, KNOWN),
            }
        }
    }

    /// `listen = "a:1"` or `listen = ["a:1", "b:2"]`.
    fn listen(&mut self, v: &Value<'_>) -> Option<Vec<SocketAddr>> {
        match v.get_ref() {
            DeValue::String(_) => self.string(v, "listen", address).map(|a| vec![a]),
            DeValue::Array(items) if !items.is_empty() => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.extend(self.string(item, &format!("listen[{i}]"), address));
                }
                (out.len() == items.len()).then_some(out)
            }
            DeValue::Array(_) => {
                self.error(v, "listen", "an empty list; give at least one address");
                None
            }
            other => {
                self.error(
                    v,
                    "listen",
                    format!(
                        "expected an address or a list of addresses, found {}",
                        kind(other)
                    ),
                );
                None
            }
        }
    }

    /// `[[backend]]` tables: `address` (required) and `weight`.
    fn backends(&mut self, v: &Value<'_>) -> Option<Vec<Backend>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.error(
                v,
                "backend",
                format!("expected [[backend]] tables, found {}", kind(v.get_ref())),
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("backend[{i}]");
            let Some(table) = self.table(item, &key) else {
                continue;
            };
            let (mut backend, mut weight, mut failed) = (None, 1, false);
            for (k, v) in table.iter() {
                let name = k.get_ref().as_ref();
                let full = format!("{key}.{name}");
                match name {
                    "address" => {
                        backend = self.string(v, &full, |s| {
                            config::parse_backend(s).map_err(|e| e.problem)
                        });
                        failed |= backend.is_none();
                    }
                    "weight" => match self.integer(v, &full, self::weight) {
                        Some(w) => weight = w,
                        None => failed = true,
                    },
                    _ => self.unknown(k, &full, "address, weight"),
                }
            }
            match backend {
                Some(mut b) => {
                    b.weight = weight;
                    out.push(b);
                }
                None if !failed => self.error(item, &key, "address is missing"),
                None => {}
            }
        }
        Some(out)
    }

    fn health(&mut self, v: &Value<'_>) {
        let Some(table) = self.table(v, "health") else {
            return;
        };
        for (k, v) in table.iter() {
            let name = k.get_ref().as_ref();
            let key = format!("health.{name}");
            let key = key.as_str();
            match name {
                "path" => self.out.health_path = self.string(v, key, health_path),
                "interval" => self.out.health_interval = self.duration(v, key),
                "timeout" => self.out.health_timeout = self.duration(v, key),
                "rise" => self.out.rise = self.integer(v, key, streak),
                "fall" => self.out.fall = self.integer(v, key, streak),
                "max_fails" => self.out.max_fails = self.integer(v, key, max_fails),
                "fail_window" => self.out.fail_window = self.duration(v, key),
                _ => self.unknown(
                    k,
                    key,
                    "path, interval, timeout, rise, fall, max_fails, fail_window",
                ),
            }
        }
    }

    fn timeouts(&mut self, v: &Value<'_>) {
        let Some(table) = self.table(v, "timeouts") else {
            return;
        };
        for (k, v) in table.iter() {
            let name = k.get_ref().as_ref();
            let key = format!("timeouts.{name}");
            if timeout_field(&mut self.out, name).is_none() {
                self.unknown(
                    k,
                    &key,
                    "idle, header, connect, response, body, upstream_idle, shutdown",
                );
                continue;
            }
            let d = self.duration(v, &key);
            if let Some(field) = timeout_field(&mut self.out, name) {
                *field = d;
            }
        }
    }

    fn limits(&mut self, v: &Value<'_>) {
        let Some(table) = self.table(v, "limits") else {
            return;
        };
        for (k, v) in table.iter() {
            let name = k.get_ref().as_ref();
            let key = format!("limits.{name}");
            match name {
                "max_connections" => {
                    self.out.max_connections = self.integer(v, &key, max_connections)
                }
                "max_header_bytes" => {
                    self.out.max_header_bytes = self.integer(v, &key, max_header_bytes)
                }
                "max_body_bytes" => {
                    self.out.max_body_bytes = self.integer(v, &key, Ok::<u64, String>)
                }
                _ => self.unknown(k, &key, "max_connections, max_header_bytes, max_body_bytes"),
            }
        }
    }
}

/// The `[timeouts]` key `name`'s setting.
fn timeout_field<'a>(s: &'a mut Settings, name: &str) -> Option<&'a mut Option<Duration>> {
    Some(match name {
        "idle" => &mut s.idle_timeout,
        "header" => &mut s.header_timeout,
        "connect" => &mut s.connect_timeout,
        "response" => &mut s.response_timeout,
        "body" => &mut s.body_timeout,
        "upstream_idle" => &mut s.upstream_idle_timeout,
        "shutdown" => &mut s.shutdown_timeout,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one problem `text` has, as "line N: key: problem".
    fn problem(text: &str) -> String {
        let errors = parse_file(text).expect_err(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors[0].to_string()
    }

    fn ok(text: &str) -> Settings {
        parse_file(text).unwrap_or_else(|e| panic!("{text}: {e:?}"))
    }

    #[test]
    fn the_shipped_example_is_valid_and_means_what_it_says() {
        let text = include_str!("../scripts/corelb.toml");
        let built = ok(text).build().unwrap();
        let c = &built.config;
        assert_eq!(c.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.workers, 2);
        assert_eq!(c.admin, Some("127.0.0.1:9900".parse().unwrap()));
        let backends: Vec<(String, u32)> = c
            .backends
            .iter()
            .map(|b| (b.authority.clone(), b.weight))
            .collect();
        assert_eq!(
            backends,
            [("127.0.0.1:9001".into(), 1), ("127.0.0.1:9002".into(), 1)]
        );
        assert_eq!(c.health_check, None, "path is commented out");
        assert_eq!(c.timeouts, config::Timeouts::default());
        assert_eq!(c.max_header_bytes, config::DEFAULT_MAX_HEADER_BYTES);
    }

    #[test]
    fn every_key_is_read() {
        let s = ok(r#"
            listen = ["127.0.0.1:8081", "[::1]:8082"]
            workers = 3
            algorithm = "hash"
            hash_header = "X-User"
            admin = "127.0.0.1:9901"
            rewrite_host = true
            pin = true
            busy_poll = 0
            retries = 5
            log_level = "debug"
            access_log = "-"
            access_log_format = "json"
            handover = "/run/corelb.sock"
            [[backend]]
            address = "http://127.0.0.1:9001/"
            weight = 7
            [health]
            path = "/up"
            interval = "3s"
            timeout = "500ms"
            rise = 4
            fall = 5
            max_fails = 6
            fail_window = "1m"
            [timeouts]
            idle = "1s"
            header = "2s"
            connect = "3s"
            response = "4s"
            body = "5s"
            upstream_idle = "6s"
            shutdown = "7s"
            [limits]
            max_connections = 100
            max_header_bytes = 2048
            max_body_bytes = 1000000
        "#);
        let b = s.build().unwrap();
        let c = &b.config;
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.workers, 3);
        assert_eq!(c.algorithm, Algorithm::Hash);
        assert_eq!(c.hash_header.as_deref(), Some("X-User"));
        assert!(c.rewrite_host && c.pin);
        assert_eq!(c.busy_poll, Duration::ZERO);
        assert_eq!(c.retries, 5);
        assert_eq!(b.log_level, Level::Debug);
        assert_eq!(c.access_log.as_ref().map(|a| a.path.is_none()), Some(true));
        assert_eq!(b.handover, Some(PathBuf::from("/run/corelb.sock")));
        assert_eq!(c.backends[0].authority, "127.0.0.1:9001");
        assert_eq!(c.backends[0].weight, 7);
        let h = c.health_check.as_ref().unwrap();
        assert_eq!(
            (h.path.as_str(), h.interval, h.timeout, h.rise, h.fall),
            (
                "/up",
                Duration::from_secs(3),
                Duration::from_millis(500),
                4,
                5
            )
        );
        assert_eq!(c.passive.max_fails, 6);
        assert_eq!(c.passive.window, Duration::from_secs(60));
        let t = c.timeouts;
        let secs = [
            t.idle,
            t.header,
            t.connect,
            t.response,
            t.body,
            t.upstream_idle,
            t.shutdown,
        ];
        assert_eq!(secs, [1, 2, 3, 4, 5, 6, 7].map(Duration::from_secs));
        assert_eq!(
            (c.max_connections, c.max_header_bytes, c.max_body_bytes),
            (100, 2048, 1_000_000)
        );
    }

    #[test]
    fn every_kind_of_error_names_its_key_and_line() {
        let cases: &[(&str, &str)] = &[
            // Syntax.
            ("workers = ", "line 1: not valid TOML"),
            ("[health\npath = 1", "line 1: not valid TOML"),
            // Unknown keys, at each level.
            ("\nworker = 2", "line 2: worker: unknown key"),
            ("[health]\nurl = \"/\"", "line 2: health.url: unknown key"),
            (
                "[timeouts]\nread = \"1s\"",
                "line 2: timeouts.read: unknown key",
            ),
            (
                "[limits]\nmax_conns = 1",
                "line 2: limits.max_conns: unknown key",
            ),
            (
                "[[backend]]\naddress = \"127.0.0.1:1\"\nwieght = 2",
                "line 3: backend[0].wieght: unknown key",
            ),
            // Types.
            (
                "workers = \"2\"",
                "line 1: workers: expected an integer, found a string",
            ),
            (
                "workers = 2.5",
                "line 1: workers: expected an integer, found a float",
            ),
            (
                "algorithm = 1",
                "line 1: algorithm: expected a string, found an integer",
            ),
            ("pin = \"yes\"", "line 1: pin: expected true or false"),
            ("health = 1", "line 1: health: expected a table"),
            (
                "[timeouts]\nidle = 60",
                "line 2: timeouts.idle: expected a duration",
            ),
            (
                "listen = 8080",
                "line 1: listen: expected an address or a list",
            ),
            ("listen = []", "line 1: listen: an empty list"),
            (
                "backend = \"127.0.0.1:1\"",
                "line 1: backend: expected [[backend]] tables",
            ),
            ("backend = [1]", "line 1: backend[0]: expected a table"),
            // Values.
            ("workers = -1", "line 1: workers: -1: must not be negative"),
            ("workers = 0", "line 1: workers: 0: must be 1 to 1024"),
            (
                "busy_poll = 20000",
                "line 1: busy_poll: 20000: must be 0 to 10000",
            ),
            ("retries = 17", "line 1: retries: 17: must be 0 to 16"),
            (
                "algorithm = \"random\"",
                "line 1: algorithm: \"random\": unknown",
            ),
            (
                "log_level = \"loud\"",
                "line 1: log_level: \"loud\": one of",
            ),
            (
                "access_log_format = \"xml\"",
                "access_log_format: \"xml\": combined or json",
            ),
            ("access_log = \"\"", "line 1: access_log: \"\": a path"),
            ("handover = \"\"", "line 1: handover: \"\": a path"),
            (
                "hash_header = \"X User\"",
                "hash_header: \"X User\": not a header name",
            ),
            (
                "admin = \"nowhere\"",
                "line 1: admin: \"nowhere\": expected host:port",
            ),
            (
                "listen = [\"127.0.0.1:0\"]",
                "line 1: listen[0]: \"127.0.0.1:0\": port 0",
            ),
            (
                "[[backend]]\naddress = \"https://a:1\"",
                "line 2: backend[0].address: \"https://a:1\": scheme https://",
            ),
            (
                "[[backend]]\naddress = \"127.0.0.1:1/x\"",
                "backend[0].address: \"127.0.0.1:1/x\": a backend is host:port, without a path",
            ),
            (
                "[[backend]]\nweight = 2",
                "line 1: backend[0]: address is missing",
            ),
            (
                "[[backend]]\naddress = \"127.0.0.1:1\"\nweight = 0",
                "line 3: backend[0].weight: 0: must be 1 to 1000",
            ),
            (
                "[health]\npath = \"up\"",
                "line 2: health.path: \"up\": must start with /",
            ),
            (
                "[health]\nrise = 0",
                "line 2: health.rise: 0: must be 1 to 1000",
            ),
            (
                "[health]\nfall = 1001",
                "line 2: health.fall: 1001: must be 1 to 1000",
            ),
            (
                "[health]\ninterval = \"2\"",
                "health.interval: \"2\": needs a unit",
            ),
            (
                "[timeouts]\nconnect = \"2h\"",
                "timeouts.connect: \"2h\": needs a unit",
            ),
            (
                "[timeouts]\nidle = \"61m\"",
                "timeouts.idle: \"61m\": must be between",
            ),
            (
                "[timeouts]\nbody = \"0s\"",
                "timeouts.body: \"0s\": must be between",
            ),
            (
                "[limits]\nmax_header_bytes = 100",
                "line 2: limits.max_header_bytes: 100: must be 1024 to 1048576",
            ),
            (
                "[limits]\nmax_connections = 20000000",
                "limits.max_connections: 20000000: must be 0 to 10000000",
            ),
        ];
        for (text, want) in cases {
            let got = problem(text);
            assert!(
                got.starts_with(want) || (!want.starts_with("line") && got.contains(want)),
                "{text:?}: got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn all_problems_are_reported_in_line_order() {
        let errors =
            parse_file("workers = 0\n[limits]\nmax_body_bytes = -5\nfoo = 1\n").unwrap_err();
        let lines: Vec<Option<usize>> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(1), Some(3), Some(4)], "{errors:?}");
    }

    #[test]
    fn checks_across_settings_run_on_the_merged_result() {
        let no_backend = ok("workers = 1").build().unwrap_err();
        assert!(no_backend.starts_with("no backend"), "{no_backend}");
        let b = "[[backend]]\naddress = \"127.0.0.1:1\"\n";
        let e = ok(&format!("hash_header = \"X-U\"\n{b}"))
            .build()
            .unwrap_err();
        assert!(
            e.contains("hash_header") && e.contains("only with algorithm hash"),
            "{e}"
        );
        let e = ok(&format!(
            "{b}[health]\npath = \"/\"\ninterval = \"1s\"\ntimeout = \"2s\""
        ))
        .build()
        .unwrap_err();
        assert!(e.contains("health.timeout"), "{e}");
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let file = ok(r#"
            workers = 3
            algorithm = "least-connections"
            [[backend]]
            address = "127.0.0.1:9001"
            [timeouts]
            connect = "1s"
        "#);
        let cli = Settings {
            workers: Some(1),
            connect_timeout: Some(Duration::from_millis(250)),
            ..Settings::default()
        };
        let c = cli.over(file).build().unwrap().config;
        assert_eq!(c.workers, 1, "the flag wins");
        assert_eq!(
            c.timeouts.connect,
            Duration::from_millis(250),
            "the flag wins"
        );
        assert_eq!(c.algorithm, Algorithm::LeastConnections, "the file's");
        assert_eq!(c.backends.len(), 1, "the file's");
        assert_eq!(c.timeouts.idle, Duration::from_secs(60), "the default");
    }

    #[test]
    fn an_unreadable_file_is_one_error_without_a_line() {
        let e = load_file(Path::new("/nonexistent/corelb.toml")).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, None);
        assert!(e[0].problem.starts_with("cannot read"), "{e:?}");
    }
}
