//! TLS termination on rustls: the validated `server.tls` settings
//! (`TlsConfig`), the certificates picked by SNI (`certs`), and the session
//! ticket keys every loop and worker process of one proxy share (`tickets`).
//! The per-connection state machine runs inside the event loops
//! (`server::tls_io`); nothing here blocks.

pub mod certs;
pub mod tickets;
pub mod upstream;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;

pub use certs::{CertError, CertFiles, SniCerts};

/// TLS 1.2 session IDs remembered per process (resumption without tickets).
const SESSION_CACHE: usize = 10_000;

/// `server.tls`, resolved: the rustls configuration new handshakes use.
#[derive(Clone)]
pub struct TlsConfig {
    pub rustls: Arc<ServerConfig>,
    pub handshake_timeout: Duration,
    /// Each certificate's files and the names it answers for, in order.
    pub certificates: Vec<CertFiles>,
    pub session_tickets: bool,
    pub versions: Vec<&'static str>,
}

impl TlsConfig {
    /// `server.tls` as it would be written, every default filled in.
    pub fn to_raw(&self) -> crate::config::RawTls {
        crate::config::RawTls {
            certificates: self
                .certificates
                .iter()
                .map(|c| crate::config::RawCertificate {
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                })
                .collect(),
            handshake_timeout: Some(crate::config::format_duration(self.handshake_timeout)),
            versions: Some(self.versions.iter().map(|v| v.to_string()).collect()),
            session_tickets: Some(self.session_tickets),
        }
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("certificates", &self.certificates)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("session_tickets", &self.session_tickets)
            .field("versions", &self.versions)
            .finish()
    }
}

/// Which protocol versions `server.tls.versions` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    Both,
    Only12,
    Only13,
}

impl TlsConfig {
    /// The rustls side of `server.tls`: SNI certificates, ALPN http/1.1,
    /// tickets sealed with the proxy's shared keys (`tickets`), one
    /// session-ID cache per process that outlives reloads.
    pub fn build(
        certs: SniCerts,
        handshake_timeout: Duration,
        versions: Versions,
        session_tickets: bool,
    ) -> TlsConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let protocol: &[&'static rustls::SupportedProtocolVersion] = match versions {
            Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
            Versions::Only12 => &[&rustls::version::TLS12],
            Versions::Only13 => &[&rustls::version::TLS13],
        };
        let names = match versions {
            Versions::Both => vec!["1.2", "1.3"],
            Versions::Only12 => vec!["1.2"],
            Versions::Only13 => vec!["1.3"],
        };
        let certificates = certs.summary();
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(protocol)
            .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(certs));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = session_cache();
        if session_tickets {
            config.ticketer = tickets::SharedTicketer::shared();
        } else {
            // No tickets of either kind: 1.3 would otherwise hand out
            // stateful ones from the cache.
            config.send_tls13_tickets = 0;
        }
        TlsConfig {
            rustls: Arc::new(config),
            handshake_timeout,
            certificates,
            session_tickets,
            versions: names,
        }
    }
}

fn session_cache() -> Arc<dyn StoresServerSessions> {
    static CACHE: OnceLock<Arc<dyn StoresServerSessions>> = OnceLock::new();
    CACHE
        .get_or_init(|| ServerSessionMemoryCache::new(SESSION_CACHE))
        .clone()
}

/// A handshake that failed, by what went wrong (the `reason` label of
/// `speedmimi_tls_handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum HandshakeFailure {
    /// Not done within `server.tls.handshake_timeout`.
    Timeout = 0,
    /// Bytes that are not TLS (a plaintext request to the TLS port, garbage).
    Malformed,
    /// No version, cipher suite, group or protocol in common.
    Incompatible,
    /// The client sent an alert (it did not trust our certificate, say).
    Alert,
    /// The client closed or reset the connection mid-handshake.
    Closed,
    Other,
}

impl HandshakeFailure {
    pub const COUNT: usize = 6;
    pub const ALL: [HandshakeFailure; Self::COUNT] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Malformed,
        HandshakeFailure::Incompatible,
        HandshakeFailure::Alert,
        HandshakeFailure::Closed,
        HandshakeFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Malformed => "malformed",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::Alert => "alert",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Other => "other",
        }
    }

    pub fn of(e: &rustls::Error) -> HandshakeFailure {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::DecryptError => HandshakeFailure::Malformed,
            E::PeerIncompatible(_) | E::NoApplicationProtocol => HandshakeFailure::Incompatible,
            E::AlertReceived(_) => HandshakeFailure::Alert,
            _ => HandshakeFailure::Other,
        }
    }
}
