//! `show`: this machine as the tuner sees it — kernel, cores, memory, container
//! and VM hints, capabilities, file limits, the network keys that bound a million
//! connections, and CPU governors. `capacity` starts from the same facts.

use crate::governor;
use crate::host::{self, Caps, Kernel, Memory};
use crate::output::{self, cell, Style, Table, Tone};
use crate::profile::{sysctl_path, Resource};
use crate::rlimit;
use crate::roots::Roots;
use crate::sysctl;
use crate::value::{format_number, parse_number};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Rlimit {
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    pub kernel: Kernel,
    pub cores_online: u64,
    pub cores_usable: u64,
    pub memory: Memory,
    pub hints: Vec<String>,
    /// "init", "child" or "unknown".
    pub network_namespace: String,
    pub uid: u32,
    pub capabilities: Caps,
    /// This process's RLIMIT_NOFILE (the tuner's, inherited from its caller).
    pub rlimit_nofile: Option<Rlimit>,
    pub proc_sys_read_only: bool,
    pub fs_nr_open: Option<u64>,
    pub fs_file_max: Option<u64>,
    /// Files open system-wide now (first field of fs.file-nr).
    pub fs_files_open: Option<u64>,
    pub ip_local_port_range: Option<(u64, u64)>,
    pub somaxconn: Option<u64>,
    pub tcp_mem_pages: Option<Vec<u64>>,
    pub tcp_mem_bytes: Option<Vec<u64>>,
    /// Per CPU, or empty when there is no cpufreq.
    pub governors: Vec<(String, String)>,
    pub cpufreq: bool,
}

fn read_sysctl(roots: &Roots, name: &str) -> Option<Vec<u64>> {
    let v = sysctl::read(&sysctl_path(&roots.proc, name)).ok()?;
    v.split_whitespace().map(parse_number).collect()
}

pub fn gather(roots: &Roots) -> Facts {
    let memory = host::memory();
    let (online, usable) = host::cores();
    let cpus = governor::cpus(&roots.sys);
    let tcp_mem = read_sysctl(roots, "net.ipv4.tcp_mem");
    Facts {
        kernel: host::kernel(),
        cores_online: online,
        cores_usable: usable,
        memory,
        hints: host::virtualization_hints(),
        network_namespace: match host::in_child_netns() {
            Some(true) => "child".into(),
            Some(false) => "init".into(),
            None => "unknown".into(),
        },
        uid: nix::unistd::geteuid().as_raw(),
        capabilities: host::caps(),
        rlimit_nofile: rlimit::get(0, Resource::Nofile).ok().map(|l| Rlimit {
            soft: l.soft,
            hard: l.hard,
        }),
        proc_sys_read_only: host::is_read_only(&roots.proc.join("sys")),
        fs_nr_open: read_sysctl(roots, "fs.nr_open").and_then(|v| v.first().copied()),
        fs_file_max: read_sysctl(roots, "fs.file-max").and_then(|v| v.first().copied()),
        fs_files_open: read_sysctl(roots, "fs.file-nr").and_then(|v| v.first().copied()),
        ip_local_port_range: read_sysctl(roots, "net.ipv4.ip_local_port_range")
            .and_then(|v| (v.len() == 2).then(|| (v[0], v[1]))),
        somaxconn: read_sysctl(roots, "net.core.somaxconn").and_then(|v| v.first().copied()),
        tcp_mem_bytes: tcp_mem
            .as_ref()
            .map(|v| v.iter().map(|p| p * memory.page_size).collect()),
        tcp_mem_pages: tcp_mem,
        cpufreq: !cpus.is_empty(),
        governors: cpus
            .iter()
            .map(|c| (c.name.clone(), c.current.trim().to_string()))
            .collect(),
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(output::count).unwrap_or_else(|| "absent".into())
}

fn yes_no(b: bool) -> (&'static str, Tone) {
    if b {
        ("yes", Tone::Good)
    } else {
        ("no", Tone::Warn)
    }
}

pub fn render(f: &Facts, style: Style) -> String {
    if style.json {
        return output::json(f);
    }
    let mut t = Table::new(&["item", "value", "note"]);
    let mut row = |k: &str, v: String, tone: Tone, note: &str| {
        t.row(vec![k.into(), cell(v, tone), note.into()]);
    };
    row(
        "kernel",
        format!(
            "{} {} {}",
            f.kernel.sysname, f.kernel.release, f.kernel.machine
        ),
        Tone::Plain,
        &f.kernel.hostname,
    );
    row(
        "cores",
        format!("{} online, {} usable", f.cores_online, f.cores_usable),
        Tone::Plain,
        "usable: this process's CPU affinity/cgroup",
    );
    row(
        "memory",
        format!(
            "{} total, {} available",
            output::bytes(f.memory.total_bytes),
            output::bytes(f.memory.available_bytes)
        ),
        Tone::Plain,
        &format!("page size {} B", f.memory.page_size),
    );
    if f.hints.is_empty() {
        row("container/VM", "no hints".into(), Tone::Plain, "");
    }
    for h in &f.hints {
        row("container/VM", h.clone(), Tone::Plain, "");
    }
    row(
        "network namespace",
        f.network_namespace.clone(),
        Tone::Plain,
        "child: global net.* keys are absent here",
    );
    row("uid", f.uid.to_string(), Tone::Plain, "");
    for (name, has, why) in [
        (
            "CAP_SYS_RESOURCE",
            f.capabilities.cap_sys_resource,
            "raise RLIMIT_NOFILE hard limit",
        ),
        (
            "CAP_NET_ADMIN",
            f.capabilities.cap_net_admin,
            "net.* sysctls of this namespace",
        ),
        (
            "CAP_SYS_ADMIN",
            f.capabilities.cap_sys_admin,
            "global sysctls (fs.*, vm.*)",
        ),
    ] {
        let (v, tone) = yes_no(has);
        row(name, v.into(), tone, why);
    }
    match &f.rlimit_nofile {
        Some(l) => {
            let note = if !f.capabilities.cap_sys_resource {
                format!(
                    "hard limit fixed at {}: no CAP_SYS_RESOURCE",
                    format_number(l.hard)
                )
            } else {
                "hard limit may be raised up to fs.nr_open".into()
            };
            row(
                "RLIMIT_NOFILE",
                format!(
                    "soft {}, hard {}",
                    format_number(l.soft),
                    format_number(l.hard)
                ),
                if f.capabilities.cap_sys_resource {
                    Tone::Plain
                } else {
                    Tone::Warn
                },
                &note,
            );
        }
        None => row("RLIMIT_NOFILE", "unknown".into(), Tone::Warn, ""),
    }
    row(
        "/proc/sys",
        if f.proc_sys_read_only {
            "read-only"
        } else {
            "writable"
        }
        .into(),
        if f.proc_sys_read_only {
            Tone::Warn
        } else {
            Tone::Plain
        },
        "read-only: a container without sysctl rights",
    );
    row(
        "fs.nr_open",
        opt(f.fs_nr_open),
        Tone::Plain,
        "ceiling for RLIMIT_NOFILE",
    );
    row(
        "fs.file-max",
        opt(f.fs_file_max),
        Tone::Plain,
        &format!("{} files open now", opt(f.fs_files_open)),
    );
    row(
        "ip_local_port_range",
        f.ip_local_port_range
            .map(|(a, b)| format!("{a}-{b}"))
            .unwrap_or_else(|| "absent".into()),
        Tone::Plain,
        &f.ip_local_port_range
            .map(|(a, b)| {
                format!(
                    "{} ephemeral ports per source address and destination",
                    b.saturating_sub(a) + 1
                )
            })
            .unwrap_or_default(),
    );
    row(
        "somaxconn",
        opt(f.somaxconn),
        Tone::Plain,
        "accept queue per listener",
    );
    row(
        "tcp_mem",
        match &f.tcp_mem_bytes {
            Some(b) => b
                .iter()
                .map(|x| output::bytes(*x))
                .collect::<Vec<_>>()
                .join(" / "),
            None => "absent (global: not in this network namespace)".into(),
        },
        Tone::Plain,
        &f.tcp_mem_pages
            .as_ref()
            .map(|p| {
                format!(
                    "min / pressure / max; pages {}",
                    p.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })
            .unwrap_or_default(),
    );
    if f.cpufreq {
        let mut gs: Vec<&str> = f.governors.iter().map(|(_, g)| g.as_str()).collect();
        gs.dedup();
        row(
            "CPU governor",
            gs.join(", "),
            Tone::Plain,
            &format!("{} CPUs with cpufreq", f.governors.len()),
        );
    } else {
        row(
            "CPU governor",
            "no cpufreq (VM)".into(),
            Tone::Warn,
            "the host decides CPU frequency",
        );
    }
    t.render(style.colour)
}
