//! Route selection by host and path prefix; the `default` route catches
//! the rest.

mod common;

use common::*;

fn proxy_with_api_route() -> (Backend, Backend, Proxy) {
    let web = Backend::start("web");
    let api = Backend::start("api");
    let mut cfg = Cfg::new(&[web.addr]);
    cfg.extra_upstreams = format!("  other:\n    backends: [ {{ addr: \"{}\" }} ]\n", api.addr);
    cfg.extra_routes = "  api: { upstream: other, load_balancer: p2c, match: { host: \"api.example\", path_prefix: \"/v1\" } }\n".to_string();
    let p = cfg.start();
    (web, api, p)
}

fn get_host(p: &Proxy, host: &str, path: &str) -> String {
    let mut c = p.client();
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    r.text()
}

#[test]
fn routes_by_host_and_path_prefix() {
    let (_w, _a, p) = proxy_with_api_route();
    assert_eq!(get_host(&p, "api.example", "/v1/users"), "api");
    assert_eq!(get_host(&p, "API.Example:8080", "/v1"), "api");
}

#[test]
fn unmatched_requests_take_the_default_route() {
    let (_w, _a, p) = proxy_with_api_route();
    assert_eq!(get_host(&p, "api.example", "/v2/users"), "web");
    assert_eq!(get_host(&p, "www.example", "/v1/users"), "web");
}

#[test]
fn each_request_on_one_connection_is_routed_on_its_own() {
    let (_w, _a, p) = proxy_with_api_route();
    let mut c = p.client();
    let mut ids = Vec::new();
    for path in ["/v1/a", "/x", "/v1/b", "/y"] {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: api.example\r\n\r\n").as_bytes());
        ids.push(c.read_response().text());
    }
    assert_eq!(ids, ["api", "web", "api", "web"]);
}

#[test]
fn routes_absolute_form_by_its_authority_not_the_host_header() {
    // RFC 9112 §3.2.2: with an absolute-form target the Host header is
    // ignored in favour of the target's authority.
    let (_w, _a, p) = proxy_with_api_route();
    let mut c = p.client();
    c.send(b"GET http://api.example/v1/users HTTP/1.1\r\nHost: www.example\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "api");
}
