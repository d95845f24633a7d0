//! The `corelb` binary: bad input is one line on stderr and exit code 2; `serve`,
//! `backend` and `demo` start, answer, and stop cleanly on a signal.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_corelb");

/// Wait up to 10 s for `child` to exit (killing it and failing otherwise).
fn wait_exit(mut child: Child, what: &str) -> std::process::Output {
    if exited(&mut child).is_none() {
        let _ = child.kill();
        forget_child(child.id());
        let out = child.wait_with_output().unwrap();
        panic!(
            "{what}; its stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    forget_child(child.id());
    child.wait_with_output().unwrap()
}

/// `child`'s exit status once it has exited, within 10 s (None: it has not),
/// without reading its output.
fn exited(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        // Back-off between two looks.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Spawn `program args` with no stdin and piped stdout and stderr. A test that
/// fails kills the children it started (`kill_children_on_panic`): left running,
/// they would keep ports and backends busy for the tests after it.
fn spawn(program: &str, args: &[&str]) -> Child {
    spawn_env(program, args, &[])
}

/// `spawn` with these environment variables set.
fn spawn_env(program: &str, args: &[&str], env: &[(&str, &std::path::Path)]) -> Child {
    kill_children_on_panic();
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    children()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((std::thread::current().id(), child.id()));
    child
}

/// Every child spawned, with the test thread that spawned it.
fn children() -> &'static std::sync::Mutex<Vec<(std::thread::ThreadId, u32)>> {
    static CHILDREN: std::sync::OnceLock<std::sync::Mutex<Vec<(std::thread::ThreadId, u32)>>> =
        std::sync::OnceLock::new();
    CHILDREN.get_or_init(Default::default)
}

/// A child that exited and was waited for: its pid may be reused, so a panic
/// must not signal it.
fn forget_child(pid: u32) {
    children()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&(_, p)| p != pid);
}

/// Once per process: a panic (a failing test) kills the children its thread
/// spawned and has not waited for, then reports as before.
fn kill_children_on_panic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let me = std::thread::current().id();
            let list = children().lock().unwrap_or_else(|e| e.into_inner());
            for &(_, pid) in list.iter().filter(|(t, _)| *t == me) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            drop(list);
            report(info);
        }));
    });
}

fn run(args: &[&str]) -> (i32, String, String) {
    let child = spawn(BIN, args);
    let out = wait_exit(child, &format!("corelb {args:?} did not exit"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_usage_error(args: &[&str], mentions: &str) {
    let (code, _, err) = run(args);
    assert_eq!(code, 2, "corelb {args:?}: stderr {err:?}");
    assert_eq!(err.lines().count(), 1, "corelb {args:?}: stderr {err:?}");
    assert!(
        err.contains(mentions),
        "corelb {args:?}: {err:?} does not mention {mentions}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    assert_usage_error(&["serve"], "--backend");
    assert_usage_error(&["serve", "--backend", "nonsense"], "--backend");
    assert_usage_error(&["serve", "--backend", "ftp://127.0.0.1:9000"], "--backend");
    assert_usage_error(&["serve", "--backend", "127.0.0.1:0"], "--backend");
    let proxied = [
        "serve",
        "--backend",
        "127.0.0.1:9000",
        "--listen",
        "127.0.0.1:18080,proxy-protocol",
    ];
    assert_usage_error(&proxied, "--proxy-protocol-from");
    for bad in ["10.0.0.1/8", "10.0.0.0/33", "ten"] {
        let mut args = proxied.to_vec();
        args.extend(["--proxy-protocol-from", bad]);
        assert_usage_error(&args, "--proxy-protocol-from");
    }
    assert_usage_error(
        &[
            "serve",
            "--backend",
            "127.0.0.1:9000",
            "--listen",
            "127.0.0.1:18080,proxy",
        ],
        "--listen",
    );
    assert_usage_error(&["serve", "--backend", "127.0.0.1:99999"], "--backend");
    assert_usage_error(
        &[
            "serve",
            "--backend",
            "127.0.0.1:9000",
            "--listen",
            "nowhere",
        ],
        "--listen",
    );
    assert_usage_error(
        &[
            "serve",
            "--backend",
            "127.0.0.1:9000",
            "--listen",
            "127.0.0.1:0",
        ],
        "--listen",
    );
    assert_usage_error(
        &["serve", "--backend", "127.0.0.1:9000", "--workers", "0"],
        "--workers",
    );
    assert_usage_error(
        &["serve", "--backend", "127.0.0.1:9000", "--workers", "many"],
        "--workers",
    );
    assert_usage_error(
        &[
            "serve",
            "--backend",
            "127.0.0.1:9000",
            "--max-header-bytes",
            "10",
        ],
        "--max-header-bytes",
    );
    assert_usage_error(
        &[
            "serve",
            "--backend",
            "127.0.0.1:9000",
            "--busy-poll",
            "20000",
        ],
        "--busy-poll",
    );
    assert_usage_error(
        &[
            "serve",
            "--backend",
            "127.0.0.1:9000",
            "--idle-timeout",
            "30",
        ],
        "--idle-timeout",
    );
    assert_usage_error(
        &[
            "serve",
            "--backend",
            "127.0.0.1:9000",
            "--shutdown-timeout",
            "2h",
        ],
        "--shutdown-timeout",
    );
    assert_usage_error(
        &["serve", "--backend", "127.0.0.1:9000", "--retries", "17"],
        "--retries",
    );
    assert_usage_error(
        &["serve", "--backend", "127.0.0.1:9000", "--max-fails", "-1"],
        "--max-fails",
    );
    assert_usage_error(
        &[
            "serve",
            "--backend",
            "127.0.0.1:9000",
            "--fail-window",
            "0s",
        ],
        "--fail-window",
    );
    for (flags, mentions) in [
        (&["--algorithm", "random"][..], "--algorithm"),
        (&["--log-level", "loud"][..], "--log-level"),
        (&["--access-log-format", "xml"][..], "--access-log-format"),
        (
            &["--access-log", "/nonexistent-dir/access.log"][..],
            "--access-log",
        ),
        (&["--admin", "nowhere"][..], "--admin"),
        (&["--hash-header", "X-User"][..], "--hash-header"),
        (
            &["--algorithm", "hash", "--hash-header", "X User"][..],
            "--hash-header",
        ),
        (&["--backend", "127.0.0.1:9001,weight=0"][..], "--backend"),
        (
            &["--backend", "127.0.0.1:9001,weight=1001"][..],
            "--backend",
        ),
        (&["--backend", "127.0.0.1:9001,wait=2"][..], "--backend"),
        (&["--health-path", "health"][..], "--health-path"),
        (&["--health-path", "/a b"][..], "--health-path"),
        (&["--health-path", "/h", "--rise", "0"][..], "--rise"),
        (&["--health-path", "/h", "--fall", "5000"][..], "--fall"),
        (
            &["--health-path", "/h", "--health-timeout", "3s"][..],
            "--health-timeout",
        ),
        (&["--health-interval", "soon"][..], "--health-interval"),
    ] {
        let mut args = vec!["serve", "--backend", "127.0.0.1:9000"];
        args.extend_from_slice(flags);
        assert_usage_error(&args, mentions);
    }
    assert_usage_error(
        &["serve", "--backend", "127.0.0.1:9000", "--frobnicate"],
        "--frobnicate",
    );
    assert_usage_error(&["backend"], "--listen");
    assert_usage_error(&["launch"], "launch");
    assert_usage_error(&[], "");
}

#[test]
fn address_in_use_is_exit_code_2() {
    let taken = TcpListener::bind(loopback()).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_usage_error(
        &["serve", "--backend", "127.0.0.1:9000", "--listen", &addr],
        "in use",
    );
    assert_usage_error(&["backend", "--listen", &addr], "in use");
    assert_usage_error(&["demo", "--listen", &addr], "in use");
}

#[test]
fn help_goes_to_stdout_with_exit_code_0() {
    let (code, out, _) = run(&["serve", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--backend") && out.contains("--rewrite-host"),
        "{out}"
    );
    // Every help fits 100 columns, words whole.
    for command in [
        &[][..],
        &["serve"],
        &["backend"],
        &["demo"],
        &["check-config"],
    ] {
        let args = [command, &["--help"]].concat();
        let (code, out, _) = run(&args);
        assert_eq!(code, 0, "{args:?}");
        for line in out.lines() {
            assert!(line.chars().count() <= 100, "{args:?}: {line}");
        }
    }
    let (_, out, _) = run(&["backend", "--help"]);
    let text = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        text.contains("/echo returns the request it received, /ws echoes WebSocket frames."),
        "{out}"
    );
}

/// A port nothing listens on, for a child process to bind. Taken below the
/// kernel's ephemeral range (32768 and up, from which every connect and port-0
/// bind of the tests running beside this one draws: one of them took such a
/// port between its check here and the child's bind, in 2 of 20 runs at 16
/// threads), and counted up so two tests of this process never get the same one.
///
/// It stays reserved until this test process ends: a socket bound to it with
/// SO_REUSEPORT (never listening, so it takes no connection) lets corelb, which
/// binds with SO_REUSEPORT as the same user, share it, and makes any other
/// process's plain bind fail, so a second test process (a second checkout, or
/// the next run of a loop) cannot pick it too. Without it, two processes could
/// both find the port free and start a corelb on it: SO_REUSEPORT would let
/// both bind, and connections would go to either (seen once: a test's proxy
/// failed to bind its port although the start-up probe had connected).
fn free_port() -> SocketAddr {
    use socket2::{Domain, Socket, Type};
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    static KEPT: std::sync::Mutex<Vec<Socket>> = std::sync::Mutex::new(Vec::new());
    // Another test process starts elsewhere in the range.
    let base = 20_000 + (std::process::id() % 64) * 190;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (base + n % 12_000) % 12_000 + 20_000;
        let addr = SocketAddr::new(loopback().ip(), port as u16);
        // Free of everyone else: a plain bind succeeds.
        if TcpListener::bind(addr).is_err() {
            continue;
        }
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_reuse_address(true).unwrap();
        sock.set_reuse_port(true).unwrap();
        if sock.bind(&addr.into()).is_ok() {
            KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(sock);
            return addr;
        }
    }
}

/// Start the binary and wait until `addr` accepts connections.
fn start(args: &[&str], addr: SocketAddr) -> Child {
    start_with(BIN, args, addr)
}

/// Start `program` and wait up to 10 s until `addr` accepts connections; one
/// that exits first fails the test with its stderr.
fn start_with(program: &str, args: &[&str], addr: SocketAddr) -> Child {
    let mut child = spawn(program, args);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if child.try_wait().unwrap().is_some() {
            forget_child(child.id());
            let out = child.wait_with_output().unwrap();
            panic!(
                "{program} {args:?} exited before listening: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "nothing listened on {addr}");
        // Back-off between two tries.
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Start `corelb backend` on a free port, with `extra` arguments.
fn start_origin(extra: &[&str]) -> (Child, SocketAddr) {
    let addr = free_port();
    let listen = addr.to_string();
    let mut args = vec!["backend", "--listen", &listen];
    args.extend_from_slice(extra);
    (start(&args, addr), addr)
}

/// Start `corelb serve` on a free port in front of `backend` (as written on the
/// command line), with `extra` arguments.
fn start_proxy(backend: &str, extra: &[&str]) -> (Child, SocketAddr) {
    let addr = free_port();
    let listen = addr.to_string();
    let mut args = vec!["serve", "--backend", backend, "--listen", &listen];
    args.extend_from_slice(extra);
    (start(&args, addr), addr)
}

/// Send `sig` (as `kill` spells it, e.g. "-TERM") to process `pid`.
fn signal(pid: &str, sig: &str) {
    let status = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// Send `sig`, then expect a clean exit with code 0.
fn stop(child: Child, sig: &str) -> std::process::Output {
    signal(&child.id().to_string(), sig);
    let out = wait_exit(child, &format!("corelb did not stop on {sig}"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn serve_and_backend_run_and_stop_on_sigterm() {
    let (origin, origin_addr) = start_origin(&["--body", "hi there"]);
    let (proxy, proxy_addr) = start_proxy(&format!("http://{origin_addr}"), &["--workers", "2"]);
    let resp = get(proxy_addr, "/");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hi there");
    let out = stop(proxy, "-TERM");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("worker 0:") && err.contains("worker 1:"),
        "{err}"
    );
    stop(origin, "-TERM");
}

#[test]
fn demo_alternates_backends_and_stops_on_ctrl_c() {
    let addr = free_port();
    let mut child = start(&["demo", "--listen", &addr.to_string()], addr);
    let mut banner = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    while !banner.contains("Ctrl-C") {
        assert!(
            stdout.read_line(&mut banner).unwrap() > 0,
            "banner ended early: {banner}"
        );
    }
    assert!(
        banner.contains("curl") && banner.contains("wrk"),
        "{banner}"
    );
    let names: Vec<String> = (0..4).map(|_| get(addr, "/").text()).collect();
    assert_ne!(names[0], names[1]);
    assert_eq!(names[0], names[2]);
    assert_eq!(names[1], names[3]);
    let out = stop(child, "-INT");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn serve_raises_the_open_files_limit() {
    let proxy_addr = free_port();
    let script = format!(
        "ulimit -Sn 256 && exec {BIN} serve --backend 127.0.0.1:9 --listen {proxy_addr} --workers 1"
    );
    let child = start_with("sh", &["-c", &script], proxy_addr);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    stop(child, "-TERM");
    assert_ne!(soft, "256", "{line}");
    assert_eq!(soft, hard, "{line}");
}

#[test]
fn second_signal_stops_at_once() {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    // The first request is answered when the test says so; the second is held
    // well past the end of the test.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Mutex::new(held);
    let backend = Scripted::start(move |mut s, n| {
        let _ = read_head(&mut s);
        if n == 0 {
            let _ = held.lock().unwrap().recv_timeout(IO_TIMEOUT);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            return;
        }
        std::thread::sleep(Duration::from_secs(5));
    });
    let (mut child, proxy_addr) = start_proxy(&backend.addr.to_string(), &["--workers", "1"]);
    let mut stderr = Stderr::of(&mut child);
    let mut answered = Reader::new(connect(proxy_addr));
    answered
        .stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    wait_until(
        || backend.connections.load(Ordering::SeqCst) == 1,
        "the first request reaches the backend",
    );
    let mut stuck = connect(proxy_addr);
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    wait_until(
        || backend.connections.load(Ordering::SeqCst) == 2,
        "the second request reaches the backend",
    );
    let pid = child.id().to_string();
    signal(&pid, "-TERM");
    stderr.expect("stopping;");
    // The worker has begun its shutdown once its listener is closed.
    wait_until(
        || std::net::TcpStream::connect(proxy_addr).is_err(),
        "the shutdown closes the listener",
    );
    // Still running: it relays an answer that comes after the shutdown began...
    release.send(()).unwrap();
    let resp = answered.response();
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    // ...and waits for the other request in flight.
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited without waiting for the request in flight"
    );
    let start = Instant::now();
    signal(&pid, "-TERM");
    let out = wait_exit(child, "corelb did not stop on the second signal");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.all().contains("without waiting"));
}

#[test]
fn sigusr1_reports_per_worker_counts_and_keeps_serving() {
    let (origin, origin_addr) = start_origin(&[]);
    let (mut proxy, proxy_addr) = start_proxy(&origin_addr.to_string(), &["--workers", "2"]);
    for _ in 0..10 {
        assert_eq!(get(proxy_addr, "/").status, 200);
    }
    let rx = stderr_lines(&mut proxy);
    let pid = proxy.id().to_string();
    // A worker counts a request just after its last byte is written: the
    // report is asked for again until the last one is counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (total, report) = loop {
        signal(&pid, "-USR1");
        let mut report = Vec::new();
        while report.len() < 2 {
            let line = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("no report on SIGUSR1");
            if line.contains(": worker ") {
                report.push(line);
            }
        }
        let total: u64 = report
            .iter()
            .map(|l| {
                l.split(", ")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum();
        if total >= 10 || std::time::Instant::now() > deadline {
            break (total, report);
        }
    };
    assert_eq!(total, 10, "{report:?}");
    assert!(
        proxy.try_wait().unwrap().is_none(),
        "SIGUSR1 stopped the proxy"
    );
    assert_eq!(get(proxy_addr, "/").status, 200);
    // SIGHUP (systemd's reload) is answered with a line, and does not stop it.
    signal(&pid, "-HUP");
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("no answer to SIGHUP");
        if line.contains("SIGHUP") {
            break;
        }
    }
    assert!(
        proxy.try_wait().unwrap().is_none(),
        "SIGHUP stopped the proxy"
    );
    assert_eq!(get(proxy_addr, "/").status, 200);
    stop(proxy, "-TERM");
    stop(origin, "-TERM");
}

#[test]
fn idle_timeout_flag_closes_idle_clients() {
    use std::io::{Read, Write};
    let (origin, origin_addr) = start_origin(&[]);
    let (proxy, proxy_addr) = start_proxy(
        &origin_addr.to_string(),
        &["--workers", "1", "--idle-timeout", "300ms"],
    );
    let mut s = connect(proxy_addr);
    s.write_all(b"GET /size/2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut all = Vec::new();
    // Reads the response, then end of stream once the idle timeout closes the client.
    s.read_to_end(&mut all).unwrap();
    let idle_for = started.elapsed();
    assert!(
        all.ends_with(b"\r\n\r\nab"),
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    assert!(
        idle_for >= Duration::from_millis(250) && idle_for < Duration::from_secs(3),
        "closed after {idle_for:?}"
    );
    stop(proxy, "-TERM");
    stop(origin, "-TERM");
}

/// Health checks on a path the built-in backend answers with 500, taking it out
/// at the first failure (the first check runs at start). The timeout is long
/// enough that a loaded machine still sees the 500, not a timeout: with 30 ms,
/// 2 of 20 runs of the suite at 16 threads logged "read: Resource temporarily
/// unavailable" instead.
const FAILING_CHECKS: [&str; 8] = [
    "--health-path",
    "/status/500",
    "--health-interval",
    "1s",
    "--health-timeout",
    "1s",
    "--fall",
    "1",
];

#[test]
fn backend_state_changes_and_all_down_are_logged_once() {
    let (origin, origin_addr) = start_origin(&[]);
    let backend = origin_addr.to_string();
    let (mut proxy, addr) = start_proxy(&backend, &FAILING_CHECKS);
    let mut stderr = Stderr::of(&mut proxy);
    let down = format!("corelb: backend {backend} is down (health check: status 500)");
    // Taken out by the first failed check (logged once it is out).
    stderr.expect(&down);
    for _ in 0..3 {
        assert_eq!(get(addr, "/").status, 503);
    }
    stop(proxy, "-TERM");
    stop(origin, "-TERM");
    let err = stderr.all();
    assert_eq!(err.matches(&down).count(), 1, "{err}");
    assert_eq!(
        err.matches("corelb: all backends are down; answering 503")
            .count(),
        1,
        "{err}"
    );
}

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_descriptors_pauses_accepting_without_spinning_then_recovers() {
    let (origin, origin_addr) = start_origin(&[]);
    let addr = free_port();
    // A hard limit the proxy cannot raise: about 20 descriptors for clients.
    let cmd = format!(
        "ulimit -n 40 && exec {BIN} serve --backend {origin_addr} --listen {addr} --workers 1"
    );
    let mut child = start_with("sh", &["-c", &cmd], addr);
    let mut stderr = Stderr::of(&mut child);
    let held: Vec<std::net::TcpStream> = (0..60)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Out of descriptors, and it has said so: from here on it waits, not spins.
    stderr.expect("cannot accept");
    let before = cpu_ticks(child.id());
    // The measurement: CPU used over 2 s of being out of descriptors.
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(child.id()) - before;
    // 100 ticks a second: a spinning worker would use about 200.
    assert!(
        used < 20,
        "{used} ticks of CPU in 2 s while out of descriptors"
    );
    drop(held);
    assert_eq!(get(addr, "/").status, 200);
    stop(child, "-TERM");
    stop(origin, "-TERM");
    let err = stderr.all();
    let lines = err.matches("cannot accept").count();
    assert!((1..=3).contains(&lines), "{lines} lines:\n{err}");
}

/// One request on a new connection; true if it got a complete 200.
fn request_ok(addr: SocketAddr) -> bool {
    get_ok(addr, "/")
}

/// `GET path` on a new connection; true if it got a complete 200.
fn get_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut resp = String::new();
    s.read_to_string(&mut resp).is_ok() && resp.starts_with("HTTP/1.1 200 ")
}

/// One request on a kept-alive connection (made when there is none, dropped when
/// the answer says `Connection: close`); true if it got a complete 200.
fn keep_alive_ok(conn: &mut Option<BufReader<std::net::TcpStream>>, addr: SocketAddr) -> bool {
    let mut attempt = || -> std::io::Result<bool> {
        if conn.is_none() {
            let s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            *conn = Some(BufReader::new(s));
        }
        let r = conn.as_mut().unwrap();
        r.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        let ok = line.starts_with("HTTP/1.1 200 ");
        let (mut length, mut close) = (0, false);
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(false);
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            close |= lower.starts_with("connection: close");
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body)?;
        if close {
            *conn = None;
        }
        Ok(ok)
    };
    let ok = attempt().unwrap_or(false);
    if !ok {
        *conn = None;
    }
    ok
}

#[test]
fn restart_with_handover_under_load_loses_no_request() {
    let (origin, origin_addr) = start_origin(&[]);
    let backend = origin_addr.to_string();
    let addr = free_port();
    let listen = addr.to_string();
    let args = [
        "serve",
        "--backend",
        &backend,
        "--listen",
        &listen,
        "--workers",
        "2",
    ];
    handover_under_load("restart", &args, addr, None, Successor::Started);
    stop(origin, "-TERM");
}

/// The binary upgrade under systemd, with the test playing systemd's part: a
/// notify socket (`NOTIFY_SOCKET`) that gets `READY=1`; SIGUSR2 to the main
/// process, which starts its successor; `MAINPID` and `READY=1` from the
/// successor; the old process exits by itself; `STOPPING=1` at the end. No
/// request fails throughout (the unit is `scripts/corelb.service`).
#[test]
fn a_binary_upgrade_by_sigusr2_under_load_loses_no_request() {
    let (origin, origin_addr) = start_origin(&[]);
    let (addr, admin) = (free_port(), free_port());
    let args = example_config_args(origin_addr, addr, admin);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    handover_under_load("upgrade", &args, addr, Some(admin), Successor::Upgrade);
    stop(origin, "-TERM");
}

/// `serve` with the shipped example config, over one backend, on `listen`,
/// with the admin endpoint on `admin`.
fn example_config_args(backend: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> Vec<String> {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/corelb.toml");
    ["serve", "--config", example]
        .map(String::from)
        .into_iter()
        .chain([
            "--backend".into(),
            backend.to_string(),
            "--listen".into(),
            listen.to_string(),
            "--admin".into(),
            admin.to_string(),
        ])
        .collect()
}

/// How the successor of a handover starts.
#[derive(PartialEq)]
enum Successor {
    /// The test starts it, as an operator would by hand.
    Started,
    /// SIGUSR2 to the running process, which starts it, under a notify socket
    /// the test reads as systemd would.
    Upgrade,
}

/// A notify socket, as systemd's (`NOTIFY_SOCKET`), whose messages the test reads.
struct Notify {
    sock: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl Notify {
    fn new(dir: &std::path::Path) -> Notify {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Notify { sock, path }
    }

    /// The next message that contains `what` (others are skipped), within 10 s.
    fn expect(&self, what: &str) -> String {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} on the notify socket within 10 s"
            );
            self.sock.set_read_timeout(Some(left)).unwrap();
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                // A signal to the test process (seen once in 20 loop runs).
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("no {what} on the notify socket: {e}"),
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.contains(what) {
                return msg;
            }
        }
    }
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaps).
fn ended(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// The shipped example config sets `admin`: the admin endpoint is handed over
/// with the listeners, and answers throughout.
#[test]
fn restart_with_handover_and_the_example_config_keeps_the_admin_endpoint() {
    let (origin, origin_addr) = start_origin(&[]);
    let (addr, admin) = (free_port(), free_port());
    let args = example_config_args(origin_addr, addr, admin);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    handover_under_load(
        "restart-admin",
        &args,
        addr,
        Some(admin),
        Successor::Started,
    );
    stop(origin, "-TERM");
}

/// Start `args` (with `--handover`), put it under load (half the clients with a
/// connection per request, half keeping theirs, and, with `admin`, a client of
/// the admin endpoint), start a successor with the same arguments, and check
/// that the old process exits, the new one serves, and no request failed. The
/// handover socket is in a directory called after `name` (one per test).
fn handover_under_load(
    name: &str,
    args: &[&str],
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    how: Successor,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dir = temp_dir(name);
    let sock = dir.join("handover.sock");
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--handover", sock.to_str().unwrap()]);
    let notify = Notify::new(&dir);
    let mut old = spawn_env(BIN, &args, &[("NOTIFY_SOCKET", &notify.path)]);
    notify.expect("READY=1");
    assert!(
        std::net::TcpStream::connect(addr).is_ok(),
        "ready, but not listening"
    );

    let running = Arc::new(AtomicBool::new(true));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (admin_ok, admin_failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load: Vec<_> = (0..4)
        .map(|i| {
            let (running, ok, failed) =
                (Arc::clone(&running), Arc::clone(&ok), Arc::clone(&failed));
            std::thread::spawn(move || {
                let mut kept = None;
                while running.load(Ordering::Relaxed) {
                    // Half the clients make a connection per request, half keep theirs.
                    let good = if i % 2 == 0 {
                        request_ok(addr)
                    } else {
                        keep_alive_ok(&mut kept, addr)
                    };
                    if good {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    if let Some(admin) = admin {
        // The admin endpoint starts after the listeners the start-up probe saw.
        wait_until(|| get_ok(admin, "/healthz"), "the admin endpoint answers");
        let (running, ok, failed) = (
            Arc::clone(&running),
            Arc::clone(&admin_ok),
            Arc::clone(&admin_failed),
        );
        load.push(std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                let counter = if get_ok(admin, "/healthz") {
                    &ok
                } else {
                    &failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    wait_until(
        || ok.load(Ordering::Relaxed) >= 20,
        "the old process serves the load",
    );
    // The successor takes the listeners; the old process drains and exits by itself.
    let new = match how {
        Successor::Started => Ok(spawn(BIN, &args)),
        Successor::Upgrade => {
            signal(&old.id().to_string(), "-USR2");
            let msg = notify.expect("MAINPID=");
            assert!(msg.contains("READY=1"), "{msg}");
            let pid = msg
                .lines()
                .find_map(|l| l.strip_prefix("MAINPID="))
                .unwrap();
            assert_ne!(pid, old.id().to_string(), "{msg}");
            Err(pid.to_string())
        }
    };
    // The successor writes to the old process's stderr pipe: wait for the old
    // one's exit without reading it to its end.
    let old_status = exited(&mut old).expect("the old corelb did not exit after the handover");
    assert_eq!(old_status.code(), Some(0), "the old corelb's exit");
    let (before_handover, admin_before) =
        (ok.load(Ordering::Relaxed), admin_ok.load(Ordering::Relaxed));
    wait_until(
        || ok.load(Ordering::Relaxed) >= before_handover + 20,
        "the new process serves the load",
    );
    if admin.is_some() {
        wait_until(
            || admin_ok.load(Ordering::Relaxed) >= admin_before + 5,
            "the new process serves the admin endpoint",
        );
    }
    running.store(false, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let (old_out, new_out) = match new {
        Ok(new) => (old.wait_with_output().unwrap(), stop(new, "-TERM")),
        Err(pid) => {
            signal(&pid, "-TERM");
            notify.expect("STOPPING=1");
            wait_until(|| ended(&pid), "the successor stops on SIGTERM");
            // Its output went with the old process's.
            let out = old.wait_with_output().unwrap();
            (out.clone(), out)
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let old_err = String::from_utf8_lossy(&old_out.stderr);
    let new_err = String::from_utf8_lossy(&new_out.stderr);
    assert!(
        old_err.contains("a successor took over the listeners"),
        "{old_err}"
    );
    assert!(new_err.contains("took over the listeners"), "{new_err}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests; old: {old_err} new: {new_err}"
    );
    assert_eq!(
        admin_failed.load(Ordering::Relaxed),
        0,
        "failed admin requests; old: {old_err} new: {new_err}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > before_handover,
        "the new process served nothing"
    );
}

#[test]
fn log_level_warn_keeps_only_warnings_and_errors() {
    let (origin, origin_addr) = start_origin(&[]);
    let backend = origin_addr.to_string();
    let (mut proxy, _) = start_proxy(
        &backend,
        &[&["--log-level", "warn"][..], &FAILING_CHECKS].concat(),
    );
    let mut stderr = Stderr::of(&mut proxy);
    stderr.expect(&format!("corelb: backend {backend} is down"));
    stop(proxy, "-TERM");
    stop(origin, "-TERM");
    // Everything it wrote, to its end: no info line among it.
    let err = stderr.all();
    assert!(
        err.contains(&format!("corelb: backend {backend} is down")),
        "{err}"
    );
    assert!(!err.contains("listening on"), "an info line at warn: {err}");
    assert!(!err.contains("stopping;"), "an info line at warn: {err}");
}

/// The lines `child` writes on stderr, as they come.
fn stderr_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    rx
}

/// A child's stderr, read as it comes, every line kept.
struct Stderr {
    rx: std::sync::mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Stderr {
    fn of(child: &mut Child) -> Stderr {
        Stderr {
            rx: stderr_lines(child),
            lines: Vec::new(),
        }
    }

    /// Wait up to `IO_TIMEOUT` for a line containing `text`.
    fn expect(&mut self, text: &str) {
        loop {
            let Ok(line) = self.rx.recv_timeout(IO_TIMEOUT) else {
                panic!("no line with {text:?} in {:?}", self.lines);
            };
            let found = line.contains(text);
            self.lines.push(line);
            if found {
                return;
            }
        }
    }

    /// Every line the child wrote, read to the end of the stream (it has exited).
    fn all(mut self) -> String {
        while let Ok(line) = self.rx.recv_timeout(IO_TIMEOUT) {
            self.lines.push(line);
        }
        self.lines.join("\n")
    }
}

/// Wait up to 5 s for a line containing `text`; returns it.
fn expect_line(rx: &std::sync::mpsc::Receiver<String>, text: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("no line with {text:?}"));
        if line.contains(text) {
            return line;
        }
    }
}

/// A config file for `listen` over `backends`, in a fresh temporary directory.
fn write_config(path: &std::path::Path, listen: SocketAddr, backends: &[SocketAddr]) {
    let mut text = format!("listen = \"{listen}\"\nworkers = 2\n");
    for b in backends {
        text += &format!("[[backend]]\naddress = \"{b}\"\n");
    }
    std::fs::write(path, text).unwrap();
}

/// A fresh directory under the system's temporary directory, for this test run.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("corelb-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn check_config_accepts_the_shipped_example_and_lists_every_problem() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/corelb.toml");
    let (code, out, err) = run(&["check-config", example]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok: 2 backends, round-robin"), "{out}");
    let dir = temp_dir("check");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "workers = 0\nalgoritm = \"hash\"\n[[backend]]\naddress = \"127.0.0.1\"\n[timeouts]\nidle = \"5\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    for (line, key) in lines.iter().zip([
        "line 1: workers",
        "line 2: algoritm: unknown key",
        "line 4: backend[0].address",
        "line 6: timeouts.idle",
    ]) {
        assert!(line.contains(key), "{line:?} lacks {key:?}");
    }
    // A valid file whose settings do not fit together.
    std::fs::write(&bad, "workers = 1\n").unwrap();
    let (code, _, err) = run(&["check-config", bad.to_str().unwrap()]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(err.contains("no backend"), "{err}");
    let (code, _, err) = run(&["check-config", "/nonexistent.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
    // serve with a bad file: one line, exit 2, pointing at check-config.
    std::fs::write(&bad, "workers = 0\nretries = 99\n").unwrap();
    assert_usage_error(
        &["serve", "--config", bad.to_str().unwrap()],
        "line 1: workers: 0: must be 1 to 1024 (and 1 more; corelb check-config",
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sighup_reloads_the_config_file_and_a_bad_one_changes_nothing() {
    let (origin_a, a) = start_origin(&["--body", "A"]);
    let (origin_b, b) = start_origin(&["--body", "B"]);
    let dir = temp_dir("reload");
    let file = dir.join("corelb.toml");
    let listen = free_port();
    write_config(&file, listen, &[a]);
    let mut proxy = start(&["serve", "--config", file.to_str().unwrap()], listen);
    let rx = stderr_lines(&mut proxy);
    let pid = proxy.id().to_string();
    assert_eq!(get(listen, "/").text(), "A");

    write_config(&file, listen, &[b]);
    signal(&pid, "-HUP");
    let line = expect_line(&rx, "reloaded");
    assert!(
        line.contains(&format!("added: {b}")) && line.contains(&format!("removed: {a}")),
        "{line}"
    );
    for _ in 0..10 {
        assert_eq!(get(listen, "/").text(), "B");
    }

    // A file with a problem: logged, and the running configuration stays.
    std::fs::write(&file, format!("listen = \"{listen}\"\nworkers = \"two\"\n")).unwrap();
    signal(&pid, "-HUP");
    let line = expect_line(&rx, "reload:");
    assert!(
        line.contains("line 2: workers") && line.contains("still running the previous"),
        "{line}"
    );
    assert_eq!(get(listen, "/").text(), "B");

    // A listener change takes a restart: said so (naming the key the file
    // uses), and the backends still change.
    write_config(&file, free_port(), &[a, b]);
    signal(&pid, "-HUP");
    let line = expect_line(&rx, "reload:");
    assert!(
        line.contains("reload: listen changed") && line.contains("restart"),
        "{line}"
    );
    expect_line(&rx, "reloaded");
    let bodies: Vec<String> = (0..4).map(|_| get(listen, "/").text()).collect();
    assert_eq!(bodies.iter().filter(|b| *b == "A").count(), 2, "{bodies:?}");

    // Flags override the file on reload too.
    stop(proxy, "-TERM");
    let mut proxy = start(
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--backend",
            &b.to_string(),
            "--listen",
            &listen.to_string(),
        ],
        listen,
    );
    let rx = stderr_lines(&mut proxy);
    signal(&proxy.id().to_string(), "-HUP");
    expect_line(&rx, "nothing to change");
    assert_eq!(get(listen, "/").text(), "B");
    // A change of log level alone is applied and said.
    std::fs::write(
        &file,
        format!("log_level = \"debug\"\n[[backend]]\naddress = \"{b}\"\n"),
    )
    .unwrap();
    signal(&proxy.id().to_string(), "-HUP");
    let line = expect_line(&rx, "reloaded");
    assert!(line.ends_with(": log level debug"), "{line}");
    // Every setting a reload changes is named, by the key the file uses.
    std::fs::write(
        &file,
        format!(
            "log_level = \"debug\"\nalgorithm = \"least-connections\"\nretries = 1\n\
             [timeouts]\nconnect = \"2s\"\n[limits]\nmax_body_bytes = 1000\n[[backend]]\naddress = \"{b}\"\n"
        ),
    )
    .unwrap();
    signal(&proxy.id().to_string(), "-HUP");
    let line = expect_line(&rx, "reloaded");
    assert!(
        line.ends_with(
            "backends added: none; removed: none; changed: algorithm, retries, timeouts.connect, limits.max_body_bytes"
        ),
        "{line}"
    );
    // The log level beside another change is named too. (The backends come
    // from the command line here, so the file's weight is not in force.)
    std::fs::write(
        &file,
        format!(
            "log_level = \"info\"\nalgorithm = \"least-connections\"\nretries = 2\n\
             [timeouts]\nconnect = \"2s\"\n[limits]\nmax_body_bytes = 1000\n[[backend]]\naddress = \"{b}\"\n"
        ),
    )
    .unwrap();
    signal(&proxy.id().to_string(), "-HUP");
    let line = expect_line(&rx, "reloaded");
    assert!(line.ends_with("changed: retries, log level info"), "{line}");
    stop(proxy, "-TERM");
    stop(origin_a, "-TERM");
    stop(origin_b, "-TERM");
    let _ = std::fs::remove_dir_all(dir);
}

/// One request on a new TLS connection, `Connection: close`; true if it got a
/// complete 200.
fn tls_request_ok(addr: SocketAddr, client: &std::sync::Arc<rustls::ClientConfig>) -> bool {
    let Ok(stream) = common::tls::tls_connect(addr, "localhost", client) else {
        return false;
    };
    let mut r = Reader::new(stream);
    if r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    r.response_opts(false, false)
        .is_some_and(|(resp, _)| resp.status == 200)
}

/// A TLS listener passes through `--handover` like a plain one: the successor
/// serves it with the certificate of its own arguments, and clients making a new
/// TLS connection per request all along see no failure. The successor runs
/// fewer workers, so one of its workers takes several sockets of one address:
/// each must still speak what its address speaks.
#[test]
fn restart_with_handover_keeps_a_tls_listener_and_loses_no_request() {
    use common::tls::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (origin, origin_addr) = start_origin(&[]);
    let dir = TempDir::new("tls-handover");
    let ca = Ca::new("handover CA");
    let leaf = ca.leaf(&["localhost"]);
    let files = write_pair(&dir, "site", &leaf);
    let client = client_config(&ca.pem);
    let (addr, plain) = (free_port(), free_port());
    let (listen, plain_listen, backend, sock) = (
        format!("{addr},tls"),
        plain.to_string(),
        origin_addr.to_string(),
        dir.0.join("handover.sock"),
    );
    let (cert, key, sock) = (arg(&files.cert), arg(&files.key), arg(&sock));
    let args = |workers| {
        [
            "serve",
            "--backend",
            &backend,
            "--listen",
            &plain_listen,
            "--listen",
            &listen,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--workers",
            workers,
            "--handover",
            &sock,
        ]
    };
    let mut old = start(&args("3"), addr);
    assert!(tls_request_ok(addr, &client));
    let running = Arc::new(AtomicBool::new(true));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (running, ok, failed, client) = (
                Arc::clone(&running),
                Arc::clone(&ok),
                Arc::clone(&failed),
                Arc::clone(&client),
            );
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let counter = if tls_request_ok(addr, &client) {
                        &ok
                    } else {
                        &failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_until(
        || ok.load(Ordering::Relaxed) >= 20,
        "the old process serves TLS",
    );
    let new = spawn(BIN, &args("1"));
    let status = exited(&mut old).expect("the old corelb did not exit after the handover");
    assert_eq!(status.code(), Some(0));
    let before = ok.load(Ordering::Relaxed);
    wait_until(
        || ok.load(Ordering::Relaxed) >= before + 20,
        "the successor serves TLS",
    );
    running.store(false, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let served = served_leaf(&tls_connect(addr, "localhost", &client).unwrap());
    assert_eq!(served, leaf_der(&leaf.0));
    // Every socket speaks what its address does: many tries, as the kernel
    // spreads connections over the sockets of an address.
    for _ in 0..20 {
        assert_eq!(get(plain, "/").status, 200, "the plain listener");
        let mut c = connect(addr);
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (got, _) = read_until_end(&mut c);
        assert!(
            !got.starts_with(b"HTTP/"),
            "plain HTTP answered on the TLS port: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    stop(new, "-TERM");
    stop(origin, "-TERM");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "TLS requests failed during the handover ({} succeeded)",
        ok.load(Ordering::Relaxed)
    );
}

/// SIGHUP with the configuration on the command line still reads the
/// certificate files again: a new client sees the new certificate, and the log
/// says so.
#[test]
fn sighup_without_a_config_file_rotates_the_tls_certificate() {
    use common::tls::*;
    let (origin, origin_addr) = start_origin(&[]);
    let dir = TempDir::new("tls-sighup");
    let ca = Ca::new("sighup CA");
    let first = ca.leaf(&["localhost"]);
    let files = write_pair(&dir, "site", &first);
    let client = client_config(&ca.pem);
    let addr = free_port();
    let (listen, backend) = (format!("{addr},tls"), origin_addr.to_string());
    let (cert, key) = (arg(&files.cert), arg(&files.key));
    let args = [
        "serve",
        "--backend",
        &backend,
        "--listen",
        &listen,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--workers",
        "1",
    ];
    let proxy = start(&args, addr);
    let served = || served_leaf(&tls_connect(addr, "localhost", &client).unwrap());
    assert_eq!(served(), leaf_der(&first.0));
    let second = ca.leaf(&["localhost"]);
    write_pair(&dir, "site", &second);
    signal(&proxy.id().to_string(), "-HUP");
    wait_until(
        || served() == leaf_der(&second.0),
        "the new certificate is served",
    );
    // A key that does not belong keeps the certificate in force.
    dir.write("site.key", &ca.leaf(&["localhost"]).1);
    signal(&proxy.id().to_string(), "-HUP");
    let out = stop(proxy, "-TERM");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reloaded the TLS certificates: changed"),
        "{err}"
    );
    assert!(
        err.contains("does not belong to the certificate")
            && err.contains("still serving the previous certificates"),
        "{err}"
    );
    stop(origin, "-TERM");
}

#[test]
fn check_config_reads_the_tls_files() {
    use common::tls::*;
    let dir = TempDir::new("tls-check");
    let ca = Ca::new("check CA");
    let files = write_pair(&dir, "site", &ca.leaf(&["localhost"]));
    let config = |cert: &str, key: &str| {
        let path = dir.write(
            "corelb.toml",
            &format!(
                "listen = [\"127.0.0.1:8443,tls\"]\n[[backend]]\naddress = \"127.0.0.1:9001\"\n[tls]\ncert = [{cert:?}]\nkey = [{key:?}]\n"
            ),
        );
        run(&["check-config", &arg(&path)])
    };
    let (code, out, err) = config(&arg(&files.cert), &arg(&files.key));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listening on 127.0.0.1:8443,tls"), "{out}");
    let other = dir.write("other.key", &ca.leaf(&["localhost"]).1);
    let (code, _, err) = config(&arg(&files.cert), &arg(&other));
    assert_eq!(code, 2);
    assert!(
        err.contains("tls.cert") && err.contains("does not belong"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// The whole TLS path from a configuration file: a TLS listener in front of an
/// `https://` backend whose certificate names another host. The client gets a
/// 502 over its own TLS connection, and stderr names the backend and why.
#[test]
fn a_config_file_serves_tls_and_an_https_backend_that_fails_verification_is_logged() {
    use common::tls::*;
    let dir = TempDir::new("tls-config-file");
    let ca = Ca::new("config CA");
    let files = write_pair(&dir, "site", &ca.leaf(&["localhost"]));
    let backend = TlsBackend::start(&ca.leaf(&["other.test"]));
    let ca_file = dir.write("ca.pem", &ca.pem);
    let addr = free_port();
    let path = dir.write(
        "corelb.toml",
        &format!(
            "listen = [\"{addr},tls\"]\nworkers = 1\nbackend_ca = {:?}\n[[backend]]\naddress = \"https://localhost:{}\"\n[tls]\ncert = [{:?}]\nkey = [{:?}]\n",
            arg(&ca_file),
            backend.addr.port(),
            arg(&files.cert),
            arg(&files.key)
        ),
    );
    let proxy = start(&["serve", "--config", &arg(&path)], addr);
    let client = client_config(&ca.pem);
    let mut r = Reader::new(tls_connect(addr, "localhost", &client).unwrap());
    r.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (resp, _) = r.response_opts(false, false).expect("a response");
    assert_eq!(resp.status, 502);
    let out = stop(proxy, "-TERM");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| {
            l.contains(&format!(
                "corelb: backend localhost:{}: ",
                backend.addr.port()
            ))
        })
        .unwrap_or_else(|| panic!("no line about the backend: {err}"));
    assert!(line.contains("certificate"), "{line}");
}

/// `--version` and `-V` name the version and the commit (git's own word for it
/// when built from a checkout); `-h` is `--help`; an unknown command says which
/// exist; every usage error ends by naming the help to read.
#[test]
fn version_help_and_usage_messages() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    for flag in ["--version", "-V"] {
        let (code, out, _) = run(&[flag]);
        assert_eq!(code, 0);
        assert!(
            out.starts_with(&format!("corelb {}", env!("CARGO_PKG_VERSION"))),
            "{out}"
        );
        if let Some(c) = &commit {
            assert!(out.contains(&format!("(commit {c})")), "{out}");
        }
    }
    assert_eq!(run(&["-h"]), run(&["--help"]));
    assert_eq!(run(&["serve", "-h"]), run(&["serve", "--help"]));
    assert_usage_error(
        &["frobnicate"],
        "unknown command \"frobnicate\": the commands are serve",
    );
    for args in [
        &["serve", "--bogus"][..],
        &["serve"],
        &["serve", "--backend", "127.0.0.1:9", "--idle-timeout", "5h"],
        &["backend", "--bogus"],
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}");
        assert!(
            err.trim_end().ends_with("--help)") || err.contains("--help lists"),
            "{args:?}: {err}"
        );
    }
    assert_usage_error(
        &["serve", "--backend", "127.0.0.1:9", "--idle-timeout", "5h"],
        "unknown unit h: use ms, s or m",
    );
}

/// Log lines carry an RFC 3339 time in UTC with milliseconds and the level;
/// into the journal (JOURNAL_STREAM naming stderr's device and inode, as
/// systemd sets it) they carry the syslog priority prefix instead.
#[test]
fn log_lines_are_stamped_or_prefixed_for_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let (origin, origin_addr) = start_origin(&[]);
    let backend = origin_addr.to_string();
    let dir = common::tls::TempDir::new("log-format");
    for journal in [false, true] {
        let addr = free_port();
        let listen = addr.to_string();
        let path = dir.0.join(format!("stderr-{journal}"));
        let file = std::fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--listen",
            &listen,
            "--backend",
            &backend,
            "--workers",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        let mut child = cmd.spawn().unwrap();
        wait_until(
            || std::fs::read_to_string(&path).is_ok_and(|s| s.contains("listening on")),
            "the start-up line",
        );
        signal(&child.id().to_string(), "-TERM");
        child.wait().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        if journal {
            assert!(first.starts_with("<6>corelb "), "{first}");
            assert!(text.lines().all(|l| l.starts_with('<')), "{text}");
        } else {
            // 2026-12-07T20:04:50.597Z info  corelb ...
            let b = first.as_bytes();
            let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
            assert!(
                digits(0..4)
                    && b[4] == b'-'
                    && b[10] == b'T'
                    && b[19] == b'.'
                    && digits(20..23)
                    && b[23] == b'Z',
                "{first}"
            );
            assert!(first[24..].starts_with(" info  corelb "), "{first}");
        }
    }
    stop(origin, "-TERM");
}

/// logrotate's way: the access log is moved away, SIGHUP, and the lines from
/// then on go to a new file at the path; none is lost or written twice.
#[test]
fn sighup_opens_the_access_log_again_after_a_rotation() {
    let (origin, origin_addr) = start_origin(&[]);
    let dir = common::tls::TempDir::new("logrotate");
    let log = dir.0.join("access.log");
    let addr = free_port();
    let (listen, backend, log_arg) = (
        addr.to_string(),
        origin_addr.to_string(),
        common::tls::arg(&log),
    );
    let proxy = start(
        &[
            "serve",
            "--listen",
            &listen,
            "--backend",
            &backend,
            "--workers",
            "1",
            "--access-log",
            &log_arg,
        ],
        addr,
    );
    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(get(addr, "/before").status, 200);
    wait_until(|| lines(&log).len() == 1, "the first line is written");
    let rotated = dir.0.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    signal(&proxy.id().to_string(), "-HUP");
    wait_until(|| log.exists(), "a new file at the path");
    assert_eq!(get(addr, "/after").status, 200);
    wait_until(
        || lines(&log).len() == 1,
        "the next line goes to the new file",
    );
    assert!(
        lines(&rotated)[0].contains("GET /before "),
        "{:?}",
        lines(&rotated)
    );
    assert!(lines(&log)[0].contains("GET /after "), "{:?}", lines(&log));
    let out = stop(proxy, "-TERM");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("opened the access log") && err.contains("again"),
        "{err}"
    );
    assert_eq!(lines(&rotated).len(), 1);
    stop(origin, "-TERM");
}
