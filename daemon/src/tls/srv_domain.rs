//! The TLS rule of DNS SRV discovery (spec §5.2).
//!
//! etcd bootstrapped with `--discovery-srv <domain>`, `https://` peers and no
//! `--peer-trusted-ca-file` verifies the peers it dials against the system's trusted
//! roots with the TLS server name forced to `<domain>`: a certificate from a public (or
//! system-installed) CA that names the cluster's domain vouches for every member.
//! With a peer CA the server name stays each peer URL's host (the SRV target).
//!
//! qetcd applies the rule on every start of such a member, not only on the first one as
//! etcd (which forgets it once its data dir exists, so a certificate naming only the
//! domain stops working on restart). Auto-TLS certificates are never verified, here as
//! in etcd, so the rule does not apply to them.
//!
//! The system roots are Go's on Linux: `$SSL_CERT_FILE` if set, else the first bundle
//! of the usual distribution paths (Debian's `/etc/ssl/certs/ca-certificates.crt`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::RootCertStore;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::TlsError;
use crate::config::Config;

/// The bundles Go's crypto/x509 looks for on Linux, in its order.
const SYSTEM_BUNDLES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The domain peers' certificates must name, when the rule applies to `cfg`.
pub fn forced_server_name(cfg: &Config) -> Option<&str> {
    let tls = &cfg.peer_tls;
    let https = cfg
        .initial_advertise_peer_urls
        .iter()
        .chain(&cfg.listen_peer_urls)
        .any(|u| u.scheme() == "https");
    let applies = !cfg.discovery_srv.is_empty()
        && https
        && !tls.cert_file.is_empty()
        && tls.trusted_ca_file.is_empty();
    applies.then(|| cfg.discovery_srv.trim_end_matches('.'))
}

/// The system's trusted roots and the file they came from.
pub fn system_roots() -> Result<(Arc<RootCertStore>, PathBuf), TlsError> {
    let path = match std::env::var_os("SSL_CERT_FILE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => SYSTEM_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .map(Path::to_path_buf)
            .ok_or_else(|| TlsError::Pem {
                path: SYSTEM_BUNDLES[0].into(),
                what: "no system CA bundle found (needed to verify peers named after the --discovery-srv domain without --peer-trusted-ca-file; install ca-certificates or set SSL_CERT_FILE)".into(),
            })?,
    };
    // A system bundle may hold certificates webpki cannot use; skip those, as Go does.
    let mut roots = RootCertStore::empty();
    let (_added, _skipped) =
        roots.add_parsable_certificates(super::key_files::certificates(&path)?);
    if roots.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "no usable CA certificate".into(),
        });
    }
    Ok((Arc::new(roots), path))
}

/// Verifies a dialled peer as `domain`, whatever name it was dialled by.
#[derive(Debug)]
pub struct DomainVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub domain: ServerName<'static>,
}

impl DomainVerifier {
    pub fn new(inner: Arc<dyn ServerCertVerifier>, domain: &str) -> Result<Self, TlsError> {
        let domain = ServerName::try_from(domain.to_string()).map_err(|e| {
            TlsError::Rustls(rustls::Error::General(format!(
                "--discovery-srv {domain:?} is not a usable TLS server name: {e}"
            )))
        })?;
        Ok(DomainVerifier { inner, domain })
    }
}

impl ServerCertVerifier for DomainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled_as: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.domain, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Parsed;

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["qetcd"];
        all.extend_from_slice(args);
        match Config::parse(all, &[]).unwrap() {
            Parsed::Run { config, .. } => *config,
            _ => panic!("not a run"),
        }
    }

    #[test]
    fn applies_only_to_srv_https_peers_with_certificates_and_no_ca() {
        let base = [
            "--discovery-srv",
            "example.com.",
            "--listen-peer-urls",
            "https://10.0.1.10:2380",
            "--initial-advertise-peer-urls",
            "https://infra0.example.com:2380",
        ];
        let with = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            config(&a)
        };
        let certs = ["--peer-cert-file", "p.crt", "--peer-key-file", "p.key"];
        assert_eq!(forced_server_name(&with(&certs)), Some("example.com"));
        let mut ca = certs.to_vec();
        ca.extend(["--peer-trusted-ca-file", "ca.crt"]);
        assert_eq!(forced_server_name(&with(&ca)), None);
        assert_eq!(forced_server_name(&with(&["--peer-auto-tls"])), None);
        let static_cluster = config(&[
            "--listen-peer-urls",
            "https://10.0.1.10:2380",
            "--peer-cert-file",
            "p.crt",
            "--peer-key-file",
            "p.key",
        ]);
        assert_eq!(forced_server_name(&static_cluster), None);
    }
}
