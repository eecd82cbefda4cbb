//! "What is your HashKV at revision R?" over the peer port, for the corruption checks.
//!
//! etcd's members ask each other `GET <peer URL>/members/hashkv` (HTTP on the peer
//! port) at start-up (`--experimental-initial-corrupt-check`) and, on the leader,
//! every `--experimental-corrupt-check-time`. qetcd's peer port speaks QUIC only, so
//! the question is a bidirectional stream opened with a [`HashQuery`] in place of the
//! Raft handshake. Unlike a members query it is asked only by members: it carries the
//! asker's cluster ID and member ID, and the answering member refuses callers of
//! another cluster or outside its membership, as it refuses their Raft traffic. (With
//! `https://` peer URLs the QUIC handshake has already checked the caller's
//! certificate against the peer CA.) The answer is JSON and says the hash, the
//! compact revision and the answering member's current revision, or why there is no
//! hash: the revision is compacted there or not reached yet.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::handshake::HELLO_LEN;

const MAGIC: &[u8; 4] = b"QHKV";
const VERSION: u8 = 1;

/// Largest answer read; a real one is about a hundred bytes.
pub const MAX_ANSWER: usize = 64 * 1024;

/// The opening of a hash query: who asks, from which cluster, for which revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashQuery {
    pub cluster_id: u64,
    pub from: u64,
    /// The revision to hash up to; 0 asks for the answering member's current one.
    pub revision: i64,
}

impl HashQuery {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5..13].copy_from_slice(&self.cluster_id.to_be_bytes());
        b[13..21].copy_from_slice(&self.from.to_be_bytes());
        b[21..29].copy_from_slice(&self.revision.to_be_bytes());
        b
    }

    /// The query `opening` holds, if it is one.
    pub fn decode(opening: &[u8; HELLO_LEN]) -> Option<Self> {
        if &opening[..4] != MAGIC || opening[4] != VERSION {
            return None;
        }
        let bytes = |r: std::ops::Range<usize>| -> [u8; 8] { opening[r].try_into().expect("8") };
        Some(HashQuery {
            cluster_id: u64::from_be_bytes(bytes(5..13)),
            from: u64::from_be_bytes(bytes(13..21)),
            revision: i64::from_be_bytes(bytes(21..29)),
        })
    }
}

/// A member's HashKV, as etcd's `HashKVResponse` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHash {
    /// Who answered.
    pub member_id: u64,
    pub hash: u32,
    /// The revision hashed up to.
    pub hash_revision: i64,
    /// The answering member's compact revision, -1 if it never compacted.
    pub compact_revision: i64,
    /// The answering member's current revision (etcd's `header.revision`).
    pub revision: i64,
}

/// The answer to a [`HashQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum HashAnswer {
    Hash(PeerHash),
    /// The revision is at or below the answering member's compaction point
    /// (etcd's `mvcc: required revision has been compacted`).
    Compacted,
    /// The answering member has not applied that revision yet (etcd's
    /// `mvcc: required revision is a future revision`).
    FutureRevision,
    /// The caller is of another cluster or not a member.
    Refused {
        reason: String,
    },
    /// The answering member could not compute the hash.
    Failed {
        error: String,
    },
}

/// Writes `answer` on `send` and closes it.
pub async fn answer(mut send: quinn::SendStream, answer: &HashAnswer) {
    let body = serde_json::to_vec(answer).expect("a hash answer always serialises");
    if send.write_all(&body).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    }
}

/// Reads the answer to a query from `recv`.
pub async fn read_answer(recv: &mut quinn::RecvStream) -> Result<HashAnswer, String> {
    let body = recv
        .read_to_end(MAX_ANSWER)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("bad hash answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_round_trip_and_differ_from_other_openings() {
        let q = HashQuery {
            cluster_id: 0xcdf8_1819_4e3a_8c32,
            from: 0x8e9e_05c5_2164_694d,
            revision: 1234,
        };
        let opening = q.encode();
        assert_eq!(HashQuery::decode(&opening), Some(q));
        assert_ne!(opening, super::super::members_query::QUERY);
        assert!(super::super::handshake::Hello::decode(&opening).is_err());
        assert_eq!(
            super::super::members_query::parse_promote_query(&opening),
            None
        );
        assert_eq!(
            HashQuery::decode(&super::super::members_query::QUERY),
            None,
            "a members query is not a hash query"
        );
    }

    #[test]
    fn answers_round_trip_as_json() {
        let answers = [
            HashAnswer::Hash(PeerHash {
                member_id: 7,
                hash: 0xdead_beef,
                hash_revision: 10,
                compact_revision: -1,
                revision: 12,
            }),
            HashAnswer::Compacted,
            HashAnswer::FutureRevision,
            HashAnswer::Refused {
                reason: "not a member".into(),
            },
        ];
        for a in answers {
            let json = serde_json::to_vec(&a).unwrap();
            assert_eq!(serde_json::from_slice::<HashAnswer>(&json).unwrap(), a);
        }
    }
}
