//! The one path from a client request to a Raft proposal: size check, admission, the
//! request timeout and the typed result. Every service that writes goes through
//! [`ApiContext::propose`], so the limits below hold for all of them.
//!
//! Admission keeps memory bounded under overload. A request is refused at once with
//! etcd's `etcdserver: too many requests`, rather than queued without bound, when
//!
//! - this member has applied less than the cluster committed by more than etcd's margin
//!   ([`MAX_APPLY_LAG`]): new work would only queue behind the backlog; or
//! - the proposals in flight on this member (accepted, not yet answered) already hold
//!   [`IN_FLIGHT_BYTES`] of request data: the Raft thread keeps each one until it is
//!   applied, to propose it again after a leader change.
//!
//! Behind both, the command queue into the Raft thread is bounded too (`raft_node`).

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::ApiContext;
use crate::error::RequestError;
use crate::proto::qetcdpb::raft_request::Request;
use crate::state_machine::Applied;

/// etcd's `maxGapBetweenApplyAndCommitIndex`.
pub const MAX_APPLY_LAG: u64 = 5000;

/// Bytes of request data that may be in flight on one member. Default 256 MiB: room
/// for tens of thousands of typical requests (far past the point where more
/// concurrency adds throughput), while a flood of large ones stays within memory.
pub const IN_FLIGHT_BYTES: usize = 256 << 20;

/// The in-flight byte budget of one member's API.
#[derive(Clone)]
pub struct ProposalBudget(Arc<Semaphore>);

impl Default for ProposalBudget {
    fn default() -> Self {
        ProposalBudget(Arc::new(Semaphore::new(IN_FLIGHT_BYTES)))
    }
}

/// What etcd adds to a request's size for the bookkeeping a stored key costs, when it
/// checks whether the request still fits in the quota.
const STORED_KEY_OVERHEAD: u64 = 256;

impl ApiContext {
    /// etcd's quota check before a request that may grow the store: with NOSPACE
    /// raised it is refused at once; if the state database plus the request would pass
    /// the quota, this member raises NOSPACE (through Raft, so every member refuses
    /// alike from then on) and refuses it.
    fn check_quota(&self, request_len: usize) -> Result<(), RequestError> {
        let status = self.node.status();
        let nospace = crate::proto::etcdserverpb::AlarmType::Nospace as i32;
        if status.alarms().iter().any(|a| a.alarm == nospace) {
            return Err(RequestError::NoSpace);
        }
        let Some(quota) = self.quota_bytes else {
            return Ok(());
        };
        let size = status.db_size.load(std::sync::atomic::Ordering::Acquire);
        if size + request_len as u64 + STORED_KEY_OVERHEAD <= quota {
            return Ok(());
        }
        tracing::warn!(size, quota, "the backend passed its quota; raising NOSPACE");
        let node = self.node.clone();
        let raise = crate::proto::etcdserverpb::AlarmRequest {
            action: crate::proto::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.member_id,
            alarm: nospace,
        };
        let timeout = self.request_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, node.propose(Request::Alarm(raise))).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot raise the NOSPACE alarm"),
                Err(_) => tracing::warn!("raising the NOSPACE alarm timed out"),
            }
        });
        Err(RequestError::NoSpace)
    }

    /// Proposes a write and waits for its result, within the request timeout.
    pub async fn propose(&self, request: Request) -> Result<Applied, RequestError> {
        self.propose_as(request, None).await
    }

    /// [`Self::propose`] for an identified caller, whose name and auth revision every
    /// member checks permissions with when it applies the request.
    pub async fn propose_as(
        &self,
        request: Request,
        caller: Option<crate::auth::AuthInfo>,
    ) -> Result<Applied, RequestError> {
        let len = self.node.encoded_len(&request);
        if len > self.max_request_bytes {
            return Err(RequestError::RequestTooLarge);
        }
        let status = self.node.status();
        let committed = status
            .commit_index
            .load(std::sync::atomic::Ordering::Acquire);
        let applied = status
            .applied_index
            .load(std::sync::atomic::Ordering::Acquire);
        if committed > applied + MAX_APPLY_LAG {
            return Err(RequestError::TooManyRequests);
        }
        if crate::state_machine::may_grow_store(&request) {
            self.check_quota(len)?;
        }
        let _permit = u32::try_from(len)
            .ok()
            .and_then(|n| self.proposal_budget.0.try_acquire_many(n).ok())
            .ok_or(RequestError::TooManyRequests)?;
        match tokio::time::timeout(self.request_timeout, self.node.propose_as(request, caller))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(RequestError::Timeout),
        }
    }
}
