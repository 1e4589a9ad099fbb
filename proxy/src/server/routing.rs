//! The routing state of one loop, rebuilt from each configuration it
//! applies: the router, each route's upstream and balancer, the loop's
//! own health state per backend, and the backends' shared counters.

use std::sync::Arc;

use crate::balancer::{new_balancer, Balancer};
use crate::config::{Config, Router, UpstreamConfig};
use crate::control::board::{BackendCounters, Board};
use crate::upstream::UpstreamState;

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
    pub(super) fn locate_in(&self, new: &Routing, u: usize, b: usize) -> Option<(usize, usize)> {
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
