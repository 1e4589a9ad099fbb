//! The configuration as written: a serde model of the YAML file with every
//! optional field an `Option` and durations kept as text. The admin API
//! serializes it to JSON, applies a merge patch and validates it again, so
//! it must round-trip without losing what the user wrote.

use indexmap::IndexMap;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<RawAdmin>,
    pub upstreams: IndexMap<String, RawUpstream>,
    pub routing: IndexMap<String, RawRoute>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Workers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_conn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_size: Option<Size>,
    /// Bytes per second a client must move while the proxy waits on it
    /// (a request body, or reading a response); 0 turns the rule off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rate: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rate_grace: Option<String>,
    /// Where to write one JSON line per request: a file path, or "stderr".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<String>,
    /// Makes `listen` a TLS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
}

/// `server.tls`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificates: Vec<RawCertificate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<String>,
    /// "1.2" and/or "1.3".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_tickets: Option<bool>,
}

/// One entry of `server.tls.certificates`: PEM files.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the token (a mounted Secret), read at start, on
    /// SIGHUP and on `PUT /api/v1/config`; instead of `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub backends: Vec<RawBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<AutoOrCount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fails: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_conns: Option<AutoOrCount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<String>,
    /// Active health checks; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<RawHealthCheck>,
}

/// `upstreams.NAME.health_check`: every field optional (defaults in
/// `validate`), so `health_check: {}` turns checks on with the defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<ExpectStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Speak TLS to this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawBackendTls>,
}

/// `backends[i].tls`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTls {
    /// Name sent and checked; the backend's IP address by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM file of trusted roots; the system's by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub upstream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<String>,
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matcher: Option<RawMatch>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

/// `workers: auto` or a thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(u64),
}

impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`auto` or a number of threads")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Workers, E> {
                Ok(Workers::Count(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Workers, E> {
                u64::try_from(n)
                    .map(Workers::Count)
                    .map_err(|_| E::custom(format!("{n} workers; write auto or a number ≥ 1")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Workers, E> {
                match s {
                    "auto" => Ok(Workers::Auto),
                    _ => s.parse().map(Workers::Count).map_err(|_| {
                        E::custom(format!(
                            "invalid workers \"{s}\"; write auto or a number of threads"
                        ))
                    }),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `upstreams.NAME.keepalive` and `max_conns`: `auto` (the pool follows
/// demand; the connection limit adapts, `upstream::conn_limit`) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoOrCount {
    Auto,
    Count(u64),
}

impl Serialize for AutoOrCount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AutoOrCount::Auto => s.serialize_str("auto"),
            AutoOrCount::Count(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for AutoOrCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AutoOrCount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`auto` or a number")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<AutoOrCount, E> {
                Ok(AutoOrCount::Count(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<AutoOrCount, E> {
                u64::try_from(n)
                    .map(AutoOrCount::Count)
                    .map_err(|_| E::custom(format!("{n}; write auto or a number ≥ 0")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<AutoOrCount, E> {
                match s {
                    "auto" => Ok(AutoOrCount::Auto),
                    _ => s
                        .parse()
                        .map(AutoOrCount::Count)
                        .map_err(|_| E::custom(format!("invalid \"{s}\"; write auto or a number"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte size: a plain number of bytes or text such as `16KiB`; the text
/// is kept as written and parsed during validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Size::Bytes(n) => s.serialize_u64(*n),
            Size::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(
            match number_or_text(d, "size", "a size in bytes or text such as 16KiB")? {
                Ok(n) => Size::Bytes(n),
                Err(text) => Size::Text(text),
            },
        )
    }
}

/// A field written as a whole number or as text, the text kept as written
/// for validation to parse; `noun` names a negative number in the error.
fn number_or_text<'de, D: Deserializer<'de>>(
    d: D,
    noun: &'static str,
    expecting: &'static str,
) -> Result<Result<u64, String>, D::Error> {
    struct V {
        noun: &'static str,
        expecting: &'static str,
    }
    impl Visitor<'_> for V {
        type Value = Result<u64, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Ok(n))
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
            u64::try_from(n)
                .map(Ok)
                .map_err(|_| E::custom(format!("negative {} {n}", self.noun)))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Err(s.to_string()))
        }
    }
    d.deserialize_any(V { noun, expecting })
}

/// `expect_status`: one code (`200`) or a range as text (`"200-399"`);
/// the text is kept as written and checked during validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectStatus {
    Code(u64),
    Text(String),
}

impl Serialize for ExpectStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ExpectStatus::Code(n) => s.serialize_u64(*n),
            ExpectStatus::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expecting = "a status code such as 200 or a range such as \"200-399\"";
        Ok(match number_or_text(d, "status", expecting)? {
            Ok(n) => ExpectStatus::Code(n),
            Err(text) => ExpectStatus::Text(text),
        })
    }
}
