//! Publishing: a member becomes a serving member once its name and client URLs are
//! committed through Raft (etcd's `ClusterMemberAttrSet`). Done at every start, so a
//! restart with a new `--name` or `--advertise-client-urls` updates what others see.

use std::time::Duration;

use crate::proto::qetcdpb::{MemberAttributes, raft_request::Request};
use crate::raft_node::NodeHandle;

/// Proposes `attrs` until they are committed (the cluster may not have a leader yet),
/// each attempt bounded by `timeout`, retried every `retry`.
pub async fn publish(
    node: &NodeHandle,
    attrs: MemberAttributes,
    timeout: Duration,
    retry: Duration,
) {
    loop {
        let attempt = node.propose(Request::Publish(attrs.clone()));
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => tracing::debug!(error = %e, "publishing member attributes; retrying"),
            Err(_) => tracing::warn!("failed to publish local member to cluster through raft"),
        }
        tokio::time::sleep(retry).await;
    }
}
