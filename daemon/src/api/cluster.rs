//! The `Cluster` service: membership as the state database has applied it, and changes
//! to it as Raft conf changes.
//!
//! Every change is checked here, against the membership this member has applied, with
//! etcd's rules and texts (§7.1, §7.3 of the clustering spec), then proposed, and
//! answered only once this member has applied it — so the members in the answer
//! include the change, which is what `etcdctl member add` prints its `ETCD_*` lines
//! from. Raft takes one conf change at a time: a second one proposed while the first
//! is unapplied is dropped by Raft and its caller times out, as in etcd.

use std::sync::Arc;

use prost::Message as _;
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use tonic::{Request, Response, Status};

use super::ApiContext;
use crate::error::RequestError;
use crate::membership::{self, Member};
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;
use crate::proto::qetcdpb::MemberRecord;
use crate::proto::qetcdpb::raft_request::Request as RaftRequestKind;

pub struct ClusterService {
    ctx: Arc<ApiContext>,
}

impl ClusterService {
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        ClusterService { ctx }
    }

    async fn members(&self) -> Result<Vec<Member>, RequestError> {
        self.ctx.read(|conn| Ok(membership::list(conn)?)).await
    }

    /// Proposes `change` and waits until this member has applied a membership for which
    /// `done` holds; returns that membership.
    async fn change(
        &self,
        change: ConfChangeV2,
        done: impl Fn(&[Member]) -> bool,
    ) -> Result<Vec<Member>, RequestError> {
        let deadline = tokio::time::Instant::now() + self.ctx.request_timeout;
        tokio::time::timeout_at(deadline, self.ctx.node.propose_conf_change(change))
            .await
            .map_err(|_| RequestError::Timeout)??;
        loop {
            let applied = self.ctx.node.status().applied.notified();
            let members = self.members().await?;
            if done(&members) {
                return Ok(members);
            }
            if tokio::time::timeout_at(deadline, applied).await.is_err() {
                return Err(RequestError::Timeout);
            }
        }
    }

    /// etcd's `isLearnerReady`, decided by the leader: asked of it over the peer port
    /// when this member does not lead.
    async fn check_learner_ready(&self, id: u64) -> Result<(), RequestError> {
        use crate::transport::members_query::{NOT_FOUND, NOT_READY, READY};
        let leader = self.ctx.node.leader().ok_or(RequestError::NoLeader)?;
        let ready = if leader == self.ctx.member_id {
            self.ctx.node.learner_ready(id).await?
        } else {
            match self.ctx.peers.ask_learner_ready(leader, id).await {
                Ok(READY) => true,
                Ok(NOT_READY) => false,
                Ok(NOT_FOUND) => return Err(RequestError::MemberNotFound),
                Ok(_) => return Err(RequestError::LeaderChanged),
                Err(e) => {
                    tracing::warn!(leader = %format!("{leader:x}"), error = %e, "cannot ask the leader about a learner");
                    return Err(RequestError::Timeout);
                }
            }
        };
        if ready {
            Ok(())
        } else {
            Err(RequestError::LearnerNotReady)
        }
    }

    /// Voters this member has been connected to for [`HEALTH_INTERVAL`], itself
    /// included (etcd's `numConnectedSince`).
    fn connected_voters(&self, members: &[Member]) -> usize {
        let connected = self.ctx.peers.connected_for(HEALTH_INTERVAL);
        members
            .iter()
            .filter(|m| !m.is_learner)
            .filter(|m| m.id == self.ctx.member_id || connected.contains(&m.id))
            .count()
    }

    /// `--strict-reconfig-check` for a new voter (§7.3): enough started voters, and a
    /// quorum of the grown cluster connected to this member for a while.
    fn may_add_voter(&self, members: &[Member]) -> Result<(), RequestError> {
        if !self.ctx.strict_reconfig_check {
            return Ok(());
        }
        if !enough_started_to_add_voter(members) {
            return Err(RequestError::NotEnoughStartedMembers);
        }
        let voters = members.iter().filter(|m| !m.is_learner).count();
        if voters > 1 && self.connected_voters(members) < quorum(voters + 1) {
            return Err(RequestError::UnhealthyCluster);
        }
        Ok(())
    }

    /// `--strict-reconfig-check` for a removal (etcd's `mayRemoveMember`): learners and
    /// members this one is not connected to go freely; otherwise the voters left must
    /// have started and be connected in quorum.
    fn may_remove(&self, members: &[Member], id: u64) -> Result<(), RequestError> {
        if !self.ctx.strict_reconfig_check || members.iter().any(|m| m.id == id && m.is_learner) {
            return Ok(());
        }
        if !enough_started_to_remove(members, id) {
            return Err(RequestError::NotEnoughStartedMembers);
        }
        let target_connected = id == self.ctx.member_id
            || self
                .ctx
                .peers
                .connected_for(std::time::Duration::ZERO)
                .contains(&id);
        if !target_connected {
            return Ok(());
        }
        let voters = members.iter().filter(|m| !m.is_learner).count();
        let active = self.connected_voters(members);
        if active.saturating_sub(1) < 1 + (voters - 1) / 2 {
            return Err(RequestError::UnhealthyCluster);
        }
        Ok(())
    }

    fn protos(members: &[Member]) -> Vec<crate::proto::etcdserverpb::Member> {
        members.iter().map(Member::to_proto).collect()
    }
}

/// One conf change of one member, carrying the member's record for the state machine.
fn single_change(kind: ConfChangeType, id: u64, record: Option<&MemberRecord>) -> ConfChangeV2 {
    let mut change = ConfChangeV2::default();
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id;
    change.mut_changes().push(single);
    if let Some(r) = record {
        change.context = r.encode_to_vec().into();
    }
    change
}

/// Parses the peer URLs of a member add or update as etcd's `types.NewURLs` does, into
/// the text form members report (sorted, without duplicates).
fn peer_urls(raw: &[String]) -> Result<Vec<url::Url>, RequestError> {
    if raw.is_empty() {
        return Err(RequestError::MemberBadUrls);
    }
    let mut out: Vec<url::Url> = Vec::new();
    for r in raw {
        let parsed = crate::config::parse_url_list(r).map_err(|_| RequestError::MemberBadUrls)?;
        if parsed.len() != 1 {
            return Err(RequestError::MemberBadUrls);
        }
        out.extend(parsed);
    }
    out.sort_by_key(crate::config::url_string);
    out.dedup_by_key(|u| crate::config::url_string(u));
    Ok(out)
}

/// etcd's `isReadyToAddVotingMember`: with the new voter counted, a quorum of the
/// voters must have started (published their names) — except when a one-member cluster
/// gets its second member.
pub(crate) fn enough_started_to_add_voter(members: &[Member]) -> bool {
    let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
    let total = voters.len() + 1;
    let started = voters.iter().filter(|m| !m.name.is_empty()).count();
    if started == 1 && total == 2 {
        return true;
    }
    // A quorum of the new voter count: more than half.
    started > total / 2
}

/// Votes a Raft group of `n` voters needs.
fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// etcd's `HealthInterval`: a peer counts as connected for a strict reconfiguration
/// check once its connection has lasted this long.
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// etcd's `IsReadyToRemoveVotingMember`: without `id`, a quorum of the remaining
/// voters must have started.
pub(crate) fn enough_started_to_remove(members: &[Member], id: u64) -> bool {
    let remaining: Vec<&Member> = members
        .iter()
        .filter(|m| !m.is_learner && m.id != id)
        .collect();
    let started = remaining.iter().filter(|m| !m.name.is_empty()).count();
    started > remaining.len() / 2
}

/// etcd's `isReadyToPromoteMember`: the learner counts as a started voter, and a
/// quorum of the voters must have started.
pub(crate) fn enough_started_to_promote(members: &[Member]) -> bool {
    let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
    let total = voters.len() + 1;
    let started = voters.iter().filter(|m| !m.name.is_empty()).count() + 1;
    started > total / 2
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.ctx.read_barrier().await?;
        }
        let members = self.members().await?;
        // etcd's cluster service headers carry no revision.
        Ok(Response::new(MemberListResponse {
            header: Some(self.ctx.header(0)),
            members: Self::protos(&members),
        }))
    }

    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only, with auth on.
        self.ctx.check_admin(&req)?;
        let req = req.into_inner();
        let urls = peer_urls(&req.peer_ur_ls)?;
        let texts: Vec<String> = urls.iter().map(crate::config::url_string).collect();
        let members = self.members().await?;
        if members
            .iter()
            .any(|m| m.peer_urls.iter().any(|u| texts.contains(u)))
        {
            return Err(RequestError::PeerUrlExists.into());
        }
        if req.is_learner {
            let learners = members.iter().filter(|m| m.is_learner).count();
            if learners + 1 > self.ctx.max_learners {
                return Err(RequestError::TooManyLearners.into());
            }
        } else {
            self.may_add_voter(&members)?;
        }
        // etcd 3.4+: the new member's ID hashes its peer URLs, no token, and the time.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = crate::config::member_id(&urls, "", Some(now));
        if members.iter().any(|m| m.id == id) {
            return Err(RequestError::MemberExists.into());
        }
        let record = MemberRecord {
            id,
            name: String::new(),
            peer_urls: texts,
            client_urls: Vec::new(),
            is_learner: req.is_learner,
        };
        let kind = if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = self
            .change(single_change(kind, id, Some(&record)), |ms| {
                ms.iter().any(|m| m.id == id)
            })
            .await?;
        tracing::info!(member_id = %format!("{id:x}"), peer_urls = ?record.peer_urls, learner = req.is_learner, "added member");
        Ok(Response::new(MemberAddResponse {
            header: Some(self.ctx.header(0)),
            member: Some(Member::from_record(&record).to_proto()),
            members: Self::protos(&members),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only, with auth on.
        self.ctx.check_admin(&req)?;
        let id = req.into_inner().id;
        let is_member = |members: &[Member]| members.iter().any(|m| m.id == id);
        let members = self.members().await?;
        if !is_member(&members) {
            return Err(RequestError::MemberNotFound.into());
        }
        self.may_remove(&members, id)?;
        let change = single_change(ConfChangeType::RemoveNode, id, None);
        let members = self.change(change, |ms| !is_member(ms)).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.ctx.header(0)),
            members: Self::protos(&members),
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only, with auth on.
        self.ctx.check_admin(&req)?;
        let req = req.into_inner();
        let urls = peer_urls(&req.peer_ur_ls)?;
        let texts: Vec<String> = urls.iter().map(crate::config::url_string).collect();
        let members = self.members().await?;
        if !members.iter().any(|m| m.id == req.id) {
            return Err(RequestError::MemberNotFound.into());
        }
        if members
            .iter()
            .any(|m| m.id != req.id && m.peer_urls.iter().any(|u| texts.contains(u)))
        {
            return Err(RequestError::PeerUrlExists.into());
        }
        // Raft's configuration stays as it is: an ordinary entry, checked again when
        // applied (another change may have come first).
        let update = RaftRequestKind::MemberUpdate(crate::proto::qetcdpb::MemberUpdate {
            id: req.id,
            peer_urls: texts.clone(),
        });
        let applied = self.ctx.propose(update).await?;
        debug_assert!(matches!(
            applied,
            crate::state_machine::Applied::MemberUpdated
        ));
        tracing::info!(member_id = %format!("{:x}", req.id), peer_urls = ?texts, "updated member");
        let members = self.members().await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.ctx.header(0)),
            members: Self::protos(&members),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only, with auth on.
        self.ctx.check_admin(&req)?;
        let id = req.into_inner().id;
        let members = self.members().await?;
        let target = members
            .iter()
            .find(|m| m.id == id)
            .ok_or(RequestError::MemberNotFound)?;
        if !target.is_learner {
            return Err(RequestError::MemberNotLearner.into());
        }
        self.check_learner_ready(id).await?;
        if self.ctx.strict_reconfig_check && !enough_started_to_promote(&members) {
            return Err(RequestError::NotEnoughStartedMembers.into());
        }
        // The state machine applies a voter add of a learner as its promotion.
        let change = single_change(ConfChangeType::AddNode, id, None);
        let members = self
            .change(change, |ms| ms.iter().any(|m| m.id == id && !m.is_learner))
            .await?;
        tracing::info!(member_id = %format!("{id:x}"), "promoted learner to voting member");
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.ctx.header(0)),
            members: Self::protos(&members),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, learner: bool) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("http://127.0.0.{id}:2380")],
            client_urls: Vec::new(),
            is_learner: learner,
        }
    }

    #[test]
    fn started_members_rule_for_a_new_voter() {
        // One started member may take a second.
        assert!(enough_started_to_add_voter(&[member(1, "a", false)]));
        // 1 of 2 started: 3 voters need 2 started.
        assert!(!enough_started_to_add_voter(&[
            member(1, "a", false),
            member(2, "", false)
        ]));
        // 2 of 2 started: fine; learners do not count.
        assert!(enough_started_to_add_voter(&[
            member(1, "a", false),
            member(2, "b", false),
            member(3, "", true)
        ]));
        // 2 of 3 started: 4 voters need 3.
        assert!(!enough_started_to_add_voter(&[
            member(1, "a", false),
            member(2, "b", false),
            member(3, "", false)
        ]));
    }

    #[test]
    fn started_members_rule_for_a_removal() {
        let ms = [
            member(1, "a", false),
            member(2, "b", false),
            member(3, "", false),
        ];
        // Without 2: a and the unstarted 3 remain; 1 of 2 started is not a quorum.
        assert!(!enough_started_to_remove(&ms, 2));
        // Without the unstarted one: both remaining started.
        assert!(enough_started_to_remove(&ms, 3));
    }

    #[test]
    fn started_members_rule_for_a_promotion() {
        // The learner counts as started: 1 started voter + it = 2 of 2.
        assert!(enough_started_to_promote(&[
            member(1, "a", false),
            member(2, "", true)
        ]));
        // 1 of 3 voters started, + the learner = 2 of 4: not a quorum.
        assert!(!enough_started_to_promote(&[
            member(1, "a", false),
            member(2, "", false),
            member(3, "", false),
            member(4, "", true)
        ]));
    }

    #[test]
    fn peer_urls_follow_etcds_grammar() {
        let ok = peer_urls(&["http://127.0.0.1:2380".into()]).unwrap();
        assert_eq!(crate::config::url_string(&ok[0]), "http://127.0.0.1:2380");
        for bad in [
            "127.0.0.1:2380",
            "http://127.0.0.1",
            "http://127.0.0.1:2380/x",
            "ftp://a:1",
        ] {
            assert!(
                matches!(peer_urls(&[bad.into()]), Err(RequestError::MemberBadUrls)),
                "{bad}"
            );
        }
        assert!(peer_urls(&[]).is_err());
    }
}
