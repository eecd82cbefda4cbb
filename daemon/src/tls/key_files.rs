//! Certificates, keys, CA bundles and CRLs read from PEM files, and the reloading
//! certificate source behind `--cert-file`/`--key-file` (and the peer twins).
//!
//! etcd re-reads its leaf certificate on every handshake, so a renewed certificate is
//! picked up by the next connection. We do the same, but only re-parse when the files'
//! metadata changed: a `stat` per handshake instead of two file reads and a key parse.
//! A renewal that cannot be loaded (half-written file, key not matching) keeps the
//! previous pair in service and logs why. CA bundles and CRLs are read once at start:
//! changing them needs a restart.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::TlsError;

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
            path: path.display().to_string(),
            source,
        },
        other => TlsError::Pem {
            path: path.display().to_string(),
            what: format!("{other:?}"),
        },
    }
}

/// Every certificate in a PEM file; at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, SEC1 or PKCS#1). Never logged.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// A CA bundle as trust anchors.
pub fn trust_anchors(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Revocation lists from a file holding PEM `X509 CRL` blocks or one DER CRL (etcd 3.6
/// reads DER, 3.5 also PEM; both are accepted).
pub fn revocation_lists(
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if bytes.starts_with(b"-----") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(path, e))
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// What identifies a version of a file on disk.
type Stamp = (i64, i64, u64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.ino(), m.len()))
}

/// A certificate chain and its key, loaded from two files and reloaded when they change.
#[derive(Debug)]
pub struct ReloadingKeyPair {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<(Option<Stamp>, Option<Stamp>, Arc<CertifiedKey>)>,
}

impl ReloadingKeyPair {
    /// Loads the pair now: unreadable or mismatched files are a start-up error.
    pub fn open(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, TlsError> {
        let stamps = (stamp(cert_path), stamp(key_path));
        let key = load_pair(cert_path, key_path, &provider)?;
        Ok(Arc::new(ReloadingKeyPair {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            loaded: Mutex::new((stamps.0, stamps.1, key)),
        }))
    }

    /// The pair to present on a new handshake.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        let mut loaded = self.loaded.lock().expect("key pair lock");
        if (loaded.0, loaded.1) != now {
            match load_pair(&self.cert_path, &self.key_path, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert_path.display(), "reloaded TLS certificate");
                    *loaded = (now.0, now.1, key);
                }
                Err(e) => {
                    // Remember the stamps so that a broken file is reported once, not
                    // on every handshake; the next change is tried again.
                    tracing::warn!(error = %e, "cannot reload TLS certificate; keeping the previous one");
                    loaded.0 = now.0;
                    loaded.1 = now.1;
                }
            }
        }
        loaded.2.clone()
    }
}

fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates(cert_path)?;
    let key = private_key(key_path)?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Pem {
        path: format!("{} + {}", cert_path.display(), key_path.display()),
        what: e.to_string(),
    })?;
    Ok(Arc::new(key))
}

impl rustls::server::ResolvesServerCert for ReloadingKeyPair {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingKeyPair {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
