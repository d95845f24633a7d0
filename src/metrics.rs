//! Counters the workers publish without locks, and their rendering for the admin
//! endpoint: Prometheus text exposition (version 0.0.4) and a JSON status.
//!
//! Each worker owns one `WorkerMetrics` (on its own cache lines) and only ever adds
//! to it with relaxed atomics; a scrape reads them all. A scrape's cost depends on
//! the number of workers and backends, never on the traffic.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the request-duration histogram, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Status classes counted: 1xx to 5xx.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Responses by status class, 1xx to 5xx.
#[derive(Debug, Default)]
pub struct Classes([AtomicU64; 5]);

impl Classes {
    pub fn count(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> [u64; 5] {
        self.0.each_ref().map(get)
    }
}

/// One worker's counters (those of a backend are in its `health::Member`).
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Responses corelb made itself (refusals, 502, 503 ...).
    pub local: Classes,
    pub upstream_connects: AtomicU64,
    pub upstream_reuses: AtomicU64,
    pub retries: AtomicU64,
    /// Backend connections open now (busy or pooled).
    pub upstream_open: AtomicU64,
    /// Non-cumulative counts per bucket; the last counts what is above them all.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
}

impl WorkerMetrics {
    /// A request took `took` from its head to the end of its response.
    pub fn latency(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// What a scrape shows besides the worker metrics.
pub struct View<'a> {
    pub algorithm: String,
    pub backends: Vec<BackendView<'a>>,
    /// Per worker: accepted connections, completed requests, open client connections.
    pub workers: Vec<(u64, u64, u64)>,
    pub metrics: Vec<&'a WorkerMetrics>,
}

pub struct BackendView<'a> {
    pub name: &'a str,
    pub up: bool,
    pub inflight: usize,
    /// Responses relayed from this backend, per worker, by class.
    pub responses: Vec<[u64; 5]>,
}

/// A label value, escaped as the text format wants (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Prometheus text exposition format 0.0.4.
pub fn prometheus(v: &View<'_>) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "corelb_requests_total",
        "counter",
        "Responses sent, by worker, backend (\"local\" for corelb's own) and status class.",
    );
    for (w, m) in v.metrics.iter().enumerate() {
        let backends = v.backends.iter().map(|b| (b.name, b.responses[w]));
        for (backend, classes) in backends.chain([("local", m.local.get())]) {
            for (c, n) in classes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "corelb_requests_total{{worker=\"{w}\",backend=\"{}\",class=\"{}\"}} {n}",
                    label(backend),
                    CLASSES[c],
                );
            }
        }
    }
    // One series per worker each: (name, type, help, value).
    type PerWorker = fn(&WorkerMetrics, &(u64, u64, u64)) -> u64;
    let per_worker: [(&str, &str, &str, PerWorker); 6] = [
        (
            "corelb_client_connections",
            "gauge",
            "Client connections open, by worker.",
            |_, w| w.2,
        ),
        (
            "corelb_accepted_connections_total",
            "counter",
            "Client connections accepted, by worker.",
            |_, w| w.0,
        ),
        (
            "corelb_upstream_connections",
            "gauge",
            "Backend connections open (busy or pooled), by worker.",
            |m, _| get(&m.upstream_open),
        ),
        (
            "corelb_upstream_connects_total",
            "counter",
            "New backend connections made, by worker.",
            |m, _| get(&m.upstream_connects),
        ),
        (
            "corelb_upstream_reuses_total",
            "counter",
            "Requests sent on a pooled backend connection, by worker.",
            |m, _| get(&m.upstream_reuses),
        ),
        (
            "corelb_retries_total",
            "counter",
            "Requests sent again (to another backend, or on a fresh connection), by worker.",
            |m, _| get(&m.retries),
        ),
    ];
    for (name, kind, help, value) in per_worker {
        family(&mut out, name, kind, help);
        for (w, (m, counts)) in v.metrics.iter().zip(&v.workers).enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", value(m, counts));
        }
    }
    // One series per backend each.
    type PerBackend = fn(&BackendView<'_>) -> u64;
    let per_backend: [(&str, &str, PerBackend); 2] = [
        (
            "corelb_backend_up",
            "1 when the backend takes requests (health checks and passive health agree).",
            |b| u64::from(b.up),
        ),
        (
            "corelb_backend_inflight",
            "Requests in flight (counted for least-connections and power-of-two only).",
            |b| b.inflight as u64,
        ),
    ];
    for (name, help, value) in per_backend {
        family(&mut out, name, "gauge", help);
        for b in &v.backends {
            let _ = writeln!(out, "{name}{{backend=\"{}\"}} {}", label(b.name), value(b));
        }
    }
    family(
        &mut out,
        "corelb_request_duration_seconds",
        "histogram",
        "From a request head to the end of its response, by worker.",
    );
    for (w, m) in v.metrics.iter().enumerate() {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += get(&m.latency[i]);
            let _ = writeln!(
                out,
                "corelb_request_duration_seconds_bucket{{worker=\"{w}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += get(&m.latency[BUCKETS.len()]);
        let _ = writeln!(
            out,
            "corelb_request_duration_seconds_bucket{{worker=\"{w}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "corelb_request_duration_seconds_sum{{worker=\"{w}\"}} {}",
            get(&m.latency_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "corelb_request_duration_seconds_count{{worker=\"{w}\"}} {cumulative}"
        );
    }
    out
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The JSON status: configuration summary, backends, workers and their skew (the
/// busiest worker's requests over the mean; 1.0 is an even spread).
pub fn status_json(v: &View<'_>) -> String {
    let mut out = String::from("{");
    let _ = write!(
        out,
        "\"algorithm\":{},\"backends\":[",
        json_string(&v.algorithm)
    );
    for (i, b) in v.backends.iter().enumerate() {
        let requests: u64 = b.responses.iter().flatten().sum();
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"address\":{},\"up\":{},\"inflight\":{},\"requests\":{requests}}}",
            json_string(b.name),
            b.up,
            b.inflight
        );
    }
    out.push_str("],\"workers\":[");
    for (w, (accepted, requests, open)) in v.workers.iter().enumerate() {
        if w > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"worker\":{w},\"accepted\":{accepted},\"requests\":{requests},\"open\":{open}}}"
        );
    }
    let total: u64 = v.workers.iter().map(|w| w.1).sum();
    let max = v.workers.iter().map(|w| w.1).max().unwrap_or(0);
    let skew = if total == 0 {
        1.0
    } else {
        max as f64 * v.workers.len() as f64 / total as f64
    };
    let _ = write!(out, "],\"skew\":{skew:.3}}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_right_bucket_and_classes_count() {
        let m = WorkerMetrics::default();
        m.latency(Duration::from_micros(400));
        m.latency(Duration::from_millis(3));
        m.latency(Duration::from_secs(30));
        assert_eq!(get(&m.latency[0]), 1);
        assert_eq!(get(&m.latency[3]), 1);
        assert_eq!(get(&m.latency[BUCKETS.len()]), 1);
        m.local.count(204);
        m.local.count(502);
        m.local.count(502);
        m.local.count(99);
        assert_eq!(m.local.get(), [1, 1, 0, 0, 2]);
    }

    #[test]
    fn skew_is_one_for_an_even_spread() {
        let m = WorkerMetrics::default();
        let v = View {
            algorithm: "round-robin".into(),
            backends: vec![],
            workers: vec![(10, 50, 0), (10, 50, 0)],
            metrics: vec![&m, &m],
        };
        assert!(status_json(&v).ends_with("\"skew\":1.000}"));
        assert_eq!(json_string("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }
}
