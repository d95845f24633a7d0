//! Byte buffers, the storage they borrow while they hold bytes, and pools.
//!
//! A `Buf` owns storage only while it holds bytes: an empty one has none, and
//! the first read takes a chunk from this thread's free list (one per worker
//! thread, so no locks), which goes back as soon as the last byte is consumed.
//! A connection waiting on its backend, or between requests, so holds no buffer
//! memory; 8,000 connections in flight cost what the few that are moving bytes
//! at that instant need. Free lists decay: `trim` frees what went unused since
//! the last call, so memory a burst took is given back once it has passed.

use std::cell::RefCell;
use std::io::{self, Read};

/// A byte buffer with a filled window `[start, end)`: read into the tail, consume
/// from the head, and slide the window back to the front when the tail runs out.
/// Its storage is borrowed from the thread's chunk list only while the window is
/// not empty: `small` bytes, or `capacity` once a read has filled a whole chunk
/// (a body streaming through, which larger reads and writes move for less CPU;
/// `settle` goes back to small ones), so the many buffers of short exchanges
/// borrow small chunks.
pub struct Buf {
    data: Option<Box<[u8]>>,
    small: usize,
    capacity: usize,
    /// A read filled a whole chunk: the next chunk is `capacity` bytes.
    streaming: bool,
    start: usize,
    end: usize,
}

impl Buf {
    pub fn with_capacity(capacity: usize) -> Buf {
        Buf::with_sizes(capacity, capacity)
    }

    /// Chunks of `small` bytes, and of `capacity` while a body streams.
    pub fn with_sizes(small: usize, capacity: usize) -> Buf {
        debug_assert!(small > 0 && small <= capacity);
        Buf {
            data: None,
            small,
            capacity,
            streaming: false,
            start: 0,
            end: 0,
        }
    }

    /// The next chunk is a small one again (a new exchange begins); the chunk
    /// held now, if any, stays until it is empty.
    #[inline]
    pub fn settle(&mut self) {
        self.streaming = false;
    }

    /// The bytes held and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        match &self.data {
            Some(data) => &data[self.start..self.end],
            None => &[],
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// No more bytes fit in the chunk held, even after compaction.
    pub fn is_full(&self) -> bool {
        self.data.as_ref().is_some_and(|d| self.len() == d.len())
    }

    /// It holds storage (only while it holds bytes, outside `read_from`).
    pub fn holds_storage(&self) -> bool {
        self.data.is_some()
    }

    /// Drop `n` bytes from the front; the storage goes back once none are left.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.clear();
        }
    }

    /// Drop every byte held, and give the storage back.
    #[inline]
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        // Most calls find nothing to give back: only that test is inlined.
        if self.data.is_some() {
            self.release();
        }
    }

    #[inline(never)]
    fn release(&mut self) {
        if let Some(data) = self.data.take() {
            give_chunk(data);
        }
    }

    /// Read once from `src` into the free tail. Returns the byte count (0: end of
    /// stream; callers check `is_full` first) and whether the read was short, i.e.
    /// returned less than the room it was offered. Storage is taken for the read
    /// and given back if it brought nothing.
    pub fn read_from(&mut self, src: &mut impl Read) -> io::Result<(usize, bool)> {
        let size = if self.streaming {
            self.capacity
        } else {
            self.small
        };
        let data = match &mut self.data {
            Some(data) => data,
            empty @ None => empty.insert(take_chunk(size)),
        };
        // Slide the window back once the tail is under half the buffer: large reads
        // are cheaper than the copy, which only moves the few unconsumed bytes.
        if self.start > 0 && data.len() - self.end < data.len() / 2 {
            data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = data.len() - self.end;
        let read = src.read(&mut data[self.end..]);
        match read {
            Ok(n) if n > 0 => {
                self.end += n;
                self.streaming |= self.end == data.len();
                Ok((n, n < room))
            }
            _ => {
                if self.is_empty() {
                    self.clear();
                }
                read.map(|n| (n, true))
            }
        }
    }
}

/// Bytes of free chunks of one size kept per thread at most, whatever `trim`
/// says: 1024 chunks of 32 KiB, as many as one batch of events can hold (a
/// worker polls for up to 1024 events, and a session's response waits in its
/// chunk until the batch's writes go out together), or 520 of 63 KiB (only
/// streaming bodies take those). With 128 chunks, at 1000 connections every
/// batch allocated (and zeroed) most of its chunks anew and freed them after:
/// 6% of the proxy's CPU in `memset` (perf, wrk -c1000). What a burst took and
/// then left unused is freed by `trim` all the same.
const MAX_FREE_BYTES: usize = 32 * 1024 * 1024;

/// A free list that frees what went unused: `low` is the fewest values it held
/// since the last `trim`, i.e. how many nobody needed over that time.
struct FreeList<T> {
    free: Vec<T>,
    low: usize,
}

impl<T> FreeList<T> {
    const fn new() -> FreeList<T> {
        FreeList {
            free: Vec::new(),
            low: 0,
        }
    }

    fn pop(&mut self) -> Option<T> {
        let value = self.free.pop();
        self.low = self.low.min(self.free.len());
        value
    }

    /// Free the values not taken since the last call; returns how many.
    fn trim(&mut self) -> usize {
        let unused = self.low.min(self.free.len());
        self.free.truncate(self.free.len() - unused);
        if self.free.len() * 4 < self.free.capacity() {
            self.free.shrink_to(self.free.len() * 2);
        }
        self.low = self.free.len();
        unused
    }
}

/// A thread's free chunks, one list per size (a buffer's small and streaming
/// sizes; after a reload that changed them, the old ones until a trim frees them).
struct Chunks {
    lists: Vec<(usize, FreeList<Box<[u8]>>)>,
}

thread_local! {
    static CHUNKS: RefCell<Chunks> = const { RefCell::new(Chunks { lists: Vec::new() }) };
}

fn take_chunk(size: usize) -> Box<[u8]> {
    CHUNKS
        .try_with(|c| {
            let mut c = c.borrow_mut();
            let (_, list) = c.lists.iter_mut().find(|(s, _)| *s == size)?;
            list.pop()
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; size].into_boxed_slice())
}

fn give_chunk(chunk: Box<[u8]>) {
    // The bytes stay in the chunk: the next `Buf` to hold it sees only what it
    // reads itself (`filled` is the window, and the window starts empty).
    let _ = CHUNKS.try_with(|c| {
        let mut c = c.borrow_mut();
        let size = chunk.len();
        let at = match c.lists.iter().position(|(s, _)| *s == size) {
            Some(at) => at,
            None => {
                c.lists.push((size, FreeList::new()));
                c.lists.len() - 1
            }
        };
        let list = &mut c.lists[at].1;
        if list.free.len() < MAX_FREE_BYTES / size.max(1) {
            list.free.push(chunk);
        }
    });
}

/// Free this thread's chunks that went unused since the last call; returns how
/// many were freed.
pub fn trim_chunks() -> usize {
    CHUNKS
        .try_with(|c| {
            let mut c = c.borrow_mut();
            let freed = c.lists.iter_mut().map(|(_, list)| list.trim()).sum();
            // An empty list goes (made again by the next chunk of its size).
            c.lists.retain(|(_, list)| !list.free.is_empty());
            freed
        })
        .unwrap_or(0)
}

/// Hand the allocator's free pages back to the system (glibc keeps memory that
/// was freed in its arenas otherwise). It walks the whole heap: call it after a
/// trim freed something, not per request.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
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

/// A free list of reusable values, bounded so a burst does not pin memory, and
/// trimmed (`trim`) so what a burst took is given back.
/// Values are reset as they come back, so what `take` returns is always clean.
pub struct Pool<T: Recycle> {
    free: FreeList<T>,
    max_free: usize,
    make: fn(usize) -> T,
    size: usize,
}

impl<T: Recycle> Pool<T> {
    /// `make(size)` creates a value when the free list is empty.
    pub fn new(size: usize, max_free: usize, make: fn(usize) -> T) -> Pool<T> {
        Pool {
            free: FreeList::new(),
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

    /// Free the values not taken since the last call; returns how many.
    pub fn trim(&mut self) -> usize {
        self.free.trim()
    }

    /// Take `value` back, emptied; beyond `max_free` it is dropped.
    pub fn give(&mut self, mut value: T) {
        value.reset();
        if self.free.free.len() < self.max_free {
            self.free.free.push(value);
        }
    }
}

impl Recycle for Buf {
    fn reset(&mut self) {
        self.clear();
        self.settle();
    }

    fn is_clean(&self) -> bool {
        self.is_empty() && !self.holds_storage() && !self.streaming
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
    fn a_read_that_fills_a_chunk_makes_the_next_one_large_until_settled() {
        let mut b = Buf::with_sizes(8, 32);
        let mut src: &[u8] = &[1u8; 100];
        assert_eq!(b.read_from(&mut src).unwrap(), (8, false));
        assert!(b.is_full());
        b.consume(8);
        assert!(!b.holds_storage());
        // The next chunk is the streaming size.
        assert_eq!(b.read_from(&mut src).unwrap(), (32, false));
        assert!(b.is_full());
        b.consume(32);
        // A new exchange: small chunks again, and full means full of the small one.
        b.settle();
        let mut short: &[u8] = &[2u8; 3];
        assert_eq!(b.read_from(&mut short).unwrap(), (3, true));
        assert_eq!(b.filled(), &[2, 2, 2]);
        assert!(!b.is_full());
        let mut rest: &[u8] = &[3u8; 100];
        assert_eq!(b.read_from(&mut rest).unwrap(), (5, false));
        assert!(b.is_full());
        // A pool hands it out again small and empty.
        b.reset();
        assert!(b.is_clean());
        assert_eq!(b.read_from(&mut rest).unwrap(), (8, false));
    }

    /// Random reads, consumes, settles, resets and trims over buffers of two
    /// size pairs sharing one thread's free lists, against a model of each: a
    /// buffer shows exactly the bytes it read and has not consumed, every one
    /// of them its own (tagged with its index), whatever chunk it got.
    #[test]
    fn buffers_of_mixed_sizes_never_show_each_others_bytes() {
        use std::collections::VecDeque;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut bufs: Vec<(Buf, VecDeque<u8>, u8)> = (0..6)
            .map(|i| {
                let b = if i % 2 == 0 {
                    Buf::with_sizes(8, 21)
                } else {
                    Buf::with_sizes(21, 40)
                };
                (b, VecDeque::new(), 0u8)
            })
            .collect();
        for step in 0..200_000 {
            let i = (rnd() % bufs.len() as u64) as usize;
            let (b, model, tag) = &mut bufs[i];
            match rnd() % 5 {
                0 | 1 => {
                    if b.is_full() {
                        assert_eq!(model.len(), b.len());
                        continue;
                    }
                    let n = (rnd() % 50) as usize;
                    let src: Vec<u8> = (0..n)
                        .map(|_| {
                            *tag = tag.wrapping_add(1);
                            (i as u8) << 5 | (*tag & 31)
                        })
                        .collect();
                    let (k, _) = b.read_from(&mut &src[..]).unwrap();
                    model.extend(&src[..k]);
                    *tag = tag.wrapping_sub((n - k) as u8);
                }
                2 => {
                    let k = (rnd() as usize) % (b.len() + 1);
                    b.consume(k);
                    model.drain(..k);
                }
                3 => {
                    if rnd() % 4 == 0 {
                        b.settle();
                    } else if rnd() % 8 == 0 {
                        b.reset();
                        model.clear();
                        assert!(b.is_clean());
                    }
                }
                _ => {
                    if rnd() % 50 == 0 {
                        trim_chunks();
                    }
                }
            }
            let (b, model, _) = &bufs[i];
            assert!(b.filled().iter().eq(model.iter()), "step {step}");
            assert_eq!(b.holds_storage(), !b.is_empty());
            assert!(
                b.filled().iter().all(|&x| usize::from(x >> 5) == i),
                "a foreign byte at step {step}"
            );
        }
    }

    #[test]
    fn pool_reuses_and_bounds() {
        let mut p: Pool<Buf> = Pool::new(4, 1, Buf::with_capacity);
        let a = p.take();
        let b = p.take();
        p.give(a);
        p.give(b);
        assert_eq!(p.free.free.len(), 1);
    }

    #[test]
    fn storage_is_held_only_while_bytes_are() {
        let mut b = Buf::with_capacity(64);
        assert!(!b.holds_storage());
        let mut src: &[u8] = b"abc";
        assert_eq!(b.read_from(&mut src).unwrap(), (3, true));
        assert!(b.holds_storage());
        b.consume(2);
        assert!(b.holds_storage());
        b.consume(1);
        assert!(!b.holds_storage() && b.is_empty());
        // A read that brings nothing (end of stream, or would block) keeps none.
        let mut eof: &[u8] = b"";
        assert_eq!(b.read_from(&mut eof).unwrap().0, 0);
        assert!(!b.holds_storage());
        assert!(b.read_from(&mut Blocked).is_err());
        assert!(!b.holds_storage());
        b.read_from(&mut &b"x"[..]).unwrap();
        b.clear();
        assert!(!b.holds_storage() && b.filled().is_empty());
    }

    struct Blocked;
    impl Read for Blocked {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    #[test]
    fn a_reused_chunk_shows_its_next_holder_only_its_own_bytes() {
        // Run on a thread of its own: its chunk list is this test's alone.
        std::thread::spawn(|| {
            let mut a = Buf::with_capacity(4096);
            a.read_from(&mut &b"GET /secret HTTP/1.1\r\nCookie: session=alice\r\n"[..])
                .unwrap();
            let old = a.data.as_ref().map(|d| d.as_ptr());
            a.consume(a.len());
            let mut b = Buf::with_capacity(4096);
            assert!(b.filled().is_empty());
            b.read_from(&mut &b"GET / HTTP/1.1\r\n"[..]).unwrap();
            assert_eq!(
                b.data.as_ref().map(|d| d.as_ptr()),
                old,
                "the chunk was not reused"
            );
            assert_eq!(b.filled(), b"GET / HTTP/1.1\r\n");
            // A chunk of another size is not handed out for this one.
            b.clear();
            let mut c = Buf::with_capacity(8192);
            c.read_from(&mut &b"x"[..]).unwrap();
            assert_eq!(c.data.as_ref().map(|d| d.len()), Some(8192));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_trim_frees_what_went_unused_since_the_last() {
        std::thread::spawn(|| {
            let mut bufs: Vec<Buf> = (0..10).map(|_| Buf::with_capacity(1024)).collect();
            for b in &mut bufs {
                b.read_from(&mut &b"x"[..]).unwrap();
            }
            bufs.iter_mut().for_each(Buf::clear);
            assert_eq!(trim_chunks(), 0, "the first trim only marks what is free");
            // Three are taken and given back between trims: seven went unused.
            for b in &mut bufs[..3] {
                b.read_from(&mut &b"x"[..]).unwrap();
            }
            bufs.iter_mut().for_each(Buf::clear);
            assert_eq!(trim_chunks(), 7);
            assert_eq!(trim_chunks(), 3, "nothing was taken since");
            assert_eq!(trim_chunks(), 0);
        })
        .join()
        .unwrap();
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
