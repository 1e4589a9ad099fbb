//! `--threshold`: exit 0 when all pass, 3 when any fails, 2 for a bad rule.

mod common;

use common::{run, Backend};

fn code(b: &Backend, rules: &[&str]) -> i32 {
    let url = b.url();
    let mut args = vec!["run", url.as_str(), "-c", "2", "-n", "200", "-q"];
    for r in rules {
        args.push("--threshold");
        args.push(r);
    }
    run(&args).status.code().unwrap()
}

#[test]
fn passing_thresholds_exit_0() {
    let b = Backend::start(&[]);
    assert_eq!(
        code(
            &b,
            &[
                "p99<3600s",
                "p50<=60s",
                "max<3600s",
                "errors=0",
                "requests==200",
                "rps>0",
                "error_rate<1%"
            ]
        ),
        0
    );
}

#[test]
fn each_failing_threshold_exits_3() {
    let b = Backend::start(&[]);
    for rule in [
        "p50<0us",
        "p75<0us",
        "p90<0us",
        "p99<0us",
        "p999<0us",
        "max<0us",
        "mean<0us",
        "rps>=1e12",
        "requests=1",
        "errors>0",
        "errors.connect!=0",
        "errors.read>0",
        "errors.write>0",
        "errors.timeout>0",
        "errors.status_4xx>0",
        "errors.status_5xx>0",
        "errors.parse>0",
        "error_rate>0",
    ] {
        assert_eq!(code(&b, &[rule]), 3, "{rule}");
    }
}

#[test]
fn one_failure_among_passes_exits_3_and_prints_the_table() {
    let b = Backend::start(&[]);
    let url = b.url();
    let out = run(&[
        "run",
        &url,
        "-n",
        "100",
        "-q",
        "--threshold",
        "errors=0",
        "rps>=1e12",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("errors=0") && text.contains("FAILED"),
        "{text}"
    );
}

#[test]
fn bad_rules_are_usage_errors() {
    let b = Backend::start(&[]);
    for rule in ["p99<10", "latency<1ms", "rps", "p99~1ms"] {
        assert_eq!(code(&b, &[rule]), 2, "{rule}");
    }
    assert_eq!(run(&["run", "--no-such-flag"]).status.code(), Some(2));
}
