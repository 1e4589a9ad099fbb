//! What the control plane asks of a running loop: switch to a new
//! configuration without dropping a connection, or drain for shutdown.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Interest;

use super::attach::ORPHAN;
use super::conn::{Entry, Phase};
use super::event_loop::{EventLoop, LISTENER};
use super::listener;
use super::routing::Routing;
use crate::config::Config;
use crate::http::request::Limits;
use crate::timer::Millis;
use crate::upstream::pool::KeepAlivePool;

/// How long a draining loop keeps idle client connections open for a
/// request already on its way.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// What the control plane sends an event loop.
pub enum LoopCommand {
    /// Switch to this configuration; the loop answers on `done` once it has.
    Apply {
        config: Arc<Config>,
        done: std::sync::mpsc::Sender<io::Result<()>>,
    },
    /// Stop accepting; finish in-flight requests until `deadline`, then stop.
    Drain { deadline: Instant },
    /// A copy of the listening socket (none once draining), for an upgrade.
    ListenerFd {
        reply: std::sync::mpsc::Sender<io::Result<Option<std::os::fd::OwnedFd>>>,
    },
}

impl EventLoop {
    pub(super) fn on_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                LoopCommand::Apply { config, done } => {
                    let _ = done.send(self.apply(config));
                }
                LoopCommand::Drain { deadline } => self.start_drain(deadline),
                LoopCommand::ListenerFd { reply } => {
                    use std::os::fd::AsFd;
                    let fd = self
                        .listener
                        .as_ref()
                        .map(|l| l.as_fd().try_clone_to_owned());
                    let _ = reply.send(fd.transpose());
                }
            }
        }
    }

    /// Switches to a new configuration without dropping a connection:
    /// requests in flight finish on the backend they started on (even one
    /// the new configuration removed), pooled connections to kept backends
    /// stay pooled, a new listen address is open before the old one closes.
    fn apply(&mut self, config: Arc<Config>) -> io::Result<()> {
        let moved = config.server.listen != self.routing.config.server.listen;
        if moved && !self.draining() {
            let mut fresh = listener::bind_reuseport(config.server.listen)?;
            self.poll
                .registry()
                .register(&mut fresh, LISTENER, Interest::READABLE)?;
            if let Some(mut old) = self.listener.replace(fresh) {
                let _ = self.poll.registry().deregister(&mut old);
            }
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
        // Closed, not only unwatched: SO_REUSEPORT would go on giving a
        // socket nobody accepts on new connections, to be reset at exit.
        // After an upgrade the new process holds its own copy: the socket
        // and its waiting connections live on there.
        if let Some(mut listener) = self.listener.take() {
            if !self.accept_pause.clear() {
                let _ = self.poll.registry().deregister(&mut listener);
            }
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
        // Not closed at once: a request may be on its way on any of them
        // (a keep-alive client between two requests, a connection accepted
        // just before). One sent within DRAIN_IDLE is answered, with
        // `Connection: close`; the rest close then.
        let grace = self.now_ms.saturating_add(DRAIN_IDLE.as_millis() as Millis);
        for key in idle {
            let deadline = match self.slab.get(key) {
                Some(Entry::Client(c)) => c.deadline.min(grace),
                _ => continue,
            };
            self.set_deadline_at(key, deadline);
        }
    }

    pub(super) fn draining(&self) -> bool {
        self.drain_deadline.is_some()
    }
}
