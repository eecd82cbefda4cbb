//! Discovery tokens for `bootstrap = "discovery"`: `provision discovery new` makes one on
//! a running cluster, and `provision render` refuses one that members already used.
//!
//! Why refuse at render time: an etcd discovery token is single-use, even after a
//! failed bootstrap (the registrations stay), and a reused token only shows up when the
//! members start and fail with `discovery: cluster is full` or `found duplicate id`.
//! When the service cannot be reached from where `provision` runs, rendering goes on
//! with a warning: the members may well reach it from their network.

use qetcd::bootstrap::discovery::token::{self, Service};

use crate::inventory::{EtcdDiscovery, default_discovery_client};

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "discovery token {token} was already used: {registered} member(s) registered under it. A token is single-use, even after a failed bootstrap: make a new one with `provision discovery new` and put it in the inventory"
    )]
    Used { token: String, registered: usize },
    #[error(
        "discovery token {token} does not exist on the service (no _config/size key): members would fail with \"discovery: size key not found\". Make it with `provision discovery new`"
    )]
    Missing { token: String },
    #[error("cannot create a discovery token: {0}")]
    Create(String),
    #[error("--size must be at least 1")]
    Size,
}

/// Checks that `d`'s token exists and nobody registered under it yet. `Ok(Some(note))`
/// when the service could not be asked.
pub fn check_token(d: &EtcdDiscovery) -> Result<Option<String>, DiscoveryError> {
    match token::registrations(&d.service()) {
        Ok(Some(0)) => Ok(None),
        Ok(Some(registered)) => Err(DiscoveryError::Used {
            token: d.describe(),
            registered,
        }),
        Ok(None) => Err(DiscoveryError::Missing {
            token: d.describe(),
        }),
        Err(e) => Ok(Some(format!(
            "could not check discovery token {} ({e}); make sure it is fresh: tokens are single-use",
            d.describe()
        ))),
    }
}

/// Creates a fresh token of `size` members on the cluster at `endpoints` (client URLs;
/// the v2 protocol uses the first).
pub fn new_token(
    size: u32,
    endpoints: &[String],
    v2: bool,
) -> Result<EtcdDiscovery, DiscoveryError> {
    if size == 0 {
        return Err(DiscoveryError::Size);
    }
    let t = token::new_token().map_err(DiscoveryError::Create)?;
    let d = if v2 {
        let first = endpoints
            .first()
            .ok_or_else(|| DiscoveryError::Create("no --endpoints given".into()))?;
        EtcdDiscovery::V2 {
            url: token::v2_url(first, &t),
        }
    } else {
        EtcdDiscovery::V3 {
            token: t.clone(),
            endpoints: endpoints.to_vec(),
        }
    };
    let service = match &d {
        EtcdDiscovery::V2 { url } => Service::V2 { url: url.clone() },
        EtcdDiscovery::V3 { token, endpoints } => Service::V3 {
            endpoints: endpoints.clone(),
            client: Box::new(default_discovery_client()),
            token: token.clone(),
        },
    };
    token::create(&service, size).map_err(DiscoveryError::Create)?;
    Ok(d)
}

/// The `[cluster]` lines that use `d`.
pub fn inventory_lines(d: &EtcdDiscovery) -> String {
    match d {
        EtcdDiscovery::V2 { url } => {
            format!("bootstrap = \"discovery\"\ndiscovery_url = \"{url}\"\n")
        }
        EtcdDiscovery::V3 { token, endpoints } => format!(
            "bootstrap = \"discovery\"\ndiscovery_token = \"{token}\"\ndiscovery_endpoints = [{}]\n",
            endpoints
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
