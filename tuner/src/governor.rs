//! CPU frequency governors under the sys root
//! (/sys/devices/system/cpu/cpuN/cpufreq/scaling_governor). No cpufreq
//! directories at all is normal on a VM and is reported as such.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Cpu {
    pub name: String,
    pub governor_path: PathBuf,
    /// The governor file's exact bytes.
    pub current: String,
    /// scaling_available_governors, when the driver lists them.
    pub available: Option<Vec<String>>,
}

pub fn cpus(sys_root: &Path) -> Vec<Cpu> {
    let base = sys_root.join("devices/system/cpu");
    let Ok(rd) = std::fs::read_dir(&base) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, Cpu)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u32 = name.strip_prefix("cpu")?.parse().ok()?;
            let dir = e.path().join("cpufreq");
            let governor_path = dir.join("scaling_governor");
            let current = std::fs::read_to_string(&governor_path).ok()?;
            let available = std::fs::read_to_string(dir.join("scaling_available_governors"))
                .ok()
                .map(|s| s.split_whitespace().map(String::from).collect());
            Some((
                n,
                Cpu {
                    name,
                    governor_path,
                    current,
                    available,
                },
            ))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out.into_iter().map(|(_, c)| c).collect()
}

/// The first of `wanted` and then `fallback` that this CPU offers.
pub fn choose(cpu: &Cpu, wanted: &str, fallback: &[String]) -> Option<String> {
    let candidates = std::iter::once(wanted).chain(fallback.iter().map(String::as_str));
    match &cpu.available {
        None => Some(wanted.to_string()),
        Some(av) => candidates
            .into_iter()
            .find(|c| av.iter().any(|a| a == c))
            .map(String::from),
    }
}

/// "performance" when all agree, else "cpu0=powersave cpu1=performance".
pub fn summary(cpus: &[Cpu]) -> String {
    let first = cpus.first().map(|c| c.current.trim()).unwrap_or("");
    if cpus.iter().all(|c| c.current.trim() == first) {
        first.to_string()
    } else {
        cpus.iter()
            .map(|c| format!("{}={}", c.name, c.current.trim()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
