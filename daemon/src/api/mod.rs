//! etcd's v3 client API: gRPC services and the HTTP endpoints beside them, all on each
//! client listener.

mod auth;
pub mod client_listener;
mod cluster;
mod gateway;
mod grpc_metrics;
pub mod h2_authority;
mod http;
pub mod identity;
mod kv;
mod lease;
mod maintenance;
mod propose;
mod snapshot;
pub mod status;
mod v2keys;
mod watch;

use std::sync::Arc;
use std::time::Duration;

pub use propose::ProposalBudget;

use crate::error::RequestError;
use crate::lease::Lessor;
use crate::proto::etcdserverpb::ResponseHeader;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, maintenance_server::MaintenanceServer,
    watch_server::WatchServer,
};
use crate::raft_node::NodeHandle;
use crate::storage::{ReaderPool, StorageError};
use crate::watch::EventFeed;

/// The etcd version qetcd presents to clients (`Status.version`, `/version`).
pub const ETCD_VERSION: &str = "3.5.0";
/// The cluster version presented in `/version`.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// What every service needs: the Raft node, read connections, identity and limits.
pub struct ApiContext {
    pub node: NodeHandle,
    /// Lease deadlines (TTLs to report, IDs to hand out), kept by the Raft node.
    pub lessor: Arc<Lessor>,
    /// Committed changes, for watchers.
    pub events: Arc<EventFeed>,
    pub readers: ReaderPool,
    pub cluster_id: u64,
    pub member_id: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub request_timeout: Duration,
    /// How often watchers that asked for progress notifications get one.
    pub watch_progress_interval: Duration,
    /// Request bytes that may be in flight (see [`ApiContext::propose`]).
    pub proposal_budget: ProposalBudget,
    /// `--max-learners`: learners the cluster may have at once.
    pub max_learners: usize,
    /// `--strict-reconfig-check`: refuse membership changes that would cost quorum.
    pub strict_reconfig_check: bool,
    /// The peer side, for what only the leader can tell (a learner's progress) and
    /// for which peers are connected.
    pub peers: crate::transport::PeerTransport,
    /// `--enable-v2`: serve the v2 keys API subset of etcd's v2 discovery protocol.
    pub enable_v2: bool,
    /// The backend quota in bytes (`--quota-backend-bytes`); `None` when disabled.
    pub quota_bytes: Option<u64>,
    /// Users, roles and tokens (see `identity` for who a request comes from).
    pub auth: Arc<crate::auth::AuthStore>,
    /// `--client-cert-auth`: a verified client certificate's CN names the user.
    pub client_cert_auth: bool,
    /// What `/metrics` serves; the gRPC layer counts calls into it.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl ApiContext {
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.node.term(),
        }
    }

    /// Completes a header that the state machine filled with a revision only.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }

    /// Runs a read on a pooled connection, off the async threads.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::storage::StateTxn<'_>) -> Result<T, RequestError> + Send + 'static,
    ) -> Result<T, RequestError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = readers.get()?;
            let mut out = None;
            conn.read(|c| {
                out = Some(f(c));
                Ok::<_, StorageError>(())
            })?;
            out.expect("read closure ran")
        })
        .await
        .map_err(|e| RequestError::Internal(format!("read task failed: {e}")))?
    }

    /// A linearizable read barrier bounded by the request timeout.
    pub async fn read_barrier(&self) -> Result<(), RequestError> {
        if cfg!(feature = "broken-local-reads") {
            return Ok(());
        }
        match tokio::time::timeout(self.request_timeout, self.node.read_barrier()).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Timeout),
        }
    }
}

/// The gRPC services and HTTP endpoints of a client listener.
pub fn routes(ctx: Arc<ApiContext>) -> tonic::service::Routes {
    let max_message = ctx.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let grpc = tonic::service::Routes::new(
        KvServer::new(kv::KvService::new(ctx.clone()))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(MaintenanceServer::new(
        maintenance::MaintenanceService::new(ctx.clone()),
    ))
    .add_service(ClusterServer::new(cluster::ClusterService::new(
        ctx.clone(),
    )))
    .add_service(crate::proto::etcdserverpb::auth_server::AuthServer::new(
        auth::AuthService::new(ctx.clone()),
    ))
    .add_service(crate::proto::etcdserverpb::lease_server::LeaseServer::new(
        lease::LeaseService::new(ctx.clone()),
    ))
    .add_service(
        WatchServer::new(watch::WatchService::new(
            ctx.clone(),
            ctx.watch_progress_interval,
        ))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX),
    );
    let grpc = grpc
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            learner_gate,
        ))
        // Outermost: calls the learner gate refuses are counted too, as in etcd.
        .layer(axum::middleware::from_fn_with_state(
            ctx.metrics.clone(),
            grpc_metrics::count_calls,
        ));
    let mut router = grpc
        .merge(http::router(ctx.clone()))
        .merge(gateway::router(ctx.clone()));
    if ctx.enable_v2 {
        router = router.merge(v2keys::router(ctx));
    }
    tonic::service::Routes::from(router)
}

/// The HTTP endpoints alone (`/metrics` and the health checks), for a
/// `--listen-metrics-urls` listener.
pub fn http_routes(ctx: Arc<ApiContext>) -> tonic::service::Routes {
    tonic::service::Routes::from(http::router(ctx))
}

/// etcd's learner rule (`isRPCSupportedForLearner` and its stream twin): a learner
/// serves only `Status`, `Snapshot` and serializable `Range` (checked in the KV
/// service); every other RPC gets `etcdserver: rpc not supported for learner`.
async fn learner_gate(
    axum::extract::State(ctx): axum::extract::State<Arc<ApiContext>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if ctx.node.is_learner() && !learner_may_call(req.uri().path()) {
        return status::to_status(RequestError::NotSupportedForLearner)
            .into_http::<axum::body::Body>();
    }
    next.run(req).await
}

#[cfg(test)]
#[test]
fn learners_may_call_only_etcds_list() {
    assert!(learner_may_call("/etcdserverpb.KV/Range"));
    assert!(learner_may_call("/etcdserverpb.Maintenance/Status"));
    for refused in [
        "/etcdserverpb.KV/Put",
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Lease/LeaseGrant",
        "/etcdserverpb.Cluster/MemberList",
    ] {
        assert!(!learner_may_call(refused), "{refused}");
    }
}

fn learner_may_call(path: &str) -> bool {
    matches!(
        path,
        "/etcdserverpb.Maintenance/Status"
            | "/etcdserverpb.Maintenance/Snapshot"
            | "/etcdserverpb.KV/Range"
    )
}

/// Room for gRPC framing on top of `--max-request-bytes`, as etcd allows.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
