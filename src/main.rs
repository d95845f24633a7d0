//! The `corelb` command line: `serve`, `backend` and `demo`.
//!
//! Bad input never panics: every problem is one line on stderr and exit code 2.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argh::FromArgs;
use std::path::Path;

use corelb::config;
use corelb::config::flags::Serve;
use corelb::config::{Built, FileError, Settings};
use corelb::log;
use corelb::log::Level;
use corelb::origin::demo::Demo;
use corelb::proxy::WorkerCounts;
use corelb::runtime::{handover, systemd};
use corelb::{Origin, Proxy};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

/// The subcommands, as `corelb --help` lists them.
const COMMANDS: [&str; 4] = ["serve", "backend", "demo", "check-config"];

#[derive(FromArgs)]
/// corelb: a thread-per-core HTTP/1.1 load balancer. corelb --version (-V)
/// prints the version and the git commit it was built from.
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

/// `text` with every line longer than `width` broken between words (argh
/// prints a command's description as one line); a continuation keeps the
/// line's indent.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        if body.chars().count() <= width {
            out.push_str(line);
            continue;
        }
        let indent = &body[..body.len() - body.trim_start().len()];
        let mut used = 0;
        for word in body.split_whitespace() {
            let len = word.chars().count();
            if used > 0 && used + 1 + len > width {
                out.push('\n');
                used = 0;
            }
            if used == 0 {
                out.push_str(indent);
                used = indent.len();
            } else {
                out.push(' ');
                used += 1;
            }
            out.push_str(word);
            used += len;
        }
        out.push_str(end);
    }
    out
}

/// Print one line on stderr and return exit code 2.
fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("corelb: {msg}");
    ExitCode::from(2)
}

/// A start-up failure as one line, naming its setting by `spelled`.
fn start_error(e: &corelb::runtime::StartError, spelled: impl Fn(&str) -> String) -> ExitCode {
    usage_error(match e.setting() {
        Some(name) => e.describe(&spelled(name)),
        None => e.detail(),
    })
}

/// Raise the soft limit on open files to the hard limit (a stock login has 1024,
/// and every proxied connection takes two descriptors). Returns the limit now in
/// force, or 0 if it could not be read.
fn raise_open_files_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// SIGINT and SIGTERM, caught so that the first one stops gracefully, SIGUSR1,
/// which asks for a report, SIGHUP (reload) and SIGUSR2 (binary upgrade).
fn stop_signals() -> Result<Signals, String> {
    Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGHUP, SIGUSR2])
        .map_err(|e| format!("cannot install signal handlers: {e}"))
}

/// Print each worker's counters: an uneven SO_REUSEPORT spread shows here.
fn report_counts(counts: &[WorkerCounts]) {
    for (i, c) in counts.iter().enumerate() {
        // Asked for (SIGUSR1, the exit): written whatever the level.
        log::write(
            Level::Info,
            format_args!(
                "corelb: worker {i}: {} connections, {} requests, {} open",
                c.accepted, c.requests, c.open
            ),
        );
    }
}

/// Wait for a stop signal (running `report` on each SIGUSR1, `reload` on each
/// SIGHUP and `upgrade` on each SIGUSR2), then run `stop`, which lets requests in
/// flight finish. A second stop signal while it runs ends the process at once,
/// with exit code 1.
fn run_until_signal<R: Send + 'static>(
    mut signals: Signals,
    what: &str,
    report: impl Fn(),
    reload: impl Fn(),
    upgrade: impl Fn(),
    stop: impl FnOnce() -> R + Send + 'static,
) -> R {
    for signal in signals.forever() {
        match signal {
            SIGUSR1 => report(),
            SIGHUP => reload(),
            SIGUSR2 => upgrade(),
            _ => break,
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
        if signals.pending().any(|s| s == SIGINT || s == SIGTERM) {
            log::write(
                Level::Warn,
                format_args!("{what}: stopped without waiting for requests in flight"),
            );
            std::process::exit(1);
        }
    }
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
        Some(path) => config::load_file(path).map_err(|e| file_errors_line(path, &e))?,
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

/// SIGUSR2 where there is no handover to make.
fn nothing_to_upgrade(what: &str) {
    log!(
        Level::Warn,
        "{what}: SIGUSR2: binary upgrades are for corelb serve with --handover"
    );
}

/// SIGUSR2: start the successor (this binary's path, these arguments), which
/// takes the listeners over `--handover`; this process then drains and exits.
/// A successor that exits before that is logged, and this process serves on.
fn upgrade(has_handover: bool) {
    if !has_handover {
        return log!(
            Level::Error,
            "corelb: SIGUSR2: a binary upgrade hands the listeners over --handover, which is not set; still serving"
        );
    }
    match systemd::start_successor() {
        Ok(mut child) => {
            let pid = child.id();
            log!(
                Level::Info,
                "corelb: SIGUSR2: started the successor (pid {pid}); it takes over the listeners"
            );
            std::thread::spawn(move || {
                if let Ok(status) = child.wait()
                    && !status.success()
                {
                    log!(
                        Level::Error,
                        "corelb: the successor (pid {pid}) exited ({status}); still serving"
                    );
                }
            });
        }
        Err(e) => log!(
            Level::Error,
            "corelb: SIGUSR2: cannot start the successor: {e}; still serving"
        ),
    }
}

/// SIGHUP: read the config file again and apply it. A file with problems changes
/// nothing: the running configuration stays, and the log says why.
fn reload(
    cli: &Settings,
    file: Option<&Path>,
    reloader: &corelb::proxy::Reloader,
    discovery: Option<&corelb::discovery::Discovery>,
) {
    // logrotate's postrotate sends SIGHUP (systemctl reload): the access log
    // goes on in a new file at its path.
    match reloader.reopen_access_log() {
        Ok(Some(path)) => log!(
            Level::Info,
            "corelb: opened the access log {} again",
            path.display()
        ),
        Ok(None) => {}
        Err(e) => log!(
            Level::Error,
            "corelb: reload: cannot open the access log again: {e}; it goes on in the file it had"
        ),
    }
    let Some(path) = file else {
        // The command line stays, but certificate files are read again.
        if !reloader.serves_tls() {
            return nothing_to_reload("corelb");
        }
        return match reloader.reload_certificates() {
            Ok(done) if done.certificates => {
                log!(
                    Level::Info,
                    "corelb: reloaded the TLS certificates: changed"
                )
            }
            Ok(_) => log!(
                Level::Info,
                "corelb: reloaded the TLS certificates: unchanged"
            ),
            Err(e) => log!(
                Level::Error,
                "corelb: reload: {e}; still serving the previous certificates"
            ),
        };
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
    let applied = match discovery {
        // The new configuration's names are asked for, then it applies expanded.
        Some(d) => d.reload(built.config),
        None => reloader.reload(built.config),
    };
    match applied {
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
                    done.need_restart
                        .iter()
                        .map(|name| config::setting(name).key)
                        .collect::<Vec<_>>()
                        .join(", ")
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
                    "corelb: reloaded {}: backends added: {}; removed: {}{}{}",
                    path.display(),
                    list(&done.added),
                    list(&done.removed),
                    {
                        let mut changed: Vec<String> =
                            done.changed.iter().map(|s| s.to_string()).collect();
                        changed.extend(done.reweighted.iter().map(|w| format!("weight {w}")));
                        if level_changed {
                            changed.push(format!("log level {}", built.log_level.name()));
                        }
                        if changed.is_empty() {
                            String::new()
                        } else {
                            format!("; changed: {}", changed.join(", "))
                        }
                    },
                    if done.certificates {
                        "; TLS certificates changed"
                    } else {
                        ""
                    }
                );
            }
        }
    }
}

fn serve(args: Serve) -> ExitCode {
    let cli = args.settings;
    let config_path = args.config;
    let built = match load(&cli, config_path.as_deref()) {
        Ok(b) => b,
        Err(e) => return usage_error(format!("{e} (see corelb serve --help)")),
    };
    log::set_level(built.log_level);
    let signals = match stop_signals() {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let open_files = raise_open_files_limit();
    let configured = built.config.clone();
    // Backends from DNS: the first round of questions, before the start.
    let (cfg, found) = if corelb::discovery::wanted(&configured) {
        match corelb::discovery::first_round(&configured) {
            Ok((expanded, found)) => (expanded, Some(found)),
            Err(e) => return usage_error(format!("DNS: {e}")),
        }
    } else {
        (configured.clone(), None)
    };
    let workers = cfg.workers;
    let handover_path = built.handover.clone();
    let taken = match &handover_path {
        Some(path) => match handover::take(path) {
            Ok(t) => t,
            Err(e) => {
                return usage_error(format!(
                    "{} {}: {e}",
                    built.spelled("handover"),
                    path.display()
                ));
            }
        },
        None => None,
    };
    let started = match taken {
        None => Proxy::start(cfg.clone()).map(|p| (p, None)),
        Some(mut t) => {
            let listeners = std::mem::take(&mut t.listeners);
            let admin = t.admin.take();
            Proxy::start_adopting(cfg.clone(), listeners, admin).map(|(p, dropped)| {
                for addr in dropped {
                    log!(
                        Level::Warn,
                        "corelb: no longer listening on {addr} (not in {})",
                        built.spelled("listen")
                    );
                }
                (p, Some(t))
            })
        }
    };
    let (proxy, taken) = match started {
        Ok(p) => p,
        Err(e) => return start_error(&e, |name| built.spelled(name)),
    };
    let took_over = taken.is_some();
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
    let offered: handover::Offered = Arc::new(Mutex::new(Some(handover::Offer {
        listeners: proxy.listener_fds(),
        admin: proxy.admin_fd(),
    })));
    let handed_over = Arc::new(AtomicBool::new(false));
    let successor = Arc::clone(&handed_over);
    if let Some(path) = &handover_path
        && let Err(e) = handover::serve(path, Arc::clone(&offered), move || {
            log!(Level::Info, "corelb: a successor took over the listeners");
            successor.store(true, Ordering::SeqCst);
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
        })
    {
        drop(proxy);
        return usage_error(format!(
            "{} {}: {e}",
            built.spelled("handover"),
            path.display()
        ));
    }
    let addrs: Vec<String> = proxy.local_addrs().iter().map(|a| a.to_string()).collect();
    let backends: Vec<String> = cfg
        .backends
        .iter()
        .map(|b| {
            if b.weight == 1 {
                b.name().to_string()
            } else {
                format!("{} (weight {})", b.name(), b.weight)
            }
        })
        .collect();
    let source = match &config_path {
        Some(p) => format!(" (config {}; SIGHUP reloads it)", p.display()),
        None => String::new(),
    };
    log!(
        Level::Info,
        "corelb {}: listening on {} with {} worker{} (open files limit {}), {} over {}{source}",
        corelb::version(),
        addrs.join(", "),
        workers,
        if workers == 1 { "" } else { "s" },
        open_files,
        cfg.algorithm,
        backends.join(", ")
    );
    systemd::ready(took_over);
    let stats = proxy.stats();
    let reloader = proxy.reloader();
    let discovery = match found
        .map(|found| corelb::discovery::Discovery::spawn(configured, found, reloader.clone()))
        .transpose()
    {
        Ok(d) => d,
        Err(e) => return usage_error(format!("DNS: cannot start its thread: {e}")),
    };
    let counts = run_until_signal(
        signals,
        "corelb",
        || report_counts(&stats.counts()),
        || {
            systemd::reloading();
            reload(&cli, config_path.as_deref(), &reloader, discovery.as_ref());
            systemd::ready(false);
        },
        || upgrade(handover_path.is_some()),
        move || {
            systemd::stopping();
            // From here on the listeners may close: a successor must not get them.
            *offered.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let mut proxy = proxy;
            if handed_over.load(Ordering::SeqCst) {
                // The successor answers on the admin socket from now on.
                proxy.stop_admin();
            }
            proxy.shutdown()
        },
    );
    report_counts(&counts);
    ExitCode::SUCCESS
}

fn backend(args: BackendCmd) -> ExitCode {
    let listen = match config::values::address(&args.listen) {
        Ok(l) => l,
        Err(e) => return usage_error(format!("--listen {}: {e}", args.listen)),
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
        Err(e) => return start_error(&e, |name| config::setting(name).flag.to_string()),
    };
    log::write(
        Level::Info,
        format_args!("corelb backend: listening on {}", origin.local_addr()),
    );
    let (addr, requests) = (origin.local_addr(), origin.requests_counter());
    run_until_signal(
        signals,
        "corelb backend",
        || {
            log::write(
                Level::Info,
                format_args!("corelb backend: {addr}: {} requests", requests()),
            )
        },
        || nothing_to_reload("corelb backend"),
        || nothing_to_upgrade("corelb backend"),
        move || origin.shutdown(),
    );
    ExitCode::SUCCESS
}

fn demo(args: DemoCmd) -> ExitCode {
    let listen = match config::values::address(&args.listen) {
        Ok(l) => l,
        Err(e) => return usage_error(format!("--listen {}: {e}", args.listen)),
    };
    let signals = match stop_signals() {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    raise_open_files_limit();
    let demo = match Demo::start(listen) {
        Ok(d) => d,
        Err(e) => return start_error(&e, |name| config::setting(name).flag.to_string()),
    };
    println!("{}", demo.banner());
    let stats = demo.proxy.stats();
    let requests = run_until_signal(
        signals,
        "corelb demo",
        || report_counts(&stats.counts()),
        || nothing_to_reload("corelb demo"),
        || nothing_to_upgrade("corelb demo"),
        move || demo.shutdown(),
    );
    println!("\nstopped after {requests} requests");
    ExitCode::SUCCESS
}

/// `corelb check-config FILE`: every problem on its own line (exit 2), or one
/// line saying what the file sets up (exit 0).
fn check_config(args: CheckConfigCmd) -> ExitCode {
    let path = Path::new(&args.file);
    let from_file = match config::load_file(path) {
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
            // The certificates are read and checked as a start would.
            if c.serves_tls()
                && let Err(e) = corelb::tls::ServerTls::load(&c.tls)
            {
                return usage_error(format!(
                    "{}: {}: {e}",
                    path.display(),
                    built.spelled("tls_cert")
                ));
            }
            println!(
                "{}: ok: {} backend{}, {}, listening on {}",
                path.display(),
                c.backends.len(),
                if c.backends.len() == 1 { "" } else { "s" },
                c.algorithm,
                config::values::Show::show(&c.listen)
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
    // `-h` is `--help`, as everywhere else.
    // (Only where help is asked for: `corelb -h`, `corelb serve -h`; further
    // on, `-h` may be a flag's value.)
    let strs: Vec<&str> = args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if a == "-h" && i <= 2 {
                "--help"
            } else {
                a.as_str()
            }
        })
        .collect();
    match strs.get(1).copied() {
        Some("--version" | "-V") => {
            println!("corelb {}", corelb::version());
            return ExitCode::SUCCESS;
        }
        Some(cmd) if !cmd.starts_with('-') && cmd != "help" && !COMMANDS.contains(&cmd) => {
            return usage_error(format!(
                "unknown command {cmd:?}: the commands are {} (see corelb --help)",
                COMMANDS.join(", ")
            ));
        }
        _ => {}
    }
    // Where a usage error points for help: the subcommand's own.
    let help = match strs.get(1) {
        Some(cmd) if COMMANDS.contains(cmd) => format!("corelb {cmd} --help"),
        _ => "corelb --help".to_string(),
    };
    let cli = match Cli::from_args(&["corelb"], strs.get(1..).unwrap_or(&[])) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    print!("{}", wrap(&early.output, 100));
                    ExitCode::SUCCESS
                }
                // argh's messages can span lines; the contract is one line.
                Err(()) => {
                    let msg = early
                        .output
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ");
                    if msg.contains("--help") {
                        usage_error(msg)
                    } else {
                        usage_error(format!("{} (see {help})", msg.trim_end_matches('.')))
                    }
                }
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
