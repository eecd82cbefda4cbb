//! The `Lease` service: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive,
//! LeaseLeases.
//!
//! Grants, revokes and keep-alives are Raft proposals, whichever member receives them:
//! there is no other channel to the leader, and a keep-alive must reach the leader's
//! deadlines (see `lease`). Queries read the replicated table after a read barrier,
//! with the remaining TTL from this member's deadlines.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::ApiContext;
use crate::error::RequestError;
use crate::lease;
use crate::mvcc::Revisions;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::qetcdpb::raft_request::Request as RaftRequest;
use crate::state_machine::Applied;

/// Keep-alives of one stream being renewed at once. Clients send the keep-alives of
/// all their leases on one stream; renewing them one after the other would make each
/// wait for the Raft round trips of all before it. Beyond this, the stream is not read
/// until one finishes (gRPC flow control then holds the client back).
const RENEWS_IN_FLIGHT_PER_STREAM: usize = 64;

/// A generated lease ID can clash with one a client chose; another is tried this many
/// times before giving up.
const GRANT_ATTEMPTS: usize = 3;

pub struct LeaseService {
    ctx: Arc<ApiContext>,
}

impl LeaseService {
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        LeaseService { ctx }
    }
}

fn unexpected(applied: Applied) -> Status {
    Status::internal(format!("unexpected apply result {applied:?}"))
}

/// One keep-alive, answered as etcd answers it (TTL 0 for a lease that is gone).
async fn renew(ctx: &ApiContext, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    match ctx
        .propose(RaftRequest::LeaseRenew(LeaseKeepAliveRequest { id }))
        .await?
    {
        Applied::LeaseRenew(mut resp) => {
            ctx.fill(&mut resp.header);
            Ok(resp)
        }
        other => Err(unexpected(other)),
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut req = req.into_inner();
        if req.ttl > lease::MAX_TTL {
            return Err(RequestError::LeaseTtlTooLarge.into());
        }
        // Raised here rather than in apply, so every member stores the same TTL even
        // if their timing flags differ.
        req.ttl = req.ttl.max(self.ctx.lessor.min_ttl());
        let generated = req.id == 0;
        for _ in 0..GRANT_ATTEMPTS {
            if generated {
                req.id = self.ctx.lessor.next_id();
            }
            match self.ctx.propose(RaftRequest::LeaseGrant(req)).await {
                Ok(Applied::LeaseGrant(mut resp)) => {
                    self.ctx.fill(&mut resp.header);
                    return Ok(Response::new(resp));
                }
                Ok(other) => return Err(unexpected(other)),
                Err(RequestError::LeaseExists) if generated => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RequestError::LeaseExists.into())
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // Each member checks, when applying, that the caller may write every key
        // attached to the lease (etcd's checkLeasePuts).
        let caller = self.ctx.caller_of(&req)?;
        match self
            .ctx
            .propose_as(RaftRequest::LeaseRevoke(req.into_inner()), caller)
            .await?
        {
            Applied::LeaseRevoke(mut resp) => {
                self.ctx.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(RENEWS_IN_FLIGHT_PER_STREAM);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(RENEWS_IN_FLIGHT_PER_STREAM));
            // Ends when the client closes its side or goes away, or when the answer
            // side is gone.
            while let Ok(Some(msg)) = inbound.message().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                if tx.is_closed() {
                    break;
                }
                let (ctx, tx) = (ctx.clone(), tx.clone());
                tokio::spawn(async move {
                    // An error ends the stream; clients open a new one and go on (a
                    // keep-alive that timed out during an election is retried so).
                    let _ = tx.send(renew(&ctx, msg.id).await).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as Self::LeaseKeepAliveStream
        ))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        self.ctx.read_barrier().await?;
        let (id, with_keys) = (req.id, req.keys);
        let (revision, found) = self
            .ctx
            .read(move |conn| {
                let revision = Revisions::load(conn)?.current;
                let found = match lease::granted_ttl(conn, id)? {
                    Some(ttl) if with_keys => Some((ttl, lease::keys(conn, id))),
                    Some(ttl) => Some((ttl, Vec::new())),
                    None => None,
                };
                Ok((revision, found))
            })
            .await?;
        // A missing lease is not an error here: etcd answers TTL -1 (etcdctl prints
        // "already expired").
        let resp = match found {
            Some((granted, keys)) => LeaseTimeToLiveResponse {
                header: Some(self.ctx.header(revision)),
                id,
                ttl: self.ctx.lessor.remaining(id).unwrap_or(granted),
                granted_ttl: granted,
                keys,
            },
            None => LeaseTimeToLiveResponse {
                header: Some(self.ctx.header(revision)),
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.ctx.read_barrier().await?;
        let (revision, ids) = self
            .ctx
            .read(|conn| Ok((Revisions::load(conn)?.current, lease::list(conn)?)))
            .await?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.ctx.header(revision)),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}
