//! What the control plane asks of a running loop: switch to a new
//! configuration without dropping a connection, or drain for shutdown.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use mio::Interest;

use super::attach::ORPHAN;
use super::conn::{Entry, Phase};
use super::event_loop::{EventLoop, LISTENER};
use super::listener;
use super::routing::Routing;
use crate::config::Config;
use crate::http::request::Limits;
use crate::upstream::pool::KeepAlivePool;

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

impl EventLoop {
    pub(super) fn on_commands(&mut self) {
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
}
