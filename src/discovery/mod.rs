//! Backends from DNS, found on the control side and never on a worker's path.
//!
//! With `--resolve-interval`, every backend given by a name stands for all the
//! name's addresses: one member each, called `name:port@address`. With
//! `--backend-srv`, the members are the targets of a service's SRV records (the
//! lowest priority present), with their ports and weights. A thread asks again
//! every interval (sooner when a record's TTL is shorter, never under a
//! second), and when the set changed, hands the workers a new plan the way a
//! reload does: members that left drain, members that stayed keep their state.
//! A name that fails to resolve keeps its last addresses (one log line per
//! failure streak). A SIGHUP reload goes through here too, so the names of the
//! new configuration are expanded before it applies.

pub mod dns;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::config::{Backend, MAX_WEIGHT, ProxyConfig};
use crate::log::Level;
use crate::proxy::{Reloaded, Reloader};
use crate::runtime::StartError;

/// The shortest wait between two rounds of questions, whatever a TTL says.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What the names resolved to, by name: the last good answer of each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// `host` of a backend given by name -> its addresses, sorted.
    names: BTreeMap<String, Vec<IpAddr>>,
    /// SRV name -> its members: (target:port, address, weight), sorted.
    services: BTreeMap<String, Vec<(String, SocketAddr, u32)>>,
    /// Names whose last question failed, and why (logged once until the name
    /// resolves again).
    failing: Vec<(String, String)>,
    /// The shortest TTL of the answers (when the server gave TTLs).
    ttl: Option<u32>,
}

/// The host of an authority (`name:port`, `[v6]:port`), if it is a name and not
/// an address.
fn name_of(authority: &str) -> Option<&str> {
    let host = authority.rsplit_once(':')?.0;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>().is_err().then_some(host)
}

/// Whether `config` asks for names to be found again at run time.
pub fn wanted(config: &ProxyConfig) -> bool {
    config.resolve_interval.is_some() || !config.backend_srv.is_empty()
}

/// The addresses of `host`: from the DNS server if one is given (with the
/// records' shortest TTL), else from getaddrinfo.
fn addresses(server: Option<SocketAddr>, host: &str) -> Result<(Vec<IpAddr>, Option<u32>), String> {
    let mut ips = match server {
        Some(server) => {
            let answer = dns::addresses(server, host)?;
            if answer.records.is_empty() {
                return Err(format!("{host}: no A or AAAA record"));
            }
            return Ok((sorted(answer.records), answer.ttl));
        }
        None => (host, 0)
            .to_socket_addrs()
            .map_err(|e| format!("{host}: {e}"))?
            .map(|a| a.ip())
            .collect::<Vec<_>>(),
    };
    ips = sorted(ips);
    if ips.is_empty() {
        return Err(format!("{host}: no addresses"));
    }
    Ok((ips, None))
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

/// One round of questions for `config`'s names, starting from `last` (whose
/// answers stand for names that fail now). Returns the new answers and the
/// shortest TTL seen.
pub fn resolve(config: &ProxyConfig, last: &Resolved) -> (Resolved, Option<u32>) {
    let mut next = Resolved::default();
    let mut ttl: Option<u32> = None;
    let mut note = |t: Option<u32>| {
        if let Some(t) = t {
            ttl = Some(ttl.map_or(t, |old| old.min(t)));
        }
    };
    let failed = |next: &mut Resolved, name: &str, why: String| {
        next.failing.push((name.to_string(), why));
    };
    if config.resolve_interval.is_some() {
        for b in &config.backends {
            let Some(host) = name_of(&b.authority) else {
                continue;
            };
            if next.names.contains_key(host) {
                continue;
            }
            match addresses(config.dns_server, host) {
                Ok((ips, t)) => {
                    note(t);
                    next.names.insert(host.to_string(), ips);
                }
                Err(why) => {
                    failed(&mut next, host, why);
                    if let Some(old) = last.names.get(host) {
                        next.names.insert(host.to_string(), old.clone());
                    }
                }
            }
        }
    }
    for srv in &config.backend_srv {
        match service(config.dns_server, srv) {
            Ok((members, t)) => {
                note(t);
                next.services.insert(srv.clone(), members);
            }
            Err(why) => {
                failed(&mut next, srv, why);
                if let Some(old) = last.services.get(srv) {
                    next.services.insert(srv.clone(), old.clone());
                }
            }
        }
    }
    next.ttl = ttl;
    (next, ttl)
}

/// The members of an SRV name: the records of the lowest priority present,
/// each target's addresses with its port and weight (0 counts as 1).
#[allow(clippy::type_complexity)]
fn service(
    server: Option<SocketAddr>,
    name: &str,
) -> Result<(Vec<(String, SocketAddr, u32)>, Option<u32>), String> {
    let at = match server {
        Some(s) => s,
        None => dns::system_server()?,
    };
    let answer = dns::services(at, name)?;
    let Some(best) = answer.records.iter().map(|r| r.priority).min() else {
        return Err(format!("{name}: no SRV record"));
    };
    let mut ttl = answer.ttl;
    let mut members = Vec::new();
    for r in answer.records.iter().filter(|r| r.priority == best) {
        let (ips, t) = addresses(server, &r.target)?;
        ttl = match (ttl, t) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let weight = u32::from(r.weight).clamp(1, MAX_WEIGHT);
        for ip in ips {
            members.push((
                format!("{}:{}", r.target, r.port),
                SocketAddr::new(ip, r.port),
                weight,
            ));
        }
    }
    Ok((sorted(members), ttl))
}

/// `config` with its backends as `resolved` has them: a backend given by name
/// becomes one backend per address (`name:port@address`), and each SRV name
/// adds its members. Names without an answer yet stay as configured.
pub fn expand(config: &ProxyConfig, resolved: &Resolved) -> ProxyConfig {
    let mut out = config.clone();
    out.backends.clear();
    for b in &config.backends {
        let ips = name_of(&b.authority).and_then(|host| resolved.names.get(host));
        match ips {
            Some(ips) if config.resolve_interval.is_some() => {
                for &ip in ips {
                    out.backends.push(Backend {
                        addr: SocketAddr::new(ip, b.addr.port()),
                        label: Some(format!("{}@{ip}", b.authority)),
                        ..b.clone()
                    });
                }
            }
            _ => out.backends.push(b.clone()),
        }
    }
    for members in resolved.services.values() {
        for (authority, addr, weight) in members {
            let label = format!("{authority}@{}", addr.ip());
            if out.backends.iter().any(|b| b.name() == label) {
                continue;
            }
            out.backends.push(Backend {
                authority: authority.clone(),
                weight: *weight,
                label: Some(label),
                ..Backend::new(*addr)
            });
        }
    }
    out
}

/// The names as found last, and the configuration they expand.
struct State {
    configured: ProxyConfig,
    resolved: Resolved,
}

/// The thread that finds the backends again, and what a SIGHUP reload goes
/// through. Stops when dropped.
pub struct Discovery {
    state: Arc<Mutex<State>>,
    /// Rounds of questions asked so far by the thread.
    rounds: Arc<std::sync::atomic::AtomicU64>,
    reloader: Reloader,
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The first round, before the proxy starts: `config` expanded, and what was
/// found. A name that does not resolve now is a start error.
pub fn first_round(config: &ProxyConfig) -> Result<(ProxyConfig, Resolved), String> {
    let (resolved, _) = resolve(config, &Resolved::default());
    if let Some((_, why)) = resolved.failing.first() {
        return Err(format!("{why} (at start)"));
    }
    let expanded = expand(config, &resolved);
    if expanded.backends.is_empty() {
        return Err("the SRV records name no backend".into());
    }
    Ok((expanded, resolved))
}

impl Discovery {
    /// Start finding `configured`'s names again every interval, from what the
    /// first round found.
    pub fn spawn(
        configured: ProxyConfig,
        resolved: Resolved,
        reloader: Reloader,
    ) -> std::io::Result<Discovery> {
        let interval = configured
            .resolve_interval
            .unwrap_or(crate::config::DEFAULT_SRV_INTERVAL);
        let state = Arc::new(Mutex::new(State {
            configured,
            resolved,
        }));
        let (stop, stopped) = bounded(1);
        let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let thread = {
            let (state, reloader, count) =
                (Arc::clone(&state), reloader.clone(), Arc::clone(&rounds));
            std::thread::Builder::new()
                .name("corelb-dns".into())
                .spawn(move || run(&state, &reloader, interval, &stopped, &count))?
        };
        Ok(Discovery {
            state,
            rounds,
            reloader,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Rounds of questions the thread has asked (and dealt with) so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A reload: `config`'s names asked now, then applied expanded.
    pub fn reload(&self, config: ProxyConfig) -> Result<Reloaded, StartError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (resolved, _) = resolve(&config, &state.resolved);
        log_failures(&resolved, &state.resolved);
        let result = self.reloader.reload(expand(&config, &resolved))?;
        state.configured = config;
        state.resolved = resolved;
        Ok(result)
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long to wait before the next round: the interval, or the answers' TTL if
/// shorter, never under `MIN_INTERVAL`.
fn next_wait(interval: Duration, ttl: Option<u32>) -> Duration {
    ttl.map_or(interval, |t| {
        interval.min(Duration::from_secs(u64::from(t)))
    })
    .max(MIN_INTERVAL)
}

fn run(
    state: &Mutex<State>,
    reloader: &Reloader,
    interval: Duration,
    stopped: &Receiver<()>,
    rounds: &std::sync::atomic::AtomicU64,
) {
    let mut wait = {
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        next_wait(interval, state.resolved.ttl)
    };
    loop {
        match stopped.recv_timeout(wait) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        // Counted once the round is dealt with (the guard drops at its end).
        let _counted = Counted(rounds);
        let (resolved, ttl) = resolve(&state.configured, &state.resolved);
        log_failures(&resolved, &state.resolved);
        wait = next_wait(interval, ttl);
        if resolved.names == state.resolved.names && resolved.services == state.resolved.services {
            state.resolved = resolved;
            continue;
        }
        match reloader.reload(expand(&state.configured, &resolved)) {
            Ok(r) => {
                crate::log!(
                    Level::Info,
                    "corelb: DNS: the backends changed: added: {}; removed: {}",
                    list(&r.added),
                    list(&r.removed)
                );
                state.resolved = resolved;
            }
            // Tried again next round.
            Err(e) => crate::log!(
                Level::Warn,
                "corelb: DNS: the new backends were not applied: {e}"
            ),
        }
    }
}

/// One line per name that failed now and had not failed the round before.
fn log_failures(now: &Resolved, before: &Resolved) {
    for (name, why) in &now.failing {
        if !before.failing.iter().any(|(n, _)| n == name) {
            crate::log!(
                Level::Warn,
                "corelb: DNS: {why}; keeping the last addresses found (logged once until it resolves)"
            );
        }
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Adds one round when dropped (however the round ends).
struct Counted<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
