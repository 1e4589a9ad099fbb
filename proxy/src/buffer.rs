//! Byte buffers for in-flight data and the per-loop pool they come from.
//!
//! A connection holds a buffer only while bytes are in flight; idle
//! keep-alive connections hold none. The pool keeps a bounded number of free
//! buffers so a burst does not pin its peak memory forever.

/// A fixed-capacity byte buffer with a read cursor (`start`) and a write
/// cursor (`end`).
#[derive(Debug)]
pub struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    /// Bytes written and not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
    /// The unread bytes, to rewrite in place.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }
    /// Removes unread bytes `from..to` (offsets into `data()`), moving the
    /// ones after them up.
    pub fn remove(&mut self, from: usize, to: usize) {
        debug_assert!(from <= to && to <= self.len());
        if from == to {
            return;
        }
        let (from, to) = (self.start + from, self.start + to);
        self.data.copy_within(to..self.end, from);
        self.end -= to - from;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
    pub fn capacity(&self) -> usize {
        self.data.len()
    }
    /// Free space at the end, after moving unread bytes to the front when
    /// that makes room.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.compact();
        }
        &mut self.data[self.end..]
    }
    pub fn has_spare(&self) -> bool {
        self.end < self.data.len() || self.start > 0
    }
    /// Marks `n` bytes of `spare()` as written.
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.data.len());
        self.end += n;
    }
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    /// Makes consumed bytes readable again (a request head re-sent to
    /// another backend). Only valid while nothing else was written.
    pub fn rewind(&mut self) {
        self.start = 0;
    }
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
    /// Appends as much of `bytes` as fits; returns how much was taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let room = self.spare();
        let n = bytes.len().min(room.len());
        room[..n].copy_from_slice(&bytes[..n]);
        self.end += n;
        n
    }
    fn compact(&mut self) {
        self.data.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }
}

/// Free buffers of one event loop, in two sizes: small ones for message
/// heads the proxy writes, large ones for bytes read from sockets. Not
/// shared between threads.
///
/// The free lists follow demand: they may hold as many buffers as were in
/// use at the recent peak (so a steady load never reaches the allocator),
/// and `decay` hands the excess back once a burst is over.
#[derive(Debug)]
pub struct BufPool {
    large: Tier,
    small: Tier,
    /// Bytes handed back to the allocator since the last trim.
    pub released_bytes: usize,
}

#[derive(Debug)]
struct Tier {
    free: Vec<Box<[u8]>>,
    size: usize,
    in_use: usize,
    /// Most buffers in use at once since the last `decay`.
    peak: usize,
    floor: usize,
    /// Touch every page of a new buffer. The allocator hands out untouched
    /// pages, so otherwise a pooled buffer's resident size grows for hours
    /// as larger messages happen to pass through it (the soak's creep);
    /// touched at once, RSS shows what the pool holds from the start.
    prefault: bool,
}

impl Tier {
    fn get(&mut self) -> Buf {
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
        let data = self.free.pop().unwrap_or_else(|| self.alloc());
        Buf {
            data,
            start: 0,
            end: 0,
        }
    }

    fn alloc(&self) -> Box<[u8]> {
        Self::alloc_touched(self.size, self.prefault)
    }

    fn alloc_touched(size: usize, touch: bool) -> Box<[u8]> {
        let mut data = vec![0u8; size].into_boxed_slice();
        if touch {
            for page in data.chunks_mut(PAGE) {
                // Volatile: the allocator's zeroed memory must not let the
                // compiler drop a store of zero.
                // SAFETY: the first byte of a live slice borrowed mutably.
                unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
            }
        }
        data
    }

    /// Allocates the floor up front, every page touched: the free list
    /// never holds less than the floor after its first use, so left to fill
    /// on demand it rises in steps whenever a burst sets a new peak below
    /// the floor, which a soak reads as RSS growth for an hour (a high-water
    /// mark, but indistinguishable from a leak). Full from the start, what
    /// the pool holds at rest is a constant.
    fn prefill(&mut self) {
        self.free = (0..self.floor)
            .map(|_| Self::alloc_touched(self.size, true))
            .collect();
    }

    /// Returns the bytes released to the allocator.
    fn put(&mut self, data: Box<[u8]>) -> usize {
        self.in_use = self.in_use.saturating_sub(1);
        if self.free.len() < self.floor.max(self.peak) {
            self.free.push(data);
            0
        } else {
            data.len()
        }
    }

    fn decay(&mut self) -> usize {
        let keep = self.floor.max(self.peak);
        let excess = self.free.len().saturating_sub(keep);
        self.free.truncate(keep);
        self.peak = self.in_use;
        excess * self.size
    }
}

/// Size of the small tier: a head the proxy writes that fits in it, and
/// every client read until it overflows (most request heads fit, so a slow
/// or idle-then-talking client holds one page, not a large buffer).
pub const SMALL_BUF: usize = 4096;
const PAGE: usize = 4096;

impl BufPool {
    /// `floor`: free buffers of each size kept however quiet the loop is,
    /// allocated (and resident) from the start.
    pub fn new(size: usize, floor: usize) -> BufPool {
        let tier = |size, prefault| Tier {
            free: Vec::new(),
            size,
            in_use: 0,
            peak: 0,
            floor,
            prefault,
        };
        let mut pool = BufPool {
            large: tier(size, true),
            small: tier(SMALL_BUF.min(size), false),
            released_bytes: 0,
        };
        pool.large.prefill();
        pool.small.prefill();
        pool
    }
    pub fn get(&mut self) -> Buf {
        self.large.get()
    }
    /// A buffer for a head of about `need` bytes.
    pub fn get_for(&mut self, need: usize) -> Buf {
        if need <= self.small.size {
            self.small.get()
        } else {
            self.large.get()
        }
    }
    /// A small buffer for reading from a client: `grow` moves it to a
    /// large one when the bytes do not fit.
    pub fn get_small(&mut self) -> Buf {
        self.small.get()
    }
    /// Moves the unread bytes of a small buffer into a large one; a large
    /// buffer is left as it is.
    pub fn grow(&mut self, buf: &mut Buf) {
        if !self.is_small(buf) {
            return;
        }
        let mut large = self.large.get();
        large.push(buf.data());
        let small = std::mem::replace(buf, large);
        self.put(small);
    }
    pub fn is_small(&self, buf: &Buf) -> bool {
        buf.capacity() < self.large.size
    }
    pub fn put(&mut self, buf: Buf) {
        let released = if buf.data.len() == self.large.size {
            self.large.put(buf.data)
        } else {
            self.small.put(buf.data)
        };
        self.released_bytes += released;
    }
    /// Returns a buffer to the pool and leaves `None` behind.
    pub fn put_opt(&mut self, slot: &mut Option<Buf>) {
        if let Some(buf) = slot.take() {
            self.put(buf);
        }
    }
    /// Called about once a second: frees what the last burst left behind.
    pub fn decay(&mut self) {
        self.released_bytes += self.large.decay() + self.small.decay();
    }
    pub fn buffer_size(&self) -> usize {
        self.large.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_consume_compact() {
        let mut pool = BufPool::new(8, 1);
        let mut b = pool.get();
        assert_eq!(b.push(b"abcdefghij"), 8);
        b.consume(6);
        assert_eq!(b.data(), b"gh");
        assert_eq!(b.spare().len(), 6);
        assert_eq!(b.data(), b"gh");
        b.consume(2);
        assert!(b.is_empty());
        pool.put(b);
        let again = pool.get();
        assert_eq!(again.capacity(), 8);
    }

    #[test]
    fn free_list_follows_demand_then_decays() {
        let mut pool = BufPool::new(64, 2);
        let bufs: Vec<Buf> = (0..10).map(|_| pool.get()).collect();
        for b in bufs {
            pool.put(b);
        }
        assert_eq!(pool.large.free.len(), 10, "kept up to the peak");
        pool.decay();
        assert_eq!(pool.large.free.len(), 10, "the window still saw the peak");
        pool.decay();
        assert_eq!(pool.large.free.len(), 2, "back to the floor");
        assert_eq!(pool.get_for(100).capacity(), 64);
    }

    #[test]
    fn a_small_buffer_grows_with_its_bytes() {
        let mut pool = BufPool::new(3 * PAGE, 1);
        let mut b = pool.get_small();
        assert!(pool.is_small(&b));
        b.push(&[7u8; SMALL_BUF]);
        b.consume(10);
        pool.grow(&mut b);
        assert_eq!(b.capacity(), 3 * PAGE);
        assert_eq!(b.data(), &[7u8; SMALL_BUF - 10][..]);
        assert_eq!(pool.small.free.len(), 1, "the small one went back");
        pool.grow(&mut b);
        assert_eq!(b.capacity(), 3 * PAGE, "a large one stays");
    }
}
