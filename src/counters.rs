//! Counters the workers publish without locks: each worker owns its own (on its
//! own cache lines, `Padded`) and only ever adds to them with relaxed atomics; a
//! scrape reads them all. `metrics` renders them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Keeps the counter on its own cache line, so the workers' writes to it never
/// invalidate a line that holds anything else.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct Padded<T>(pub T);

/// Upper bounds of the request-duration histogram, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Status classes counted: 1xx to 5xx.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

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

/// A latency histogram: non-cumulative counts per bucket of `BUCKETS` (the last
/// counts what is above them all), and the sum.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Bytes one worker moved over one kind of connection: read from the peer and
/// written to it, as HTTP (plaintext: TLS records' overhead, a PROXY header
/// and a health check's probe are not counted).
///
/// Only its worker ever adds to it, so an add is a load and a store, not a
/// locked read-modify-write: it is on every read and write a relay makes.
#[derive(Debug, Default)]
pub struct Traffic {
    received: AtomicU64,
    sent: AtomicU64,
}

impl Traffic {
    #[inline]
    pub fn received(&self, n: usize) {
        add_own(&self.received, n);
    }

    #[inline]
    pub fn sent(&self, n: usize) {
        add_own(&self.sent, n);
    }

    /// Bytes received and sent so far, together.
    #[inline]
    pub fn total(&self) -> u64 {
        get(&self.received).wrapping_add(get(&self.sent))
    }

    /// Bytes received and sent so far.
    pub fn get(&self) -> (u64, u64) {
        (get(&self.received), get(&self.sent))
    }
}

/// Add to a counter only the calling thread writes (see `Traffic`).
#[inline]
fn add_own(a: &AtomicU64, n: usize) {
    a.store(
        a.load(Ordering::Relaxed).wrapping_add(n as u64),
        Ordering::Relaxed,
    );
}

/// What one worker counts for one backend (kept in the backend's
/// `health::Member`, so it survives reloads).
#[derive(Debug, Default)]
pub struct BackendCounts {
    pub responses: Classes,
    /// From a request head to the end of its response.
    pub latency: Histogram,
    /// Open connections to the backend, busy or idle, as of the worker's last
    /// timer sweep.
    pub connections: AtomicU64,
    /// Bytes read from the backend and written to it.
    pub traffic: Traffic,
}

impl BackendCounts {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            responses: self.responses.get(),
            latency: self.latency.buckets.each_ref().map(get),
            latency_sum_micros: get(&self.latency.sum_micros),
            traffic: self.traffic.get(),
        }
    }
}

/// `BackendCounts` as read by a scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub responses: [u64; 5],
    pub latency: [u64; BUCKETS.len() + 1],
    pub latency_sum_micros: u64,
    /// Bytes received from the backend and sent to it.
    pub traffic: (u64, u64),
}

/// One worker's counters (those of a backend are in its `health::Member`).
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Responses corelb made itself (refusals, 502, 503 ...).
    pub local: Classes,
    /// Bytes read from clients and written to them (all listeners).
    pub client: Traffic,
    pub upstream_connects: AtomicU64,
    pub upstream_reuses: AtomicU64,
    pub retries: AtomicU64,
    /// Backend connections closed because bytes arrived beyond the end of a
    /// response, or while the connection was idle.
    pub upstream_surplus: AtomicU64,
    /// Backend connections open now (busy or pooled).
    pub upstream_open: AtomicU64,
    /// Responses relayed whole whose body went (in part) through a pipe.
    pub spliced: AtomicU64,
    /// Client TLS handshakes completed, by version (`TLS_VERSIONS`), full and
    /// resumed (a session remembered from an earlier connection).
    pub tls_handshakes: [[AtomicU64; 2]; 2],
    /// Client TLS handshakes that failed, by reason (`TLS_FAILURES`).
    pub tls_failures: [AtomicU64; 7],
    /// TLS to `https://` backends that failed, by reason (the first five of
    /// `TLS_FAILURES`).
    pub upstream_tls_failures: [AtomicU64; 5],
    /// PROXY protocol headers read on `proxy-protocol` listeners, by version.
    pub proxy_headers: [AtomicU64; 2],
    /// Connections on `proxy-protocol` listeners closed without one read, by
    /// reason (`PROXY_FAILURES`).
    pub proxy_failures: [AtomicU64; 5],
}

/// TLS versions counted, as the metric labels them.
pub const TLS_VERSIONS: [&str; 2] = ["1.2", "1.3"];

/// Why a client's TLS handshake failed, as the metric labels it: what rustls
/// refused (`io::stream::TlsFailure`), then `timeout` (not done within the
/// header timeout) and `closed` (the client left in the middle).
pub const TLS_FAILURES: [&str; 7] = [
    "incompatible",
    "malformed",
    "alert",
    "certificate",
    "other",
    "timeout",
    "closed",
];

/// Index in `TLS_FAILURES` of a handshake not finished within the header timeout.
pub const TLS_FAILED_TIMEOUT: usize = 5;
/// Index in `TLS_FAILURES` of a client that closed in the middle of its handshake.
pub const TLS_FAILED_CLOSED: usize = 6;

/// Why a connection on a `proxy-protocol` listener was closed before its PROXY
/// header was read, as the metric labels it.
pub const PROXY_FAILURES: [&str; 5] = ["untrusted", "missing", "malformed", "timeout", "closed"];

/// Why a connection on a `proxy-protocol` listener was closed before its
/// header was read (an index in `PROXY_FAILURES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyFailure {
    /// Its peer is not in `--proxy-protocol-from`.
    Untrusted = 0,
    /// It did not begin with a PROXY header.
    Missing = 1,
    Malformed = 2,
    /// No whole header within the header timeout.
    Timeout = 3,
    /// The peer closed before a whole header.
    Closed = 4,
}

pub fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_has_its_own_cache_line() {
        assert_eq!(
            std::mem::align_of::<Padded<std::sync::atomic::AtomicUsize>>(),
            128
        );
    }

    #[test]
    fn latency_lands_in_the_right_bucket_and_classes_count() {
        let c = BackendCounts::default();
        c.latency.observe(Duration::from_micros(400));
        c.latency.observe(Duration::from_millis(3));
        c.latency.observe(Duration::from_secs(30));
        let snap = c.snapshot();
        assert_eq!(snap.latency[0], 1);
        assert_eq!(snap.latency[3], 1);
        assert_eq!(snap.latency[BUCKETS.len()], 1);
        assert_eq!(snap.latency.iter().sum::<u64>(), 3);
        assert_eq!(snap.latency_sum_micros, 30_003_400);
        let m = WorkerMetrics::default();
        m.local.count(204);
        m.local.count(502);
        m.local.count(502);
        m.local.count(99);
        assert_eq!(m.local.get(), [1, 1, 0, 0, 2]);
    }
}
