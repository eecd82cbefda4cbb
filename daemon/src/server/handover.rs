//! Leadership hand-over on shutdown: a leader that stops hands leadership to a follower
//! first, so that the cluster does not wait out an election timeout (etcd does the
//! same on SIGTERM).

use std::time::Duration;

use crate::error::RequestError;
use crate::raft_node::NodeHandle;

/// Hands leadership over if this member leads, waiting up to `timeout` for another
/// member to take it. Failure is logged; shutdown goes on regardless.
pub async fn hand_over_leadership(node: &NodeHandle, timeout: Duration) {
    if node.leader() != Some(node.id()) {
        return;
    }
    match node.transfer_leadership(None).await {
        Ok(target) => {
            let me = node.id();
            if node
                .wait_for_leader(timeout, |l| l.is_some_and(|l| l != me))
                .await
            {
                tracing::info!(transferee = %format!("{target:x}"), "leadership transfer finished");
            } else {
                tracing::warn!(transferee = %format!("{target:x}"), "leadership transfer failed");
            }
        }
        // A single member has no one to hand over to.
        Err(RequestError::BadLeaderTransferee) => {}
        Err(e) => tracing::warn!(error = %e, "leadership transfer failed"),
    }
}
