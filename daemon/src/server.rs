//! One member, assembled: bootstrap the state database, start the Raft node, serve the
//! client API, publish this member's attributes, and stop cleanly.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, ApiContext};
use crate::bootstrap::{self, BootstrapError};
use crate::config::{Config, url_string};
use crate::notify::{self, Notifier};
use crate::proto::qetcdpb::{MemberAttributes, raft_request::Request};
use crate::raft_node::{self, NodeConfig};
use crate::storage::{ReaderPool, StorageError};
use crate::transport::{PeerTransport, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("listen tcp {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("client listener failed: {0}")]
    Serve(String),
    #[error("the member has been permanently removed from the cluster")]
    Removed,
}

/// Exit status of a member that its cluster removed. Restarting it cannot help (its
/// peers refuse it until it is added again with a fresh data dir), so the systemd unit
/// lists it in `RestartPreventExitStatus=`. 78 is sysexits' EX_CONFIG: the member's
/// configuration no longer describes a member of the cluster. etcd has no such code.
pub const EXIT_REMOVED: u8 = 78;

impl ServerError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServerError::Removed => EXIT_REMOVED,
            _ => 1,
        }
    }
}

/// etcd's request timeout: 5 s plus two election timeouts.
pub fn request_timeout(cfg: &Config) -> Duration {
    Duration::from_secs(5) + 2 * cfg.election_timeout
}

/// Runs a member until `shutdown` completes or its storage fails.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let boot = bootstrap::bootstrap(&cfg)?;
    let node_cfg = NodeConfig {
        id: boot.member_id,
        tick_interval: cfg.heartbeat_interval,
        election_ticks: cfg.election_ticks(),
        pre_vote: cfg.pre_vote,
        snapshot_count: cfg.snapshot_count,
        snapshot_catchup_entries: cfg.snapshot_catchup_entries,
        request_timeout: request_timeout(&cfg),
    };
    let peer_addrs = cfg
        .listen_peer_urls
        .iter()
        .map(listen_addr)
        .collect::<Vec<_>>();
    let peer_tls = crate::tls::peer_side::configs(&cfg)?;
    let client_tls = crate::tls::client_side::server_config(&cfg)?;
    let transport = PeerTransport::bind(
        &peer_addrs,
        boot.member_id,
        boot.cluster_id,
        cfg.election_timeout,
        crate::storage::snapshot::snapshot_dir(&boot.db_path),
        peer_tls,
    )?;
    for addr in &peer_addrs {
        tracing::info!(address = %addr, "listening for peers (QUIC over UDP)");
    }
    let (node, node_thread) = raft_node::start(node_cfg, boot.conn, Box::new(transport.clone()))?;
    transport.attach(node.clone());
    // systemd hears of progress from here on; READY=1 once `published` is raised.
    let notifier = Notifier::from_env();
    let (published_tx, published_rx) = tokio::sync::watch::channel(false);
    let tracker = notify::start(&notifier, node.clone(), transport.clone(), published_rx);
    let ctx = Arc::new(ApiContext {
        node: node.clone(),
        readers: ReaderPool::new(boot.db_path.clone()),
        cluster_id: boot.cluster_id,
        member_id: boot.member_id,
        max_request_bytes: cfg.max_request_bytes as usize,
        max_txn_ops: cfg.max_txn_ops as usize,
        request_timeout: request_timeout(&cfg),
        // tokio's interval panics on zero; etcd treats 0 as its default too.
        watch_progress_interval: if cfg.watch_progress_notify_interval.is_zero() {
            Duration::from_secs(600)
        } else {
            cfg.watch_progress_notify_interval
        },
    });

    // Runs on every member; acts while this one leads. Stops when dropped.
    let _lease_expiry = crate::lease::expiry::start(node.clone(), request_timeout(&cfg));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut listeners = Vec::new();
    for url in &cfg.listen_client_urls {
        let addr = listen_addr(url);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let tls = match url.scheme() {
            "https" | "unixs" => client_tls.clone(),
            _ => None,
        };
        if tls.is_some() {
            tracing::info!(address = %addr, "serving client traffic securely");
        } else {
            tracing::info!(address = %addr, "serving client traffic insecurely; this is strongly discouraged!");
        }
        let routes = api::routes(ctx.clone());
        let mut stop = stop_rx.clone();
        listeners.push(tokio::spawn(async move {
            tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    api::client_listener::accept(listener, tls),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )
                .await
        }));
    }

    let publish = publish_attributes(&cfg, &node, boot.member_id);
    let node_done = tokio::task::spawn_blocking(move || node_thread.join());
    tokio::pin!(shutdown, publish, node_done);
    let mut published = false;
    let mut removed = false;
    let outcome = loop {
        tokio::select! {
            _ = &mut publish, if !published => {
                published = true;
                tracing::info!(name = %cfg.name, "published local member to cluster; ready to serve client requests");
                let _ = published_tx.send(true);
            }
            // Either this member applied its own removal, or its peers keep refusing it
            // as removed (it was removed while it was down).
            _ = node.removed() => {
                removed = true;
                node.stop();
                break None;
            }
            _ = transport.removed_from_cluster() => {
                tracing::error!("the member has been permanently removed from the cluster");
                removed = true;
                node.stop();
                break None;
            }
            _ = &mut shutdown => {
                tracing::info!("received signal; shutting down");
                tracker.abort();
                notifier.stopping("stopping: handing over leadership if leader");
                hand_over_leadership(&node, request_timeout(&cfg)).await;
                node.stop();
                break None;
            }
            joined = &mut node_done => break Some(joined),
        }
    };
    tracker.abort();
    if removed {
        // Left in `systemctl status` next to the exit status, so it says why.
        notifier.stopping(&format!(
            "removed from the cluster; exiting with status {EXIT_REMOVED}"
        ));
    }
    let _ = stop_tx.send(true);
    transport.shutdown();
    for l in listeners {
        if let Ok(Err(e)) = l.await {
            tracing::warn!(error = %e, "client listener ended with an error");
        }
    }
    let joined = match outcome {
        Some(j) => j,
        None => node_done.await,
    };
    if removed {
        return Err(ServerError::Removed);
    }
    match joined {
        Ok(Ok(result)) => result.map_err(ServerError::from),
        _ => Err(ServerError::Storage(StorageError::Corrupt(
            "raft thread panicked".into(),
        ))),
    }
}

/// A leader that stops hands leadership to a follower first, so that the cluster does
/// not wait out an election timeout. Failure is logged; shutdown goes on regardless.
async fn hand_over_leadership(node: &raft_node::NodeHandle, timeout: Duration) {
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
        Err(crate::error::RequestError::BadLeaderTransferee) => {}
        Err(e) => tracing::warn!(error = %e, "leadership transfer failed"),
    }
}

/// Publishes name and client URLs through Raft, retrying until it is committed (the
/// cluster may not have a leader yet).
async fn publish_attributes(cfg: &Config, node: &raft_node::NodeHandle, member_id: u64) {
    let attrs = MemberAttributes {
        member_id,
        name: cfg.name.clone(),
        client_urls: cfg.advertise_client_urls.iter().map(url_string).collect(),
    };
    loop {
        let attempt = node.propose(Request::Publish(attrs.clone()));
        match tokio::time::timeout(request_timeout(cfg), attempt).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => tracing::debug!(error = %e, "publishing member attributes; retrying"),
            Err(_) => tracing::warn!("failed to publish local member to cluster through raft"),
        }
        tokio::time::sleep(cfg.heartbeat_interval).await;
    }
}

/// The socket address of a listen URL; `localhost` means the IPv4 loopback, as Go's
/// listener resolves it.
fn listen_addr(url: &url::Url) -> SocketAddr {
    let port = url.port_or_known_default().unwrap_or(0);
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    SocketAddr::new(ip, port)
}
