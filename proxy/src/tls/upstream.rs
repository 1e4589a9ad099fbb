//! TLS to backends (`upstreams.NAME.backends[i].tls`): the rustls client
//! configuration a backend's connections share, built once per
//! configuration, and what a failed handshake with a backend is called.
//! The handshake runs in the event loop (`server::tls_io::UpstreamTls`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// `backends[i].tls`, resolved: what a new connection to the backend needs.
#[derive(Clone)]
pub struct BackendTls {
    /// The name sent (SNI) and checked against the certificate.
    pub sni: String,
    /// PEM file of trusted roots; the system's when `None`.
    pub ca: Option<PathBuf>,
    /// Any certificate is accepted (the handshake's signatures still checked).
    pub insecure: bool,
    pub name: ServerName<'static>,
    /// Shared by every loop: its session store lets a new connection to
    /// the backend resume a session an earlier one got.
    pub client: Arc<ClientConfig>,
}

impl PartialEq for BackendTls {
    fn eq(&self, o: &BackendTls) -> bool {
        (&self.sni, &self.ca, self.insecure) == (&o.sni, &o.ca, o.insecure)
    }
}

impl Eq for BackendTls {}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls")
            .field("sni", &self.sni)
            .field("ca", &self.ca)
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Why `BackendTls::build` refused: the sub-field at fault and the reason.
#[derive(Debug)]
pub struct BackendTlsError {
    pub field: &'static str,
    pub message: String,
}

impl BackendTls {
    /// Reads `ca` now, so a missing or empty file is refused with the
    /// configuration and never found at the first request.
    pub fn build(
        sni: String,
        ca: Option<PathBuf>,
        insecure: bool,
    ) -> Result<BackendTls, BackendTlsError> {
        let name = ServerName::try_from(sni.clone()).map_err(|_| BackendTlsError {
            field: "sni",
            message: format!("{sni:?} is not a DNS name or an IP address"),
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3");
        let mut client = if insecure {
            let algorithms = provider.signature_verification_algorithms;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
                .with_no_client_auth()
        } else {
            let roots = roots(ca.as_deref()).map_err(|message| BackendTlsError {
                field: "ca",
                message,
            })?;
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(BackendTls {
            sni,
            ca,
            insecure,
            name,
            client: Arc::new(client),
        })
    }
}

fn roots(ca: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let Some(path) = ca else {
        let found = rustls_native_certs::load_native_certs();
        store.add_parsable_certificates(found.certs);
        if store.is_empty() {
            return Err(
                "no ca given and no trusted root certificates on this system; \
                 give ca: FILE (or insecure: true to skip the check)"
                    .to_string(),
            );
        }
        return Ok(store);
    };
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("{shown}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{shown}: {e}"))?;
        store.add(cert).map_err(|e| format!("{shown}: {e}"))?;
    }
    if store.is_empty() {
        return Err(format!("{shown}: no PEM certificate in it"));
    }
    Ok(store)
}

/// `insecure: true`: any certificate is taken; the handshake's signatures
/// are still verified, so the session is real TLS, only unauthenticated.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Why a handshake with a backend failed (index of
/// `speedmimi_upstream_tls_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTlsFailure {
    /// The chain does not lead to a trusted root (or cannot be parsed).
    Untrusted = 0,
    /// The certificate is not for the name sent (`tls.sni`).
    NameMismatch,
    /// Expired, or not valid yet.
    Expired,
    /// The backend sent an alert (it refused the handshake).
    Alert,
    /// Not finished within the upstream's `connect_timeout`.
    Timeout,
    /// The backend closed or reset mid-handshake.
    Closed,
    /// A protocol error, or no version or cipher suite in common.
    Other,
}

impl UpstreamTlsFailure {
    pub const COUNT: usize = 7;
    pub const ALL: [UpstreamTlsFailure; Self::COUNT] = [
        UpstreamTlsFailure::Untrusted,
        UpstreamTlsFailure::NameMismatch,
        UpstreamTlsFailure::Expired,
        UpstreamTlsFailure::Alert,
        UpstreamTlsFailure::Timeout,
        UpstreamTlsFailure::Closed,
        UpstreamTlsFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UpstreamTlsFailure::Untrusted => "untrusted",
            UpstreamTlsFailure::NameMismatch => "name_mismatch",
            UpstreamTlsFailure::Expired => "expired",
            UpstreamTlsFailure::Alert => "alert",
            UpstreamTlsFailure::Timeout => "timeout",
            UpstreamTlsFailure::Closed => "closed",
            UpstreamTlsFailure::Other => "other",
        }
    }

    pub fn of(e: &rustls::Error) -> UpstreamTlsFailure {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => UpstreamTlsFailure::Expired,
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    UpstreamTlsFailure::NameMismatch
                }
                _ => UpstreamTlsFailure::Untrusted,
            },
            rustls::Error::AlertReceived(_) => UpstreamTlsFailure::Alert,
            _ => UpstreamTlsFailure::Other,
        }
    }
}
