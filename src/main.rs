//! The `corelb` command line: `serve`, `backend` and `demo`.
//!
//! Bad input never panics: every problem is one line on stderr and exit code 2.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argh::FromArgs;
use corelb::config::{self, DEFAULT_MAX_HEADER_BYTES};
use corelb::demo::Demo;
use corelb::handover;
use corelb::log;
use corelb::log::Level;
use corelb::proxy::WorkerCounts;
use corelb::{Origin, Proxy, ProxyConfig};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

#[derive(FromArgs)]
/// corelb: a thread-per-core HTTP/1.1 load balancer.
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Serve(Box<Serve>),
    Backend(BackendCmd),
    Demo(DemoCmd),
}

#[derive(FromArgs)]
/// Balance HTTP/1.1 requests over backends (round-robin unless --algorithm).
#[argh(subcommand, name = "serve")]
struct Serve {
    /// a backend, as host:port or http://host:port, optionally followed by
    /// ,weight=N (1 to 1000, for weighted-round-robin and hash); repeat for more
    #[argh(option)]
    backend: Vec<String>,
    /// address to listen on, as host:port; repeatable (default 127.0.0.1:8080)
    #[argh(option)]
    listen: Vec<String>,
    /// worker threads, one event loop and one listening socket each (default: cores)
    #[argh(option)]
    workers: Option<usize>,
    /// largest request head accepted, in bytes; a larger one gets 431 (default 16384)
    #[argh(option, default = "DEFAULT_MAX_HEADER_BYTES")]
    max_header_bytes: usize,
    /// send the backend's host:port as Host instead of the client's Host
    #[argh(switch)]
    rewrite_host: bool,
    /// pin worker i to core i (of the cores this process may use)
    #[argh(switch)]
    pin: bool,
    /// after handling events, poll without sleeping for this many microseconds
    /// (default 50; 0 disables; at most 10000)
    #[argh(option, default = "config::DEFAULT_BUSY_POLL_MICROS")]
    busy_poll: u64,
    /// close an idle keep-alive client after this long (default 60s; durations
    /// are like 500ms, 30s, 2m)
    #[argh(option, from_str_fn(config::parse_duration))]
    idle_timeout: Option<Duration>,
    /// answer 408 if a request head is not complete this long after its first
    /// byte (default 10s)
    #[argh(option, from_str_fn(config::parse_duration))]
    header_timeout: Option<Duration>,
    /// give up on a backend connection not established within this: try the
    /// next backend, or answer 502 (default 3s)
    #[argh(option, from_str_fn(config::parse_duration))]
    connect_timeout: Option<Duration>,
    /// answer 504 when a backend has not begun its response this long after the
    /// last progress (default 60s)
    #[argh(option, from_str_fn(config::parse_duration))]
    response_timeout: Option<Duration>,
    /// close a connection whose body (either way) or tunnel moves no byte for this
    /// long (default 60s)
    #[argh(option, from_str_fn(config::parse_duration))]
    body_timeout: Option<Duration>,
    /// close idle pooled backend connections after this long (default 30s)
    #[argh(option, from_str_fn(config::parse_duration))]
    upstream_idle_timeout: Option<Duration>,
    /// on SIGINT/SIGTERM, let exchanges in flight finish for this long (default 30s)
    #[argh(option, from_str_fn(config::parse_duration))]
    shutdown_timeout: Option<Duration>,
    /// move a request to another backend after a connect failure, or (idempotent
    /// methods only) after the backend dropped it unanswered, at most this many
    /// times (default 2)
    #[argh(option, default = "config::DEFAULT_RETRIES")]
    retries: u32,
    /// take a backend out after this many connect failures, resets or timeouts
    /// within --fail-window (default 3; 0 never takes one out)
    #[argh(option, default = "3")]
    max_fails: u32,
    /// the window for --max-fails, and how long a backend then stays out before it
    /// is tried again (default 10s)
    #[argh(option, from_str_fn(config::parse_duration))]
    fail_window: Option<Duration>,
    /// check each backend with GET PATH; 2xx and 3xx pass (off when absent)
    #[argh(option)]
    health_path: Option<String>,
    /// time between health checks of a backend (default 2s)
    #[argh(option, from_str_fn(config::parse_duration))]
    health_interval: Option<Duration>,
    /// a health check not answered within this fails (default 1s)
    #[argh(option, from_str_fn(config::parse_duration))]
    health_timeout: Option<Duration>,
    /// consecutive passing checks that bring a backend back (default 2)
    #[argh(option, default = "2")]
    rise: u32,
    /// consecutive failing checks that take a backend out (default 3)
    #[argh(option, default = "3")]
    fall: u32,
    /// most client connections per worker; at the limit new ones wait in the
    /// listen backlog (default 0: no limit)
    #[argh(option, default = "0")]
    max_connections: usize,
    /// largest request body, in bytes; a larger one gets 413 (default 0: no limit)
    #[argh(option, default = "0")]
    max_body_bytes: u64,
    /// a Unix socket for zero-downtime restarts: take the listeners of the corelb
    /// serving there (which then drains and exits), and serve the next one
    #[argh(option)]
    handover: Option<String>,
    /// how to choose a backend: round-robin (default), weighted-round-robin,
    /// least-connections, power-of-two, or hash
    #[argh(option, default = "String::from(\"round-robin\")")]
    algorithm: String,
    /// write one line per request to this file (appended), or - for standard
    /// output (off by default)
    #[argh(option)]
    access_log: Option<String>,
    /// access log format: combined (default; with backend and timings appended)
    /// or json
    #[argh(option, default = "String::from(\"combined\")")]
    access_log_format: String,
    /// what to log on stderr: error, warn, info (default; start-up, backend state
    /// changes, shutdown) or debug (also each request moved to another backend)
    #[argh(option, default = "String::from(\"info\")")]
    log_level: String,
    /// serve /metrics (Prometheus), /status (JSON) and /healthz on this address
    /// (off by default)
    #[argh(option)]
    admin: Option<String>,
    /// with --algorithm hash: hash this request header's value (default: the
    /// client address; requests without the header use the address too)
    #[argh(option)]
    hash_header: Option<String>,
}

#[derive(FromArgs)]
/// Run the built-in HTTP/1.1 origin: / names it, /size/N sends N bytes,
/// /status/CODE answers CODE, /echo returns the request it received, /ws echoes
/// WebSocket frames.
#[argh(subcommand, name = "backend")]
struct BackendCmd {
    /// address to listen on, as host:port
    #[argh(option)]
    listen: String,
    /// body of the catch-all route (default: "backend ADDR")
    #[argh(option)]
    body: Option<String>,
    /// worker threads (default 1)
    #[argh(option, default = "1")]
    workers: usize,
}

#[derive(FromArgs)]
/// Start two built-in backends on loopback and the balancer in front of them.
#[argh(subcommand, name = "demo")]
struct DemoCmd {
    /// address for the balancer (default 127.0.0.1:8080)
    #[argh(option, default = "String::from(\"127.0.0.1:8080\")")]
    listen: String,
}

/// Print one line on stderr and return exit code 2.
fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("corelb: {msg}");
    ExitCode::from(2)
}

/// Raise the soft limit on open files to the hard limit (a stock login has 1024,
/// and every proxied connection takes two descriptors). Returns the limit now in
/// force, or 0 if it could not be read.
fn raise_open_files_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// SIGINT and SIGTERM, caught so that the first one stops gracefully, and SIGUSR1,
/// which asks for a report.
fn stop_signals() -> Result<Signals, String> {
    Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))
}

/// Print each worker's counters: an uneven SO_REUSEPORT spread shows here.
fn report_counts(counts: &[WorkerCounts]) {
    for (i, c) in counts.iter().enumerate() {
        eprintln!(
            "corelb: worker {i}: {} connections, {} requests, {} open",
            c.accepted, c.requests, c.open
        );
    }
}

/// Wait for a stop signal (running `report` on each SIGUSR1), then run `stop`,
/// which lets requests in flight finish. A second stop signal while it runs ends
/// the process at once, with exit code 1.
fn run_until_signal<R: Send + 'static>(
    mut signals: Signals,
    what: &str,
    report: impl Fn(),
    stop: impl FnOnce() -> R + Send + 'static,
) -> R {
    for signal in signals.forever() {
        if signal == SIGUSR1 {
            report();
        } else if signal == SIGHUP {
            // systemd's reload (ExecReload): without a configuration file there is
            // nothing to read again, and SIGHUP must not stop the process.
            log!(
                Level::Info,
                "{what}: SIGHUP: nothing to reload (the configuration is the command line)"
            );
        } else {
            break;
        }
    }
    log!(
        Level::Info,
        "{what}: stopping; requests in flight may finish (signal again to stop now)"
    );
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = done_tx.send(stop());
    });
    loop {
        if let Ok(result) = done_rx.recv_timeout(Duration::from_millis(50)) {
            return result;
        }
        if signals.pending().any(|s| s != SIGUSR1 && s != SIGHUP) {
            eprintln!("{what}: stopped without waiting for requests in flight");
            std::process::exit(1);
        }
    }
}

fn serve(args: Serve) -> ExitCode {
    if args.backend.is_empty() {
        return usage_error("--backend: at least one backend is required");
    }
    let workers = args.workers.unwrap_or_else(config::available_cores);
    if args.retries > config::MAX_RETRIES {
        return usage_error(format!(
            "--retries {}: at most {}",
            args.retries,
            config::MAX_RETRIES
        ));
    }
    if let Err(e) = config::check_limits(workers, args.max_header_bytes, args.busy_poll) {
        return usage_error(e);
    }
    let backends = match args
        .backend
        .iter()
        .map(|b| config::parse_backend(b))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(b) => b,
        Err(e) => return usage_error(e),
    };
    let listen_text = if args.listen.is_empty() {
        vec!["127.0.0.1:8080".to_string()]
    } else {
        args.listen
    };
    let listen = match listen_text
        .iter()
        .map(|l| config::parse_listen(l))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(l) => l,
        Err(e) => return usage_error(e),
    };
    let signals = match stop_signals() {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let open_files = raise_open_files_limit();
    let mut cfg = ProxyConfig::new(listen, backends);
    cfg.workers = workers;
    cfg.max_header_bytes = args.max_header_bytes;
    cfg.rewrite_host = args.rewrite_host;
    cfg.pin = args.pin;
    cfg.busy_poll = Duration::from_micros(args.busy_poll);
    cfg.retries = args.retries;
    cfg.algorithm = match corelb::select::Algorithm::parse(&args.algorithm) {
        Some(a) => a,
        None => {
            return usage_error(format!(
                "--algorithm {}: unknown; one of {}",
                args.algorithm,
                corelb::select::Algorithm::NAMES
            ));
        }
    };
    if let Some(name) = &args.hash_header {
        if cfg.algorithm != corelb::select::Algorithm::Hash {
            return usage_error(format!("--hash-header {name}: only with --algorithm hash"));
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return usage_error(format!("--hash-header {name}: not a header name"));
        }
    }
    cfg.hash_header = args.hash_header;
    match Level::parse(&args.log_level) {
        Some(level) => log::set_level(level),
        None => {
            return usage_error(format!(
                "--log-level {}: one of {}",
                args.log_level,
                Level::NAMES
            ));
        }
    }
    let Some(format) = corelb::access::Format::parse(&args.access_log_format) else {
        return usage_error(format!(
            "--access-log-format {}: combined or json",
            args.access_log_format
        ));
    };
    cfg.access_log = args.access_log.map(|path| corelb::access::Config {
        path: (path != "-").then(|| path.into()),
        format,
    });
    if let Some(admin) = &args.admin {
        match config::parse_listen(admin) {
            Ok(a) => cfg.admin = Some(a),
            Err(mut e) => {
                e.flag = "--admin";
                return usage_error(e);
            }
        }
    }
    if args.max_connections > config::MAX_CONNECTIONS {
        return usage_error(format!(
            "--max-connections {}: at most {} (0 for no limit)",
            args.max_connections,
            config::MAX_CONNECTIONS
        ));
    }
    cfg.max_connections = args.max_connections;
    cfg.max_body_bytes = args.max_body_bytes;
    cfg.health_check = match config::health_check(
        args.health_path,
        args.health_interval,
        args.health_timeout,
        args.rise,
        args.fall,
    ) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    cfg.passive.max_fails = args.max_fails;
    if let Some(w) = args.fail_window {
        cfg.passive.window = w;
    }
    let t = &mut cfg.timeouts;
    for (flag, field) in [
        (args.idle_timeout, &mut t.idle),
        (args.header_timeout, &mut t.header),
        (args.connect_timeout, &mut t.connect),
        (args.response_timeout, &mut t.response),
        (args.body_timeout, &mut t.body),
        (args.upstream_idle_timeout, &mut t.upstream_idle),
        (args.shutdown_timeout, &mut t.shutdown),
    ] {
        if let Some(d) = flag {
            *field = d;
        }
    }
    let handover_path = args.handover.map(std::path::PathBuf::from);
    let taken = match &handover_path {
        Some(path) => match handover::take(path) {
            Ok(t) => t,
            Err(e) => return usage_error(format!("--handover {}: {e}", path.display())),
        },
        None => None,
    };
    let started = match taken {
        None => Proxy::start(cfg.clone()).map(|p| (p, None)),
        Some(mut t) => {
            let listeners = std::mem::take(&mut t.listeners);
            Proxy::start_adopting(cfg.clone(), listeners).map(|(p, dropped)| {
                for addr in dropped {
                    log!(
                        Level::Warn,
                        "corelb: no longer listening on {addr} (not in --listen)"
                    );
                }
                (p, Some(t))
            })
        }
    };
    let (proxy, taken) = match started {
        Ok(p) => p,
        Err(e) => return usage_error(e),
    };
    if let Some(t) = taken {
        match t.ready() {
            Ok(()) => log!(
                Level::Info,
                "corelb: took over the listeners of the running corelb"
            ),
            Err(e) => log!(
                Level::Warn,
                "corelb: handover: the running corelb did not confirm ({e})"
            ),
        }
    }
    let offered: handover::Offered = Arc::new(Mutex::new(Some(proxy.listener_fds())));
    if let Some(path) = &handover_path
        && let Err(e) = handover::serve(path, Arc::clone(&offered), || {
            log!(Level::Info, "corelb: a successor took over the listeners");
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
        })
    {
        drop(proxy);
        return usage_error(format!("--handover {}: {e}", path.display()));
    }
    let addrs: Vec<String> = proxy.local_addrs().iter().map(|a| a.to_string()).collect();
    let backends: Vec<String> = cfg
        .backends
        .iter()
        .map(|b| {
            if b.weight == 1 {
                b.authority.clone()
            } else {
                format!("{} (weight {})", b.authority, b.weight)
            }
        })
        .collect();
    log!(
        Level::Info,
        "corelb: listening on {} with {} worker{} (open files limit {}), {} over {}",
        addrs.join(", "),
        workers,
        if workers == 1 { "" } else { "s" },
        open_files,
        cfg.algorithm,
        backends.join(", ")
    );
    let stats = proxy.stats();
    let counts = run_until_signal(
        signals,
        "corelb",
        || report_counts(&stats.counts()),
        move || {
            // From here on the listeners may close: a successor must not get them.
            *offered.lock().unwrap_or_else(|e| e.into_inner()) = None;
            proxy.shutdown()
        },
    );
    report_counts(&counts);
    ExitCode::SUCCESS
}

fn backend(args: BackendCmd) -> ExitCode {
    let listen = match config::parse_listen(&args.listen) {
        Ok(l) => l,
        Err(e) => return usage_error(e),
    };
    if args.workers == 0 {
        return usage_error("--workers 0: must be at least 1");
    }
    let signals = match stop_signals() {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    raise_open_files_limit();
    let origin = match Origin::start(listen, args.workers, args.body) {
        Ok(o) => o,
        Err(e) => return usage_error(e),
    };
    eprintln!("corelb backend: listening on {}", origin.local_addr());
    let (addr, requests) = (origin.local_addr(), origin.requests_counter());
    run_until_signal(
        signals,
        "corelb backend",
        || eprintln!("corelb backend: {addr}: {} requests", requests()),
        move || origin.shutdown(),
    );
    ExitCode::SUCCESS
}

fn demo(args: DemoCmd) -> ExitCode {
    let listen = match config::parse_listen(&args.listen) {
        Ok(l) => l,
        Err(e) => return usage_error(e),
    };
    let signals = match stop_signals() {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    raise_open_files_limit();
    let demo = match Demo::start(listen) {
        Ok(d) => d,
        Err(e) => return usage_error(e),
    };
    println!("{}", demo.banner());
    let stats = demo.proxy.stats();
    let requests = run_until_signal(
        signals,
        "corelb demo",
        || report_counts(&stats.counts()),
        move || demo.shutdown(),
    );
    println!("\nstopped after {requests} requests");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    // Lossy conversion: a non-UTF-8 argument must be an error message, not a panic.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["corelb"], strs.get(1..).unwrap_or(&[])) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    print!("{}", early.output);
                    ExitCode::SUCCESS
                }
                // argh's messages can span lines; the contract is one line.
                Err(()) => usage_error(
                    early
                        .output
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            };
        }
    };
    match cli.command {
        Command::Serve(a) => serve(*a),
        Command::Backend(a) => backend(a),
        Command::Demo(a) => demo(a),
    }
}
