//! The admin API's URL space: which paths exist and which methods each
//! accepts. Matching happens before the body is read, so an unknown path
//! (404) or method (405) costs nothing.

use hyper::Method;
use percent_encoding::percent_decode_str;

use super::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Backends,
    StatsServer,
    Config,
    /// `/api/v1/upstreams/NAME/backends`
    UpstreamBackends {
        upstream: String,
    },
    /// `/api/v1/upstreams/NAME/backends/ADDR`
    UpstreamBackend {
        upstream: String,
        addr: String,
    },
    Metrics,
    Profile,
}

impl Route {
    /// The route of a request path (without its query), or `None`.
    /// Segments are percent-decoded, so `[::1]:9000` may arrive encoded.
    pub fn of(path: &str) -> Option<Route> {
        let segments: Vec<String> = path
            .strip_prefix('/')?
            .split('/')
            .map(|s| percent_decode_str(s).decode_utf8().map(|s| s.into_owned()))
            .collect::<Result<_, _>>()
            .ok()?;
        let s: Vec<&str> = segments.iter().map(String::as_str).collect();
        let route = match s.as_slice() {
            ["api", "v1", "health"] => Route::Health,
            ["api", "v1", "backends"] => Route::Backends,
            ["api", "v1", "stats", "server"] => Route::StatsServer,
            ["api", "v1", "config"] => Route::Config,
            ["api", "v1", "upstreams", name, "backends"] if !name.is_empty() => {
                Route::UpstreamBackends {
                    upstream: name.to_string(),
                }
            }
            ["api", "v1", "upstreams", name, "backends", addr]
                if !name.is_empty() && !addr.is_empty() =>
            {
                Route::UpstreamBackend {
                    upstream: name.to_string(),
                    addr: addr.to_string(),
                }
            }
            ["metrics"] => Route::Metrics,
            ["debug", "pprof", "profile"] => Route::Profile,
            _ => return None,
        };
        Some(route)
    }

    /// The methods this path accepts, as the `Allow` header lists them.
    pub fn allow(&self) -> &'static str {
        match self {
            Route::Config => "GET, PUT",
            Route::UpstreamBackends { .. } => "POST",
            Route::UpstreamBackend { .. } => "DELETE",
            _ => "GET",
        }
    }

    /// Refuses a method the path does not accept (405 with `Allow`).
    pub fn check_method(&self, method: &Method) -> Result<(), ApiError> {
        let allowed = self
            .allow()
            .split(", ")
            .any(|m| m.as_bytes() == method.as_str().as_bytes());
        if allowed {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed(self.allow()))
        }
    }

    /// Whether the handler reads a request body.
    pub fn takes_body(&self, method: &Method) -> bool {
        *method == Method::PUT || *method == Method::POST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_paths_and_decodes_segments() {
        assert_eq!(Route::of("/api/v1/health"), Some(Route::Health));
        assert_eq!(Route::of("/api/v1/health/"), None);
        assert_eq!(Route::of("/api/v1/nope"), None);
        assert_eq!(Route::of("api/v1/health"), None);
        assert_eq!(
            Route::of("/api/v1/upstreams/app/backends/%5B%3A%3A1%5D%3A9000"),
            Some(Route::UpstreamBackend {
                upstream: "app".into(),
                addr: "[::1]:9000".into()
            })
        );
        assert_eq!(Route::of("/api/v1/upstreams//backends"), None);
    }

    #[test]
    fn names_allowed_methods() {
        let r = Route::Config;
        assert!(r.check_method(&Method::PUT).is_ok());
        let e = r.check_method(&Method::DELETE).unwrap_err();
        assert_eq!(e.status, hyper::StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(e.allow, Some("GET, PUT"));
        assert!(Route::Metrics.check_method(&Method::POST).is_err());
    }
}
