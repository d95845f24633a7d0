//! The settings table: every setting of `corelb serve`, once. A row names the
//! setting's flag and its config-file key, the kind of value and the check it
//! goes through, its default, whether a reload applies it, and where it goes in
//! the configuration. From the table come the `Settings` a source fills, their
//! merge, the flags and their `--help` (defaults included), the file walk and its
//! list of known keys, the defaults the library's constructors use, and the list
//! of settings a reload cannot apply.
//!
//! Rows are applied in table order, so a row may rely on an earlier one
//! (`health_path` makes the health checks that `health_interval` then sets).
//!
//! Adding a setting: a row in `tunables` (the value lands in
//! `ProxyConfig::tune`), then the code that reads it. A setting that belongs to a
//! structure of its own (the timeouts, the health checks) is a row in `mapped`
//! with an `into` saying where it goes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::file::{Value, Walk};
use super::values::{self, Secret, Show};
use super::{Algorithm, Backend, Built, CheckConfig, Listen, ProxyConfig, available_cores};
use crate::access;
use crate::log::Level;
use crate::proxy_protocol::Cidr;

/// One setting, as the table describes it.
#[derive(Debug)]
pub struct Setting {
    /// The field name in `Settings` (`connect_timeout`).
    pub name: &'static str,
    /// The flag of `corelb serve` (`--connect-timeout`).
    pub flag: &'static str,
    /// The config-file key, as a path (`timeouts.connect`).
    pub key: &'static str,
    /// The kind of value (`text`, `int`, `duration`, `switch`, `list`,
    /// `backends`): how the flag and the file key are read.
    pub kind: &'static str,
    /// A reload keeps the running value (and reports the difference).
    pub restart: bool,
    /// The `--help` text, without the default.
    pub help: &'static str,
    /// The default as `--help` shows it; `None` when the setting is off unless set.
    pub default: fn() -> Option<String>,
}

impl Setting {
    /// The flag takes no value (a switch; `true` or `false` in the file).
    pub fn switch(&self) -> bool {
        self.kind == "switch"
    }
}

/// Where a value came from, so that a message names it the way the user wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Given {
    Flag,
    /// The config file, at this line.
    File(usize),
}

/// The row of the setting named `name` (a field name of `Settings`).
pub fn setting(name: &str) -> &'static Setting {
    TABLE
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no setting {name} in the table"))
}

macro_rules! default_or_none {
    () => {
        None
    };
    ($d:expr) => {
        Some($d)
    };
}

macro_rules! is_given {
    () => {
        false
    };
    ($($t:tt)+) => {
        true
    };
}

/// Whether a restart-only setting differs between two configurations: its field,
/// or (`by`) the part of a field shared with another setting that is its own.
macro_rules! differs {
    ($new:ident, $old:ident, $keep:ident) => {
        $new.$keep != $old.$keep
    };
    ($new:ident, $old:ident, $keep:ident, |$c:ident| $by:expr) => {{
        let own = |$c: &ProxyConfig| $by;
        own($new) != own($old)
    }};
}

macro_rules! settings {
    (
        mapped {$(
            $(#[doc = $doc:literal])*
            $field:ident: $ty:ty = $kind:ident($check:expr),
                flag $flag:literal, key $key:literal
                $(, default $default:expr)?
                , into |$b:ident, $v:ident| $apply:expr
                $(, restart $keep:ident $(by |$rc:ident| $by:expr)?)?;
        )*}
        tunables {$(
            $(#[doc = $tdoc:literal])*
            $tfield:ident: $tty:ty = $tkind:ident($tcheck:expr),
                flag $tflag:literal, key $tkey:literal, default $tdefault:expr
                $(, $trestart:ident)?;
        )*}
    ) => {
        /// What one source (the flags, the file) sets; `None`: not set there.
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct Settings {
            $($(#[doc = $doc])* pub $field: Option<$ty>,)*
            $($(#[doc = $tdoc])* pub $tfield: Option<$tty>,)*
            /// Where each value that is set came from, by setting name.
            pub given: BTreeMap<&'static str, Given>,
        }

        /// Settings without a place of their own in `ProxyConfig`: each is read
        /// where it is used, as `config.tune.NAME`.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Tunables {
            $($(#[doc = $tdoc])* pub $tfield: $tty,)*
        }

        impl Default for Tunables {
            fn default() -> Self {
                Tunables { $($tfield: $tdefault,)* }
            }
        }

        /// The tunables whose value differs between `new` and `old`, by name.
        pub fn changed_tunables(new: &Tunables, old: &Tunables) -> Vec<&'static Setting> {
            let mut changed = Vec::new();
            $(if new.$tfield != old.$tfield {
                changed.push(setting(stringify!($tfield)));
            })*
            changed
        }

        /// Every row, in table order.
        pub static TABLE: &[Setting] = &[
            $(Setting {
                name: stringify!($field),
                flag: $flag,
                key: $key,
                kind: stringify!($kind),
                restart: is_given!($($keep)?),
                help: concat!($($doc),*),
                default: {
                    fn shown() -> Option<String> {
                        let d: Option<$ty> = default_or_none!($($default)?);
                        d.map(|d| d.show())
                    }
                    shown
                },
            },)*
            $(Setting {
                name: stringify!($tfield),
                flag: $tflag,
                key: $tkey,
                kind: stringify!($tkind),
                restart: is_given!($($trestart)?),
                help: concat!($($tdoc),*),
                default: {
                    fn shown() -> Option<String> {
                        let d: $tty = $tdefault;
                        Some(d.show())
                    }
                    shown
                },
            },)*
        ];

        /// The defaults of the mapped settings that have one, for the
        /// constructors of the structures they go into.
        pub mod defaults {
            #[allow(unused_imports)]
            use super::*;
            $($(
                pub fn $field() -> $ty {
                    $default
                }
            )?)*
        }

        impl Settings {
            /// These settings, with `base` filling what they leave unset.
            pub fn over(self, base: Settings) -> Settings {
                let mut given = base.given;
                for (name, from) in self.given {
                    given.insert(name, from);
                }
                Settings {
                    $($field: self.$field.or(base.$field),)*
                    $($tfield: self.$tfield.or(base.$tfield),)*
                    given,
                }
            }

            /// Put every value that is set where it goes, in table order.
            pub(super) fn apply(&self, built: &mut Built) {
                $(if let Some($v) = self.$field.clone() {
                    let $b = &mut *built;
                    $apply;
                })*
                $(if let Some(v) = self.$tfield.clone() {
                    built.config.tune.$tfield = v;
                })*
            }

            /// Take the value of `flag` (`text` is empty for a switch). `None`:
            /// no such flag.
            pub(super) fn set_flag(&mut self, flag: &str, text: &str) -> Option<Result<(), String>> {
                let (name, result) = match flag {
                    $($flag => (stringify!($field), super::flags::$kind(&mut self.$field, text, $check)),)*
                    $($tflag => (stringify!($tfield), super::flags::$tkind(&mut self.$tfield, text, $tcheck)),)*
                    _ => return None,
                };
                self.given.insert(name, Given::Flag);
                Some(result)
            }

            /// Read the value of file key `key` (a path like `timeouts.connect`;
            /// `shown` is how messages name it). False: no such key.
            pub(super) fn set_key(&mut self, walk: &mut Walk<'_>, key: &str, shown: &str, v: &Value<'_>) -> bool {
                let name = match key {
                    $($key => {
                        self.$field = super::file::$kind(walk, v, shown, $check);
                        stringify!($field)
                    })*
                    $($tkey => {
                        self.$tfield = super::file::$tkind(walk, v, shown, $tcheck);
                        stringify!($tfield)
                    })*
                    _ => return false,
                };
                self.given.insert(name, Given::File(walk.line(v)));
                true
            }
        }

        /// The restart-only settings whose value differs between `new` and
        /// `old`: each is set back to its running value in `new`, and returned.
        pub fn keep_restart_only(new: &mut ProxyConfig, old: &ProxyConfig) -> Vec<&'static Setting> {
            let mut kept = Vec::new();
            $($(if differs!(new, old, $keep $(, |$rc| $by)?) {
                kept.push(setting(stringify!($field)));
                new.$keep = old.$keep.clone();
            })?)*
            $($(
                let _ = stringify!($trestart);
                if new.tune.$tfield != old.tune.$tfield {
                    kept.push(setting(stringify!($tfield)));
                    new.tune.$tfield = old.tune.$tfield.clone();
                }
            )?)*
            kept
        }
    };
}

settings! {
    mapped {
        /// address to listen on, as host:port, followed by ,tls for HTTPS
        /// (see --tls-cert) and/or ,proxy-protocol for clients that come
        /// through a balancer sending a PROXY protocol header (v1 or v2, see
        /// --proxy-protocol-from); repeatable
        listen: Vec<Listen> = list(values::listen),
            flag "--listen", key "listen",
            default vec![Listen::plain(SocketAddr::from(([127, 0, 0, 1], 8080)))],
            into |b, v| b.config.listen = v, restart listen;
        /// the peers allowed to connect to a ,proxy-protocol listener, as
        /// CIDR[,CIDR...] (10.0.0.0/8,2001:db8::/32, or an address): the
        /// balancers whose PROXY headers are believed; anyone else is closed
        proxy_protocol_from: Vec<Vec<Cidr>> = list(values::networks),
            flag "--proxy-protocol-from", key "proxy_protocol_from",
            into |b, v| b.config.proxy_protocol_from = v.into_iter().flatten().collect();
        /// a PEM file with the certificate chain (leaf first) of the TLS
        /// listeners; repeat it with --tls-key for more certificates, chosen by
        /// the name the client asks for (SNI; the first is the default). Read
        /// again on every reload
        tls_cert: Vec<PathBuf> = list(values::file),
            flag "--tls-cert", key "tls.cert",
            into |b, v| b.config.tls = v.into_iter().map(|cert| crate::tls::CertFiles {
                cert,
                key: PathBuf::new(),
            }).collect();
        /// the PEM file with the private key of the --tls-cert given in the same
        /// place (the first key for the first certificate, and so on)
        tls_key: Vec<PathBuf> = list(values::file),
            flag "--tls-key", key "tls.key",
            into |b, v| for (files, key) in b.config.tls.iter_mut().zip(v) {
                files.key = key;
            };
        /// a backend, as host:port, http://host:port or https://host:port (TLS,
        /// its certificate verified for host), optionally followed by ,weight=N
        /// (1 to 1000, for weighted-round-robin and hash) and ,send-proxy or
        /// ,send-proxy-v2 (a PROXY protocol header naming the client opens each
        /// connection to it); repeat for more
        backend: Vec<Backend> = backends(values::backend),
            flag "--backend", key "backend",
            into |b, v| b.config.backends = v;
        /// members from the SRV records of this name (_service._tcp.example.org):
        /// each target's addresses, with its port and weight (the lowest
        /// priority present), found again every --resolve-interval; repeatable
        backend_srv: Vec<String> = list(values::srv_name),
            flag "--backend-srv", key "backend_srv",
            into |b, v| b.config.backend_srv = v, restart backend_srv;
        /// find backends given by name again this often (sooner when a record's
        /// TTL says so, not under 1s): each address of a name is a member, and
        /// members that disappear drain as a reload removes them (default with
        /// --backend-srv: 30s; else names are resolved at start and on reload)
        resolve_interval: Duration = duration(values::duration),
            flag "--resolve-interval", key "resolve_interval",
            into |b, v| b.config.resolve_interval = Some(v), restart resolve_interval;
        /// the DNS server to ask (host:port), for A, AAAA and SRV records with
        /// their TTLs; default: getaddrinfo for addresses, and the first
        /// nameserver of /etc/resolv.conf for SRV
        dns_server: SocketAddr = text(values::address),
            flag "--dns-server", key "dns_server",
            into |b, v| b.config.dns_server = Some(v), restart dns_server;
        /// a PEM file of the certificate authorities whose certificates
        /// https:// backends must chain to (default: the system's roots); read
        /// again on every reload
        backend_ca: PathBuf = text(values::file),
            flag "--backend-ca", key "backend_ca",
            into |b, v| b.config.backend_ca = Some(v);
        /// worker threads, one event loop and one listening socket each; the
        /// default is one per CPU core, counted at start
        workers: usize = int(values::workers),
            flag "--workers", key "workers", default available_cores(),
            into |b, v| b.config.workers = v, restart workers;
        /// how to choose a backend: round-robin, weighted-round-robin,
        /// least-connections, power-of-two, or hash
        algorithm: Algorithm = text(values::algorithm),
            flag "--algorithm", key "algorithm", default Algorithm::RoundRobin,
            into |b, v| b.config.algorithm = v;
        /// with --algorithm hash: hash this request header's value (requests
        /// without it, or without this setting, hash the client address)
        hash_header: String = text(values::header_name),
            flag "--hash-header", key "hash_header",
            into |b, v| b.config.hash_header = Some(v);
        /// serve /metrics (Prometheus), /status (JSON) and /healthz on this
        /// address (off unless set)
        admin: SocketAddr = text(values::address),
            flag "--admin", key "admin",
            into |b, v| b.config.admin = Some(v), restart admin;
        /// a file holding the token (16 or more printable characters) that admin
        /// requests which steer backends (drain, disable, enable, weight) must
        /// send as "Authorization: Bearer TOKEN"; they are refused without it
        admin_token: Secret = text(values::admin_token),
            flag "--admin-token", key "admin_token",
            into |b, v| b.config.admin_token = Some(v);
        /// send the backend's host:port as Host instead of the client's Host
        rewrite_host: bool = switch(values::on),
            flag "--rewrite-host", key "rewrite_host", default false,
            into |b, v| b.config.rewrite_host = v, restart rewrite_host;
        /// pin worker i to core i (of the cores this process may use)
        pin: bool = switch(values::on),
            flag "--pin", key "pin", default false,
            into |b, v| b.config.pin = v, restart pin;
        /// after handling events, poll without sleeping for this many
        /// microseconds (0: off; at most 10000)
        busy_poll: Duration = int(values::busy_poll),
            flag "--busy-poll", key "busy_poll", default Duration::ZERO,
            into |b, v| b.config.busy_poll = v, restart busy_poll;
        /// move a request to another backend after a connect failure, or
        /// (idempotent methods only) after the backend dropped it unanswered, at
        /// most this many times
        retries: u32 = int(values::retries),
            flag "--retries", key "retries", default 2,
            into |b, v| b.config.retries = v;
        /// what to log on stderr: error, warn, info (start-up, backend state
        /// changes, shutdown) or debug (also each request moved to another backend)
        log_level: Level = text(values::log_level),
            flag "--log-level", key "log_level", default Level::Info,
            into |b, v| b.log_level = v;
        /// write one line per request to this file (appended), or - for
        /// standard output (off unless set)
        access_log: String = text(values::access_log),
            flag "--access-log", key "access_log",
            into |b, v| b.config.access_log = Some(access::Config {
                path: (v != "-").then(|| v.into()),
                format: access::Format::Combined,
            }), restart access_log by |c| c.access_log.as_ref().map(|a| a.path.clone());
        /// access log format: combined (with backend and timings appended) or json
        access_log_format: access::Format = text(values::access_log_format),
            flag "--access-log-format", key "access_log_format",
            default access::Format::Combined,
            into |b, v| if let Some(log) = b.config.access_log.as_mut() {
                log.format = v;
            }, restart access_log by |c| c.access_log.as_ref().map(|a| a.format);
        /// a Unix socket for zero-downtime restarts: take the listeners of the
        /// corelb serving there (which then drains and exits), and serve the next one
        handover: PathBuf = text(values::handover),
            flag "--handover", key "handover",
            into |b, v| b.handover = Some(v);
        /// check each backend with GET PATH; 2xx and 3xx pass (off unless set)
        health_path: String = text(values::health_path),
            flag "--health-path", key "health.path",
            into |b, v| b.config.health_check = Some(CheckConfig::new(v));
        /// time between health checks of a backend
        health_interval: Duration = duration(values::duration),
            flag "--health-interval", key "health.interval",
            default Duration::from_secs(2),
            into |b, v| if let Some(check) = b.config.health_check.as_mut() {
                check.interval = v;
            };
        /// a health check not answered within this fails
        health_timeout: Duration = duration(values::duration),
            flag "--health-timeout", key "health.timeout", default Duration::from_secs(1),
            into |b, v| if let Some(check) = b.config.health_check.as_mut() {
                check.timeout = v;
            };
        /// consecutive passing checks that bring a backend back
        rise: u32 = int(values::streak),
            flag "--rise", key "health.rise", default 2,
            into |b, v| if let Some(check) = b.config.health_check.as_mut() {
                check.rise = v;
            };
        /// consecutive failing checks that take a backend out
        fall: u32 = int(values::streak),
            flag "--fall", key "health.fall", default 3,
            into |b, v| if let Some(check) = b.config.health_check.as_mut() {
                check.fall = v;
            };
        /// take a backend out after this many connect failures, resets or
        /// timeouts within --fail-window (0 never takes one out)
        max_fails: u32 = int(values::max_fails),
            flag "--max-fails", key "health.max_fails", default 3,
            into |b, v| b.config.passive.max_fails = v;
        /// the window for --max-fails, and how long a backend then stays out
        /// before it is tried again
        fail_window: Duration = duration(values::duration),
            flag "--fail-window", key "health.fail_window", default Duration::from_secs(10),
            into |b, v| b.config.passive.window = v;
        /// close an idle keep-alive client after this long (durations are like
        /// 500ms, 30s, 2m)
        idle_timeout: Duration = duration(values::duration),
            flag "--idle-timeout", key "timeouts.idle", default Duration::from_secs(60),
            into |b, v| b.config.timeouts.idle = v;
        /// answer 408 if a request head is not complete this long after its
        /// first byte
        header_timeout: Duration = duration(values::duration),
            flag "--header-timeout", key "timeouts.header", default Duration::from_secs(10),
            into |b, v| b.config.timeouts.header = v;
        /// give up on a backend connection not established within this: try the
        /// next backend, or answer 502
        connect_timeout: Duration = duration(values::duration),
            flag "--connect-timeout", key "timeouts.connect", default Duration::from_secs(3),
            into |b, v| b.config.timeouts.connect = v;
        /// answer 504 when a backend has not begun its response this long after
        /// the last progress
        response_timeout: Duration = duration(values::duration),
            flag "--response-timeout", key "timeouts.response",
            default Duration::from_secs(60),
            into |b, v| b.config.timeouts.response = v;
        /// close a connection whose body (either way) or tunnel moves no byte for
        /// this long
        body_timeout: Duration = duration(values::duration),
            flag "--body-timeout", key "timeouts.body", default Duration::from_secs(60),
            into |b, v| b.config.timeouts.body = v;
        /// close idle pooled backend connections after this long
        upstream_idle_timeout: Duration = duration(values::duration),
            flag "--upstream-idle-timeout", key "timeouts.upstream_idle",
            default Duration::from_secs(30),
            into |b, v| b.config.timeouts.upstream_idle = v;
        /// on SIGINT/SIGTERM, let exchanges in flight finish for this long
        shutdown_timeout: Duration = duration(values::duration),
            flag "--shutdown-timeout", key "timeouts.shutdown",
            default Duration::from_secs(30),
            into |b, v| b.config.timeouts.shutdown = v;
        /// most client connections per worker; at the limit new ones wait in the
        /// listen backlog (0: no limit)
        max_connections: usize = int(values::connections),
            flag "--max-connections", key "limits.max_connections", default 0,
            into |b, v| b.config.max_connections = v;
        /// largest request head accepted, in bytes; a larger one gets 431
        max_header_bytes: usize = int(values::max_header_bytes),
            flag "--max-header-bytes", key "limits.max_header_bytes", default 16 * 1024,
            into |b, v| b.config.max_header_bytes = v, restart max_header_bytes;
        /// largest request body, in bytes; a larger one gets 413 (0: no limit)
        max_body_bytes: u64 = int(values::bytes),
            flag "--max-body-bytes", key "limits.max_body_bytes", default 0,
            into |b, v| b.config.max_body_bytes = v;
    }
    tunables {
        /// most idle connections each worker keeps open to one backend for reuse
        /// (0: none); more are closed when their exchange ends
        max_idle_per_backend: usize = int(values::connections),
            flag "--max-idle-per-backend", key "limits.max_idle_per_backend", default 1024;
        /// send a request body to the backend as it arrives; by default up to
        /// one request buffer of it is read first, so a slow uploader holds no
        /// backend connection until its body is in or fills the buffer
        stream_uploads: bool = switch(values::on),
            flag "--stream-uploads", key "limits.stream_uploads", default false;
        /// a backend coming into service (back from down, drain or disable, or
        /// added by a reload) gets a share of its requests that grows from 1/64
        /// to all over this long; every algorithm honours it (0: off)
        slow_start: Duration = duration(values::duration_or_off),
            flag "--slow-start", key "health.slow_start", default Duration::ZERO;
        /// move the rest of a large response body (Content-Length, 64 KiB or
        /// more to come) backend -> pipe -> client with splice(2) instead of
        /// copying it through the buffer; off by default, as copying cost half
        /// the CPU where it was measured (see the README's Performance)
        splice: bool = switch(values::on),
            flag "--splice", key "splice", default false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::flags::Serve;
    use argh::FromArgs;

    /// A valid value for each setting, as its flag takes it.
    fn sample(s: &Setting) -> String {
        match s.name {
            "backend" => "127.0.0.1:9001".into(),
            "hash_header" => "X-User".into(),
            "admin" => "127.0.0.1:9900".into(),
            "admin_token" => {
                let path =
                    std::env::temp_dir().join(format!("corelb-token-{}", std::process::id()));
                std::fs::write(&path, "0123456789abcdef-token\n").unwrap();
                path.display().to_string()
            }
            "access_log" => "-".into(),
            "handover" => "/run/corelb.sock".into(),
            "health_path" => "/health".into(),
            "tls_cert" => "/etc/corelb/cert.pem".into(),
            "backend_ca" => "/etc/corelb/backend-ca.pem".into(),
            "proxy_protocol_from" => "10.0.0.0/8".into(),
            "backend_srv" => "_http._tcp.app.test".into(),
            "resolve_interval" => "5s".into(),
            "dns_server" => "127.0.0.1:53".into(),
            "tls_key" => "/etc/corelb/key.pem".into(),
            _ => (s.default)().unwrap_or_else(|| panic!("{}: no sample", s.name)),
        }
    }

    /// `value` as the config file writes it at `s.key`.
    fn file_line(s: &Setting, value: &str) -> String {
        let (section, key) = match s.key.rsplit_once('.') {
            Some((section, key)) => (format!("[{section}]\n"), key),
            None => (String::new(), s.key),
        };
        let written = match s.kind {
            "int" => value.to_string(),
            "switch" => "true".to_string(),
            "list" => format!("[{value:?}]"),
            "backends" => return format!("[[{key}]]\naddress = {value:?}\n"),
            _ => format!("{value:?}"),
        };
        format!("{section}{key} = {written}\n")
    }

    #[test]
    fn every_flag_has_a_file_key_and_both_set_the_same_value() {
        let mut flags = std::collections::BTreeSet::new();
        let mut keys = std::collections::BTreeSet::new();
        for s in TABLE {
            assert!(flags.insert(s.flag), "{} twice", s.flag);
            assert!(keys.insert(s.key), "{} twice", s.key);
            assert_eq!(
                s.flag,
                format!("--{}", s.name.replace('_', "-")),
                "{}",
                s.name
            );
            assert!(!s.help.trim().is_empty(), "{} has no help", s.name);
            let value = sample(s);
            let args: Vec<&str> = if s.switch() {
                vec![s.flag]
            } else {
                vec![s.flag, &value]
            };
            let mut by_flag = Serve::from_args(&["corelb", "serve"], &args)
                .unwrap_or_else(|e| panic!("{args:?}: {}", e.output))
                .settings;
            let text = file_line(s, &value);
            let mut by_file =
                crate::config::parse_file(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(by_flag.given.get(s.name), Some(&Given::Flag), "{}", s.name);
            // The line of the value: the last line, but for [[backend]], whose
            // value (the array of tables) begins at its first.
            let line = if s.kind == "backends" {
                1
            } else {
                text.lines().count()
            };
            assert_eq!(
                by_file.given.get(s.name),
                Some(&Given::File(line)),
                "{}",
                s.name
            );
            assert_eq!(by_flag.given.len(), 1, "{}: {:?}", s.name, by_flag.given);
            by_flag.given.clear();
            by_file.given.clear();
            assert_ne!(by_flag, Settings::default(), "{} set nothing", s.flag);
            assert_eq!(by_flag, by_file, "{} and {} differ", s.flag, s.key);
        }
        assert_eq!(flags.len(), TABLE.len());
    }

    #[test]
    fn a_reload_keeps_exactly_the_restart_only_settings() {
        let base = ProxyConfig::new(vec!["127.0.0.1:1".parse().unwrap()], Vec::new());
        let mut next = base.clone();
        next.workers += 1;
        next.retries += 1;
        next.max_header_bytes *= 2;
        let kept: Vec<&str> = keep_restart_only(&mut next, &base)
            .iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(kept, ["workers", "max_header_bytes"]);
        assert_eq!(next.workers, base.workers);
        assert_eq!(next.max_header_bytes, base.max_header_bytes);
        assert_eq!(next.retries, base.retries + 1, "a reload applies retries");
        // Two settings share the access log's place: each is told apart.
        let mut logged = base.clone();
        logged.access_log = Some(access::Config {
            path: None,
            format: access::Format::Combined,
        });
        let mut json = logged.clone();
        json.access_log.as_mut().unwrap().format = access::Format::Json;
        let kept: Vec<&str> = keep_restart_only(&mut json, &logged)
            .iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(kept, ["access_log_format"]);
        assert_eq!(json, logged);
        let restart: Vec<&str> = TABLE.iter().filter(|s| s.restart).map(|s| s.name).collect();
        assert_eq!(
            restart,
            [
                "listen",
                "backend_srv",
                "resolve_interval",
                "dns_server",
                "workers",
                "admin",
                "rewrite_host",
                "pin",
                "busy_poll",
                "access_log",
                "access_log_format",
                "max_header_bytes"
            ]
        );
    }

    #[test]
    fn defaults_are_the_ones_the_constructors_use() {
        let c = ProxyConfig::new(Vec::new(), Vec::new());
        assert_eq!(c.timeouts.connect, defaults::connect_timeout());
        assert_eq!(c.retries, defaults::retries());
        assert_eq!(c.passive.max_fails, defaults::max_fails());
        let check = CheckConfig::new("/".into());
        assert_eq!(
            (check.rise, check.fall),
            (defaults::rise(), defaults::fall())
        );
        assert_eq!(
            (setting("connect_timeout").default)().as_deref(),
            Some("3s")
        );
        assert_eq!((setting("admin").default)(), None, "off unless set");
    }
}
