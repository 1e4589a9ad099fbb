//! A hashed timer wheel of connection deadlines, one per event loop.
//!
//! Entries are (slab key, generation). Deadlines are lazily re-armed: moving a
//! deadline later costs nothing; the stale entry fires, the loop sees the
//! connection's newer deadline and schedules it again. Each live connection
//! so costs one 8-byte entry, which matters at a million connections.

use std::time::{Duration, Instant};

const TICK_MS: u64 = 10;
const SLOTS: usize = 4096; // 40.96 s span; later deadlines are re-armed on expiry
/// Entries of room a slot keeps once it has fired (32 bytes). Without a
/// bound, expiry swaps a fired slot's vector into the next slot to fire, so
/// capacity wanders between slots and every slot ratchets up to the
/// largest burst any slot ever held (heaptrack on the soak mix: 0.55 MB
/// after 8 min and growing). 4 keeps the wheel's idle room at 128 KiB per
/// loop; a busier slot grows again for one turn of the wheel.
const SLOT_KEEP: usize = 4;

/// Milliseconds on the loop's clock. u64: a u32 wrapped after 49.7 days of
/// uptime, and deadlines then stopped firing.
pub type Millis = u64;

/// A tick (`TICK_MS` long) on the loop's clock.
pub type Tick = u64;

#[derive(Debug)]
pub struct TimerWheel {
    origin: Instant,
    /// The clock's reading at `origin` (0 but in tests, which start it near
    /// a boundary such as 2^32 ms).
    origin_ms: Millis,
    slots: Vec<Vec<(u32, u32)>>,
    /// Next tick to process.
    next_tick: Tick,
    len: usize,
    scratch: Vec<(u32, u32)>,
}

impl TimerWheel {
    pub fn new(origin: Instant) -> TimerWheel {
        TimerWheel::starting_at(origin, 0)
    }

    /// A wheel whose clock reads `origin_ms` at `origin`.
    pub fn starting_at(origin: Instant, origin_ms: Millis) -> TimerWheel {
        TimerWheel {
            origin,
            origin_ms,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick: origin_ms / TICK_MS,
            len: 0,
            scratch: Vec::new(),
        }
    }

    pub fn millis(&self, now: Instant) -> Millis {
        let elapsed = now.saturating_duration_since(self.origin).as_millis();
        self.origin_ms
            .saturating_add(elapsed.min(u64::MAX as u128) as u64)
    }

    /// Schedules `(key, gen)` at `deadline` (clamped to the wheel's span).
    /// Returns the tick the entry was filed under, which the caller keeps to
    /// recognise its own live entry later.
    pub fn schedule(&mut self, key: u32, gen: u32, deadline: Millis) -> Tick {
        let tick = TimerWheel::tick_of(deadline);
        let tick = tick.clamp(self.next_tick, self.next_tick + SLOTS as u64 - 1);
        self.slots[(tick % SLOTS as u64) as usize].push((key, gen));
        self.len += 1;
        tick
    }

    /// Collects every entry whose tick has passed by `now_ms` into `out`.
    pub fn expire(&mut self, now_ms: Millis, out: &mut Vec<(u32, u32)>) {
        let now_tick = TimerWheel::current_tick(now_ms);
        while self.next_tick <= now_tick {
            let slot = &mut self.slots[(self.next_tick % SLOTS as u64) as usize];
            if !slot.is_empty() {
                std::mem::swap(slot, &mut self.scratch);
                self.len -= self.scratch.len();
                out.append(&mut self.scratch);
                self.scratch.shrink_to(SLOT_KEEP);
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
        let due = self.next_tick.saturating_mul(TICK_MS);
        Some(Duration::from_millis(due.saturating_sub(now_ms).max(1)))
    }

    /// The tick `now_ms` falls in.
    pub fn current_tick(now_ms: Millis) -> Tick {
        now_ms / TICK_MS
    }

    /// The first tick at or after `deadline`.
    pub fn tick_of(deadline: Millis) -> Tick {
        deadline.div_ceil(TICK_MS)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries the slots have room for, filled or not (tests).
    #[cfg(test)]
    fn room(&self) -> usize {
        self.slots.iter().map(Vec::capacity).sum::<usize>() + self.scratch.capacity()
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

    /// 2^32 ms (49.7 days) of uptime used to wrap the clock: deadlines past
    /// it never fired. They fire, in order, on both sides of it.
    #[test]
    fn deadlines_fire_in_order_across_2_pow_32_ms() {
        let start: Millis = (1 << 32) - 1_000;
        let t0 = Instant::now();
        let mut w = TimerWheel::starting_at(t0, start);
        assert_eq!(w.millis(t0), start);
        assert_eq!(
            w.millis(t0 + Duration::from_secs(2)),
            start + 2_000,
            "the clock reads past 2^32 ms"
        );
        // Filed out of order: before the boundary, across it, after it.
        let deadlines = [
            (3, start + 1_500),
            (1, start + 500),
            (4, start + 30_000),
            (2, start + 999),
        ];
        for (key, at) in deadlines {
            w.schedule(key, 1, at);
        }
        let mut fired = Vec::new();
        let mut now = start;
        while !w.is_empty() && now < start + 60_000 {
            let sleep = w.next_timeout(now).expect("entries left");
            assert!(sleep <= Duration::from_secs(41), "{sleep:?}");
            now += 10;
            let mut out = Vec::new();
            w.expire(now, &mut out);
            for (key, _) in out {
                let due = deadlines.iter().find(|d| d.0 == key).unwrap().1;
                assert!(now >= due, "key {key} fired at {now}, before {due}");
                assert!(now - due < 20, "key {key} fired late: {now} for {due}");
                fired.push(key);
            }
        }
        assert_eq!(fired, vec![1, 2, 3, 4]);
        assert_eq!(w.next_timeout(now), None, "the wheel is empty");
        // A deadline filed well past the boundary still fires, at the first
        // tick after it.
        w.schedule(9, 2, now + 50);
        let mut out = Vec::new();
        w.expire(now + 40, &mut out);
        assert!(out.is_empty());
        w.expire(now + 60, &mut out);
        assert_eq!(out, vec![(9, 2)]);
    }

    #[test]
    fn room_does_not_ratchet_after_bursts() {
        // A burst of 1,000 entries in one tick, every tick, for ten turns of
        // the wheel: once fired, no slot keeps more than SLOT_KEEP of room.
        let origin = Instant::now();
        let mut w = TimerWheel::new(origin);
        let mut out = Vec::new();
        let mut now = 0;
        for turn in 0..10 {
            for t in 0..SLOTS as u64 {
                let at = now + t * TICK_MS;
                if t % 64 == turn {
                    for k in 0..1000 {
                        w.schedule(k, 0, at + 5);
                    }
                }
            }
            for _ in 0..SLOTS {
                now += TICK_MS;
                w.expire(now, &mut out);
                out.clear();
            }
        }
        assert!(w.is_empty());
        assert!(w.room() <= (SLOTS + 1) * SLOT_KEEP, "room {}", w.room());
    }
}
