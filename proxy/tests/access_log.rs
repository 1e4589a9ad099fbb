//! The access log on a full disk: clients never see an error, the dropped
//! lines are counted in /metrics, and logging goes on (a line that cannot
//! be written is dropped, not the log). /dev/full fails every write with
//! ENOSPC, as a full file system does.

mod common;

use common::*;

const DROPPED: &str = "speedmimi_access_log_dropped_lines_total";

#[test]
fn a_full_disk_drops_lines_counted_never_requests() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.extra_server = "  access_log: /dev/full\n".into();
    let p = cfg.start();
    let admin = p.admin();
    let mut c = p.client();
    for _ in 0..20 {
        assert_eq!(c.get("/").status, 200);
    }
    // The batch goes to the writer within BATCH_AGE; the failed write is
    // counted, and a later batch is tried again (and counted again).
    wait_until("20 dropped lines", || p.metric(DROPPED) as u64 >= 20);
    for _ in 0..5 {
        assert_eq!(c.get("/").status, 200);
    }
    wait_until("25 dropped lines", || p.metric(DROPPED) as u64 >= 25);
    assert_eq!(p.metric(DROPPED) as u64, 25);
    let stats = admin.get("/api/v1/stats/server").body;
    assert!(
        stats.contains("\"access_log_dropped_lines\": 25"),
        "{stats}"
    );
}
