//! `/debug/pprof/profile` with worker processes: the master, which serves
//! the admin API but no traffic, has the workers sample themselves and
//! answers with one merged pprof profile whose samples name their worker.

mod common;

use common::*;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pprof::protos::{Message, Profile};

fn two_processes(b: &Backend) -> Proxy {
    let yaml = Cfg::new(&[b.addr])
        .yaml()
        .replace("workers: 1", "workers: 1\n  processes: 2");
    let p = Proxy::start(&yaml);
    wait_until("two worker processes", || children_of(p.pid()).len() == 2);
    p
}

/// One GET on the admin API, the body kept as bytes (a profile is binary).
/// A profile takes its seconds plus a few: the read timeout allows them.
fn get(admin: std::net::SocketAddr, path: &str) -> Response {
    let mut c = Client::connect(admin);
    c.set_timeout(Duration::from_secs(30));
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes());
    c.read_response()
}

fn decode(r: &Response) -> Profile {
    assert_eq!(&r.body[..2], &[0x1f, 0x8b], "gzip magic");
    let mut proto = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_end(&mut proto)
        .expect("valid gzip");
    Profile::decode(&proto[..]).expect("pprof protobuf")
}

/// Requests through the proxy on new connections (so SO_REUSEPORT spreads
/// them over both workers) until stopped; bounded in count.
fn traffic(p: &Proxy) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = p.addr;
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut n = 0;
        while !flag.load(Ordering::Acquire) && n < 50_000 {
            let mut c = Client::connect(addr);
            assert_eq!(c.get("/").status, 200);
            n += 1;
        }
        n
    });
    (stop, handle)
}

/// Every `worker` label value of the profile's samples.
fn worker_labels(profile: &Profile) -> Vec<i64> {
    let s = &profile.string_table;
    let mut out: Vec<i64> = profile
        .sample
        .iter()
        .flat_map(|sample| sample.label.iter())
        .filter(|l| s[l.key as usize] == "worker")
        .map(|l| l.num)
        .collect();
    out.sort();
    out.dedup();
    out
}

fn function_names(profile: &Profile) -> Vec<&str> {
    profile
        .function
        .iter()
        .map(|f| profile.string_table[f.name as usize].as_str())
        .collect()
}

/// A profile (`query` after `/debug/pprof/profile?`) of a two-worker proxy
/// under traffic, every request of which was answered 200.
fn profile_with_traffic(b: &Backend, query: &str) -> (Proxy, Response) {
    let p = two_processes(b);
    let (stop, load) = traffic(&p);
    let r = get(p.admin_addr(), &format!("/debug/pprof/profile?{query}"));
    stop.store(true, Ordering::Release);
    let sent = load.join().expect("every request answered 200");
    assert!(sent > 0);
    assert_eq!(r.status, 200, "{}", r.text());
    (p, r)
}

/// Profile answer files of the master `pid` still beside its board.
fn answer_files_left(pid: u32) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("speedmimi-{pid}.profile-")))
        .collect()
}

#[test]
fn profile_merges_the_workers_samples_of_the_event_loops() {
    let b = Backend::start("a");
    let (p, r) = profile_with_traffic(&b, "seconds=2");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        r.header("x-profile-workers"),
        Some("0,1"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-profile-missing"), None);
    let profile = decode(&r);
    assert!(!profile.sample.is_empty(), "no samples");
    let names = function_names(&profile);
    assert!(
        names
            .iter()
            .any(|n| n.contains("EventLoop") || n.contains("speedmimi::server")),
        "no event-loop frame among {names:?}"
    );
    // Every sample names the worker it comes from; only workers do.
    // (Each worker has a sample at least: its profile thread's first
    // SIGPROF is raised, not timed.)
    assert_eq!(worker_labels(&profile), [0, 1]);
    let s = &profile.string_table;
    assert!(profile
        .sample
        .iter()
        .all(|sample| sample.label.iter().any(|l| s[l.key as usize] == "worker")));
    let comments: Vec<&str> = profile
        .comment
        .iter()
        .map(|&c| s[c as usize].as_str())
        .collect();
    for k in 0..2 {
        assert!(
            comments
                .iter()
                .any(|c| c.starts_with(&format!("worker {k} (pid "))),
            "{comments:?}"
        );
    }
    // The answer files beside the board are gone.
    let leftover = answer_files_left(p.pid());
    assert!(leftover.is_empty(), "{leftover:?}");
}

#[test]
fn worker_selects_one_worker_process() {
    let b = Backend::start("a");
    let (_p, r) = profile_with_traffic(&b, "seconds=1&worker=1");
    assert_eq!(r.header("x-profile-workers"), Some("1"));
    let profile = decode(&r);
    let labels = worker_labels(&profile);
    assert!(labels.iter().all(|&w| w == 1), "{labels:?}");
}

#[test]
fn worker_out_of_range_is_refused_naming_worker() {
    let b = Backend::start("a");
    let p = two_processes(&b);
    for bad in ["7", "2", "x"] {
        let r = get(
            p.admin_addr(),
            &format!("/debug/pprof/profile?seconds=1&worker={bad}"),
        );
        assert_eq!(r.status, 400, "worker={bad}: {}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["field"], "worker", "{v}");
        assert!(v["error"].as_str().unwrap().contains("from 0 to 1"), "{v}");
    }
}

#[test]
fn a_second_profile_while_one_runs_gets_409() {
    let b = Backend::start("a");
    let p = two_processes(&b);
    let admin = p.admin_addr();
    let first = std::thread::spawn(move || get(admin, "/debug/pprof/profile?seconds=2"));
    // The first holds the profiler once the workers are sampling (their
    // profile threads exist); ask again then.
    wait_until("a worker profile thread", || {
        children_of(p.pid())
            .iter()
            .any(|&w| has_thread(w, "speedmimi-profi"))
    });
    let second = get(admin, "/debug/pprof/profile?seconds=1");
    assert_eq!(second.status, 409, "{}", second.text());
    assert!(second.text().contains("already"), "{}", second.text());
    let worker_only = get(admin, "/debug/pprof/profile?seconds=1&worker=0");
    assert_eq!(worker_only.status, 409, "{}", worker_only.text());
    let first = first.join().unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    decode(&first);
    // Over: the next one runs.
    let again = get(admin, "/debug/pprof/profile?seconds=1&worker=0");
    assert_eq!(again.status, 200, "{}", again.text());
}

/// A proxy with two workers, both sampling for a profile of `seconds`
/// requested in the background: the proxy, the workers' pids and the
/// request's answer to come.
fn profile_under_way(
    b: &Backend,
    seconds: u32,
) -> (Proxy, Vec<u32>, std::thread::JoinHandle<Response>) {
    let p = two_processes(b);
    let admin = p.admin_addr();
    let kids = children_of(p.pid());
    let path = format!("/debug/pprof/profile?seconds={seconds}");
    let answer = std::thread::spawn(move || get(admin, &path));
    wait_until("both workers sampling", || {
        kids.iter().all(|&w| has_thread(w, "speedmimi-profi"))
    });
    (p, kids, answer)
}

#[test]
fn a_worker_killed_during_the_profile_is_named_and_nothing_hangs() {
    let b = Backend::start("a");
    let (p, kids, first) = profile_under_way(&b, 2);
    let admin = p.admin_addr();
    let victim = kids[0];
    signal(victim, "KILL");
    let r = first.join().unwrap();
    // The other worker's samples come back; the dead one is named.
    assert_eq!(r.status, 200, "{}", r.text());
    let missing = r.header("x-profile-missing").unwrap_or_default();
    assert!(
        missing.contains(&format!("(pid {victim})")),
        "{:?}",
        r.headers
    );
    decode(&r);
    // The replacement worker takes the next profile.
    wait_until("a replacement worker", || {
        let kids = children_of(p.pid());
        kids.len() == 2 && !kids.contains(&victim)
    });
    let r = get(admin, "/debug/pprof/profile?seconds=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-profile-workers"),
        Some("0,1"),
        "{:?}",
        r.headers
    );
}

/// Whether process `pid` has a thread named `name` (15 bytes at most).
fn has_thread(pid: u32, name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
}

#[test]
fn a_worker_that_does_not_answer_is_named_after_a_bounded_wait() {
    let b = Backend::start("a");
    let (p, kids, first) = profile_under_way(&b, 1);
    let admin = p.admin_addr();
    // A stopped worker neither answers nor exits: the master gives up
    // after seconds + 5 s and serves the other worker's samples.
    let frozen = kids[1];
    signal(frozen, "STOP");
    let r = first.join().unwrap();
    signal(frozen, "CONT");
    assert_eq!(r.status, 200, "{}", r.text());
    let missing = r.header("x-profile-missing").unwrap_or_default();
    assert!(
        missing.contains(&format!("(pid {frozen}): did not answer within 6 s")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-profile-workers").map(|w| w.len()), Some(1));
    // Woken, it drops the profile the master gave up on and takes the next.
    wait_until("the late profile thread to end", || {
        !has_thread(frozen, "speedmimi-profi")
    });
    let r = get(admin, "/debug/pprof/profile?seconds=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-profile-workers"),
        Some("0,1"),
        "{:?}",
        r.headers
    );
    let leftover = answer_files_left(p.pid());
    assert!(leftover.is_empty(), "{leftover:?}");
}
