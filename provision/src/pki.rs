//! TLS material for `tls = "self-signed"`: a peer CA and a client CA kept in the output
//! directory, and the leaf certificates signed by them.
//!
//! - peer CA → each member's `peer.crt` (serverAuth + clientAuth: a member both accepts
//!   and opens peer connections with it);
//! - client CA → each member's `server.crt` (serverAuth + clientAuth, because etcd's
//!   gateway dials its own client URL with it) and the operator's `admin.crt`
//!   (clientAuth, CN `root`, which etcd maps to the root user once auth is enabled).
//!
//! Two CAs, so that a client certificate can never pass as a member on the peer port.
//! Re-rendering reads what is already there: keys are always kept, and a certificate
//! is re-issued only when it no longer fits (names, usages, issuer, key) or has less
//! than [`RENEW_BEFORE_DAYS`] left. Anything re-issued is reported with the reason.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::bundle::layout;
use crate::inventory::{Inventory, Member, San};
use crate::render;

/// Certificates with less time left than this are renewed by `render` and flagged by
/// `check`.
pub const RENEW_BEFORE_DAYS: i64 = 30;
const CA_VALIDITY_DAYS: u64 = 10 * 365;
/// Backdating covers clocks that are a little behind the rendering machine's.
const BACKDATE: Duration = Duration::from_secs(3600);
const DAY: u64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {reason}")]
    Unusable { path: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("generating {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
}

/// A key and its certificate, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A member's two certificates.
#[derive(Debug, Clone)]
pub struct MemberCerts {
    pub peer: Pair,
    pub server: Pair,
}

/// Everything the self-signed mode renders.
pub struct Pki {
    pub peer_ca: Pair,
    pub client_ca: Pair,
    /// In inventory order.
    pub members: Vec<(String, MemberCerts)>,
    pub admin: Pair,
    /// The client certificates of `[auth]`'s users (CN = user name), in inventory order.
    pub users: Vec<(String, Pair)>,
    /// What was issued and why (empty when everything was kept).
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// What a leaf certificate must say.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub sans: Vec<San>,
    pub server_auth: bool,
    pub client_auth: bool,
}

/// The peer certificate of `m`: it is presented on the peer port and when dialling
/// other members, whose SAN check (etcd-clustering §6.4) matches it against our IP.
/// With DNS SRV discovery its hostname is the SRV target peers dial (already among
/// [`Member::sans`]), and the bare domain is added when the daemon verifies peers as
/// that domain (§5.2, [`render::peers_verified_as_domain`]).
pub fn peer_spec(inv: &Inventory, m: &Member) -> LeafSpec {
    let mut sans = m.sans();
    if let Some(domain) = render::peers_verified_as_domain(&render::env_vars(inv, m)) {
        let san = San::Dns(domain);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    LeafSpec {
        common_name: m.name.clone(),
        sans,
        server_auth: true,
        client_auth: true,
    }
}

/// The client-facing certificate of `m`. With `listen_localhost` the member also
/// serves on 127.0.0.1, so the certificate must cover that and `localhost` too.
pub fn server_spec(inv: &Inventory, m: &Member) -> LeafSpec {
    let mut sans = m.sans();
    if inv.listen_localhost {
        for s in [
            San::Ip(IpAddr::from([127, 0, 0, 1])),
            San::Dns("localhost".into()),
        ] {
            if !sans.contains(&s) {
                sans.push(s);
            }
        }
    }
    LeafSpec {
        common_name: m.name.clone(),
        sans,
        server_auth: true,
        client_auth: true,
    }
}

pub fn admin_spec() -> LeafSpec {
    user_spec("root")
}

/// A client certificate naming etcd user `name`: with `--client-cert-auth` its CN is
/// the user (etcd's rule).
pub fn user_spec(name: &str) -> LeafSpec {
    LeafSpec {
        common_name: name.into(),
        sans: Vec::new(),
        server_auth: false,
        client_auth: true,
    }
}

/// A CA ready to sign.
struct Ca {
    pair: Pair,
    issuer: Issuer<'static, KeyPair>,
    key_id: Vec<u8>,
}

/// Builds (or re-reads) all TLS material for `inv`, using what already is in `out`.
pub fn prepare(inv: &Inventory, out: &Path, now: OffsetDateTime) -> Result<Pki, PkiError> {
    let mut notes = Vec::new();
    let mut warnings = Vec::new();
    let peer_ca = load_or_create_ca(
        out,
        &layout::ca_cert("peer"),
        &layout::ca_key("peer"),
        &format!("{} peer CA", inv.name),
        now,
        &mut notes,
        &mut warnings,
    )?;
    let client_ca = load_or_create_ca(
        out,
        &layout::ca_cert("client"),
        &layout::ca_key("client"),
        &format!("{} client CA", inv.name),
        now,
        &mut notes,
        &mut warnings,
    )?;
    let validity = u64::from(inv.cert_validity_days) * DAY;
    let mut members = Vec::new();
    for m in &inv.members {
        let pki = layout::host_pki(&m.name);
        let peer = leaf(
            out,
            &pki.join("peer.crt"),
            &pki.join("peer.key"),
            &peer_spec(inv, m),
            &peer_ca,
            validity,
            now,
            &mut notes,
        )?;
        let server = leaf(
            out,
            &pki.join("server.crt"),
            &pki.join("server.key"),
            &server_spec(inv, m),
            &client_ca,
            validity,
            now,
            &mut notes,
        )?;
        members.push((m.name.clone(), MemberCerts { peer, server }));
    }
    let admin = leaf(
        out,
        &layout::admin().join("admin.crt"),
        &layout::admin().join("admin.key"),
        &admin_spec(),
        &client_ca,
        validity,
        now,
        &mut notes,
    )?;
    let mut users = Vec::new();
    for u in inv.auth.iter().flat_map(|a| &a.users) {
        let pair = leaf(
            out,
            &layout::user_cert(&u.name),
            &layout::user_key(&u.name),
            &user_spec(&u.name),
            &client_ca,
            validity,
            now,
            &mut notes,
        )?;
        users.push((u.name.clone(), pair));
    }
    Ok(Pki {
        peer_ca: peer_ca.pair,
        client_ca: client_ca.pair,
        members,
        admin,
        users,
        notes,
        warnings,
    })
}

/// The text of `out/rel`, if it exists.
fn read_existing(out: &Path, rel: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(out.join(rel)) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Read {
            path: rel.display().to_string(),
            source,
        }),
    }
}

fn parse_key(rel: &Path, pem: &str) -> Result<KeyPair, PkiError> {
    // An unreadable key is the operator's to resolve: replacing it silently would
    // break every certificate it signed.
    KeyPair::from_pem(pem).map_err(|e| PkiError::Unusable {
        path: rel.display().to_string(),
        reason: format!("not a usable private key ({e}); move it away to have a new one generated"),
    })
}

fn generate_key(what: &Path) -> Result<KeyPair, PkiError> {
    KeyPair::generate().map_err(|source| PkiError::Generate {
        what: what.display().to_string(),
        source,
    })
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source works");
    // Positive and exactly 16 bytes long when DER-encoded.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn load_or_create_ca(
    out: &Path,
    cert_rel: &Path,
    key_rel: &Path,
    common_name: &str,
    now: OffsetDateTime,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<Ca, PkiError> {
    let key_pem = read_existing(out, key_rel)?;
    let cert_pem = read_existing(out, cert_rel)?;
    let (key, key_pem) = match key_pem {
        Some(pem) => (parse_key(key_rel, &pem)?, pem),
        None => {
            let k = generate_key(key_rel)?;
            let pem = k.serialize_pem();
            (k, pem)
        }
    };
    let fits = cert_pem.as_deref().and_then(|pem| {
        let der = pem_to_der(pem)?;
        let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
        (c.is_ca() && c.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
            .then(|| days_left(&c, now))
    });
    let cert_pem = match (fits, cert_pem) {
        (Some(left), Some(pem)) => {
            if left < RENEW_BEFORE_DAYS {
                warnings.push(format!(
                    "{}: CA certificate expires in {left} days; renewing a CA means rolling it out to every host (not done automatically)",
                    cert_rel.display()
                ));
            }
            pem
        }
        (_, old) => {
            let mut p = CertificateParams::default();
            p.distinguished_name = dn(common_name);
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            p.serial_number = Some(random_serial());
            p.not_before = now - BACKDATE;
            p.not_after = now + Duration::from_secs(CA_VALIDITY_DAYS * DAY);
            let cert = p.self_signed(&key).map_err(|source| PkiError::Generate {
                what: cert_rel.display().to_string(),
                source,
            })?;
            notes.push(match old {
                None => format!("{}: new CA \"{common_name}\"", cert_rel.display()),
                Some(_) => format!(
                    "{}: CA certificate re-issued: it did not match {} (certificates it signed are re-issued too)",
                    cert_rel.display(),
                    key_rel.display()
                ),
            });
            cert.pem()
        }
    };
    let der = pem_to_der(&cert_pem).expect("a CA certificate just checked or made");
    let key_id = parse(&der)
        .and_then(|c| subject_key_id(&c))
        .unwrap_or_default();
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| PkiError::Generate {
        what: cert_rel.display().to_string(),
        source,
    })?;
    Ok(Ca {
        pair: Pair { cert_pem, key_pem },
        issuer,
        key_id,
    })
}

#[allow(clippy::too_many_arguments)]
fn leaf(
    out: &Path,
    cert_rel: &Path,
    key_rel: &Path,
    spec: &LeafSpec,
    ca: &Ca,
    validity_secs: u64,
    now: OffsetDateTime,
    notes: &mut Vec<String>,
) -> Result<Pair, PkiError> {
    let (key, key_pem, new_key) = match read_existing(out, key_rel)? {
        Some(pem) => (parse_key(key_rel, &pem)?, pem, false),
        None => {
            let k = generate_key(key_rel)?;
            let pem = k.serialize_pem();
            (k, pem, true)
        }
    };
    let existing = read_existing(out, cert_rel)?;
    let reason = existing
        .as_ref()
        .map(|pem| misfit(pem, spec, &key, &ca.key_id, now));
    if let (Some(None), Some(pem)) = (&reason, &existing) {
        return Ok(Pair {
            cert_pem: pem.clone(),
            key_pem,
        });
    }
    let cert_pem =
        issue(spec, &key, ca, validity_secs, now).map_err(|source| PkiError::Generate {
            what: cert_rel.display().to_string(),
            source,
        })?;
    notes.push(match reason.flatten() {
        None if new_key => format!("{}: issued with a new key", cert_rel.display()),
        None => format!("{}: issued for the existing key", cert_rel.display()),
        Some(why) => format!("{}: re-issued: {why}", cert_rel.display()),
    });
    Ok(Pair { cert_pem, key_pem })
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, common_name);
    d
}

fn issue(
    spec: &LeafSpec,
    key: &KeyPair,
    ca: &Ca,
    validity_secs: u64,
    now: OffsetDateTime,
) -> Result<String, rcgen::Error> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(&spec.common_name);
    p.subject_alt_names = spec
        .sans
        .iter()
        .map(|s| match s {
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            San::Dns(d) => Ok(SanType::DnsName(d.as_str().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if spec.server_auth {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.client_auth {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(random_serial());
    p.not_before = now - BACKDATE;
    p.not_after = now + Duration::from_secs(validity_secs);
    Ok(p.signed_by(key, &ca.issuer)?.pem())
}

/// Why an existing certificate no longer fits, or `None` if it does.
fn misfit(
    pem: &str,
    spec: &LeafSpec,
    key: &KeyPair,
    ca_key_id: &[u8],
    now: OffsetDateTime,
) -> Option<String> {
    let Some(der) = pem_to_der(pem) else {
        return Some("not a PEM certificate".into());
    };
    let Some(c) = parse(&der) else {
        return Some("not a readable certificate".into());
    };
    let facts = CertFacts::of(&c);
    if c.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Some("it does not belong to the key next to it".into());
    }
    if facts.authority_key_id.as_deref() != Some(ca_key_id) {
        return Some("signed by another CA".into());
    }
    let want: BTreeSet<San> = spec.sans.iter().cloned().collect();
    let have: BTreeSet<San> = facts.sans.iter().cloned().collect();
    if want != have {
        let added: Vec<String> = want.difference(&have).map(|s| format!("+{s}")).collect();
        let removed: Vec<String> = have.difference(&want).map(|s| format!("-{s}")).collect();
        return Some(format!(
            "SANs changed ({})",
            [added, removed].concat().join(", ")
        ));
    }
    if facts.common_name.as_deref() != Some(spec.common_name.as_str()) {
        return Some(format!("common name is not {:?}", spec.common_name));
    }
    if facts.server_auth != spec.server_auth || facts.client_auth != spec.client_auth {
        return Some("extended key usages changed".into());
    }
    let left = days_left(&c, now);
    if left < RENEW_BEFORE_DAYS {
        return Some(format!("expires in {left} days"));
    }
    None
}

/// What `check` and re-rendering need to know about a certificate.
#[derive(Debug, Clone, Default)]
pub struct CertFacts {
    pub common_name: Option<String>,
    pub sans: Vec<San>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub is_ca: bool,
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
    /// The subject's public key (the raw key bits).
    pub public_key: Vec<u8>,
    pub not_after_unix: i64,
}

impl CertFacts {
    fn of(c: &X509Certificate<'_>) -> CertFacts {
        let mut f = CertFacts {
            common_name: c
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string),
            is_ca: c.is_ca(),
            public_key: c.public_key().subject_public_key.data.to_vec(),
            not_after_unix: c.validity().not_after.timestamp(),
            subject_key_id: subject_key_id(c),
            ..CertFacts::default()
        };
        for ext in c.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        match n {
                            GeneralName::DNSName(d) => {
                                f.sans.push(San::Dns(d.to_ascii_lowercase()))
                            }
                            GeneralName::IPAddress(b) => {
                                if let Ok(a) = <[u8; 4]>::try_from(*b) {
                                    f.sans.push(San::Ip(IpAddr::from(a)));
                                } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                                    f.sans.push(San::Ip(IpAddr::from(a)));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    f.server_auth = eku.server_auth;
                    f.client_auth = eku.client_auth;
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    f.authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                _ => {}
            }
        }
        f
    }

    /// Reads the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Option<CertFacts> {
        let der = pem_to_der(pem)?;
        parse(&der).map(|c| CertFacts::of(&c))
    }

    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after_unix - now.unix_timestamp()).div_euclid(DAY as i64)
    }

    /// Whether a client connecting to `host` (an IP or a name) accepts this
    /// certificate by its SANs, as Go's `VerifyHostname` decides.
    pub fn covers(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.sans.contains(&San::Ip(ip));
        }
        let host = host.to_ascii_lowercase();
        self.sans.iter().any(|s| match s {
            San::Dns(d) => match d.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
                None => *d == host,
            },
            San::Ip(_) => false,
        })
    }
}

/// The public key bits of a PEM private key, to match it with its certificate.
pub fn key_public_bits(pem: &str) -> Option<Vec<u8>> {
    KeyPair::from_pem(pem)
        .ok()
        .map(|k| k.public_key_raw().to_vec())
}

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c)
}

fn subject_key_id(c: &X509Certificate<'_>) -> Option<Vec<u8>> {
    c.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn days_left(c: &X509Certificate<'_>, now: OffsetDateTime) -> i64 {
    (c.validity().not_after.timestamp() - now.unix_timestamp()).div_euclid(DAY as i64)
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (p.label == "CERTIFICATE").then_some(p.contents)
}

/// Where a member's PKI file lives inside the output tree, for messages.
pub fn member_file(name: &str, file: &str) -> PathBuf {
    layout::host_pki(name).join(file)
}

#[cfg(test)]
mod tests;
