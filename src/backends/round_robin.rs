//! Backend selection: round-robin over the pool with one atomic counter shared by
//! every worker (the design card's scheme: one `fetch_add` per request, no lock).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::select::Gate;
use crate::counters::Padded;

/// Round-robin over `len` backends, shared by all workers.
#[derive(Debug)]
pub struct RoundRobin {
    next: Padded<AtomicUsize>,
    len: usize,
}

impl RoundRobin {
    /// A selector over `len` backends (at least one).
    pub fn new(len: usize) -> RoundRobin {
        RoundRobin {
            next: Padded(AtomicUsize::new(0)),
            len: len.max(1),
        }
    }

    /// The index of the backend for the next request. Relaxed ordering is enough:
    /// the counter only has to hand out each value once, not order other memory.
    pub fn pick(&self) -> usize {
        self.next.0.fetch_add(1, Ordering::Relaxed) % self.len
    }

    /// Like `pick`, over the backends `gate` admits, so the spread stays even
    /// over those: the counter indexes the admitted ones, not the whole list.
    /// `None` when it admits none.
    pub fn pick_up_at(&self, gate: &Gate<'_>) -> Option<usize> {
        let n = self.next.0.fetch_add(1, Ordering::Relaxed);
        let up = (0..self.len).filter(|&b| gate.admits(b)).count();
        if up == self.len {
            return Some(n % self.len);
        }
        if up == 0 {
            return None;
        }
        (0..self.len).filter(|&b| gate.admits(b)).nth(n % up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Health;

    #[test]
    fn cycles_in_order_and_wraps() {
        let rr = RoundRobin::new(3);
        let picks: Vec<usize> = (0..7).map(|_| rr.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn shared_between_threads_stays_exact() {
        let rr = std::sync::Arc::new(RoundRobin::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let rr = std::sync::Arc::clone(&rr);
                std::thread::spawn(move || {
                    let mut counts = [0usize; 4];
                    for _ in 0..10_000 {
                        counts[rr.pick()] += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut total = [0usize; 4];
        for t in threads {
            for (i, c) in t.join().unwrap().iter().enumerate() {
                total[i] += c;
            }
        }
        assert_eq!(total, [10_000; 4]);
    }

    #[test]
    fn down_backends_are_skipped_and_the_rest_share_evenly() {
        let names = (0..3).map(|i| format!("b{i}")).collect();
        let health = Health::new(names, crate::config::Passive::default(), false);
        let rr = RoundRobin::new(3);
        health.set_checked(1, false, "test");
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[rr.pick_up_at(&Gate::up(&health, health.now_ms())).unwrap()] += 1;
        }
        assert_eq!(counts, [1500, 0, 1500]);
        health.set_checked(0, false, "test");
        health.set_checked(2, false, "test");
        assert_eq!(rr.pick_up_at(&Gate::up(&health, health.now_ms())), None);
    }
}
