//! `--cipher-suites`, `--tls-min-version` and `--tls-max-version`.
//!
//! etcd takes Go's IANA cipher-suite names. rustls offers the AEAD ECDHE suites only;
//! a Go name rustls does not offer (CBC, RC4, 3DES, static RSA) is refused by name
//! rather than silently dropped, so an operator knows what the member will negotiate.

use rustls::CipherSuite;

use super::TlsError;

/// Go's names of the TLS 1.2 suites rustls offers, and rustls's suite for each.
const OFFERED: &[(&str, CipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// The names accepted, for error messages and `--help`.
pub const SUPPORTED: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Go knows these names, but rustls deliberately implements none of them.
const KNOWN_TO_GO: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// The TLS 1.2 suites chosen; `None` means rustls's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub tls12: Option<Vec<CipherSuite>>,
}

/// Parses `--cipher-suites` (comma-separated Go names; empty for the defaults).
pub fn parse(list: &str) -> Result<Selection, TlsError> {
    if list.trim().is_empty() {
        return Ok(Selection::default());
    }
    let mut chosen = Vec::new();
    for name in list.split(',').map(str::trim) {
        match OFFERED.iter().find(|(n, _)| *n == name) {
            Some((_, suite)) => chosen.push(*suite),
            None if KNOWN_TO_GO.contains(&name) => {
                return Err(TlsError::UnsupportedCipherSuite(name.to_string()));
            }
            None => return Err(TlsError::UnknownCipherSuite(name.to_string())),
        }
    }
    Ok(Selection {
        tls12: Some(chosen),
    })
}

/// The protocol versions between `--tls-min-version` and `--tls-max-version`
/// (already validated by the configuration).
pub fn versions(min: &str, max: &str) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    if min != "TLS1.3" {
        v.push(&rustls::version::TLS12);
    }
    if max != "TLS1.2" {
        v.push(&rustls::version::TLS13);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_names_map_to_rustls_suites() {
        let s =
            parse("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305")
                .unwrap();
        assert_eq!(
            s.tls12.unwrap(),
            vec![
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            ]
        );
        assert_eq!(parse("").unwrap(), Selection::default());
    }

    #[test]
    fn unknown_and_unsupported_names_are_told_apart() {
        assert_eq!(
            parse("TLS_BOGUS").unwrap_err().to_string(),
            "unexpected TLS cipher suite \"TLS_BOGUS\""
        );
        let e = parse("TLS_RSA_WITH_AES_128_CBC_SHA")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("TLS cipher suite \"TLS_RSA_WITH_AES_128_CBC_SHA\" is not supported"),
            "{e}"
        );
    }

    #[test]
    fn version_range() {
        assert_eq!(versions("TLS1.2", "").len(), 2);
        assert_eq!(versions("TLS1.3", ""), vec![&rustls::version::TLS13]);
        assert_eq!(versions("TLS1.2", "TLS1.2"), vec![&rustls::version::TLS12]);
    }
}
