//! etcd's start-up checks, in etcd's order and with its texts.

use std::collections::BTreeSet;
use std::net::ToSocketAddrs;

use url::Url;

use super::urls::{check_bind_url, url_string};
use super::{Config, ConfigError, InitialCluster};

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

impl Config {
    /// What etcd checks on every start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bootstrap_sources = [
            self.initial_cluster_set,
            !self.discovery.is_empty(),
            !self.discovery_endpoints.is_empty(),
            !self.discovery_srv.is_empty(),
        ];
        if bootstrap_sources.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\", \"discovery-endpoints\" or \"discovery-srv\"",
            ));
        }
        // etcd refuses to start when its token provider cannot be made; the key files
        // are read when the member starts (`auth::TokenProvider::from_options`).
        crate::auth::jwt::TokenOptions::parse(&self.auth_token)
            .map_err(|e| invalid(e.to_string()))?;
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(invalid(format!(
                "invalid bcrypt-cost {}: must be between 4 and 31",
                self.bcrypt_cost
            )));
        }
        match self.discovery_fallback.as_str() {
            "exit" => {}
            "proxy" => {
                return Err(invalid(
                    "v2 proxy is deprecated, and --discovery-fallback can't be configured as \"proxy\"",
                ));
            }
            other => {
                return Err(invalid(format!(
                    "invalid value {other:?} for flag -discovery-fallback: valid values are \"exit\" or \"proxy\""
                )));
            }
        }
        if self.discovery_token.is_empty() != self.discovery_endpoints.is_empty() {
            return Err(invalid(
                "both --discovery-token and --discovery-endpoints must be set",
            ));
        }
        if self.advertise_client_urls.is_empty() {
            return Err(invalid(
                "--advertise-client-urls is required when --listen-client-urls is set explicitly",
            ));
        }
        for u in self
            .listen_peer_urls
            .iter()
            .chain(&self.listen_client_urls)
            .chain(&self.listen_metrics_urls)
        {
            check_bind_url(u).map_err(invalid)?;
        }
        for (flag, urls) in [
            (
                "--initial-advertise-peer-urls",
                &self.initial_advertise_peer_urls,
            ),
            ("--advertise-client-urls", &self.advertise_client_urls),
        ] {
            for u in urls.iter() {
                if u.host_str().is_none_or(str::is_empty) {
                    let list: Vec<String> = urls.iter().map(url_string).collect();
                    return Err(invalid(format!(
                        "{flag} {:?} must be \"host:port\" (unexpected empty host ({}))",
                        list.join(","),
                        url_string(u)
                    )));
                }
            }
        }
        let hb = self.heartbeat_interval.as_millis();
        let et = self.election_timeout.as_millis();
        if hb == 0 {
            return Err(invalid("--heartbeat-interval must be >0 (set to 0ms)"));
        }
        if et == 0 {
            return Err(invalid("--election-timeout must be >0 (set to 0ms)"));
        }
        if 5 * hb > et {
            return Err(invalid(format!(
                "--election-timeout[{et}ms] should be at least as 5 times as --heartbeat-interval[{hb}ms]"
            )));
        }
        if et > 50_000 {
            return Err(invalid(format!(
                "--election-timeout[{et}ms] is too long, and should be set less than 50000ms"
            )));
        }
        self.validate_tls_versions()?;
        for u in &self.listen_client_urls {
            if matches!(u.scheme(), "https" | "unixs") && self.client_tls.is_empty() {
                return Err(invalid(format!(
                    "TLS key/cert (--cert-file, --key-file) must be provided for client url {} with HTTPS scheme",
                    url_string(u)
                )));
            }
        }
        for u in &self.listen_peer_urls {
            if u.scheme() == "https" && self.peer_tls.is_empty() {
                return Err(invalid(format!(
                    "cannot listen on TLS for {}: KeyFile and CertFile are not presented",
                    u.host_str()
                        .map(|h| format!("{h}:{}", super::urls::port(u)))
                        .unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    fn validate_tls_versions(&self) -> Result<(), ConfigError> {
        let rank = |v: &str| match v {
            "" => Ok(None),
            "TLS1.2" => Ok(Some(2)),
            "TLS1.3" => Ok(Some(3)),
            other => Err(invalid(format!(
                "unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)"
            ))),
        };
        let min = rank(&self.tls_min_version)?;
        let max = rank(&self.tls_max_version)?;
        if let (Some(a), Some(b)) = (min, max)
            && a > b
        {
            return Err(invalid(format!(
                "min version ({}) is greater than max version ({})",
                self.tls_min_version, self.tls_max_version
            )));
        }
        if min == Some(3) && !self.cipher_suites.is_empty() {
            return Err(invalid(
                "cipher suites cannot be configured when only TLS1.3 is enabled",
            ));
        }
        if !self.peer_tls.allowed_cn.is_empty() && !self.peer_tls.allowed_hostname.is_empty() {
            return Err(invalid(format!(
                "AllowedCNs and AllowedHostnames are mutually exclusive (cns={:?}, hostnames={:?})",
                self.peer_tls.allowed_cn.split(',').collect::<Vec<_>>(),
                self.peer_tls
                    .allowed_hostname
                    .split(',')
                    .collect::<Vec<_>>()
            )));
        }
        for tls in [&self.client_tls, &self.peer_tls] {
            if tls.cert_file.is_empty() != tls.key_file.is_empty() {
                return Err(invalid(format!(
                    "KeyFile and CertFile must both be present[key: {}, cert: {}]",
                    tls.key_file, tls.cert_file
                )));
            }
            if tls.client_cert_file.is_empty() != tls.client_key_file.is_empty() {
                return Err(invalid(format!(
                    "ClientKeyFile and ClientCertFile must both be present or both absent: key: {:?}, cert: {:?}",
                    tls.client_key_file, tls.client_cert_file
                )));
            }
        }
        if (self.client_tls.auto_tls || self.peer_tls.auto_tls)
            && self.self_signed_cert_validity_years == 0
        {
            return Err(invalid(
                "selfSignedCertValidity is invalid,it should be greater than 0",
            ));
        }
        crate::tls::cipher_suites::parse(&self.cipher_suites)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(())
    }

    /// What etcd checks before bootstrapping a new member from `--initial-cluster`:
    /// this member is in it, under the URLs it advertises, and no URL is used twice.
    pub fn validate_new_cluster(&self) -> Result<(), ConfigError> {
        if self.initial_cluster.is_empty() {
            return Err(invalid("initial cluster unset and no discovery URL found"));
        }
        let Some(own) = self.initial_cluster.get(&self.name) else {
            return Err(invalid(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            )));
        };
        self.advertise_matches_cluster(own)?;
        let mut seen = BTreeSet::new();
        for (_, urls) in self.initial_cluster.iter() {
            for u in urls {
                if !seen.insert(url_string(u)) {
                    return Err(invalid(format!(
                        "initial cluster {} has duplicate url",
                        self.initial_cluster
                    )));
                }
            }
        }
        Ok(())
    }

    fn advertise_matches_cluster(&self, own: &[Url]) -> Result<(), ConfigError> {
        let mut cluster: Vec<String> = own.iter().map(url_string).collect();
        let mut advertised: Vec<String> = self
            .initial_advertise_peer_urls
            .iter()
            .map(url_string)
            .collect();
        cluster.sort();
        advertised.sort();
        if cluster == advertised {
            return Ok(());
        }
        // The same addresses may be written as names in one list and IPs in the other.
        let resolved = (resolve_all(&cluster), resolve_all(&advertised));
        let why = match &resolved {
            (Ok(a), Ok(b)) if a == b => return Ok(()),
            (Ok(a), Ok(b)) => format!("resolved urls: {:?} != {:?}", b.join(","), a.join(",")),
            (Err(e), _) | (_, Err(e)) => e.clone(),
        };
        let missing_from_advertised: Vec<String> = cluster
            .iter()
            .filter(|u| !advertised.contains(u))
            .map(|u| format!("{}={u}", self.name))
            .collect();
        if !missing_from_advertised.is_empty() {
            return Err(invalid(format!(
                "--initial-cluster has {} but missing from --initial-advertise-peer-urls={} ({why})",
                missing_from_advertised.join(","),
                advertised.join(",")
            )));
        }
        let own_map = InitialCluster::from_name(&self.name, &self.initial_advertise_peer_urls);
        let missing_from_cluster: Vec<&String> =
            advertised.iter().filter(|u| !cluster.contains(u)).collect();
        if !missing_from_cluster.is_empty() {
            let list: Vec<&str> = missing_from_cluster.iter().map(|s| s.as_str()).collect();
            return Err(invalid(format!(
                "--initial-advertise-peer-urls has {} but missing from --initial-cluster={own_map}",
                list.join(",")
            )));
        }
        Err(invalid(format!(
            "failed to resolve {} to match --initial-cluster={own_map} ({why})",
            advertised.join(",")
        )))
    }
}

/// Resolves each URL's host to an address (localhost stays as it is), sorted.
fn resolve_all(urls: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for raw in urls {
        let u = Url::parse(raw).map_err(|e| e.to_string())?;
        let host = u.host_str().unwrap_or_default();
        let port = super::urls::port(&u);
        if host == "localhost" || u.host().is_some_and(|h| !matches!(h, url::Host::Domain(_))) {
            out.push(format!("{}://{host}:{port}", u.scheme()));
            continue;
        }
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("failed to resolve {raw:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("failed to resolve {raw:?}: no addresses"))?;
        out.push(format!("{}://{addr}", u.scheme()));
    }
    out.sort();
    Ok(out)
}
