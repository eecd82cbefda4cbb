//! What the member tells systemd while it starts and serves: its own progress, sampled
//! from the Raft node and the peer transport, worded and sent by `notify`.

use std::sync::atomic::Ordering;

use crate::notify::{self, Notifier, Progress};
use crate::raft_node::NodeHandle;
use crate::transport::PeerTransport;

/// Starts [`notify::track`] for this member: `STATUS=` from the node and its peers,
/// `READY=1` once `published` turns true, watchdog pings if systemd asks for them.
pub fn track(
    notifier: &Notifier,
    node: NodeHandle,
    peers: PeerTransport,
    published: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let watchdog = notify::watchdog_from_env();
    if let Some(every) = watchdog {
        tracing::info!(every = ?every, "sending systemd watchdog pings");
    }
    tokio::spawn(notify::track(
        notifier.clone(),
        published,
        watchdog,
        move |published| sample(&node, &peers, published),
    ))
}

fn sample(node: &NodeHandle, peers: &PeerTransport, published: bool) -> Progress {
    let (others, connected) = peers.peer_counts();
    let status = node.status();
    Progress {
        members: others + 1,
        reachable: connected + 1,
        leader: node.leader(),
        commit_index: status.commit_index.load(Ordering::Acquire),
        applied_index: status.applied_index.load(Ordering::Acquire),
        published,
    }
}
