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

/// Free buffers of one event loop. Not shared between threads.
#[derive(Debug)]
pub struct BufPool {
    free: Vec<Box<[u8]>>,
    size: usize,
    max_free: usize,
    /// Bytes handed back to the allocator since the last trim.
    pub released_bytes: usize,
}

impl BufPool {
    pub fn new(size: usize, max_free: usize) -> BufPool {
        BufPool {
            free: Vec::with_capacity(max_free),
            size,
            max_free,
            released_bytes: 0,
        }
    }
    pub fn get(&mut self) -> Buf {
        let data = self
            .free
            .pop()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice());
        Buf {
            data,
            start: 0,
            end: 0,
        }
    }
    pub fn put(&mut self, buf: Buf) {
        if self.free.len() < self.max_free {
            self.free.push(buf.data);
        } else {
            self.released_bytes += buf.data.len();
        }
    }
    /// Returns a buffer to the pool and leaves `None` behind.
    pub fn put_opt(&mut self, slot: &mut Option<Buf>) {
        if let Some(buf) = slot.take() {
            self.put(buf);
        }
    }
    pub fn buffer_size(&self) -> usize {
        self.size
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
}
