//! Validation: `RawConfig` (what was written) into `Config` (what runs),
//! resolving defaults and refusing anything the data plane would trip on
//! later. Each error names the field by its dotted path and, when the YAML
//! source is at hand, its line.

use super::locate::Locator;
use super::raw::{
    AutoOrCount, ExpectStatus, RawAdmin, RawBackendTls, RawConfig, RawHealthCheck, RawTls, Size,
    Workers,
};
use super::units::{parse_duration, parse_size};
use super::{
    AdminConfig, Algorithm, BackendConfig, Config, ConfigError, HealthCheckConfig, RouteConfig,
    RouteMatch, ServerConfig, UpstreamConfig,
};
use crate::tls::upstream::BackendTls;
use crate::tls::{SniCerts, TlsConfig, Versions};
use indexmap::IndexMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub const DEFAULT_WORKERS: Workers = Workers::Auto;
pub const DEFAULT_PROCESSES: u32 = 1;
pub const DEFAULT_MAX_CONN: u64 = 10_000;
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake not done by then is closed (a TLS slowloris).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 16 * 1024;
/// 512 B/s (4 kbit/s) is below any link still in use; a slowloris moving a
/// byte a second is cut off after about `min_rate_grace`.
pub const DEFAULT_MIN_RATE: u64 = 512;
/// As long as the default `read_timeout`: a stall that timeout allows is
/// never cut short by the rate rule.
pub const DEFAULT_MIN_RATE_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9091);
pub const DEFAULT_WEIGHT: u32 = 1;
/// The pool follows demand (see `UpstreamConfig::keepalive`): a fixed cap
/// churns, at 5,000 clients 64 idle connections per loop meant a connect
/// and a close per request.
pub const DEFAULT_KEEPALIVE: AutoOrCount = AutoOrCount::Auto;
/// The connection limit adapts (`upstream::conn_limit`): unlimited, 5,000
/// clients meant ~5,000 hot backend sockets and ×1.18 the CPU per request
/// of a tuned `max_conns: 128`.
pub const DEFAULT_MAX_CONNS: AutoOrCount = AutoOrCount::Auto;
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Several failures, not one: a single failed request (a client that
/// breaks the backend, one reset) must not take a backend out.
pub const DEFAULT_MAX_FAILS: u32 = 3;
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_BALANCER: Algorithm = Algorithm::RoundRobin;
pub const DEFAULT_CHECK_PATH: &str = "/healthz";
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_CHECK_RISE: u32 = 2;
pub const DEFAULT_CHECK_FALL: u32 = 3;
pub const DEFAULT_CHECK_EXPECT: (u16, u16) = (200, 399);

/// Bounds that catch typos (an extra zero) rather than limit real use.
const MAX_WORKERS: u64 = 1024;
const MAX_PROCESSES: u32 = 256;
const MAX_WEIGHT: u32 = 10_000;
const MAX_RETRIES: u32 = 100;
/// More connections to one backend than an event loop has descriptors for.
const MAX_CONNS_PER_BACKEND: u32 = 1_000_000;
const MIN_HEADER_SIZE: u64 = 1024;
/// Probes closer together than this would load the backends, not watch them.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);
const MAX_RISE_FALL: u32 = 100;
const MAX_HEADER_SIZE: u64 = 1024 * 1024;
/// A minimum rate above this would cut off healthy clients on fast links.
const MAX_MIN_RATE: u64 = 1024 * 1024 * 1024;
const MAX_MIN_RATE_GRACE: Duration = Duration::from_secs(3600);

/// Validates `raw` into a `Config`. `origin` names the source in errors
/// (a file name, or e.g. "PUT /api/v1/config"); `source_text`, when given,
/// is the YAML `raw` came from, used to put line numbers on errors.
pub fn validate(
    raw: RawConfig,
    origin: &str,
    source_text: Option<&str>,
) -> Result<Config, ConfigError> {
    let v = Validator {
        origin,
        locator: source_text.map(|t| Locator::new(t).0),
    };
    v.config(raw)
}

struct Validator<'a> {
    origin: &'a str,
    locator: Option<Locator>,
}

impl Validator<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let field = field.into();
        ConfigError {
            file: self.origin.to_string(),
            line: self.locator.as_ref().and_then(|l| l.line_of(&field)),
            field,
            message: message.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(&raw)?;
        let admin = self.admin(&raw, server.listen)?;
        if raw.upstreams.is_empty() {
            return Err(self.err(
                "upstreams",
                "no upstream defined; add one with at least one backend",
            ));
        }
        let mut upstreams = IndexMap::new();
        for (name, u) in &raw.upstreams {
            let field = format!("upstreams.{name}");
            self.name(&field, name)?;
            upstreams.insert(name.clone(), self.upstream(&field, u, &server)?);
        }
        let routing = self.routing(&raw, &upstreams)?;
        Ok(Config {
            server,
            admin,
            upstreams,
            routing,
        })
    }

    fn server(&self, raw: &RawConfig) -> Result<ServerConfig, ConfigError> {
        let s = &raw.server;
        let listen = self.addr("server.listen", &s.listen)?;
        let workers = match s.workers.unwrap_or(DEFAULT_WORKERS) {
            Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Workers::Count(n) if (1..=MAX_WORKERS).contains(&n) => n as usize,
            Workers::Count(n) => {
                return Err(self.err(
                    "server.workers",
                    format!("{n} workers; write auto or a number from 1 to {MAX_WORKERS}"),
                ))
            }
        };
        let processes = s.processes.unwrap_or(DEFAULT_PROCESSES);
        if !(1..=MAX_PROCESSES).contains(&processes) {
            return Err(self.err(
                "server.processes",
                format!("{processes} processes; write a number from 1 to {MAX_PROCESSES}"),
            ));
        }
        let max_conn = s.max_conn.unwrap_or(DEFAULT_MAX_CONN);
        if max_conn == 0 {
            return Err(self.err(
                "server.max_conn",
                "max_conn 0 would refuse every connection; write a number ≥ 1",
            ));
        }
        let max_header_size = match &s.max_header_size {
            None => DEFAULT_MAX_HEADER_SIZE,
            Some(Size::Bytes(n)) => *n,
            Some(Size::Text(t)) => {
                parse_size(t).map_err(|m| self.err("server.max_header_size", m))?
            }
        };
        if !(MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&max_header_size) {
            return Err(self.err(
                "server.max_header_size",
                format!("{max_header_size} bytes; write a size from 1KiB to 1MiB"),
            ));
        }
        let min_rate = match &s.min_rate {
            None => DEFAULT_MIN_RATE,
            Some(Size::Bytes(n)) => *n,
            Some(Size::Text(t)) => parse_size(t).map_err(|m| self.err("server.min_rate", m))?,
        };
        if min_rate > MAX_MIN_RATE {
            return Err(self.err(
                "server.min_rate",
                format!("{min_rate} bytes per second; write at most 1GiB, or 0 to turn it off"),
            ));
        }
        let min_rate_grace = self.duration(
            "server.min_rate_grace",
            &s.min_rate_grace,
            DEFAULT_MIN_RATE_GRACE,
        )?;
        if min_rate_grace > MAX_MIN_RATE_GRACE {
            return Err(self.err(
                "server.min_rate_grace",
                "longer than 1h; write e.g. 30s (read_timeout still bounds each stall)",
            ));
        }
        Ok(ServerConfig {
            listen,
            workers,
            processes: processes as usize,
            max_conn: max_conn as usize,
            read_timeout: self.duration(
                "server.read_timeout",
                &s.read_timeout,
                DEFAULT_READ_TIMEOUT,
            )?,
            write_timeout: self.duration(
                "server.write_timeout",
                &s.write_timeout,
                DEFAULT_WRITE_TIMEOUT,
            )?,
            idle_timeout: self.duration(
                "server.idle_timeout",
                &s.idle_timeout,
                DEFAULT_IDLE_TIMEOUT,
            )?,
            header_timeout: self.duration(
                "server.header_timeout",
                &s.header_timeout,
                DEFAULT_HEADER_TIMEOUT,
            )?,
            graceful_timeout: self.duration_allow_zero(
                "server.graceful_timeout",
                &s.graceful_timeout,
                DEFAULT_GRACEFUL_TIMEOUT,
            )?,
            max_header_size: max_header_size as usize,
            min_rate,
            min_rate_grace,
            access_log: match &s.access_log {
                Some(p) if p.trim().is_empty() => {
                    return Err(self.err(
                        "server.access_log",
                        "empty path; write a file path or \"stderr\", or leave it out",
                    ))
                }
                other => other.clone(),
            },
            tls: match &s.tls {
                Some(t) => Some(self.tls(t)?),
                None => None,
            },
        })
    }

    /// `server.tls`: reads and checks every certificate and key now, so a
    /// bad file is refused (field and file named) before anything changes.
    fn tls(&self, t: &RawTls) -> Result<TlsConfig, ConfigError> {
        if t.certificates.is_empty() {
            return Err(self.err(
                "server.tls.certificates",
                "no certificate; add one: - { cert: FILE.pem, key: FILE.key }",
            ));
        }
        let mut certs = SniCerts::new();
        for (i, c) in t.certificates.iter().enumerate() {
            let field = format!("server.tls.certificates[{i}]");
            for (which, path) in [("cert", &c.cert), ("key", &c.key)] {
                if path.trim().is_empty() {
                    return Err(self.err(
                        format!("{field}.{which}"),
                        "empty path; write a PEM file's path",
                    ));
                }
            }
            certs
                .add_files(&c.cert, &c.key)
                .map_err(|e| self.err(format!("{field}.{}", e.which), e.message))?;
        }
        let handshake_timeout = self.duration(
            "server.tls.handshake_timeout",
            &t.handshake_timeout,
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        let versions = match t.versions.as_deref() {
            None => Versions::Both,
            Some(list) => {
                let mut v12 = false;
                let mut v13 = false;
                for v in list {
                    match v.as_str() {
                        "1.2" => v12 = true,
                        "1.3" => v13 = true,
                        other => {
                            return Err(self.err(
                                "server.tls.versions",
                                format!(
                                    "unknown version {other:?}; write \"1.2\", \"1.3\" or both"
                                ),
                            ))
                        }
                    }
                }
                match (v12, v13) {
                    (true, true) => Versions::Both,
                    (true, false) => Versions::Only12,
                    (false, true) => Versions::Only13,
                    (false, false) => {
                        return Err(self.err(
                            "server.tls.versions",
                            "empty list; write [\"1.2\", \"1.3\"] or leave it out",
                        ))
                    }
                }
            }
        };
        Ok(TlsConfig::build(
            certs,
            handshake_timeout,
            versions,
            t.session_tickets.unwrap_or(true),
        ))
    }

    /// The token in `admin.token_file`: its text without the line end (a
    /// Kubernetes Secret or `echo` leaves one), never empty.
    fn token_from_file(&self, path: &str) -> Result<String, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            self.err(
                "admin.token_file",
                format!("cannot read the token file {path}: {e}"),
            )
        })?;
        let token = text.trim_end_matches(['\r', '\n']);
        if token.trim().is_empty() {
            return Err(self.err(
                "admin.token_file",
                format!("the token file {path} is empty; write a secret string into it"),
            ));
        }
        Ok(token.to_string())
    }

    fn admin(&self, raw: &RawConfig, proxy: SocketAddr) -> Result<AdminConfig, ConfigError> {
        let default = RawAdmin::default();
        let a = raw.admin.as_ref().unwrap_or(&default);
        let listen = match &a.listen {
            None => DEFAULT_ADMIN_LISTEN,
            Some(text) => self.addr("admin.listen", text)?,
        };
        if listen.port() != 0 && overlaps(listen, proxy) {
            let field = if a.listen.is_some() {
                "admin.listen"
            } else {
                "server.listen"
            };
            return Err(self.err(
                field,
                format!(
                    "the admin API ({listen}) and the proxy ({proxy}) would listen on the same \
                     address; give admin.listen another port"
                ),
            ));
        }
        if let Some(token) = &a.token {
            if token.trim().is_empty() {
                return Err(self.err(
                    "admin.token",
                    "empty token; remove the field or set a secret string",
                ));
            }
        }
        let token = match (&a.token, &a.token_file) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "admin.token_file",
                    "set admin.token or admin.token_file, not both",
                ))
            }
            (_, Some(path)) => Some(self.token_from_file(path)?),
            (token, None) => token.clone(),
        };
        if !listen.ip().is_loopback() && token.is_none() {
            return Err(self.err(
                "admin.listen",
                format!(
                    "{listen} is reachable from other hosts and the admin API can change the \
                     configuration; set admin.token or listen on 127.0.0.1"
                ),
            ));
        }
        Ok(AdminConfig {
            listen,
            token,
            token_file: a.token_file.clone(),
        })
    }

    /// `backends[i].tls`: the CA file is read now, so a bad one is refused
    /// with the configuration (and a reload keeps the running one).
    fn backend_tls(
        &self,
        field: &str,
        t: &RawBackendTls,
        addr: SocketAddr,
    ) -> Result<BackendTls, ConfigError> {
        let sni = t.sni.clone().unwrap_or_else(|| addr.ip().to_string());
        let insecure = t.insecure.unwrap_or(false);
        if insecure && t.ca.is_some() {
            return Err(self.err(
                format!("{field}.insecure"),
                "insecure: true accepts any certificate, so ca would be ignored; keep one",
            ));
        }
        let ca = t.ca.as_ref().map(std::path::PathBuf::from);
        BackendTls::build(sni, ca, insecure)
            .map_err(|e| self.err(format!("{field}.{}", e.field), e.message))
    }

    fn upstream(
        &self,
        field: &str,
        u: &super::raw::RawUpstream,
        server: &ServerConfig,
    ) -> Result<UpstreamConfig, ConfigError> {
        if u.backends.is_empty() {
            return Err(self.err(
                format!("{field}.backends"),
                "no backend; list at least one { addr: \"IP:PORT\" }",
            ));
        }
        let mut backends: Vec<BackendConfig> = Vec::with_capacity(u.backends.len());
        for (i, b) in u.backends.iter().enumerate() {
            let bfield = format!("{field}.backends[{i}]");
            let addr = self.addr(&format!("{bfield}.addr"), &b.addr)?;
            if addr.port() != 0 && overlaps(addr, server.listen) && addr.ip().is_loopback()
                || addr == server.listen
            {
                return Err(self.err(
                    format!("{bfield}.addr"),
                    format!(
                        "backend {addr} is the proxy itself (server.listen is {}); requests \
                         would loop back into the proxy",
                        server.listen
                    ),
                ));
            }
            if let Some(first) = backends.iter().position(|x| x.addr == addr) {
                return Err(self.err(
                    format!("{bfield}.addr"),
                    format!(
                        "duplicate backend {addr} (also {field}.backends[{first}]); \
                         list it once and raise its weight instead"
                    ),
                ));
            }
            let weight = b.weight.unwrap_or(DEFAULT_WEIGHT);
            if weight == 0 {
                return Err(self.err(
                    format!("{bfield}.weight"),
                    "weight 0 would never receive traffic; remove the backend or use weight ≥ 1",
                ));
            }
            if weight > MAX_WEIGHT {
                return Err(self.err(
                    format!("{bfield}.weight"),
                    format!("weight {weight} is above {MAX_WEIGHT}; weights are relative, scale them down"),
                ));
            }
            let tls = match &b.tls {
                Some(t) => Some(self.backend_tls(&format!("{bfield}.tls"), t, addr)?),
                None => None,
            };
            backends.push(BackendConfig { addr, weight, tls });
        }
        let retries = u.retries.unwrap_or(DEFAULT_RETRIES);
        if retries > MAX_RETRIES {
            return Err(self.err(
                format!("{field}.retries"),
                format!("{retries} retries; write a number from 0 to {MAX_RETRIES}"),
            ));
        }
        let (max_conns, adaptive_conns) = match u.max_conns.unwrap_or(DEFAULT_MAX_CONNS) {
            AutoOrCount::Auto => (0, true),
            AutoOrCount::Count(n) if n <= u64::from(MAX_CONNS_PER_BACKEND) => (n as u32, false),
            AutoOrCount::Count(n) => {
                return Err(self.err(
                    format!("{field}.max_conns"),
                    format!(
                        "{n} connections per backend per event loop; write auto (adapt), \
                         0 (no limit) or a number up to {MAX_CONNS_PER_BACKEND}"
                    ),
                ))
            }
        };
        let connect_timeout = self.duration(
            &format!("{field}.connect_timeout"),
            &u.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let keepalive = match u.keepalive.unwrap_or(DEFAULT_KEEPALIVE) {
            AutoOrCount::Auto => None,
            AutoOrCount::Count(n) if n <= u64::from(MAX_CONNS_PER_BACKEND) => Some(n as usize),
            AutoOrCount::Count(n) => {
                return Err(self.err(
                    format!("{field}.keepalive"),
                    format!(
                        "{n} idle connections per backend per event loop; write auto \
                         (follow demand) or a number up to {MAX_CONNS_PER_BACKEND}"
                    ),
                ))
            }
        };
        Ok(UpstreamConfig {
            backends,
            keepalive,
            keepalive_timeout: self.duration(
                &format!("{field}.keepalive_timeout"),
                &u.keepalive_timeout,
                DEFAULT_KEEPALIVE_TIMEOUT,
            )?,
            connect_timeout,
            read_timeout: self.duration(
                &format!("{field}.read_timeout"),
                &u.read_timeout,
                server.read_timeout,
            )?,
            write_timeout: self.duration(
                &format!("{field}.write_timeout"),
                &u.write_timeout,
                server.write_timeout,
            )?,
            max_fails: u.max_fails.unwrap_or(DEFAULT_MAX_FAILS),
            fail_timeout: self.duration(
                &format!("{field}.fail_timeout"),
                &u.fail_timeout,
                DEFAULT_FAIL_TIMEOUT,
            )?,
            retries,
            max_conns: max_conns as usize,
            adaptive_conns,
            // As HAProxy's `timeout queue`: the connect timeout unless set.
            queue_timeout: self.duration(
                &format!("{field}.queue_timeout"),
                &u.queue_timeout,
                connect_timeout,
            )?,
            health_check: match &u.health_check {
                None => None,
                Some(h) => Some(self.health_check(&format!("{field}.health_check"), h)?),
            },
        })
    }

    fn health_check(
        &self,
        field: &str,
        h: &RawHealthCheck,
    ) -> Result<HealthCheckConfig, ConfigError> {
        let path = h.path.as_deref().unwrap_or(DEFAULT_CHECK_PATH);
        self.url_path(
            &format!("{field}.path"),
            "path",
            path,
            (", e.g. /healthz", "; percent-encode them"),
        )?;
        let interval = self.duration(
            &format!("{field}.interval"),
            &h.interval,
            DEFAULT_CHECK_INTERVAL,
        )?;
        if interval < MIN_CHECK_INTERVAL {
            return Err(self.err(
                format!("{field}.interval"),
                format!(
                    "interval {} would flood the backends with probes; write at least {}",
                    super::format_duration(interval),
                    super::format_duration(MIN_CHECK_INTERVAL)
                ),
            ));
        }
        let timeout = self.duration(
            &format!("{field}.timeout"),
            &h.timeout,
            DEFAULT_CHECK_TIMEOUT,
        )?;
        let count = |name: &str, value: Option<u32>, default: u32| {
            let n = value.unwrap_or(default);
            if (1..=MAX_RISE_FALL).contains(&n) {
                Ok(n)
            } else {
                Err(self.err(
                    format!("{field}.{name}"),
                    format!(
                        "{name} {n}; write a number of probes in a row from 1 to {MAX_RISE_FALL}"
                    ),
                ))
            }
        };
        let rise = count("rise", h.rise, DEFAULT_CHECK_RISE)?;
        let fall = count("fall", h.fall, DEFAULT_CHECK_FALL)?;
        let expect_status = match &h.expect_status {
            None => DEFAULT_CHECK_EXPECT,
            Some(e) => self.expect_status(&format!("{field}.expect_status"), e)?,
        };
        let host = match &h.host {
            None => None,
            Some(text) => {
                let ok = !text.is_empty()
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
                if !ok {
                    return Err(self.err(
                        format!("{field}.host"),
                        format!(
                            "invalid Host {text:?}; write a name or address such as \
                             app.example.com or 127.0.0.1:9000, or leave it out to send the \
                             backend's address"
                        ),
                    ));
                }
                Some(text.clone())
            }
        };
        Ok(HealthCheckConfig {
            path: path.to_string(),
            interval,
            timeout,
            rise,
            fall,
            expect_status,
            host,
        })
    }

    /// `200` or `"200-399"`: codes from 100 to 599, low end first.
    fn expect_status(&self, field: &str, e: &ExpectStatus) -> Result<(u16, u16), ConfigError> {
        let bad = || {
            self.err(
                field,
                format!(
                    "invalid expect_status {}; write a status code such as 200 or a range \
                     such as \"200-399\" (codes 100 to 599)",
                    match e {
                        ExpectStatus::Code(n) => n.to_string(),
                        ExpectStatus::Text(t) => format!("{t:?}"),
                    }
                ),
            )
        };
        let code = |n: u64| u16::try_from(n).ok().filter(|c| (100..=599).contains(c));
        let parse = |t: &str| t.trim().parse::<u64>().ok().and_then(code);
        let (lo, hi) = match e {
            ExpectStatus::Code(n) => {
                let c = code(*n).ok_or_else(bad)?;
                (c, c)
            }
            ExpectStatus::Text(t) => match t.split_once('-') {
                Some((lo, hi)) => (parse(lo).ok_or_else(bad)?, parse(hi).ok_or_else(bad)?),
                None => {
                    let c = parse(t).ok_or_else(bad)?;
                    (c, c)
                }
            },
        };
        if lo > hi {
            return Err(bad());
        }
        Ok((lo, hi))
    }

    fn routing(
        &self,
        raw: &RawConfig,
        upstreams: &IndexMap<String, UpstreamConfig>,
    ) -> Result<IndexMap<String, RouteConfig>, ConfigError> {
        if raw.routing.is_empty() {
            return Err(self.err(
                "routing",
                "no route; add routing.default: { upstream: NAME } to send every request somewhere",
            ));
        }
        let mut routing: IndexMap<String, RouteConfig> = IndexMap::new();
        for (name, r) in &raw.routing {
            let field = format!("routing.{name}");
            self.name(&field, name)?;
            if !upstreams.contains_key(&r.upstream) {
                let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                return Err(self.err(
                    format!("{field}.upstream"),
                    format!(
                        "unknown upstream \"{}\"; defined upstreams: {}",
                        r.upstream,
                        known.join(", ")
                    ),
                ));
            }
            let load_balancer = match &r.load_balancer {
                None => DEFAULT_BALANCER,
                Some(text) => Algorithm::from_name(text).ok_or_else(|| {
                    let names: Vec<&str> = Algorithm::ALL.iter().map(|(_, n)| *n).collect();
                    self.err(
                        format!("{field}.load_balancer"),
                        format!(
                            "unknown balancer \"{text}\"; expected one of {}",
                            names.join(", ")
                        ),
                    )
                })?,
            };
            let matcher = self.matcher(&field, name, r.matcher.as_ref())?;
            if let Some((other, _)) = routing.iter().find(|(_, o)| {
                o.matcher.host == matcher.host && o.matcher.path_prefix == matcher.path_prefix
            }) {
                return Err(self.err(
                    format!("{field}.match"),
                    format!(
                        "same match as route \"{other}\", which would always win; \
                         change the host or path_prefix, or merge the routes"
                    ),
                ));
            }
            routing.insert(
                name.clone(),
                RouteConfig {
                    upstream: r.upstream.clone(),
                    load_balancer,
                    matcher,
                },
            );
        }
        Ok(routing)
    }

    fn matcher(
        &self,
        field: &str,
        name: &str,
        m: Option<&super::raw::RawMatch>,
    ) -> Result<RouteMatch, ConfigError> {
        let is_default = name == "default";
        let m = match m {
            Some(m) if m.host.is_some() || m.path_prefix.is_some() => m,
            _ if is_default => return Ok(RouteMatch::default()),
            _ => {
                return Err(self.err(
                    format!("{field}.match"),
                    "route has no match; only the route named default catches every request: \
                     add match.host or match.path_prefix, or rename it to default",
                ))
            }
        };
        if is_default {
            return Err(self.err(
                format!("{field}.match"),
                "the default route catches every request and takes no match; \
                 give the matching route another name",
            ));
        }
        let host = match &m.host {
            None => None,
            Some(h) => Some(self.host(&format!("{field}.match.host"), h)?),
        };
        if let Some(p) = &m.path_prefix {
            self.url_path(
                &format!("{field}.match.path_prefix"),
                "path_prefix",
                p,
                ("", ""),
            )?;
        }
        Ok(RouteMatch {
            host,
            path_prefix: m.path_prefix.clone(),
        })
    }

    /// A URL path (`name` at `field`): starts with `/`, no whitespace or
    /// control bytes. `hints`: what each message adds after its reason.
    fn url_path(
        &self,
        field: &str,
        name: &str,
        path: &str,
        hints: (&str, &str),
    ) -> Result<(), ConfigError> {
        if !path.starts_with('/') {
            return Err(self.err(
                field,
                format!("{name} \"{path}\" must start with /{}", hints.0),
            ));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(self.err(
                field,
                format!(
                    "{name} {path:?} contains whitespace or control characters{}",
                    hints.1
                ),
            ));
        }
        Ok(())
    }

    /// A host name as matched: lower case, no port, optionally `*.suffix`.
    fn host(&self, field: &str, text: &str) -> Result<String, ConfigError> {
        let h = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let bad = |why: &str| self.err(field, format!("invalid host \"{text}\": {why}"));
        if h.is_empty() {
            return Err(bad("empty; remove match.host to match any host"));
        }
        if h.starts_with('[') {
            // An IPv6 literal, as it appears in a Host header.
            return match h
                .strip_suffix(']')
                .map(|inner| inner[1..].parse::<std::net::Ipv6Addr>())
            {
                Some(Ok(_)) => Ok(h),
                _ => Err(bad("write an IPv6 address as [::1], without a port")),
            };
        }
        let name = h.strip_prefix("*.").unwrap_or(&h);
        if name.contains(':') {
            return Err(bad(
                "the host is matched without its port; remove the :PORT",
            ));
        }
        if name.contains('*') {
            return Err(bad(
                "only a leading *. wildcard is supported, e.g. *.example.com",
            ));
        }
        if name.is_empty()
            || name.split('.').any(|label| label.is_empty())
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(bad("expected a name like example.com or *.example.com"));
        }
        Ok(h)
    }

    /// Upstream and route names appear in dotted field paths and metrics:
    /// keep them to letters, digits, `_` and `-`.
    fn name(&self, field: &str, name: &str) -> Result<(), ConfigError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(self.err(
                field,
                format!("invalid name \"{name}\"; use letters, digits, _ and -"),
            ));
        }
        Ok(())
    }

    /// `IP:PORT`; `localhost` is taken as 127.0.0.1 and nothing else is
    /// resolved, so validation never waits on DNS.
    fn addr(&self, field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        let t = text.trim();
        if let Ok(a) = t.parse::<SocketAddr>() {
            return Ok(a);
        }
        if let Some(port) = t.strip_prefix("localhost:") {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
            }
        }
        Err(self.err(
            field,
            format!(
                "invalid address \"{text}\"; write IP:PORT such as 127.0.0.1:9000 or [::1]:9000 \
                 (host names other than localhost are not resolved)"
            ),
        ))
    }

    fn duration(
        &self,
        field: &str,
        text: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration_allow_zero(field, text, default)?;
        if d.is_zero() {
            return Err(self.err(field, "a zero timeout would fire at once; write e.g. 30s"));
        }
        Ok(d)
    }

    fn duration_allow_zero(
        &self,
        field: &str,
        text: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match text {
            None => Ok(default),
            Some(t) => parse_duration(t).map_err(|m| self.err(field, m)),
        }
    }
}

/// Whether two socket addresses would collide: same port, and the same IP
/// or one of them listening on every address (0.0.0.0 / ::).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
