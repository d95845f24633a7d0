//! Configuration: what a proxy is started with (`ProxyConfig` and the structures
//! it holds), and where it comes from. Every setting is described once, in
//! `table`; `flags` reads the command line and `file` the TOML config file
//! through it, each value through the one check in `values` for its kind. The
//! flags win over the file, the file over the defaults; checks that involve two
//! settings run once, on the merged result (`Settings::build`).

pub mod file;
pub mod flags;
pub mod table;
pub mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use file::{FileError, load_file, parse_file};
pub use table::{Given, Setting, Settings, TABLE, Tunables, defaults, setting};

use crate::log::Level;

/// Upper bound of `busy_poll`, in microseconds.
pub const MAX_BUSY_POLL_MICROS: u64 = 10_000;
/// Bounds for `max_header_bytes`: below 1 KiB real browsers fail, above 1 MiB a
/// single connection could pin too much memory.
pub const MIN_HEADER_BYTES: usize = 1024;
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Most `max_connections` accepted (per worker).
pub const MAX_CONNECTIONS: usize = 10_000_000;
/// Most `retries` accepted: more only repeats the same failures.
pub const MAX_RETRIES: u32 = 16;
/// How long a closing client may keep sending before it is closed anyway (not a
/// setting).
pub const LINGER: Duration = Duration::from_secs(5);

/// How often SRV records are asked for again when `--resolve-interval` is not
/// given.
pub const DEFAULT_SRV_INTERVAL: Duration = Duration::from_secs(30);

/// One backend of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Where to connect (resolved once at start).
    pub addr: SocketAddr,
    /// `host:port` as the operator wrote it, sent as Host with `rewrite_host`.
    pub authority: String,
    /// Relative share for weighted-round-robin and hash (1 to 1000; default 1).
    pub weight: u32,
    /// `https://`: TLS to this backend, its certificate verified for the host of
    /// `authority` (against `--backend-ca`, or the system's roots).
    pub tls: bool,
    /// Each new connection to it begins with a PROXY protocol header naming
    /// the client (`,send-proxy`, `,send-proxy-v2`).
    pub send_proxy: SendProxy,
    /// What logs, metrics and the admin endpoint call it when `authority` is
    /// not enough: one of the addresses a name resolved to is
    /// `name:port@address` (see `discovery`). `None`: its authority.
    pub label: Option<String>,
}

impl Backend {
    /// A plain backend at `addr`, weight 1, named by its address.
    pub fn new(addr: SocketAddr) -> Backend {
        Backend {
            addr,
            authority: addr.to_string(),
            weight: 1,
            tls: false,
            send_proxy: SendProxy::Off,
            label: None,
        }
    }

    /// Its name in logs, metrics and the admin endpoint.
    pub fn name(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.authority)
    }
}

pub use crate::proxy_protocol::SendProxy;

/// How long the proxy waits before giving up on a peer. The defaults (in the
/// table) follow common proxy practice (nginx, HAProxy).
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
            idle: defaults::idle_timeout(),
            header: defaults::header_timeout(),
            connect: defaults::connect_timeout(),
            response: defaults::response_timeout(),
            body: defaults::body_timeout(),
            linger: LINGER,
            upstream_idle: defaults::upstream_idle_timeout(),
            shutdown: defaults::shutdown_timeout(),
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

/// The balancing algorithms (`algorithm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    PowerOfTwo,
    Hash,
}

impl Algorithm {
    /// It spreads requests without regard to weights (only weighted-round-robin
    /// and hash use them).
    pub fn ignores_weights(self) -> bool {
        !matches!(self, Algorithm::WeightedRoundRobin | Algorithm::Hash)
    }

    pub const NAMES: &'static str =
        "round-robin, weighted-round-robin, least-connections, power-of-two, hash";

    pub fn parse(name: &str) -> Option<Algorithm> {
        Some(match name {
            "round-robin" => Algorithm::RoundRobin,
            "weighted-round-robin" => Algorithm::WeightedRoundRobin,
            "least-connections" => Algorithm::LeastConnections,
            "power-of-two" => Algorithm::PowerOfTwo,
            "hash" => Algorithm::Hash,
            _ => return None,
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::WeightedRoundRobin => "weighted-round-robin",
            Algorithm::LeastConnections => "least-connections",
            Algorithm::PowerOfTwo => "power-of-two",
            Algorithm::Hash => "hash",
        })
    }
}

/// Active health checks: `GET path` on each backend every `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend out.
    pub fall: u32,
}

impl CheckConfig {
    /// Checks of `path` with the default interval, timeout, rise and fall.
    pub fn new(path: String) -> CheckConfig {
        CheckConfig {
            path,
            interval: defaults::health_interval(),
            timeout: defaults::health_timeout(),
            rise: defaults::rise(),
            fall: defaults::fall(),
        }
    }
}

/// Passive health settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Passive {
    /// Failures within `window` that take a backend out (0: never).
    pub max_fails: u32,
    pub window: Duration,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            max_fails: defaults::max_fails(),
            window: defaults::fail_window(),
        }
    }
}

/// An address to listen on, whether its clients speak TLS, and whether each
/// connection opens with a PROXY protocol header (from a balancer in front).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub tls: bool,
    pub proxy_protocol: bool,
}

impl Listen {
    pub fn plain(addr: SocketAddr) -> Listen {
        Listen {
            addr,
            tls: false,
            proxy_protocol: false,
        }
    }
}

/// Everything a proxy needs to start.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Addresses to listen on; every worker binds each of them (SO_REUSEPORT).
    /// Port 0 is allowed here (tests): the first bind picks the port, the rest share it.
    pub listen: Vec<Listen>,
    /// Backends from the SRV records of these names (see `discovery`).
    pub backend_srv: Vec<String>,
    /// Find backends given by name (and SRV members) again this often.
    pub resolve_interval: Option<Duration>,
    /// The DNS server asked for A, AAAA and SRV records (else getaddrinfo for
    /// addresses and /etc/resolv.conf's first server for SRV).
    pub dns_server: Option<SocketAddr>,
    /// The peers a `proxy_protocol` listener accepts (their PROXY headers are
    /// believed); anyone else is closed at once.
    pub proxy_protocol_from: Vec<crate::proxy_protocol::Cidr>,
    /// The certificates of the TLS listeners (the first is the default; the
    /// others are chosen by SNI). Read at start and on every reload.
    pub tls: Vec<crate::tls::CertFiles>,
    /// The certificate authorities `https://` backends must chain to (a PEM
    /// file); the system's roots when `None`. Read at start and on every reload.
    pub backend_ca: Option<PathBuf>,
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
    pub passive: Passive,
    /// Log backend state changes to stderr.
    pub log_health: bool,
    /// Active health checks, when a path is given.
    pub health_check: Option<CheckConfig>,
    /// Most client connections per worker (0: no limit); at the limit a worker
    /// stops accepting and new connections wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request body accepted (0: no limit); larger ones get 413.
    pub max_body_bytes: u64,
    pub algorithm: Algorithm,
    /// For `hash`: the header whose value is the key (else the client address).
    pub hash_header: Option<String>,
    /// Where the admin endpoint listens (off when `None`).
    pub admin: Option<SocketAddr>,
    /// What admin requests that change state must carry (refused when `None`).
    pub admin_token: Option<values::Secret>,
    /// The access log (off when `None`).
    pub access_log: Option<crate::access::Config>,
    /// The settings read only where they are used (see `table`).
    pub tune: Tunables,
}

/// The settings a reload applies that differ between `new` and `old`, as the
/// config file names them (`algorithm`, `timeouts.connect`, `health.rise`):
/// what a reload's log line lists beside the backends.
pub fn changed_settings(new: &ProxyConfig, old: &ProxyConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut note = |differs: bool, name: &str| {
        if differs {
            out.push(setting(name).key);
        }
    };
    note(new.algorithm != old.algorithm, "algorithm");
    note(new.hash_header != old.hash_header, "hash_header");
    note(new.retries != old.retries, "retries");
    let (t, o) = (&new.timeouts, &old.timeouts);
    note(t.idle != o.idle, "idle_timeout");
    note(t.header != o.header, "header_timeout");
    note(t.connect != o.connect, "connect_timeout");
    note(t.response != o.response, "response_timeout");
    note(t.body != o.body, "body_timeout");
    note(t.upstream_idle != o.upstream_idle, "upstream_idle_timeout");
    note(t.shutdown != o.shutdown, "shutdown_timeout");
    note(new.passive.max_fails != old.passive.max_fails, "max_fails");
    note(new.passive.window != old.passive.window, "fail_window");
    let (h, g) = (new.health_check.as_ref(), old.health_check.as_ref());
    note(h.map(|c| &c.path) != g.map(|c| &c.path), "health_path");
    if let (Some(h), Some(g)) = (h, g) {
        note(h.interval != g.interval, "health_interval");
        note(h.timeout != g.timeout, "health_timeout");
        note(h.rise != g.rise, "rise");
        note(h.fall != g.fall, "fall");
    }
    note(
        new.max_connections != old.max_connections,
        "max_connections",
    );
    note(new.max_body_bytes != old.max_body_bytes, "max_body_bytes");
    note(new.admin_token != old.admin_token, "admin_token");
    note(new.backend_ca != old.backend_ca, "backend_ca");
    note(
        new.proxy_protocol_from != old.proxy_protocol_from,
        "proxy_protocol_from",
    );
    note(new.tls != old.tls, "tls_cert");
    out.extend(
        table::changed_tunables(&new.tune, &old.tune)
            .into_iter()
            .map(|s| s.key),
    );
    out
}

impl ProxyConfig {
    /// A configuration with the table's defaults.
    pub fn new(listen: Vec<SocketAddr>, backends: Vec<Backend>) -> ProxyConfig {
        ProxyConfig {
            listen: listen.into_iter().map(Listen::plain).collect(),
            proxy_protocol_from: Vec::new(),
            backend_srv: Vec::new(),
            resolve_interval: None,
            dns_server: None,
            tls: Vec::new(),
            backend_ca: None,
            backends,
            workers: defaults::workers(),
            max_header_bytes: defaults::max_header_bytes(),
            rewrite_host: defaults::rewrite_host(),
            pin: defaults::pin(),
            busy_poll: defaults::busy_poll(),
            timeouts: Timeouts::default(),
            retries: defaults::retries(),
            passive: Passive::default(),
            log_health: true,
            health_check: None,
            max_connections: defaults::max_connections(),
            max_body_bytes: defaults::max_body_bytes(),
            algorithm: defaults::algorithm(),
            hash_header: None,
            admin: None,
            admin_token: None,
            access_log: None,
            tune: Tunables::default(),
        }
    }
}

impl ProxyConfig {
    /// The listening addresses, in order.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen.iter().map(|l| l.addr).collect()
    }

    /// Some listener speaks TLS.
    pub fn serves_tls(&self) -> bool {
        self.listen.iter().any(|l| l.tls)
    }

    /// Some backend is reached over TLS.
    pub fn reaches_tls(&self) -> bool {
        self.backends.iter().any(|b| b.tls)
    }
}

/// Number of cores this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What the merged settings give: the proxy's configuration and the process's
/// own settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Built {
    pub config: ProxyConfig,
    pub log_level: Level,
    pub handover: Option<PathBuf>,
    /// Where each value that was set came from (see `Built::spelled`).
    pub given: BTreeMap<&'static str, Given>,
}

/// How a message names setting `name`: the way it was given (`--flag`, or the
/// file key with its line), or both spellings when it was not given.
fn spelled(given: &BTreeMap<&'static str, Given>, name: &str) -> String {
    let s = setting(name);
    match given.get(s.name) {
        Some(Given::Flag) => s.flag.to_string(),
        Some(Given::File(line)) => format!("{} (line {line})", s.key),
        None => format!("{} ({})", s.flag, s.key),
    }
}

impl Built {
    /// Setting `name` as the user gave it (see `Settings::spelled`).
    pub fn spelled(&self, name: &str) -> String {
        spelled(&self.given, name)
    }
}

impl Settings {
    /// How a message names setting `name`: the way it was given (`--flag`, or
    /// the file key with its line), or both spellings when it was not given.
    pub fn spelled(&self, name: &str) -> String {
        spelled(&self.given, name)
    }

    /// The configuration: the defaults, with every value that is set put in
    /// place, after the checks that involve more than one setting.
    pub fn build(&self) -> Result<Built, String> {
        if self.backend.as_ref().is_none_or(|b| b.is_empty())
            && self.backend_srv.as_ref().is_none_or(|b| b.is_empty())
        {
            return Err(
                "no backend: give --backend or --backend-srv, or [[backend]] tables in the config file".into(),
            );
        }
        let mut built = Built {
            config: ProxyConfig::new(Vec::new(), Vec::new()),
            log_level: defaults::log_level(),
            handover: None,
            given: self.given.clone(),
        };
        let (certs, keys) = (
            self.tls_cert.as_ref().map_or(0, Vec::len),
            self.tls_key.as_ref().map_or(0, Vec::len),
        );
        if certs != keys {
            return Err(format!(
                "{} and {} go in pairs, one key per certificate: {certs} certificate(s), {keys} key(s)",
                self.spelled("tls_cert"),
                self.spelled("tls_key"),
            ));
        }
        built.config.listen = defaults::listen();
        self.apply(&mut built);
        if !built.config.backend_srv.is_empty() && built.config.resolve_interval.is_none() {
            built.config.resolve_interval = Some(DEFAULT_SRV_INTERVAL);
        }
        // Backends given by name: their first address now (getaddrinfo), unless
        // a DNS server of our own finds them all (`discovery`) before the start.
        let own_dns = built.config.dns_server.is_some() && built.config.resolve_interval.is_some();
        for b in &mut built.config.backends {
            if b.addr.ip().is_unspecified() && !own_dns {
                let (host, port) = b.authority.rsplit_once(':').unwrap_or((&b.authority, "0"));
                let port = port.parse().unwrap_or(b.addr.port());
                b.addr = values::resolve(host.trim_start_matches('[').trim_end_matches(']'), port)
                    .map_err(|e| format!("{} {}: {e}", self.spelled("backend"), b.authority))?;
            }
        }
        let cfg = &built.config;
        if cfg.serves_tls() && cfg.tls.is_empty() {
            return Err(format!(
                "{}: a TLS listener needs a certificate: give {} and {}",
                self.spelled("listen"),
                setting("tls_cert").flag,
                setting("tls_key").flag,
            ));
        }
        if cfg.listen.iter().any(|l| l.proxy_protocol) && cfg.proxy_protocol_from.is_empty() {
            return Err(format!(
                "{}: a ,proxy-protocol listener needs {} with the balancers allowed to send the header (its addresses replace the clients'; from anyone else they would be forged)",
                self.spelled("listen"),
                setting("proxy_protocol_from").flag,
            ));
        }
        if !cfg.proxy_protocol_from.is_empty() && !cfg.listen.iter().any(|l| l.proxy_protocol) {
            return Err(format!(
                "{}: no listener takes PROXY headers; add ,proxy-protocol to a listen address (--listen 0.0.0.0:80,proxy-protocol)",
                self.spelled("proxy_protocol_from"),
            ));
        }
        if !cfg.tls.is_empty() && !cfg.serves_tls() {
            return Err(format!(
                "{}: no listener serves it; add ,tls to a listen address (--listen 0.0.0.0:443,tls)",
                self.spelled("tls_cert"),
            ));
        }
        if let Some(name) = &cfg.hash_header
            && cfg.algorithm != Algorithm::Hash
        {
            return Err(format!(
                "{} {name}: only with algorithm hash",
                self.spelled("hash_header")
            ));
        }
        if let Some(check) = &cfg.health_check
            && check.timeout > check.interval
        {
            return Err(format!(
                "{} {}: must not be longer than the interval ({})",
                self.spelled("health_timeout"),
                values::Show::show(&check.timeout),
                values::Show::show(&check.interval),
            ));
        }
        Ok(built)
    }
}
