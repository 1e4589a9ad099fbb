//! Whole-file tests: defaults, round trips, and a table of bad files where
//! each error must name the file, the line and the field.

use super::*;

const GOOD: &str = "\
server:
  listen: \"0.0.0.0:8080\"
  workers: 2
  max_conn: 1000
  read_timeout: 30s
upstreams:
  api:
    backends:
      - { addr: \"127.0.0.1:9000\", weight: 5 }
      - { addr: \"127.0.0.1:9001\" }
routing:
  default:
    upstream: api
    load_balancer: weight
";

/// Replaces the `n`-th line (1-based) of GOOD, or inserts after it.
fn edit(line: usize, replace: bool, text: &str) -> String {
    let mut lines: Vec<&str> = GOOD.lines().collect();
    if replace {
        lines[line - 1] = text;
    } else {
        lines.insert(line, text);
    }
    lines.join("\n") + "\n"
}

#[test]
fn good_file_gets_defaults() {
    let c = Config::from_yaml_str(GOOD, "proxy.yaml").unwrap();
    let s = &c.server;
    assert_eq!(s.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(s.workers, 2);
    assert_eq!(s.processes, 1);
    assert_eq!(s.max_conn, 1000);
    assert_eq!(s.read_timeout, Duration::from_secs(30));
    assert_eq!(s.write_timeout, Duration::from_secs(30));
    assert_eq!(s.idle_timeout, Duration::from_secs(60));
    assert_eq!(s.header_timeout, Duration::from_secs(10));
    assert_eq!(s.graceful_timeout, Duration::from_secs(30));
    assert_eq!(s.max_header_size, 16 * 1024);
    assert_eq!(s.min_rate, 512);
    assert_eq!(s.min_rate_grace, Duration::from_secs(30));
    assert_eq!(c.admin.listen, "127.0.0.1:9091".parse().unwrap());
    assert_eq!(c.admin.token, None);
    let u = &c.upstreams["api"];
    assert_eq!(
        u.backends,
        vec![
            BackendConfig {
                addr: "127.0.0.1:9000".parse().unwrap(),
                weight: 5,
                tls: None,
            },
            BackendConfig {
                addr: "127.0.0.1:9001".parse().unwrap(),
                weight: 1,
                tls: None,
            },
        ]
    );
    assert_eq!(u.keepalive, None, "auto: the pool follows demand");
    assert_eq!(u.keepalive_timeout, Duration::from_secs(60));
    assert_eq!(u.connect_timeout, Duration::from_secs(5));
    assert_eq!(u.read_timeout, s.read_timeout);
    assert_eq!(u.write_timeout, s.write_timeout);
    assert_eq!(u.max_fails, 3);
    assert_eq!(u.fail_timeout, Duration::from_secs(10));
    assert_eq!(u.retries, 2);
    let r = &c.routing["default"];
    assert_eq!(r.upstream, "api");
    assert_eq!(r.load_balancer, Algorithm::Weight);
    assert!(r.matcher.host.is_none() && r.matcher.path_prefix.is_none());
}

#[test]
fn upstream_timeouts_default_to_the_server_ones() {
    let text = GOOD.replace(
        "  read_timeout: 30s\n",
        "  read_timeout: 7s\n  write_timeout: 3s\n",
    );
    let c = Config::from_yaml_str(&text, "proxy.yaml").unwrap();
    assert_eq!(c.upstreams["api"].read_timeout, Duration::from_secs(7));
    assert_eq!(c.upstreams["api"].write_timeout, Duration::from_secs(3));
}

#[test]
fn workers_auto_is_the_core_count() {
    let text = GOOD.replace("workers: 2", "workers: auto");
    let c = Config::from_yaml_str(&text, "proxy.yaml").unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(c.server.workers, cores);
}

#[test]
fn every_field_is_accepted() {
    let text = "\
server:
  listen: \"[::1]:8080\"
  workers: auto
  processes: 2
  max_conn: 20000
  read_timeout: 1m
  write_timeout: 500ms
  idle_timeout: 75s
  header_timeout: 5s
  graceful_timeout: 0s
  max_header_size: 32KiB
  min_rate: 2KiB
  min_rate_grace: 5s
admin:
  listen: \"0.0.0.0:9091\"
  token: s3cret
upstreams:
  api:
    backends:
      - addr: localhost:9000
        weight: 3
    keepalive: 0
    keepalive_timeout: 2m
    connect_timeout: 250ms
    read_timeout: 10s
    write_timeout: 10s
    max_fails: 0
    fail_timeout: 30s
    retries: 0
routing:
  api:
    upstream: api
    load_balancer: p2c
    match: { host: \"*.Example.com\", path_prefix: /api }
";
    let c = Config::from_yaml_str(text, "full.yaml").unwrap();
    assert_eq!(c.upstreams["api"].keepalive, Some(0));
    assert_eq!(c.server.max_header_size, 32 * 1024);
    assert_eq!(c.server.graceful_timeout, Duration::ZERO);
    assert_eq!(c.server.min_rate, 2048);
    assert_eq!(c.server.min_rate_grace, Duration::from_secs(5));
    assert_eq!(c.admin.token.as_deref(), Some("s3cret"));
    assert_eq!(
        c.upstreams["api"].backends[0].addr,
        "127.0.0.1:9000".parse().unwrap()
    );
    assert_eq!(
        c.routing["api"].matcher.host.as_deref(),
        Some("*.example.com")
    );
    assert!(!c.routing.contains_key("default"));
}

#[test]
fn to_raw_round_trips_through_json_shape() {
    let c = Config::from_yaml_str(GOOD, "proxy.yaml").unwrap();
    let raw = c.to_raw();
    // What the admin API will do: serialize, parse back, validate.
    let yaml = serde_yaml_ng::to_string(&raw).unwrap();
    let again = Config::from_yaml_str(&yaml, "again.yaml").unwrap();
    assert_eq!(again.to_raw(), raw);
    assert_eq!(raw.upstreams["api"].read_timeout.as_deref(), Some("30s"));
}

#[test]
fn keepalive_is_auto_or_a_cap_and_round_trips() {
    for (written, resolved) in [("auto", None), ("128", Some(128)), ("\"16\"", Some(16))] {
        let text = edit(10, false, &format!("    keepalive: {written}"));
        let c = Config::from_yaml_str(&text, "proxy.yaml").unwrap();
        let u = &c.upstreams["api"];
        assert_eq!(u.keepalive, resolved, "{written}");
        assert_eq!(u.idle_limit(), resolved.unwrap_or(usize::MAX));
        let yaml = serde_yaml_ng::to_string(&c.to_raw()).unwrap();
        let again = Config::from_yaml_str(&yaml, "again.yaml").unwrap();
        assert_eq!(again.upstreams["api"].keepalive, resolved, "{yaml}");
    }
    let raw = Config::from_yaml_str(GOOD, "proxy.yaml").unwrap().to_raw();
    assert_eq!(raw.upstreams["api"].keepalive, Some(AutoOrCount::Auto));
}

#[test]
fn raw_keeps_what_was_written() {
    let raw = RawConfig::from_yaml_str(GOOD, "proxy.yaml").unwrap();
    assert_eq!(raw.server.workers, Some(Workers::Count(2)));
    assert_eq!(raw.server.idle_timeout, None);
    let text = serde_yaml_ng::to_string(&raw).unwrap();
    assert!(!text.contains("idle_timeout"), "{text}");
    let back: RawConfig = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(back, raw);
}

#[test]
fn validate_without_source_has_no_line() {
    let mut raw = RawConfig::from_yaml_str(GOOD, "proxy.yaml").unwrap();
    raw.routing["default"].load_balancer = Some("wieght".into());
    let e = validate(raw, "PUT /api/v1/config", None).unwrap_err();
    assert_eq!(e.line, None);
    assert_eq!(
        e.to_string(),
        "PUT /api/v1/config: routing.default.load_balancer: unknown balancer \"wieght\"; \
         expected one of round_robin, weight, least_conn, ip_hash, p2c"
    );
}

#[test]
fn the_issue_example_message() {
    let text = GOOD.replace("load_balancer: weight", "load_balancer: wieght");
    let e = Config::from_yaml_str(&text, "proxy.yaml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "proxy.yaml:14: routing.default.load_balancer: unknown balancer \"wieght\"; \
         expected one of round_robin, weight, least_conn, ip_hash, p2c"
    );
}

#[test]
fn from_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, GOOD.replace("weight: 5", "weight: 0")).unwrap();
    let e = Config::from_file(&path).unwrap_err();
    assert_eq!(e.file, path.display().to_string());
    assert_eq!(e.line, Some(9));
    let missing = Config::from_file(&dir.path().join("nope.yaml")).unwrap_err();
    assert!(missing.to_string().contains("nope.yaml"), "{missing}");
    assert!(missing.message.contains("cannot read"), "{missing}");
}

/// (file text, line, field, words the message must contain)
fn bad_configs() -> Vec<(String, Option<usize>, &'static str, &'static str)> {
    vec![
        // serde-level: types, unknown and missing fields, syntax
        (edit(3, true, "  workers: lots"), Some(3), "server.workers", "invalid workers \"lots\""),
        (edit(3, true, "  workers: 0"), Some(3), "server.workers", "0 workers"),
        (edit(4, true, "  max_conn: -5"), Some(4), "server.max_conn", "invalid"),
        (edit(4, true, "  max_conn: 0"), Some(4), "server.max_conn", "max_conn 0"),
        (edit(5, false, "  tiemout: 3s"), Some(6), "server.tiemout", "unknown field `tiemout`"),
        (edit(1, true, "srever:"), Some(1), "srever", "unknown field `srever`"),
        (edit(9, true, "      - { addr: \"127.0.0.1:9000\", wieght: 5 }"), Some(9), "upstreams.api.backends[0].wieght", "unknown field `wieght`"),
        (edit(10, true, "      - { weight: 2 }"), Some(10), "upstreams.api.backends[1].addr", "missing field `addr`"),
        (edit(12, false, "    color: red"), Some(13), "routing.default.color", "unknown field `color`"),
        (edit(14, false, "    match: { hots: a.com }"), Some(15), "routing.default.match.hots", "unknown field `hots`"),
        (edit(3, true, " workers: 2"), Some(3), "", "while parsing"),
        (edit(9, true, "      - { addr: \"127.0.0.1:9000\", weight: heavy }"), Some(9), "upstreams.api.backends[0].weight", "invalid type"),
        (GOOD.replace("upstreams:", "upstreamz:"), Some(6), "upstreamz", "unknown field"),
        (edit(6, false, "  api:\n    backends: [ { addr: \"127.0.0.1:1\" } ]"), Some(9), "upstreams.api", "duplicate key"),
        (edit(12, false, "    upstream: api"), Some(14), "routing.default.upstream", "duplicate key"),
        // semantic: addresses
        (edit(2, true, "  listen: \"0.0.0.0\""), Some(2), "server.listen", "invalid address \"0.0.0.0\""),
        (edit(2, true, "  listen: example.com:80"), Some(2), "server.listen", "not resolved"),
        (edit(10, true, "      - { addr: \"127.0.0.1:99999\" }"), Some(10), "upstreams.api.backends[1].addr", "invalid address"),
        (edit(10, true, "      - { addr: \"127.0.0.1:9000\" }"), Some(10), "upstreams.api.backends[1].addr", "duplicate backend 127.0.0.1:9000"),
        (edit(10, true, "      - { addr: \"127.0.0.1:8080\" }"), Some(10), "upstreams.api.backends[1].addr", "the proxy itself"),
        (edit(5, false, "admin:\n  listen: \"127.0.0.1:8080\""), Some(7), "admin.listen", "same address"),
        (edit(2, true, "  listen: \"127.0.0.1:9091\""), Some(2), "server.listen", "same address"),
        // semantic: weights, backends, names
        (GOOD.replace("weight: 5", "weight: 0"), Some(9), "upstreams.api.backends[0].weight", "weight 0"),
        (GOOD.replace("weight: 5", "weight: 1000000"), Some(9), "upstreams.api.backends[0].weight", "above"),
        (GOOD.replace("    backends:\n      - { addr: \"127.0.0.1:9000\", weight: 5 }\n      - { addr: \"127.0.0.1:9001\" }\n", "    backends: []\n"), Some(8), "upstreams.api.backends", "no backend"),
        (GOOD.replace("  api:\n", "  \"a.b\":\n").replace("upstream: api", "upstream: a.b"), Some(7), "upstreams.a.b", "invalid name"),
        // semantic: durations and sizes
        (edit(5, true, "  read_timeout: 30"), Some(5), "server.read_timeout", "no unit"),
        (edit(5, true, "  read_timeout: 30 sec"), Some(5), "server.read_timeout", "invalid duration"),
        (edit(5, true, "  read_timeout: 0s"), Some(5), "server.read_timeout", "zero timeout"),
        (edit(10, false, "    fail_timeout: soon"), Some(11), "upstreams.api.fail_timeout", "invalid duration \"soon\""),
        (edit(10, false, "    connect_timeout: 5"), Some(11), "upstreams.api.connect_timeout", "no unit"),
        (edit(5, false, "  max_header_size: 16 parsecs"), Some(6), "server.max_header_size", "invalid size"),
        (edit(5, false, "  max_header_size: 10"), Some(6), "server.max_header_size", "1KiB to 1MiB"),
        (edit(5, false, "  min_rate: fast"), Some(6), "server.min_rate", "invalid size"),
        (edit(5, false, "  min_rate: 2048MiB"), Some(6), "server.min_rate", "at most 1GiB"),
        (edit(5, false, "  min_rate_grace: 0s"), Some(6), "server.min_rate_grace", "zero timeout"),
        (edit(5, false, "  min_rate_grace: 2h"), Some(6), "server.min_rate_grace", "longer than 1h"),
        (edit(10, false, "    retries: 1000"), Some(11), "upstreams.api.retries", "1000 retries"),
        (edit(10, false, "    max_conns: 5000000"), Some(11), "upstreams.api.max_conns", "up to 1000000"),
        (edit(10, false, "    max_conns: -1"), Some(11), "upstreams.api.max_conns", "write auto or a number"),
        (edit(10, false, "    keepalive: 5000000"), Some(11), "upstreams.api.keepalive", "write auto (follow demand) or a number up to 1000000"),
        (edit(10, false, "    keepalive: some"), Some(11), "upstreams.api.keepalive", "invalid \"some\""),
        (edit(10, false, "    queue_timeout: 0s"), Some(11), "upstreams.api.queue_timeout", "zero timeout"),
        // semantic: active health checks
        (edit(10, false, "    health_check: { path: healthz }"), Some(11), "upstreams.api.health_check.path", "must start with /"),
        (edit(10, false, "    health_check: { path: \"/a b\" }"), Some(11), "upstreams.api.health_check.path", "whitespace"),
        (edit(10, false, "    health_check: { interval: 1ms }"), Some(11), "upstreams.api.health_check.interval", "at least 10ms"),
        (edit(10, false, "    health_check: { interval: 2 }"), Some(11), "upstreams.api.health_check.interval", "no unit"),
        (edit(10, false, "    health_check: { timeout: 0s }"), Some(11), "upstreams.api.health_check.timeout", "zero timeout"),
        (edit(10, false, "    health_check: { rise: 0 }"), Some(11), "upstreams.api.health_check.rise", "rise 0"),
        (edit(10, false, "    health_check: { fall: 1000 }"), Some(11), "upstreams.api.health_check.fall", "fall 1000"),
        (edit(10, false, "    health_check: { expect_status: \"399-200\" }"), Some(11), "upstreams.api.health_check.expect_status", "invalid expect_status"),
        (edit(10, false, "    health_check: { expect_status: 700 }"), Some(11), "upstreams.api.health_check.expect_status", "codes 100 to 599"),
        (edit(10, false, "    health_check: { expect_status: ok }"), Some(11), "upstreams.api.health_check.expect_status", "invalid expect_status \"ok\""),
        (edit(10, false, "    health_check: { host: \"a\\r\\nX: y\" }"), Some(11), "upstreams.api.health_check.host", "invalid Host"),
        (edit(10, false, "    health_check: { paht: /x }"), Some(11), "upstreams.api.health_check.paht", "unknown field `paht`"),
        (edit(10, false, "    health_check:\n      rise: -1"), Some(12), "upstreams.api.health_check.rise", "expected u32"),
        // semantic: admin
        (edit(5, false, "admin:\n  listen: \"0.0.0.0:9091\""), Some(7), "admin.listen", "set admin.token"),
        (edit(5, false, "admin:\n  token: \"\""), Some(7), "admin.token", "empty token"),
        // semantic: routing
        (GOOD.replace("upstream: api", "upstream: apx"), Some(13), "routing.default.upstream", "unknown upstream \"apx\"; defined upstreams: api"),
        (GOOD.replace("load_balancer: weight", "load_balancer: wieght"), Some(14), "routing.default.load_balancer", "expected one of round_robin, weight, least_conn, ip_hash, p2c"),
        (GOOD.replace("  default:", "  defualt:"), Some(12), "routing.defualt.match", "rename it to default"),
        (edit(14, false, "    match: { path_prefix: /api }"), Some(15), "routing.default.match", "takes no match"),
        (edit(14, false, "  api:\n    upstream: api\n    match:\n      path_prefix: api"), Some(18), "routing.api.match.path_prefix", "must start with /"),
        (edit(14, false, "  api:\n    upstream: api\n    match:\n      host: a.com:80"), Some(18), "routing.api.match.host", "remove the :PORT"),
        (edit(14, false, "  api:\n    upstream: api\n    match:\n      host: a.*.com"), Some(18), "routing.api.match.host", "leading *."),
        (edit(14, false, "  a1: { upstream: api, match: { host: a.com } }\n  a2: { upstream: api, match: { host: A.com } }"), Some(16), "routing.a2.match", "same match as route \"a1\""),
        (GOOD.replace("routing:\n  default:\n    upstream: api\n    load_balancer: weight\n", "routing: {}\n"), Some(11), "routing", "no route"),
        (GOOD.replace("routing:\n  default:\n    upstream: api\n    load_balancer: weight\n", ""), Some(1), "routing", "missing field `routing`"),
        ("".to_string(), None, "", "empty"),
        (edit(3, true, "\tworkers: 2"), Some(3), "server", "never tabs"),
    ]
}

#[test]
fn every_bad_config_names_file_line_and_field() {
    for (i, (text, line, field, words)) in bad_configs().into_iter().enumerate() {
        let e = match Config::from_yaml_str(&text, "proxy.yaml") {
            Ok(_) => panic!("case {i} ({field}) was accepted:\n{text}"),
            Err(e) => e,
        };
        let shown = e.to_string();
        assert_eq!(e.file, "proxy.yaml", "case {i}: {shown}");
        assert_eq!(e.field, field, "case {i}: {shown}\n{text}");
        assert_eq!(e.line, line, "case {i}: {shown}\n{text}");
        assert!(e.message.contains(words), "case {i}: {shown}");
        // The message is clean: no position or path repeated by the parser.
        assert!(!e.message.contains("at line"), "case {i}: {shown}");
        let prefix = match line {
            Some(l) => format!("proxy.yaml:{l}: "),
            None => "proxy.yaml: ".to_string(),
        };
        assert!(shown.starts_with(&prefix), "case {i}: {shown}");
    }
}

/// The first ```yaml block of docs/configuration.md.
fn documented_example() -> String {
    let doc = include_str!("../../../docs/configuration.md");
    let start = doc.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let len = doc[start..].find("```").expect("closed block");
    doc[start..start + len].to_string()
}

#[test]
fn the_documented_example_is_valid_and_routes_as_documented() {
    let c = Config::from_yaml_str(&documented_example(), "configuration.md").unwrap();
    let r = Router::new(&c);
    let route = |host: &str, path: &str| {
        r.route(host.as_bytes(), path.as_bytes())
            .map(|i| c.routing.get_index(i).unwrap().0.as_str())
    };
    assert_eq!(route("www.example.com", "/static/a.css"), Some("assets"));
    assert_eq!(
        route("admin.example.com", "/static/logo.png"),
        Some("admin_site")
    );
    assert_eq!(route("www.example.com", "/"), Some("default"));
    assert_eq!(c.upstreams["app"].backends[2].weight, 1);
}

#[test]
fn health_checks_are_off_by_default_and_take_defaults_when_on() {
    let c = Config::from_yaml_str(GOOD, "proxy.yaml").unwrap();
    assert_eq!(c.upstreams["api"].health_check, None);
    assert!(c.to_raw().upstreams["api"].health_check.is_none());
    let c = Config::from_yaml_str(&edit(10, false, "    health_check: {}"), "p.yaml").unwrap();
    assert_eq!(
        c.upstreams["api"].health_check,
        Some(HealthCheckConfig {
            path: "/healthz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            expect_status: (200, 399),
            host: None,
        })
    );
    let text = edit(
        10,
        false,
        "    health_check:\n      path: /ping?deep=1\n      interval: 100ms\n      timeout: 50ms\n      \
         rise: 1\n      fall: 5\n      expect_status: 204\n      host: app.example.com",
    );
    let c = Config::from_yaml_str(&text, "p.yaml").unwrap();
    let h = c.upstreams["api"].health_check.clone().unwrap();
    assert_eq!(h.path, "/ping?deep=1");
    assert_eq!(h.interval, Duration::from_millis(100));
    assert_eq!((h.rise, h.fall, h.expect_status), (1, 5, (204, 204)));
    assert_eq!(h.host.as_deref(), Some("app.example.com"));
    // Written out in full by to_raw, and read back the same.
    let raw = c.to_raw();
    let shown = raw.upstreams["api"].health_check.clone().unwrap();
    assert_eq!(shown.expect_status, Some(ExpectStatus::Code(204)));
    assert_eq!(shown.interval.as_deref(), Some("100ms"));
    let yaml = serde_yaml_ng::to_string(&raw).unwrap();
    let again = Config::from_yaml_str(&yaml, "again.yaml").unwrap();
    assert_eq!(again.upstreams["api"].health_check, Some(h));
    let range = Config::from_yaml_str(
        &edit(
            10,
            false,
            "    health_check: { expect_status: \"200-299\" }",
        ),
        "p.yaml",
    )
    .unwrap();
    let h = range.upstreams["api"].health_check.clone().unwrap();
    assert_eq!(h.expect_status, (200, 299));
    assert_eq!(
        range.to_raw().upstreams["api"]
            .health_check
            .clone()
            .unwrap()
            .expect_status,
        Some(ExpectStatus::Text("200-299".into()))
    );
}

#[test]
fn admin_token_file_is_read_and_named_in_its_errors() {
    let dir = std::env::temp_dir().join(format!("speedmimi-cfg-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "s3cret\r\n").unwrap();
    let with = |admin: &str| edit(5, false, &format!("admin:\n{admin}"));
    let text = with(&format!(
        "  listen: \"0.0.0.0:9091\"\n  token_file: \"{}\"",
        file.display()
    ));
    let c = Config::from_yaml_str(&text, "proxy.yaml").unwrap();
    assert_eq!(c.admin.token.as_deref(), Some("s3cret"));
    // Shown as the file, never as the token it holds.
    let raw = c.to_raw();
    let admin = raw.admin.as_ref().unwrap();
    assert_eq!(admin.token, None);
    assert_eq!(admin.token_file.as_deref(), Some(file.to_str().unwrap()));

    let both = with(&format!("  token: x\n  token_file: \"{}\"", file.display()));
    let e = Config::from_yaml_str(&both, "proxy.yaml").unwrap_err();
    assert_eq!(e.field, "admin.token_file");
    assert!(e.message.contains("not both"), "{e}");

    let missing = with("  token_file: /nonexistent/speedmimi-token");
    let e = Config::from_yaml_str(&missing, "proxy.yaml").unwrap_err();
    assert_eq!(e.field, "admin.token_file");
    assert!(e.message.contains("/nonexistent/speedmimi-token"), "{e}");

    std::fs::write(&file, "\n").unwrap();
    let e = Config::from_yaml_str(&text, "proxy.yaml").unwrap_err();
    assert_eq!(e.field, "admin.token_file");
    assert!(e.message.contains("empty"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
