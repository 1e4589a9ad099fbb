//! The JSON endpoints under `/api/v1/`: read snapshots from the control
//! plane, or build a new configuration (merge patch, backend added or
//! removed), validate it whole and hand it to `ControlPlane::apply`.
//! These run on the runtime's blocking pool: `apply` may wait for workers.

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::State;
use crate::config::{validate, RawBackend, RawConfig, REDACTED};
use crate::control::active_health::{ActiveHealthSnapshot, Outcome};
use crate::control::{BackendSnapshot, Counters, ServerSnapshot, WorkerSnapshot};
use crate::tls::upstream::UpstreamTlsFailure;
use crate::tls::HandshakeFailure;

pub type Answer = Result<(StatusCode, Value), ApiError>;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn health() -> Answer {
    Ok((StatusCode::OK, json!({ "status": "ok" })))
}

/// `GET /api/v1/backends[?upstream=NAME]`: one upstream as
/// `{"upstream", "backends"}`, or every one as `{"upstreams": [...]}`.
pub fn backends(state: &State, query: Option<&str>) -> Answer {
    let wanted = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "upstream")
            .map(|(_, v)| v.into_owned())
    });
    let plane = &state.plane;
    match wanted {
        Some(name) => {
            let list = plane
                .backends(&name)
                .ok_or_else(|| unknown_upstream(state, &name))?;
            Ok((StatusCode::OK, upstream_json(&name, &list)))
        }
        None => {
            let all: Vec<Value> = plane
                .upstreams()
                .iter()
                .filter_map(|name| Some(upstream_json(name, &plane.backends(name)?)))
                .collect();
            Ok((StatusCode::OK, json!({ "upstreams": all })))
        }
    }
}

fn upstream_json(name: &str, backends: &[BackendSnapshot]) -> Value {
    let list: Vec<Value> = backends.iter().map(backend_json).collect();
    json!({ "upstream": name, "backends": list })
}

fn backend_json(b: &BackendSnapshot) -> Value {
    let responses: Map<String, Value> = CLASSES
        .iter()
        .zip(b.responses)
        .map(|(class, n)| (class.to_string(), json!(n)))
        .collect();
    json!({
        "address": b.addr,
        "weight": b.weight,
        "health": b.health,
        "active": b.active,
        "requests": b.requests,
        "failures": b.failures,
        "latency_ewma_ms": b.latency_ewma_ms,
        "responses": responses,
        "active_check": active_check_json(&b.active_health),
    })
}

/// The active health check of one backend (`"state": "off"` without one).
fn active_check_json(h: &ActiveHealthSnapshot) -> Value {
    let probes: Map<String, Value> = Outcome::ALL
        .iter()
        .zip(h.probes)
        .map(|(o, n)| (o.name().to_string(), json!(n)))
        .collect();
    json!({
        "state": h.state,
        "consecutive_successes": h.successes,
        "consecutive_failures": h.failures,
        "last_status": h.last_status,
        "last_result": h.last_outcome.map(Outcome::name),
        "last_probe_unix_ms": h.last_unix_ms,
        "probes": probes,
    })
}

fn unknown_upstream(state: &State, name: &str) -> ApiError {
    let known = state.plane.upstreams().join(", ");
    ApiError::not_found(format!("no upstream named \"{name}\"; known: {known}"))
        .with_field("upstream")
}

/// `GET /api/v1/stats/server`: totals, then one entry per event loop.
pub fn stats(state: &State) -> Answer {
    let s: ServerSnapshot = state.plane.server();
    let mut body = json!({
        "uptime_seconds": s.uptime_seconds,
        "rss_bytes": s.rss_bytes,
        "processes": s.processes,
        "worker_restarts": s.worker_restarts,
        "requests_per_second": s.requests_per_second,
    });
    if let (Value::Object(b), Value::Object(c)) = (&mut body, counters_json(&s.total)) {
        b.extend(c);
    }
    body["workers"] = s.workers.iter().map(worker_json).collect();
    Ok((StatusCode::OK, body))
}

fn worker_json(w: &WorkerSnapshot) -> Value {
    let mut v = json!({ "process": w.process, "pid": w.pid, "loop": w.event_loop });
    if let (Value::Object(v), Value::Object(c)) = (&mut v, counters_json(&w.counters)) {
        v.extend(c);
    }
    v
}

fn counters_json(c: &Counters) -> Value {
    let errors: Map<String, Value> = c
        .errors
        .iter()
        .map(|(kind, status, n)| (kind.to_string(), json!({ "status": status, "count": n })))
        .collect();
    json!({
        "connections": {
            "current": c.connections_current,
            "total": c.connections_total,
            "refused": c.connections_refused,
        },
        "requests": c.requests,
        "bytes": { "in": c.bytes_in, "out": c.bytes_out },
        "upstream": {
            "connects": c.upstream_connects,
            "reuses": c.upstream_reuses,
            "retries": c.upstream_retries,
            "queued": c.upstream_queued,
            "queue_timeouts": c.queue_timeouts,
        },
        "guards": {
            "slow_request_bodies": c.slow_request_bodies,
            "slow_response_readers": c.slow_response_readers,
            "accept_failures": c.accept_failures,
            "access_log_dropped_lines": c.access_log_dropped,
        },
        "errors": errors,
        "tls": {
            "connections": c.tls.connections_current,
            "handshakes": { "full": c.tls.handshakes_full, "resumed": c.tls.handshakes_resumed },
            "handshake_failures": HandshakeFailure::ALL
                .iter()
                .map(|f| (f.label().to_string(), json!(c.tls.failures[*f as usize])))
                .collect::<Map<String, Value>>(),
            "upstream": {
                "handshakes": { "full": c.tls.upstream_full, "resumed": c.tls.upstream_resumed },
                "handshake_failures": UpstreamTlsFailure::ALL
                    .iter()
                    .map(|f| (f.label().to_string(), json!(c.tls.upstream_failures[*f as usize])))
                    .collect::<Map<String, Value>>(),
            },
        },
    })
}

/// `GET /api/v1/config`: the configuration in force, token redacted.
pub fn get_config(state: &State) -> Answer {
    Ok((
        StatusCode::OK,
        state.plane.raw_config().redacted().to_json(),
    ))
}

/// `PUT /api/v1/config`: a JSON merge patch (RFC 7396) on the
/// configuration as written; answers with the new one (redacted).
pub fn put_config(state: &State, body: &[u8]) -> Answer {
    let patch = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the body is not UTF-8 text; send a JSON object"))?;
    let _one_change_at_a_time = state.lock_changes();
    let old = state.plane.raw_config();
    let (raw, config) = old.merge_patch(patch, "PUT /api/v1/config")?;
    apply(state, &old, raw, config).map(|raw| (StatusCode::OK, raw.redacted().to_json()))
}

/// Body of `POST /api/v1/upstreams/NAME/backends`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    addr: String,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    tls: Option<crate::config::RawBackendTls>,
}

/// `POST /api/v1/upstreams/NAME/backends`: 201 with the upstream's backends.
pub fn add_backend(state: &State, upstream: &str, body: &[u8]) -> Answer {
    const SHAPE: &str =
        "send {\"addr\": \"IP:PORT\", \"weight\": N, \"tls\": {\"sni\": NAME, \"ca\": FILE}}";
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}; {SHAPE}")))?;
    let new: NewBackend = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let field = match message
            .strip_prefix("missing field `")
            .and_then(|r| r.split_once('`'))
        {
            Some((name, _)) => name.to_string(),
            None if path == "." => String::new(),
            None => path,
        };
        ApiError::bad_request(format!("{message}; {SHAPE}")).with_field(field)
    })?;
    let _one_change_at_a_time = state.lock_changes();
    let old = state.plane.raw_config();
    let mut raw = old.clone();
    let Some(u) = raw.upstreams.get_mut(upstream) else {
        return Err(unknown_upstream(state, upstream));
    };
    u.backends.push(RawBackend {
        addr: new.addr,
        weight: new.weight,
        tls: new.tls,
    });
    let origin = format!("POST /api/v1/upstreams/{upstream}/backends");
    let config = validate(raw.clone(), &origin, None)?;
    let raw = apply(state, &old, raw, config)?;
    Ok((StatusCode::CREATED, backends_of(&raw, upstream)))
}

/// `DELETE /api/v1/upstreams/NAME/backends/ADDR`: the server stops sending
/// new requests to it; requests in flight finish.
pub fn remove_backend(state: &State, upstream: &str, addr: &str) -> Answer {
    let _one_change_at_a_time = state.lock_changes();
    let old = state.plane.raw_config();
    let mut raw = old.clone();
    let Some(u) = raw.upstreams.get_mut(upstream) else {
        return Err(unknown_upstream(state, upstream));
    };
    let parsed = addr.parse::<std::net::SocketAddr>().ok();
    let Some(index) = u
        .backends
        .iter()
        .position(|b| b.addr == addr || (parsed.is_some() && b.addr.parse().ok() == parsed))
    else {
        let known: Vec<&str> = u.backends.iter().map(|b| b.addr.as_str()).collect();
        return Err(ApiError::not_found(format!(
            "upstream \"{upstream}\" has no backend {addr}; its backends: {}",
            known.join(", ")
        ))
        .with_field("addr"));
    };
    u.backends.remove(index);
    let origin = format!("DELETE /api/v1/upstreams/{upstream}/backends/{addr}");
    let config = validate(raw.clone(), &origin, None)?;
    let raw = apply(state, &old, raw, config)?;
    Ok((StatusCode::OK, backends_of(&raw, upstream)))
}

fn backends_of(raw: &RawConfig, upstream: &str) -> Value {
    let backends = raw
        .upstreams
        .get(upstream)
        .map(|u| serde_json::to_value(&u.backends).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    json!({ "upstream": upstream, "backends": backends })
}

/// Hands a validated configuration to the server. A token changed by the
/// patch takes effect for the next request.
fn apply(
    state: &State,
    old: &RawConfig,
    raw: RawConfig,
    config: crate::config::Config,
) -> Result<RawConfig, ApiError> {
    let token = |r: &RawConfig| r.admin.as_ref().and_then(|a| a.token.clone());
    let new_token = token(&raw);
    if new_token.as_deref() == Some(REDACTED) && token(old).as_deref() != Some(REDACTED) {
        // A GET result sent back whole would otherwise make the placeholder the token.
        return Err(ApiError::bad_request(format!(
            "\"{REDACTED}\" is the placeholder GET shows; leave admin.token out of the patch \
             to keep the token, or send the new one"
        ))
        .with_field("admin.token"));
    }
    state.plane.apply(raw.clone(), config)?;
    if new_token != token(old) {
        if let Err(e) = state.set_token(new_token) {
            tracing::warn!("admin API: token not changed: {e}");
        }
    }
    Ok(raw)
}
