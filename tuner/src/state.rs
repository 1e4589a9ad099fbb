//! The state file: every original value apply is about to change, saved
//! atomically before the first write, so `rollback` can restore them exactly,
//! even after apply died half-way.

use crate::atomic;
use crate::profile::Resource;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DEFAULT_DIR: &str = "/run/speedmimi-tuner";
const FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot save the state file {path}: {source}; nothing was changed (use --state DIR for a writable place)")]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another tuner apply or rollback holds {path}: wait for it, or remove the lock if no tuner is running")]
    Busy { path: PathBuf },
    #[error("cannot lock {path}: {source} (use --state DIR for a writable place)")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {path} is damaged ({source}); its originals cannot be trusted: restore by hand from it")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One original value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Original {
    Sysctl {
        key: String,
        path: PathBuf,
        /// The file's exact bytes.
        original: String,
    },
    Rlimit {
        resource: Resource,
        pid: i32,
        /// Tells this process from a later one with the same pid.
        start_time: Option<u64>,
        soft: u64,
        hard: u64,
    },
    Governor {
        cpu: String,
        path: PathBuf,
        original: String,
    },
}

impl Original {
    /// Identity: the same thing is never recorded twice, so the first original wins.
    pub fn id(&self) -> String {
        match self {
            Original::Sysctl { path, .. } => format!("sysctl:{}", path.display()),
            Original::Rlimit { resource, pid, .. } => format!("rlimit:{pid}:{}", resource.name()),
            Original::Governor { path, .. } => format!("governor:{}", path.display()),
        }
    }

    pub fn key(&self) -> String {
        match self {
            Original::Sysctl { key, .. } => key.clone(),
            Original::Rlimit { resource, pid, .. } => {
                format!("rlimit.{} (pid {pid})", resource.name())
            }
            Original::Governor { cpu, .. } => format!("cpu.governor ({cpu})"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct State {
    pub version: u32,
    /// Profiles applied since the originals were first saved.
    pub profiles: Vec<String>,
    pub created_unix: u64,
    pub entries: Vec<Original>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

pub fn load(dir: &Path) -> Result<Option<State>, StateError> {
    let p = path(dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path: p, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| StateError::Parse { path: p, source })
}

pub fn save(dir: &Path, state: &State) -> Result<(), StateError> {
    let p = path(dir);
    let json = serde_json::to_vec_pretty(state).expect("state serializes");
    atomic::write(&p, &json, 0o600).map_err(|source| StateError::Save { path: p, source })
}

/// Remove the state file. The directory and its lock file stay: deleting a lock
/// file another process may be waiting on would let two holders in.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    std::fs::remove_file(path(dir))
}

/// Held while apply or rollback reads and writes the state, so two runs cannot
/// interleave and lose originals. Released on drop.
pub struct Lock {
    _flock: nix::fcntl::Flock<std::fs::File>,
}

pub fn lock(dir: &Path) -> Result<Lock, StateError> {
    let p = dir.join("state.lock");
    let err = |source| StateError::Lock {
        path: p.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(err)?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Lock { _flock: l }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StateError::Busy { path: p }),
        Err((_, e)) => Err(err(e.into())),
    }
}

impl State {
    /// Add originals not yet recorded; returns how many were new.
    pub fn merge(&mut self, originals: Vec<Original>) -> usize {
        let mut added = 0;
        for o in originals {
            let id = o.id();
            if !self.entries.iter().any(|e| e.id() == id) {
                self.entries.push(o);
                added += 1;
            }
        }
        added
    }
}
