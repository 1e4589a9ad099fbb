//! Where the tuner looks: /proc, /sys and /etc, each movable (`--root` moves all
//! three under one directory) so tests run against a fake tree.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub etc: PathBuf,
}

impl Default for Roots {
    fn default() -> Roots {
        Roots {
            proc: "/proc".into(),
            sys: "/sys".into(),
            etc: "/etc".into(),
        }
    }
}

impl Roots {
    /// `root` moves all three; the specific ones override it.
    pub fn new(
        root: Option<&Path>,
        proc: Option<&Path>,
        sys: Option<&Path>,
        etc: Option<&Path>,
    ) -> Roots {
        let base = |name: &str| match root {
            Some(r) => r.join(name),
            None => Path::new("/").join(name),
        };
        Roots {
            proc: proc.map(Path::to_path_buf).unwrap_or_else(|| base("proc")),
            sys: sys.map(Path::to_path_buf).unwrap_or_else(|| base("sys")),
            etc: etc.map(Path::to_path_buf).unwrap_or_else(|| base("etc")),
        }
    }

    /// True when /proc is the real one, so facts about this machine can be trusted.
    pub fn is_real_proc(&self) -> bool {
        self.proc == Path::new("/proc")
    }
}
