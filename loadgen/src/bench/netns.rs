//! A fresh network namespace for the whole run: this process moves into it
//! before starting any thread or child, so everything it starts lives there
//! (loopback only, no conntrack rules, its own port range and backlogs) and
//! the namespace disappears when the last of them exits.

use std::collections::BTreeMap;
use std::process::Command;

use super::BenchError;

/// Unshares the network namespace, brings loopback up and writes the sysctls.
/// Must run before any thread is spawned: only the calling thread moves.
pub fn enter(sysctls: &BTreeMap<String, String>) -> Result<(), BenchError> {
    // SAFETY: unshare changes only this thread's namespace; no other thread exists yet.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(BenchError::Netns(format!(
            "unshare(CLONE_NEWNET): {} (needs root or CAP_SYS_ADMIN)",
            std::io::Error::last_os_error()
        )));
    }
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| {
            BenchError::Netns(format!(
                "cannot run `ip link set lo up`: {e} (install iproute2)"
            ))
        })?;
    if !st.success() {
        return Err(BenchError::Netns(format!(
            "`ip link set lo up` failed: {st}"
        )));
    }
    for (key, value) in sysctls {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| {
            BenchError::Netns(format!(
                "cannot set {key} = {value} in the namespace ({path}): {e}"
            ))
        })?;
    }
    Ok(())
}
