//! Balancing algorithms, behind one trait (`Select`), shared by every worker.
//!
//! Everything a pick reads is built once at start (a weighted sequence, a hash ring)
//! or is an atomic: one shared counter, and per backend the requests in flight. A
//! pick never locks and never allocates. Every algorithm skips the backends `Health`
//! says are down.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::round_robin::RoundRobin;
use crate::backends::Health;
use crate::config::Algorithm;
use crate::counters::Padded;

/// Which backends one pick may take: those up and, with `--slow-start`, of
/// those in slow start only a share that grows over the window. One pick asks
/// about a backend as often as it likes and gets the same answer.
pub struct Gate<'a> {
    health: &'a Health,
    now: u64,
    draw: u64,
    ramps: bool,
}

impl<'a> Gate<'a> {
    /// The backends up at `now_ms`, without slow start (tools and tests).
    pub fn up(health: &'a Health, now_ms: u64) -> Gate<'a> {
        Gate {
            health,
            now: now_ms,
            draw: 0,
            ramps: false,
        }
    }

    /// May the pick take backend `b`?
    #[inline]
    pub fn admits(&self, b: usize) -> bool {
        self.health.is_up_at(b, self.now)
            && (!self.ramps || self.health.ramp_admits(b, self.now, self.draw))
    }
}

/// A draw for a pick that has no hash key: a per-thread sequence, well mixed.
fn next_draw() -> u64 {
    thread_local!(static DRAWS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    DRAWS.with(|d| {
        let n = d.get().wrapping_add(1);
        d.set(n);
        mix(n ^ (d as *const _ as u64))
    })
}

/// One balancing algorithm. `key` is the request's hash key (client address or a
/// header; 0 for algorithms that do not use it).
pub trait Select: Send + Sync + fmt::Debug {
    /// The backend for a request among those `gate` admits.
    fn choose(&self, key: u64, gate: &Gate<'_>) -> Option<usize>;
    /// The backend for a request, judging health at `now_ms` (`Health::ms_at`).
    /// In slow start a backend gets the share its ramp allows; when the ramps
    /// leave no backend for a pick, any backend that is up will do.
    fn pick_at(&self, key: u64, health: &Health, now_ms: u64) -> Option<usize> {
        let mut gate = Gate {
            health,
            now: now_ms,
            draw: 0,
            ramps: health.slow_starts(),
        };
        if !gate.ramps {
            return self.choose(key, &gate);
        }
        // A hash key is its own draw: the same keys come back to a backend first.
        gate.draw = if self.uses_key() { key } else { next_draw() };
        self.choose(key, &gate).or_else(|| {
            gate.ramps = false;
            self.choose(key, &gate)
        })
    }
    /// `pick_at` with the clock read here.
    fn pick(&self, key: u64, health: &Health) -> Option<usize> {
        self.pick_at(key, health, health.now_ms())
    }
    /// The algorithm reads requests in flight (so the workers must count them).
    fn uses_inflight(&self) -> bool {
        false
    }
    /// The algorithm reads the key (so the workers must compute it).
    fn uses_key(&self) -> bool {
        false
    }
}

/// Build the selector for `algorithm` over backends with these names (their
/// `host:port`, which places them on a hash ring) and weights.
pub fn build(algorithm: Algorithm, backends: &[(&str, u32)]) -> Box<dyn Select> {
    let weights: Vec<u32> = backends.iter().map(|b| b.1).collect();
    let weights = &weights[..];
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobinSel(RoundRobin::new(weights.len()))),
        Algorithm::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(weights)),
        Algorithm::LeastConnections => Box::new(LeastConnections(RoundRobin::new(weights.len()))),
        Algorithm::PowerOfTwo => Box::new(PowerOfTwo {
            next: Padded(AtomicUsize::new(0)),
            len: weights.len(),
        }),
        Algorithm::Hash => Box::new(HashRing::new(backends)),
    }
}

#[derive(Debug)]
struct RoundRobinSel(RoundRobin);

impl Select for RoundRobinSel {
    fn choose(&self, _: u64, gate: &Gate<'_>) -> Option<usize> {
        self.0.pick_up_at(gate)
    }
}

/// Smooth weighted round-robin (nginx's): the sequence one full cycle of nginx's
/// algorithm produces is computed at start, and the shared counter walks it. For
/// weights 5, 1, 1 it is a a b a c a a: spread out, not five in a row.
#[derive(Debug)]
struct WeightedRoundRobin {
    sequence: Vec<usize>,
    next: Padded<AtomicUsize>,
}

impl WeightedRoundRobin {
    fn new(weights: &[u32]) -> WeightedRoundRobin {
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = vec![0i64; weights.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, &w) in current.iter_mut().zip(weights) {
                *c += i64::from(w);
            }
            let best = (0..weights.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            current[best] -= total;
            sequence.push(best);
        }
        WeightedRoundRobin {
            sequence,
            next: Padded(AtomicUsize::new(0)),
        }
    }
}

impl Select for WeightedRoundRobin {
    fn choose(&self, _: u64, gate: &Gate<'_>) -> Option<usize> {
        let len = self.sequence.len();
        let n = self.next.0.fetch_add(1, Ordering::Relaxed);
        // A down backend's turns go to the next ones in the sequence.
        (0..len)
            .map(|i| self.sequence[(n + i) % len])
            .find(|&b| gate.admits(b))
    }
}

/// The up backend with the fewest requests in flight; ties go round-robin (the
/// scan starts at a rotating offset).
#[derive(Debug)]
struct LeastConnections(RoundRobin);

impl Select for LeastConnections {
    fn choose(&self, _: u64, gate: &Gate<'_>) -> Option<usize> {
        let health = gate.health;
        let len = health.len();
        let start = self.0.pick();
        (0..len)
            .map(|i| (start + i) % len)
            .filter(|&b| gate.admits(b))
            .min_by_key(|&b| health.inflight(b))
    }
    fn uses_inflight(&self) -> bool {
        true
    }
}

/// Two backends chosen at random, the less loaded one taken (the "power of two
/// choices"): nearly least-connections, reading two counters instead of all.
#[derive(Debug)]
struct PowerOfTwo {
    next: Padded<AtomicUsize>,
    len: usize,
}

impl Select for PowerOfTwo {
    fn choose(&self, _: u64, gate: &Gate<'_>) -> Option<usize> {
        let len = self.len;
        let r = mix(self.next.0.fetch_add(1, Ordering::Relaxed) as u64);
        let a = (r % len as u64) as usize;
        let b = if len > 1 {
            (a + 1 + ((r >> 32) % (len as u64 - 1)) as usize) % len
        } else {
            a
        };
        let health = gate.health;
        match (gate.admits(a), gate.admits(b)) {
            (true, true) => Some(if health.inflight(b) < health.inflight(a) {
                b
            } else {
                a
            }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            // Both down: the first up one after them, if any.
            (false, false) => (1..len).map(|i| (a + i) % len).find(|&c| gate.admits(c)),
        }
    }
    fn uses_inflight(&self) -> bool {
        true
    }
}

/// Consistent hashing (ketama): each backend owns `POINTS_PER_WEIGHT` x weight
/// points on a ring of 64-bit hashes; a key goes to the owner of the first point at
/// or after its hash. A down backend's points are skipped, so only its keys move,
/// and they come back when it does. The points hash the backend's name, not its
/// place in the list, so a reload that adds or removes a backend moves only the
/// keys that backend gains or loses.
#[derive(Debug)]
struct HashRing {
    ring: Vec<(u64, usize)>,
}

const POINTS_PER_WEIGHT: u32 = 160;

impl HashRing {
    fn new(backends: &[(&str, u32)]) -> HashRing {
        let mut ring = Vec::new();
        for (b, &(name, w)) in backends.iter().enumerate() {
            let id = key_of_bytes(name.as_bytes());
            for p in 0..w * POINTS_PER_WEIGHT {
                ring.push((mix(id ^ mix(u64::from(p))), b));
            }
        }
        ring.sort_unstable();
        HashRing { ring }
    }
}

impl Select for HashRing {
    fn choose(&self, key: u64, gate: &Gate<'_>) -> Option<usize> {
        let len = self.ring.len();
        let start = self.ring.partition_point(|&(h, _)| h < key);
        (0..len)
            .map(|i| self.ring[(start + i) % len].1)
            .find(|&b| gate.admits(b))
    }
    fn uses_key(&self) -> bool {
        true
    }
}

/// splitmix64's finaliser: a well-spread 64-bit hash of a 64-bit value.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The hash key of some bytes (a header value): FNV-1a, then `mix`.
pub fn key_of_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The hash key of a client address.
pub fn key_of_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => key_of_bytes(&v4.octets()),
        IpAddr::V6(v6) => key_of_bytes(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Passive;

    fn health(n: usize) -> Health {
        Health::new(
            (0..n).map(|i| format!("b{i}")).collect(),
            Passive::default(),
            false,
        )
    }

    fn counts(sel: &dyn Select, h: &Health, picks: usize) -> Vec<usize> {
        let mut c = vec![0; h.len()];
        for i in 0..picks {
            c[sel.pick(key_of_bytes(&i.to_le_bytes()), h).unwrap()] += 1;
        }
        c
    }

    /// A selector over backends b0, b1 ... with these weights.
    fn sel(algorithm: Algorithm, weights: &[u32]) -> Box<dyn Select> {
        let names: Vec<String> = (0..weights.len()).map(|i| format!("b{i}")).collect();
        let backends: Vec<(&str, u32)> = names
            .iter()
            .map(|n| n.as_str())
            .zip(weights.iter().copied())
            .collect();
        build(algorithm, &backends)
    }

    #[test]
    fn names_parse_and_print() {
        for name in Algorithm::NAMES.split(", ") {
            assert_eq!(Algorithm::parse(name).unwrap().to_string(), name);
        }
        assert_eq!(Algorithm::parse("random"), None);
    }

    #[test]
    fn weights_are_honoured_within_one_percent_and_spread_smoothly() {
        let weights = [5, 1, 3];
        let h = health(3);
        let sel = sel(Algorithm::WeightedRoundRobin, &weights);
        let c = counts(sel.as_ref(), &h, 90_000);
        for (i, &w) in weights.iter().enumerate() {
            let want = 90_000.0 * f64::from(w) / 9.0;
            assert!((c[i] as f64 - want).abs() / want < 0.01, "{c:?}");
        }
        // Smooth: weight 5 of 9 never gets more than two turns in a row.
        let seq: Vec<usize> = (0..9).map(|_| sel.pick(0, &h).unwrap()).collect();
        assert!(
            !seq.windows(3).any(|w| w.iter().all(|&b| b == 0)),
            "{seq:?}"
        );
        // A down backend's share goes to the others.
        h.set_checked(0, false, "test");
        let c = counts(sel.as_ref(), &h, 9000);
        assert_eq!(c[0], 0);
        assert_eq!(c[1] + c[2], 9000);
    }

    #[test]
    fn hash_weights_are_honoured_within_a_few_percent() {
        let h = health(2);
        let sel = sel(Algorithm::Hash, &[3, 1]);
        let c = counts(sel.as_ref(), &h, 100_000);
        let share = c[0] as f64 / 100_000.0;
        assert!((share - 0.75).abs() < 0.05, "{c:?}");
    }

    #[test]
    fn least_connections_prefers_the_idle_backend() {
        let h = health(3);
        let sel = sel(Algorithm::LeastConnections, &[1, 1, 1]);
        h.member(0).acquire();
        h.member(0).acquire();
        h.member(2).acquire();
        for _ in 0..10 {
            assert_eq!(sel.pick(0, &h), Some(1));
        }
        // Equal loads share round-robin.
        h.member(1).acquire();
        h.member(0).release();
        let picks: Vec<usize> = (0..30).map(|_| sel.pick(0, &h).unwrap()).collect();
        assert!(
            (0..3).all(|b| picks.iter().filter(|&&p| p == b).count() == 10),
            "{picks:?}"
        );
        // Down backends are skipped even when idle.
        h.member(1).release();
        h.set_checked(1, false, "test");
        assert_ne!(sel.pick(0, &h), Some(1));
    }

    #[test]
    fn power_of_two_avoids_the_loaded_backend_and_spreads_otherwise() {
        let h = health(4);
        let sel = sel(Algorithm::PowerOfTwo, &[1; 4]);
        for _ in 0..100 {
            h.member(3).acquire();
        }
        let c = counts(sel.as_ref(), &h, 10_000);
        assert_eq!(c[3], 0, "the loaded backend lost every comparison: {c:?}");
        assert!(c[..3].iter().all(|&n| n > 2500), "{c:?}");
        for b in 0..4 {
            h.set_checked(b, false, "test");
        }
        assert_eq!(sel.pick(0, &h), None);
    }

    #[test]
    fn when_a_backend_leaves_only_its_keys_move() {
        let h = health(5);
        let sel = sel(Algorithm::Hash, &[1; 5]);
        let keys: Vec<u64> = (0..20_000u32)
            .map(|i| key_of_bytes(&i.to_le_bytes()))
            .collect();
        let before: Vec<usize> = keys.iter().map(|&k| sel.pick(k, &h).unwrap()).collect();
        h.set_checked(2, false, "test");
        let after: Vec<usize> = keys.iter().map(|&k| sel.pick(k, &h).unwrap()).collect();
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b == &2 {
                assert_ne!(*a, 2);
                moved += 1;
            } else {
                assert_eq!(b, a, "a key of a backend that stayed moved");
            }
        }
        assert!(moved > 2000, "backend 2 had only {moved} keys");
        // It comes back: its keys return to it.
        h.set_checked(2, true, "test");
        let back: Vec<usize> = keys.iter().map(|&k| sel.pick(k, &h).unwrap()).collect();
        assert_eq!(back, before);
    }

    #[test]
    fn the_same_key_goes_to_the_same_backend() {
        let h = health(3);
        let sel = sel(Algorithm::Hash, &[1; 3]);
        let k = key_of_ip("10.0.0.7".parse().unwrap());
        let first = sel.pick(k, &h);
        assert!((0..100).all(|_| sel.pick(k, &h) == first));
    }

    #[test]
    fn a_reload_that_removes_a_backend_moves_only_its_keys() {
        let five = ["a:1", "b:1", "c:1", "d:1", "e:1"];
        let four = ["a:1", "b:1", "d:1", "e:1", "f:1"];
        let (h5, h4) = (health(5), health(5));
        let before = build(Algorithm::Hash, &five.map(|n| (n, 1)));
        let after = build(Algorithm::Hash, &four.map(|n| (n, 1)));
        let (mut moved, mut to_new) = (0, 0);
        for i in 0..20_000u32 {
            let k = key_of_bytes(&i.to_le_bytes());
            let was = five[before.pick(k, &h5).unwrap()];
            let is = four[after.pick(k, &h4).unwrap()];
            if was == "c:1" {
                moved += 1;
            } else if is == "f:1" {
                to_new += 1;
            } else {
                assert_eq!(was, is, "a key of a backend that stayed moved");
            }
        }
        assert!(moved > 2000, "c had only {moved} keys");
        assert!(to_new > 2000, "the new backend took only {to_new} keys");
    }
}
