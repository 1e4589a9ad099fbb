//! Configuration: the YAML file (the seed's shape) is read into `RawConfig`
//! (what the user wrote), validated into `Config` (every default resolved),
//! and `Router` picks a route per request. `docs/configuration.md` lists
//! every field; errors name the file, the line and the field.

mod locate;
mod patch;
mod raw;
mod router;
mod units;
mod validate;

#[cfg(test)]
mod tests;

use indexmap::IndexMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use patch::REDACTED;
pub use raw::{
    AutoOrCount, ExpectStatus, RawAdmin, RawBackend, RawBackendTls, RawCertificate, RawConfig,
    RawHealthCheck, RawMatch, RawRoute, RawServer, RawTls, RawUpstream, Size, Workers,
};
pub use router::Router;
pub use units::{format_duration, parse_duration};
pub use validate::validate;

/// Validated configuration. Every field is resolved (defaults applied,
/// addresses parsed, `auto` turned into a number).
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstreams: IndexMap<String, UpstreamConfig>,
    pub routing: IndexMap<String, RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Event-loop threads per process (`auto` = available cores).
    pub workers: usize,
    /// Worker processes (1 = no master).
    pub processes: usize,
    /// Concurrent client connections per process; past it: 503 and close.
    pub max_conn: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Keep-alive idle time between requests on a client connection.
    pub idle_timeout: Duration,
    /// Time allowed for a whole request head to arrive (408 after it).
    pub header_timeout: Duration,
    pub graceful_timeout: Duration,
    /// Largest request head accepted (431 beyond it); also bounds the URI (414).
    pub max_header_size: usize,
    /// Least transfer rate, bytes per second, of a client the proxy waits
    /// on (request body, response reading); 0 = off. See `min_rate_grace`.
    pub min_rate: u64,
    /// How far behind `min_rate` a client may fall (and how much credit
    /// for being ahead it may bank) before it is cut off.
    pub min_rate_grace: Duration,
    /// One JSON line per request, to this file (or "stderr"); off when `None`.
    pub access_log: Option<String>,
    /// `server.tls`: the listener speaks TLS; `None` = plaintext.
    pub tls: Option<crate::tls::TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// Where `token` was read from, when it came from `admin.token_file`.
    pub token_file: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub backends: Vec<BackendConfig>,
    /// Idle keep-alive connections kept per backend per event loop at most;
    /// `None` (`auto`, the default): every connection that comes back is
    /// kept, so the pool follows demand, and `keepalive_timeout` closes the
    /// ones a quieter load no longer reaches (the pool is a stack).
    pub keepalive: Option<usize>,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    /// Time to wait for response bytes from the backend (504 after it).
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Passive health: `max_fails` failures within `fail_timeout` mark a
    /// backend down for `fail_timeout`.
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Extra backends tried after a failed connect (bounded).
    pub retries: u32,
    /// Connections (busy, idle or connecting) each event loop keeps to each
    /// backend at most; 0 = no limit. Requests beyond wait in a FIFO queue.
    pub max_conns: usize,
    /// `max_conns: auto` (the default): the limit adapts per backend and
    /// loop (`upstream::conn_limit`); `max_conns` is 0 then.
    pub adaptive_conns: bool,
    /// Longest wait in that queue; 503 after it.
    pub queue_timeout: Duration,
    /// Active health checks (`upstream::probe`); `None` = off.
    pub health_check: Option<HealthCheckConfig>,
}

impl UpstreamConfig {
    /// Idle connections the pool may keep per backend per event loop.
    pub fn idle_limit(&self) -> usize {
        self.keepalive.unwrap_or(usize::MAX)
    }
}

/// `upstreams.NAME.health_check`, resolved: a `GET path` to each backend
/// every `interval`; `fall` failed probes in a row take it out of rotation,
/// `rise` good ones in a row bring it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    /// Bounds a whole probe: connect, send, and the response head.
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Status codes that count as healthy, inclusive.
    pub expect_status: (u16, u16),
    /// Host header; `None` = the backend's `IP:PORT`.
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub addr: SocketAddr,
    pub weight: u32,
    /// TLS to the backend, when `tls` is given.
    pub tls: Option<crate::tls::upstream::BackendTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RoundRobin,
    Weight,
    LeastConn,
    IpHash,
    P2c,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub upstream: String,
    pub load_balancer: Algorithm,
    pub matcher: RouteMatch,
}

#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
}

#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl Algorithm {
    /// Every balancer with its config name, in the order error messages list them.
    pub const ALL: [(Algorithm, &'static str); 5] = [
        (Algorithm::RoundRobin, "round_robin"),
        (Algorithm::Weight, "weight"),
        (Algorithm::LeastConn, "least_conn"),
        (Algorithm::IpHash, "ip_hash"),
        (Algorithm::P2c, "p2c"),
    ];

    /// The config name (`round_robin`, `weight`, ...).
    pub fn name(self) -> &'static str {
        Algorithm::ALL
            .iter()
            .find(|(a, _)| *a == self)
            .map(|(_, n)| *n)
            .unwrap_or("round_robin")
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(a, _)| *a)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for ConfigError {
    /// `FILE:LINE: FIELD: message`; the line and the field are left out when
    /// unknown (a JSON patch has no lines, a syntax error no field).
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Config::load(path).map(|(_, config)| config)
    }

    /// Reads a file into both shapes: the raw one (as written, for the admin
    /// API and merge patches) and the validated one.
    pub fn load(path: &Path) -> Result<(RawConfig, Config), ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: origin.clone(),
            line: None,
            field: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        })?;
        let raw = RawConfig::from_yaml_str(&text, &origin)?;
        let config = validate(raw.clone(), &origin, Some(&text))?;
        Ok((raw, config))
    }

    /// Parses and validates YAML text; `origin` names it in errors (usually
    /// the file name).
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw = RawConfig::from_yaml_str(text, origin)?;
        validate(raw, origin, Some(text))
    }

    /// The configuration with every default written out, e.g. for
    /// `GET /api/v1/config`. `workers: auto` comes back as the resolved
    /// count; keep the `RawConfig` the file gave to show `auto`.
    pub fn to_raw(&self) -> RawConfig {
        let s = &self.server;
        let server = RawServer {
            listen: s.listen.to_string(),
            workers: Some(Workers::Count(s.workers as u64)),
            processes: Some(s.processes as u32),
            max_conn: Some(s.max_conn as u64),
            read_timeout: Some(format_duration(s.read_timeout)),
            write_timeout: Some(format_duration(s.write_timeout)),
            idle_timeout: Some(format_duration(s.idle_timeout)),
            header_timeout: Some(format_duration(s.header_timeout)),
            graceful_timeout: Some(format_duration(s.graceful_timeout)),
            max_header_size: Some(Size::Text(units::format_size(s.max_header_size as u64))),
            min_rate: Some(Size::Text(units::format_size(s.min_rate))),
            min_rate_grace: Some(format_duration(s.min_rate_grace)),
            access_log: s.access_log.clone(),
            tls: s.tls.as_ref().map(crate::tls::TlsConfig::to_raw),
        };
        let admin = RawAdmin {
            listen: Some(self.admin.listen.to_string()),
            // A token read from a file stays in its file.
            token: self
                .admin
                .token
                .clone()
                .filter(|_| self.admin.token_file.is_none()),
            token_file: self.admin.token_file.clone(),
        };
        let upstreams = self
            .upstreams
            .iter()
            .map(|(name, u)| {
                let raw = RawUpstream {
                    backends: u
                        .backends
                        .iter()
                        .map(|b| RawBackend {
                            addr: b.addr.to_string(),
                            weight: Some(b.weight),
                            tls: b.tls.as_ref().map(|t| RawBackendTls {
                                sni: Some(t.sni.clone()),
                                ca: t.ca.as_ref().map(|p| p.display().to_string()),
                                insecure: Some(t.insecure),
                            }),
                        })
                        .collect(),
                    keepalive: Some(match u.keepalive {
                        None => AutoOrCount::Auto,
                        Some(n) => AutoOrCount::Count(n as u64),
                    }),
                    keepalive_timeout: Some(format_duration(u.keepalive_timeout)),
                    connect_timeout: Some(format_duration(u.connect_timeout)),
                    read_timeout: Some(format_duration(u.read_timeout)),
                    write_timeout: Some(format_duration(u.write_timeout)),
                    max_fails: Some(u.max_fails),
                    fail_timeout: Some(format_duration(u.fail_timeout)),
                    retries: Some(u.retries),
                    max_conns: Some(if u.adaptive_conns {
                        AutoOrCount::Auto
                    } else {
                        AutoOrCount::Count(u.max_conns as u64)
                    }),
                    queue_timeout: Some(format_duration(u.queue_timeout)),
                    health_check: u.health_check.as_ref().map(|h| RawHealthCheck {
                        path: Some(h.path.clone()),
                        interval: Some(format_duration(h.interval)),
                        timeout: Some(format_duration(h.timeout)),
                        rise: Some(h.rise),
                        fall: Some(h.fall),
                        expect_status: Some(match h.expect_status {
                            (lo, hi) if lo == hi => ExpectStatus::Code(u64::from(lo)),
                            (lo, hi) => ExpectStatus::Text(format!("{lo}-{hi}")),
                        }),
                        host: h.host.clone(),
                    }),
                };
                (name.clone(), raw)
            })
            .collect();
        let routing = self
            .routing
            .iter()
            .map(|(name, r)| {
                let m = &r.matcher;
                let matcher = (m.host.is_some() || m.path_prefix.is_some()).then(|| RawMatch {
                    host: m.host.clone(),
                    path_prefix: m.path_prefix.clone(),
                });
                let raw = RawRoute {
                    upstream: r.upstream.clone(),
                    load_balancer: Some(r.load_balancer.name().to_string()),
                    matcher,
                };
                (name.clone(), raw)
            })
            .collect();
        RawConfig {
            server,
            admin: Some(admin),
            upstreams,
            routing,
        }
    }
}

impl RawConfig {
    /// Parses YAML text into the raw model: syntax, unknown fields, wrong
    /// types and duplicate keys are reported here with their line.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<RawConfig, ConfigError> {
        let (locator, duplicate) = locate::Locator::new(text);
        if let Some(dup) = duplicate {
            return Err(ConfigError {
                file: origin.to_string(),
                line: Some(dup.line),
                field: dup.path,
                message: "duplicate key; each key may appear once (the second would silently win)"
                    .into(),
            });
        }
        if text.trim().is_empty() {
            return Err(ConfigError {
                file: origin.to_string(),
                line: None,
                field: String::new(),
                message:
                    "the configuration is empty; it needs at least server, upstreams and routing"
                        .into(),
            });
        }
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            serde_error(
                origin,
                &path,
                inner.location().map(|l| l.line()),
                &inner.to_string(),
                &locator,
            )
        })
    }
}

/// Turns a serde error into `ConfigError`: the field from the path, the line
/// from the parser (or the locator), and the message without the path and
/// position that serde_yaml_ng writes into its text.
fn serde_error(
    origin: &str,
    path: &str,
    line: Option<usize>,
    text: &str,
    locator: &locate::Locator,
) -> ConfigError {
    // serde_path_to_error writes "?" for a position it could not name
    // (e.g. where a syntax error cut a mapping short).
    let mut field = match path.trim_end_matches(".?") {
        "." | "?" => String::new(),
        p => p.to_string(),
    };
    let mut message = text;
    // serde_yaml_ng prefixes the path of the mapping it was in, e.g.
    // "upstreams.api.backends[1]: unknown field `wieght`".
    if let Some((head, rest)) = message.split_once(": ") {
        if !head.is_empty() && !head.contains(' ') && field.starts_with(head) {
            message = rest;
        }
    }
    let mut message = message.to_string();
    if let Some(at) = message.rfind(" at line ") {
        let tail = &message[at + " at line ".len()..];
        let digits_end = tail
            .find(|c: char| !(c.is_ascii_digit() || c == ' ' || c.is_ascii_alphabetic()))
            .unwrap_or(tail.len());
        if tail.contains("column") {
            message = format!("{}{}", &message[..at], &tail[digits_end..]);
        }
    }
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        field = if field.is_empty() {
            name.to_string()
        } else {
            format!("{field}.{name}")
        };
    }
    let line = line.or_else(|| locator.line_of(&field));
    if message.contains("cannot start any token") {
        message.push_str(" (YAML indents with spaces, never tabs)");
    }
    ConfigError {
        file: origin.to_string(),
        line,
        field,
        message,
    }
}
