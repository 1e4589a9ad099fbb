//! One event loop: accepts, dispatches readiness to connections, fires
//! timeouts. The proxying itself (what a connection does when it can make
//! progress) is in `proxy.rs`.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::accept::AcceptPause;
use super::backends::ORPHAN;
use super::conn::{ClientConn, Entry, Exchange, Phase, UpstreamConn, HUP, READABLE, WRITABLE};
use super::listener;
use crate::balancer::{new_balancer, Balancer};
use crate::buffer::BufPool;
use crate::config::{Config, Router, UpstreamConfig};
use crate::control::board::{BackendCounters, Board};
use crate::http::errors::Reject;
use crate::http::request::Limits;
use crate::stats::LoopStats;
use crate::timer::{Millis, Tick, TimerWheel};
use crate::upstream::pool::KeepAlivePool;
use crate::upstream::slots::{Slots, Waiter};
use crate::upstream::UpstreamState;

pub(super) const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Free buffers of each size a quiet loop keeps; under load the pool keeps
/// as many as the recent peak needed.
const POOLED_BUFFERS: usize = 64;
const POOLED_EXCHANGES: usize = 256;
/// After an error answer, how long the connection may linger to drain input.
pub(super) const LINGER: Duration = Duration::from_secs(2);
/// How often a draining loop checks whether its last connection is gone.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// The routing state of one loop, rebuilt from a configuration.
pub(super) struct Routing {
    pub config: Arc<Config>,
    pub router: Router,
    /// Upstream index of each route.
    pub route_upstream: Vec<usize>,
    /// The upstream every request goes to, when routing cannot pick another
    /// (one upstream behind every route, a catch-all `default` among them).
    pub sole_upstream: Option<usize>,
    pub balancers: Vec<Box<dyn Balancer>>,
    pub upstreams: Vec<UpstreamState>,
    pub upstream_cfg: Vec<UpstreamConfig>,
    /// `ip:port` of each backend, the Host of HTTP/1.0 requests without one.
    pub backend_hosts: Vec<Vec<String>>,
    /// Shared counters of each backend (see `control::board`).
    pub counters: Vec<Vec<&'static BackendCounters>>,
}

impl Routing {
    pub fn new(config: Arc<Config>, board: &'static Board) -> Routing {
        let upstream_cfg: Vec<UpstreamConfig> = config.upstreams.values().cloned().collect();
        let counters: Vec<Vec<&'static BackendCounters>> = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                u.backends
                    .iter()
                    .map(|b| board.backend(name, &b.addr.to_string()))
                    .collect()
            })
            .collect();
        let upstreams: Vec<UpstreamState> = upstream_cfg
            .iter()
            .zip(&counters)
            .map(|(cfg, c)| UpstreamState::from_config(cfg).follow_active_checks(c))
            .collect();
        let mut route_upstream = Vec::new();
        let mut balancers = Vec::new();
        for route in config.routing.values() {
            let u = config
                .upstreams
                .get_index_of(&route.upstream)
                .expect("validated: route names an existing upstream");
            route_upstream.push(u);
            balancers.push(new_balancer(route.load_balancer, &upstreams[u]));
        }
        let backend_hosts = upstream_cfg
            .iter()
            .map(|u| u.backends.iter().map(|b| b.addr.to_string()).collect())
            .collect();
        let sole_upstream = match route_upstream.split_first() {
            Some((&u, rest))
                if rest.iter().all(|&v| v == u) && config.routing.contains_key("default") =>
            {
                Some(u)
            }
            _ => None,
        };
        Routing {
            sole_upstream,
            router: Router::new(&config),
            config,
            route_upstream,
            balancers,
            upstreams,
            upstream_cfg,
            backend_hosts,
            counters,
        }
    }

    /// Where upstream `u`'s backend `b` of `self` is in `new`, if still there.
    fn locate_in(&self, new: &Routing, u: usize, b: usize) -> Option<(usize, usize)> {
        let (name, _) = self.config.upstreams.get_index(u)?;
        let addr = self.upstream_cfg[u].backends.get(b)?.addr;
        let nu = new.config.upstreams.get_index_of(name)?;
        let nb = new.upstream_cfg[nu]
            .backends
            .iter()
            .position(|x| x.addr == addr)?;
        Some((nu, nb))
    }
}

/// What the control plane sends an event loop.
pub enum LoopCommand {
    /// Switch to this configuration; the loop answers on `done` once it has.
    Apply {
        config: Arc<Config>,
        done: std::sync::mpsc::Sender<io::Result<()>>,
    },
    /// Stop accepting; finish in-flight requests until `deadline`, then stop.
    Drain { deadline: Instant },
}

pub struct EventLoop {
    pub(super) poll: Poll,
    pub(super) listener: TcpListener,
    pub(super) listener_ready: bool,
    /// Accepting paused after accept(2) ran out of descriptors (`accept.rs`).
    pub(super) accept_pause: AcceptPause,
    pub(super) slab: Slab<Entry>,
    pub(super) wheel: TimerWheel,
    pub(super) bufs: BufPool,
    /// Boxed on purpose: a client holds `Option<Box<Exchange>>` (8 bytes
    /// while idle), and recycling the boxes avoids an allocation per request.
    #[allow(clippy::vec_box)]
    exchanges: Vec<Box<Exchange>>,
    pub(super) pool: KeepAlivePool,
    pub(super) routing: Routing,
    pub(super) stats: &'static LoopStats,
    board: &'static Board,
    /// Worker process index: its column of the shared per-backend gauges.
    pub(super) process: usize,
    commands: std::sync::mpsc::Receiver<LoopCommand>,
    waker: Arc<mio::Waker>,
    /// Draining for shutdown: no accepting, connections close when idle.
    drain_deadline: Option<Instant>,
    pub(super) log: Option<crate::access_log::LoopLog>,
    /// Reused for every request head parsed by this loop.
    pub(super) scratch_head: Option<Box<crate::http::request::RequestHead>>,
    pub(super) limits: Limits,
    open_connections: Arc<AtomicUsize>,
    pub(super) now: Instant,
    /// `now` on the timer wheel's clock, computed once per wake-up.
    pub(super) now_ms: Millis,
    next_gen: u32,
    last_trim: Instant,
    /// Connections open per backend and the `max_conns` wait queues.
    pub(super) slots: Slots,
    /// Waiters handed a connection slot, driven after the current event.
    pub(super) handoffs: VecDeque<(Waiter, usize)>,
    /// The client being driven because it was handed a slot.
    pub(super) handoff: Option<usize>,
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
            listener,
            listener_ready: false,
            accept_pause: AcceptPause::default(),
            slab: Slab::with_capacity(1024),
            // Room for the largest head plus the headers the proxy adds.
            bufs: BufPool::new((max_head + 2048).max(16 * 1024), POOLED_BUFFERS),
            exchanges: Vec::new(),
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
            slots: Slots::new(&sizes),
            handoffs: VecDeque::new(),
            handoff: None,
        })
    }

    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
        loop {
            let mut timeout = if self.listener_ready {
                Some(Duration::ZERO)
            } else {
                self.wheel.next_timeout(self.now_ms)
            };
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
            self.run_handoffs();
            if self.accept_pause.retry_due(self.now) {
                self.resume_accepting();
            }
            if self.listener_ready {
                self.accept_batch();
            }
            self.wheel.expire(self.now_ms, &mut expired);
            for (key, gen) in expired.drain(..) {
                self.on_timer(key as usize, gen);
            }
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

    fn on_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                LoopCommand::Apply { config, done } => {
                    let _ = done.send(self.apply(config));
                }
                LoopCommand::Drain { deadline } => self.start_drain(deadline),
            }
        }
    }

    /// Switches to a new configuration without dropping a connection:
    /// requests in flight finish on the backend they started on (even one
    /// the new configuration removed), pooled connections to kept backends
    /// stay pooled, a new listen address is open before the old one closes.
    fn apply(&mut self, config: Arc<Config>) -> io::Result<()> {
        if config.server.listen != self.routing.config.server.listen {
            let mut fresh = listener::bind_reuseport(config.server.listen)?;
            self.poll
                .registry()
                .register(&mut fresh, LISTENER, Interest::READABLE)?;
            let mut old = std::mem::replace(&mut self.listener, fresh);
            let _ = self.poll.registry().deregister(&mut old);
            self.listener_ready = true;
            self.accept_pause.clear(); // the fresh listener is registered
        }
        let mut new = Routing::new(config, self.board);
        let old = &self.routing;
        for (u, state) in old.upstreams.iter().enumerate() {
            for (b, backend) in state.backends.iter().enumerate() {
                if let Some((nu, nb)) = old.locate_in(&new, u, b) {
                    let weight = new.upstreams[nu].backends[nb].weight;
                    new.upstreams[nu].backends[nb] = backend.clone();
                    new.upstreams[nu].backends[nb].weight = weight;
                }
            }
        }
        let mut pooled = Vec::new();
        for (key, entry) in self.slab.iter_mut() {
            match entry {
                Entry::Upstream(up) => {
                    let at = old.locate_in(&new, up.upstream as usize, up.backend as usize);
                    let (nu, nb) = at.unwrap_or((ORPHAN, ORPHAN));
                    up.upstream = nu.min(u16::MAX as usize) as u16;
                    up.backend = nb.min(u16::MAX as usize) as u16;
                    if up.client.is_none() {
                        pooled.push((key, nu, nb));
                    }
                }
                Entry::Client(c) => {
                    if let Some(ex) = c.ex.as_mut().filter(|ex| ex.active) {
                        let at = old.locate_in(&new, ex.upstream, ex.backend);
                        (ex.upstream, ex.backend) = at.unwrap_or((ORPHAN, ORPHAN));
                        ex.route = old
                            .config
                            .routing
                            .get_index(ex.route)
                            .and_then(|(name, _)| new.config.routing.get_index_of(name))
                            .unwrap_or(ORPHAN);
                    }
                }
            }
        }
        let sizes: Vec<usize> = new.upstream_cfg.iter().map(|u| u.backends.len()).collect();
        self.pool = KeepAlivePool::new(&sizes);
        for (key, nu, nb) in pooled {
            let kept = nu != ORPHAN
                && self
                    .pool
                    .put(nu, nb, key, new.upstream_cfg[nu].idle_limit());
            if !kept {
                self.close_upstream(key);
            }
        }
        let max_head = new
            .config
            .server
            .max_header_size
            .min(self.bufs.buffer_size() - 2048);
        self.limits = Limits {
            max_head,
            max_uri: max_head.min(8192),
        };
        self.routing = new;
        self.requeue_after_apply(&sizes);
        Ok(())
    }

    /// Stops accepting; idle connections close now, busy ones after their
    /// response; the loop ends when none is left or at `deadline`.
    fn start_drain(&mut self, deadline: Instant) {
        self.drain_deadline = Some(deadline);
        self.listener_ready = false;
        if !self.accept_pause.clear() {
            let _ = self.poll.registry().deregister(&mut self.listener);
        }
        let idle: Vec<usize> = self
            .slab
            .iter()
            .filter_map(|(key, entry)| match entry {
                Entry::Client(c)
                    if c.phase == Phase::Idle || (c.phase == Phase::Head && c.ex.is_none()) =>
                {
                    Some(key)
                }
                _ => None,
            })
            .collect();
        for key in idle {
            self.close_client(key, None);
        }
    }

    pub(super) fn draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    pub(super) fn on_accept(
        &mut self,
        mut stream: mio::net::TcpStream,
        peer: std::net::SocketAddr,
    ) {
        let _ = stream.set_nodelay(true);
        LoopStats::add(&self.stats.connections_total, 1);
        let refused = self.open_connections.load(Relaxed) >= self.routing.config.server.max_conn;
        if refused {
            LoopStats::add(&self.stats.connections_refused, 1);
            LoopStats::add(&self.stats.rejects[Reject::Unavailable as usize], 1);
        } else {
            self.open_connections.fetch_add(1, Relaxed);
            self.stats.connections_current.fetch_add(1, Relaxed);
        }
        let gen = self.gen();
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.release_slot(refused);
            return;
        }
        let header_timeout = self.routing.config.server.header_timeout;
        entry.insert(Entry::Client(ClientConn {
            stream,
            gen,
            deadline: 0,
            timer_tick: 0,
            ready: 0,
            phase: if refused { Phase::Closing } else { Phase::Head },
            peer: peer.ip(),
            counted: !refused,
            ex: None,
        }));
        if refused {
            // Past max_conn: answer 503 and close, never leave it hanging.
            let mut ex = self.new_exchange();
            let mut buf = self.bufs.get();
            buf.push(Reject::Unavailable.response());
            ex.resp_head = Some(buf);
            ex.close_after = true;
            ex.client.keep_alive = false;
            self.client_mut(key).ex = Some(ex);
            self.set_deadline(key, LINGER);
        } else {
            self.set_deadline(key, header_timeout);
        }
    }

    fn release_slot(&mut self, refused: bool) {
        if !refused {
            self.open_connections.fetch_sub(1, Relaxed);
            self.stats.connections_current.fetch_sub(1, Relaxed);
        }
    }

    fn on_ready(&mut self, key: usize, ready: u8) {
        match self.slab.get_mut(key) {
            Some(Entry::Client(c)) => {
                c.ready |= ready;
                self.drive(key);
            }
            Some(Entry::Upstream(u)) => {
                u.ready |= ready;
                match u.client {
                    Some(ck) => self.drive(ck),
                    None => {
                        if ready & READABLE != 0 {
                            // An idle pooled connection became readable: the
                            // backend closed it (or sent garbage). Drop it.
                            let (up, b) = (u.upstream as usize, u.backend as usize);
                            self.pool.remove(up, b, key);
                            self.close_upstream(key);
                        }
                    }
                }
            }
            None => {}
        }
    }

    fn on_timer(&mut self, key: usize, gen: u32) {
        let now_ms = self.now_ms;
        let (deadline, tick, live_gen) = match self.slab.get(key) {
            Some(Entry::Client(c)) => (c.deadline, c.timer_tick, c.gen),
            Some(Entry::Upstream(u)) => (u.deadline, u.timer_tick, u.gen),
            None => return,
        };
        if live_gen != gen {
            return;
        }
        if deadline > now_ms {
            // Moved later since this entry was filed: re-arm once.
            // Only the connection's live entry re-arms; stale ones just lapse.
            if tick <= TimerWheel::current_tick(self.now_ms) {
                let t = self.wheel.schedule(key as u32, gen, deadline);
                self.set_tick(key, t);
            }
            return;
        }
        // This entry is spent: the next deadline files a fresh one.
        self.set_tick(key, 0);
        match self.slab.get(key) {
            Some(Entry::Client(_)) => self.client_timeout(key),
            Some(Entry::Upstream(u)) if u.client.is_none() => {
                let (up, b) = (u.upstream as usize, u.backend as usize);
                self.pool.remove(up, b, key);
                self.close_upstream(key);
            }
            _ => {}
        }
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

    fn gen(&mut self) -> u32 {
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

    /// Opens a connection to a backend and files it in the slab.
    pub(super) fn open_upstream(
        &mut self,
        upstream: usize,
        backend: usize,
        client: usize,
    ) -> io::Result<usize> {
        let addr = self.routing.upstream_cfg[upstream].backends[backend].addr;
        let mut stream = mio::net::TcpStream::connect(addr)?;
        let _ = stream.set_nodelay(true);
        let gen = self.gen();
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Entry::Upstream(UpstreamConn {
            stream,
            gen,
            deadline: 0,
            timer_tick: 0,
            ready: 0,
            upstream: upstream as u16,
            backend: backend as u16,
            client: Some(client),
            connecting: true,
            connect_started: self.now,
            reused: false,
        }));
        LoopStats::add(&self.stats.upstream_connects, 1);
        self.slots.opened(upstream, backend);
        Ok(key)
    }

    pub(super) fn close_upstream(&mut self, key: usize) {
        if let Some(Entry::Upstream(mut u)) = self.slab.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut u.stream);
            let (up, b) = (u.upstream as usize, u.backend as usize);
            self.slots.closed(up, b);
            self.hand_out_slots(up);
            self.descriptor_freed();
        }
    }

    /// Closes a client connection and everything its exchange holds.
    pub(super) fn close_client(&mut self, key: usize, ex: Option<Box<Exchange>>) {
        if let Some(mut ex) = ex {
            if let Some(uk) = ex.upstream_key.take() {
                self.finish_upstream(&mut ex, uk, false);
            }
            self.recycle_exchange(ex);
        }
        if let Some(Entry::Client(mut c)) = self.slab.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut c.stream);
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
        if self.bufs.released_bytes < 8 << 20 {
            return;
        }
        self.bufs.released_bytes = 0;
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only walks glibc's own heap; no Rust invariant involved.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
