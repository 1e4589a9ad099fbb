//! The HTTP side: accepts admin connections, serves them with hyper
//! (HTTP/1.1), and for each request checks the token (or, without one,
//! that it is addressed to loopback), matches the route, checks that a body
//! to write is JSON, reads a bounded body and runs the handler on the blocking pool, so a
//! slow `apply` or a profile never stalls other admin requests.

use std::convert::Infallible;
use std::sync::atomic::Ordering::{AcqRel, Release};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::error::{json_response, ApiError};
use super::routes::Route;
use super::{api, auth, cross_site, metrics, profile, State};

/// Largest request body read (a merge patch or a backend).
pub const MAX_BODY: usize = 1 << 20;
/// Connections served at once; more are closed at accept. The admin port
/// shares the process's file limit with the data plane.
const MAX_CONNECTIONS: usize = 64;
/// Time a client gets to send a whole request head; an idle keep-alive
/// connection is closed after it too, so it cannot hold a slot.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

type Answer = Response<Full<Bytes>>;

pub async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let open = state.open.clone();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!("admin API: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.fetch_add(1, AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Release);
            tracing::warn!("admin API: {MAX_CONNECTIONS} connections open, closing a new one");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("admin API connection: {e}");
            }
            open.fetch_sub(1, Release);
        });
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Answer {
    match respond(state, req).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn respond(state: Arc<State>, req: Request<Incoming>) -> Result<Answer, ApiError> {
    let token = state.token();
    // Liveness answers without the token: it tells nothing a TCP connect
    // does not, and a Kubernetes or load-balancer probe cannot send secrets.
    let liveness = req.uri().path() == "/api/v1/health" && req.method() == Method::GET;
    if !liveness {
        auth::check(req.headers(), token.as_deref())?;
    }
    if token.is_none() {
        cross_site::check_host(req.headers(), req.uri())?;
    }
    let route = Route::of(req.uri().path()).ok_or_else(|| {
        ApiError::not_found(format!(
            "no endpoint {}; see docs/admin.md for the list",
            req.uri().path()
        ))
    })?;
    route.check_method(req.method())?;
    let method = req.method().clone();
    let reads_body = route.takes_body(&method);
    cross_site::check_content_type(&method, req.headers(), reads_body)?;
    let query = req.uri().query().map(str::to_string);
    let body = if reads_body {
        read_body(req).await?
    } else {
        Bytes::new()
    };
    let job = move || run(&state, route, &method, query.as_deref(), &body);
    match tokio::task::spawn_blocking(job).await {
        Ok(answer) => answer,
        Err(e) => Err(ApiError::internal(format!("the handler failed: {e}"))),
    }
}

/// Reads at most `MAX_BODY` bytes: a declared larger length is refused
/// before reading, a chunked body as soon as it passes the limit.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::too_large(MAX_BODY));
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::too_large(MAX_BODY)),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// The handlers, on the blocking pool.
fn run(
    state: &State,
    route: Route,
    method: &Method,
    query: Option<&str>,
    body: &[u8],
) -> Result<Answer, ApiError> {
    let json = |answer: api::Answer| answer.map(|(status, v)| json_response(status, &v));
    match route {
        Route::Health => json(api::health()),
        Route::Backends => json(api::backends(state, query)),
        Route::StatsServer => json(api::stats(state)),
        Route::Config if *method == Method::PUT => json(api::put_config(state, body)),
        Route::Config => json(api::get_config(state)),
        Route::UpstreamBackends { upstream } => json(api::add_backend(state, &upstream, body)),
        Route::UpstreamBackend { upstream, addr } => {
            json(api::remove_backend(state, &upstream, &addr))
        }
        Route::Metrics => {
            let text = metrics::render(state.plane.as_ref())
                .map_err(|e| ApiError::internal(format!("encoding the metrics failed: {e}")))?;
            Ok(with_type(text.into(), metrics::CONTENT_TYPE))
        }
        Route::Profile => {
            let seconds = profile::seconds(query)?;
            let worker = profile::worker(query, state.plane.worker_processes())?;
            let profiled = profile::profile(state, seconds, worker)?;
            let mut answer = with_type(profiled.gz.into(), "application/octet-stream");
            // Which workers the samples come from, and which sent none.
            let headers = answer.headers_mut();
            if !profiled.workers.is_empty() {
                let list: Vec<String> = profiled.workers.iter().map(usize::to_string).collect();
                if let Ok(v) = HeaderValue::from_str(&list.join(",")) {
                    headers.insert("x-profile-workers", v);
                }
            }
            if !profiled.missing.is_empty() {
                let text = profiled
                    .missing
                    .join("; ")
                    .replace(|c: char| !c.is_ascii() || c.is_ascii_control(), "?");
                if let Ok(v) = HeaderValue::from_str(&text) {
                    headers.insert("x-profile-missing", v);
                }
            }
            Ok(answer)
        }
    }
}

fn with_type(body: Bytes, content_type: &'static str) -> Answer {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
