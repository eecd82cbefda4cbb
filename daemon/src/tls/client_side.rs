//! The TLS server config of `https://` client listeners (gRPC and HTTP share it).

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;

use super::identity::{AllowedIdentity, RestrictedClientVerifier};
use super::{TlsError, auto_tls, cipher_suites, key_files};
use crate::config::Config;

/// The server config for client listeners, or `None` when no client URL is `https`.
pub fn server_config(cfg: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    if !cfg
        .listen_client_urls
        .iter()
        .any(|u| matches!(u.scheme(), "https" | "unixs"))
    {
        if !cfg.client_tls.cert_file.is_empty() {
            tracing::warn!(
                "scheme is http or unix while key and cert files are present; ignoring key and cert files"
            );
        }
        return Ok(None);
    }
    let tls = &cfg.client_tls;
    let suites = cipher_suites::parse(&cfg.cipher_suites)?;
    let provider = super::provider(&suites);
    let (cert, key, generated) = if !tls.cert_file.is_empty() {
        if tls.auto_tls {
            tracing::warn!("ignoring client auto TLS since certs given");
        }
        (
            tls.cert_file.clone().into(),
            tls.key_file.clone().into(),
            false,
        )
    } else {
        let pair = auto_tls::ensure(
            &cfg.data_dir.join("fixtures/client"),
            &auto_tls::hosts_of(&cfg.listen_client_urls),
            cfg.self_signed_cert_validity_years,
        )?;
        (pair.cert, pair.key, true)
    };
    let key_pair = key_files::ReloadingKeyPair::open(&cert, &key, provider.clone())?;

    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(
            &cipher_suites::versions(&cfg.tls_min_version, &cfg.tls_max_version),
        )?;
    // As in etcd, a trusted CA alone already demands verified client certificates.
    let verify_clients = !generated && (tls.client_cert_auth || !tls.trusted_ca_file.is_empty());
    let mut config = if verify_clients {
        if tls.trusted_ca_file.is_empty() {
            return Err(TlsError::Missing {
                flag: "--client-cert-auth",
                needed: "--trusted-ca-file (the CA that signs client certificates)",
            });
        }
        let verifier = client_verifier(
            Path::new(&tls.trusted_ca_file),
            &tls.crl_file,
            AllowedIdentity::from_flags("", &tls.allowed_hostname),
            provider,
        )?;
        builder
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(key_pair)
    } else {
        builder.with_no_client_auth().with_cert_resolver(key_pair)
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// A verifier for certificates signed by the CA in `ca_file`, minus revoked ones, that
/// also enforces `allowed`.
pub(crate) fn client_verifier(
    ca_file: &Path,
    crl_file: &str,
    allowed: AllowedIdentity,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let roots = key_files::trust_anchors(ca_file)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider);
    if !crl_file.is_empty() {
        builder = builder.with_crls(key_files::revocation_lists(Path::new(crl_file))?);
    }
    let inner = builder
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    Ok(Arc::new(RestrictedClientVerifier { inner, allowed }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Parsed;

    fn config(dir: &Path, extra: &[&str]) -> Config {
        let data = dir.join("data");
        let mut args = vec![
            "qetcd".to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            "https://127.0.0.1:2379".into(),
            "--advertise-client-urls".into(),
            "https://127.0.0.1:2379".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        match Config::parse(args, &[]).unwrap() {
            Parsed::Run { config, .. } => *config,
            _ => panic!("not a run configuration"),
        }
    }

    #[test]
    fn client_cert_auth_without_a_ca_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let pair = auto_tls::ensure(&dir.path().join("certs"), &["127.0.0.1".into()], 1).unwrap();
        let (cert, key) = (
            pair.cert.display().to_string(),
            pair.key.display().to_string(),
        );
        let cfg = config(
            dir.path(),
            &[
                "--cert-file",
                &cert,
                "--key-file",
                &key,
                "--client-cert-auth",
            ],
        );
        let err = server_config(&cfg).unwrap_err().to_string();
        assert!(
            err.starts_with("--client-cert-auth needs --trusted-ca-file"),
            "{err}"
        );
        // With the CA it builds, and demands client certificates.
        let cfg = config(
            dir.path(),
            &[
                "--cert-file",
                &cert,
                "--key-file",
                &key,
                "--trusted-ca-file",
                &cert,
            ],
        );
        let tls = server_config(&cfg).unwrap().expect("https listener config");
        assert_eq!(
            tls.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
