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

impl ApiContext {
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
