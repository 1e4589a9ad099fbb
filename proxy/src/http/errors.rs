//! The catalogue of answers the proxy synthesizes itself. Status line, body
//! and counter come from one table so they cannot drift apart. Every such
//! answer closes the connection: after an error the framing of whatever
//! follows cannot be trusted.

/// Why the proxy answered by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reject {
    /// Malformed or ambiguous request framing.
    BadRequest,
    /// No route matched the request.
    NotFound,
    /// The request head did not arrive within the header timeout.
    RequestTimeout,
    /// The request target is longer than the proxy accepts.
    UriTooLong,
    /// The request head is larger than the proxy accepts.
    HeadersTooLarge,
    /// A transfer coding other than chunked, or CONNECT.
    NotImplemented,
    /// The backend refused, reset or answered garbage.
    BadGateway,
    /// No healthy backend, or max_conn reached.
    Unavailable,
    /// The backend did not answer in time.
    GatewayTimeout,
}

impl Reject {
    pub const COUNT: usize = 9;
    pub const ALL: [Reject; Reject::COUNT] = [
        Reject::BadRequest,
        Reject::NotFound,
        Reject::RequestTimeout,
        Reject::UriTooLong,
        Reject::HeadersTooLarge,
        Reject::NotImplemented,
        Reject::BadGateway,
        Reject::Unavailable,
        Reject::GatewayTimeout,
    ];

    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest => 400,
            Reject::NotFound => 404,
            Reject::RequestTimeout => 408,
            Reject::UriTooLong => 414,
            Reject::HeadersTooLarge => 431,
            Reject::NotImplemented => 501,
            Reject::BadGateway => 502,
            Reject::Unavailable => 503,
            Reject::GatewayTimeout => 504,
        }
    }

    /// Counter / metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Reject::BadRequest => "bad_request",
            Reject::NotFound => "not_found",
            Reject::RequestTimeout => "request_timeout",
            Reject::UriTooLong => "uri_too_long",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::NotImplemented => "not_implemented",
            Reject::BadGateway => "bad_gateway",
            Reject::Unavailable => "service_unavailable",
            Reject::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The whole answer on the wire.
    pub fn response(self) -> &'static [u8] {
        // The body length is spelled out so the table stays a constant; a
        // test checks each one.
        macro_rules! answer {
            ($status:literal, $len:literal, $body:literal) => {
                concat!(
                    "HTTP/1.1 ",
                    $status,
                    "\r\nServer: speedmimi\r\nContent-Type: text/plain\r\nContent-Length: ",
                    $len,
                    "\r\nConnection: close\r\n\r\n",
                    $body
                )
                .as_bytes()
            };
        }
        match self {
            Reject::BadRequest => answer!("400 Bad Request", "12", "bad request\n"),
            Reject::NotFound => answer!("404 Not Found", "9", "no route\n"),
            Reject::RequestTimeout => answer!("408 Request Timeout", "16", "request timeout\n"),
            Reject::UriTooLong => answer!("414 URI Too Long", "13", "uri too long\n"),
            Reject::HeadersTooLarge => {
                answer!(
                    "431 Request Header Fields Too Large",
                    "18",
                    "headers too large\n"
                )
            }
            Reject::NotImplemented => answer!("501 Not Implemented", "16", "not implemented\n"),
            Reject::BadGateway => answer!("502 Bad Gateway", "12", "bad gateway\n"),
            Reject::Unavailable => {
                answer!("503 Service Unavailable", "20", "service unavailable\n")
            }
            Reject::GatewayTimeout => answer!("504 Gateway Timeout", "16", "gateway timeout\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_matches_body() {
        for r in Reject::ALL {
            let text = std::str::from_utf8(r.response()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(cl, body.len(), "{r:?}");
            assert!(head.starts_with(&format!("HTTP/1.1 {}", r.status())));
        }
    }
}
