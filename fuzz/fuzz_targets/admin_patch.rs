//! The admin API's JSON merge patch: any patch gives a new configuration or
//! an error, never a panic; an accepted result is itself a valid base (an
//! empty patch on it is accepted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use speedmimi::config::RawConfig;
use std::sync::OnceLock;

const BASE: &str = "\
server: { listen: \"127.0.0.1:8080\", workers: 1 }
admin: { listen: \"127.0.0.1:9091\", token: \"secret\" }
upstreams:
  api: { backends: [ { addr: \"127.0.0.1:9001\", weight: 2 }, { addr: \"127.0.0.1:9002\" } ] }
  web: { backends: [ { addr: \"127.0.0.1:9003\" } ], keepalive: 8 }
routing:
  default: { upstream: web, load_balancer: round_robin }
  api_route: { upstream: api, load_balancer: least_conn, match: { path_prefix: /api } }
";

fuzz_target!(|data: &[u8]| {
    static BASE_RAW: OnceLock<RawConfig> = OnceLock::new();
    let base = BASE_RAW.get_or_init(|| RawConfig::from_yaml_str(BASE, "base").expect("base config"));
    let Ok(patch) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((raw, _)) = base.merge_patch(patch, "fuzz") {
        raw.merge_patch("{}", "fuzz").expect("an accepted configuration is a valid base");
    }
});
