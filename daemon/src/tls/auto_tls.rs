//! `--auto-tls` and `--peer-auto-tls`: a self-signed certificate per side, generated into
//! `<data-dir>/fixtures/{client,peer}/{cert.pem,key.pem}` the first time and reused
//! as-is afterwards (etcd does not check or renew them either).
//!
//! Differences from etcd, on purpose: the key is ECDSA P-256 rather than P-521 (ring,
//! our one crypto provider, signs with P-256 and P-384 only), it is written as PKCS#8,
//! and the certificate is not marked as a CA, because rustls/webpki refuse a CA
//! certificate as a server's own. What it gives is the same: encryption without
//! authentication, since nothing can verify a self-signed certificate.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use super::TlsError;

/// Where one side's generated certificate and key live.
#[derive(Debug, Clone)]
pub struct GeneratedPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Returns the pair in `dir`, generating it when either file is missing. `hosts` (IPs
/// or names from the listen URLs) become the SANs.
pub fn ensure(
    dir: &Path,
    hosts: &[String],
    validity_years: u32,
) -> Result<GeneratedPair, TlsError> {
    let pair = GeneratedPair {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if pair.cert.exists() && pair.key.exists() {
        return Ok(pair);
    }
    let fail = |what: String| TlsError::Generate {
        dir: dir.display().to_string(),
        what,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(e.to_string()))?;

    let mut params = CertificateParams::new(hosts.to_vec()).map_err(|e| fail(e.to_string()))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "etcd");
    params.distinguished_name = name;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * i64::from(validity_years));
    let serial: [u8; 16] = rand_serial().map_err(fail)?;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;

    write_private(&pair.key, key.serialize_pem().as_bytes()).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&pair.cert, cert.pem()).map_err(|e| fail(e.to_string()))?;
    tracing::info!(
        path = %dir.display(),
        certificate_validity_bound_not_after = %params.not_after,
        "automatically generate certificates"
    );
    Ok(pair)
}

fn rand_serial() -> Result<[u8; 16], String> {
    use ring::rand::SecureRandom;
    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| "no randomness for a serial number".to_string())?;
    // A positive INTEGER: clear the sign bit, and keep it non-zero.
    serial[0] = (serial[0] & 0x7f) | 0x01;
    Ok(serial)
}

/// Writes a private key readable by its owner only, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The hosts of listen URLs, as SANs: `localhost` stays a name, IPs become IP SANs.
pub fn hosts_of(urls: &[url::Url]) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for u in urls {
        let h = match u.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => continue,
        };
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let side = dir.path().join("fixtures/peer");
        let first = ensure(&side, &["127.0.0.1".into(), "localhost".into()], 1).unwrap();
        let mode = std::fs::metadata(&first.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let cert = std::fs::read(&first.cert).unwrap();
        let again = ensure(&side, &["10.0.0.1".into()], 1).unwrap();
        assert_eq!(
            std::fs::read(&again.cert).unwrap(),
            cert,
            "reused, not regenerated"
        );
        let chain = super::super::key_files::certificates(&first.cert).unwrap();
        let key = super::super::key_files::private_key(&first.key).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(chain, key, &provider).expect("key matches cert");
    }
}
