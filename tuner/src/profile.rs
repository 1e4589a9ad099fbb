//! Profiles: YAML data files built into the binary (profiles/*.yaml) or read from a
//! directory given with `--profiles DIR`, which takes precedence. A profile may
//! `include` others; its own keys override the included ones, keeping their place.

use crate::value::{ValueError, Wanted};
use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

/// The profiles shipped in the binary, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("production", include_str!("../profiles/production.yaml")),
    ("latency", include_str!("../profiles/latency.yaml")),
    ("throughput", include_str!("../profiles/throughput.yaml")),
    ("loadgen", include_str!("../profiles/loadgen.yaml")),
    ("container", include_str!("../profiles/container.yaml")),
];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("no profile named `{name}`: run `tuner profiles` to list them{}", dir_hint(.dir))]
    Unknown { name: String, dir: Option<PathBuf> },
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile `{name}` is not valid YAML: {source}")]
    Parse {
        name: String,
        source: serde_yaml_ng::Error,
    },
    #[error("profile `{name}`, key `{key}`: {source}")]
    Value {
        name: String,
        key: String,
        source: ValueError,
    },
    #[error("profile `{name}`, key `{key}`: {why}")]
    Key {
        name: String,
        key: String,
        why: String,
    },
    #[error("profile `{0}` includes itself (through {1}): remove the cycle")]
    Cycle(String, String),
}

fn dir_hint(dir: &Option<PathBuf>) -> String {
    match dir {
        Some(d) => format!(" (looked in {} and the built-in ones)", d.display()),
        None => String::new(),
    }
}

/// The three kinds of key a profile can set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// A sysctl by dotted name (`net.core.somaxconn`) or slash path (`net/core/somaxconn`).
    Sysctl { name: String },
    /// `rlimit.<resource>.<soft|hard>`.
    Rlimit { resource: Resource, hard: bool },
    /// `cpu.governor`: every CPU's cpufreq scaling governor.
    Governor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Nofile,
    Nproc,
    Memlock,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Nofile => "nofile",
            Resource::Nproc => "nproc",
            Resource::Memlock => "memlock",
        }
    }
}

impl Target {
    pub fn parse(key: &str) -> Result<Target, String> {
        if key == "cpu.governor" {
            return Ok(Target::Governor);
        }
        if let Some(rest) = key.strip_prefix("rlimit.") {
            let (res, which) = rest
                .split_once('.')
                .ok_or_else(|| format!("write `rlimit.{rest}.soft` or `rlimit.{rest}.hard`"))?;
            let resource = match res {
                "nofile" => Resource::Nofile,
                "nproc" => Resource::Nproc,
                "memlock" => Resource::Memlock,
                other => {
                    return Err(format!(
                        "rlimit `{other}` is not one of nofile, nproc, memlock"
                    ))
                }
            };
            let hard = match which {
                "soft" => false,
                "hard" => true,
                other => return Err(format!("`{other}` is neither soft nor hard")),
            };
            return Ok(Target::Rlimit { resource, hard });
        }
        if key.is_empty() || key.contains("..") || key.starts_with('/') {
            return Err("not a sysctl name: write it dotted, e.g. net.core.somaxconn".into());
        }
        Ok(Target::Sysctl {
            name: key.to_string(),
        })
    }

    /// Dependency rank: fs.nr_open bounds RLIMIT_NOFILE, and a hard limit bounds its
    /// soft limit, so those go first; reversed on rollback.
    pub fn rank(&self) -> u8 {
        match self {
            Target::Sysctl { name } if name == "fs.nr_open" => 0,
            Target::Sysctl { name } if name == "fs.file-max" => 1,
            Target::Sysctl { .. } => 2,
            Target::Rlimit { hard: true, .. } => 3,
            Target::Rlimit { hard: false, .. } => 4,
            Target::Governor => 5,
        }
    }
}

/// One key of a resolved profile.
#[derive(Debug, Clone)]
pub struct Key {
    pub key: String,
    pub target: Target,
    pub wanted: Wanted,
    pub reason: String,
    /// Absent is fine (e.g. nf_conntrack_max without the conntrack module).
    pub optional: bool,
    /// Governors to try, in order, when the wanted one is not offered.
    pub fallback: Vec<String>,
    /// The profile this key came from (after `include`).
    pub from: String,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub includes: Vec<String>,
    /// In apply order: dependency rank, then file order.
    pub keys: Vec<Key>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    keys: IndexMap<String, RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    #[serde(deserialize_with = "scalar")]
    value: String,
    reason: String,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    fallback: Vec<String>,
}

/// Values may be written as YAML numbers or strings.
fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde_yaml_ng::Value;
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if b { "1" } else { "0" }.into()),
        other => Err(serde::de::Error::custom(format!(
            "value must be a number or a string, not {other:?}"
        ))),
    }
}

/// Where profiles come from: an optional directory of `NAME.yaml` files, then the built-ins.
#[derive(Debug, Clone, Default)]
pub struct Library {
    pub dir: Option<PathBuf>,
}

impl Library {
    pub fn new(dir: Option<PathBuf>) -> Library {
        Library { dir }
    }

    fn source(&self, name: &str) -> Result<(String, String), ProfileError> {
        if let Some(dir) = &self.dir {
            for ext in ["yaml", "yml"] {
                let path = dir.join(format!("{name}.{ext}"));
                if path.exists() {
                    let text =
                        std::fs::read_to_string(&path).map_err(|source| ProfileError::Read {
                            path: path.clone(),
                            source,
                        })?;
                    return Ok((text, path.display().to_string()));
                }
            }
        }
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| (t.to_string(), "built-in".to_string()))
            .ok_or_else(|| ProfileError::Unknown {
                name: name.to_string(),
                dir: self.dir.clone(),
            })
    }

    /// Every profile name available, directory ones first, each with where it came from.
    pub fn names(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        if let Some(dir) = &self.dir {
            if let Ok(rd) = std::fs::read_dir(dir) {
                let mut found: Vec<(String, String)> = rd
                    .flatten()
                    .filter_map(|e| {
                        let p = e.path();
                        let ext = p.extension()?.to_str()?;
                        (ext == "yaml" || ext == "yml").then(|| {
                            (
                                p.file_stem().unwrap().to_string_lossy().into_owned(),
                                p.display().to_string(),
                            )
                        })
                    })
                    .collect();
                found.sort();
                out.extend(found);
            }
        }
        for (n, _) in BUILTIN {
            if !out.iter().any(|(m, _)| m == n) {
                out.push((n.to_string(), "built-in".into()));
            }
        }
        out
    }

    pub fn load(&self, name: &str) -> Result<Profile, ProfileError> {
        let mut stack = Vec::new();
        let (description, includes, keys) = self.load_inner(name, &mut stack)?;
        let mut keys: Vec<Key> = keys.into_values().collect();
        keys.sort_by_key(|k| k.target.rank());
        Ok(Profile {
            name: name.to_string(),
            description,
            includes,
            keys,
        })
    }

    #[allow(clippy::type_complexity)]
    fn load_inner(
        &self,
        name: &str,
        stack: &mut Vec<String>,
    ) -> Result<(String, Vec<String>, IndexMap<String, Key>), ProfileError> {
        if stack.iter().any(|s| s == name) {
            return Err(ProfileError::Cycle(name.to_string(), stack.join(" -> ")));
        }
        stack.push(name.to_string());
        let (text, _origin) = self.source(name)?;
        let raw: RawProfile =
            serde_yaml_ng::from_str(&text).map_err(|source| ProfileError::Parse {
                name: name.to_string(),
                source,
            })?;
        let mut keys: IndexMap<String, Key> = IndexMap::new();
        for inc in &raw.include {
            let (_, _, inherited) = self.load_inner(inc, stack)?;
            for (k, v) in inherited {
                keys.insert(k, v);
            }
        }
        for (k, rk) in raw.keys {
            let target = Target::parse(&k).map_err(|why| ProfileError::Key {
                name: name.to_string(),
                key: k.clone(),
                why,
            })?;
            let wanted = Wanted::parse(&rk.value).map_err(|source| ProfileError::Value {
                name: name.to_string(),
                key: k.clone(),
                source,
            })?;
            if rk.reason.trim().is_empty() {
                return Err(ProfileError::Key {
                    name: name.to_string(),
                    key: k,
                    why: "every key needs a one-line `reason`".into(),
                });
            }
            if !rk.fallback.is_empty() && target != Target::Governor {
                return Err(ProfileError::Key {
                    name: name.to_string(),
                    key: k,
                    why: "`fallback` only applies to cpu.governor".into(),
                });
            }
            keys.insert(
                k.clone(),
                Key {
                    key: k,
                    target,
                    wanted,
                    reason: rk.reason.trim().to_string(),
                    optional: rk.optional,
                    fallback: rk.fallback,
                    from: name.to_string(),
                },
            );
        }
        stack.pop();
        Ok((raw.description.trim().to_string(), raw.include, keys))
    }
}

/// Keep only the keys whose name starts with one of `prefixes` (all when empty).
pub fn filter_keys(profile: &mut Profile, prefixes: &[String]) {
    if prefixes.is_empty() {
        return;
    }
    profile
        .keys
        .retain(|k| prefixes.iter().any(|p| k.key.starts_with(p.as_str())));
}

/// Path of a sysctl under the proc root: dots become slashes.
pub fn sysctl_path(proc_root: &Path, name: &str) -> PathBuf {
    let rel = if name.contains('/') {
        name.to_string()
    } else {
        name.replace('.', "/")
    };
    proc_root.join("sys").join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_every_key_has_a_reason() {
        let lib = Library::default();
        for (name, _) in BUILTIN {
            let p = lib.load(name).unwrap();
            assert!(!p.keys.is_empty(), "{name}");
            assert!(p.keys.iter().all(|k| !k.reason.is_empty()));
        }
    }

    #[test]
    fn nr_open_is_ordered_before_nofile() {
        let p = Library::default().load("production").unwrap();
        let pos = |k: &str| p.keys.iter().position(|x| x.key == k).unwrap();
        assert!(pos("fs.nr_open") < pos("rlimit.nofile.hard"));
        assert!(pos("rlimit.nofile.hard") < pos("rlimit.nofile.soft"));
    }
}
