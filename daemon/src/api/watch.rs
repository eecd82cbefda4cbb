//! The `Watch` service: one bidirectional stream per client, many watchers on it.
//!
//! Each stream is one task. It receives committed batches from the node's event feed
//! and requests from the client, and writes responses to a bounded channel. When the
//! client reads slowly, the task waits on that channel, the feed moves on without it,
//! and the watchers catch up from the stored revisions afterwards: memory stays bounded
//! and writers never wait for a watcher.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::ApiContext;
use crate::error::RequestError;
use crate::mvcc::Revisions;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::proto::mvccpb::Event;
use crate::watch::{EventBatch, Subscription, Watcher, history};

/// Responses queued for a client before its stream task waits.
const OUTBOX: usize = 64;
/// Bytes of keys and values read per catch-up step (whole revisions, so a larger
/// revision is read whole); bounds the memory of a catch-up.
const CATCH_UP_BYTES: usize = 1 << 20;
/// The watch ID of a stream-wide progress response (etcd's `InvalidWatchID`).
const PROGRESS_WATCH_ID: i64 = -1;

pub struct WatchService {
    ctx: Arc<ApiContext>,
    progress_interval: Duration,
}

impl WatchService {
    pub fn new(ctx: Arc<ApiContext>, progress_interval: Duration) -> Self {
        WatchService {
            ctx,
            progress_interval,
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let session = Session {
            identity: (request.metadata().clone(), request.extensions().clone()),
            ctx: self.ctx.clone(),
            out: tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            feed: None,
        };
        tokio::spawn(session.run(request.into_inner(), self.progress_interval));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The client went away; the stream ends.
struct Gone;

impl From<mpsc::error::SendError<Result<WatchResponse, Status>>> for Gone {
    fn from(_: mpsc::error::SendError<Result<WatchResponse, Status>>) -> Self {
        Gone
    }
}

struct Session {
    /// The stream's token and certificate, to identify the caller at each creation
    /// (a token may expire while the stream stays open).
    identity: (tonic::metadata::MetadataMap, tonic::Extensions),
    ctx: Arc<ApiContext>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Subscribed at the first watch, before its first storage read.
    feed: Option<Subscription>,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>, progress_every: Duration) {
        let mut progress = tokio::time::interval(progress_every);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.tick().await;
        loop {
            let outcome = tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.on_request(req).await,
                    // The client closed its side, or the connection broke.
                    _ => return,
                },
                batch = recv(&mut self.feed) => match batch {
                    Ok(batch) => self.on_batch(&batch).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up_all().await,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = progress.tick() => self.notify_progress().await,
            };
            if outcome.is_err() {
                return;
            }
        }
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Gone> {
        Ok(self.out.send(Ok(resp)).await?)
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(self.ctx.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn revisions(&self) -> Result<Revisions, RequestError> {
        self.ctx.read(|txn| Revisions::load(txn)).await
    }

    async fn on_request(&mut self, req: WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                let revision = self.current_revision();
                if self.remove(cancel.watch_id) {
                    let mut resp = self.response(cancel.watch_id, revision);
                    resp.canceled = true;
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Every watcher is caught up whenever this task reads a request.
                let revision = self.current_revision();
                self.send(self.response(PROGRESS_WATCH_ID, revision)).await
            }
            None => Ok(()),
        }
    }

    fn current_revision(&self) -> i64 {
        self.ctx
            .node
            .status()
            .revision
            .load(std::sync::atomic::Ordering::Acquire) as i64
    }

    /// etcd's `isWatchPermitted`: the caller may read what the watch covers (an
    /// invalid token counts as not permitted).
    fn permitted(&self, req: &WatchCreateRequest) -> bool {
        let (metadata, extensions) = &self.identity;
        self.ctx
            .caller(metadata, extensions)
            .and_then(|caller| {
                self.ctx
                    .check_read(caller.as_ref(), &req.key, &req.range_end)
            })
            .is_ok()
    }

    async fn create(&mut self, req: WatchCreateRequest) -> Result<(), Gone> {
        if self.feed.is_none() {
            self.feed = Some(self.ctx.events.subscribe());
        }
        let revs = match self.revisions().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(self.out.send(Err(Status::from(e))).await?);
            }
        };
        if !self.permitted(&req) {
            let mut resp = self.response(req.watch_id, revs.current);
            resp.created = true;
            resp.canceled = true;
            // etcd puts its gRPC error's whole text here, code and all.
            resp.cancel_reason = format!(
                "rpc error: code = PermissionDenied desc = {}",
                RequestError::PermissionDenied
            );
            return self.send(resp).await;
        }
        let id = if req.watch_id != 0 {
            req.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if self.watchers.contains_key(&id) {
            let mut resp = self.response(id, revs.current);
            resp.created = true;
            resp.canceled = true;
            resp.cancel_reason = "mvcc: duplicate watch ID".into();
            return self.send(resp).await;
        }
        if req.watch_id == 0 {
            self.next_id += 1;
        }
        let start = if req.start_revision > 0 {
            req.start_revision
        } else {
            revs.current + 1
        };
        let mut created = self.response(id, revs.current);
        created.created = true;
        self.send(created).await?;
        if start < revs.compacted {
            return self.cancel_compacted(id, revs).await;
        }
        self.watchers.insert(id, Watcher::new(&req, start));
        self.catch_up(id, revs.current).await
    }

    /// Removes a watcher; the last one also ends the stream's feed subscription, so
    /// that writes stop collecting events for a stream that watches nothing.
    fn remove(&mut self, id: i64) -> bool {
        let removed = self.watchers.remove(&id).is_some();
        if self.watchers.is_empty() {
            self.feed = None;
        }
        removed
    }

    async fn cancel_compacted(&mut self, id: i64, revs: Revisions) -> Result<(), Gone> {
        self.remove(id);
        // As etcd 3.4 and 3.5 answer: no revision in the header and no cancel reason;
        // clients tell a compaction by `compact_revision` (seen through the gateway).
        let mut resp = self.response(id, 0);
        resp.canceled = true;
        resp.compact_revision = revs.compacted;
        self.send(resp).await
    }

    /// Delivers watcher `id`'s events from storage up to revision `to`.
    async fn catch_up(&mut self, id: i64, to: i64) -> Result<(), Gone> {
        loop {
            let Some(w) = self.watchers.get(&id) else {
                return Ok(());
            };
            if w.next_revision > to {
                return Ok(());
            }
            let (from, range, prev_kv) = (w.next_revision, w.range.clone(), w.prev_kv);
            let read = self
                .ctx
                .read(move |conn| {
                    let revs = Revisions::load(conn)?;
                    if from < revs.compacted {
                        return Ok(Err(revs));
                    }
                    let (mut events, next) =
                        history::events(conn, &range, from, to, CATCH_UP_BYTES)?;
                    if prev_kv {
                        add_prev_kvs(conn, &mut events)?;
                    }
                    Ok(Ok((events, next, revs.current)))
                })
                .await;
            match read {
                Ok(Ok((events, next, current))) => {
                    self.deliver(id, events, next - 1, current).await?;
                }
                Ok(Err(revs)) => return self.cancel_compacted(id, revs).await,
                Err(e) => {
                    tracing::warn!(error = %e, "watch history read failed");
                    return Ok(self.out.send(Err(Status::from(e))).await?);
                }
            }
        }
    }

    async fn catch_up_all(&mut self) -> Result<(), Gone> {
        let to = match self.revisions().await {
            Ok(r) => r.current,
            Err(e) => return Ok(self.out.send(Err(Status::from(e))).await?),
        };
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id, to).await?;
        }
        Ok(())
    }

    async fn on_batch(&mut self, batch: &EventBatch) -> Result<(), Gone> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            if w.next_revision > batch.last {
                continue;
            }
            let Some(events) = &batch.events else {
                self.catch_up(id, batch.last).await?;
                continue;
            };
            if w.next_revision < batch.first {
                // Missed revisions before this batch: read them first.
                self.catch_up(id, batch.first - 1).await?;
            }
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            let from = w.next_revision;
            let mut chosen: Vec<Event> = events
                .iter()
                .filter(|e| history::revision_of(e) >= from && w.wants(e))
                .cloned()
                .collect();
            if w.prev_kv && !chosen.is_empty() {
                let read = self
                    .ctx
                    .read(move |conn| {
                        add_prev_kvs(conn, &mut chosen)?;
                        Ok(chosen)
                    })
                    .await;
                match read {
                    Ok(c) => chosen = c,
                    Err(e) => return Ok(self.out.send(Err(Status::from(e))).await?),
                }
            }
            self.deliver(id, chosen, batch.last, batch.last).await?;
        }
        Ok(())
    }

    /// Sends watcher `id` the events it wants from `events` (all of revisions up to
    /// `through`), and moves it past `through`.
    async fn deliver(
        &mut self,
        id: i64,
        events: Vec<Event>,
        through: i64,
        header_revision: i64,
    ) -> Result<(), Gone> {
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        let events: Vec<Event> = events.into_iter().filter(|e| w.wants(e)).collect();
        w.next_revision = w.next_revision.max(through + 1);
        let fragment = w.fragment;
        if events.is_empty() {
            return Ok(());
        }
        // Responses stay under the request size limit, so that clients with default
        // message limits can take them: split between revisions, and inside one only
        // for a watcher that allows fragments.
        let limit = self.ctx.max_request_bytes;
        let mut part: Vec<Event> = Vec::new();
        let mut size = 0;
        let count = events.len();
        for (i, e) in events.into_iter().enumerate() {
            let len = e.encoded_len();
            let new_revision = part
                .last()
                .is_some_and(|l| history::revision_of(l) != history::revision_of(&e));
            if !part.is_empty() && size + len > limit && (new_revision || fragment) {
                let mut r = self.response(id, header_revision);
                r.events = std::mem::take(&mut part);
                r.fragment = !new_revision;
                self.send(r).await?;
                size = 0;
            }
            size += len;
            part.push(e);
            if i + 1 == count {
                let mut r = self.response(id, header_revision);
                r.events = std::mem::take(&mut part);
                self.send(r).await?;
            }
        }
        Ok(())
    }

    /// Periodic progress for watchers that asked for it: the revision they are at.
    async fn notify_progress(&mut self) -> Result<(), Gone> {
        let revision = self.current_revision();
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send(self.response(id, revision)).await?;
        }
        Ok(())
    }
}

async fn recv(
    feed: &mut Option<Subscription>,
) -> Result<Arc<EventBatch>, broadcast::error::RecvError> {
    match feed {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}

fn add_prev_kvs(
    conn: &crate::storage::StateTxn<'_>,
    events: &mut [Event],
) -> Result<(), RequestError> {
    for e in events {
        if let Some(kv) = &e.kv {
            e.prev_kv = history::previous(conn, &kv.key, kv.mod_revision)?;
        }
    }
    Ok(())
}
