//! apply / check / diff / rollback / persist round trips against a fake /proc/sys
//! and /sys tree: values restored byte for byte, recovery after a crash half-way.

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;

/// Production's sysctls and governor only: its rlimit keys act on a real process
/// and are tested on a sleeping child separately.
const NO_RLIMITS: &[&str] = &["--only", "fs.", "--only", "net.", "--only", "cpu."];

fn args<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(tail).copied().collect()
}

#[test]
fn check_lists_every_key_with_status_and_reason_and_exits_1_when_off() {
    let f = Fake::new();
    let o = f.tuner(&args(
        &["check", "--profile", "production", "--json"],
        NO_RLIMITS,
    ));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = json(&o);
    assert_eq!(row(&r, "net.core.somaxconn")["status"], "off");
    assert_eq!(row(&r, "net.core.somaxconn")["current"], "4096");
    assert_eq!(row(&r, "net.core.somaxconn")["target"], "65535");
    assert_eq!(row(&r, "net.ipv4.tcp_wmem")["status"], "ok");
    assert_eq!(row(&r, "cpu.governor")["status"], "off");
    for k in r["keys"].as_array().unwrap() {
        assert!(!k["reason"].as_str().unwrap().is_empty(), "{k}");
    }
    // The table says the same for a person.
    let t = text(&f.tuner(&args(&["check", "--profile", "production"], NO_RLIMITS)));
    assert!(
        t.contains("net.core.somaxconn") && t.contains(" off "),
        "{t}"
    );
    assert!(!t.contains('\x1b'), "no colour when not on a terminal");
}

#[test]
fn diff_and_dry_run_write_nothing_and_show_what_would_change() {
    let f = Fake::new();
    let before = f.snapshot();
    let d = f.tuner(&args(
        &["diff", "--profile", "production", "--json"],
        NO_RLIMITS,
    ));
    assert_eq!(d.status.code(), Some(1), "{}", text(&d));
    let dr = f.tuner(&args(
        &["apply", "--profile", "production", "--dry-run", "--json"],
        NO_RLIMITS,
    ));
    assert_eq!(json(&d), json(&dr), "diff is apply --dry-run");
    let r = json(&d);
    let rmem = row(&r, "net.ipv4.tcp_rmem");
    assert_eq!(rmem["outcome"], "would_change");
    assert_eq!(rmem["after"], "4096 16384 33554432");
    assert_eq!(f.snapshot(), before);
    assert!(!f.state().exists(), "a dry run saves no state");
}

#[test]
fn apply_then_check_is_clean_and_rollback_restores_every_byte() {
    let f = Fake::new();
    let before = f.snapshot();
    let a = f.tuner(&args(
        &["apply", "--profile", "production", "--json"],
        NO_RLIMITS,
    ));
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    let r = json(&a);
    assert_eq!(row(&r, "net.core.somaxconn")["outcome"], "changed");
    assert_eq!(row(&r, "net.ipv4.tcp_wmem")["outcome"], "unchanged");
    assert_eq!(f.sysctl("net/core/somaxconn"), "65535\n");
    assert_eq!(f.sysctl("net/ipv4/tcp_rmem"), "4096 16384 33554432\n");
    assert_eq!(f.sysctl("net/ipv4/tcp_fin_timeout"), "15\n");
    assert_eq!(f.sysctl("fs/nr_open"), "16777216\n");
    assert_eq!(f.governor("cpu0"), "performance\n");
    assert!(f.state().join("state.json").exists());

    let c = f.tuner(&args(&["check", "--profile", "production"], NO_RLIMITS));
    assert_eq!(c.status.code(), Some(0), "{}", text(&c));

    let rb = f.tuner(&["rollback", "--json"]);
    assert_eq!(rb.status.code(), Some(0), "{}", text(&rb));
    assert_eq!(json(&rb)["state_removed"], true);
    assert_eq!(f.snapshot(), before, "rollback restores byte for byte");
    assert_eq!(f.sysctl("net/ipv4/tcp_rmem"), "4096\t131072\t33554432\n");
    assert!(!f.state().join("state.json").exists());

    let again = f.tuner(&["rollback"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(text(&again).contains("nothing to roll back"));
}

#[test]
fn second_apply_keeps_the_first_originals() {
    let f = Fake::new();
    let before = f.snapshot();
    let lib = profile_dir(&[(
        "small",
        "description: test\nkeys:\n  net.core.somaxconn:\n    value: \">= 8192\"\n    reason: test\n",
    )]);
    let p = lib.path().to_str().unwrap();
    assert_eq!(
        f.tuner(&["--profiles", p, "apply", "--profile", "small"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(f.sysctl("net/core/somaxconn"), "8192\n");
    let a = f.tuner(&args(
        &["apply", "--profile", "production", "--json"],
        NO_RLIMITS,
    ));
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert_eq!(row(&json(&a), "net.core.somaxconn")["before"], "8192");
    // Nothing left to change: the second run writes nothing.
    let again = f.tuner(&args(
        &["apply", "--profile", "production", "--json"],
        NO_RLIMITS,
    ));
    for k in json(&again)["keys"].as_array().unwrap() {
        assert_eq!(k["outcome"], "unchanged", "{k}");
    }
    assert_eq!(f.tuner(&["rollback"]).status.code(), Some(0));
    assert_eq!(f.snapshot(), before, "back to before the first apply");
}

#[test]
fn rollback_after_a_crash_half_way_restores_everything() {
    let f = Fake::new();
    let before = f.snapshot();
    let crashed = f.tuner_env(
        &args(&["apply", "--profile", "production"], NO_RLIMITS),
        &[("TUNER_CRASH_AFTER_WRITES", "4")],
    );
    assert_eq!(
        crashed.status.signal(),
        Some(libc::SIGABRT),
        "{}",
        text(&crashed)
    );
    let changed = f
        .snapshot()
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(v))
        .count();
    assert_eq!(changed, 4, "exactly four writes happened before the crash");
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.state().join("state.json")).unwrap()).unwrap();
    assert!(
        st["entries"].as_array().unwrap().len() > 4,
        "every original saved first"
    );

    let rb = f.tuner(&["rollback"]);
    assert_eq!(rb.status.code(), Some(0), "{}", text(&rb));
    assert_eq!(f.snapshot(), before);
}

#[test]
fn strict_stops_at_the_first_failure_and_leaves_a_way_back() {
    let f = Fake::new();
    let before = f.snapshot();
    let sleeper = Sleeper::new();
    // No kernel accepts a hard limit above fs.nr_open's maximum (1073741816), with or
    // without CAP_SYS_RESOURCE, so this key fails everywhere.
    let lib = profile_dir(&[(
        "impossible",
        r#"description: test
include: [production]
keys:
  rlimit.nofile.hard:
    value: ">= 2000000000"
    reason: test
"#,
    )]);
    let p = lib.path().to_str().unwrap();
    let o = f.tuner(&[
        "--profiles",
        p,
        "--pid",
        &sleeper.pid(),
        "--only",
        "net.core",
        "--only",
        "rlimit.",
        "--only",
        "cpu.",
        "apply",
        "--profile",
        "impossible",
        "--strict",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = json(&o);
    assert_eq!(r["stopped_at"], "rlimit.nofile.hard");
    let hard = row(&r, "rlimit.nofile.hard");
    assert_eq!(hard["outcome"], "failed");
    let class = hard["failure"]["class"].as_str().unwrap();
    assert!(
        class == "missing_capability" || class == "invalid_value",
        "{hard}"
    );
    assert!(!hard["failure"]["fix"].as_str().unwrap().is_empty());
    assert_eq!(row(&r, "cpu.governor")["outcome"], "not_reached");
    assert_eq!(f.governor("cpu0"), "powersave\n");
    assert_eq!(
        f.sysctl("net/core/somaxconn"),
        "65535\n",
        "keys before the failure were applied"
    );
    assert!(r["undo"].as_str().unwrap().starts_with("tuner rollback"));
    assert_eq!(f.tuner(&["rollback"]).status.code(), Some(0));
    assert_eq!(f.snapshot(), before);
}

#[test]
fn without_strict_apply_goes_on_past_a_failure() {
    let f = Fake::new();
    let sleeper = Sleeper::new();
    let lib = profile_dir(&[(
        "impossible",
        "include: [production]\nkeys:\n  rlimit.nofile.hard:\n    value: \">= 2000000000\"\n    reason: test\n",
    )]);
    let p = lib.path().to_str().unwrap();
    let o = f.tuner(&[
        "--profiles",
        p,
        "--pid",
        &sleeper.pid(),
        "--only",
        "rlimit.nofile.hard",
        "--only",
        "cpu.",
        "apply",
        "--profile",
        "impossible",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(row(&json(&o), "cpu.governor")["outcome"], "changed");
    assert_eq!(f.governor("cpu1"), "performance\n");
    assert_eq!(f.tuner(&["rollback"]).status.code(), Some(0));
    assert_eq!(f.governor("cpu1"), "powersave\n");
}

#[test]
fn rlimits_of_the_target_process_round_trip() {
    let f = Fake::new();
    let sleeper = Sleeper::new();
    let original = sleeper.nofile();
    let lib = profile_dir(&[(
        "low",
        "keys:\n  rlimit.nofile.soft:\n    value: \"<= 1024\"\n    reason: test\n",
    )]);
    let p = lib.path().to_str().unwrap();
    let o = f.tuner(&[
        "--profiles",
        p,
        "--pid",
        &sleeper.pid(),
        "apply",
        "--profile",
        "low",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(sleeper.nofile().0, "1024");
    assert_eq!(sleeper.nofile().1, original.1);

    // The container profile raises soft back to the hard limit, whatever that is.
    let c = f.tuner(&[
        "--pid",
        &sleeper.pid(),
        "check",
        "--profile",
        "container",
        "--only",
        "rlimit.",
        "--json",
    ]);
    assert_eq!(c.status.code(), Some(1));
    assert_eq!(
        row(&json(&c), "rlimit.nofile.soft")["target"],
        original.1.as_str()
    );

    assert_eq!(f.tuner(&["rollback"]).status.code(), Some(0));
    assert_eq!(sleeper.nofile(), original);
}

#[test]
fn soft_limit_goes_up_to_the_hard_limit_when_the_hard_one_cannot() {
    let f = Fake::new();
    let sleeper = Sleeper::new();
    let original = sleeper.nofile();
    let lib = profile_dir(&[
        (
            "low",
            "keys:\n  rlimit.nofile.soft:\n    value: \"<= 1024\"\n    reason: test\n",
        ),
        (
            "high",
            "keys:\n  rlimit.nofile.soft:\n    value: \">= 2000000000\"\n    reason: test\n",
        ),
    ]);
    let p = lib.path().to_str().unwrap();
    let pid = sleeper.pid();
    assert_eq!(
        f.tuner(&["--profiles", p, "--pid", &pid, "apply", "--profile", "low"])
            .status
            .code(),
        Some(0)
    );
    let o = f.tuner(&[
        "--profiles",
        p,
        "--pid",
        &pid,
        "apply",
        "--profile",
        "high",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let soft = row(&json(&o), "rlimit.nofile.soft").clone();
    assert_eq!(soft["outcome"], "partial");
    assert_eq!(soft["after"], original.1.as_str());
    assert!(
        soft["failure"]["why"]
            .as_str()
            .unwrap()
            .contains("hard limit"),
        "{soft}"
    );
    assert_eq!(sleeper.nofile().0, original.1);
    assert_eq!(f.tuner(&["rollback"]).status.code(), Some(0));
    assert_eq!(sleeper.nofile(), original);
}

#[test]
fn absent_keys_and_missing_cpufreq_are_skipped_with_their_class() {
    let f = Fake::without_cpufreq();
    std::fs::remove_file(f.proc().join("sys/net/netfilter/nf_conntrack_max")).unwrap();
    std::fs::remove_file(f.proc().join("sys/net/core/netdev_max_backlog")).unwrap();
    let o = f.tuner(&args(
        &["check", "--profile", "production", "--json"],
        NO_RLIMITS,
    ));
    let r = json(&o);
    let g = row(&r, "cpu.governor");
    assert_eq!(g["status"], "skipped");
    assert_eq!(g["class"], "no_cpufreq");
    assert_eq!(g["current"], "no cpufreq (VM)");
    let ct = row(&r, "net.netfilter.nf_conntrack_max");
    assert_eq!(ct["status"], "skipped");
    assert!(ct["note"].as_str().unwrap().starts_with("optional"));
    assert_eq!(row(&r, "net.core.netdev_max_backlog")["status"], "skipped");

    let a = f.tuner(&args(
        &["apply", "--profile", "production", "--json"],
        NO_RLIMITS,
    ));
    assert_eq!(
        a.status.code(),
        Some(0),
        "skipped keys do not fail apply: {}",
        text(&a)
    );
    assert_eq!(row(&json(&a), "cpu.governor")["outcome"], "skipped");
    assert_eq!(f.tuner(&["rollback"]).status.code(), Some(0));
}

#[test]
fn governor_falls_back_when_the_wanted_one_is_not_offered() {
    let f = Fake::new();
    for cpu in ["cpu0", "cpu1"] {
        let d = f.sys().join("devices/system/cpu").join(cpu).join("cpufreq");
        std::fs::write(
            d.join("scaling_available_governors"),
            "schedutil powersave\n",
        )
        .unwrap();
    }
    let o = f.tuner(&["--only", "cpu.", "apply", "--profile", "production"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(f.governor("cpu0"), "schedutil\n");
    assert_eq!(f.tuner(&["rollback"]).status.code(), Some(0));
    assert_eq!(f.governor("cpu0"), "powersave\n");
}

#[test]
fn persist_writes_the_three_files_and_nothing_else() {
    let f = Fake::new();
    let before = f.snapshot();
    let sleeper = Sleeper::new();
    let o = f.tuner(&[
        "--pid",
        &sleeper.pid(),
        "persist",
        "--profile",
        "production",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let etc = f.root().join("etc");
    let mut files: Vec<String> = Vec::new();
    fn walk(d: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), base, out);
            } else {
                out.push(e.path().strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    walk(&etc, &etc, &mut files);
    files.sort();
    assert_eq!(
        files,
        [
            "security/limits.d/60-speedmimi.conf",
            "sysctl.d/60-speedmimi-production.conf",
            "systemd/system/speedmimi.service.d/60-speedmimi-limits.conf",
        ]
    );
    let sysctl =
        std::fs::read_to_string(etc.join("sysctl.d/60-speedmimi-production.conf")).unwrap();
    assert!(sysctl.contains("fs.nr_open = 16777216\n"), "{sysctl}");
    assert!(
        sysctl.contains("net.ipv4.tcp_rmem = 4096 16384 33554432\n"),
        "{sysctl}"
    );
    assert!(
        sysctl.contains("net.ipv4.tcp_wmem = 4096 16384 4194304\n"),
        "a satisfied bound keeps the current value"
    );
    assert!(
        sysctl.contains("# ceiling for RLIMIT_NOFILE"),
        "reasons are comments"
    );
    let dropin = std::fs::read_to_string(
        etc.join("systemd/system/speedmimi.service.d/60-speedmimi-limits.conf"),
    )
    .unwrap();
    assert!(
        dropin.contains("[Service]\nLimitNOFILE=12000000:12000000\n"),
        "{dropin}"
    );
    let limits = std::fs::read_to_string(etc.join("security/limits.d/60-speedmimi.conf")).unwrap();
    assert!(limits.contains("soft    nofile   12000000"), "{limits}");
    assert!(limits.contains("hard    nofile   12000000"), "{limits}");
    assert_eq!(f.snapshot(), before, "persist changes no live value");
    assert!(!f.state().exists());
    let r = json(&o);
    assert!(r["undo"].as_str().unwrap().starts_with("rm "));
}

#[test]
fn profiles_from_a_directory_override_and_include_the_built_ins() {
    let f = Fake::new();
    let lib = profile_dir(&[
        (
            "edge",
            r#"description: production with a deeper accept queue
include: [production]
keys:
  net.core.somaxconn:
    value: 131072
    reason: edge boxes take connection storms
"#,
        ),
        ("production", "description: overridden\nkeys:\n  net.ipv4.tcp_tw_reuse:\n    value: 1\n    reason: only this\n"),
    ]);
    let p = lib.path().to_str().unwrap();
    let list = json(&f.tuner(&["--profiles", p, "profiles", "--json"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"edge") && names.contains(&"latency"),
        "{names:?}"
    );
    let r = json(&f.tuner(&["--profiles", p, "check", "--profile", "edge", "--json"]));
    let k = row(&r, "net.core.somaxconn");
    assert_eq!(k["wanted"], "131072");
    assert_eq!(k["profile"], "edge");
    assert_eq!(
        r["keys"].as_array().unwrap().len(),
        2,
        "edge includes the overriding production file"
    );
}

#[test]
fn built_in_profiles_are_listed_with_what_they_are_for() {
    let f = Fake::new();
    let o = f.tuner(&["profiles"]);
    assert_eq!(o.status.code(), Some(0));
    let t = text(&o);
    for p in [
        "production",
        "latency",
        "throughput",
        "loadgen",
        "container",
    ] {
        assert!(t.contains(p), "{t}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let f = Fake::new();
    let o = f.tuner(&["check", "--profile", "nonesuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("tuner profiles"), "{}", text(&o));
    assert_eq!(f.tuner(&["check"]).status.code(), Some(2));
    assert_eq!(f.tuner(&["frobnicate"]).status.code(), Some(2));
    let lib = profile_dir(&[(
        "bad",
        "keys:\n  net.core.somaxconn:\n    value: \">= lots\"\n    reason: x\n",
    )]);
    let o = f.tuner(&[
        "--profiles",
        lib.path().to_str().unwrap(),
        "check",
        "--profile",
        "bad",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("net.core.somaxconn"), "{}", text(&o));
}

#[test]
fn apply_refuses_while_another_run_holds_the_state() {
    let f = Fake::new();
    let before = f.snapshot();
    let held = tuner::state::lock(&f.state()).unwrap();
    let o = f.tuner(&args(&["apply", "--profile", "production"], NO_RLIMITS));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("another tuner apply or rollback"),
        "{}",
        text(&o)
    );
    assert_eq!(f.snapshot(), before, "nothing written without the lock");
    drop(held);
    let o = f.tuner(&args(&["apply", "--profile", "production"], NO_RLIMITS));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(f.tuner(&["rollback"]).status.code(), Some(0));
    assert_eq!(f.snapshot(), before);
}
