//! `persist`: make a profile survive a reboot without touching anything else —
//! a sysctl.d file for the sysctls, a systemd drop-in with the proxy's Limit*=
//! lines, and a limits.d file for login sessions. Bounds are resolved against
//! the current values, so a persisted `>=` never lowers what is there.

use crate::atomic;
use crate::plan::{self, Env, Status};
use crate::profile::{Profile, Resource, Target};
use crate::value::{format_number, parse_number, Context, Verdict};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot write {path}: {source} (use --root DIR to write elsewhere)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub path: PathBuf,
    pub what: String,
    pub lines: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PersistReport {
    pub profile: String,
    pub files: Vec<Written>,
    /// Keys left out, each with why.
    pub left_out: Vec<(String, String)>,
    pub undo: String,
    pub activate: String,
}

pub fn persist(profile: &Profile, env: &Env, unit: &str) -> Result<PersistReport, PersistError> {
    let rows = plan::evaluate(profile, env);
    let mut sysctl_lines = Vec::new();
    let mut left_out = Vec::new();
    // resource -> (soft, hard)
    let mut limits: Vec<(Resource, Option<u64>, Option<u64>)> = Vec::new();

    for (key, row) in profile.keys.iter().zip(&rows) {
        match &key.target {
            Target::Sysctl { name } => {
                let value = match (row.status, &row.target, &row.current) {
                    (Status::Off, Some(t), _) => t.clone(),
                    (Status::Ok, _, Some(c)) => c.clone(),
                    _ => {
                        left_out.push((
                            key.key.clone(),
                            row.note
                                .clone()
                                .unwrap_or_else(|| "not resolvable here".into()),
                        ));
                        continue;
                    }
                };
                // `-` tells systemd-sysctl an optional key may be missing at boot.
                let dash = if key.optional { "-" } else { "" };
                sysctl_lines.push(format!("# {}\n{dash}{name} = {value}", key.reason));
            }
            Target::Rlimit { resource, hard } => {
                let Some(cur) = row.current.as_deref() else {
                    left_out.push((key.key.clone(), row.note.clone().unwrap_or_default()));
                    continue;
                };
                let v = row.target.as_deref().unwrap_or(cur);
                let n = parse_number(v).unwrap_or(0);
                let slot = match limits.iter_mut().find(|(r, _, _)| r == resource) {
                    Some(s) => s,
                    None => {
                        limits.push((*resource, None, None));
                        limits.last_mut().unwrap()
                    }
                };
                if *hard {
                    slot.2 = Some(n);
                } else {
                    // A soft limit from a profile may exceed this process's hard limit:
                    // at boot the persisted hard limit applies, so resolve against the wanted one.
                    let ctx = Context {
                        ram_pages: env.ram_pages,
                        rlimit_hard: slot.2.or(Some(n)),
                    };
                    let n = match key.wanted.verdict(cur, &ctx) {
                        Ok(Verdict::Change(v)) => parse_number(&v).unwrap_or(n),
                        _ => n,
                    };
                    slot.1 = Some(n);
                }
            }
            Target::Governor => left_out.push((
                key.key.clone(),
                "governors are not sysctls: persist with cpupower/tuned on the host".into(),
            )),
        }
    }

    let mut files = Vec::new();
    let header = format!(
        "# Written by `tuner persist --profile {}` (SpeedMimi). Remove this file to undo.\n",
        profile.name
    );
    if !sysctl_lines.is_empty() {
        let path = env
            .roots
            .etc
            .join(format!("sysctl.d/60-speedmimi-{}.conf", profile.name));
        let body = format!("{header}\n{}\n", sysctl_lines.join("\n\n"));
        write(&path, &body)?;
        files.push(Written {
            path,
            what: "sysctls, loaded at boot by systemd-sysctl".into(),
            lines: sysctl_lines.len(),
        });
    }
    if !limits.is_empty() {
        // Fill a missing half from the other so both files state a complete pair.
        let pairs: Vec<(Resource, u64, u64)> = limits
            .iter()
            .map(|(r, s, h)| {
                let hard = h.or(*s).unwrap_or(0);
                let soft = s.unwrap_or(hard).min(hard);
                (*r, soft, hard)
            })
            .collect();
        let dropin = env
            .roots
            .etc
            .join(format!("systemd/system/{unit}.d/60-speedmimi-limits.conf"));
        let mut body = format!("{header}[Service]\n");
        for (r, s, h) in &pairs {
            let name = match r {
                Resource::Nofile => "LimitNOFILE",
                Resource::Nproc => "LimitNPROC",
                Resource::Memlock => "LimitMEMLOCK",
            };
            body.push_str(&format!(
                "{name}={}:{}\n",
                systemd_number(*s),
                systemd_number(*h)
            ));
        }
        write(&dropin, &body)?;
        files.push(Written {
            path: dropin,
            what: format!("systemd drop-in for {unit}"),
            lines: pairs.len(),
        });
        let limits_d = env.roots.etc.join("security/limits.d/60-speedmimi.conf");
        let mut body = header.clone();
        for (r, s, h) in &pairs {
            body.push_str(&format!(
                "*    soft    {:<8} {}\n",
                r.name(),
                format_number(*s)
            ));
            body.push_str(&format!(
                "*    hard    {:<8} {}\n",
                r.name(),
                format_number(*h)
            ));
        }
        write(&limits_d, &body)?;
        files.push(Written {
            path: limits_d,
            what: "pam_limits for login sessions".into(),
            lines: pairs.len() * 2,
        });
    }
    let undo = format!(
        "rm {}",
        files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(PersistReport {
        profile: profile.name.clone(),
        files,
        left_out,
        undo,
        activate: format!("sysctl --system && systemctl daemon-reload && systemctl restart {unit}"),
    })
}

fn systemd_number(n: u64) -> String {
    if n == u64::MAX {
        "infinity".into()
    } else {
        n.to_string()
    }
}

fn write(path: &std::path::Path, body: &str) -> Result<(), PersistError> {
    atomic::write(path, body.as_bytes(), 0o644).map_err(|source| PersistError::Write {
        path: path.to_path_buf(),
        source,
    })
}
