//! A bench scenario file (scenarios/*.yaml): what to start (backends, proxies
//! under test), how to load them (steps, rounds) and where (a fresh network
//! namespace or not). Parsed strictly: an unknown key is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::BenchError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Interleaved repeats: round r runs every step on every target (A B C A B C ...).
    #[serde(default = "one")]
    pub rounds: u32,
    /// Run everything inside a fresh network namespace (loopback only, no conntrack).
    #[serde(default)]
    pub netns: bool,
    /// sysctls written inside the namespace (`net.core.somaxconn: 65535`); needs `netns: true`.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// Run `tuner check --profile P` first and print what is off (never fails the run).
    #[serde(default)]
    pub tuner_check: Option<String>,
    /// Pause between two steps so the previous step's sockets close.
    #[serde(default = "settle", with = "humantime_serde_compat")]
    pub settle: Duration,
    pub backends: Backends,
    pub targets: Vec<TargetSpec>,
    #[serde(default)]
    pub loadgen: LoadDefaults,
    pub steps: Vec<StepSpec>,
    /// Free text shown at the top of the report.
    #[serde(default)]
    pub note: Option<String>,
}

impl Scenario {
    /// Whether some step runs in plaintext (`tls: false`) / over TLS: which
    /// listeners the speedmimi targets need.
    pub fn schemes(&self) -> (bool, bool) {
        (
            self.steps.iter().any(|s| !s.tls),
            self.steps.iter().any(|s| s.tls),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Loadgen,
    Nginx,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backends {
    #[serde(default = "loadgen_kind")]
    pub kind: BackendKind,
    #[serde(default = "one")]
    pub count: u32,
    /// `loadgen backend --workers`.
    #[serde(default = "one")]
    pub workers: u32,
    #[serde(default = "body_size")]
    pub body_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Speedmimi,
    Nginx,
    Haproxy,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Speedmimi => "speedmimi",
            TargetKind::Nginx => "nginx",
            TargetKind::Haproxy => "haproxy",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Unique in the scenario; used in legends.
    pub name: String,
    pub kind: TargetKind,
    /// speedmimi: YAML merged over the generated config (listen, admin, upstream, route).
    #[serde(default)]
    pub config: Option<serde_yaml_ng::Value>,
    /// nginx / haproxy: config template with __DIR__, __PORT__, __BACKEND_PORT__
    /// (relative to the scenario file; default ../ci/peers/nginx-proxy.conf or haproxy.cfg).
    #[serde(default)]
    pub template: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepMode {
    Closed,
    Open,
    Hold,
}

/// Options every step inherits unless it says otherwise.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadDefaults {
    #[serde(default)]
    pub threads: Option<u32>,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub connect_rate: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub connections: u64,
    #[serde(default = "closed")]
    pub mode: StepMode,
    #[serde(with = "humantime_serde_compat")]
    pub duration: Duration,
    /// Open loop: requests/s over all connections.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Hold: time between two requests on one connection.
    #[serde(default, with = "humantime_serde_compat::option")]
    pub interval: Option<Duration>,
    #[serde(default)]
    pub connect_rate: Option<f64>,
    #[serde(default)]
    pub threads: Option<u32>,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub timeout: Option<Duration>,
    /// loadgen `--threshold` rules, e.g. `errors=0`; a failure makes the bench exit 3.
    #[serde(default)]
    pub thresholds: Vec<String>,
    /// Every connection must have been open at once and have completed a request.
    #[serde(default)]
    pub require_all_served: bool,
    /// HTTPS: the step runs against the target's TLS listener (a certificate the
    /// bench makes), `loadgen run https://... --cacert CA`. speedmimi targets only.
    #[serde(default)]
    pub tls: bool,
    /// `loadgen --tls-resume`: offer sessions for resumption; needs `tls: true`.
    #[serde(default)]
    pub tls_resume: bool,
    /// `loadgen --tls-kx`: key exchange groups offered (e.g. `[x25519]`; default
    /// rustls', which adds the costlier X25519MLKEM768 share); needs `tls: true`.
    #[serde(default)]
    pub tls_kx: Vec<String>,
    /// `loadgen --new-conn-per-request`: a connection (and, with `tls`, a
    /// handshake) per request, to measure handshakes/s.
    #[serde(default)]
    pub new_conn_per_request: bool,
}

fn one() -> u32 {
    1
}
fn settle() -> Duration {
    Duration::from_secs(2)
}
fn body_size() -> u32 {
    12
}
fn loadgen_kind() -> BackendKind {
    BackendKind::Loadgen
}
fn closed() -> StepMode {
    StepMode::Closed
}

/// Durations as humantime strings (`10s`, `2m`).
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(s) => humantime::parse_duration(&s)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
            }
        }
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, BenchError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BenchError::Scenario(format!("cannot read {}: {e}", path.display())))?;
        let s: Scenario = serde_yaml_ng::from_str(&text)
            .map_err(|e| BenchError::Scenario(format!("{}: {e}", path.display())))?;
        s.validate()
            .map_err(|e| BenchError::Scenario(format!("{}: {e}", path.display())))?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), String> {
        if self.targets.is_empty() || self.steps.is_empty() {
            return Err("needs at least one target and one step".into());
        }
        let mut names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err("target names must be unique".into());
        }
        if self.backends.count == 0 {
            return Err("backends.count must be at least 1".into());
        }
        if !self.sysctls.is_empty() && !self.netns {
            return Err(
                "sysctls are only written inside a fresh namespace: set netns: true".into(),
            );
        }
        let tls_step = self.steps.iter().position(|s| s.tls);
        for (ti, t) in self.targets.iter().enumerate() {
            if let (Some(i), true) = (tls_step, t.kind != TargetKind::Speedmimi) {
                return Err(format!(
                    "steps[{i}].tls: target {} (kind {}) has no TLS listener the bench can \
                     configure; only kind speedmimi targets serve HTTPS steps",
                    t.name,
                    t.kind.as_str()
                ));
            }
            let certificates = t
                .config
                .as_ref()
                .and_then(|c| c.get("server"))
                .and_then(|s| s.get("tls"))
                .and_then(|s| s.get("certificates"));
            if certificates.is_some() {
                return Err(format!(
                    "targets[{ti}].config.server.tls.certificates: the bench makes the \
                     certificate for steps with tls: true; remove it (other server.tls \
                     keys, e.g. handshake_timeout, apply to the TLS instance)"
                ));
            }
            if t.kind != TargetKind::Speedmimi && self.backends.count != 1 {
                return Err(format!(
                    "target {}: nginx/haproxy templates take one backend; set backends.count: 1",
                    t.name
                ));
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            if s.connections == 0 {
                return Err(format!("steps[{i}].connections must be at least 1"));
            }
            if s.tls_resume && !s.tls {
                return Err(format!(
                    "steps[{i}].tls_resume: needs tls: true on the same step"
                ));
            }
            if !s.tls_kx.is_empty() && !s.tls {
                return Err(format!(
                    "steps[{i}].tls_kx: needs tls: true on the same step"
                ));
            }
            if s.new_conn_per_request && s.mode == StepMode::Hold {
                return Err(format!(
                    "steps[{i}].new_conn_per_request: hold mode keeps its connections; \
                     use closed or open"
                ));
            }
            match s.mode {
                StepMode::Open if s.rate.is_none() => {
                    return Err(format!("steps[{i}]: mode open needs rate (requests/s)"))
                }
                StepMode::Hold if s.interval.is_none() => {
                    return Err(format!("steps[{i}]: mode hold needs interval (e.g. 10s)"))
                }
                StepMode::Closed | StepMode::Hold if s.rate.is_some() => {
                    return Err(format!(
                        "steps[{i}]: rate is for open mode; use connect_rate to pace connects"
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}
