//! Certificates from PEM files, and the choice among them by SNI: each
//! certificate answers for the DNS names in its subjectAltName (a
//! `*.example.org` name for one label under example.org); a client that
//! names none of them, or no name at all, gets the first certificate.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate or key could not be used: which of the two files, and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    /// `cert` or `key`.
    pub which: &'static str,
    pub message: String,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One loaded certificate chain with its key, and its names.
struct Entry {
    key: Arc<CertifiedKey>,
    files: CertFiles,
}

/// Where a certificate came from, and the names it answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: String,
    pub key: String,
    pub names: Vec<String>,
}

/// The certificates of `server.tls.certificates`, picked by SNI.
pub struct SniCerts {
    entries: Vec<Entry>,
    /// Lower-case exact names, and wildcard suffixes (`.example.org`), to
    /// the index of the first certificate that has them.
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl fmt::Debug for SniCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.files))
            .finish()
    }
}

impl SniCerts {
    pub fn new() -> SniCerts {
        SniCerts {
            entries: Vec::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }

    /// Reads a chain (`cert_file`, leaf first) and its private key
    /// (`key_file`: PKCS#8, PKCS#1 RSA or SEC1 EC, in PEM), checks that the
    /// key belongs to the leaf, and adds them.
    pub fn add_files(&mut self, cert_file: &str, key_file: &str) -> Result<(), CertError> {
        let cert_err = |message: String| CertError {
            which: "cert",
            message,
        };
        let key_err = |message: String| CertError {
            which: "key",
            message,
        };
        let pem = std::fs::read(cert_file)
            .map_err(|e| cert_err(format!("cannot read {cert_file}: {e}")))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| cert_err(format!("{cert_file} is not valid PEM: {e}")))?;
        if chain.is_empty() {
            return Err(cert_err(format!(
                "{cert_file} holds no certificate (expected -----BEGIN CERTIFICATE-----)"
            )));
        }
        let leaf = webpki_names(&chain[0]).map_err(|e| {
            cert_err(format!(
                "{cert_file}: the first certificate is not X.509 ({e})"
            ))
        })?;
        let pem =
            std::fs::read(key_file).map_err(|e| key_err(format!("cannot read {key_file}: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            key_err(format!(
                "{key_file} holds no private key in PEM (PKCS#8, RSA or EC): {e}"
            ))
        })?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => key_err(format!(
                "the key in {key_file} does not belong to the certificate in {cert_file}"
            )),
            other => key_err(format!("{key_file}: unusable key: {other}")),
        })?;
        let index = self.entries.len();
        for name in &leaf {
            let lower = name.to_ascii_lowercase();
            match lower.strip_prefix('*') {
                Some(suffix) => self.wildcard.entry(suffix.to_string()).or_insert(index),
                None => self.exact.entry(lower).or_insert(index),
            };
        }
        self.entries.push(Entry {
            key: Arc::new(certified),
            files: CertFiles {
                cert: cert_file.to_string(),
                key: key_file.to_string(),
                names: leaf,
            },
        });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each certificate's files and names, in order.
    pub fn summary(&self) -> Vec<CertFiles> {
        self.entries.iter().map(|e| e.files.clone()).collect()
    }

    /// The certificate for a server name (None: the default, the first).
    pub fn pick(&self, server_name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let chosen = server_name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).copied().or_else(|| {
                let dot = name.find('.')?;
                self.wildcard.get(&name[dot..]).copied()
            })
        });
        self.entries.get(chosen.unwrap_or(0)).map(|e| &e.key)
    }
}

impl Default for SniCerts {
    fn default() -> Self {
        SniCerts::new()
    }
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).cloned()
    }
}

/// The DNS names in a certificate's subjectAltName.
fn webpki_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("{e:?}"))?;
    Ok(parsed.valid_dns_names().map(str::to_string).collect())
}
