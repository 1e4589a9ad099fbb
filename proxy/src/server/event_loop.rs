//! One event loop: waits on epoll, dispatches readiness to connections,
//! fires deadlines, and owns what every phase shares (the slab, the timer
//! wheel, the buffer and exchange pools). What a client connection does
//! when it can make progress starts in `drive.rs`; LIFECYCLE.md maps the
//! phases to their files.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::accept::AcceptPause;
use super::conn::{ClientConn, Entry, Exchange, Phase, UpstreamConn, HUP, READABLE, WRITABLE};
use super::reconfig::LoopCommand;
use super::routing::Routing;
use crate::buffer::BufPool;
use crate::config::Config;
use crate::control::board::Board;
use crate::http::request::Limits;
use crate::stats::LoopStats;
use crate::timer::{Millis, Tick, TimerWheel};
use crate::upstream::pool::KeepAlivePool;
use crate::upstream::slots::{Slots, Waiter};

pub(super) const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Free buffers of each size a quiet loop keeps; under load the pool keeps
/// as many as the recent peak needed.
const POOLED_BUFFERS: usize = 64;
const POOLED_EXCHANGES: usize = 256;
/// malloc_trim after this much freed, at the next once-a-second check...
const BIG_RELEASE: usize = 8 << 20;
/// ...or after this much, at most every SMALL_TRIM_EVERY.
const SMALL_RELEASE: usize = 64 << 10;
const SMALL_TRIM_EVERY: Duration = Duration::from_secs(10);
/// Pooled exchanges kept however quiet the loop is, allocated at start.
const EXCHANGE_FLOOR: usize = 64;
/// After an error answer, how long the connection may linger to drain input.
pub(super) const LINGER: Duration = Duration::from_secs(2);
/// How often a loop with requests waiting on an adaptive `max_conns`
/// looks whether the limit may grow (`conn_limit`'s windows are 250 ms).
const ADAPT_POLL: Duration = Duration::from_millis(50);
/// How often a draining loop checks whether its last connection is gone.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Deadlines a loop acts on between two polls. A tick (10 ms) can bring
/// hundreds at once (10,000 slowloris connections opened together expire
/// together); acting on them all before the next poll stalled every
/// well-behaved request behind them. The rest wait one poll(0) each.
const EXPIRE_BATCH: usize = 16;
/// A connection whose request head has been arriving for longer than this
/// is trickling (a slowloris client, or a very slow link): its readiness is
/// queued and served `SLOW_HEAD_BATCH` per turn, after every other event of
/// that turn. 10,000 slow clients each sending a byte come ready in bursts;
/// served in the order epoll returns them, a well-behaved request waited
/// behind hundreds of them. A well-behaved head arrives in one packet.
const SLOW_HEAD: Duration = Duration::from_secs(1);
const SLOW_HEAD_BATCH: usize = 64;

pub struct EventLoop {
    pub(super) poll: Poll,
    /// None once draining (closed).
    pub(super) listener: Option<TcpListener>,
    pub(super) listener_ready: bool,
    /// Accepting paused after accept(2) ran out of descriptors (`accept.rs`).
    pub(super) accept_pause: AcceptPause,
    pub(super) slab: Slab<Entry>,
    /// Slow heads come ready, (key, gen), served after the rest (`SLOW_HEAD`).
    slow_heads: VecDeque<(u32, u32)>,
    pub(super) wheel: TimerWheel,
    pub(super) bufs: BufPool,
    /// Boxed on purpose: a client holds `Option<Box<Exchange>>` (8 bytes
    /// while idle), and recycling the boxes avoids an allocation per request.
    #[allow(clippy::vec_box)]
    exchanges: Vec<Box<Exchange>>,
    /// Fewest pooled exchanges since the last trim: that many went unused.
    exchanges_low: usize,
    pub(super) pool: KeepAlivePool,
    pub(super) routing: Routing,
    pub(super) stats: &'static LoopStats,
    pub(super) board: &'static Board,
    /// Worker process index: its column of the shared per-backend gauges.
    pub(super) process: usize,
    pub(super) commands: std::sync::mpsc::Receiver<LoopCommand>,
    waker: Arc<mio::Waker>,
    /// Draining for shutdown: no accepting, connections close when idle.
    pub(super) drain_deadline: Option<Instant>,
    pub(super) log: Option<crate::access_log::LoopLog>,
    /// Reused for every request head parsed by this loop.
    pub(super) scratch_head: Option<Box<crate::http::request::RequestHead>>,
    pub(super) limits: Limits,
    pub(super) open_connections: Arc<AtomicUsize>,
    pub(super) now: Instant,
    /// `now` on the timer wheel's clock, computed once per wake-up.
    pub(super) now_ms: Millis,
    next_gen: u32,
    last_trim: Instant,
    last_malloc_trim: Instant,
    /// Connections open per backend and the `max_conns` wait queues.
    pub(super) slots: Slots,
    /// Waiters handed a connection slot, driven after the current event.
    pub(super) handoffs: VecDeque<(Waiter, usize)>,
    /// The client being driven because it was handed a slot.
    pub(super) handoff: Option<usize>,
    /// Requests wait on an adaptive `max_conns` (wake up to adapt it).
    adapting: bool,
}

/// Which worker process and which of its event loops a loop is: picks its
/// counters on the board.
#[derive(Debug, Clone, Copy)]
pub struct LoopPlace {
    pub process: usize,
    pub event_loop: usize,
}

impl EventLoop {
    pub fn new(
        config: Arc<Config>,
        listener: TcpListener,
        board: &'static Board,
        place: LoopPlace,
        open_connections: Arc<AtomicUsize>,
        commands: std::sync::mpsc::Receiver<LoopCommand>,
        log: Option<crate::access_log::LoopLog>,
    ) -> io::Result<EventLoop> {
        let stats = board.loop_stats(place.process, place.event_loop);
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let now = Instant::now();
        let max_head = config.server.max_header_size;
        let limits = Limits {
            max_head,
            max_uri: max_head.min(8192),
        };
        let routing = Routing::new(config, board);
        let sizes: Vec<usize> = routing
            .upstream_cfg
            .iter()
            .map(|u| u.backends.len())
            .collect();
        let wheel = TimerWheel::new(now);
        Ok(EventLoop {
            now_ms: wheel.millis(now),
            wheel,
            poll,
            listener: Some(listener),
            listener_ready: false,
            accept_pause: AcceptPause::default(),
            slab: Slab::with_capacity(1024),
            slow_heads: VecDeque::new(),
            // Room for the largest head plus the headers the proxy adds.
            bufs: BufPool::new((max_head + 2048).max(16 * 1024), POOLED_BUFFERS),
            exchanges: (0..EXCHANGE_FLOOR)
                .map(|_| Box::new(Exchange::new(now)))
                .collect(),
            exchanges_low: EXCHANGE_FLOOR,
            pool: KeepAlivePool::new(&sizes),
            routing,
            stats,
            board,
            process: place.process,
            commands,
            waker,
            drain_deadline: None,
            log,
            scratch_head: None,
            limits,
            open_connections,
            now,
            next_gen: 1,
            last_trim: now,
            last_malloc_trim: now,
            slots: Slots::new(&sizes),
            handoffs: VecDeque::new(),
            handoff: None,
            adapting: false,
        })
    }

    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
        loop {
            let mut timeout =
                if self.listener_ready || !expired.is_empty() || !self.slow_heads.is_empty() {
                    Some(Duration::ZERO)
                } else {
                    self.wheel.next_timeout(self.now_ms)
                };
            if self.adapting {
                timeout = Some(timeout.map_or(ADAPT_POLL, |t| t.min(ADAPT_POLL)));
            }
            if let Some(retry) = self.accept_pause.retry_in(self.now) {
                timeout = Some(timeout.map_or(retry, |t| t.min(retry)));
            }
            if let Some(deadline) = self.drain_deadline {
                let open = self.stats.connections_current.load(Relaxed);
                if open <= 0 || self.now >= deadline {
                    return Ok(());
                }
                timeout = Some(timeout.map_or(DRAIN_POLL, |t| t.min(DRAIN_POLL)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            self.now_ms = self.wheel.millis(self.now);
            for event in events.iter() {
                let token = event.token();
                if token == LISTENER {
                    self.listener_ready =
                        self.drain_deadline.is_none() && !self.accept_pause.is_paused();
                    continue;
                }
                if token == WAKER {
                    self.on_commands();
                    continue;
                }
                let mut ready = 0;
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    ready |= READABLE;
                }
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    ready |= WRITABLE;
                }
                if event.is_read_closed() || event.is_error() {
                    ready |= HUP;
                }
                self.on_ready(token.0, ready);
            }
            self.serve_slow_heads();
            self.run_handoffs();
            if self.accept_pause.retry_due(self.now) {
                self.resume_accepting();
            }
            if self.listener_ready {
                self.accept_batch();
            }
            self.expire_some(&mut expired);
            self.adapting = self.adapt_waiting_limits();
            self.run_handoffs();
            self.maybe_trim();
            if let Some(log) = self.log.as_mut() {
                log.flush_if_due(self.now);
                let dropped = log.take_dropped();
                if dropped > 0 {
                    LoopStats::add(&self.stats.access_log_dropped, dropped);
                }
            }
        }
    }

    /// The handle the control plane uses to reach this loop.
    pub fn waker(&self) -> Arc<mio::Waker> {
        self.waker.clone()
    }

    fn on_ready(&mut self, key: usize, ready: u8) {
        match self.slab.get_mut(key) {
            Some(Entry::Client(c)) => {
                c.ready |= ready;
                if c.phase == Phase::Head {
                    // Its deadline is header_timeout after the head's first byte.
                    let header_timeout = self.routing.config.server.header_timeout;
                    let slow_after = header_timeout.saturating_sub(SLOW_HEAD).as_millis() as u64;
                    if c.deadline < self.now_ms.saturating_add(slow_after) {
                        if !c.deferred {
                            c.deferred = true;
                            self.slow_heads.push_back((key as u32, c.gen));
                        }
                        return;
                    }
                }
                self.drive(key);
            }
            Some(Entry::Upstream(u)) => {
                u.ready |= ready;
                match u.client {
                    Some(ck) => self.drive(ck),
                    None => {
                        if ready & READABLE != 0 {
                            // An idle pooled connection became readable: the
                            // backend closed it (or sent garbage).
                            self.drop_pooled(key);
                        }
                    }
                }
            }
            None => {}
        }
    }

    /// Drives at most `SLOW_HEAD_BATCH` of the queued slow heads, oldest
    /// first; one closed or reused since it was queued is skipped.
    fn serve_slow_heads(&mut self) {
        for _ in 0..SLOW_HEAD_BATCH {
            let Some((key, gen)) = self.slow_heads.pop_front() else {
                break;
            };
            if let Some(Entry::Client(c)) = self.slab.get_mut(key as usize) {
                if c.gen == gen && c.deferred {
                    c.deferred = false;
                    self.drive(key as usize);
                }
            }
        }
    }

    /// Acts on due deadlines, at most `EXPIRE_BATCH` that do work; what is
    /// left stays in `expired` for the next turn (the wheel is read again
    /// once it is empty, so the oldest are never passed over).
    fn expire_some(&mut self, expired: &mut Vec<(u32, u32)>) {
        if expired.is_empty() {
            self.wheel.expire(self.now_ms, expired);
        }
        let mut fired = 0;
        while fired < EXPIRE_BATCH {
            let Some((key, gen)) = expired.pop() else {
                break;
            };
            fired += usize::from(self.on_timer(key as usize, gen));
        }
    }

    /// One wheel entry came due. True when a deadline really passed (the
    /// connection was answered or closed), false for a stale entry.
    fn on_timer(&mut self, key: usize, gen: u32) -> bool {
        let now_ms = self.now_ms;
        let (deadline, tick, live_gen) = match self.slab.get(key) {
            Some(Entry::Client(c)) => (c.deadline, c.timer_tick, c.gen),
            Some(Entry::Upstream(u)) => (u.deadline, u.timer_tick, u.gen),
            None => return false,
        };
        if live_gen != gen {
            return false;
        }
        if deadline > now_ms {
            // Moved later since this entry was filed: re-arm once.
            // Only the connection's live entry re-arms; stale ones just lapse.
            if tick <= TimerWheel::current_tick(self.now_ms) {
                let t = self.wheel.schedule(key as u32, gen, deadline);
                self.set_tick(key, t);
            }
            return false;
        }
        // This entry is spent: the next deadline files a fresh one.
        self.set_tick(key, 0);
        match self.slab.get(key) {
            Some(Entry::Client(_)) => self.client_timeout(key),
            // Idle in the pool for keepalive_timeout.
            Some(Entry::Upstream(u)) if u.client.is_none() => self.drop_pooled(key),
            _ => return false,
        }
        true
    }

    fn set_tick(&mut self, key: usize, tick: Tick) {
        match self.slab.get_mut(key) {
            Some(Entry::Client(c)) => c.timer_tick = tick,
            Some(Entry::Upstream(u)) => u.timer_tick = tick,
            None => {}
        }
    }

    /// Moves a connection's deadline to `now + d`. Costs a wheel entry only
    /// when the deadline moves earlier than the entry already filed.
    pub(super) fn set_deadline(&mut self, key: usize, d: Duration) {
        let d = d.as_millis().min(Millis::MAX as u128) as Millis;
        self.set_deadline_at(key, self.now_ms.saturating_add(d));
    }

    pub(super) fn set_deadline_at(&mut self, key: usize, deadline: Millis) {
        let (gen, old_tick, fresh) = match self.slab.get_mut(key) {
            Some(Entry::Client(c)) => {
                c.deadline = deadline;
                (c.gen, c.timer_tick, c.timer_tick == 0)
            }
            Some(Entry::Upstream(u)) => {
                u.deadline = deadline;
                (u.gen, u.timer_tick, u.timer_tick == 0)
            }
            None => return,
        };
        if fresh || TimerWheel::tick_of(deadline) < old_tick {
            let t = self.wheel.schedule(key as u32, gen, deadline);
            self.set_tick(key, t.max(1));
        }
    }

    pub(super) fn gen(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        self.next_gen
    }

    pub(super) fn client_mut(&mut self, key: usize) -> &mut ClientConn {
        match self.slab.get_mut(key) {
            Some(Entry::Client(c)) => c,
            _ => unreachable!("key {key} is a client"),
        }
    }

    pub(super) fn upstream_mut(&mut self, key: usize) -> &mut UpstreamConn {
        match self.slab.get_mut(key) {
            Some(Entry::Upstream(u)) => u,
            _ => unreachable!("key {key} is an upstream connection"),
        }
    }

    pub(super) fn new_exchange(&mut self) -> Box<Exchange> {
        match self.exchanges.pop() {
            Some(mut ex) => {
                self.exchanges_low = self.exchanges_low.min(self.exchanges.len());
                ex.reset(self.now);
                ex
            }
            None => Box::new(Exchange::new(self.now)),
        }
    }

    /// Returns an exchange's buffers and the exchange itself to the pools.
    pub(super) fn recycle_exchange(&mut self, mut ex: Box<Exchange>) {
        self.bufs.put_opt(&mut ex.inbuf);
        self.bufs.put_opt(&mut ex.req_head);
        self.bufs.put_opt(&mut ex.resp_buf);
        self.bufs.put_opt(&mut ex.resp_head);
        if self.exchanges.len() < POOLED_EXCHANGES {
            self.exchanges.push(ex);
        }
    }

    /// Closes a client connection and everything its exchange holds.
    pub(super) fn close_client(&mut self, key: usize, ex: Option<Box<Exchange>>) {
        if let Some(mut ex) = ex {
            if let Some(uk) = ex.upstream_key.take() {
                self.release_backend(&mut ex, uk, false);
            }
            self.recycle_exchange(ex);
        }
        if let Some(Entry::Client(mut c)) = self.slab.try_remove(key) {
            // No EPOLL_CTL_DEL: closing the socket (never shared) leaves
            // epoll by itself, one syscall per connection fewer.
            if let Some(tls) = c.tls.take() {
                self.tls_closed(&tls);
            }
            drop(c.stream);
            if let Some(ex) = c.ex.take() {
                self.recycle_exchange(ex);
            }
            self.release_slot(!c.counted);
            self.descriptor_freed();
        }
    }

    /// Once a second: lets the buffer pool shrink after a burst, and hands
    /// allocator memory back to the OS when a lot was released.
    fn maybe_trim(&mut self) {
        if self.now - self.last_trim < Duration::from_secs(1) {
            return;
        }
        self.last_trim = self.now;
        self.bufs.decay();
        // Pooled exchanges that no request took in the last second are what
        // a burst left behind; kept, RSS would hold every burst's peak.
        let surplus = self
            .exchanges_low
            .min(self.exchanges.len().saturating_sub(EXCHANGE_FLOOR));
        self.exchanges.truncate(self.exchanges.len() - surplus);
        self.exchanges_low = self.exchanges.len();
        self.bufs.released_bytes += surplus * std::mem::size_of::<Exchange>();
        // malloc_trim hands freed pages back (RSS follows the load down). A
        // large release is trimmed at once; a small one at most every
        // SMALL_TRIM_EVERY, since a trim walks the heap's free chunks and a
        // heap holding many connections has many.
        let released = self.bufs.released_bytes;
        let small_due = self.now - self.last_malloc_trim >= SMALL_TRIM_EVERY;
        if released < BIG_RELEASE && !(released >= SMALL_RELEASE && small_due) {
            return;
        }
        self.bufs.released_bytes = 0;
        self.last_malloc_trim = self.now;
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only walks glibc's own heap; no Rust invariant involved.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
