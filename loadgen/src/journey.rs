//! `loadgen journey --scenario FILE`: multi-step user journeys on the goose
//! crate. The YAML file lists weighted transactions (method, path, headers,
//! body, think time) and the users, ramp-up and duration; goose runs the
//! users, checks its thresholds and writes its HTML report, and the figures
//! are also summarized in loadgen's JSON shape (`loadgen.result/1`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use goose::config::GooseConfiguration;
use goose::goose::{GooseMethod, Scenario, Transaction, TransactionFunction};
use goose::metrics::GooseMetrics;
use goose::prelude::{GooseAttack, GooseError, GooseRequest};
use serde::Deserialize;

use crate::report::{Meta, Summary};
use crate::stats::{new_hist, Counters};

/// The scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journey {
    /// Base URL, e.g. http://127.0.0.1:8080
    pub host: String,
    pub users: usize,
    /// Time to start all users (e.g. 5s); 0 or absent starts them at once.
    #[serde(default)]
    pub ramp_up: Option<String>,
    /// Run time after all users started, e.g. 30s or 2m30s.
    pub duration: String,
    /// Goose's HTML report.
    #[serde(default)]
    pub report: Option<String>,
    /// Goose threshold rules, checked at the end (exit 3 when one fails).
    #[serde(default)]
    pub thresholds: Vec<String>,
    pub transactions: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    #[serde(default = "one")]
    pub weight: usize,
    #[serde(default = "get")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
    /// Pause after the request, e.g. 500ms.
    #[serde(default)]
    pub think: Option<String>,
}

fn one() -> usize {
    1
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug)]
pub enum JourneyError {
    /// The file is missing or not valid YAML of this shape (usage error).
    Scenario(String),
    /// Goose refused the configuration or failed while running.
    Goose(String),
}

impl fmt::Display for JourneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JourneyError::Scenario(m) => write!(f, "scenario: {m}"),
            JourneyError::Goose(m) => write!(f, "goose: {m}"),
        }
    }
}

impl std::error::Error for JourneyError {}

/// What a journey run produced.
pub struct JourneyOutcome {
    pub summary: Summary,
    /// Goose's own rendering of its metrics (the tables it prints).
    pub goose_text: String,
    pub thresholds_failed: Vec<String>,
}

pub fn load(path: &Path) -> Result<Journey, JourneyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| JourneyError::Scenario(format!("cannot read {}: {e}", path.display())))?;
    let j: Journey = serde_yaml_ng::from_str(&text)
        .map_err(|e| JourneyError::Scenario(format!("{}: {e}", path.display())))?;
    if j.transactions.is_empty() || j.users == 0 {
        return Err(JourneyError::Scenario(format!(
            "{}: needs at least one transaction and one user",
            path.display()
        )));
    }
    for s in &j.transactions {
        method(&s.method)?;
        if let Some(t) = &s.think {
            humantime::parse_duration(t).map_err(|e| {
                JourneyError::Scenario(format!("transaction {:?}: think {t:?}: {e}", s.name))
            })?;
        }
        if s.weight == 0 {
            return Err(JourneyError::Scenario(format!(
                "transaction {:?}: weight must be at least 1",
                s.name
            )));
        }
    }
    Ok(j)
}

fn method(m: &str) -> Result<GooseMethod, JourneyError> {
    Ok(match m.to_ascii_uppercase().as_str() {
        "GET" => GooseMethod::Get,
        "POST" => GooseMethod::Post,
        "PUT" => GooseMethod::Put,
        "PATCH" => GooseMethod::Patch,
        "DELETE" => GooseMethod::Delete,
        "HEAD" => GooseMethod::Head,
        other => {
            return Err(JourneyError::Scenario(format!(
                "method {other:?}: use GET, POST, PUT, PATCH, DELETE or HEAD"
            )))
        }
    })
}

fn transaction(step: &Step) -> Result<Transaction, JourneyError> {
    let step = Arc::new(step.clone());
    let goose_method = method(&step.method)?;
    let think = step
        .think
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .map_err(|e| JourneyError::Scenario(e.to_string()))?;
    let s = step.clone();
    let f: TransactionFunction = Arc::new(move |user| {
        let step = s.clone();
        Box::pin(async move {
            let mut rb = user.get_request_builder(&goose_method, &step.path)?;
            for (k, v) in &step.headers {
                rb = rb.header(k.as_str(), v.as_str());
            }
            if let Some(b) = &step.body {
                rb = rb.body(b.clone());
            }
            let req = GooseRequest::builder()
                .method(goose_method)
                .path(step.path.as_str())
                .set_request_builder(rb)
                .build();
            user.request(req).await?;
            if let Some(t) = think {
                tokio::time::sleep(t).await;
            }
            Ok(())
        })
    });
    Transaction::new(f)
        .set_name(&step.name)
        .set_weight(step.weight)
        .map_err(|e| JourneyError::Scenario(format!("transaction {:?}: {e}", step.name)))
}

/// Runs the journey; `quiet` keeps goose's own tables off stdout.
pub fn run(j: &Journey, quiet: bool) -> Result<JourneyOutcome, JourneyError> {
    let mut scenario = Scenario::new("journey");
    for s in &j.transactions {
        scenario = scenario.register_transaction(transaction(s)?);
    }
    let mut c = GooseConfiguration::default();
    c.host = Some(j.host.clone());
    c.users = Some(j.users);
    match j.ramp_up.as_deref() {
        Some(r) if j.users >= 2 && humantime::parse_duration(r).is_ok_and(|d| !d.is_zero()) => {
            c.increase_time = Some(goose_time(r)?)
        }
        _ => c.increase_rate = Some(j.users.to_string()),
    }
    c.run_time = Some(goose_time(&j.duration)?);
    c.report_file = j.report.iter().cloned().collect();
    c.threshold = j.thresholds.clone();
    c.quiet = u8::from(quiet);
    c.no_print_metrics = true;
    c.no_telnet = true;
    // goose logs each failed request as a warning on stdout, which would
    // bury the summary (and break --json): errors go to stderr, and the
    // failures are counted in the metrics anyway. The first logger wins.
    let _ = simplelog::TermLogger::init(
        simplelog::LevelFilter::Error,
        simplelog::Config::default(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
    let attack = GooseAttack::initialize_with_config(c)
        .map_err(|e| JourneyError::Goose(format!("{e:?}")))?
        .register_scenario(scenario);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| JourneyError::Goose(format!("cannot start tokio: {e}")))?;
    let (metrics, failed) = match rt.block_on(attack.execute()) {
        Ok(m) => (m, Vec::new()),
        Err(GooseError::ThresholdsFailed { failed, metrics }) => (
            *metrics.0,
            failed.iter().map(|f| format!("{f:?}")).collect(),
        ),
        // A rule or option goose refuses is the scenario's fault (usage).
        Err(e @ GooseError::InvalidOption { .. }) => {
            return Err(JourneyError::Scenario(format!("{e:?}")))
        }
        // Debug names the option and why goose refused it; Display does not.
        Err(e) => return Err(JourneyError::Goose(format!("{e:?}"))),
    };
    let meta = Meta {
        url: j.host.clone(),
        mode: "journey".into(),
        // tokio's default: one worker thread per CPU.
        threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        shards: 1,
        conns: j.users as u64,
        rate: None,
        tls: None,
    };
    Ok(JourneyOutcome {
        summary: summarize(&metrics, &meta),
        goose_text: format!("{metrics}"),
        thresholds_failed: failed,
    })
}

/// goose wants whole seconds or h/m/s; accept anything humantime reads.
fn goose_time(t: &str) -> Result<String, JourneyError> {
    let d: Duration = humantime::parse_duration(t)
        .map_err(|e| JourneyError::Scenario(format!("time {t:?}: {e}")))?;
    Ok(format!("{}s", d.as_secs().max(1)))
}

/// goose's metrics in loadgen's JSON shape. Latencies come from goose's
/// time buckets (each within 0.8% of the times it holds); goose does not
/// split transport errors by kind, so they are all counted as `read`.
pub fn summarize(m: &GooseMetrics, meta: &Meta) -> Summary {
    let mut hist = new_hist();
    let mut c = Counters::default();
    for agg in m.requests.values() {
        for (&bucket, &count) in agg.raw_data.times_us.iter() {
            hist.saturating_record_n(bucket.max(1), count as u64);
        }
        for (&status, &count) in &agg.status_code_counts {
            let n = count as u64;
            match status {
                0 => c.errors.read += n,
                400..=499 => c.errors.status_4xx += n,
                500..=599 => c.errors.status_5xx += n,
                _ => {}
            }
            if status != 0 {
                c.requests += n;
            }
            c.sent += n;
        }
    }
    c.peak_open = m.maximum_users as u64;
    Summary::new(meta, &hist, &c, Duration::from_secs(m.duration as u64))
}
