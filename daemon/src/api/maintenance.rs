//! The `Maintenance` service: `Status` (what `etcdctl endpoint status` shows), the
//! checksums members compare (`Hash`, `HashKV`, see `mvcc::hash`), alarms (raised and
//! cleared through Raft), `Defragment` and leadership moves.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{ApiContext, ETCD_VERSION};
use crate::error::RequestError;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;
use crate::proto::qetcdpb::raft_request::Request as RaftRequest;
use crate::state_machine::Applied;

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
        // All three actions go through Raft, as in etcd: a GET answers with the alarms
        // as of a committed point, and raising or clearing one reaches every member.
        let req = req.into_inner();
        match self.ctx.propose(RaftRequest::Alarm(req)).await? {
            Applied::Alarm(alarms) => {
                let revision = self.ctx.node.status().revision.load(Ordering::Acquire) as i64;
                Ok(Response::new(AlarmResponse {
                    header: Some(self.ctx.header(revision)),
                    alarms,
                }))
            }
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
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
        let leader = self.ctx.node.leader();
        // etcd lists a missing leader, then every raised alarm in its protobuf text
        // form (`memberID:<decimal> alarm:<NAME> `).
        let mut errors = Vec::new();
        if leader.is_none() {
            errors.push(RequestError::NoLeader.to_string());
        }
        for a in status.alarms() {
            errors.push(format!(
                "memberID:{} alarm:{} ",
                a.member_id,
                crate::state_machine::alarm_name(a.alarm)
            ));
        }
        Ok(Response::new(StatusResponse {
            header: Some(self.ctx.header(revision)),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: leader.unwrap_or(0),
            raft_index: status.commit_index.load(Ordering::Acquire),
            raft_term: self.ctx.node.term(),
            raft_applied_index: status.applied_index.load(Ordering::Acquire),
            errors,
            db_size_in_use,
            is_learner: self.ctx.node.is_learner(),
        }))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.ctx.check_admin(&req)?;
        self.ctx.node.defragment().await?;
        // etcd answers without a header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.ctx.check_admin(&req)?;
        let (hash, revision) = self
            .ctx
            .read(|txn| crate::mvcc::hash::hash_all(txn))
            .await?;
        Ok(Response::new(HashResponse {
            header: Some(self.ctx.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.ctx.check_admin(&req)?;
        let revision = req.into_inner().revision;
        let h = self
            .ctx
            .read(move |conn| crate::mvcc::hash::hash_kv(conn, revision))
            .await?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.ctx.header(h.current_revision)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.ctx.check_admin(&req)?;
        super::snapshot::stream(&self.ctx).await
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.ctx.check_admin(&req)?;
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
        req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.ctx.check_admin(&req)?;
        Err(Status::unimplemented("downgrade is not supported"))
    }
}
