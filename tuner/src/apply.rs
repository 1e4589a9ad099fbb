//! `apply` and `rollback`. Apply evaluates the profile, saves every original it
//! is about to change to the state file (atomically, before the first write),
//! then writes key by key in dependency order, classifying each failure and
//! going on (or stopping with --strict). Rollback writes the originals back in
//! reverse order and removes the state once everything is restored.

use crate::failure::{self, Class, Failure};
use crate::governor;
use crate::host;
use crate::plan::{self, Env, Row, Status};
use crate::profile::{sysctl_path, Key, Profile, Resource, Target};
use crate::rlimit::{self, Limits};
use crate::state::{self, Original, State, StateError};
use crate::sysctl;
use crate::value::{format_number, parse_number};
use nix::errno::Errno;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Test hook: abort the process after this many writes, to simulate a crash half-way.
pub const CRASH_ENV: &str = "TUNER_CRASH_AFTER_WRITES";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Already as wanted.
    Unchanged,
    Changed,
    /// --dry-run / diff.
    WouldChange,
    /// Cannot apply here (absent key, no cpufreq); not a failure.
    Skipped,
    Failed,
    /// Moved part of the way (soft limit raised only up to the hard limit).
    Partial,
    /// --strict stopped before this key.
    NotReached,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Unchanged => "ok",
            Outcome::Changed => "changed",
            Outcome::WouldChange => "would change",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "FAILED",
            Outcome::Partial => "partial",
            Outcome::NotReached => "not reached",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub key: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub outcome: Outcome,
    pub reason: String,
    pub failure: Option<Failure>,
    /// The class of a failure, or why a skipped key cannot apply here.
    pub class: Option<Class>,
    /// Why skipped, or what else to know.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub profile: String,
    pub dry_run: bool,
    pub state_file: Option<PathBuf>,
    pub keys: Vec<Applied>,
    /// The key --strict stopped at.
    pub stopped_at: Option<String>,
    /// How to undo what was changed.
    pub undo: Option<String>,
}

impl ApplyReport {
    pub fn exit_code(&self) -> i32 {
        i32::from(
            self.keys
                .iter()
                .any(|k| matches!(k.outcome, Outcome::Failed | Outcome::Partial)),
        )
    }
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub dry_run: bool,
    pub strict: bool,
    pub state_dir: PathBuf,
    /// The command line that undoes it, for the report.
    pub rollback_hint: String,
}

/// Counts writes so a test can make apply die after K of them.
struct Writes {
    done: u64,
    crash_after: Option<u64>,
}

impl Writes {
    fn new() -> Writes {
        Writes {
            done: 0,
            crash_after: std::env::var(CRASH_ENV).ok().and_then(|v| v.parse().ok()),
        }
    }

    fn count(&mut self) {
        self.done += 1;
        if self.crash_after == Some(self.done) {
            eprintln!(
                "tuner: {CRASH_ENV}={} reached: aborting on purpose",
                self.done
            );
            std::process::abort();
        }
    }
}

pub fn apply(profile: &Profile, env: &Env, opts: &ApplyOptions) -> Result<ApplyReport, StateError> {
    let rows = plan::evaluate(profile, env);
    let mut report = ApplyReport {
        profile: profile.name.clone(),
        dry_run: opts.dry_run,
        state_file: None,
        keys: Vec::new(),
        stopped_at: None,
        undo: None,
    };

    if opts.dry_run {
        report.keys = rows
            .iter()
            .map(|r| from_row(r, Outcome::WouldChange))
            .collect();
        return Ok(report);
    }

    // Save every original first: after this point a crash can always be undone.
    let _lock = if rows.iter().any(|r| r.status == Status::Off) {
        Some(state::lock(&opts.state_dir)?)
    } else {
        None
    };
    let originals = collect_originals(profile, &rows, env);
    if !originals.is_empty() {
        let mut st = state::load(&opts.state_dir)?.unwrap_or_else(|| State {
            version: 1,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..State::default()
        });
        st.merge(originals);
        if !st.profiles.contains(&profile.name) {
            st.profiles.push(profile.name.clone());
        }
        state::save(&opts.state_dir, &st)?;
        report.state_file = Some(state::path(&opts.state_dir));
        report.undo = Some(opts.rollback_hint.clone());
    }

    let mut writes = Writes::new();
    let mut stopped = false;
    for (key, row) in profile.keys.iter().zip(&rows) {
        if stopped {
            let outcome = if row.status == Status::Off {
                Outcome::NotReached
            } else {
                row_outcome(row)
            };
            report.keys.push(from_row(row, outcome));
            continue;
        }
        let applied = if row.status == Status::Off {
            apply_key(key, row, env, &report.keys, &mut writes)
        } else {
            from_row(row, row_outcome(row))
        };
        if opts.strict && matches!(applied.outcome, Outcome::Failed | Outcome::Partial) {
            stopped = true;
            report.stopped_at = Some(applied.key.clone());
        }
        report.keys.push(applied);
    }
    for k in &mut report.keys {
        if let Some(f) = &k.failure {
            k.class = Some(f.class);
        }
    }
    Ok(report)
}

fn row_outcome(row: &Row) -> Outcome {
    match row.status {
        Status::Ok => Outcome::Unchanged,
        Status::Off => Outcome::WouldChange,
        Status::Skipped => Outcome::Skipped,
    }
}

fn from_row(row: &Row, outcome: Outcome) -> Applied {
    let outcome = match (row.status, outcome) {
        (Status::Ok, _) => Outcome::Unchanged,
        (Status::Skipped, _) => Outcome::Skipped,
        (Status::Off, o) => o,
    };
    Applied {
        key: row.key.clone(),
        before: row.current.clone(),
        after: if outcome == Outcome::WouldChange {
            row.target.clone()
        } else {
            row.current.clone()
        },
        outcome,
        reason: row.reason.clone(),
        failure: None,
        class: row.class,
        note: row.note.clone(),
    }
}

fn collect_originals(profile: &Profile, rows: &[Row], env: &Env) -> Vec<Original> {
    let mut out = Vec::new();
    for (key, row) in profile.keys.iter().zip(rows) {
        if row.status != Status::Off {
            continue;
        }
        match &key.target {
            Target::Sysctl { name } => {
                let path = sysctl_path(&env.roots.proc, name);
                if let Ok(original) = sysctl::read(&path) {
                    out.push(Original::Sysctl {
                        key: name.clone(),
                        path: absolute(&path),
                        original,
                    });
                }
            }
            Target::Rlimit { resource, .. } => {
                if let Ok(l) = rlimit::get(env.pid, *resource) {
                    out.push(Original::Rlimit {
                        resource: *resource,
                        pid: env.pid,
                        start_time: host::process_start_time(env.pid),
                        soft: l.soft,
                        hard: l.hard,
                    });
                }
            }
            Target::Governor => {
                for cpu in governor::cpus(&env.roots.sys) {
                    out.push(Original::Governor {
                        cpu: cpu.name.clone(),
                        path: absolute(&cpu.governor_path),
                        original: cpu.current.clone(),
                    });
                }
            }
        }
    }
    out
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn apply_key(key: &Key, row: &Row, env: &Env, done: &[Applied], writes: &mut Writes) -> Applied {
    let mut a = from_row(row, Outcome::Changed);
    let target = row.target.clone().unwrap_or_default();
    match &key.target {
        Target::Sysctl { name } => {
            let path = sysctl_path(&env.roots.proc, name);
            match sysctl::write(&path, sysctl::encode(&target).as_bytes()) {
                Ok(()) => {
                    writes.count();
                    a.after = sysctl::read(&path)
                        .ok()
                        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "));
                }
                Err(e) => {
                    a.outcome = Outcome::Failed;
                    a.after = a.before.clone();
                    a.failure = Some(failure::sysctl_write(
                        name,
                        &target,
                        &path,
                        &e,
                        env.child_netns,
                    ));
                }
            }
        }
        Target::Rlimit { resource, hard } => {
            let want = parse_number(&target).unwrap_or(0);
            apply_rlimit(&mut a, env, *resource, *hard, want, done, writes);
        }
        Target::Governor => {
            let cpus = governor::cpus(&env.roots.sys);
            let want = key.wanted.to_string();
            for cpu in &cpus {
                let Some(g) = governor::choose(cpu, &want, &key.fallback) else {
                    continue;
                };
                if cpu.current.trim() == g {
                    continue;
                }
                match sysctl::write(&cpu.governor_path, format!("{g}\n").as_bytes()) {
                    Ok(()) => writes.count(),
                    Err(e) => {
                        a.outcome = Outcome::Failed;
                        a.failure = Some(governor_failure(&cpu.name, &g, &e));
                        break;
                    }
                }
            }
            a.after = Some(governor::summary(&governor::cpus(&env.roots.sys)));
        }
    }
    a
}

fn governor_failure(cpu: &str, g: &str, e: &std::io::Error) -> Failure {
    match e.raw_os_error() {
        Some(libc::EINVAL) => Failure::new(
            Class::InvalidValue,
            format!("{cpu}: the cpufreq driver refused governor {g}"),
            "list scaling_available_governors and add one to the key's fallback",
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => Failure::new(
            Class::MissingCapability,
            format!("{cpu}: not allowed to set governor {g} ({e})"),
            "run as root",
        ),
        Some(libc::EROFS) => Failure::new(
            Class::ReadOnly,
            format!("{cpu}: /sys is mounted read-only (a container)"),
            "set the governor on the host",
        ),
        _ => Failure::new(
            Class::Other,
            format!("{cpu}: cannot set governor {g}: {e}"),
            "see the error",
        ),
    }
}

fn apply_rlimit(
    a: &mut Applied,
    env: &Env,
    resource: Resource,
    hard: bool,
    want: u64,
    done: &[Applied],
    writes: &mut Writes,
) {
    let name = format!(
        "rlimit.{}.{}",
        resource.name(),
        if hard { "hard" } else { "soft" }
    );
    let cur = match rlimit::get(env.pid, resource) {
        Ok(l) => l,
        Err(e) => {
            a.outcome = Outcome::Failed;
            a.failure = Some(Failure::new(
                Class::Other,
                format!("{name}: cannot read the limits of pid {}: {e}", env.pid),
                "pass --pid of a running process",
            ));
            return;
        }
    };
    let new = if hard {
        Limits {
            soft: cur.soft.min(want),
            hard: want,
        }
    } else {
        Limits {
            soft: want.min(cur.hard),
            hard: cur.hard,
        }
    };
    let show = |l: Limits| format_number(if hard { l.hard } else { l.soft });
    if new != cur {
        match rlimit::set(env.pid, resource, new) {
            Ok(()) => writes.count(),
            Err(e) => {
                a.outcome = Outcome::Failed;
                a.failure = Some(rlimit_failure(&name, resource, cur, new, e, env));
                return;
            }
        }
    }
    a.after = rlimit::get(env.pid, resource).ok().map(show);
    if !hard && want > cur.hard {
        // The rule: when the hard limit cannot go up, take the soft one to it and say why.
        a.outcome = Outcome::Partial;
        let hard_failed = done.iter().any(|d| {
            d.key == format!("rlimit.{}.hard", resource.name()) && d.outcome == Outcome::Failed
        });
        let why = format!(
            "{name}: raised only to the hard limit {} (wanted {}): {}",
            format_number(cur.hard),
            format_number(want),
            if !env.caps.cap_sys_resource {
                "the hard limit cannot be raised without CAP_SYS_RESOURCE"
            } else if hard_failed {
                "raising the hard limit failed (see rlimit.*.hard)"
            } else {
                "the profile does not raise the hard limit"
            }
        );
        a.failure = Some(Failure::new(
            if env.caps.cap_sys_resource {
                Class::InvalidValue
            } else {
                Class::MissingCapability
            },
            why,
            "raise the hard limit where the process is started (systemd LimitNOFILE, docker --ulimit, limits.d: see `tuner persist`), or run more worker processes (see `tuner capacity`)",
        ));
    }
}

fn rlimit_failure(
    name: &str,
    resource: Resource,
    cur: Limits,
    new: Limits,
    e: Errno,
    env: &Env,
) -> Failure {
    match e {
        Errno::EPERM => Failure::new(
            Class::MissingCapability,
            format!(
                "{name}: cannot raise the hard limit from {} to {}: {}",
                format_number(cur.hard),
                format_number(new.hard),
                if env.caps.cap_sys_resource {
                    "not permitted for this process"
                } else {
                    "no CAP_SYS_RESOURCE"
                }
            ),
            "raise it where the process is started (systemd LimitNOFILE, docker --ulimit, limits.d: see `tuner persist`), or run more worker processes (see `tuner capacity`)",
        ),
        Errno::EINVAL if resource == Resource::Nofile => Failure::new(
            Class::InvalidValue,
            format!(
                "{name}: {} is above fs.nr_open",
                format_number(new.hard)
            ),
            "raise fs.nr_open first (the profile orders it first: see whether it failed)",
        ),
        Errno::ESRCH => Failure::new(
            Class::Other,
            format!("{name}: process {} is gone", env.pid),
            "pass --pid of a running process",
        ),
        e => Failure::new(
            Class::InvalidValue,
            format!("{name}: the kernel refused {}: {e}", format_number(new.hard)),
            "fix the value in the profile",
        ),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreOutcome {
    Restored,
    /// Already back at the original value.
    AlreadyOriginal,
    /// The process whose limits were changed no longer exists.
    Gone,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub key: String,
    pub original: String,
    pub before: Option<String>,
    pub outcome: RestoreOutcome,
    pub failure: Option<Failure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub state_file: PathBuf,
    /// False when there was no state file: nothing to roll back.
    pub found: bool,
    pub profiles: Vec<String>,
    pub keys: Vec<Restored>,
    /// The state file is removed only when everything was restored.
    pub state_removed: bool,
}

impl RollbackReport {
    pub fn exit_code(&self) -> i32 {
        i32::from(
            self.keys
                .iter()
                .any(|k| k.outcome == RestoreOutcome::Failed),
        )
    }
}

pub fn rollback(state_dir: &Path, env: &Env) -> Result<RollbackReport, StateError> {
    let mut report = RollbackReport {
        state_file: state::path(state_dir),
        found: false,
        profiles: Vec::new(),
        keys: Vec::new(),
        state_removed: false,
    };
    if !state::path(state_dir).exists() {
        return Ok(report);
    }
    let _lock = state::lock(state_dir)?;
    let Some(st) = state::load(state_dir)? else {
        return Ok(report);
    };
    report.found = true;
    report.profiles = st.profiles.clone();
    for entry in st.entries.iter().rev() {
        report.keys.push(restore(entry, env));
    }
    if report.exit_code() == 0 {
        report.state_removed = state::remove(state_dir).is_ok();
    }
    Ok(report)
}

/// A value for a table: fields joined by one space, `(empty)` for nothing.
fn display(v: &str) -> String {
    let s = v.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.is_empty() {
        "(empty)".into()
    } else {
        s
    }
}

fn restore(entry: &Original, env: &Env) -> Restored {
    let mut r = Restored {
        key: entry.key(),
        original: String::new(),
        before: None,
        outcome: RestoreOutcome::Restored,
        failure: None,
    };
    match entry {
        Original::Sysctl {
            key,
            path,
            original,
        }
        | Original::Governor {
            cpu: key,
            path,
            original,
        } => {
            r.original = display(original);
            let now = sysctl::read(path);
            r.before = now.as_ref().ok().map(|v| display(v));
            if now.as_deref().ok() == Some(original.as_str()) {
                r.outcome = RestoreOutcome::AlreadyOriginal;
                return r;
            }
            // The exact bytes that were read, so the file matches byte for byte.
            if let Err(e) = sysctl::write(path, original.as_bytes()) {
                r.outcome = RestoreOutcome::Failed;
                r.failure = Some(failure::sysctl_write(
                    key,
                    original.trim_end(),
                    path,
                    &e,
                    env.child_netns,
                ));
            }
        }
        Original::Rlimit {
            resource,
            pid,
            start_time,
            soft,
            hard,
        } => {
            r.original = format!("{}:{}", format_number(*soft), format_number(*hard));
            if host::process_start_time(*pid) != *start_time || start_time.is_none() {
                r.outcome = RestoreOutcome::Gone;
                return r;
            }
            let want = Limits {
                soft: *soft,
                hard: *hard,
            };
            match rlimit::get(*pid, *resource) {
                Ok(now) => {
                    r.before = Some(format!(
                        "{}:{}",
                        format_number(now.soft),
                        format_number(now.hard)
                    ));
                    if now == want {
                        r.outcome = RestoreOutcome::AlreadyOriginal;
                        return r;
                    }
                }
                Err(_) => {
                    r.outcome = RestoreOutcome::Gone;
                    return r;
                }
            }
            if let Err(e) = rlimit::set(*pid, *resource, want) {
                r.outcome = RestoreOutcome::Failed;
                r.failure = Some(Failure::new(
                    if e == Errno::EPERM {
                        Class::MissingCapability
                    } else {
                        Class::Other
                    },
                    format!("rlimit.{} of pid {pid}: cannot restore {}: {e}", resource.name(), r.original),
                    "run rollback as the same user, with CAP_SYS_RESOURCE if the hard limit must go up",
                ));
            }
        }
    }
    r
}
