//! For real, inside fresh network namespaces: apply production's namespaced keys,
//! check them, roll back, and verify the host's values never changed. Needs root
//! (CAP_SYS_ADMIN for unshare); skipped with a message otherwise.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: network-namespace tests need root (unshare(CLONE_NEWNET)); run `cargo test -p tuner` as root");
    false
}

/// production's net.* keys, as /proc/sys paths.
fn namespaced_keys() -> Vec<(String, PathBuf)> {
    let p = tuner::profile::Library::default()
        .load("production")
        .unwrap();
    p.keys
        .iter()
        .filter(|k| k.key.starts_with("net."))
        .map(|k| {
            (
                k.key.clone(),
                tuner::profile::sysctl_path(Path::new("/proc"), &k.key),
            )
        })
        .collect()
}

fn read_all(keys: &[(String, PathBuf)]) -> BTreeMap<String, Option<Vec<u8>>> {
    keys.iter()
        .map(|(k, p)| (k.clone(), std::fs::read(p).ok()))
        .collect()
}

/// Run `script` with sh in new namespaces (`flags`), with $T the tuner binary and $O an output dir.
fn in_namespace(flags: nix::sched::CloneFlags, script: &str, out: &Path) -> std::process::Output {
    let mut c = Command::new("sh");
    c.arg("-ec")
        .arg(script)
        .env("T", TUNER)
        .env("O", out)
        .env_remove("TUNER_CRASH_AFTER_WRITES");
    // SAFETY: unshare(2) is a plain syscall, safe between fork and exec; nothing is allocated.
    unsafe {
        c.pre_exec(move || nix::sched::unshare(flags).map_err(std::io::Error::from));
    }
    c.output().unwrap()
}

fn snapshot_script(keys: &[(String, PathBuf)], tag: &str) -> String {
    keys.iter()
        .map(|(k, p)| format!("cat {} > $O/{tag}.{k} 2>/dev/null || true\n", p.display()))
        .collect()
}

fn file(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join(name)).unwrap_or_else(|_| panic!("no {name}"))
}

#[test]
fn production_namespaced_keys_apply_check_and_roll_back_without_touching_the_host() {
    if !is_root() {
        return;
    }
    let keys = namespaced_keys();
    let host_before = read_all(&keys);
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    let script = format!(
        "{before}\
         set +e\n\
         $T --state $O/state apply --profile production --only net. --json > $O/apply.json; echo $? > $O/apply.rc\n\
         $T --state $O/state check --profile production --only net. --json > $O/check.json; echo $? > $O/check.rc\n\
         $T --state $O/state rollback --json > $O/rollback.json; echo $? > $O/rollback.rc\n\
         $T show --json > $O/show.json\n\
         {after}",
        before = snapshot_script(&keys, "before"),
        after = snapshot_script(&keys, "after"),
    );
    let r = in_namespace(nix::sched::CloneFlags::CLONE_NEWNET, &script, o);
    assert!(r.status.success(), "{}", text(&r));

    // Inside: what apply did.
    let apply: serde_json::Value = serde_json::from_str(&file(o, "apply.json")).unwrap();
    for k in [
        "net.core.somaxconn",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_tw_reuse",
    ] {
        let outcome = row(&apply, k)["outcome"].as_str().unwrap().to_string();
        assert!(
            outcome == "changed" || outcome == "unchanged",
            "{k}: {outcome}"
        );
    }
    // tcp_mem is global: the kernel does not show it in a child namespace.
    let mem = row(&apply, "net.ipv4.tcp_mem");
    assert_eq!(mem["outcome"], "skipped");
    assert_eq!(mem["class"], "absent_in_netns");
    // Keys the host owns are read-only here (nf_conntrack_max, and rmem_max on 6.x).
    for k in apply["keys"].as_array().unwrap() {
        if k["outcome"] == "failed" {
            assert_eq!(k["failure"]["class"], "read_only", "{k}");
        }
    }
    let rc: i32 = file(o, "apply.rc").trim().parse().unwrap();
    let any_failed = apply["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["outcome"] == "failed");
    assert_eq!(rc, i32::from(any_failed));

    // check sees the applied values.
    let check: serde_json::Value = serde_json::from_str(&file(o, "check.json")).unwrap();
    assert_eq!(row(&check, "net.core.somaxconn")["status"], "ok");
    assert_eq!(
        row(&check, "net.ipv4.ip_local_port_range")["current"],
        "1024 65535"
    );
    assert_eq!(row(&check, "net.ipv4.tcp_fin_timeout")["status"], "ok");

    // rollback restored the namespace's values byte for byte.
    assert_eq!(
        file(o, "rollback.rc").trim(),
        "0",
        "{}",
        file(o, "rollback.json")
    );
    for (k, _) in &keys {
        let b = std::fs::read(o.join(format!("before.{k}"))).ok();
        let a = std::fs::read(o.join(format!("after.{k}"))).ok();
        assert_eq!(b, a, "{k} restored byte for byte inside the namespace");
    }
    assert!(file(o, "before.net.ipv4.ip_local_port_range").contains('\t'));
    let show: serde_json::Value = serde_json::from_str(&file(o, "show.json")).unwrap();
    assert_eq!(show["network_namespace"], "child");

    // The host never changed.
    assert_eq!(read_all(&keys), host_before, "host values untouched");
}

#[test]
fn strict_stops_inside_a_namespace_and_rollback_still_restores() {
    if !is_root() {
        return;
    }
    let keys = namespaced_keys();
    let host_before = read_all(&keys);
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    let script = format!(
        "{before}\
         set +e\n\
         $T --state $O/state apply --profile production --only net. --strict --json > $O/apply.json; echo $? > $O/apply.rc\n\
         $T --state $O/state rollback > $O/rollback.txt; echo $? > $O/rollback.rc\n\
         {after}",
        before = snapshot_script(&keys, "before"),
        after = snapshot_script(&keys, "after"),
    );
    let r = in_namespace(nix::sched::CloneFlags::CLONE_NEWNET, &script, o);
    assert!(r.status.success(), "{}", text(&r));
    let apply: serde_json::Value = serde_json::from_str(&file(o, "apply.json")).unwrap();
    if file(o, "apply.rc").trim() == "1" {
        let stop = apply["stopped_at"]
            .as_str()
            .expect("strict names where it stopped");
        let rows = apply["keys"].as_array().unwrap();
        let at = rows.iter().position(|k| k["key"] == stop).unwrap();
        assert!(rows[at + 1..].iter().all(|k| k["outcome"] != "changed"));
    }
    assert_eq!(
        file(o, "rollback.rc").trim(),
        "0",
        "{}",
        file(o, "rollback.txt")
    );
    for (k, _) in &keys {
        let b = std::fs::read(o.join(format!("before.{k}"))).ok();
        let a = std::fs::read(o.join(format!("after.{k}"))).ok();
        assert_eq!(b, a, "{k}");
    }
    assert_eq!(read_all(&keys), host_before, "host values untouched");
}

#[test]
fn read_only_proc_sys_is_classified_and_nothing_changes() {
    if !is_root() {
        return;
    }
    let keys = namespaced_keys();
    let host_before = read_all(&keys);
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    // A container's view: /proc/sys bind-mounted read-only, in private mount and network namespaces.
    let script = format!(
        "mount --make-rprivate /\n\
         mount --bind /proc/sys /proc/sys\n\
         mount -o remount,bind,ro /proc/sys\n\
         {before}\
         set +e\n\
         $T --state $O/state apply --profile container --only net. --json > $O/apply.json; echo $? > $O/apply.rc\n\
         $T show --json > $O/show.json\n\
         {after}",
        before = snapshot_script(&keys, "before"),
        after = snapshot_script(&keys, "after"),
    );
    let flags = nix::sched::CloneFlags::CLONE_NEWNET | nix::sched::CloneFlags::CLONE_NEWNS;
    let r = in_namespace(flags, &script, o);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(file(o, "apply.rc").trim(), "1");
    let apply: serde_json::Value = serde_json::from_str(&file(o, "apply.json")).unwrap();
    let k = row(&apply, "net.core.somaxconn");
    assert_eq!(k["outcome"], "failed");
    assert_eq!(k["failure"]["class"], "read_only");
    assert!(k["failure"]["why"].as_str().unwrap().contains("read-only"));
    let show: serde_json::Value = serde_json::from_str(&file(o, "show.json")).unwrap();
    assert_eq!(show["proc_sys_read_only"], true);
    for (k, _) in &keys {
        let b = std::fs::read(o.join(format!("before.{k}"))).ok();
        let a = std::fs::read(o.join(format!("after.{k}"))).ok();
        assert_eq!(b, a, "{k}");
    }
    assert_eq!(read_all(&keys), host_before, "host values untouched");
}

#[test]
fn a_non_root_user_is_told_which_capability_is_missing() {
    if !is_root() {
        return;
    }
    let keys = namespaced_keys();
    let host_before = read_all(&keys);
    let state = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let nobody = nix::unistd::Uid::from_raw(65534);
    let nogroup = nix::unistd::Gid::from_raw(65534);
    let mut c = Command::new(TUNER);
    c.args(["--state"])
        .arg(state.path().join("s"))
        .args([
            "apply",
            "--profile",
            "container",
            "--only",
            "net.core.somaxconn",
            "--json",
        ])
        .env_remove("TUNER_CRASH_AFTER_WRITES");
    // SAFETY: unshare, setgroups, setgid and setuid are plain syscalls, safe between
    // fork and exec; nothing is allocated (the empty group list needs no buffer).
    unsafe {
        c.pre_exec(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(nogroup)?;
            nix::unistd::setuid(nobody)?;
            Ok(())
        });
    }
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = json(&o);
    let k = row(&r, "net.core.somaxconn");
    assert_eq!(k["outcome"], "failed");
    assert_eq!(k["failure"]["class"], "missing_capability");
    assert!(
        k["failure"]["fix"]
            .as_str()
            .unwrap()
            .contains("CAP_NET_ADMIN"),
        "{k}"
    );
    assert_eq!(read_all(&keys), host_before, "host values untouched");
}
