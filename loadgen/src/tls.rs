//! HTTPS targets: the rustls client configuration a run shares across its
//! connections, and what a failed handshake is called. The handshake itself
//! runs in the engine's event loop (`engine::worker`), non-blocking.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, Tls12Resumption};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Sessions kept for resumption (`--tls-resume`), per run.
const SESSION_CACHE: usize = 4096;

/// `--tls-version`: one version only, or both (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Version, String> {
        match s {
            "1.2" => Ok(Version::Tls12),
            "1.3" => Ok(Version::Tls13),
            _ => Err(format!("{s:?}: expected 1.2 or 1.3")),
        }
    }
}

/// The TLS options of `loadgen run`.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Server name sent (SNI) and checked; the URL's host by default.
    pub sni: Option<String>,
    /// PEM file of trusted certificates; the system's roots by default.
    pub cacert: Option<PathBuf>,
    /// Accept any certificate (still checks the handshake's signatures).
    pub insecure: bool,
    pub version: Option<Version>,
    /// Offer sessions for resumption (tickets, or session ids in TLS 1.2).
    pub resume: bool,
    /// Key exchange groups to offer, in order (`--tls-kx`); the provider's
    /// default (X25519MLKEM768 first, as browsers now do) when empty.
    pub kx: Vec<String>,
}

/// What every TLS connection of a run starts from.
#[derive(Clone)]
pub struct TlsSetup {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsSetup({:?})", self.server_name)
    }
}

/// Builds the client configuration; the error names the option at fault.
pub fn setup(host: &str, o: &TlsOptions) -> Result<TlsSetup, String> {
    let name = o.sni.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|_| format!("--sni {name:?}: not a DNS name or an IP address"))?;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !o.kx.is_empty() {
        provider.kx_groups = kx_groups(&o.kx)?;
    }
    let provider = Arc::new(provider);
    let versions: &[&'static rustls::SupportedProtocolVersion] = match o.version {
        Some(Version::Tls12) => &[&rustls::version::TLS12],
        Some(Version::Tls13) => &[&rustls::version::TLS13],
        None => rustls::DEFAULT_VERSIONS,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("--tls-version: {e}"))?;
    let mut config = if o.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(o.cacert.as_ref())?)
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if o.resume {
        Resumption::in_memory_sessions(SESSION_CACHE)
            .tls12_resumption(Tls12Resumption::SessionIdOrTickets)
    } else {
        // Every handshake full unless asked: the cost a new client pays.
        Resumption::disabled()
    };
    Ok(TlsSetup {
        config: Arc::new(config),
        server_name,
    })
}

fn kx_groups(
    names: &[String],
) -> Result<Vec<&'static dyn rustls::crypto::SupportedKxGroup>, String> {
    let all = rustls::crypto::aws_lc_rs::ALL_KX_GROUPS;
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|g| group_name(u16::from(g.name())).eq_ignore_ascii_case(n))
                .copied()
                .ok_or_else(|| {
                    let known: Vec<String> = all
                        .iter()
                        .map(|g| group_name(u16::from(g.name())))
                        .collect();
                    format!(
                        "--tls-kx {n:?}: not a group this build has ({})",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// A named group's IANA code as its name (`X25519`, `X25519MLKEM768`).
pub fn group_name(code: u16) -> String {
    format!("{:?}", rustls::NamedGroup::from(code))
}

fn roots(cacert: Option<&PathBuf>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match cacert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--cacert {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("--cacert {}: {e}", path.display()))?;
                store
                    .add(cert)
                    .map_err(|e| format!("--cacert {}: {e}", path.display()))?;
            }
            if store.is_empty() {
                return Err(format!(
                    "--cacert {}: no PEM certificate in it",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no trusted root certificates on this system: give --cacert FILE \
                     (or --insecure to skip the check)"
                        .to_string(),
                );
            }
        }
    }
    Ok(store)
}

/// `--insecure`: any certificate chain is accepted; the handshake's
/// signatures are still verified, so the session is real TLS.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a handshake failed, as the error counters name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The chain does not lead to a trusted root (or is malformed).
    Untrusted,
    /// The certificate is not for the name asked (SNI).
    NameMismatch,
    /// Expired, or not yet valid.
    Expired,
    /// The server sent an alert (it refused the handshake).
    Alert,
    /// Anything else: a protocol error, the server closing mid-handshake.
    Other,
}

impl Failure {
    pub fn of(e: &rustls::Error) -> Failure {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => Failure::Expired,
                C::NotValidForName | C::NotValidForNameContext { .. } => Failure::NameMismatch,
                _ => Failure::Untrusted,
            },
            rustls::Error::AlertReceived(_) => Failure::Alert,
            _ => Failure::Other,
        }
    }
}

/// The negotiated version as the summary prints it.
pub fn version_name(tls13: bool) -> &'static str {
    if tls13 {
        "TLSv1.3"
    } else {
        "TLSv1.2"
    }
}

/// A cipher suite's IANA code as its name (`TLS13_AES_128_GCM_SHA256`).
pub fn suite_name(code: u16) -> String {
    format!("{:?}", rustls::CipherSuite::from(code))
}
