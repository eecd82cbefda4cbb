//! The member list over the peer port, for a member joining an existing cluster.
//!
//! etcd's joining member asks `GET <peer URL>/members` of the peers in its
//! `--initial-cluster` (HTTP on the peer port). qetcd's peer port speaks QUIC only, so
//! the same question is a QUIC connection whose first stream opens with a
//! [`QUERY`] in place of the Raft handshake: the member answers with the same facts
//! etcd's `/members` gives (ID, name, peer and client URLs, learner flag) plus its
//! cluster ID (etcd's `X-Etcd-Cluster-ID` header), as JSON, and closes the stream.
//! The joining member does not know its ID or cluster ID yet, which is why the
//! question needs no handshake; it reveals nothing a Raft peer could not see.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::membership::Member;

/// The opening of a members query: as long as a Raft handshake, with its own magic.
pub const QUERY: [u8; super::handshake::HELLO_LEN] = {
    let mut b = [0u8; super::handshake::HELLO_LEN];
    b[0] = b'Q';
    b[1] = b'M';
    b[2] = b'E';
    b[3] = b'M';
    b[4] = 1;
    b
};

/// The opening of a promotion check: may the learner whose ID follows be promoted?
/// Asked of the leader by a member that got `MemberPromote` (etcd forwards the whole
/// promotion over peer HTTP, `POST /members/promote/<id>`; here only the check the
/// leader alone can make travels, the conf change goes through Raft as any other).
pub const PROMOTE_MAGIC: &[u8; 5] = b"QPRM\x01";

pub fn promote_query(learner: u64) -> [u8; super::handshake::HELLO_LEN] {
    let mut b = [0u8; super::handshake::HELLO_LEN];
    b[..5].copy_from_slice(PROMOTE_MAGIC);
    b[5..13].copy_from_slice(&learner.to_be_bytes());
    b
}

/// The learner a promotion check asks about, if `opening` is one.
pub fn parse_promote_query(opening: &[u8; super::handshake::HELLO_LEN]) -> Option<u64> {
    (&opening[..5] == PROMOTE_MAGIC)
        .then(|| u64::from_be_bytes(opening[5..13].try_into().expect("8 bytes")))
}

/// Answers of a promotion check.
pub const READY: u8 = 0;
pub const NOT_READY: u8 = 1;
pub const NOT_LEADER: u8 = 2;
pub const NOT_FOUND: u8 = 3;

/// Largest answer read (a member list is a few hundred bytes per member).
const MAX_ANSWER: usize = 1 << 20;

/// One member as etcd's peer `/members` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMember {
    pub id: u64,
    pub name: String,
    #[serde(rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs")]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner")]
    pub is_learner: bool,
}

/// A running cluster as one of its members describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCluster {
    /// Hex, as etcd's `X-Etcd-Cluster-ID`.
    pub cluster_id: String,
    pub members: Vec<RemoteMember>,
}

impl RemoteCluster {
    pub fn new(cluster_id: u64, members: &[Member]) -> Self {
        RemoteCluster {
            cluster_id: format!("{cluster_id:x}"),
            members: members
                .iter()
                .map(|m| RemoteMember {
                    id: m.id,
                    name: m.name.clone(),
                    peer_urls: m.peer_urls.clone(),
                    client_urls: m.client_urls.clone(),
                    is_learner: m.is_learner,
                })
                .collect(),
        }
    }

    pub fn cluster_id(&self) -> Option<u64> {
        u64::from_str_radix(&self.cluster_id, 16).ok()
    }

    pub fn to_members(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|m| Member {
                id: m.id,
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect()
    }
}

/// Answers a members query on an accepted stream.
pub async fn answer(mut send: quinn::SendStream, cluster: &RemoteCluster) {
    let body = serde_json::to_vec(cluster).expect("a member list always serialises");
    if send.write_all(&body).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    }
}

/// Asks the member at `url` (a peer URL) for the cluster's members, from a throwaway
/// QUIC endpoint bound to `local` (port 0), within `timeout`.
pub async fn ask(
    url: &str,
    local: SocketAddr,
    client: quinn::ClientConfig,
    timeout: Duration,
) -> Result<RemoteCluster, String> {
    let hostport = url
        .split("://")
        .nth(1)
        .ok_or_else(|| format!("{url}: not a URL"))?;
    let addr = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    let endpoint = quinn::Endpoint::client(local).map_err(|e| format!("bind {local}: {e}"))?;
    let exchange = async {
        let conn = endpoint
            .connect_with(client, addr, &super::server_name(url))
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&QUERY).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        let body = recv
            .read_to_end(MAX_ANSWER)
            .await
            .map_err(|e| e.to_string())?;
        conn.close(0u32.into(), b"done");
        serde_json::from_slice::<RemoteCluster>(&body).map_err(|e| format!("bad answer: {e}"))
    };
    let result = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: timed out"))
        .and_then(|r| r.map_err(|e| format!("{url}: {e}")));
    endpoint.close(0u32.into(), b"done");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_is_etcds_members_shape() {
        let m = Member {
            id: 0x8e9e05c52164694d,
            name: "infra0".into(),
            peer_urls: vec!["http://10.0.1.10:2380".into()],
            client_urls: vec![],
            is_learner: true,
        };
        let c = RemoteCluster::new(0xcdf818194e3a8c32, std::slice::from_ref(&m));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["cluster_id"], "cdf818194e3a8c32");
        assert_eq!(json["members"][0]["id"], 0x8e9e05c52164694du64);
        assert_eq!(json["members"][0]["peerURLs"][0], "http://10.0.1.10:2380");
        assert_eq!(json["members"][0]["isLearner"], true);
        assert_eq!(c.cluster_id(), Some(0xcdf818194e3a8c32));
        assert_eq!(c.to_members(), vec![m]);
        assert_ne!(&QUERY[..4], b"QRFT");
    }
}
