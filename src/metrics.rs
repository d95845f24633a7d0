//! The admin endpoint's view of the counters: Prometheus text exposition
//! (version 0.0.4) and a JSON status. A scrape's cost depends on the number of
//! workers and backends, never on the traffic.

use std::fmt::Write;

use crate::backends::AdminState;
use crate::counters::{
    BUCKETS, CLASSES, PROXY_FAILURES, Snapshot, TLS_FAILURES, TLS_VERSIONS, WorkerMetrics, get,
};

/// What a scrape shows besides the worker metrics.
pub struct View<'a> {
    /// The configuration in force.
    pub config: &'a crate::config::ProxyConfig,
    /// Reloads applied since start.
    pub reloads: u64,
    /// Passive health is keeping the last backend up in service (see
    /// `Health::last_backend_kept`).
    pub last_backend_kept: bool,
    pub backends: Vec<BackendView<'a>>,
    /// Per worker: accepted connections, completed requests, open client connections.
    pub workers: Vec<(u64, u64, u64)>,
    pub metrics: Vec<&'a WorkerMetrics>,
}

pub struct BackendView<'a> {
    pub name: &'a str,
    pub up: bool,
    /// What the operator set at run time: ready, drain or disabled.
    pub admin_state: &'static str,
    /// The weight it is balanced with.
    pub weight: u32,
    /// The share of its traffic slow start lets it have now (1: all).
    pub ramp: f64,
    /// Open connections to it (as of each worker's last sweep).
    pub connections: u64,
    pub inflight: usize,
    /// Responses relayed from this backend and their latency, per worker.
    pub per_worker: Vec<Snapshot>,
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
        "corelb_build_info",
        "gauge",
        "The build serving: its version and git commit (always 1).",
    );
    let _ = writeln!(
        out,
        "corelb_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        crate::VERSION,
        crate::COMMIT
    );
    family(
        &mut out,
        "corelb_requests_total",
        "counter",
        "Responses sent, by worker, backend (\"local\" for corelb's own) and status class.",
    );
    for (w, m) in v.metrics.iter().enumerate() {
        let backends = v
            .backends
            .iter()
            .map(|b| (b.name, b.per_worker[w].responses));
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
    let per_worker: [(&str, &str, &str, PerWorker); 10] = [
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
        (
            "corelb_upstream_surplus_total",
            "counter",
            "Backend connections closed, never reused, because the backend sent bytes that belong to no response, by worker.",
            |m, _| get(&m.upstream_surplus),
        ),
        (
            "corelb_spliced_responses_total",
            "counter",
            "Responses whose body went backend -> pipe -> client with splice(2) (--splice), by worker.",
            |m, _| get(&m.spliced),
        ),
        (
            "corelb_client_received_bytes_total",
            "counter",
            "Bytes read from clients, by worker (HTTP as it arrived, after TLS decryption; PROXY headers not counted).",
            |m, _| m.client.get().0,
        ),
        (
            "corelb_client_sent_bytes_total",
            "counter",
            "Bytes written to clients, by worker (HTTP, relayed responses and corelb's own answers, before TLS encryption).",
            |m, _| m.client.get().1,
        ),
    ];
    for (name, kind, help, value) in per_worker {
        family(&mut out, name, kind, help);
        for (w, (m, counts)) in v.metrics.iter().zip(&v.workers).enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", value(m, counts));
        }
    }
    family(
        &mut out,
        "corelb_tls_handshakes_total",
        "counter",
        "Client TLS handshakes completed, by worker, TLS version, and whether they resumed an earlier session.",
    );
    for (w, m) in v.metrics.iter().enumerate() {
        for (version, kinds) in TLS_VERSIONS.iter().zip(&m.tls_handshakes) {
            for (resumed, n) in ["false", "true"].iter().zip(kinds) {
                let _ = writeln!(
                    out,
                    "corelb_tls_handshakes_total{{worker=\"{w}\",version=\"{version}\",resumed=\"{resumed}\"}} {}",
                    get(n)
                );
            }
        }
    }
    family(
        &mut out,
        "corelb_tls_handshake_failures_total",
        "counter",
        "Client TLS handshakes that failed, by worker and reason: incompatible (no version, cipher or ALPN protocol in common), malformed (not TLS, or broken TLS), alert (the client refused us), certificate, other, timeout (not done within the header timeout), closed (the client left).",
    );
    for (w, m) in v.metrics.iter().enumerate() {
        for (reason, n) in TLS_FAILURES.iter().zip(&m.tls_failures) {
            let _ = writeln!(
                out,
                "corelb_tls_handshake_failures_total{{worker=\"{w}\",reason=\"{reason}\"}} {}",
                get(n)
            );
        }
    }
    family(
        &mut out,
        "corelb_upstream_tls_failures_total",
        "counter",
        "TLS to https:// backends that failed (an exchange got 502 or went to another backend), by worker and reason: certificate (it did not verify: expired, another host, an unknown issuer), incompatible, malformed, alert, other.",
    );
    for (w, m) in v.metrics.iter().enumerate() {
        for (reason, n) in TLS_FAILURES.iter().zip(&m.upstream_tls_failures) {
            let _ = writeln!(
                out,
                "corelb_upstream_tls_failures_total{{worker=\"{w}\",reason=\"{reason}\"}} {}",
                get(n)
            );
        }
    }
    family(
        &mut out,
        "corelb_proxy_headers_total",
        "counter",
        "PROXY protocol headers read on proxy-protocol listeners, by worker and version (1: text, 2: binary).",
    );
    for (w, m) in v.metrics.iter().enumerate() {
        for (version, n) in ["1", "2"].iter().zip(&m.proxy_headers) {
            let _ = writeln!(
                out,
                "corelb_proxy_headers_total{{worker=\"{w}\",version=\"{version}\"}} {}",
                get(n)
            );
        }
    }
    family(
        &mut out,
        "corelb_proxy_header_failures_total",
        "counter",
        "Connections on proxy-protocol listeners closed before a PROXY header was read, by worker and reason: untrusted (the peer is not in --proxy-protocol-from), missing (the connection did not begin with one), malformed, timeout (none whole within the header timeout), closed (the peer left).",
    );
    for (w, m) in v.metrics.iter().enumerate() {
        for (reason, n) in PROXY_FAILURES.iter().zip(&m.proxy_failures) {
            let _ = writeln!(
                out,
                "corelb_proxy_header_failures_total{{worker=\"{w}\",reason=\"{reason}\"}} {}",
                get(n)
            );
        }
    }
    family(
        &mut out,
        "corelb_config_reloads_total",
        "counter",
        "Configuration reloads applied (SIGHUP with --config).",
    );
    let _ = writeln!(out, "corelb_config_reloads_total {}", v.reloads);
    crate::process::exposition(&mut out);
    family(
        &mut out,
        "corelb_last_backend_kept",
        "gauge",
        "1 while passive health keeps the last backend that is up in service after failures that would have taken it out (within the last fail window).",
    );
    let _ = writeln!(
        out,
        "corelb_last_backend_kept {}",
        u64::from(v.last_backend_kept)
    );
    // One series per backend each.
    type PerBackend = fn(&BackendView<'_>) -> u64;
    let per_backend: [(&str, &str, PerBackend); 4] = [
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
        (
            "corelb_backend_connections",
            "Open connections to the backend, busy or idle (each worker counts at its timer sweep, at least every 500 ms).",
            |b| b.connections,
        ),
        (
            "corelb_backend_weight",
            "The weight the backend is balanced with (configured, or set at run time).",
            |b| u64::from(b.weight),
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
        "corelb_backend_slow_start_share",
        "gauge",
        "The share of its traffic slow start lets the backend have now (1 out of slow start).",
    );
    for b in &v.backends {
        let _ = writeln!(
            out,
            "corelb_backend_slow_start_share{{backend=\"{}\"}} {:.3}",
            label(b.name),
            b.ramp
        );
    }
    family(
        &mut out,
        "corelb_backend_admin_state",
        "gauge",
        "1 for the state the operator set at run time (ready, drain, disabled), 0 for the others.",
    );
    for b in &v.backends {
        for state in AdminState::ALL.map(AdminState::name) {
            let _ = writeln!(
                out,
                "corelb_backend_admin_state{{backend=\"{}\",state=\"{state}\"}} {}",
                label(b.name),
                u8::from(state == b.admin_state)
            );
        }
    }
    // One series per worker and backend each.
    type Moved = fn(&Snapshot) -> u64;
    let traffic: [(&str, &str, Moved); 2] = [
        (
            "corelb_backend_received_bytes_total",
            "Bytes read from the backend, by worker and backend (HTTP, after TLS decryption).",
            |s| s.traffic.0,
        ),
        (
            "corelb_backend_sent_bytes_total",
            "Bytes written to the backend, by worker and backend (HTTP, rewritten heads and bodies, before TLS encryption; PROXY headers and health checks not counted).",
            |s| s.traffic.1,
        ),
    ];
    for (name, help, value) in traffic {
        family(&mut out, name, "counter", help);
        for w in 0..v.metrics.len() {
            for b in &v.backends {
                let _ = writeln!(
                    out,
                    "{name}{{worker=\"{w}\",backend=\"{}\"}} {}",
                    label(b.name),
                    value(&b.per_worker[w])
                );
            }
        }
    }
    family(
        &mut out,
        "corelb_request_duration_seconds",
        "histogram",
        "From a request head to the end of its response, by worker and backend.",
    );
    for w in 0..v.metrics.len() {
        for b in &v.backends {
            let at = format!("worker=\"{w}\",backend=\"{}\"", label(b.name));
            let snap = &b.per_worker[w];
            let mut cumulative = 0;
            for (i, n) in snap.latency.iter().enumerate() {
                cumulative += n;
                let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "corelb_request_duration_seconds_bucket{{{at},le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = snap.latency_sum_micros as f64 / 1e6;
            let _ = writeln!(out, "corelb_request_duration_seconds_sum{{{at}}} {sum}");
            let _ = writeln!(
                out,
                "corelb_request_duration_seconds_count{{{at}}} {cumulative}"
            );
        }
    }
    out
}

pub fn json_string(s: &str) -> String {
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

/// The `q` quantile of a latency histogram (non-cumulative counts per bucket of
/// `BUCKETS`, then above them all), in seconds, interpolated within its bucket
/// as Prometheus' `histogram_quantile` does; `None` without samples.
pub fn quantile(buckets: &[u64; BUCKETS.len() + 1], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&hi) = BUCKETS.get(i) else {
                // Above the last bound: that bound is all that can be said.
                return BUCKETS.last().copied();
            };
            let lo = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            return Some(lo + (hi - lo) * (rank - below as f64) / n as f64);
        }
        below += n;
    }
    BUCKETS.last().copied()
}

/// One backend's state as JSON (in `/status`, and the answer to a runtime
/// control request).
pub fn backend_json(b: &BackendView<'_>) -> String {
    let requests: u64 = b.per_worker.iter().flat_map(|s| s.responses).sum();
    let mut buckets = [0u64; BUCKETS.len() + 1];
    for s in &b.per_worker {
        for (sum, n) in buckets.iter_mut().zip(s.latency) {
            *sum += n;
        }
    }
    let (received, sent) =
        (b.per_worker.iter()).fold((0, 0), |(r, s), w| (r + w.traffic.0, s + w.traffic.1));
    let ms =
        |q: f64| quantile(&buckets, q).map_or("null".to_string(), |s| format!("{:.2}", s * 1e3));
    format!(
        "{{\"address\":{},\"up\":{},\"admin_state\":\"{}\",\"weight\":{},\"ramp\":{:.3},\"inflight\":{},\"connections\":{},\"requests\":{requests},\"received_bytes\":{received},\"sent_bytes\":{sent},\"p50_ms\":{},\"p99_ms\":{}}}",
        json_string(b.name),
        b.up,
        b.admin_state,
        b.weight,
        b.ramp,
        b.inflight,
        b.connections,
        ms(0.5),
        ms(0.99),
    )
}

/// The JSON status: configuration summary, backends, workers and their skew (the
/// busiest worker's requests over the mean; 1.0 is an even spread).
pub fn status_json(v: &View<'_>) -> String {
    let mut out = String::from("{");
    let c = v.config;
    let _ = write!(
        out,
        "\"version\":{},\"commit\":{},",
        json_string(crate::VERSION),
        json_string(crate::COMMIT)
    );
    let _ = write!(
        out,
        "\"algorithm\":{},\"reloads\":{},\"last_backend_kept\":{},\"config\":{{\"listen\":[{}],\"workers\":{},\
         \"retries\":{},\"health_path\":{},\"max_connections\":{},\"max_body_bytes\":{},\
         \"timeouts_ms\":{{",
        json_string(&c.algorithm.to_string()),
        v.reloads,
        v.last_backend_kept,
        (c.listen.iter())
            .map(|a| json_string(&crate::config::values::Show::show(a)))
            .collect::<Vec<_>>()
            .join(","),
        c.workers,
        c.retries,
        c.health_check
            .as_ref()
            .map_or("null".to_string(), |h| json_string(&h.path)),
        c.max_connections,
        c.max_body_bytes,
    );
    let t = &c.timeouts;
    let timeouts = [
        ("idle", t.idle),
        ("header", t.header),
        ("connect", t.connect),
        ("response", t.response),
        ("body", t.body),
        ("upstream_idle", t.upstream_idle),
        ("shutdown", t.shutdown),
    ];
    for (i, (name, d)) in timeouts.iter().enumerate() {
        let comma = if i > 0 { "," } else { "" };
        let _ = write!(out, "{comma}\"{name}\":{}", d.as_millis());
    }
    out.push_str("}},\"backends\":[");
    for (i, b) in v.backends.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&backend_json(b));
    }
    out.push_str("],\"workers\":[");
    for (w, ((accepted, requests, open), m)) in v.workers.iter().zip(&v.metrics).enumerate() {
        if w > 0 {
            out.push(',');
        }
        let (received, sent) = m.client.get();
        let _ = write!(
            out,
            "{{\"worker\":{w},\"accepted\":{accepted},\"requests\":{requests},\"open\":{open},\
             \"received_bytes\":{received},\"sent_bytes\":{sent}}}"
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
    fn skew_is_one_for_an_even_spread() {
        let m = WorkerMetrics::default();
        let config = crate::config::ProxyConfig::new(vec![], vec![]);
        let v = View {
            config: &config,
            reloads: 0,
            last_backend_kept: false,
            backends: vec![],
            workers: vec![(10, 50, 0), (10, 50, 0)],
            metrics: vec![&m, &m],
        };
        assert!(status_json(&v).ends_with("\"skew\":1.000}"));
        assert_eq!(json_string("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let mut b = [0u64; BUCKETS.len() + 1];
        assert_eq!(quantile(&b, 0.5), None);
        b[0] = 100;
        assert!((quantile(&b, 0.5).unwrap() - 0.00025).abs() < 1e-12);
        b = [0; BUCKETS.len() + 1];
        // 90 between 0.5 and 1 ms, 10 between 25 and 50 ms.
        b[1] = 90;
        b[6] = 10;
        assert!((quantile(&b, 0.5).unwrap() - (0.0005 + 0.0005 * 50.0 / 90.0)).abs() < 1e-12);
        assert!((quantile(&b, 0.99).unwrap() - 0.0475).abs() < 1e-12);
        // Above every bound: the last bound.
        b[BUCKETS.len()] = 1000;
        assert_eq!(quantile(&b, 0.99), Some(10.0));
    }
}
