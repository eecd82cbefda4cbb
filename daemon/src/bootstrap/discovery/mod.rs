//! etcd discovery: the initial cluster read from a discovery service instead of
//! `--initial-cluster`, for members that do not know each other's addresses in advance.
//!
//! [`v2`] speaks etcd's v2 protocol (`--discovery <url>`): the service is any cluster
//! serving the v2 keys API (etcd ≤ 3.5 with `--enable-v2`, qetcd with `--enable-v2`,
//! discovery.etcd.io). Each member registers `name=peerURL` under its member ID, waits
//! until the size key's number of members have registered, and takes the first N
//! registrations (by creation index) as its initial cluster. Member IDs hash the peer
//! URLs with the *full discovery URL* as token, so every member — qetcd or etcd — derives
//! the same IDs from the same registrations.
//!
//! [`v3`] speaks etcd 3.6's v3 protocol (`--discovery-token`, `--discovery-endpoints`):
//! the same steps through the v3 gRPC API of any etcd v3 cluster (or qetcd), keys under
//! `/_etcd/registry/<token>/`, member IDs hashed with the token.
//!
//! Like DNS SRV discovery, this runs before the data directory is created: a failed
//! discovery leaves nothing behind that a later start would take for a member.
//!
//! Every error text here is etcd's (`server/etcdserver/api/v2discovery`), since
//! operators and tooling grep for them; this module is the one place they live.

pub mod grpc_client;
mod http_client;
pub mod token;
pub mod v2;
pub mod v3;

use std::time::Duration;

use crate::config::{Config, InitialCluster, url_string};

/// A discovery failure, with etcd's texts. Wrapped as
/// `failed to join discovery cluster (<err>)` when reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery: invalid URL")]
    InvalidUrl,
    #[error("discovery: size key is bad")]
    BadSizeKey,
    #[error("discovery: size key not found")]
    SizeNotFound,
    #[error("discovery: found duplicate id")]
    DuplicateId,
    #[error("discovery: found duplicate name")]
    DuplicateName,
    #[error("discovery: cluster is full")]
    FullCluster,
    #[error("discovery: too many retries")]
    TooManyRetries,
    /// v3: the registrations do not parse as an initial cluster.
    #[error("discovery: invalid peer URL")]
    InvalidPeerUrl,
    #[error("discovery: bad discovery endpoint")]
    BadDiscoveryEndpoint,
    /// etcd's v2 client on a body that is not the keys API's JSON.
    #[error(
        "client: response is invalid json. The endpoint is probably not valid etcd cluster endpoint."
    )]
    InvalidJson,
    /// An error the service answered with (etcd's v2 client `Error` format).
    #[error("{code}: {message} ({cause}) [{index}]")]
    Service {
        code: u64,
        message: String,
        cause: String,
        index: u64,
    },
    /// A request that got no answer where etcd does not retry (registration).
    #[error("{0}")]
    Transport(String),
    /// Reported without the "failed to join" wrapper, as etcd does.
    #[error("discovery cluster {0} has duplicate url")]
    DuplicateUrl(String),
    #[error("invalid proxy address {proxy:?}: {reason}")]
    InvalidProxy { proxy: String, reason: String },
    /// qetcd's check of `--discovery` before anything is sent (etcd would retry an
    /// unsupported scheme forever).
    #[error(
        "invalid discovery URL {url:?}: {reason} (expected http(s)://host[:port]/<path of the token's directory>, e.g. http://10.0.0.1:2379/v2/keys/_etcd/registry/<token>)"
    )]
    BadDiscoveryUrl { url: String, reason: String },
}

/// etcd's discovery backoff: `2^min(retries, 8)` seconds, 2 s … 256 s.
pub fn backoff(retries: u32) -> Duration {
    Duration::from_secs(1 << retries.min(8))
}

/// The discovered cluster: registrations joined with `,` and parsed as
/// `--initial-cluster` (etcd's `nodesToCluster`).
pub fn nodes_to_cluster(values: &[String], size: usize) -> Result<InitialCluster, DiscoveryError> {
    let joined = values.join(",");
    let cluster = InitialCluster::parse(&joined).map_err(|_| DiscoveryError::InvalidUrl)?;
    if cluster.len() != size {
        return Err(DiscoveryError::DuplicateName);
    }
    Ok(cluster)
}

/// `cfg` with the discovered initial cluster and the token its IDs hash with, refused
/// when two members share a peer URL (etcd's `checkDuplicateURL`).
pub fn discovered_config(
    cfg: &Config,
    cluster: InitialCluster,
    token: &str,
) -> Result<Config, DiscoveryError> {
    if has_duplicate_url(&cluster) {
        return Err(DiscoveryError::DuplicateUrl(cluster.to_string()));
    }
    let mut out = cfg.clone();
    out.initial_cluster = cluster;
    out.initial_cluster_set = true;
    out.initial_cluster_token = token.to_string();
    Ok(out)
}

/// etcd's `checkDuplicateURL` on the discovered cluster.
pub fn has_duplicate_url(cluster: &InitialCluster) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    cluster
        .iter()
        .flat_map(|(_, urls)| urls)
        .any(|u| !seen.insert(url_string(u)))
}

/// The guidance etcdmain logs after a failed discovery (spec §3.5).
pub fn log_guidance(err: &DiscoveryError, cfg: &Config) {
    let token = if cfg.discovery.is_empty() {
        &cfg.discovery_token
    } else {
        &cfg.discovery
    };
    match err {
        DiscoveryError::DuplicateId => {
            tracing::warn!(discovery_url = %token, "member has been registered with discovery service");
            tracing::warn!("but could not find valid cluster configuration");
            tracing::warn!(data_dir = %cfg.data_dir.display(), "check data dir if previous bootstrap succeeded");
            tracing::warn!("or use a new discovery token if previous bootstrap failed");
        }
        DiscoveryError::DuplicateName => {
            tracing::warn!(discovery_url = %token, "member with duplicated name has already been registered");
            tracing::warn!("cURL the discovery token URL for details");
            tracing::warn!(
                "do not reuse discovery token; generate a new one to bootstrap a cluster"
            );
        }
        _ => {
            tracing::warn!(discovery_url = %token, "failed to bootstrap; discovery token was already used");
            tracing::warn!(
                "do not reuse discovery token; generate a new one to bootstrap a cluster"
            );
        }
    }
}

/// The configuration with `initial_cluster` (and the ID token) from v2
/// (`--discovery`) or v3 (`--discovery-token`) discovery. Blocks; runs on a runtime of
/// its own, so it may be called from anywhere.
pub fn discover(cfg: &Config) -> Result<Config, DiscoveryError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| DiscoveryError::Transport(e.to_string()))?;
            if cfg.discovery.is_empty() {
                rt.block_on(v3::discover(cfg))
            } else {
                rt.block_on(v2::discover(cfg))
            }
        })
        .join()
        .unwrap_or_else(|_| Err(DiscoveryError::Transport("discovery panicked".into())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_etcds_sequence() {
        let secs: Vec<u64> = (1..=10).map(|r| backoff(r).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 256, 256]);
    }

    #[test]
    fn registrations_become_the_initial_cluster() {
        let c = nodes_to_cluster(
            &[
                "b=http://127.0.0.2:2380".into(),
                "a=http://127.0.0.1:2380".into(),
            ],
            2,
        )
        .unwrap();
        assert_eq!(
            c.to_string(),
            "a=http://127.0.0.1:2380,b=http://127.0.0.2:2380"
        );
        let dup = nodes_to_cluster(
            &[
                "a=http://127.0.0.2:2380".into(),
                "a=http://127.0.0.1:2380".into(),
            ],
            2,
        );
        assert_eq!(
            dup.unwrap_err().to_string(),
            "discovery: found duplicate name"
        );
        let bad = nodes_to_cluster(&["a=127.0.0.1:2380".into()], 1);
        assert_eq!(bad.unwrap_err().to_string(), "discovery: invalid URL");
    }

    #[test]
    fn duplicate_urls_are_found() {
        let c = InitialCluster::parse("a=http://127.0.0.1:2380,b=http://127.0.0.1:2380").unwrap();
        assert!(has_duplicate_url(&c));
        let c = InitialCluster::parse("a=http://127.0.0.1:2380,b=http://127.0.0.2:2380").unwrap();
        assert!(!has_duplicate_url(&c));
    }
}
