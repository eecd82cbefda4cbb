//! The `Maintenance` service. `Status` is what `etcdctl endpoint status` shows; the
//! operations that need cluster-wide machinery answer `Unimplemented` until they exist.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{ApiContext, ETCD_VERSION};
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;

pub struct MaintenanceService {
    ctx: Arc<ApiContext>,
}

impl MaintenanceService {
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        MaintenanceService { ctx }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = req.into_inner();
        // No alarm is ever raised yet (no quota enforcement), so GET lists none and
        // deactivating one is a no-op; activating from a client is not supported.
        if req.action == alarm_request::AlarmAction::Activate as i32 {
            return Err(Status::unimplemented("activating alarms is not supported"));
        }
        let revision = self.ctx.node.status().revision.load(Ordering::Acquire) as i64;
        Ok(Response::new(AlarmResponse {
            header: Some(self.ctx.header(revision)),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let (revision, (db_size, db_size_in_use)) = self
            .ctx
            .read(|conn| {
                Ok((
                    crate::mvcc::Revisions::load(conn)?.current,
                    crate::mvcc::db_size(conn)?,
                ))
            })
            .await?;
        let status = self.ctx.node.status();
        Ok(Response::new(StatusResponse {
            header: Some(self.ctx.header(revision)),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: self.ctx.node.leader().unwrap_or(0),
            raft_index: status.commit_index.load(Ordering::Acquire),
            raft_term: self.ctx.node.term(),
            raft_applied_index: status.applied_index.load(Ordering::Acquire),
            errors: Vec::new(),
            db_size_in_use,
            is_learner: self.ctx.node.is_learner(),
        }))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(Status::unimplemented("defragment is not supported yet"))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(Status::unimplemented("hash is not supported yet"))
    }

    async fn hash_kv(
        &self,
        _req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        Err(Status::unimplemented("hashkv is not supported yet"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        super::snapshot::stream(&self.ctx).await
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        let node = &self.ctx.node;
        let target = node.transfer_leadership(Some(target)).await?;
        let moved = node
            .wait_for_leader(self.ctx.request_timeout, |l| l == Some(target))
            .await;
        if !moved {
            return Err(Status::unavailable(
                "etcdserver: request timed out, leader transfer took too long",
            ));
        }
        let revision = node.status().revision.load(Ordering::Acquire) as i64;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.ctx.header(revision)),
        }))
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented("downgrade is not supported"))
    }
}
