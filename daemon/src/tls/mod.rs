//! TLS for both sides of a member, configured by etcd's flags (spec §6).
//!
//! - [`client_side`]: the rustls server config of `https://` client listeners.
//! - [`peer_side`]: the rustls configs that peer QUIC connections run on, for `http://`
//!   peers (encryption only) and `https://` peers (verified against the peer CA).
//! - [`auto_tls`]: `--auto-tls` / `--peer-auto-tls` certificates generated into the data
//!   directory.
//! - [`cipher_suites`]: `--cipher-suites`, `--tls-min-version`, `--tls-max-version`.
//! - [`identity`]: what a verified certificate must also satisfy (allowed CNs and
//!   hostnames; the peer address check of §6.4).
//! - [`srv_domain`]: DNS SRV discovery's rule: without a peer CA, dialled peers are
//!   verified against the system roots as the `--discovery-srv` domain.
//! - [`key_files`]: certificate and key files, re-read when they change on disk, so a
//!   renewed leaf certificate is used by the next handshake without a restart.

pub mod auto_tls;
pub mod cipher_suites;
pub mod client_side;
pub mod identity;
pub mod key_files;
pub mod peer_side;
pub mod srv_domain;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("open {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: String, what: String },
    #[error("automatically generating certificates in {dir}: {what}")]
    Generate { dir: String, what: String },
    #[error("unexpected TLS cipher suite {0:?}")]
    UnknownCipherSuite(String),
    #[error(
        "TLS cipher suite {0:?} is not supported by qetcd's TLS library; supported: {supported}",
        supported = cipher_suites::SUPPORTED.join(", ")
    )]
    UnsupportedCipherSuite(String),
    #[error("{flag} needs {needed}")]
    Missing {
        flag: &'static str,
        needed: &'static str,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The one crypto provider qetcd uses (ring), narrowed to the configured cipher suites.
pub(crate) fn provider(suites: &cipher_suites::Selection) -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(chosen) = &suites.tls12 {
        // Go (and so etcd) only lets TLS 1.2 suites be chosen; TLS 1.3 keeps its own.
        p.cipher_suites.retain(|s| match s {
            rustls::SupportedCipherSuite::Tls13(_) => true,
            rustls::SupportedCipherSuite::Tls12(_) => chosen.contains(&s.suite()),
        });
    }
    Arc::new(p)
}
