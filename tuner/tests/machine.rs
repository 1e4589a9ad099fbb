//! This machine's real situation (RLIMIT_NOFILE hard limit, CAP_SYS_RESOURCE,
//! cpufreq) as show, check and capacity report it, checked against getrlimit and
//! /proc/self/status rather than hard-coded figures. Read-only: writes nothing.

mod common;

use common::*;
use std::process::Command;

fn tuner(args: &[&str]) -> std::process::Output {
    Command::new(TUNER)
        .args(args)
        .env_remove("TUNER_CRASH_AFTER_WRITES")
        .output()
        .unwrap()
}

fn nofile() -> (u64, u64) {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap()
}

fn has_cap_sys_resource() -> bool {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = s
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap() & (1 << 24) != 0
}

fn has_cpufreq() -> bool {
    std::fs::read_dir("/sys/devices/system/cpu")
        .map(|rd| {
            rd.flatten()
                .any(|e| e.path().join("cpufreq/scaling_governor").exists())
        })
        .unwrap_or(false)
}

#[test]
fn show_reports_this_machines_file_limit_capabilities_and_cpufreq() {
    let o = tuner(&["show", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let f = json(&o);
    let (soft, hard) = nofile();
    assert_eq!(f["rlimit_nofile"]["soft"], soft);
    assert_eq!(f["rlimit_nofile"]["hard"], hard);
    assert_eq!(
        f["capabilities"]["cap_sys_resource"],
        has_cap_sys_resource()
    );
    assert_eq!(f["cpufreq"], has_cpufreq());
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(f["fs_nr_open"], nr_open);
    assert!(f["cores_online"].as_u64().unwrap() >= 1);
    assert!(f["memory"]["total_bytes"].as_u64().unwrap() > 0);

    let t = text(&tuner(&["show"]));
    assert!(t.contains(&format!("hard {hard}")), "{t}");
    if !has_cap_sys_resource() {
        assert!(
            t.contains(&format!("hard limit fixed at {hard}: no CAP_SYS_RESOURCE")),
            "{t}"
        );
    }
    if !has_cpufreq() {
        assert!(t.contains("no cpufreq (VM)"), "{t}");
    }
}

#[test]
fn check_reports_this_machines_nofile_and_governor() {
    // The rlimit keys are about tuner's parent: this test process.
    let o = tuner(&[
        "check",
        "--profile",
        "production",
        "--only",
        "rlimit.",
        "--only",
        "cpu.",
        "--json",
    ]);
    let r = json(&o);
    let (soft, hard) = nofile();
    let h = row(&r, "rlimit.nofile.hard");
    assert_eq!(h["current"], hard.to_string());
    assert_eq!(h["status"], if hard >= 12_000_000 { "ok" } else { "off" });
    assert_eq!(row(&r, "rlimit.nofile.soft")["current"], soft.to_string());
    let g = row(&r, "cpu.governor");
    if has_cpufreq() {
        assert_ne!(g["status"], "skipped");
    } else {
        assert_eq!(g["status"], "skipped");
        assert_eq!(g["class"], "no_cpufreq");
    }
    assert_eq!(o.status.code(), Some(i32::from(hard < 12_000_000)));
}

#[test]
fn capacity_for_a_million_connections_names_what_stops_it() {
    let o = tuner(&["capacity", "--connections", "1000000", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let p = json(&o);
    let (_, hard) = nofile();
    assert_eq!(p["fds_total"], 1_100_000);
    assert_eq!(p["ram_bytes_needed"], 1_000_000u64 * (2800 + 256));
    let range: Vec<u64> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let per_source = 20_000u64.min(range[1] - range[0] + 1);
    assert_eq!(p["source_addresses"], 1_000_000u64.div_ceil(per_source));
    if !has_cap_sys_resource() {
        let processes = 1_100_000u64.div_ceil(hard);
        assert_eq!(p["processes"], processes);
        let stop = format!(
            "RLIMIT_NOFILE hard limit {hard} and no CAP_SYS_RESOURCE: run the proxy with processes: {processes}"
        );
        assert!(
            p["stops"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s.as_str().unwrap().starts_with(&stop)),
            "{p}"
        );
        assert_ne!(p["verdict"], "yes");
    }
    let t = text(&tuner(&[
        "capacity",
        "--connections",
        "1000000",
        "--rps",
        "50000",
    ]));
    assert!(
        t.contains("measured: speedmimi") && t.contains("18.8"),
        "the built-in CPU figure says where it comes from: {t}"
    );
    assert!(
        t.contains("can this machine hold 1,000,000 connections"),
        "{t}"
    );
    assert_eq!(
        o.status.code(),
        Some(i32::from(t.contains("connections: no")))
    );
}

#[test]
fn capacity_exits_1_when_this_machine_cannot() {
    // A billion connections at 2.8 KB each needs terabytes of RAM.
    let o = tuner(&["capacity", "--connections", "1000000000", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let p = json(&o);
    assert_eq!(p["verdict"], "no");
    assert!(p["stops"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s.as_str().unwrap().starts_with("RAM")));
}

#[test]
fn capacity_reads_measured_costs_from_a_results_file() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("bench.json");
    std::fs::write(
        &f,
        r#"{"summary":{"rps":20000},"proxy":{"cpu_us_per_request":"19.5","rss_bytes_per_conn":300},"kernel_bytes_per_conn":3000,"unknown":[1]}"#,
    )
    .unwrap();
    let o = tuner(&[
        "capacity",
        "--connections",
        "10000",
        "--results",
        f.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let p = json(&o);
    assert_eq!(p["costs"]["cpu_us_per_request"]["value"], 19.5);
    assert_eq!(p["ram_bytes_needed"], 10_000u64 * 3300);
    assert_eq!(p["rps"], 20000.0);
    assert!((p["cores_needed"].as_f64().unwrap() - 0.39).abs() < 1e-9);
    let bad = tuner(&[
        "capacity",
        "--connections",
        "10",
        "--results",
        "/nonexistent/x.json",
    ]);
    assert_eq!(bad.status.code(), Some(2));
}
