//! The `KV` service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiContext;
use crate::error::RequestError;
use crate::mvcc::{self, Revisions};
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::proto::qetcdpb::raft_request::Request as RaftRequest;
use crate::state_machine::Applied;

pub struct KvService {
    ctx: Arc<ApiContext>,
}

impl KvService {
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        KvService { ctx }
    }
}

fn unexpected(applied: Applied) -> Status {
    Status::internal(format!("unexpected apply result {applied:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let caller = self.ctx.caller_of(&req)?;
        let req = req.into_inner();
        mvcc::check_range(&req)?;
        self.ctx
            .check_read(caller.as_ref(), &req.key, &req.range_end)?;
        if !req.serializable {
            // A learner answers only serializable reads (etcd's rule).
            if self.ctx.node.is_learner() {
                return Err(RequestError::NotSupportedForLearner.into());
            }
            self.ctx.read_barrier().await?;
        }
        let mut resp = self
            .ctx
            .read(move |conn| mvcc::range(conn, &req, Revisions::load(conn)?))
            .await?;
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = self.ctx.caller_of(&req)?;
        let req = req.into_inner();
        mvcc::check_put(&req)?;
        match self.ctx.propose_as(RaftRequest::Put(req), caller).await? {
            Applied::Put(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = self.ctx.caller_of(&req)?;
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(RequestError::EmptyKey.into());
        }
        match self
            .ctx
            .propose_as(RaftRequest::DeleteRange(req), caller)
            .await?
        {
            Applied::DeleteRange(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = self.ctx.caller_of(&req)?;
        let req = req.into_inner();
        mvcc::check_txn(&req, self.ctx.max_txn_ops)?;
        match self.ctx.propose_as(RaftRequest::Txn(req), caller).await? {
            Applied::Txn(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // Any caller may compact, as in etcd 3.4 and 3.5 (neither checks it); a token
        // given must still be valid.
        let caller = self.ctx.caller_of(&req)?;
        match self
            .ctx
            .propose_as(RaftRequest::Compaction(req.into_inner()), caller)
            .await?
        {
            Applied::Compaction(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }
}
