//! Fixed-size byte buffers and the per-worker pool they come from.
//!
//! A connection holds buffers only while it has something in flight; an idle
//! keep-alive connection gives them back, so thousands of idle clients cost no
//! buffer memory. The pool is a plain free list owned by one worker: no locks.

use std::io::{self, Read};

/// A byte buffer with a filled window `[start, end)`: read into the tail, consume
/// from the head, and slide the window back to the front when the tail runs out.
pub struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    pub fn with_capacity(capacity: usize) -> Buf {
        Buf {
            data: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The bytes held and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// No more bytes fit, even after compaction.
    pub fn is_full(&self) -> bool {
        self.len() == self.data.len()
    }

    /// Drop `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Read once from `src` into the free tail. Returns the byte count (0: end of
    /// stream; callers check `is_full` first) and whether the read was short, i.e.
    /// returned less than the room it was offered.
    pub fn read_from(&mut self, src: &mut impl Read) -> io::Result<(usize, bool)> {
        // Slide the window back once the tail is under half the buffer: large reads
        // are cheaper than the copy, which only moves the few unconsumed bytes.
        if self.start > 0 && self.data.len() - self.end < self.data.len() / 2 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = self.data.len() - self.end;
        let n = src.read(&mut self.data[self.end..])?;
        self.end += n;
        Ok((n, n < room))
    }
}

/// A value that can go back to a pool: `reset` empties it of everything one user
/// left in it, so the next user starts from nothing (isolation: no byte of one
/// connection is ever read by another).
pub trait Recycle {
    /// Drop every byte and every piece of state a user left.
    fn reset(&mut self);
    /// Nothing of a previous user is left (checked on every take in debug builds).
    fn is_clean(&self) -> bool;
}

/// A free list of reusable values, bounded so a burst does not pin memory forever.
/// Values are reset as they come back, so what `take` returns is always clean.
pub struct Pool<T: Recycle> {
    free: Vec<T>,
    max_free: usize,
    make: fn(usize) -> T,
    size: usize,
}

impl<T: Recycle> Pool<T> {
    /// `make(size)` creates a value when the free list is empty.
    pub fn new(size: usize, max_free: usize, make: fn(usize) -> T) -> Pool<T> {
        Pool {
            free: Vec::new(),
            max_free,
            make,
            size,
        }
    }

    pub fn take(&mut self) -> T {
        let value = self.free.pop().unwrap_or_else(|| (self.make)(self.size));
        debug_assert!(value.is_clean(), "a pooled value was handed out dirty");
        value
    }

    /// Take `value` back, emptied; beyond `max_free` it is dropped.
    pub fn give(&mut self, mut value: T) {
        if self.free.len() < self.max_free {
            value.reset();
            self.free.push(value);
        }
    }
}

impl Recycle for Buf {
    fn reset(&mut self) {
        self.clear();
    }

    fn is_clean(&self) -> bool {
        self.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_slides_when_tail_is_full() {
        let mut b = Buf::with_capacity(8);
        let mut src: &[u8] = b"abcdefgh";
        assert_eq!(b.read_from(&mut src).unwrap(), (8, false));
        assert!(b.is_full());
        b.consume(5);
        let mut src: &[u8] = b"ijklmnop";
        assert_eq!(b.read_from(&mut src).unwrap(), (5, false));
        assert_eq!(b.filled(), b"fghijklm");
        b.consume(8);
        assert!(b.is_empty());
    }

    #[test]
    fn pool_reuses_and_bounds() {
        let mut p: Pool<Buf> = Pool::new(4, 1, Buf::with_capacity);
        let a = p.take();
        let b = p.take();
        p.give(a);
        p.give(b);
        assert_eq!(p.free.len(), 1);
    }

    #[test]
    fn a_value_comes_back_from_the_pool_empty() {
        let mut p: Pool<Buf> = Pool::new(16, 4, Buf::with_capacity);
        let mut a = p.take();
        let mut src: &[u8] = b"GET /secret HTTP/1.1\r\nCookie: a";
        a.read_from(&mut src).unwrap();
        a.consume(4);
        p.give(a);
        let b = p.take();
        assert!(b.is_empty(), "{:?}", b.filled());
    }
}
