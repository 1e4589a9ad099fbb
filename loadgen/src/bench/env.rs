//! The machine a run happened on (DIR/env.json and results.json's `env`):
//! CPU model, cores, memory, kernel, tool versions and `tuner show --json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use reports::model::Env;

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    // nginx -v prints on stderr.
    let text = if out.stdout.is_empty() {
        String::from_utf8_lossy(&out.stderr).into_owned()
    } else {
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    text.lines().next().map(|l| l.trim().to_string())
}

fn meminfo_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Collects the environment; `bin` is the directory holding speedmimi and tuner.
pub fn collect(bin: &Path, peers: &[&str]) -> Env {
    let mut versions = BTreeMap::new();
    versions.insert("loadgen".to_string(), env!("CARGO_PKG_VERSION").to_string());
    let sm = bin.join("speedmimi");
    if let Some(v) = first_line(sm.to_str().unwrap_or("speedmimi"), &["--version"]) {
        versions.insert("speedmimi".into(), v);
    }
    for p in peers {
        if let Some(v) = first_line(p, &["-v"]) {
            versions.insert((*p).to_string(), v);
        }
    }
    if let Some(v) = first_line("rustc", &["--version"]) {
        versions.insert("rustc".into(), v);
    }
    let tuner = Command::new(bin.join("tuner"))
        .args(["show", "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
    // SAFETY: sysconf only reads a configuration value.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32;
    Env {
        cpu_model: cpu_model(),
        cores,
        memory_bytes: meminfo_total(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        page_size: super::sample::page_size(),
        versions,
        tuner,
    }
}
