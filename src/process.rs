//! The process's own figures, as every Prometheus client library exports them
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), read
//! from /proc at scrape time on the admin thread. Off Linux, none is given.

use std::fmt::Write;

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no pointers.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The figures, or `None` where /proc does not give them.
struct Figures {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    open_fds: Option<usize>,
    max_fds: Option<u64>,
    start_time: Option<f64>,
}

fn read() -> Figures {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // The fields after the command name (which may hold spaces), from field 3.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let cpu_seconds = field(14).zip(field(15)).map(|(u, s)| (u + s) / ticks());
    // SAFETY: sysconf reads a constant of the system; no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let resident_bytes = field(24).map(|pages| pages as u64 * page);
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|b| b.trim().parse::<f64>().ok())
    });
    let start_time = field(22).zip(boot).map(|(t, boot)| boot + t / ticks());
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count());
    let max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    Figures {
        cpu_seconds,
        resident_bytes,
        open_fds,
        max_fds,
        start_time,
    }
}

/// Append the process families to a Prometheus exposition.
pub fn exposition(out: &mut String) {
    let f = read();
    let mut one = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(v) = value {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {v}");
        }
    };
    one(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        f.cpu_seconds.map(|s| format!("{s:.2}")),
    );
    one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        f.resident_bytes.map(|b| b.to_string()),
    );
    one(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        f.open_fds.map(|n| n.to_string()),
    );
    one(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        f.max_fds.map(|n| n.to_string()),
    );
    one(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        f.start_time.map(|t| format!("{t:.2}")),
    );
}
