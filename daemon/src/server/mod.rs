//! One member of a cluster and its lifecycle: [`Member::start`] brings up its parts,
//! [`Member::serve`] runs until it is told to stop, is removed, or its Raft node fails,
//! and [`Member::stop`] takes it down in order.
//!
//! Beside the member, above the Raft node, live the tasks that drive the node on the
//! member's behalf: publishing its attributes ([`publish`]), handing leadership over on
//! shutdown ([`handover`]), expiring leases while it leads ([`lease_expiry`]) and
//! telling systemd how it is doing ([`progress`]).

mod client_listeners;
pub mod corruption_check;
mod handover;
mod lease_expiry;
mod progress;
mod publish;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::ApiContext;
use crate::bootstrap::{self, BootstrapError};
use crate::config::{Config, url_string};
use crate::lease::Lessor;
use crate::notify::Notifier;
use crate::proto::qetcdpb::MemberAttributes;
use crate::raft_node::{self, AppliedState, NodeConfig, NodeHandle};
use crate::storage::{ReaderPool, StorageError};
use crate::transport::{PeerTransport, TransportError};
use client_listeners::ClientListeners;
pub use client_listeners::listen_addr;

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
    #[error("{0}")]
    AuthToken(#[from] crate::auth::jwt::TokenOptionsError),
    #[error("client listener failed: {0}")]
    Serve(String),
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    /// `--experimental-initial-corrupt-check` found this member's data differs.
    #[error(transparent)]
    InitialCorruptCheck(#[from] corruption_check::InitialCheckError),
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

/// Runs a member until `shutdown` completes, it is removed, or its storage fails.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let mut member = Member::start(cfg).await?;
    let ending = member.serve(shutdown).await;
    member.stop(ending).await
}

/// How the Raft thread ended; a panic counts as a storage failure.
type NodeExit = Result<(), StorageError>;

/// Why [`Member::serve`] returned.
pub enum Ending {
    /// Asked to stop (a signal).
    Shutdown,
    /// This member applied its own removal, or its peers keep refusing it as removed.
    Removed,
    /// The Raft thread stopped by itself: a storage failure.
    NodeStopped(NodeExit),
}

/// A running member: its Raft node, peer transport, client listeners and the tasks
/// around them.
pub struct Member {
    cfg: Config,
    member_id: u64,
    node: NodeHandle,
    /// Completes when the Raft thread has ended.
    node_exit: JoinHandle<std::thread::Result<Result<(), StorageError>>>,
    transport: PeerTransport,
    clients: ClientListeners,
    notifier: Notifier,
    /// Raised once this member's attributes are committed; the systemd tracker sends
    /// `READY=1` then.
    published: watch::Sender<bool>,
    tracker: JoinHandle<()>,
    _lease_expiry: lease_expiry::ExpiryTask,
    _corruption_check: corruption_check::PeriodicCheck,
}

impl Member {
    /// Brings up the member: state database, peer transport, Raft node, client
    /// listeners. It serves clients from here on; it is not yet published.
    pub async fn start(cfg: Config) -> Result<Member, ServerError> {
        // Keys first: a member that cannot read them must not touch its data dir.
        let tokens = crate::auth::TokenProvider::from_options(&cfg.auth_token, cfg.auth_token_ttl)?;
        let joining = if bootstrap::is_joining(&cfg)? {
            let tls = crate::tls::peer_side::configs(&cfg)?;
            let client = crate::transport::quic_config::client(tls.client, cfg.election_timeout)
                .map_err(TransportError::from)?;
            Some(bootstrap::join::fetch(&cfg, client).await?)
        } else {
            None
        };
        let boot = bootstrap::bootstrap(&cfg, joining.as_ref())?;
        let metrics = crate::metrics::Metrics::shared(cfg.metrics);
        metrics.set_member_id(boot.member_id);
        let peer_addrs: Vec<SocketAddr> = cfg.listen_peer_urls.iter().map(listen_addr).collect();
        let transport = PeerTransport::bind(
            &peer_addrs,
            boot.member_id,
            boot.cluster_id,
            cfg.election_timeout,
            crate::storage::snapshot::snapshot_dir(&boot.db_path),
            crate::tls::peer_side::configs(&cfg)?,
            metrics.clone(),
        )?;
        for addr in &peer_addrs {
            tracing::info!(address = %addr, "listening for peers (QUIC over UDP)");
        }
        let client_tls = crate::tls::client_side::server_config(&cfg)?;
        let keys = crate::storage::SharedKeyIndex::load(&boot.conn)?;
        let readers = ReaderPool::new(boot.db_path.clone(), keys.clone());
        if cfg.initial_corrupt_check && boot.restarted {
            // As etcd: before the Raft node starts and before clients are served.
            // The transport learns the members first, so that peers calling meanwhile
            // are accepted (their messages wait for the node) rather than told that
            // they were removed.
            let members = crate::membership::list(&boot.conn)?;
            crate::raft_node::PeerOutbox::update_members(&transport, &members);
            corruption_check::initial_check(
                &transport,
                &readers,
                boot.member_id,
                &members,
                request_timeout(&cfg),
            )
            .await?;
        }

        let applied = AppliedState {
            lessor: Arc::new(Lessor::new(
                boot.member_id,
                cfg.heartbeat_interval,
                cfg.election_ticks(),
            )),
            events: Default::default(),
            auth: Arc::new(crate::auth::AuthStore::with_tokens(tokens, cfg.bcrypt_cost)),
            metrics,
            keys: Some(keys),
        };
        let (node, node_thread) = raft_node::start(
            NodeConfig {
                joining: boot.joined,
                ..node_config(&cfg, boot.member_id)
            },
            boot.conn,
            Box::new(transport.clone()),
            applied.clone(),
        )?;
        transport.attach(node.clone());
        let node_exit = tokio::task::spawn_blocking(move || node_thread.join());

        // systemd hears of progress from here on; READY=1 once `published` is raised.
        let notifier = Notifier::from_env();
        let (published, published_rx) = watch::channel(false);
        let tracker = progress::track(&notifier, node.clone(), transport.clone(), published_rx);
        // Runs on every member; acts while this one leads.
        let lease_expiry =
            lease_expiry::start(node.clone(), applied.lessor.clone(), request_timeout(&cfg));

        transport.serve_membership(readers.clone());
        let corruption_check = corruption_check::start(
            corruption_check::Checker {
                node: node.clone(),
                transport: transport.clone(),
                readers: readers.clone(),
                request_timeout: request_timeout(&cfg),
            },
            cfg.corrupt_check_time,
        );
        let ctx = Arc::new(api_context(
            &cfg,
            (boot.member_id, boot.cluster_id),
            readers,
            (node.clone(), transport.clone()),
            applied,
        ));
        let clients = ClientListeners::serve(
            &cfg.listen_client_urls,
            &cfg.listen_metrics_urls,
            client_tls,
            ctx,
        )
        .await?;
        Ok(Member {
            member_id: boot.member_id,
            cfg,
            node,
            node_exit,
            transport,
            clients,
            notifier,
            published,
            tracker,
            _lease_expiry: lease_expiry,
            _corruption_check: corruption_check,
        })
    }

    /// Publishes the member, then serves until `shutdown` completes, the member is
    /// removed from the cluster, or its Raft node stops by itself.
    pub async fn serve(&mut self, shutdown: impl Future<Output = ()>) -> Ending {
        let attrs = MemberAttributes {
            member_id: self.member_id,
            name: self.cfg.name.clone(),
            client_urls: self
                .cfg
                .advertise_client_urls
                .iter()
                .map(url_string)
                .collect(),
        };
        let publish = publish::publish(
            &self.node,
            attrs,
            request_timeout(&self.cfg),
            self.cfg.heartbeat_interval,
        );
        tokio::pin!(shutdown, publish);
        let mut published = false;
        loop {
            tokio::select! {
                _ = &mut publish, if !published => {
                    published = true;
                    tracing::info!(name = %self.cfg.name, "published local member to cluster; ready to serve client requests");
                    let _ = self.published.send(true);
                }
                _ = self.node.removed() => return Ending::Removed,
                _ = self.transport.removed_from_cluster() => {
                    tracing::error!("the member has been permanently removed from the cluster");
                    return Ending::Removed;
                }
                _ = &mut shutdown => {
                    tracing::info!("received signal; shutting down");
                    return Ending::Shutdown;
                }
                exit = &mut self.node_exit => return Ending::NodeStopped(flatten(exit)),
            }
        }
    }

    /// Stops the member in order: hand leadership over (on shutdown), stop the Raft
    /// node, close peers and client listeners, and say why in the result.
    pub async fn stop(self, ending: Ending) -> Result<(), ServerError> {
        self.tracker.abort();
        match &ending {
            Ending::Shutdown => {
                self.notifier
                    .stopping("stopping: handing over leadership if leader");
                handover::hand_over_leadership(&self.node, request_timeout(&self.cfg)).await;
            }
            // Left in `systemctl status` next to the exit status, so it says why.
            Ending::Removed => self.notifier.stopping(&format!(
                "removed from the cluster; exiting with status {EXIT_REMOVED}"
            )),
            Ending::NodeStopped(_) => {}
        }
        self.node.stop();
        self.transport.shutdown();
        self.clients.stop().await;
        match ending {
            Ending::NodeStopped(exit) => exit.map_err(ServerError::from),
            Ending::Removed => {
                let _ = self.node_exit.await;
                Err(ServerError::Removed)
            }
            Ending::Shutdown => flatten(self.node_exit.await).map_err(ServerError::from),
        }
    }
}

fn flatten(
    exit: Result<std::thread::Result<Result<(), StorageError>>, tokio::task::JoinError>,
) -> NodeExit {
    match exit {
        Ok(Ok(result)) => result,
        _ => Err(StorageError::Corrupt("raft thread panicked".into())),
    }
}

fn node_config(cfg: &Config, id: u64) -> NodeConfig {
    NodeConfig {
        id,
        tick_interval: cfg.heartbeat_interval,
        election_ticks: cfg.election_ticks(),
        pre_vote: cfg.pre_vote,
        snapshot_count: cfg.snapshot_count,
        snapshot_catchup_entries: cfg.snapshot_catchup_entries,
        request_timeout: request_timeout(cfg),
        joining: false,
    }
}

fn api_context(
    cfg: &Config,
    (member_id, cluster_id): (u64, u64),
    readers: ReaderPool,
    (node, peers): (NodeHandle, PeerTransport),
    applied: AppliedState,
) -> ApiContext {
    ApiContext {
        node,
        lessor: applied.lessor,
        events: applied.events,
        metrics: applied.metrics,
        auth: applied.auth,
        client_cert_auth: cfg.client_tls.client_cert_auth,
        readers,
        cluster_id,
        member_id,
        max_request_bytes: cfg.max_request_bytes as usize,
        max_txn_ops: cfg.max_txn_ops as usize,
        request_timeout: request_timeout(cfg),
        // tokio's interval panics on zero; etcd treats 0 as its default too.
        watch_progress_interval: if cfg.watch_progress_notify_interval.is_zero() {
            Duration::from_secs(600)
        } else {
            cfg.watch_progress_notify_interval
        },
        proposal_budget: Default::default(),
        max_learners: cfg.max_learners as usize,
        strict_reconfig_check: cfg.strict_reconfig_check,
        peers,
        enable_v2: cfg.enable_v2,
        quota_bytes: crate::config::backend_quota(cfg.quota_backend_bytes),
    }
}
