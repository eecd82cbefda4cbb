//! Certificate authorities and certificates made for a test, written as PEM files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A CA whose certificate is at `cert`.
pub struct Ca {
    pub cert: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub serial: u64,
}

/// What a leaf is for, and for how long.
pub struct LeafSpec<'a> {
    pub name: &'a str,
    pub sans: Vec<String>,
    pub server: bool,
    pub client: bool,
    /// Validity relative to now, in days (negative end: already expired).
    pub valid_from_days: i64,
    pub valid_until_days: i64,
}

impl<'a> LeafSpec<'a> {
    /// A certificate usable as server and client (what members use), valid for a year.
    pub fn member(name: &'a str, sans: &[&str]) -> Self {
        LeafSpec {
            name,
            sans: sans.iter().map(|s| s.to_string()).collect(),
            server: true,
            client: true,
            valid_from_days: -1,
            valid_until_days: 365,
        }
    }

    /// A client-only certificate.
    pub fn client(name: &'a str) -> Self {
        LeafSpec {
            name,
            sans: Vec::new(),
            server: false,
            client: true,
            valid_from_days: -1,
            valid_until_days: 365,
        }
    }
}

impl Ca {
    /// A new CA named `name`, its files under `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        std::fs::create_dir_all(dir).expect("pki dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, cert.pem()).expect("write ca");
        Ca {
            cert: path,
            issuer: Issuer::new(params, key),
            dir: dir.to_path_buf(),
        }
    }

    /// Issues a leaf; files `<file_stem>.crt` / `.key` (0600) in the CA's directory.
    pub fn issue(&self, file_stem: &str, spec: &LeafSpec<'_>) -> Leaf {
        let mut params = CertificateParams::new(spec.sans.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, spec.name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::days(spec.valid_from_days);
        params.not_after = now + Duration::days(spec.valid_until_days);
        static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);
        let serial = NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let leaf = Leaf {
            cert: self.dir.join(format!("{file_stem}.crt")),
            key: self.dir.join(format!("{file_stem}.key")),
            serial,
        };
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write key");
        std::fs::set_permissions(&leaf.key, std::fs::Permissions::from_mode(0o600))
            .expect("key mode");
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        leaf
    }

    /// Makes `spec` serve clients over https with a server certificate from this CA
    /// (for its address and `localhost`), trusting this CA for client certificates, and
    /// has the harness's etcdctl present `client`. Returns the server certificate.
    pub fn serve_clients(&self, spec: &mut crate::MemberSpec, client: &Leaf) -> Leaf {
        let server = self.issue(
            &format!("{}-server", spec.name),
            &LeafSpec::member(&spec.name, &[&spec.ip, "localhost"]),
        );
        let path = |p: &Path| p.display().to_string();
        spec.client_scheme = "https".into();
        spec.extra_args.extend([
            "--cert-file".into(),
            path(&server.cert),
            "--key-file".into(),
            path(&server.key),
            "--trusted-ca-file".into(),
            path(&self.cert),
        ]);
        spec.etcdctl_args = vec![
            "--cacert".into(),
            path(&self.cert),
            "--cert".into(),
            path(&client.cert),
            "--key".into(),
            path(&client.key),
        ];
        server
    }

    /// A CRL (PEM) from this CA revoking `revoked`, written as `<name>.crl`.
    pub fn revocation_list(&self, name: &str, revoked: &[&Leaf]) -> PathBuf {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|l| RevokedCertParams {
                    serial_number: SerialNumber::from(l.serial),
                    revocation_time: now - Duration::minutes(5),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).expect("sign crl");
        let path = self.dir.join(format!("{name}.crl"));
        std::fs::write(&path, crl.pem().expect("crl pem")).expect("write crl");
        path
    }
}
