//! `check` and `diff`: compare each key of a profile with this machine and say
//! ok, off (and what apply would write) or skipped (and why it cannot apply here).

use crate::failure::{self, Class};
use crate::governor;
use crate::host::Caps;
use crate::profile::{sysctl_path, Key, Profile, Target};
use crate::rlimit;
use crate::roots::Roots;
use crate::sysctl;
use crate::value::{format_number, Context, Verdict};
use serde::Serialize;

/// Everything evaluation needs to know about where it runs.
#[derive(Debug, Clone)]
pub struct Env {
    pub roots: Roots,
    /// Whose rlimits the profile's rlimit keys are about.
    pub pid: i32,
    pub child_netns: Option<bool>,
    pub ram_pages: u64,
    pub caps: Caps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Off,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub key: String,
    pub current: Option<String>,
    pub wanted: String,
    pub status: Status,
    /// The value apply would write, when off.
    pub target: Option<String>,
    pub reason: String,
    /// Why it was skipped.
    pub note: Option<String>,
    pub class: Option<Class>,
    /// The profile the key came from (after include).
    pub profile: String,
}

pub fn evaluate(profile: &Profile, env: &Env) -> Vec<Row> {
    profile.keys.iter().map(|k| evaluate_key(k, env)).collect()
}

pub fn evaluate_key(k: &Key, env: &Env) -> Row {
    let mut row = Row {
        key: k.key.clone(),
        current: None,
        wanted: k.wanted.to_string(),
        status: Status::Skipped,
        target: None,
        reason: k.reason.clone(),
        note: None,
        class: None,
        profile: k.from.clone(),
    };
    let mut ctx = Context {
        ram_pages: env.ram_pages,
        rlimit_hard: None,
    };
    let current = match &k.target {
        Target::Sysctl { name } => {
            let path = sysctl_path(&env.roots.proc, name);
            match sysctl::read(&path) {
                Ok(v) => v,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let f = failure::absent_sysctl(name, env.child_netns);
                    row.note = Some(if k.optional {
                        format!("optional, absent: {}", f.why)
                    } else {
                        f.why
                    });
                    row.class = Some(f.class);
                    return row;
                }
                Err(e) => {
                    row.note = Some(format!("cannot read {}: {e}", path.display()));
                    row.class = Some(Class::Other);
                    return row;
                }
            }
        }
        Target::Rlimit { resource, hard } => match rlimit::get(env.pid, *resource) {
            Ok(l) => {
                ctx.rlimit_hard = Some(l.hard);
                format_number(if *hard { l.hard } else { l.soft })
            }
            Err(e) => {
                row.note = Some(format!("cannot read the limits of pid {}: {e}", env.pid));
                row.class = Some(Class::Other);
                return row;
            }
        },
        Target::Governor => {
            let cpus = governor::cpus(&env.roots.sys);
            if cpus.is_empty() {
                let f = failure::no_cpufreq();
                row.current = Some("no cpufreq (VM)".into());
                row.note = Some(f.why);
                row.class = Some(f.class);
                return row;
            }
            let want = k.wanted.to_string();
            row.current = Some(governor::summary(&cpus));
            let mut off = false;
            let mut chosen = Vec::new();
            for cpu in &cpus {
                match governor::choose(cpu, &want, &k.fallback) {
                    Some(g) => {
                        off |= cpu.current.trim() != g;
                        chosen.push(g);
                    }
                    None => {
                        row.note = Some(format!(
                            "{} offers none of {want}, {}",
                            cpu.name,
                            k.fallback.join(", ")
                        ));
                        row.class = Some(Class::InvalidValue);
                        return row;
                    }
                }
            }
            chosen.dedup();
            row.wanted = std::iter::once(want.clone())
                .chain(k.fallback.iter().map(|f| format!("|{f}")))
                .collect();
            row.status = if off { Status::Off } else { Status::Ok };
            if off {
                row.target = Some(chosen.join(","));
            }
            return row;
        }
    };
    row.current = Some(if current.trim().is_empty() {
        "(empty)".into()
    } else {
        current.split_whitespace().collect::<Vec<_>>().join(" ")
    });
    row.wanted = k.wanted.display_resolved(&ctx);
    match k.wanted.verdict(&current, &ctx) {
        Ok(Verdict::Ok) => row.status = Status::Ok,
        Ok(Verdict::Change(v)) => {
            row.status = Status::Off;
            row.target = Some(v);
        }
        Err(e) => {
            row.note = Some(format!("profile value does not fit: {e}"));
            row.class = Some(Class::InvalidValue);
        }
    }
    row
}

/// Exit code for check: 1 when any key is off.
pub fn exit_code(rows: &[Row]) -> i32 {
    i32::from(rows.iter().any(|r| r.status == Status::Off))
}
