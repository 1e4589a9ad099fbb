//! A hashed timer wheel of connection deadlines, one per event loop.
//!
//! Entries are (slab key, generation). Deadlines are lazily re-armed: moving a
//! deadline later costs nothing; the stale entry fires, the loop sees the
//! connection's newer deadline and schedules it again. Each live connection
//! so costs one 8-byte entry, which matters at a million connections.

use std::time::{Duration, Instant};

const TICK_MS: u64 = 10;
const SLOTS: usize = 4096; // 40.96 s span; later deadlines are re-armed on expiry

/// Milliseconds since the loop started; u32 covers 49 days.
pub type Millis = u32;

#[derive(Debug)]
pub struct TimerWheel {
    origin: Instant,
    slots: Vec<Vec<(u32, u32)>>,
    /// Next tick to process.
    next_tick: u64,
    len: usize,
    scratch: Vec<(u32, u32)>,
}

impl TimerWheel {
    pub fn new(origin: Instant) -> TimerWheel {
        TimerWheel {
            origin,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick: 0,
            len: 0,
            scratch: Vec::new(),
        }
    }

    pub fn millis(&self, now: Instant) -> Millis {
        now.saturating_duration_since(self.origin).as_millis() as Millis
    }

    /// Schedules `(key, gen)` at `deadline` (clamped to the wheel's span).
    /// Returns the tick the entry was filed under, which the caller keeps to
    /// recognise its own live entry later.
    pub fn schedule(&mut self, key: u32, gen: u32, deadline: Millis) -> u32 {
        let tick = (deadline as u64).div_ceil(TICK_MS);
        let tick = tick.clamp(self.next_tick, self.next_tick + SLOTS as u64 - 1);
        self.slots[(tick % SLOTS as u64) as usize].push((key, gen));
        self.len += 1;
        tick as u32
    }

    /// Collects every entry whose tick has passed by `now_ms` into `out`.
    pub fn expire(&mut self, now_ms: Millis, out: &mut Vec<(u32, u32)>) {
        let now_tick = now_ms as u64 / TICK_MS;
        while self.next_tick <= now_tick {
            let slot = &mut self.slots[(self.next_tick % SLOTS as u64) as usize];
            if !slot.is_empty() {
                std::mem::swap(slot, &mut self.scratch);
                self.len -= self.scratch.len();
                out.append(&mut self.scratch);
            }
            self.next_tick += 1;
            if self.len == 0 {
                self.next_tick = self.next_tick.max(now_tick + 1);
                break;
            }
        }
    }

    /// How long the loop may sleep before the next entry could be due.
    pub fn next_timeout(&self, now_ms: Millis) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let due = self.next_tick * TICK_MS;
        Some(Duration::from_millis(
            due.saturating_sub(now_ms as u64).max(1),
        ))
    }

    /// The tick `now_ms` falls in.
    pub fn current_tick(now_ms: Millis) -> u32 {
        (now_ms as u64 / TICK_MS) as u32
    }

    pub fn tick_of(deadline: Millis) -> u32 {
        (deadline as u64).div_ceil(TICK_MS) as u32
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_after_deadline_only() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.schedule(7, 1, 50);
        let mut out = Vec::new();
        w.expire(20, &mut out);
        assert!(out.is_empty());
        w.expire(60, &mut out);
        assert_eq!(out, vec![(7, 1)]);
        assert!(w.is_empty());
    }

    #[test]
    fn far_deadlines_are_clamped_to_the_span() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.schedule(1, 1, 100_000);
        let mut out = Vec::new();
        w.expire(41_000, &mut out);
        assert_eq!(out, vec![(1, 1)]);
    }
}
