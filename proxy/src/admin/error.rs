//! The admin API's one error type: every refusal becomes a JSON body
//! `{"error": "...", "field": "..."}` with its status, so clients parse one
//! shape whatever went wrong.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::config::ConfigError;
use crate::control::ApplyError;

/// Why a request was refused; becomes the response via `into_response`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Dotted path of the offending field or parameter, when there is one.
    pub field: Option<String>,
    /// The methods the path accepts (405 only), for the `Allow` header.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
            allow: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method not allowed here; use {allow}"),
            )
        }
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {limit} bytes; send a smaller patch"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// Not addressed to this API (DNS rebinding defence, `cross_site`).
    pub fn misdirected(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::MISDIRECTED_REQUEST, message)
    }

    /// A body to write that is not declared JSON (`cross_site`).
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The JSON body: `field` is left out when there is none.
    pub fn body(&self) -> Value {
        let mut body = json!({ "error": self.message });
        if let Some(field) = &self.field {
            body["field"] = json!(field);
        }
        body
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = json_response(self.status, &self.body());
        let headers = response.headers_mut();
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"speedmimi-admin\""),
            );
        }
        response
    }
}

/// A rejected configuration (bad JSON, wrong type, invalid value): 400
/// naming the field, with the validator's message (not its origin prefix).
impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> ApiError {
        ApiError::bad_request(e.message).with_field(e.field)
    }
}

/// The server refused a valid configuration (a restart-only field, workers
/// that did not acknowledge): 409, nothing was changed.
impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, e.message).with_field(e.field.unwrap_or_default())
    }
}

/// A JSON response with its content type.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec_pretty(body).unwrap_or_default();
    text.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
