//! What the workers share: the plan (one configuration's backends, selector and
//! health), the counters each worker writes and anyone reads, and the views the
//! admin endpoint builds from them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::access;
use crate::backends::select::{self, Select};
use crate::backends::{Health, Member};
use crate::config::ProxyConfig;
use crate::counters::Padded;
use crate::counters::WorkerMetrics;
use crate::metrics;

/// What a plan reads from files: the listeners' certificates and the roots
/// `https://` backends are checked against.
pub(super) type Loaded = (
    Option<crate::tls::ServerTls>,
    Option<Arc<rustls::ClientConfig>>,
);

/// Per-worker counters, written by their worker only and read by anyone.
#[derive(Default)]
pub struct WorkerStats {
    pub accepted: AtomicU64,
    pub requests: AtomicU64,
    /// Client connections open now.
    pub open: AtomicU64,
    /// The number of the plan (configuration) this worker serves with.
    pub plan: AtomicU64,
}

/// What every worker reads and a reload leaves alone: counters, the access log,
/// and the settings that take a restart.
pub(super) struct Shared {
    pub(super) metrics: Vec<Padded<WorkerMetrics>>,
    pub(super) access: Option<Arc<access::Sink>>,
    pub(super) stats: Vec<Padded<WorkerStats>>,
    pub(super) max_header_bytes: usize,
    pub(super) rewrite_host: bool,
    pub(super) busy_poll: Duration,
    /// The listeners with their bound addresses (ports resolved): what each
    /// one's clients speak (TLS, a PROXY header first). A worker tells its
    /// sockets apart by address: after a handover from a process with more
    /// workers, one worker may hold several sockets of one address.
    pub(super) listens: Vec<crate::config::Listen>,
    /// The configuration in force: what the admin endpoint shows, and what the
    /// next reload starts from. Workers hold their own `Arc` of it.
    pub(super) current: Mutex<Arc<Plan>>,
    /// Backends a reload took out, and when: one that comes back soon (an
    /// address DNS gives again) takes up its state where it left it.
    pub(super) retired: Mutex<Vec<(std::time::Instant, Arc<crate::backends::Member>)>>,
}

impl Shared {
    pub(super) fn current(&self) -> Arc<Plan> {
        Arc::clone(&self.current.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One configuration's backends and how requests are spread over them, with the
/// settings each new request follows. A reload makes a new one; backends that
/// stay keep their `Member` (health, counters, in-flight count), and each worker
/// its idle connections to them.
pub struct Plan {
    /// 0 at start, one more at each reload.
    pub(super) number: u64,
    /// What this was built from (restart-only settings are those in force).
    pub(super) config: ProxyConfig,
    pub(super) health: Arc<Health>,
    pub(super) selector: Box<dyn Select>,
    /// The selector reads requests in flight / hash keys (else they are not kept).
    pub(super) count_inflight: bool,
    pub(super) hash_key: bool,
    /// The weight each backend is balanced with (the configured one, or one set
    /// at run time).
    pub(super) weights: Vec<u32>,
    /// The certificates and TLS settings of the TLS listeners, as read when this
    /// plan was made (each connection keeps the one it began with).
    pub(super) tls: Option<crate::tls::ServerTls>,
    /// The TLS settings for `https://` backends (their trusted roots), if any.
    pub(super) backend_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Plan {
    /// Build over `config`'s backends, taking the state of those that are already
    /// `members` (same address and name).
    pub(super) fn build(
        number: u64,
        config: ProxyConfig,
        (tls, backend_tls): Loaded,
        workers: usize,
        members: &[Arc<Member>],
    ) -> Plan {
        let members = config
            .backends
            .iter()
            .map(|b| {
                members
                    .iter()
                    .find(|m| {
                        m.addr == b.addr
                            && m.authority == b.authority
                            && m.name == b.name()
                            && m.tls.is_some() == b.tls
                            && m.send_proxy == b.send_proxy
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        // A name that does not parse was refused with the config.
                        let tls = b
                            .tls
                            .then(|| crate::tls::server_name(&b.authority).ok())
                            .flatten();
                        let m = Member::reached_by(
                            b.addr,
                            b.authority.clone(),
                            b.name().to_string(),
                            tls,
                            b.send_proxy,
                            workers,
                        );
                        if number > 0 {
                            // Added by a reload: it starts slowly.
                            m.joined();
                        }
                        m
                    })
            })
            .collect();
        let checks = config.health_check.is_some();
        let health = Arc::new(
            Health::of(members, config.passive, checks, config.log_health)
                .with_slow_start(config.tune.slow_start),
        );
        // A weight set at run time holds until the file changes that backend's.
        let weights: Vec<u32> = (config.backends.iter().enumerate())
            .map(|(i, b)| health.member(i).weight_for(b.weight))
            .collect();
        let backends: Vec<(&str, u32)> = (config.backends.iter().zip(&weights))
            .map(|(b, &w)| (b.name(), w))
            .collect();
        let selector = select::build(config.algorithm, &backends);
        Plan {
            number,
            count_inflight: selector.uses_inflight(),
            hash_key: selector.uses_key(),
            selector,
            health,
            config,
            weights,
            tls,
            backend_tls,
        }
    }
}

/// A snapshot of one worker's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    pub accepted: u64,
    pub requests: u64,
    /// Client connections open at the time of the snapshot.
    pub open: u64,
}

/// The per-worker counters of a proxy, readable from any thread.
#[derive(Clone)]
pub struct ProxyStats(pub(super) Arc<Shared>);

impl ProxyStats {
    pub(super) fn view<'a>(&'a self, plan: &'a Plan) -> metrics::View<'a> {
        let s = &self.0;
        let health = &plan.health;
        metrics::View {
            config: &plan.config,
            reloads: plan.number,
            last_backend_kept: health.last_backend_kept(),
            backends: health
                .members()
                .iter()
                .enumerate()
                .map(|(b, m)| metrics::BackendView {
                    name: &m.name,
                    up: health.is_up(b),
                    admin_state: m.admin_state().name(),
                    weight: plan.weights[b],
                    ramp: health.ramp_share(b),
                    connections: m.connections(),
                    inflight: m.inflight(),
                    per_worker: m.counts().map(|c| c.snapshot()).collect(),
                })
                .collect(),
            workers: self
                .counts()
                .iter()
                .map(|c| (c.accepted, c.requests, c.open))
                .collect(),
            metrics: s.metrics.iter().map(|m| &m.0).collect(),
        }
    }

    /// The Prometheus text exposition of every counter (the admin `/metrics`).
    pub fn prometheus(&self) -> String {
        metrics::prometheus(&self.view(&self.0.current()))
    }

    /// The admin `/status` JSON.
    pub fn status_json(&self) -> String {
        metrics::status_json(&self.view(&self.0.current()))
    }

    /// Accepted connections and completed requests, per worker.
    pub fn counts(&self) -> Vec<WorkerCounts> {
        self.0
            .stats
            .iter()
            .map(|s| WorkerCounts {
                accepted: s.0.accepted.load(Ordering::Relaxed),
                requests: s.0.requests.load(Ordering::Relaxed),
                open: s.0.open.load(Ordering::Relaxed),
            })
            .collect()
    }
}
