//! Backend health, shared by every worker and the health-check thread through
//! atomics: no locks, and nothing a request path waits on.
//!
//! A backend is up when its active checks say so (always, when checks are off) and
//! it is not cooling down after passive failures: `max_fails` connect failures,
//! resets or timeouts within `fail_window` take it out. Without active checks it
//! cools down for one `fail_window` and is then tried again; with them, the checks
//! are the authority: it stays out until `rise` checks in a row pass. Passive
//! health never takes out the last backend that is up (nginx never marks a lone
//! server down): it stays in, and `last_backend_kept` says so for one window. Each
//! state change is logged once, by whichever thread sees it first.

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{Passive, SendProxy};
use crate::counters::{BackendCounts, Padded};
use crate::log::Level;

/// What the operator set for a backend at run time (the admin endpoint's
/// `drain`, `disable` and `enable`). A reload keeps it while the backend stays
/// in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminState {
    /// Takes requests when healthy.
    Ready,
    /// Takes no new requests; exchanges in flight finish, and its connections
    /// close as they become idle. Still health-checked.
    Drain,
    /// Out for maintenance: no new requests, no pooled connections, no health
    /// checks; with checks on, it comes back only after `rise` passing checks.
    Disabled,
}

impl AdminState {
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Disabled];

    pub fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Disabled => "disabled",
        }
    }

    fn from_u8(v: u8) -> AdminState {
        match v {
            0 => AdminState::Ready,
            1 => AdminState::Drain,
            _ => AdminState::Disabled,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// `AdminState` as a number (0: ready).
    admin: AtomicU8,
    /// Active checks' verdict (true when checks are off).
    checked_up: AtomicBool,
    /// Milliseconds since `epoch()` until which the backend cools down.
    down_until: AtomicU64,
    /// Failures counted in the window that started at `window_start`.
    fails: AtomicU32,
    window_start: AtomicU64,
    /// What was last logged: up (true) or down.
    reported_up: AtomicBool,
    /// Consecutive active check results: positive passes, negative failures
    /// (written by the check thread only; kept across reloads).
    streak: AtomicI64,
    /// When (ms since `epoch()`) it last came into service: its slow start
    /// runs from then, or from the end of its cool-down if that is later.
    ramp_from: AtomicU64,
}

/// The clock cool-downs are kept in, the same for every backend and every
/// configuration a reload makes.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// One backend's lasting state: its health, its requests in flight and its
/// response counters. A reload keeps it for a backend that stays (same address),
/// so none of these start over.
#[derive(Debug)]
pub struct Member {
    pub addr: SocketAddr,
    /// `host:port` as the operator wrote it (`--rewrite-host`, health checks'
    /// Host).
    pub authority: String,
    /// What log lines, metrics and the admin endpoint call it: its authority,
    /// or for one address of a name, `name:port@address`.
    pub name: String,
    /// For an `https://` backend: the name its certificate must be valid for
    /// (sent as SNI).
    pub tls: Option<rustls::pki_types::ServerName<'static>>,
    /// Each new connection to it begins with a PROXY protocol header.
    pub send_proxy: SendProxy,
    state: Padded<State>,
    inflight: Padded<AtomicUsize>,
    /// Responses and their latency, by worker (each on its own cache lines).
    per_worker: Box<[Padded<BackendCounts>]>,
    /// A weight set at run time: the configured weight it replaced in the high
    /// 32 bits, the weight in the low ones (0: none). Read when a plan is built.
    weight: AtomicU64,
}

impl Member {
    /// A backend, up, with nothing counted, for `workers` workers.
    pub fn new(addr: SocketAddr, authority: String, workers: usize) -> Arc<Member> {
        Member::reached_by(
            addr,
            authority.clone(),
            authority,
            None,
            SendProxy::Off,
            workers,
        )
    }

    /// `new`, called `name`, for a backend reached over TLS when `tls` names
    /// it, with a PROXY header first as `send_proxy` says.
    pub fn reached_by(
        addr: SocketAddr,
        authority: String,
        name: String,
        tls: Option<rustls::pki_types::ServerName<'static>>,
        send_proxy: SendProxy,
        workers: usize,
    ) -> Arc<Member> {
        Arc::new(Member {
            addr,
            name,
            authority,
            tls,
            send_proxy,
            state: Padded(State {
                checked_up: AtomicBool::new(true),
                reported_up: AtomicBool::new(true),
                ..State::default()
            }),
            inflight: Padded::default(),
            per_worker: (0..workers.max(1)).map(|_| Padded::default()).collect(),
            weight: AtomicU64::new(0),
        })
    }

    /// It comes into service now (a reload added it): slow start applies.
    pub fn joined(&self) {
        let now = Instant::now()
            .saturating_duration_since(epoch())
            .as_millis() as u64;
        // 0 means never; the epoch may be this very millisecond.
        self.state.0.ramp_from.store(now.max(1), Ordering::Relaxed);
    }

    /// Whether requests may go to it at `now_ms` (`Health::ms_at`): ready, its
    /// checks pass, and it is not cooling down.
    pub fn takes_requests(&self, now_ms: u64) -> bool {
        let s = &self.state.0;
        s.admin.load(Ordering::Relaxed) == 0
            && s.checked_up.load(Ordering::Relaxed)
            && s.down_until.load(Ordering::Relaxed) <= now_ms
    }

    /// What the operator set at run time.
    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.state.0.admin.load(Ordering::Relaxed))
    }

    /// Whether its connections may be pooled (it is not drained or disabled).
    pub fn pools(&self) -> bool {
        self.state.0.admin.load(Ordering::Relaxed) == 0
    }

    /// Use `weight` in place of `configured` from the next plan on.
    pub fn set_weight(&self, configured: u32, weight: u32) {
        let packed = u64::from(configured) << 32 | u64::from(weight);
        self.weight.store(packed, Ordering::Relaxed);
    }

    /// The weight to build a plan with when the configuration says `configured`:
    /// the one set at run time, unless the configuration has changed this
    /// backend's weight since (the newer word wins, and the runtime one is
    /// forgotten).
    pub fn weight_for(&self, configured: u32) -> u32 {
        let packed = self.weight.load(Ordering::Relaxed);
        let (was, weight) = ((packed >> 32) as u32, packed as u32);
        if weight == 0 {
            return configured;
        }
        if was != configured {
            self.weight.store(0, Ordering::Relaxed);
            return configured;
        }
        weight
    }

    /// Requests in flight, as the load-comparing algorithms see them.
    pub fn inflight(&self) -> usize {
        self.inflight.0.load(Ordering::Relaxed)
    }

    pub fn acquire(&self) {
        self.inflight.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn release(&self) {
        self.inflight.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Worker `worker` relayed a response with `status` from this backend, which
    /// took `took` from the request head to the response's end.
    pub fn finished(&self, worker: usize, status: u16, took: Duration) {
        let c = &self.per_worker[worker].0;
        c.responses.count(status);
        c.latency.observe(took);
    }

    /// The bytes worker `worker` moves to and from this backend.
    #[inline]
    pub fn traffic(&self, worker: usize) -> &crate::counters::Traffic {
        &self.per_worker[worker].0.traffic
    }

    /// Worker `worker` has `n` connections open to this backend.
    pub fn set_connections(&self, worker: usize, n: u64) {
        self.per_worker[worker]
            .0
            .connections
            .store(n, Ordering::Relaxed);
    }

    /// Open connections to it, over every worker (as of their last sweeps).
    pub fn connections(&self) -> u64 {
        (self.per_worker.iter())
            .map(|c| c.0.connections.load(Ordering::Relaxed))
            .sum()
    }

    /// What each worker counted for this backend.
    pub fn counts(&self) -> impl Iterator<Item = &BackendCounts> {
        self.per_worker.iter().map(|p| &p.0)
    }
}

/// The health of a set of backends (one configuration's).
#[derive(Debug)]
pub struct Health {
    members: Vec<Arc<Member>>,
    passive: Passive,
    /// Active checks run: they, not a cool-down, bring back a backend that
    /// passive failures took out.
    checks: bool,
    /// Until when (ms since `epoch()`) the last backend up was kept in after
    /// failures that would have taken it out.
    last_kept_until: AtomicU64,
    /// "all backends are down" was logged and not yet cleared by a success.
    all_down_reported: AtomicBool,
    /// Write state changes to stderr (off in tests that count lines themselves).
    log: bool,
    /// `--slow-start` in ms (0: off): a backend coming into service gets a share
    /// of the picks that grows from nothing to all of its own over this long.
    slow_start_ms: u64,
}

impl Health {
    /// New backends named `names`, all up (for tests and tools).
    pub fn new(names: Vec<String>, passive: Passive, log: bool) -> Health {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let members = names
            .into_iter()
            .map(|n| Member::new(unspecified, n, 1))
            .collect();
        Health::of(members, passive, false, log)
    }

    /// The health of these backends, whose state may come from an earlier
    /// configuration; `checks`: active checks run.
    pub fn of(members: Vec<Arc<Member>>, passive: Passive, checks: bool, log: bool) -> Health {
        Health {
            members,
            passive,
            checks,
            last_kept_until: AtomicU64::new(0),
            all_down_reported: AtomicBool::new(false),
            log,
            slow_start_ms: 0,
        }
    }

    /// With `--slow-start` (zero: off).
    pub fn with_slow_start(mut self, window: Duration) -> Health {
        self.slow_start_ms = window.as_millis() as u64;
        self
    }

    /// Slow start is on.
    pub fn slow_starts(&self) -> bool {
        self.slow_start_ms != 0
    }

    /// Whether a pick whose random draw is `draw` may take backend `b` (which is
    /// up), given its slow start: admitted with a probability that grows linearly
    /// over the window, from 1/64 at its start. The same draw admits the same
    /// backends at any later time, so a hash key that moved back stays back.
    pub fn ramp_admits(&self, b: usize, now_ms: u64, draw: u64) -> bool {
        let window = self.slow_start_ms;
        self.in_slow_start(b, now_ms).is_none_or(|since| {
            super::select::mix(draw ^ b as u64) % window < since.max(window / 64)
        })
    }

    /// How long backend `b` has been in its slow start at `now_ms`; None when it
    /// is not in one (slow start off, never out of service, or the window over).
    fn in_slow_start(&self, b: usize, now_ms: u64) -> Option<u64> {
        let window = self.slow_start_ms;
        let start = self.ramp_start(b);
        // `start` 0: never out of service, in service since the start.
        let since = now_ms.saturating_sub(start);
        (window != 0 && start != 0 && since < window).then_some(since)
    }

    /// When backend `b`'s slow start began (0: never).
    fn ramp_start(&self, b: usize) -> u64 {
        let s = &self.members[b].state.0;
        (s.ramp_from.load(Ordering::Relaxed)).max(s.down_until.load(Ordering::Relaxed))
    }

    /// The share of its full traffic backend `b` may get now (1.0 out of slow start).
    pub fn ramp_share(&self, b: usize) -> f64 {
        self.in_slow_start(b, self.now_ms()).map_or(1.0, |since| {
            (since as f64 / self.slow_start_ms as f64).max(1.0 / 64.0)
        })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    pub fn member(&self, b: usize) -> &Member {
        &self.members[b]
    }

    /// Requests in flight on backend `b`.
    pub fn inflight(&self, b: usize) -> usize {
        self.members[b].inflight()
    }

    /// The clock the cool-downs are kept in: milliseconds since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `now_ms` for a time the caller has already read (a worker's loop clock), so
    /// a request's backend pick reads no clock of its own.
    pub fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(epoch()).as_millis() as u64
    }

    /// May requests go to backend `b` now?
    pub fn is_up(&self, b: usize) -> bool {
        self.is_up_at(b, self.now_ms())
    }

    /// `is_up` at a time read once for several backends.
    pub fn is_up_at(&self, b: usize, now_ms: u64) -> bool {
        self.members[b].takes_requests(now_ms)
    }

    /// The operator's word on backend `b` (`why` says who, for the log). With
    /// checks on, a backend leaving `Disabled` was not checked while out: it
    /// comes back after `rise` passing checks.
    pub fn set_admin(&self, b: usize, state: AdminState, why: &str) {
        let m = &self.members[b];
        let s = &m.state.0;
        let was = AdminState::from_u8(s.admin.swap(state as u8, Ordering::Relaxed));
        if was == AdminState::Disabled && state != AdminState::Disabled && self.checks {
            s.streak.store(0, Ordering::Relaxed);
            s.checked_up.store(false, Ordering::Relaxed);
        }
        if self.log && was != state {
            crate::log!(
                Level::Info,
                "corelb: backend {} is set to {} ({why})",
                m.name,
                state.name()
            );
        }
        self.report(m, self.is_up(b), &format!("{} ({why})", state.name()));
    }

    /// A connect failure, reset or timeout on backend `m` (given by its state: it
    /// may have left the configuration while the failed request was in flight).
    pub fn record_failure(&self, m: &Member) {
        let p = self.passive;
        if p.max_fails == 0 {
            return;
        }
        let s = &m.state.0;
        let now = self.now_ms();
        let window = p.window.as_millis() as u64;
        let start = s.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= window {
            // A new window; a race here only miscounts one failure.
            s.window_start.store(now, Ordering::Relaxed);
            s.fails.store(0, Ordering::Relaxed);
        }
        let fails = s.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails < p.max_fails || !m.takes_requests(now) {
            return;
        }
        s.fails.store(0, Ordering::Relaxed);
        s.window_start.store(now + window, Ordering::Relaxed);
        if !self.others_up(m, now) {
            // The last one up: taking it out would answer every request 503,
            // while it may be back already. Two workers taking out the last two
            // at the same moment can still leave none (the rule is not locked).
            if self.last_kept_until.swap(now + window, Ordering::Relaxed) <= now && self.log {
                crate::log!(
                    Level::Warn,
                    "corelb: backend {} failed {fails} times within {:?} but is the last one up: kept in",
                    m.name,
                    p.window
                );
            }
            return;
        }
        let why = format!("{fails} failures within {:?}", p.window);
        if self.checks {
            // Out until `rise` checks in a row pass.
            s.streak.store(0, Ordering::Relaxed);
            s.checked_up.store(false, Ordering::Relaxed);
            self.report(
                m,
                false,
                &format!("{why}; back after passing health checks"),
            );
        } else {
            s.down_until.store(now + window, Ordering::Relaxed);
            self.report(m, false, &why);
        }
    }

    /// Whether a backend other than `m` is up at `now_ms`.
    fn others_up(&self, m: &Member, now_ms: u64) -> bool {
        (0..self.members.len())
            .any(|b| !std::ptr::eq(&*self.members[b], m) && self.is_up_at(b, now_ms))
    }

    /// Passive health kept the last backend that was up in service (within the
    /// last `fail_window`) instead of taking it out.
    pub fn last_backend_kept(&self) -> bool {
        self.now_ms() < self.last_kept_until.load(Ordering::Relaxed)
    }

    /// The active checks' verdict on backend `b`.
    pub fn set_checked(&self, b: usize, up: bool, why: &str) {
        let m = &self.members[b];
        m.state.0.checked_up.store(up, Ordering::Relaxed);
        self.report(m, self.is_up(b), why);
    }

    /// One active check of backend `b` passed or failed (`why` says how): `fall`
    /// failures in a row take it out, `rise` passes in a row bring it back. The
    /// count goes on across reloads.
    pub fn record_check(&self, b: usize, passed: bool, rise: u32, fall: u32, why: &str) {
        let s = &self.members[b].state.0;
        let streak = match (passed, s.streak.load(Ordering::Relaxed)) {
            (true, n) if n > 0 => n + 1,
            (true, _) => 1,
            (false, n) if n < 0 => n - 1,
            (false, _) => -1,
        };
        s.streak.store(streak, Ordering::Relaxed);
        let up = self.checked(b);
        if up && -streak >= i64::from(fall) {
            self.set_checked(b, false, why);
        } else if !up && streak >= i64::from(rise) {
            self.set_checked(b, true, why);
        }
    }

    /// Active checks are off: forget their counts, and bring back every backend
    /// they had taken out.
    pub fn checks_off(&self) {
        for (b, m) in self.members.iter().enumerate() {
            m.state.0.streak.store(0, Ordering::Relaxed);
            if !self.checked(b) {
                self.set_checked(b, true, "health checks are off");
            }
        }
    }

    /// The active checks' last verdict on backend `b`.
    pub fn checked(&self, b: usize) -> bool {
        self.members[b].state.0.checked_up.load(Ordering::Relaxed)
    }

    /// Log backends whose cool-down has ended (called from each worker's timer).
    pub fn notice_recoveries(&self) {
        for (b, m) in self.members.iter().enumerate() {
            if self.is_up(b) {
                self.report(m, true, "cool-down over");
            }
        }
    }

    /// Log a state change once: the thread that flips `reported_up` writes the line.
    fn report(&self, m: &Member, up: bool, why: &str) {
        let s = &m.state.0;
        if s.reported_up
            .compare_exchange(!up, up, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            if up {
                self.all_down_reported.store(false, Ordering::Relaxed);
                s.ramp_from.store(self.now_ms().max(1), Ordering::Relaxed);
            }
            if self.log {
                let state = if up { "up" } else { "down" };
                let level = if up { Level::Info } else { Level::Warn };
                crate::log!(level, "corelb: backend {} is {state} ({why})", m.name);
            }
        }
    }

    /// Every backend is down: log it once until one comes back.
    pub fn report_all_down(&self) {
        if !self.all_down_reported.swap(true, Ordering::Relaxed) && self.log {
            crate::log!(Level::Error, "corelb: all backends are down; answering 503");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(n: usize, max_fails: u32, window_ms: u64) -> Health {
        let names = (0..n).map(|i| format!("b{i}")).collect();
        let passive = Passive {
            max_fails,
            window: Duration::from_millis(window_ms),
        };
        Health::new(names, passive, false)
    }

    #[test]
    fn max_fails_within_the_window_take_a_backend_out_for_a_window() {
        let h = health(2, 3, 200);
        h.record_failure(h.member(0));
        h.record_failure(h.member(0));
        assert!(h.is_up(0), "two failures are under the limit");
        h.record_failure(h.member(0));
        assert!(!h.is_up(0));
        assert!(h.is_up(1), "the other backend is not affected");
        std::thread::sleep(Duration::from_millis(250));
        assert!(h.is_up(0), "tried again after the cool-down");
    }

    #[test]
    fn the_last_backend_up_is_kept_in() {
        let h = health(2, 1, 10_000);
        h.record_failure(h.member(0));
        assert!(!h.is_up(0));
        assert!(!h.last_backend_kept());
        h.record_failure(h.member(1));
        assert!(h.is_up(1), "the last one up stays in");
        assert!(h.last_backend_kept());
    }

    #[test]
    fn with_checks_on_passing_checks_bring_a_backend_back() {
        let names = vec!["b0".to_string(), "b1".to_string()];
        let passive = Passive {
            max_fails: 1,
            window: Duration::from_secs(60),
        };
        let h = Health::of(
            names
                .into_iter()
                .map(|n| Member::new(SocketAddr::from(([0, 0, 0, 0], 0)), n, 1))
                .collect(),
            passive,
            true,
            false,
        );
        h.record_failure(h.member(0));
        assert!(!h.is_up(0), "taken out");
        h.record_check(0, true, 2, 3, "passed");
        assert!(!h.is_up(0), "one pass of two");
        h.record_check(0, true, 2, 3, "passed");
        assert!(h.is_up(0), "back after rise passes, well inside the window");
    }

    #[test]
    fn drain_and_disable_take_a_backend_out_and_a_disabled_one_needs_its_checks() {
        let members = (0..2)
            .map(|i| Member::new(SocketAddr::from(([0, 0, 0, 0], 0)), format!("b{i}"), 1))
            .collect();
        let h = Health::of(members, Passive::default(), true, false);
        h.set_admin(0, AdminState::Drain, "test");
        assert!(!h.is_up(0) && !h.member(0).pools());
        h.set_admin(0, AdminState::Ready, "test");
        assert!(h.is_up(0), "back from drain at once: its checks went on");
        h.set_admin(0, AdminState::Disabled, "test");
        assert!(!h.is_up(0));
        h.set_admin(0, AdminState::Ready, "test");
        assert!(!h.is_up(0), "not checked while disabled: checks first");
        h.record_check(0, true, 2, 3, "pass");
        h.record_check(0, true, 2, 3, "pass");
        assert!(h.is_up(0));
        // Passive health: a drained backend is not "up", so the last one up
        // is kept in.
        h.set_admin(1, AdminState::Drain, "test");
        let strict = Health::of(
            h.members().to_vec(),
            Passive {
                max_fails: 1,
                window: Duration::from_secs(60),
            },
            true,
            false,
        );
        strict.record_failure(strict.member(0));
        assert!(strict.is_up(0) && strict.last_backend_kept());
    }

    #[test]
    fn slow_start_admits_a_growing_share_and_keeps_what_it_admitted() {
        let h = health(1, 3, 1000).with_slow_start(Duration::from_millis(1000));
        h.member(0).joined();
        // Where its ramp began (the clock may have moved on a millisecond).
        let start = h.ramp_start(0);
        let share_at = |t: u64| {
            (0..10_000u64)
                .filter(|&d| h.ramp_admits(0, start + t, super::super::select::mix(d)))
                .count() as f64
                / 10_000.0
        };
        let shares: Vec<f64> = [0, 250, 500, 750, 1000]
            .iter()
            .map(|&t| share_at(t))
            .collect();
        assert!(shares[0] < 0.05, "{shares:?}");
        assert!((shares[2] - 0.5).abs() < 0.05, "{shares:?}");
        assert_eq!(shares[4], 1.0, "{shares:?}");
        assert!(shares.windows(2).all(|w| w[0] <= w[1]), "{shares:?}");
        // A draw admitted once stays admitted (a hash key does not flap).
        for d in 0..1000 {
            if h.ramp_admits(0, start + 300, d) {
                assert!(h.ramp_admits(0, start + 600, d), "draw {d}");
            }
        }
    }

    #[test]
    fn failures_spread_over_windows_do_not_add_up() {
        let h = health(1, 2, 50);
        h.record_failure(h.member(0));
        std::thread::sleep(Duration::from_millis(80));
        h.record_failure(h.member(0));
        assert!(h.is_up(0));
    }

    #[test]
    fn zero_max_fails_never_takes_a_backend_out() {
        let h = health(1, 0, 50);
        for _ in 0..100 {
            h.record_failure(h.member(0));
        }
        assert!(h.is_up(0));
    }

    #[test]
    fn active_verdict_and_reports_flip_once() {
        let h = health(1, 3, 1000);
        h.set_checked(0, false, "check failed");
        assert!(!h.is_up(0));
        assert!(!h.members[0].state.0.reported_up.load(Ordering::Relaxed));
        h.set_checked(0, true, "check passed");
        assert!(h.is_up(0));
        assert!(h.members[0].state.0.reported_up.load(Ordering::Relaxed));
    }

    #[test]
    fn check_streaks_flip_the_verdict_and_survive_a_new_configuration() {
        let h = health(1, 3, 1000);
        h.record_check(0, false, 3, 2, "fail");
        assert!(h.is_up(0), "one failure of fall 2");
        h.record_check(0, false, 3, 2, "fail");
        assert!(!h.is_up(0));
        h.record_check(0, true, 3, 2, "pass");
        h.record_check(0, true, 3, 2, "pass");
        assert!(!h.is_up(0), "two passes of rise 3");
        // A reload: a new Health over the same member goes on counting.
        let again = Health::of(h.members().to_vec(), Passive::default(), false, false);
        again.record_check(0, true, 3, 2, "pass");
        assert!(again.is_up(0), "the third pass in a row");
        // A failure breaks a run of passes; checks off forget the count.
        again.record_check(0, false, 3, 2, "fail");
        assert!(again.is_up(0));
        again.checks_off();
        again.record_check(0, false, 3, 2, "fail");
        assert!(again.is_up(0), "the count started over");
        again.record_check(0, false, 3, 2, "fail");
        assert!(!again.is_up(0));
        again.checks_off();
        assert!(again.is_up(0), "checks off bring it back");
    }
}
