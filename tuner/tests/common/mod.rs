//! Test harness: a fake /proc/sys + /sys tree in a temp dir, the real `tuner`
//! binary run against it, a sleeping child whose rlimits tests may change, and
//! byte-exact snapshots of the tree.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

pub const TUNER: &str = env!("CARGO_BIN_EXE_tuner");

/// Sysctl files of the fake tree, with the kernel's own formatting (tabs, newline).
pub const SYSCTLS: &[(&str, &str)] = &[
    ("fs/nr_open", "1048576\n"),
    ("fs/file-max", "2466183\n"),
    ("fs/file-nr", "1344\t0\t2466183\n"),
    ("net/core/somaxconn", "4096\n"),
    ("net/core/netdev_max_backlog", "1000\n"),
    ("net/core/rmem_max", "4194304\n"),
    ("net/core/wmem_max", "4194304\n"),
    ("net/ipv4/tcp_max_syn_backlog", "2048\n"),
    ("net/ipv4/ip_local_port_range", "32768\t60999\n"),
    ("net/ipv4/ip_local_reserved_ports", "\n"),
    ("net/ipv4/tcp_tw_reuse", "2\n"),
    ("net/ipv4/tcp_fin_timeout", "60\n"),
    ("net/ipv4/tcp_max_orphans", "131072\n"),
    ("net/ipv4/tcp_max_tw_buckets", "131072\n"),
    ("net/ipv4/tcp_mem", "287901\t383869\t575802\n"),
    ("net/ipv4/tcp_rmem", "4096\t131072\t33554432\n"),
    ("net/ipv4/tcp_wmem", "4096\t16384\t4194304\n"),
    ("net/netfilter/nf_conntrack_max", "262144\n"),
];

pub struct Fake {
    pub dir: tempfile::TempDir,
}

impl Fake {
    /// A tree with every production sysctl and two CPUs on `powersave`.
    pub fn new() -> Fake {
        let f = Fake::without_cpufreq();
        for cpu in ["cpu0", "cpu1"] {
            let d = f.sys().join("devices/system/cpu").join(cpu).join("cpufreq");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("scaling_governor"), "powersave\n").unwrap();
            std::fs::write(
                d.join("scaling_available_governors"),
                "performance powersave\n",
            )
            .unwrap();
        }
        f
    }

    /// Like a VM: CPUs but no cpufreq directories.
    pub fn without_cpufreq() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let f = Fake { dir };
        for (rel, v) in SYSCTLS {
            let p = f.proc().join("sys").join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        for cpu in ["cpu0", "cpu1"] {
            std::fs::create_dir_all(f.sys().join("devices/system/cpu").join(cpu)).unwrap();
        }
        std::fs::create_dir_all(f.dir.path().join("etc")).unwrap();
        f
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn proc(&self) -> PathBuf {
        self.dir.path().join("proc")
    }
    pub fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn sysctl(&self, rel: &str) -> String {
        std::fs::read_to_string(self.proc().join("sys").join(rel)).unwrap()
    }
    pub fn governor(&self, cpu: &str) -> String {
        std::fs::read_to_string(
            self.sys()
                .join("devices/system/cpu")
                .join(cpu)
                .join("cpufreq/scaling_governor"),
        )
        .unwrap()
    }

    /// Every file under proc/ and sys/, byte for byte.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        for top in [self.proc(), self.sys()] {
            walk(&top, &mut out);
        }
        out
    }

    /// Run tuner against this tree with its own state dir.
    pub fn tuner(&self, args: &[&str]) -> Output {
        self.tuner_env(args, &[])
    }

    pub fn tuner_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(TUNER);
        c.arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.state())
            .args(args)
            .env_remove("TUNER_CRASH_AFTER_WRITES");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): stdout={} stderr={}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The JSON row for `key` in a check/apply report.
pub fn row<'a>(report: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no row {key} in {report}"))
}

/// A child process whose rlimits tests may change; killed on drop.
pub struct Sleeper(pub Child);

impl Sleeper {
    pub fn new() -> Sleeper {
        Sleeper(Command::new("sleep").arg("300").spawn().unwrap())
    }
    pub fn pid(&self) -> String {
        self.0.id().to_string()
    }
    /// (soft, hard) of RLIMIT_NOFILE from /proc/PID/limits.
    pub fn nofile(&self) -> (String, String) {
        let l = std::fs::read_to_string(format!("/proc/{}/limits", self.0.id())).unwrap();
        let line = l.lines().find(|l| l.starts_with("Max open files")).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        (f[3].to_string(), f[4].to_string())
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Write a profile file into a fresh directory for --profiles.
pub fn profile_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, body) in files {
        std::fs::write(d.path().join(format!("{name}.yaml")), body).unwrap();
    }
    d
}
