//! Facts about this process and machine that come from the kernel rather than
//! from /proc/sys: capabilities, network namespace, uname, memory, cores, and
//! hints that we run in a container or a VM. Always the real ones, never the fake root.

use serde::Serialize;
use std::path::Path;

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Caps {
    pub cap_sys_resource: bool,
    pub cap_net_admin: bool,
    pub cap_sys_admin: bool,
    /// The raw CapEff mask, hex as in /proc/self/status.
    #[serde(skip)]
    pub effective: u64,
}

/// Effective capabilities of this process, from /proc/self/status (CapEff).
pub fn caps() -> Caps {
    let mask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0);
    Caps::from_mask(mask)
}

impl Caps {
    pub fn from_mask(mask: u64) -> Caps {
        let has = |bit: u32| mask & (1u64 << bit) != 0;
        Caps {
            cap_sys_resource: has(CAP_SYS_RESOURCE),
            cap_net_admin: has(CAP_NET_ADMIN),
            cap_sys_admin: has(CAP_SYS_ADMIN),
            effective: mask,
        }
    }
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
}

/// Whether this process is outside the machine's first network namespace. Keys the
/// kernel shows only in the first namespace (tcp_mem, netdev_max_backlog) missing
/// means a child; otherwise compares with pid 1's namespace. Inside a container pid 1
/// is the container's own first process, so the keys are asked first. `None`: cannot tell.
pub fn in_child_netns() -> Option<bool> {
    let sys = Path::new("/proc/sys/net");
    let first_only_keys_missing = sys.join("ipv4").exists()
        && !sys.join("ipv4/tcp_mem").exists()
        && !sys.join("core/netdev_max_backlog").exists();
    if first_only_keys_missing {
        return Some(true);
    }
    if let (Ok(me), Ok(init)) = (
        std::fs::read_link("/proc/self/ns/net"),
        std::fs::read_link("/proc/1/ns/net"),
    ) {
        return Some(me != init);
    }
    sys.join("ipv4").exists().then_some(false)
}

#[derive(Debug, Clone, Serialize)]
pub struct Kernel {
    pub sysname: String,
    pub release: String,
    pub version: String,
    pub machine: String,
    pub hostname: String,
}

pub fn kernel() -> Kernel {
    match nix::sys::utsname::uname() {
        Ok(u) => Kernel {
            sysname: u.sysname().to_string_lossy().into_owned(),
            release: u.release().to_string_lossy().into_owned(),
            version: u.version().to_string_lossy().into_owned(),
            machine: u.machine().to_string_lossy().into_owned(),
            hostname: u.nodename().to_string_lossy().into_owned(),
        },
        Err(_) => Kernel {
            sysname: "?".into(),
            release: "?".into(),
            version: "?".into(),
            machine: "?".into(),
            hostname: "?".into(),
        },
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    pub total_bytes: u64,
    /// MemAvailable from /proc/meminfo, else free + buffers from sysinfo(2).
    pub available_bytes: u64,
    pub page_size: u64,
}

pub fn memory() -> Memory {
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|p| p as u64)
        .unwrap_or(4096);
    let (total, free) = match nix::sys::sysinfo::sysinfo() {
        Ok(s) => (s.ram_total(), s.ram_unused()),
        Err(_) => (0, 0),
    };
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(free);
    Memory {
        total_bytes: total,
        available_bytes: available,
        page_size,
    }
}

/// Online CPUs, and the ones this process may run on (cgroup/affinity).
pub fn cores() -> (u64, u64) {
    let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .map(|n| n as u64)
        .unwrap_or(1);
    let usable = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(online);
    (online, usable)
}

/// Signs of a container or a VM, each a short phrase saying what was seen.
pub fn virtualization_hints() -> Vec<String> {
    let mut hints = Vec::new();
    if Path::new("/.dockerenv").exists() {
        hints.push("container: /.dockerenv exists".into());
    }
    if Path::new("/run/.containerenv").exists() {
        hints.push("container: /run/.containerenv exists (podman)".into());
    }
    if let Ok(c) = std::fs::read_to_string("/proc/1/cgroup") {
        for word in ["docker", "kubepods", "lxc", "containerd"] {
            if c.contains(word) {
                hints.push(format!("container: /proc/1/cgroup mentions {word}"));
                break;
            }
        }
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        hints.push("container: running in a Kubernetes pod".into());
    }
    if let Ok(cpu) = std::fs::read_to_string("/proc/cpuinfo") {
        if cpu
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"))
        {
            hints.push("VM: CPU flag `hypervisor` is set".into());
        }
    }
    if let Ok(t) = std::fs::read_to_string("/sys/hypervisor/type") {
        hints.push(format!("VM: /sys/hypervisor/type is {}", t.trim()));
    }
    if let Ok(p) = std::fs::read_to_string("/sys/class/dmi/id/product_name") {
        let p = p.trim();
        if [
            "KVM",
            "VMware",
            "VirtualBox",
            "HVM domU",
            "Google Compute Engine",
            "Virtual Machine",
        ]
        .iter()
        .any(|v| p.contains(v))
        {
            hints.push(format!("VM: DMI product name is {p}"));
        }
    }
    if in_child_netns() == Some(true) {
        hints.push("network: not the machine's first network namespace".into());
    }
    hints
}

/// Whether `dir` (normally /proc/sys) is on a read-only mount.
pub fn is_read_only(dir: &Path) -> bool {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

/// The start time of a process (field 22 of /proc/PID/stat), to tell a process
/// from a later one that reuses its pid.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_bits() {
        let c = Caps::from_mask(parse_cap_eff("Name:\tx\nCapEff:\t000001fffeffffff\n").unwrap());
        assert!(!c.cap_sys_resource);
        assert!(c.cap_net_admin && c.cap_sys_admin);
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(process_start_time(std::process::id() as i32).is_some());
    }
}
