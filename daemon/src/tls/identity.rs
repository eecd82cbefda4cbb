//! What a certificate must satisfy beyond chaining to a trusted CA.
//!
//! - `--peer-cert-allowed-cn`, `--peer-cert-allowed-hostname`,
//!   `--client-cert-allowed-hostname`: checked inside the handshake by
//!   [`RestrictedClientVerifier`], so a refused client never gets a connection.
//! - etcd's peer address check (§6.4): the SANs of a peer's certificate must cover the
//!   address it connects from. The handshake does not know that address, so
//!   [`check_peer_address`] runs right after it.
//! - [`AnyServerCertificate`]: for `http://` peers and auto-TLS, where there is nothing
//!   to verify against: encryption without authentication, as etcd does.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Who may connect, beyond holding a certificate from the trusted CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedIdentity {
    Any,
    /// The certificate's subject CN must be one of these.
    CommonNames(Vec<String>),
    /// The certificate must be valid for one of these host names (or IPs).
    Hostnames(Vec<String>),
}

impl AllowedIdentity {
    pub fn from_flags(cns: &str, hostnames: &str) -> Self {
        let list = |s: &str| {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        if !cns.is_empty() {
            AllowedIdentity::CommonNames(list(cns))
        } else if !hostnames.is_empty() {
            AllowedIdentity::Hostnames(list(hostnames))
        } else {
            AllowedIdentity::Any
        }
    }

    fn admits(&self, leaf: &CertificateDer<'_>) -> bool {
        match self {
            AllowedIdentity::Any => true,
            AllowedIdentity::CommonNames(allowed) => {
                common_name(leaf).is_some_and(|cn| allowed.contains(&cn))
            }
            AllowedIdentity::Hostnames(allowed) => {
                let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
                    return false;
                };
                allowed.iter().any(|h| {
                    ServerName::try_from(h.as_str())
                        .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
                })
            }
        }
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(String::from)
}

/// A client-certificate verifier that also enforces an [`AllowedIdentity`].
#[derive(Debug)]
pub struct RestrictedClientVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub allowed: AllowedIdentity,
}

impl ClientCertVerifier for RestrictedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.allowed.admits(end_entity) {
            // etcd's words, so that operators searching for them find the cause.
            return Err(rustls::Error::General(format!(
                "client certificate authentication failed (CN {:?} not allowed)",
                common_name(end_entity).unwrap_or_default()
            )));
        }
        Ok(verified)
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

/// The dialling side's twin of [`RestrictedClientVerifier`]. A peer connection carries
/// Raft traffic both ways, so a member must not accept, as the server it dialled, a
/// peer it would refuse as a client.
#[derive(Debug)]
pub struct RestrictedServerVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub allowed: AllowedIdentity,
}

impl ServerCertVerifier for RestrictedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if !self.allowed.admits(end_entity) {
            return Err(rustls::Error::General(format!(
                "peer certificate authentication failed (CN {:?} not allowed)",
                common_name(end_entity).unwrap_or_default()
            )));
        }
        Ok(verified)
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

/// etcd's §6.4 check of a peer's client certificate against the address it connects
/// from. A certificate without SANs passes; one with IP SANs passes when the address is
/// among them; DNS SANs pass when a (non-wildcard) name resolves to the address.
pub async fn check_peer_address(leaf: &CertificateDer<'_>, remote: IpAddr) -> Result<(), String> {
    let remote = remote.to_canonical();
    let (ips, names) = subject_alt_names(leaf)?;
    if ips.is_empty() && names.is_empty() {
        return Ok(());
    }
    if ips.contains(&remote) {
        return Ok(());
    }
    if names.is_empty() {
        let valid: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        return Err(format!(
            "x509: certificate is valid for {}, not {remote}",
            valid.join(", ")
        ));
    }
    for name in names.iter().filter(|n| !n.starts_with("*.")) {
        let lookup = tokio::net::lookup_host((name.as_str(), 0));
        if let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(5), lookup).await
            && addrs.into_iter().any(|a| a.ip().to_canonical() == remote)
        {
            return Ok(());
        }
    }
    Err(format!(
        "tls: {:?} does not match any of DNSNames {names:?}",
        remote.to_string()
    ))
}

fn subject_alt_names(der: &CertificateDer<'_>) -> Result<(Vec<IpAddr>, Vec<String>), String> {
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| format!("bad certificate: {e}"))?;
    let mut ips = Vec::new();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")));
                }
                GeneralName::IPAddress(b) if b.len() == 16 => {
                    let ip = IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"));
                    ips.push(ip.to_canonical());
                }
                GeneralName::DNSName(d) => names.push(d.to_string()),
                _ => {}
            }
        }
    }
    Ok((ips, names))
}

/// Accepts any server certificate but still checks that the server holds its key.
#[derive(Debug)]
pub struct AnyServerCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: &[&str]) -> CertificateDer<'static> {
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        CertificateDer::from(p.self_signed(&key).unwrap().der().to_vec())
    }

    #[test]
    fn allowed_common_names_and_hostnames() {
        let c = cert("infra0", &["infra0.example.com", "10.0.1.10"]);
        assert_eq!(common_name(&c).as_deref(), Some("infra0"));
        assert!(AllowedIdentity::from_flags("infra0,infra1", "").admits(&c));
        assert!(!AllowedIdentity::from_flags("infra9", "").admits(&c));
        assert!(AllowedIdentity::from_flags("", "infra0.example.com").admits(&c));
        assert!(AllowedIdentity::from_flags("", "10.0.1.10").admits(&c));
        assert!(!AllowedIdentity::from_flags("", "infra1.example.com").admits(&c));
        assert!(AllowedIdentity::from_flags("", "").admits(&c));
    }

    #[tokio::test]
    async fn peer_address_must_be_covered_by_the_sans() {
        let ip_only = cert("m", &["10.0.1.10"]);
        assert!(
            check_peer_address(&ip_only, "10.0.1.10".parse().unwrap())
                .await
                .is_ok()
        );
        assert_eq!(
            check_peer_address(&ip_only, "10.0.1.2".parse().unwrap())
                .await
                .unwrap_err(),
            "x509: certificate is valid for 10.0.1.10, not 10.0.1.2"
        );
        let none = cert("m", &[]);
        assert!(
            check_peer_address(&none, "10.0.1.2".parse().unwrap())
                .await
                .is_ok()
        );
        let named = cert("m", &["localhost"]);
        assert!(
            check_peer_address(&named, "127.0.0.1".parse().unwrap())
                .await
                .is_ok()
        );
        let e = check_peer_address(&named, "10.0.1.2".parse().unwrap())
            .await
            .unwrap_err();
        assert!(e.contains("does not match any of DNSNames"), "{e}");
    }
}
