//! The `Cluster` service: membership as the state database has applied it.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiContext;
use crate::error::RequestError;
use crate::membership;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;

pub struct ClusterService {
    ctx: Arc<ApiContext>,
}

impl ClusterService {
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        ClusterService { ctx }
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported yet"))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let members = self.ctx.read(|conn| Ok(membership::list(conn)?)).await?;
        // etcd's cluster service headers carry no revision.
        Ok(Response::new(MemberListResponse {
            header: Some(self.ctx.header(0)),
            members: members.iter().map(|m| m.to_proto()).collect(),
        }))
    }

    async fn member_add(
        &self,
        _req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(not_yet("member add"))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = req.into_inner().id;
        let is_member = |members: &[membership::Member]| members.iter().any(|m| m.id == id);
        let members = self.ctx.read(|conn| Ok(membership::list(conn)?)).await?;
        if !is_member(&members) {
            return Err(RequestError::MemberNotFound.into());
        }
        let mut change = raft::prelude::ConfChangeV2::default();
        let mut single = raft::prelude::ConfChangeSingle::default();
        single.set_change_type(raft::prelude::ConfChangeType::RemoveNode);
        single.node_id = id;
        change.mut_changes().push(single);
        let deadline = tokio::time::Instant::now() + self.ctx.request_timeout;
        tokio::time::timeout_at(deadline, self.ctx.node.propose_conf_change(change))
            .await
            .map_err(|_| RequestError::Timeout)??;
        // Done when this member has applied the change.
        loop {
            let applied = self.ctx.node.status().applied.notified();
            let members = self.ctx.read(|conn| Ok(membership::list(conn)?)).await?;
            if !is_member(&members) {
                return Ok(Response::new(MemberRemoveResponse {
                    header: Some(self.ctx.header(0)),
                    members: members.iter().map(|m| m.to_proto()).collect(),
                }));
            }
            if tokio::time::timeout_at(deadline, applied).await.is_err() {
                return Err(RequestError::Timeout.into());
            }
        }
    }

    async fn member_update(
        &self,
        _req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(not_yet("member update"))
    }

    async fn member_promote(
        &self,
        _req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(not_yet("member promote"))
    }
}
