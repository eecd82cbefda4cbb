//! Finding a member whose key space silently diverged from the others', as etcd 3.5
//! does: by comparing HashKV (see `mvcc::hash`) between members at the same revision.
//!
//! Raft guarantees that members apply the same entries; it cannot notice a state
//! database that a disk, a bug or a hand changed afterwards. Two checks look for that:
//!
//! * The initial check (`--experimental-initial-corrupt-check`), on a restart from
//!   existing data, before the Raft node starts and before clients are served: the
//!   member hashes its key space at its current revision and asks every peer for its
//!   hash at that revision. A peer with the same compact revision and another hash
//!   means this member must not serve: start-up fails with etcd's
//!   `<id> found data inconsistency with peers`.
//! * The periodic check (`--experimental-corrupt-check-time`), on the leader: it
//!   hashes at its current revision, asks every member for its hash at that
//!   revision, waits for a linearizable read barrier and hashes again. Members that
//!   have not reached the revision, or compacted past it, cannot answer and are
//!   skipped; answers with another compact revision are not compared. A member whose
//!   hash differs from the leader's at the same compact revision gets a CORRUPT alarm
//!   through Raft, which stops every write in the cluster (`etcdserver: corrupt
//!   cluster`) until an operator disarms it. If the other members agree among
//!   themselves by a majority of the cluster against the leader, the alarm names the
//!   leader instead. etcd's other rules stand too: a follower reporting a newer
//!   revision or compact revision than the leader's, and the leader's own hash
//!   changing at an unchanged revision, raise the alarm for that member.
//!
//! Hashes are computed on read connections on blocking threads, never on the Raft
//! thread; questions to peers go over the peer transport ([`hash_query`]).

use std::collections::HashMap;
use std::time::Duration;

use crate::membership::Member;
use crate::mvcc::hash::KvHash;
use crate::proto::etcdserverpb::{AlarmRequest, AlarmType, alarm_request::AlarmAction};
use crate::proto::qetcdpb::raft_request::Request;
use crate::raft_node::NodeHandle;
use crate::storage::{ReaderPool, StorageError};
use crate::transport::PeerTransport;
use crate::transport::hash_query::{HashAnswer, PeerHash};

/// Why the initial check refuses to start the member, in etcd's words.
#[derive(Debug, thiserror::Error)]
pub enum InitialCheckError {
    #[error("{member} failed to fetch hash ({reason})")]
    OwnHash { member: String, reason: String },
    #[error("{member} found data inconsistency with peers")]
    Inconsistent { member: String },
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

/// This member's HashKV at its current revision, from a read connection.
async fn own_hash(readers: &ReaderPool) -> Result<KvHash, String> {
    let readers = readers.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = None;
        readers.get()?.read(|conn| {
            out = Some(crate::mvcc::hash::hash_kv(conn, 0));
            Ok(())
        })?;
        Ok::<_, StorageError>(out.expect("read closure ran"))
    })
    .await
    .map_err(|e| format!("hash task failed: {e}"))?
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Every other member's answer to "your HashKV at `revision`?", asked concurrently.
async fn ask_peers(
    transport: &PeerTransport,
    peers: &[Member],
    revision: i64,
    timeout: Duration,
) -> Vec<(u64, Vec<String>, Result<HashAnswer, String>)> {
    let mut asks = tokio::task::JoinSet::new();
    for m in peers {
        let (transport, id, urls) = (transport.clone(), m.id, m.peer_urls.clone());
        asks.spawn(async move {
            let answer = transport.ask_hash_kv(&urls, revision, timeout).await;
            (id, urls, answer)
        });
    }
    let mut answers = Vec::with_capacity(peers.len());
    while let Some(done) = asks.join_next().await {
        if let Ok(answer) = done {
            answers.push(answer);
        }
    }
    answers.sort_by_key(|(id, _, _)| *id);
    answers
}

/// The initial check: `Ok` when no peer at the same compact revision has another
/// hash at this member's revision. `members` is the membership as stored.
pub async fn initial_check(
    transport: &PeerTransport,
    readers: &ReaderPool,
    local_id: u64,
    members: &[Member],
    timeout: Duration,
) -> Result<(), InitialCheckError> {
    let member = hex(local_id);
    tracing::info!(local_member_id = %member, timeout = ?timeout, "starting initial corruption check");
    let local = own_hash(readers)
        .await
        .map_err(|reason| InitialCheckError::OwnHash {
            member: member.clone(),
            reason,
        })?;
    let peers: Vec<Member> = members
        .iter()
        .filter(|m| m.id != local_id && !m.peer_urls.is_empty())
        .cloned()
        .collect();
    let answers = ask_peers(transport, &peers, local.revision, timeout).await;
    let mut mismatches = 0;
    for (peer, endpoints, answer) in answers {
        let remote_peer_id = hex(peer);
        match answer {
            Ok(HashAnswer::Hash(p)) if p.hash != local.hash => {
                let same_compaction = p.compact_revision == local.compact_revision;
                let msg = if same_compaction {
                    mismatches += 1;
                    "found different hash values from remote peer"
                } else {
                    "found different compact revision values from remote peer"
                };
                tracing::warn!(
                    local_member_id = %member,
                    local_member_revision = local.revision,
                    local_member_compact_revision = local.compact_revision,
                    local_member_hash = local.hash,
                    remote_peer_id,
                    remote_peer_endpoints = ?endpoints,
                    remote_peer_revision = p.revision,
                    remote_peer_compact_revision = p.compact_revision,
                    remote_peer_hash = p.hash,
                    "{msg}"
                );
            }
            Ok(HashAnswer::Hash(_)) => {}
            Ok(HashAnswer::FutureRevision) => tracing::warn!(
                local_member_id = %member,
                local_member_revision = local.revision,
                remote_peer_id,
                remote_peer_endpoints = ?endpoints,
                "cannot fetch hash from slow remote peer"
            ),
            Ok(HashAnswer::Compacted) => tracing::warn!(
                local_member_id = %member,
                local_member_revision = local.revision,
                remote_peer_id,
                remote_peer_endpoints = ?endpoints,
                "cannot fetch hash from remote peer; local member is behind"
            ),
            Ok(HashAnswer::Refused { reason: error })
            | Ok(HashAnswer::Failed { error })
            | Err(error) => {
                tracing::warn!(
                    local_member_id = %member,
                    requested_revision = local.revision,
                    remote_peer_id,
                    remote_peer_endpoints = ?endpoints,
                    %error,
                    "failed hash kv request"
                )
            }
        }
    }
    if mismatches > 0 {
        return Err(InitialCheckError::Inconsistent { member });
    }
    tracing::info!(local_member_id = %member, "initial corruption checking passed; no corruption");
    Ok(())
}

/// What one periodic check found wrong, and with whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The leader's own hash changed while its revision and compact revision did not.
    LeaderHashChanged { before: KvHash, after: KvHash },
    /// A follower claims a revision the leader has not reached.
    FollowerAhead {
        follower: u64,
        leader_revision: i64,
        follower_revision: i64,
    },
    /// A follower claims a compaction the leader has not applied.
    FollowerCompactedAhead {
        follower: u64,
        leader_compact: i64,
        follower_compact: i64,
    },
    /// Hashes differ at the same revision and compact revision; `culprit` is the
    /// member that disagrees with the majority (the follower, unless the others
    /// agree against the leader).
    HashMismatch {
        culprit: u64,
        compact_revision: i64,
        leader_hash: u32,
        follower: u64,
        follower_hash: u32,
    },
}

impl Finding {
    /// The member the CORRUPT alarm is raised for.
    pub fn culprit(&self, leader: u64) -> u64 {
        match self {
            Finding::LeaderHashChanged { .. } => leader,
            Finding::FollowerAhead { follower, .. }
            | Finding::FollowerCompactedAhead { follower, .. } => *follower,
            Finding::HashMismatch { culprit, .. } => *culprit,
        }
    }

    /// Logs the finding at error level, with etcd's message.
    fn log(&self, leader: u64) {
        let culprit = hex(self.culprit(leader));
        match self {
            Finding::LeaderHashChanged { before, after } => tracing::error!(
                revision_1 = before.revision,
                compact_revision_1 = before.compact_revision,
                hash_1 = before.hash,
                revision_2 = after.revision,
                compact_revision_2 = after.compact_revision,
                hash_2 = after.hash,
                corrupt_member_id = %culprit,
                "found hash mismatch"
            ),
            Finding::FollowerAhead {
                follower,
                leader_revision,
                follower_revision,
            } => {
                tracing::error!(
                    leader_revision,
                    follower_revision,
                    follower_peer_id = %hex(*follower),
                    corrupt_member_id = %culprit,
                    "revision from follower must be less than or equal to leader's"
                )
            }
            Finding::FollowerCompactedAhead {
                follower,
                leader_compact,
                follower_compact,
            } => {
                tracing::error!(
                    leader_compact_revision = leader_compact,
                    follower_compact_revision = follower_compact,
                    follower_peer_id = %hex(*follower),
                    corrupt_member_id = %culprit,
                    "compact revision from follower must be less than or equal to leader's"
                )
            }
            Finding::HashMismatch {
                compact_revision,
                leader_hash,
                follower,
                follower_hash,
                ..
            } => tracing::error!(
                leader_compact_revision = compact_revision,
                leader_hash,
                follower_compact_revision = compact_revision,
                follower_hash,
                follower_peer_id = %hex(*follower),
                corrupt_member_id = %culprit,
                "same compact revision then hashes must match"
            ),
        }
    }
}

/// Judges one periodic check: the leader's hash `before` asking the peers, its hash
/// `after` the read barrier, the peers' answers, and the cluster's size. Pure, so the
/// rules are tested without a cluster.
pub fn judge(
    leader: u64,
    before: KvHash,
    after: KvHash,
    answers: &[PeerHash],
    cluster_size: usize,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    if after.hash != before.hash
        && after.revision == before.revision
        && after.compact_revision == before.compact_revision
    {
        findings.push(Finding::LeaderHashChanged { before, after });
    }
    // Hashes at the leader's revision with the leader's compact revision, by value.
    let mut votes: HashMap<u32, usize> = HashMap::from([(before.hash, 1)]);
    let comparable: Vec<&PeerHash> = answers
        .iter()
        .filter(|p| {
            p.compact_revision == before.compact_revision && p.hash_revision == before.revision
        })
        .collect();
    for p in &comparable {
        *votes.entry(p.hash).or_default() += 1;
    }
    let quorum = cluster_size / 2 + 1;
    let leader_outvoted = votes
        .iter()
        .any(|(hash, n)| *hash != before.hash && *n >= quorum);
    for p in answers {
        if p.revision > after.revision {
            findings.push(Finding::FollowerAhead {
                follower: p.member_id,
                leader_revision: after.revision,
                follower_revision: p.revision,
            });
        }
        if p.compact_revision > after.compact_revision {
            findings.push(Finding::FollowerCompactedAhead {
                follower: p.member_id,
                leader_compact: after.compact_revision,
                follower_compact: p.compact_revision,
            });
        }
    }
    for p in comparable {
        if p.hash != before.hash {
            findings.push(Finding::HashMismatch {
                culprit: if leader_outvoted { leader } else { p.member_id },
                compact_revision: before.compact_revision,
                leader_hash: before.hash,
                follower: p.member_id,
                follower_hash: p.hash,
            });
        }
    }
    findings
}

/// The running periodic check; stops when dropped.
pub struct PeriodicCheck(Option<tokio::task::JoinHandle<()>>);

impl Drop for PeriodicCheck {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// What the periodic check works with.
pub struct Checker {
    pub node: NodeHandle,
    pub transport: PeerTransport,
    pub readers: ReaderPool,
    pub request_timeout: Duration,
}

/// Starts the periodic check every `period` on the current runtime (not at all for a
/// zero period). It runs on every member and acts only while the member leads.
pub fn start(checker: Checker, period: Duration) -> PeriodicCheck {
    if period.is_zero() {
        return PeriodicCheck(None);
    }
    tracing::info!(
        local_member_id = %hex(checker.node.id()),
        interval = ?period,
        "enabled corruption checking"
    );
    PeriodicCheck(Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            if checker.node.leader() != Some(checker.node.id()) {
                continue;
            }
            if let Err(error) = checker.check_once().await {
                tracing::warn!(%error, "failed to check hash KV");
            }
        }
    })))
}

impl Checker {
    /// One pass of the periodic check (see the module docs).
    pub async fn check_once(&self) -> Result<(), String> {
        let leader = self.node.id();
        let before = own_hash(&self.readers).await?;
        let readers = self.readers.clone();
        let members = tokio::task::spawn_blocking(move || {
            readers.get()?.read(|txn| crate::membership::list(txn))
        })
        .await
        .map_err(|e| format!("membership read task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        let cluster_size = members.len();
        let peers: Vec<Member> = members.into_iter().filter(|m| m.id != leader).collect();
        let answers = ask_peers(
            &self.transport,
            &peers,
            before.revision,
            self.request_timeout,
        )
        .await;
        match tokio::time::timeout(self.request_timeout, self.node.read_barrier()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("read barrier timed out".into()),
        }
        let after = own_hash(&self.readers).await?;
        let mut hashes = Vec::new();
        for (peer, endpoints, answer) in answers {
            match answer {
                Ok(HashAnswer::Hash(p)) => hashes.push(PeerHash {
                    // The member asked, whatever the answer says about itself.
                    member_id: peer,
                    ..p
                }),
                // Behind, or compacted past the revision: nothing to compare.
                Ok(HashAnswer::FutureRevision | HashAnswer::Compacted) => {}
                Ok(HashAnswer::Refused { reason: error } | HashAnswer::Failed { error })
                | Err(error) => tracing::warn!(
                    local_member_id = %hex(leader),
                    requested_revision = before.revision,
                    remote_peer_endpoints = ?endpoints,
                    %error,
                    "failed hash kv request"
                ),
            }
        }
        let checked = hashes.len();
        let findings = judge(leader, before, after, &hashes, cluster_size);
        let mut alarmed = Vec::new();
        for finding in &findings {
            finding.log(leader);
            let culprit = finding.culprit(leader);
            if !alarmed.contains(&culprit) {
                alarmed.push(culprit);
            }
        }
        for culprit in alarmed {
            self.raise_corrupt(culprit).await;
        }
        tracing::info!(
            number_of_peers_checked = checked,
            "finished peer corruption check"
        );
        Ok(())
    }

    /// Raises CORRUPT for `member` through Raft, unless it is raised already.
    async fn raise_corrupt(&self, member: u64) {
        let corrupt = AlarmType::Corrupt as i32;
        let raised = self.node.status().alarms();
        if raised
            .iter()
            .any(|a| a.member_id == member && a.alarm == corrupt)
        {
            return;
        }
        let raise = Request::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: member,
            alarm: corrupt,
        });
        match tokio::time::timeout(self.request_timeout, self.node.propose(raise)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(member = %hex(member), error = %e, "cannot raise the CORRUPT alarm")
            }
            Err(_) => tracing::warn!(member = %hex(member), "raising the CORRUPT alarm timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER: u64 = 1;

    fn local(hash: u32, revision: i64, compact_revision: i64) -> KvHash {
        KvHash {
            hash,
            revision,
            compact_revision,
            current_revision: revision,
        }
    }

    fn peer(member_id: u64, hash: u32, hash_revision: i64, compact_revision: i64) -> PeerHash {
        PeerHash {
            member_id,
            hash,
            hash_revision,
            compact_revision,
            revision: hash_revision,
        }
    }

    #[test]
    fn agreeing_members_raise_nothing() {
        let h = local(7, 10, -1);
        let answers = [peer(2, 7, 10, -1), peer(3, 7, 10, -1)];
        assert!(judge(LEADER, h, h, &answers, 3).is_empty());
    }

    #[test]
    fn a_follower_with_another_hash_is_the_culprit() {
        let h = local(7, 10, 4);
        let answers = [peer(2, 7, 10, 4), peer(3, 8, 10, 4)];
        let findings = judge(LEADER, h, h, &answers, 3);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].culprit(LEADER), 3);
    }

    #[test]
    fn a_leader_outvoted_by_the_majority_is_the_culprit() {
        let h = local(7, 10, -1);
        let answers = [peer(2, 8, 10, -1), peer(3, 8, 10, -1)];
        let findings = judge(LEADER, h, h, &answers, 3);
        assert!(!findings.is_empty());
        assert!(
            findings.iter().all(|f| f.culprit(LEADER) == LEADER),
            "{findings:?}"
        );
    }

    #[test]
    fn without_a_majority_the_follower_is_blamed_as_etcd_does() {
        // Three members, one did not answer: one vote against one.
        let h = local(7, 10, -1);
        let findings = judge(LEADER, h, h, &[peer(2, 8, 10, -1)], 3);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].culprit(LEADER), 2);
    }

    #[test]
    fn another_compact_revision_is_not_compared() {
        // The follower compacted less far than the leader (it has not applied the
        // compaction yet): its hash covers other revisions and says nothing.
        let h = local(7, 10, 6);
        assert!(judge(LEADER, h, h, &[peer(2, 8, 10, 4)], 3).is_empty());
    }

    #[test]
    fn followers_ahead_of_the_leader_are_culprits() {
        let h = local(7, 10, 4);
        let mut ahead = peer(2, 7, 10, 4);
        ahead.revision = 11;
        let compacted_ahead = peer(3, 9, 10, 5);
        let findings = judge(LEADER, h, h, &[ahead, compacted_ahead], 3);
        assert_eq!(
            findings
                .iter()
                .map(|f| f.culprit(LEADER))
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    #[test]
    fn the_leaders_own_hash_changing_in_place_is_its_fault() {
        let before = local(7, 10, -1);
        let after = local(9, 10, -1);
        let findings = judge(LEADER, before, after, &[], 3);
        assert_eq!(findings, vec![Finding::LeaderHashChanged { before, after }]);
        // A write in between changes the revision: not a finding.
        assert!(judge(LEADER, before, local(9, 11, -1), &[], 3).is_empty());
    }
}
