//! Route selection per request. Routes are sorted once, most specific
//! first, so a lookup is a scan that stops at the first match, with no
//! allocation. The rule is in docs/configuration.md ("Routing").

use super::Config;

/// Picks the route for a request: routes with a host and path prefix are
/// tried most specific first; `default` is the catch-all.
#[derive(Debug, Clone)]
pub struct Router {
    /// Non-default routes, most specific first.
    entries: Vec<Entry>,
    default: Option<usize>,
}

#[derive(Debug, Clone)]
struct Entry {
    route: usize,
    host: HostMatch,
    prefix: Option<Box<[u8]>>,
}

#[derive(Debug, Clone)]
enum HostMatch {
    Any,
    /// Lower-case host.
    Exact(Box<[u8]>),
    /// `*.example.com` stored as `.example.com`: one or more labels before it.
    Suffix(Box<[u8]>),
}

impl HostMatch {
    /// 0 = any host, 1 = wildcard (longer suffix first), 2 = exact.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostMatch::Any => (0, 0),
            HostMatch::Suffix(s) => (1, s.len()),
            HostMatch::Exact(_) => (2, 0),
        }
    }

    fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let mut default = None;
        let mut entries = Vec::new();
        for (i, (name, route)) in config.routing.iter().enumerate() {
            let m = &route.matcher;
            if m.host.is_none() && m.path_prefix.is_none() {
                // Validation allows this only for `default`; treat any other
                // such route the same way rather than drop it.
                if name == "default" || default.is_none() {
                    default = Some(i);
                }
                continue;
            }
            let host = match m.host.as_deref() {
                None => HostMatch::Any,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => {
                        HostMatch::Suffix(suffix.to_ascii_lowercase().into_bytes().into())
                    }
                    None => HostMatch::Exact(h.to_ascii_lowercase().into_bytes().into()),
                },
            };
            let prefix = m.path_prefix.as_ref().map(|p| p.as_bytes().into());
            entries.push(Entry {
                route: i,
                host,
                prefix,
            });
        }
        // Tier: host+prefix, then host only, then prefix only. Within a tier
        // the more specific host, then the longer prefix, then file order.
        entries.sort_by_key(|e: &Entry| {
            let has_host = !matches!(e.host, HostMatch::Any);
            let tier = match (has_host, e.prefix.is_some()) {
                (true, true) => 0,
                (true, false) => 1,
                _ => 2,
            };
            let (class, suffix_len) = e.host.rank();
            let prefix_len = e.prefix.as_ref().map_or(0, |p| p.len());
            (
                tier,
                std::cmp::Reverse(class),
                std::cmp::Reverse(suffix_len),
                std::cmp::Reverse(prefix_len),
                e.route,
            )
        });
        Router { entries, default }
    }

    /// Index into `config.routing` for this request, or `None` (404).
    /// `host` is the Host header as received (any case, maybe with a port);
    /// `path` the request target's path.
    pub fn route(&self, host: &[u8], path: &[u8]) -> Option<usize> {
        if self.entries.is_empty() {
            return self.default; // the common one-route config: nothing to match
        }
        let host = normalize_host(host);
        self.entries
            .iter()
            .find(|e| e.host.matches(host) && e.prefix.as_ref().is_none_or(|p| path.starts_with(p)))
            .map(|e| e.route)
            .or(self.default)
    }
}

/// The host without its port and without a trailing dot; IPv6 literals
/// keep their brackets (`[::1]:8080` → `[::1]`).
fn normalize_host(host: &[u8]) -> &[u8] {
    let host = host.trim_ascii();
    let host = if host.first() == Some(&b'[') {
        match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    host.strip_suffix(b".").unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(routes: &str) -> Config {
        let text = format!(
            "server: {{ listen: \"127.0.0.1:8080\" }}\n\
             upstreams:\n  a: {{ backends: [ {{ addr: \"127.0.0.1:9000\" }} ] }}\n\
             routing:\n{routes}"
        );
        Config::from_yaml_str(&text, "test.yaml").unwrap()
    }

    fn name(cfg: &Config, r: &Router, host: &str, path: &str) -> Option<String> {
        r.route(host.as_bytes(), path.as_bytes())
            .map(|i| cfg.routing.get_index(i).unwrap().0.clone())
    }

    #[test]
    fn most_specific_route_wins() {
        let cfg = config(
            "  default: { upstream: a }\n\
             \x20 api: { upstream: a, match: { path_prefix: /api } }\n\
             \x20 api_v2: { upstream: a, match: { path_prefix: /api/v2 } }\n\
             \x20 shop: { upstream: a, match: { host: shop.example.com } }\n\
             \x20 shop_api: { upstream: a, match: { host: shop.example.com, path_prefix: /api } }\n\
             \x20 wild: { upstream: a, match: { host: \"*.example.com\" } }\n\
             \x20 wild_img: { upstream: a, match: { host: \"*.example.com\", path_prefix: /img } }\n\
             \x20 deep: { upstream: a, match: { host: \"*.eu.example.com\" } }\n",
        );
        let r = Router::new(&cfg);
        let cases = [
            ("other.org", "/", "default"),
            ("other.org", "/api/x", "api"),
            ("other.org", "/api/v2/x", "api_v2"),
            ("shop.example.com", "/", "shop"),
            ("SHOP.Example.COM:8080", "/", "shop"),
            ("shop.example.com.", "/", "shop"),
            ("shop.example.com", "/api/v2/x", "shop_api"),
            // host+prefix beats host only, even with a wildcard host
            ("shop.example.com", "/img/1.png", "wild_img"),
            ("www.example.com", "/", "wild"),
            ("www.example.com", "/img/1.png", "wild_img"),
            // host only beats prefix only
            ("www.example.com", "/api", "wild"),
            ("a.eu.example.com", "/", "deep"),
            // the wildcard needs at least one label before the suffix
            ("example.com", "/", "default"),
            ("", "/api", "api"),
        ];
        for (host, path, want) in cases {
            assert_eq!(
                name(&cfg, &r, host, path).as_deref(),
                Some(want),
                "{host} {path}"
            );
        }
    }

    #[test]
    fn without_default_unmatched_requests_get_none() {
        let cfg = config("  api: { upstream: a, match: { path_prefix: /api } }\n");
        let r = Router::new(&cfg);
        assert_eq!(r.route(b"x", b"/api/1"), Some(0));
        assert_eq!(r.route(b"x", b"/other"), None);
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize_host(b"Example.com:80"), b"Example.com");
        assert_eq!(normalize_host(b"[::1]:8080"), b"[::1]");
        assert_eq!(normalize_host(b"[::1]"), b"[::1]");
        assert_eq!(normalize_host(b" a.b. "), b"a.b");
    }

    #[test]
    fn matches_ipv6_host_literal() {
        let cfg = config(
            "  default: { upstream: a }\n\
             \x20 v6: { upstream: a, match: { host: \"[::1]\" } }\n",
        );
        let r = Router::new(&cfg);
        assert_eq!(name(&cfg, &r, "[::1]:8080", "/").as_deref(), Some("v6"));
    }
}
