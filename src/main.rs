//! The `corelb` command line: `serve`, `backend` and `demo`.
//!
//! Bad input never panics: every problem is one line on stderr and exit code 2.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argh::FromArgs;
use std::path::{Path, PathBuf};

use corelb::config;
use corelb::log;
use corelb::log::Level;
use corelb::origin::demo::Demo;
use corelb::proxy::WorkerCounts;
use corelb::runtime::handover;
use corelb::settings::{self, Built, FileError, Settings};
use corelb::{Origin, Proxy};
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
    CheckConfig(CheckConfigCmd),
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
    workers: Option<u64>,
    /// largest request head accepted, in bytes; a larger one gets 431 (default 16384)
    #[argh(option)]
    max_header_bytes: Option<u64>,
    /// send the backend's host:port as Host instead of the client's Host
    #[argh(switch)]
    rewrite_host: bool,
    /// pin worker i to core i (of the cores this process may use)
    #[argh(switch)]
    pin: bool,
    /// after handling events, poll without sleeping for this many microseconds
    /// (default 50; 0 disables; at most 10000)
    #[argh(option)]
    busy_poll: Option<u64>,
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
    #[argh(option)]
    retries: Option<u64>,
    /// take a backend out after this many connect failures, resets or timeouts
    /// within --fail-window (default 3; 0 never takes one out)
    #[argh(option)]
    max_fails: Option<u64>,
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
    #[argh(option)]
    rise: Option<u64>,
    /// consecutive failing checks that take a backend out (default 3)
    #[argh(option)]
    fall: Option<u64>,
    /// most client connections per worker; at the limit new ones wait in the
    /// listen backlog (default 0: no limit)
    #[argh(option)]
    max_connections: Option<u64>,
    /// largest request body, in bytes; a larger one gets 413 (default 0: no limit)
    #[argh(option)]
    max_body_bytes: Option<u64>,
    /// a Unix socket for zero-downtime restarts: take the listeners of the corelb
    /// serving there (which then drains and exits), and serve the next one
    #[argh(option)]
    handover: Option<String>,
    /// how to choose a backend: round-robin (default), weighted-round-robin,
    /// least-connections, power-of-two, or hash
    #[argh(option)]
    algorithm: Option<String>,
    /// write one line per request to this file (appended), or - for standard
    /// output (off by default)
    #[argh(option)]
    access_log: Option<String>,
    /// access log format: combined (default; with backend and timings appended)
    /// or json
    #[argh(option)]
    access_log_format: Option<String>,
    /// what to log on stderr: error, warn, info (default; start-up, backend state
    /// changes, shutdown) or debug (also each request moved to another backend)
    #[argh(option)]
    log_level: Option<String>,
    /// serve /metrics (Prometheus), /status (JSON) and /healthz on this address
    /// (off by default)
    #[argh(option)]
    admin: Option<String>,
    /// with --algorithm hash: hash this request header's value (default: the
    /// client address; requests without the header use the address too)
    #[argh(option)]
    hash_header: Option<String>,
    /// read settings from this TOML file (flags given here override it); SIGHUP
    /// reads it again and applies backends, algorithm, health and timeouts live
    #[argh(option)]
    config: Option<String>,
}

#[derive(FromArgs)]
/// Check a config file: print each problem with its key and line (exit 2), or a
/// summary (exit 0).
#[argh(subcommand, name = "check-config")]
struct CheckConfigCmd {
    /// the TOML file to check
    #[argh(positional)]
    file: String,
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

/// Wait for a stop signal (running `report` on each SIGUSR1 and `reload` on each
/// SIGHUP), then run `stop`, which lets requests in flight finish. A second stop
/// signal while it runs ends the process at once, with exit code 1.
fn run_until_signal<R: Send + 'static>(
    mut signals: Signals,
    what: &str,
    report: impl Fn(),
    reload: impl Fn(),
    stop: impl FnOnce() -> R + Send + 'static,
) -> R {
    for signal in signals.forever() {
        if signal == SIGUSR1 {
            report();
        } else if signal == SIGHUP {
            reload();
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

/// `value`, if given, through `check`; the error names the flag and the value.
fn checked<V: Copy + std::fmt::Display, T>(
    flag: &str,
    value: Option<V>,
    check: impl FnOnce(V) -> Result<T, String>,
) -> Result<Option<T>, String> {
    value
        .map(|v| check(v).map_err(|problem| format!("{flag} {v}: {problem}")))
        .transpose()
}

/// What the flags of `serve` set, each value checked.
fn cli_settings(a: &Serve) -> Result<Settings, String> {
    let backends = a
        .backend
        .iter()
        .map(|b| config::parse_backend(b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let listen = a
        .listen
        .iter()
        .map(|l| config::parse_listen(l))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(Settings {
        listen: (!listen.is_empty()).then_some(listen),
        backends: (!backends.is_empty()).then_some(backends),
        workers: checked("--workers", a.workers, settings::workers)?,
        algorithm: checked("--algorithm", a.algorithm.as_deref(), settings::algorithm)?,
        hash_header: checked(
            "--hash-header",
            a.hash_header.as_deref(),
            settings::header_name,
        )?,
        admin: checked("--admin", a.admin.as_deref(), settings::address)?,
        rewrite_host: a.rewrite_host.then_some(true),
        pin: a.pin.then_some(true),
        busy_poll: checked("--busy-poll", a.busy_poll, settings::busy_poll)?,
        retries: checked("--retries", a.retries, settings::retries)?,
        log_level: checked("--log-level", a.log_level.as_deref(), settings::log_level)?,
        access_log: checked(
            "--access-log",
            a.access_log.as_deref(),
            settings::access_log,
        )?,
        access_log_format: checked(
            "--access-log-format",
            a.access_log_format.as_deref(),
            settings::access_log_format,
        )?,
        handover: checked("--handover", a.handover.as_deref(), settings::handover)?,
        health_path: checked(
            "--health-path",
            a.health_path.as_deref(),
            settings::health_path,
        )?,
        health_interval: a.health_interval,
        health_timeout: a.health_timeout,
        rise: checked("--rise", a.rise, settings::streak)?,
        fall: checked("--fall", a.fall, settings::streak)?,
        max_fails: checked("--max-fails", a.max_fails, settings::max_fails)?,
        fail_window: a.fail_window,
        idle_timeout: a.idle_timeout,
        header_timeout: a.header_timeout,
        connect_timeout: a.connect_timeout,
        response_timeout: a.response_timeout,
        body_timeout: a.body_timeout,
        upstream_idle_timeout: a.upstream_idle_timeout,
        shutdown_timeout: a.shutdown_timeout,
        max_connections: checked(
            "--max-connections",
            a.max_connections,
            settings::max_connections,
        )?,
        max_header_bytes: checked(
            "--max-header-bytes",
            a.max_header_bytes,
            settings::max_header_bytes,
        )?,
        max_body_bytes: a.max_body_bytes,
    })
}

/// The config file's problems in one line (`check-config` prints them all).
fn file_errors_line(path: &Path, errors: &[FileError]) -> String {
    let mut line = format!("--config {}: ", path.display());
    if let Some(first) = errors.first() {
        line += &first.to_string();
    }
    if errors.len() > 1 {
        line += &format!(
            " (and {} more; corelb check-config {} lists them)",
            errors.len() - 1,
            path.display()
        );
    }
    line
}

/// The configuration from the flags over the file (if any).
fn load(cli: &Settings, file: Option<&Path>) -> Result<Built, String> {
    let from_file = match file {
        None => Settings::default(),
        Some(path) => settings::load_file(path).map_err(|e| file_errors_line(path, &e))?,
    };
    cli.clone().over(from_file).build()
}

/// SIGHUP without a config file: nothing to read again, and it must not stop the
/// process (systemd's ExecReload sends it).
fn nothing_to_reload(what: &str) {
    log!(
        Level::Info,
        "{what}: SIGHUP: nothing to reload (the configuration is the command line)"
    );
}

/// SIGHUP: read the config file again and apply it. A file with problems changes
/// nothing: the running configuration stays, and the log says why.
fn reload(cli: &Settings, file: Option<&Path>, reloader: &corelb::proxy::Reloader) {
    let Some(path) = file else {
        return nothing_to_reload("corelb");
    };
    let built = match load(cli, Some(path)) {
        Ok(b) => b,
        Err(e) => {
            log!(
                Level::Error,
                "corelb: reload: {e}; still running the previous configuration"
            );
            return;
        }
    };
    let level_changed = log::level() != built.log_level;
    log::set_level(built.log_level);
    match reloader.reload(built.config) {
        Err(e) => log!(
            Level::Error,
            "corelb: reload: {e}; still running the previous configuration"
        ),
        Ok(done) => {
            if !done.need_restart.is_empty() {
                log!(
                    Level::Warn,
                    "corelb: reload: {} changed, which takes a restart (see the README's \
                     handover procedure); those keep their running values",
                    done.need_restart.join(", ")
                );
            }
            if !done.confirmed && !done.unchanged {
                log!(
                    Level::Warn,
                    "corelb: reload: a worker busy for over a second has not switched yet"
                );
            }
            if done.unchanged {
                let change = if level_changed {
                    format!("log level {}", built.log_level.name())
                } else {
                    "nothing to change".to_string()
                };
                log!(Level::Info, "corelb: reloaded {}: {change}", path.display());
            } else {
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "none".to_string()
                    } else {
                        v.join(", ")
                    }
                };
                log!(
                    Level::Info,
                    "corelb: reloaded {}: backends added: {}; removed: {}",
                    path.display(),
                    list(&done.added),
                    list(&done.removed)
                );
            }
        }
    }
}

fn serve(args: Serve) -> ExitCode {
    let cli = match cli_settings(&args) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let config_path = args.config.as_deref().map(PathBuf::from);
    let built = match load(&cli, config_path.as_deref()) {
        Ok(b) => b,
        Err(e) => return usage_error(e),
    };
    log::set_level(built.log_level);
    let signals = match stop_signals() {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let open_files = raise_open_files_limit();
    let cfg = built.config;
    let workers = cfg.workers;
    let handover_path = built.handover;
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
    let source = match &config_path {
        Some(p) => format!(" (config {}; SIGHUP reloads it)", p.display()),
        None => String::new(),
    };
    log!(
        Level::Info,
        "corelb: listening on {} with {} worker{} (open files limit {}), {} over {}{source}",
        addrs.join(", "),
        workers,
        if workers == 1 { "" } else { "s" },
        open_files,
        cfg.algorithm,
        backends.join(", ")
    );
    let stats = proxy.stats();
    let reloader = proxy.reloader();
    let counts = run_until_signal(
        signals,
        "corelb",
        || report_counts(&stats.counts()),
        || reload(&cli, config_path.as_deref(), &reloader),
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
        || nothing_to_reload("corelb backend"),
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
        || nothing_to_reload("corelb demo"),
        move || demo.shutdown(),
    );
    println!("\nstopped after {requests} requests");
    ExitCode::SUCCESS
}

/// `corelb check-config FILE`: every problem on its own line (exit 2), or one
/// line saying what the file sets up (exit 0).
fn check_config(args: CheckConfigCmd) -> ExitCode {
    let path = Path::new(&args.file);
    let from_file = match settings::load_file(path) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                eprintln!("corelb: {}: {e}", path.display());
            }
            return ExitCode::from(2);
        }
    };
    match from_file.build() {
        Ok(built) => {
            let c = &built.config;
            println!(
                "{}: ok: {} backend{}, {}, listening on {}",
                path.display(),
                c.backends.len(),
                if c.backends.len() == 1 { "" } else { "s" },
                c.algorithm,
                c.listen
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(format!("{}: {e}", path.display())),
    }
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
        Command::CheckConfig(a) => check_config(a),
    }
}
