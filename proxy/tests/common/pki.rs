//! Certificates for TLS tests, made by the test (rcgen): a CA and the
//! leaves it signs, as PEM files in a temporary directory. No key here is
//! ever used outside a test.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;
use tempfile::TempDir;

/// A CA and the leaf certificates it signs, as PEM files in `dir`.
pub struct Pki {
    pub dir: TempDir,
    ca_key: KeyPair,
    ca: rcgen::Certificate,
}

/// A leaf's files and its DER (to compare with what a client was shown).
pub struct Leaf {
    pub cert: String,
    pub key: String,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "speedmimi test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { dir, ca_key, ca }
    }

    /// A leaf for `names`, written to `NAME.pem` and `NAME.key`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        let cert_path = self.path(&format!("{file}.pem"));
        let key_path = self.path(&format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    /// The CA's certificate as a PEM file (what a TLS client trusts).
    pub fn ca_file(&self) -> String {
        let path = self.path("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    /// A client that trusts this CA only, for one TLS version or both.
    pub fn client(
        &self,
        version: Option<&'static rustls::SupportedProtocolVersion>,
    ) -> Arc<ClientConfig> {
        let versions = match version {
            Some(v) => vec![v],
            None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let mut c = ClientConfig::builder_with_protocol_versions(&versions)
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}
