//! Why a key could not be set, in the classes a person acts on differently, each
//! with what went wrong and what to do about it.

use serde::Serialize;
use std::io;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// /proc/sys (or this key) cannot be written here: a container's read-only mount.
    ReadOnly,
    /// A net.* key the kernel only has in the machine's first network namespace.
    AbsentInNetns,
    /// The kernel has no such key (older kernel, module not loaded).
    Absent,
    /// Not allowed: a capability (CAP_SYS_RESOURCE, CAP_NET_ADMIN, CAP_SYS_ADMIN) or root is missing.
    MissingCapability,
    /// The kernel refused the value.
    InvalidValue,
    /// No /sys/devices/system/cpu/*/cpufreq: a VM or a kernel without cpufreq.
    NoCpufreq,
    /// Anything else (an I/O error).
    Other,
}

impl Class {
    pub fn label(self) -> &'static str {
        match self {
            Class::ReadOnly => "read-only",
            Class::AbsentInNetns => "absent in this network namespace",
            Class::Absent => "absent",
            Class::MissingCapability => "missing capability",
            Class::InvalidValue => "invalid value",
            Class::NoCpufreq => "no cpufreq",
            Class::Other => "error",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    pub class: Class,
    /// What happened, naming the key and the value.
    pub why: String,
    /// What a person can do about it.
    pub fix: String,
}

impl Failure {
    pub fn new(class: Class, why: impl Into<String>, fix: impl Into<String>) -> Failure {
        Failure {
            class,
            why: why.into(),
            fix: fix.into(),
        }
    }
}

/// A sysctl that does not exist here.
pub fn absent_sysctl(key: &str, child_netns: Option<bool>) -> Failure {
    if key.starts_with("net.") && child_netns == Some(true) {
        Failure::new(
            Class::AbsentInNetns,
            format!("{key} is global: the kernel shows it only in the machine's first network namespace"),
            "set it on the host (or leave it to the host's profile)",
        )
    } else {
        Failure::new(
            Class::Absent,
            format!("{key} does not exist on this kernel (too old, or its module is not loaded)"),
            "load the module (e.g. nf_conntrack) or drop the key from the profile",
        )
    }
}

/// Classify a failed write of `value` to sysctl `key` at `path`.
pub fn sysctl_write(
    key: &str,
    value: &str,
    path: &Path,
    err: &io::Error,
    child_netns: Option<bool>,
) -> Failure {
    let read_only_file = std::fs::metadata(path)
        .map(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o222 == 0
        })
        .unwrap_or(false);
    match err.raw_os_error() {
        Some(libc::EROFS) => Failure::new(
            Class::ReadOnly,
            format!("{key}: /proc/sys is mounted read-only (a container)"),
            "set it from the host, or in the pod/container spec (e.g. securityContext.sysctls, docker --sysctl)",
        ),
        Some(libc::EACCES) | Some(libc::EPERM) if read_only_file => Failure::new(
            Class::ReadOnly,
            format!("{key} is read-only here (mode {}): the host owns it", mode_text(path)),
            "set it on the host, outside this namespace",
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => Failure::new(
            Class::MissingCapability,
            format!(
                "{key}: not allowed to write {value} ({err})"
            ),
            if key.starts_with("net.") {
                "run as root with CAP_NET_ADMIN in the key's network namespace"
            } else {
                "run as root with CAP_SYS_ADMIN"
            },
        ),
        Some(libc::ENOENT) if path.exists() => Failure::new(
            Class::InvalidValue,
            format!("{key}: the kernel does not know `{value}` ({err})"),
            "pick a value the kernel offers (e.g. a loaded congestion control or qdisc)",
        ),
        Some(libc::ENOENT) => absent_sysctl(key, child_netns),
        Some(libc::EINVAL) | Some(libc::ERANGE) | Some(libc::EIO) => Failure::new(
            Class::InvalidValue,
            format!("{key}: the kernel rejected `{value}` ({err})"),
            "check the key's range and field count in the kernel's sysctl docs and fix the profile",
        ),
        _ => Failure::new(
            Class::Other,
            format!("{key}: cannot write `{value}` to {}: {err}", path.display()),
            "see the error; nothing else was changed for this key",
        ),
    }
}

fn mode_text(path: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| format!("{:o}", m.permissions().mode() & 0o777))
        .unwrap_or_else(|_| "?".into())
}

pub fn no_cpufreq() -> Failure {
    Failure::new(
        Class::NoCpufreq,
        "no cpufreq under /sys/devices/system/cpu: a VM, or a kernel without frequency scaling",
        "nothing to do here; on a VM the host decides the CPU frequency",
    )
}
