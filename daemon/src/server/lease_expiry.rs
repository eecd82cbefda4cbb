//! The leader's side of lease expiry: find leases past their deadline and propose their
//! revocation, so that expiry reaches every member as an ordinary replicated revoke.
//! It lives with the member rather than in `lease`: it drives the Raft node, while the
//! lease module is what the node applies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::RequestError;
use crate::lease::Lessor;
use crate::proto::qetcdpb::LeaseExpire;
use crate::proto::qetcdpb::raft_request::Request;
use crate::raft_node::NodeHandle;

/// How often the leader looks for expired leases. Expiry is late by at most this.
const POLL: Duration = Duration::from_millis(100);

/// Revokes proposed per poll at most: etcd's `leaseRevokeRate` of 1000 a second. A
/// mass expiry is spread out instead of flooding the log in one burst.
const REVOKES_PER_POLL: usize = 100;

/// The running expiry loop; stops when dropped.
pub struct ExpiryTask(tokio::task::JoinHandle<()>);

impl Drop for ExpiryTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the loop on the current tokio runtime. It runs on every member and acts only
/// while the member is a promoted leader.
pub fn start(node: NodeHandle, lessor: Arc<Lessor>, request_timeout: Duration) -> ExpiryTask {
    ExpiryTask(tokio::spawn(run(node, lessor, request_timeout)))
}

async fn run(node: NodeHandle, lessor: Arc<Lessor>, request_timeout: Duration) {
    let mut interval = tokio::time::interval(POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let term = node.term();
        // Both conditions: leading now, and promoted in this very term (a leader that
        // has not yet applied its predecessor's entries must not judge deadlines).
        if node.leader() != Some(node.id()) || !lessor.is_primary(term) {
            continue;
        }
        let expired = lessor.take_expired(Instant::now(), REVOKES_PER_POLL);
        if expired.is_empty() {
            continue;
        }
        // One round at a time: the proposals of a round go out together (and land in
        // one Raft batch), and the next round waits for them, so at most
        // REVOKES_PER_POLL are in flight.
        let mut round = tokio::task::JoinSet::new();
        for id in expired {
            let node = node.clone();
            round.spawn(async move {
                // Bound to this term: applied only if committed in it (see LeaseExpire).
                let revoke = node.propose(Request::LeaseExpire(LeaseExpire { id, term }));
                (id, tokio::time::timeout(request_timeout, revoke).await)
            });
        }
        while let Some(done) = round.join_next().await {
            match done {
                Ok((id, Ok(Ok(_)))) => {
                    tracing::info!(lease = %format!("{id:016x}"), "lease expired; revoked")
                }
                // Revoked meanwhile by a client: nothing left to do. Or the decision
                // reached the log in a later term and was ignored: that term's leader
                // judges again.
                Ok((_, Ok(Err(RequestError::LeaseNotFound | RequestError::LeaderChanged)))) => {}
                // Retried after the lessor's retry interval if still there.
                Ok((id, Ok(Err(e)))) => {
                    tracing::warn!(lease = %format!("{id:016x}"), error = %e, "cannot revoke expired lease")
                }
                Ok((id, Err(_))) => {
                    tracing::warn!(lease = %format!("{id:016x}"), "revoking expired lease timed out")
                }
                Err(e) => tracing::warn!(error = %e, "lease revoke task failed"),
            }
        }
    }
}
