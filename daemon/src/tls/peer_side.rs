//! The TLS configs peer QUIC connections run on.
//!
//! QUIC always encrypts, with TLS 1.3 (whatever `--tls-min/max-version` say for client
//! listeners). What the peer flags change is authentication:
//! - `http://` peer URLs: a throwaway self-signed certificate, any certificate accepted.
//!   Private on the wire; membership is judged by the handshake's cluster and member IDs.
//! - `--peer-auto-tls`: the same, with the generated certificate kept in the data dir.
//! - `--peer-cert-file`/`--peer-key-file` with a trusted CA: each side verifies the
//!   other against `--peer-trusted-ca-file` (server name = the peer URL's host), and
//!   the accepting side checks allowed CNs/hostnames and the address SANs (§6.4).

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::identity::{AllowedIdentity, AnyServerCertificate, RestrictedServerVerifier};
use super::{TlsError, auto_tls, cipher_suites, key_files};
use crate::config::Config;

/// Server name presented when dialing a peer whose URL host cannot be one.
pub const FALLBACK_SERVER_NAME: &str = "qetcd-peer";

/// Both directions of peer TLS.
pub struct PeerTls {
    pub server: rustls::ServerConfig,
    pub client: rustls::ClientConfig,
    /// Whether peers' certificates are verified (and so carry identity).
    pub verified: bool,
    /// Whether a connecting peer's certificate SANs must cover its address (§6.4).
    pub check_peer_address: bool,
}

pub fn configs(cfg: &Config) -> Result<PeerTls, TlsError> {
    let tls = &cfg.peer_tls;
    let https = cfg.listen_peer_urls.iter().any(|u| u.scheme() == "https")
        || cfg
            .initial_advertise_peer_urls
            .iter()
            .any(|u| u.scheme() == "https");
    let suites = cipher_suites::parse(&cfg.cipher_suites)?;
    let provider = super::provider(&suites);
    if !https {
        if !tls.cert_file.is_empty() {
            tracing::warn!(
                "scheme is HTTP while key and cert files are present; ignoring key and cert files"
            );
        }
        return throwaway(provider);
    }
    if tls.cert_file.is_empty() {
        // Validation guarantees auto-TLS here.
        let pair = auto_tls::ensure(
            &cfg.data_dir.join("fixtures/peer"),
            &auto_tls::hosts_of(&cfg.listen_peer_urls),
            cfg.self_signed_cert_validity_years,
        )?;
        let key = key_files::ReloadingKeyPair::open(&pair.cert, &pair.key, provider.clone())?;
        return unauthenticated(provider, key);
    }
    if tls.auto_tls {
        tracing::warn!("ignoring peer auto TLS since certs given");
    }
    let server_key = key_files::ReloadingKeyPair::open(
        Path::new(&tls.cert_file),
        Path::new(&tls.key_file),
        provider.clone(),
    )?;
    let client_key = if tls.client_cert_file.is_empty() {
        server_key.clone()
    } else {
        key_files::ReloadingKeyPair::open(
            Path::new(&tls.client_cert_file),
            Path::new(&tls.client_key_file),
            provider.clone(),
        )?
    };
    if tls.trusted_ca_file.is_empty() {
        if tls.client_cert_auth {
            return Err(TlsError::Missing {
                flag: "--peer-client-cert-auth",
                needed: "--peer-trusted-ca-file (the CA that signs peer certificates)",
            });
        }
        if let Some(domain) = super::srv_domain::forced_server_name(cfg) {
            return verified_as_domain(provider, server_key, client_key, domain);
        }
        // Certificates but no CA to check others' against: encrypt, as etcd would
        // with its system roots, and say so.
        tracing::warn!(
            "--peer-trusted-ca-file is not set: peer certificates are not verified (encryption only)"
        );
        return unauthenticated(provider, server_key);
    }
    let ca = Path::new(&tls.trusted_ca_file);
    let versions = [&rustls::version::TLS13];
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)?;
    // A peer CA always means verified peers in both directions (etcd: a trusted CA
    // alone turns on client-certificate verification).
    let verifier = super::client_side::client_verifier(
        ca,
        &tls.crl_file,
        AllowedIdentity::from_flags(&tls.allowed_cn, &tls.allowed_hostname),
        provider.clone(),
    )?;
    let server = server
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(server_key);
    let mut verifier = WebPkiServerVerifier::builder_with_provider(
        key_files::trust_anchors(ca)?,
        provider.clone(),
    );
    if !tls.crl_file.is_empty() {
        verifier = verifier.with_crls(key_files::revocation_lists(Path::new(&tls.crl_file))?);
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RestrictedServerVerifier {
            inner: verifier,
            allowed: AllowedIdentity::from_flags(&tls.allowed_cn, &tls.allowed_hostname),
        }))
        .with_client_cert_resolver(client_key);
    Ok(PeerTls {
        server,
        client,
        verified: true,
        check_peer_address: !tls.skip_client_san_verification,
    })
}

/// DNS SRV discovery's rule (§5.2): dialled peers verified against the system roots
/// as the `--discovery-srv` domain; connecting peers are not asked for certificates.
fn verified_as_domain(
    provider: Arc<rustls::crypto::CryptoProvider>,
    server_key: Arc<key_files::ReloadingKeyPair>,
    client_key: Arc<key_files::ReloadingKeyPair>,
    domain: &str,
) -> Result<PeerTls, TlsError> {
    let (roots, bundle) = super::srv_domain::system_roots()?;
    tracing::info!(
        server_name = %domain,
        roots = %bundle.display(),
        "https peers from DNS SRV records and no --peer-trusted-ca-file: peer certificates must name the --discovery-srv domain and chain to a system root"
    );
    let versions = [&rustls::version::TLS13];
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let verifier = super::srv_domain::DomainVerifier::new(webpki, domain)?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)?
        .with_no_client_auth()
        .with_cert_resolver(server_key);
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(client_key);
    Ok(PeerTls {
        server,
        client,
        // Only the dialled side is verified.
        verified: false,
        check_peer_address: false,
    })
}

/// Encryption with a certificate of our own, nobody's verified.
fn unauthenticated(
    provider: Arc<rustls::crypto::CryptoProvider>,
    key: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<PeerTls, TlsError> {
    let versions = [&rustls::version::TLS13];
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)?
        .with_no_client_auth()
        .with_cert_resolver(key);
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
        .with_no_client_auth();
    Ok(PeerTls {
        server,
        client,
        verified: false,
        check_peer_address: false,
    })
}

/// `http://` peers: a certificate made up for this process only.
fn throwaway(provider: Arc<rustls::crypto::CryptoProvider>) -> Result<PeerTls, TlsError> {
    let fail = |what: String| TlsError::Generate {
        dir: "(memory)".into(),
        what,
    };
    let certified = rcgen::generate_simple_self_signed(vec![FALLBACK_SERVER_NAME.to_string()])
        .map_err(|e| fail(e.to_string()))?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let key = rustls::sign::CertifiedKey::from_der(vec![cert], key, &provider)?;
    unauthenticated(
        provider,
        Arc::new(rustls::sign::SingleCertAndKey::from(key)),
    )
}
