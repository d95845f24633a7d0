//! Backend selection: round-robin over the pool with one atomic counter shared by
//! every worker (the design card's scheme: one `fetch_add` per request, no lock).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Keeps the counter on its own cache line, so the workers' writes to it never
/// invalidate a line that holds anything else.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct Padded<T>(pub T);

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn counter_has_its_own_cache_line() {
        assert_eq!(std::mem::align_of::<Padded<AtomicUsize>>(), 128);
    }
}
