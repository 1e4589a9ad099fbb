//! Bearer-token check for every admin request (when `admin.token` is set).
//! The comparison takes the same time wherever the first wrong byte is, so
//! response timing does not reveal a prefix of the token.

use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// Accepts the request when no token is configured, or when it carries
/// `Authorization: Bearer TOKEN` (scheme case-insensitive, RFC 9110 §11.1).
pub fn check(headers: &HeaderMap, token: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Ok(());
    };
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "this admin API needs a token; send Authorization: Bearer TOKEN (admin.token)",
        ));
    };
    let value = value.as_bytes();
    let sent = match value.iter().position(|&b| b == b' ') {
        Some(space) if value[..space].eq_ignore_ascii_case(b"bearer") => {
            value[space + 1..].trim_ascii()
        }
        _ => {
            return Err(ApiError::unauthorized(
                "the Authorization header must be \"Bearer TOKEN\" (admin.token)",
            ))
        }
    };
    // `ct_eq` on slices of different lengths is false without comparing;
    // only the length can leak, not the bytes.
    if bool::from(sent.ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "wrong bearer token; send the value of admin.token",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn no_token_accepts_everything() {
        assert!(check(&HeaderMap::new(), None).is_ok());
    }

    #[test]
    fn token_must_match_exactly() {
        let t = Some("s3cret");
        assert!(check(&with("Bearer s3cret"), t).is_ok());
        assert!(check(&with("bearer s3cret"), t).is_ok());
        assert!(check(&HeaderMap::new(), t).is_err());
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer ",
            "Basic s3cret",
            "s3cret",
        ] {
            assert!(check(&with(bad), t).is_err(), "{bad}");
        }
    }
}
