//! The config file (`--config FILE`, TOML): read into toml's spanned document
//! tree and walked key by key against the settings table, so every problem is
//! found in one pass, unknown keys included, each with its key and line.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::table::{Settings, TABLE};
use super::{Backend, values};

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
    walk.section(doc.get_ref(), "");
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

pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// The walk over a parsed file: fills `out`, collects `errors`.
pub(super) struct Walk<'t> {
    text: &'t str,
    errors: Vec<FileError>,
    out: Settings,
}

impl Walk<'_> {
    /// The line `v` is on.
    pub(super) fn line(&self, v: &Value<'_>) -> usize {
        line_of(self.text, v.span().start)
    }

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

    /// The keys of the table at `prefix` (`""` for the top, `"health."` ...),
    /// each checked against the settings table; sub-tables are walked in turn.
    fn section(&mut self, table: &DeTable<'_>, prefix: &str) {
        for (k, v) in table.iter() {
            let key = format!("{prefix}{}", k.get_ref());
            let section = format!("{key}.");
            if TABLE.iter().any(|s| s.key.starts_with(&section)) {
                if let Some(t) = self.table(v, &key) {
                    self.section(t, &section);
                }
                continue;
            }
            let mut out = std::mem::take(&mut self.out);
            let known = out.set_key(self, &key, &key, v);
            self.out = out;
            if !known {
                self.unknown(k, &key, &known_at(prefix));
            }
        }
    }
}

/// The keys known in the table at `prefix`, as a message lists them.
fn known_at(prefix: &str) -> String {
    let mut known: Vec<String> = Vec::new();
    for s in TABLE {
        let Some(rest) = s.key.strip_prefix(prefix) else {
            continue;
        };
        let shown = match rest.split_once('.') {
            Some((section, _)) => format!("[{section}]"),
            None if s.name == "backend" => "[[backend]]".to_string(),
            None => rest.to_string(),
        };
        if !known.contains(&shown) {
            known.push(shown);
        }
    }
    known.join(", ")
}

// How each kind of value is read from the file; the check is the same one the
// flags use (`values`).

pub(super) fn text<T>(
    walk: &mut Walk<'_>,
    v: &Value<'_>,
    key: &str,
    check: fn(&str) -> Result<T, String>,
) -> Option<T> {
    walk.string(v, key, check)
}

pub(super) fn int<T>(
    walk: &mut Walk<'_>,
    v: &Value<'_>,
    key: &str,
    check: fn(u64) -> Result<T, String>,
) -> Option<T> {
    walk.integer(v, key, check)
}

pub(super) fn duration(
    walk: &mut Walk<'_>,
    v: &Value<'_>,
    key: &str,
    check: fn(&str) -> Result<Duration, String>,
) -> Option<Duration> {
    if !matches!(v.get_ref(), DeValue::String(_)) {
        let found = kind(v.get_ref());
        walk.error(
            v,
            key,
            format!("expected a duration like \"30s\" or \"500ms\", found {found}"),
        );
        return None;
    }
    walk.string(v, key, check)
}

pub(super) fn switch(
    walk: &mut Walk<'_>,
    v: &Value<'_>,
    key: &str,
    check: fn(bool) -> Result<bool, String>,
) -> Option<bool> {
    walk.boolean(v, key).and_then(|b| check(b).ok())
}

/// `listen = "a:1"` or `listen = ["a:1", "b:2"]`.
pub(super) fn list<T>(
    walk: &mut Walk<'_>,
    v: &Value<'_>,
    key: &str,
    check: fn(&str) -> Result<T, String>,
) -> Option<Vec<T>> {
    walk.listen(v, key, check)
}

/// `[[backend]]` tables: `address` (required) and `weight`.
pub(super) fn backends(
    walk: &mut Walk<'_>,
    v: &Value<'_>,
    key: &str,
    check: fn(&str) -> Result<Backend, String>,
) -> Option<Vec<Backend>> {
    walk.backends(v, key, check)
}

impl Walk<'_> {
    /// `listen = "a:1"` or `listen = ["a:1", "b:2"]`.
    fn listen<T>(
        &mut self,
        v: &Value<'_>,
        key: &str,
        address: fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        match v.get_ref() {
            DeValue::String(_) => self.string(v, key, address).map(|a| vec![a]),
            DeValue::Array(items) if !items.is_empty() => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.extend(self.string(item, &format!("{key}[{i}]"), address));
                }
                (out.len() == items.len()).then_some(out)
            }
            DeValue::Array(_) => {
                self.error(v, key, "an empty list; give at least one address");
                None
            }
            other => {
                self.error(
                    v,
                    key,
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
    fn backends(
        &mut self,
        v: &Value<'_>,
        key: &str,
        check: fn(&str) -> Result<Backend, String>,
    ) -> Option<Vec<Backend>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.error(
                v,
                key,
                format!("expected [[backend]] tables, found {}", kind(v.get_ref())),
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("{key}[{i}]");
            let Some(table) = self.table(item, &key) else {
                continue;
            };
            let (mut backend, mut weight, mut send_proxy, mut failed) = (None, None, None, false);
            for (k, v) in table.iter() {
                let name = k.get_ref().as_ref();
                let full = format!("{key}.{name}");
                match name {
                    "address" => {
                        backend = self.string(v, &full, check);
                        failed |= backend.is_none();
                    }
                    "weight" => match self.integer(v, &full, values::weight) {
                        Some(w) => weight = Some(w),
                        None => failed = true,
                    },
                    "send_proxy" => match self.string(v, &full, values::send_proxy) {
                        Some(version) => send_proxy = Some(version),
                        None => failed = true,
                    },
                    _ => self.unknown(k, &full, "address, weight, send_proxy"),
                }
            }
            match backend {
                Some(mut b) => {
                    // The table's keys, or else what the address carries
                    // (`"host:port,send-proxy"`).
                    b.weight = weight.unwrap_or(b.weight);
                    b.send_proxy = send_proxy.unwrap_or(b.send_proxy);
                    out.push(b);
                }
                None if !failed => self.error(item, &key, "address is missing"),
                None => {}
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Algorithm};
    use crate::log::Level;
    use std::path::PathBuf;

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
        let text = include_str!("../../scripts/corelb.toml");
        for s in TABLE {
            let name = s.key.rsplit('.').next().unwrap_or(s.key);
            assert!(text.contains(name), "the example does not show {}", s.key);
        }
        let built = ok(text).build().unwrap();
        let c = &built.config;
        assert_eq!(c.listen_addrs(), vec!["127.0.0.1:8080".parse().unwrap()]);
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
        assert_eq!(c.max_header_bytes, config::defaults::max_header_bytes());
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
            send_proxy = "v2"
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
        assert_eq!(c.backends[0].send_proxy, config::SendProxy::V2);
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
                "[[backend]]\naddress = \"ftp://a:1\"",
                "line 2: backend[0].address: \"ftp://a:1\": scheme ftp://",
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
                "[[backend]]\naddress = \"127.0.0.1:1\"\nsend_proxy = \"v3\"",
                "line 3: backend[0].send_proxy: \"v3\": must be \"v1\", \"v2\" or \"off\"",
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
                "timeouts.connect: \"2h\": unknown unit h: use ms, s or m",
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
