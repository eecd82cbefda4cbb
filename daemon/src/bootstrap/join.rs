//! Joining a running cluster (`--initial-cluster-state existing`), as etcd does it.
//!
//! The member was announced first (`etcdctl member add`), which printed the values it
//! starts with. It asks the other members in its `--initial-cluster` for the cluster's
//! member list (over the peer port, see [`crate::transport::members_query`]; etcd asks
//! `GET <peer URL>/members`), checks that list against its `--initial-cluster` — same
//! number of members, every member's peer URLs present — and takes its own ID and the
//! cluster ID from it, never deriving them itself. Its state database then holds the
//! cluster's membership and Raft configuration but no log: the leader sends it the
//! state (a snapshot, or the log from the start), and it publishes its name like any
//! member, which is when it becomes ready.

use std::net::SocketAddr;
use std::time::Duration;

use raft::prelude::ConfState;

use super::BootstrapError;
use crate::config::{Config, url_string};
use crate::membership;
use crate::storage::{Durability, Meta, RaftLog};
use crate::transport::members_query::{self, RemoteCluster};

/// Why joining failed, with etcd's texts.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "cannot fetch cluster info from peer urls: could not retrieve cluster information from the given URLs"
    )]
    NoPeerAnswered,
    #[error("error validating peerURLs {cluster}: member count is unequal")]
    MemberCountUnequal { cluster: String },
    #[error(
        "error validating peerURLs {cluster}: PeerURLs: no match found for existing member ({id:x}, [{urls}]), last resolver error (<nil>)"
    )]
    NoMatch {
        cluster: String,
        id: u64,
        /// Space-separated, as Go prints a slice.
        urls: String,
    },
    /// The announced member the values describe has already started (etcd's text for a
    /// new member whose peers know it as started).
    #[error("member {0:x} has already been bootstrapped")]
    AlreadyBootstrapped(u64),
    #[error("peer answered with a bad cluster ID {0:?}")]
    BadClusterId(String),
}

/// Asks the other members of `--initial-cluster`, in order of their peer URLs, for the
/// running cluster; the first answer wins.
pub async fn fetch(
    cfg: &Config,
    client: quinn::ClientConfig,
) -> Result<RemoteCluster, BootstrapError> {
    cfg.validate_new_cluster()?;
    let mut urls: Vec<String> = cfg
        .initial_cluster
        .iter()
        .filter(|(name, _)| **name != cfg.name)
        .flat_map(|(_, urls)| urls.iter().map(url_string))
        .collect();
    urls.sort();
    let local = cfg
        .listen_peer_urls
        .first()
        .map(crate::server::listen_addr)
        .map_or_else(
            || SocketAddr::from(([127, 0, 0, 1], 0)),
            |a| SocketAddr::new(a.ip(), 0),
        );
    // etcd's peer dial timeout: a second plus an election timeout.
    let timeout = Duration::from_secs(1) + cfg.election_timeout;
    for url in &urls {
        match members_query::ask(url, local, client.clone(), timeout).await {
            Ok(cluster) => {
                tracing::info!(peer = %url, members = cluster.members.len(), cluster_id = %cluster.cluster_id, "fetched the member list of the cluster to join");
                return Ok(cluster);
            }
            Err(e) => {
                tracing::warn!(peer = %url, error = %e, "failed to get cluster information from peer")
            }
        }
    }
    Err(JoinError::NoPeerAnswered.into())
}

/// etcd's `RaftCluster.String()`, for error messages.
fn describe(cluster: &RemoteCluster) -> String {
    let members: Vec<String> = cluster
        .members
        .iter()
        .map(|m| {
            format!(
                "&{{ID:{:x} RaftAttributes:{{PeerURLs:[{}] IsLearner:{}}} Attributes:{{Name:{} ClientURLs:[{}]}}}}",
                m.id,
                m.peer_urls.join(" "),
                m.is_learner,
                m.name,
                m.client_urls.join(" ")
            )
        })
        .collect();
    format!(
        "{{ClusterID:{} Members:[{}] RemovedMemberIDs:[]}}",
        cluster.cluster_id,
        members.join(" ")
    )
}

/// etcd's `ValidateClusterAndAssignIDs`: the running cluster must be the one the
/// initial cluster describes; returns this member's ID in it.
fn own_id(cfg: &Config, cluster: &RemoteCluster) -> Result<u64, JoinError> {
    let local: Vec<(&String, Vec<String>)> = cfg
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            let mut texts: Vec<String> = urls.iter().map(url_string).collect();
            texts.sort();
            (name, texts)
        })
        .collect();
    if local.len() != cluster.members.len() {
        return Err(JoinError::MemberCountUnequal {
            cluster: describe(cluster),
        });
    }
    let mut own = None;
    for m in &cluster.members {
        let mut urls = m.peer_urls.clone();
        urls.sort();
        let Some((name, _)) = local.iter().find(|(_, l)| *l == urls) else {
            return Err(JoinError::NoMatch {
                cluster: describe(cluster),
                id: m.id,
                urls: m.peer_urls.join(" "),
            });
        };
        if **name == cfg.name {
            own = Some(m);
        }
    }
    let own = own.expect(
        "validate_new_cluster found this member in the initial cluster, and every entry matched",
    );
    // A member that has published its name is running somewhere: these are the values
    // of another member, and starting would give the cluster a second one of it.
    if !own.name.is_empty() {
        return Err(JoinError::AlreadyBootstrapped(own.id));
    }
    Ok(own.id)
}

/// Writes the running cluster's membership, Raft configuration and IDs in one
/// transaction; returns (member ID, cluster ID).
pub(super) fn initialise(
    cfg: &Config,
    conn: rusqlite::Connection,
    cluster: &RemoteCluster,
) -> Result<(u64, u64), BootstrapError> {
    let own = own_id(cfg, cluster)?;
    let cluster_id = cluster
        .cluster_id()
        .ok_or_else(|| JoinError::BadClusterId(cluster.cluster_id.clone()))?;
    let members = cluster.to_members();
    let log = RaftLog::open(conn)?;
    let mut batch = log.batch(Durability::SyncAll)?;
    for m in &members {
        membership::upsert(batch.conn(), m)?;
    }
    let mut voters: Vec<u64> = members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect();
    let mut learners: Vec<u64> = members
        .iter()
        .filter(|m| m.is_learner)
        .map(|m| m.id)
        .collect();
    voters.sort_unstable();
    learners.sort_unstable();
    batch.set_conf_state(&ConfState::from((voters, learners)))?;
    Meta::MemberId.set_u64(batch.conn(), own)?;
    Meta::ClusterId.set_u64(batch.conn(), cluster_id)?;
    batch.commit()?;
    tracing::info!(
        member_id = %format!("{own:x}"),
        cluster_id = %format!("{cluster_id:x}"),
        members = members.len(),
        "joining existing cluster; waiting for the leader's state"
    );
    Ok((own, cluster_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::members_query::RemoteMember;

    fn config(name: &str, cluster: &str) -> Config {
        let own = cluster
            .split(',')
            .find_map(|e| e.strip_prefix(&format!("{name}=")))
            .unwrap();
        let args = [
            "qetcd",
            "--name",
            name,
            "--initial-cluster",
            cluster,
            "--initial-advertise-peer-urls",
            own,
            "--initial-cluster-state",
            "existing",
        ];
        match Config::parse(args, &[]).unwrap() {
            crate::config::Parsed::Run { config, .. } => *config,
            _ => panic!("expected a configuration"),
        }
    }

    fn remote(members: &[(u64, &str, &str)]) -> RemoteCluster {
        RemoteCluster {
            cluster_id: "abc".into(),
            members: members
                .iter()
                .map(|(id, name, url)| RemoteMember {
                    id: *id,
                    name: name.to_string(),
                    peer_urls: vec![url.to_string()],
                    client_urls: vec![],
                    is_learner: false,
                })
                .collect(),
        }
    }

    #[test]
    fn ids_come_from_the_running_cluster() {
        let cfg = config("c", "a=http://127.0.0.1:2380,c=http://127.0.0.3:2380");
        let r = remote(&[
            (7, "a", "http://127.0.0.1:2380"),
            (9, "", "http://127.0.0.3:2380"),
        ]);
        assert_eq!(own_id(&cfg, &r).unwrap(), 9);
    }

    #[test]
    fn etcds_refusals() {
        let cfg = config("c", "a=http://127.0.0.1:2380,c=http://127.0.0.3:2380");
        let three = remote(&[
            (7, "a", "http://127.0.0.1:2380"),
            (8, "b", "http://127.0.0.2:2380"),
            (9, "", "http://127.0.0.3:2380"),
        ]);
        let e = own_id(&cfg, &three).unwrap_err().to_string();
        assert!(
            e.starts_with("error validating peerURLs {ClusterID:abc Members:[&{ID:7 "),
            "{e}"
        );
        assert!(e.ends_with("member count is unequal"), "{e}");
        let moved = remote(&[
            (7, "a", "http://127.0.0.1:2380"),
            (9, "", "http://127.0.0.4:2380"),
        ]);
        let e = own_id(&cfg, &moved).unwrap_err().to_string();
        assert!(
            e.contains("PeerURLs: no match found for existing member (9, [http://127.0.0.4:2380])"),
            "{e}"
        );
        let started = remote(&[
            (7, "a", "http://127.0.0.1:2380"),
            (9, "b", "http://127.0.0.3:2380"),
        ]);
        assert_eq!(
            own_id(&cfg, &started).unwrap_err().to_string(),
            "member 9 has already been bootstrapped"
        );
    }
}
