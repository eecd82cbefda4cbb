//! Peer traffic over QUIC.
//!
//! Each member listens on UDP at its `--listen-peer-urls`. Between two members there is
//! one connection, dialled by the member with the lower ID and redialled with backoff
//! when lost; the other side uses the connection it accepted. Each side sends its Raft
//! messages on a long-lived unidirectional stream of its own, many messages per write.
//! Nothing but the handshake ([`handshake`]) is exchanged until both sides agree on the
//! cluster ID and on who they are.

mod framing;
pub mod handshake;
pub mod hash_query;
pub mod members_query;
pub mod quic_config;
mod snapshot_stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use raft::prelude::{Message, MessageType};
use tokio::sync::{mpsc, watch};

use crate::membership::Member;
use crate::raft_node::{NodeHandle, PeerOutbox};
use handshake::{Hello, Verdict, judge};

/// Messages waiting for one peer; beyond this they are dropped, which Raft tolerates
/// (it retransmits), rather than buffered without bound while a peer is down.
const QUEUE_PER_PEER: usize = 4096;
/// A write carries at most about this many bytes of messages.
const BATCH_BYTES: usize = 1 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long the member with the higher ID waits for the other to call before calling
/// itself. Normally the lower ID calls at once; this covers a peer that cannot reach us,
/// and peers that disagree about IDs (another cluster), which must still be told so.
const FALLBACK_GRACE: Duration = Duration::from_secs(3);
/// How long a peer must keep refusing us as removed before we believe it. A member that
/// has just started accepts connections a moment before it knows the membership, and
/// says "removed" to everyone in that moment; a removed member is refused forever.
pub const REMOVED_CONFIRMATION: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("listen udp {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] quic_config::QuicConfigError),
}

/// The peer side of a member.
#[derive(Clone)]
pub struct PeerTransport {
    inner: Arc<Inner>,
}

struct Inner {
    local_id: u64,
    cluster_id: u64,
    endpoints: Vec<quinn::Endpoint>,
    client_config: quinn::ClientConfig,
    node: OnceLock<NodeHandle>,
    /// Current members (other than us) and their peer URLs.
    members: RwLock<HashMap<u64, Vec<String>>>,
    links: Mutex<HashMap<u64, Arc<Link>>>,
    runtime: tokio::runtime::Handle,
    /// Where incoming snapshots are written before the node installs them.
    snapshot_dir: std::path::PathBuf,
    /// Whether a connecting peer's certificate must cover its address (etcd §6.4).
    check_peer_address: bool,
    /// Set once peers have kept refusing us as a removed member (see `dial_loop`).
    removed_from_cluster: watch::Sender<bool>,
    /// Where members queries ([`members_query`]) and hash queries ([`hash_query`])
    /// are answered from.
    membership: OnceLock<crate::storage::ReaderPool>,
    /// Hash queries computed at once; more wait. A HashKV reads the whole key space,
    /// so a burst of questions must not occupy every blocking thread.
    hash_permits: tokio::sync::Semaphore,
    /// Per-peer round trip and bytes (see [`sample_peer_stats`]).
    metrics: Arc<crate::metrics::Metrics>,
}

/// How many hash queries a member computes at the same time.
const HASH_QUERIES_AT_ONCE: usize = 2;

/// The first byte of every unidirectional stream: what it carries.
const STREAM_MESSAGES: u8 = 1;
const STREAM_SNAPSHOT: u8 = 2;

/// Everything about the connection to one peer.
struct Link {
    peer: u64,
    queue: mpsc::Sender<Message>,
    conn: watch::Sender<Option<quinn::Connection>>,
    removed: AtomicBool,
    /// Messages dropped because the queue was full (logged at powers of two).
    dropped: std::sync::atomic::AtomicU64,
    /// Bytes of entries in the queue (see [`QUEUE_BYTES_PER_PEER`]).
    queued_bytes: std::sync::atomic::AtomicUsize,
    /// Since when the peer has been connected without a break; `None` while it is not.
    connected_since: Mutex<Option<std::time::Instant>>,
}

/// Bytes of log entries that may wait in one peer's queue. Appends carry up to 1 MiB
/// each, so the message count alone would let a peer that stopped reading (paused,
/// partitioned) pin gigabytes, and after it resumes it would first wade through
/// appends that went stale meanwhile. Raft sends again whatever is dropped here.
const QUEUE_BYTES_PER_PEER: usize = 16 << 20;

/// The entry bytes a message carries, as counted against [`QUEUE_BYTES_PER_PEER`].
fn entry_bytes(msg: &Message) -> usize {
    msg.entries.iter().map(|e| e.data.len()).sum()
}

impl PeerTransport {
    /// Binds the peer listeners. Must be called inside a tokio runtime.
    pub fn bind(
        listen: &[SocketAddr],
        local_id: u64,
        cluster_id: u64,
        election_timeout: Duration,
        snapshot_dir: std::path::PathBuf,
        tls: crate::tls::peer_side::PeerTls,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, TransportError> {
        let check_peer_address = tls.check_peer_address;
        let server = quic_config::server(tls.server, election_timeout)?;
        let client_config = quic_config::client(tls.client, election_timeout)?;
        let mut endpoints = Vec::new();
        for addr in listen {
            let ep = quinn::Endpoint::server(server.clone(), *addr).map_err(|source| {
                TransportError::Bind {
                    addr: *addr,
                    source,
                }
            })?;
            endpoints.push(ep);
        }
        let inner = Arc::new(Inner {
            local_id,
            cluster_id,
            endpoints,
            client_config,
            node: OnceLock::new(),
            members: RwLock::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            snapshot_dir,
            check_peer_address,
            removed_from_cluster: watch::channel(false).0,
            membership: OnceLock::new(),
            hash_permits: tokio::sync::Semaphore::new(HASH_QUERIES_AT_ONCE),
            metrics,
        });
        for ep in &inner.endpoints {
            tokio::spawn(accept_loop(inner.clone(), ep.clone()));
        }
        Ok(PeerTransport { inner })
    }

    /// Connects the transport to the Raft node that receives what peers send.
    pub fn attach(&self, node: NodeHandle) {
        let _ = self.inner.node.set(node);
    }

    /// Answers joining members' members queries from this state database.
    pub fn serve_membership(&self, readers: crate::storage::ReaderPool) {
        let _ = self.inner.membership.set(readers);
    }

    /// Asks the leader `leader` whether learner `learner` is in sync with it; the
    /// answer is one of [`members_query`]'s promotion answers.
    pub async fn ask_learner_ready(&self, leader: u64, learner: u64) -> Result<u8, String> {
        let urls = self
            .inner
            .members
            .read()
            .expect("members lock")
            .get(&leader)
            .cloned()
            .unwrap_or_default();
        let request = members_query::promote_query(learner);
        self.ask_peer(
            &urls,
            &request,
            Duration::from_secs(5),
            |mut recv| async move {
                let mut answer = [0u8; 1];
                recv.read_exact(&mut answer)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(answer[0])
            },
        )
        .await
    }

    /// Asks member `peer`, at the first of `peer_urls` that answers, for its HashKV at
    /// `revision` (see [`hash_query`]); each URL gets `timeout`. The URLs are passed
    /// in because the initial corruption check asks before the Raft node has told
    /// the transport who the members are.
    pub async fn ask_hash_kv(
        &self,
        peer_urls: &[String],
        revision: i64,
        timeout: Duration,
    ) -> Result<hash_query::HashAnswer, String> {
        let query = hash_query::HashQuery {
            cluster_id: self.inner.cluster_id,
            from: self.inner.local_id,
            revision,
        };
        self.ask_peer(peer_urls, &query.encode(), timeout, |mut recv| async move {
            hash_query::read_answer(&mut recv).await
        })
        .await
    }

    /// One question to a peer outside the Raft stream: `request` on a fresh connection
    /// to the first of `urls` that answers within `timeout`, its answer read by `read`.
    /// The error names the last URL tried and why it failed.
    async fn ask_peer<T, F, Fut>(
        &self,
        urls: &[String],
        request: &[u8],
        timeout: Duration,
        read: F,
    ) -> Result<T, String>
    where
        F: Fn(quinn::RecvStream) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let endpoint = self
            .inner
            .endpoints
            .first()
            .ok_or("no peer listener")?
            .clone();
        let mut last = String::from("no peer URLs");
        for url in urls {
            let ask = async {
                let hostport = url.split("://").nth(1).ok_or("not a URL")?;
                let addr = tokio::net::lookup_host(hostport)
                    .await
                    .map_err(|e| e.to_string())?
                    .next()
                    .ok_or("no address")?;
                let conn = endpoint
                    .connect_with(self.inner.client_config.clone(), addr, &server_name(url))
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())?;
                let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                send.write_all(request).await.map_err(|e| e.to_string())?;
                let _ = send.finish();
                let answer = read(recv).await;
                conn.close(0u32.into(), b"done");
                answer
            };
            match tokio::time::timeout(timeout, ask).await {
                Ok(Ok(a)) => return Ok(a),
                Ok(Err(e)) => last = format!("{url}: {e}"),
                Err(_) => last = format!("{url}: timed out"),
            }
        }
        Err(last)
    }

    /// Other members of the cluster, and how many of them are connected right now.
    /// The peers that have been connected without a break for at least `period`
    /// (etcd's `isConnectedSince`, for `--strict-reconfig-check`).
    pub fn connected_for(&self, period: Duration) -> Vec<u64> {
        let links = self.inner.links.lock().expect("links lock");
        links
            .values()
            .filter(|l| {
                l.connected_since
                    .lock()
                    .expect("connected_since lock")
                    .is_some_and(|since| since.elapsed() >= period)
            })
            .map(|l| l.peer)
            .collect()
    }

    pub fn peer_counts(&self) -> (usize, usize) {
        let links = self.inner.links.lock().expect("links lock");
        let connected = links.values().filter(|l| l.conn.borrow().is_some()).count();
        (links.len(), connected)
    }

    /// Completes once peers have told this member, for longer than
    /// [`REMOVED_CONFIRMATION`], that it was removed from the cluster: etcd's "the member
    /// has been permanently removed from the cluster". Never completes otherwise.
    pub async fn removed_from_cluster(&self) {
        let mut removed = self.inner.removed_from_cluster.subscribe();
        if removed.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Closes every connection; peers see this member go away at once.
    pub fn shutdown(&self) {
        for ep in &self.inner.endpoints {
            ep.close(0u32.into(), b"shutting down");
        }
    }
}

impl PeerOutbox for PeerTransport {
    fn send(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let links = self.inner.links.lock().expect("links lock");
        for msg in messages {
            let Some(link) = links.get(&msg.to) else {
                continue;
            };
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                // Snapshots stream on their own, so the message stream is never held up.
                self.inner.runtime.spawn(snapshot_stream::send(
                    self.inner.clone(),
                    link.clone(),
                    msg,
                ));
                continue;
            }
            // Full queue: the peer is not keeping up or not there; Raft resends (and
            // the node re-asks read indexes and re-proposes what got lost).
            let bytes = entry_bytes(&msg);
            let over_budget = bytes > 0
                && link.queued_bytes.load(Ordering::Acquire) + bytes > QUEUE_BYTES_PER_PEER;
            if over_budget || link.queue.try_send(msg).is_err() {
                let dropped = link.dropped.fetch_add(1, Ordering::Relaxed);
                if dropped.is_power_of_two() {
                    tracing::warn!(peer = %hex(link.peer), dropped = dropped + 1, "dropping raft messages: the queue to the peer is full");
                }
            } else {
                link.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
            }
        }
    }

    fn update_members(&self, members: &[Member]) {
        let inner = &self.inner;
        let current: HashMap<u64, Vec<String>> = members
            .iter()
            .filter(|m| m.id != inner.local_id)
            .map(|m| (m.id, m.peer_urls.clone()))
            .collect();
        let mut links = inner.links.lock().expect("links lock");
        links.retain(|id, link| {
            let keep = current.contains_key(id);
            if !keep {
                link.removed.store(true, Ordering::Release);
                if let Some(c) = link.conn.borrow().as_ref() {
                    c.close(0u32.into(), b"member removed");
                }
            }
            keep
        });
        for id in current.keys() {
            if links.contains_key(id) {
                continue;
            }
            let (queue, rx) = mpsc::channel(QUEUE_PER_PEER);
            let link = Arc::new(Link {
                peer: *id,
                queue,
                conn: watch::channel(None).0,
                removed: AtomicBool::new(false),
                dropped: std::sync::atomic::AtomicU64::new(0),
                queued_bytes: Default::default(),
                connected_since: Mutex::new(None),
            });
            links.insert(*id, link.clone());
            inner.runtime.spawn(send_loop(link.clone(), rx));
            inner.runtime.spawn(track_connected_since(link.clone()));
            inner
                .runtime
                .spawn(sample_peer_stats(link.clone(), inner.metrics.clone()));
            let eager = inner.local_id < *id;
            inner.runtime.spawn(dial_loop(inner.clone(), link, eager));
        }
        *inner.members.write().expect("members lock") = current;
    }
}

impl Inner {
    fn is_member(&self, id: u64) -> bool {
        self.members.read().expect("members lock").contains_key(&id)
    }

    fn link(&self, id: u64) -> Option<Arc<Link>> {
        self.links.lock().expect("links lock").get(&id).cloned()
    }

    /// Receives Raft messages on every stream the peer opens on `conn`.
    fn serve_connection(self: &Arc<Self>, conn: quinn::Connection, peer: u64) {
        let inner = self.clone();
        tokio::spawn(async move {
            while let Ok(mut stream) = conn.accept_uni().await {
                let inner = inner.clone();
                tokio::spawn(async move {
                    let mut kind = [0u8; 1];
                    if stream.read_exact(&mut kind).await.is_err() {
                        return;
                    }
                    if kind[0] == STREAM_SNAPSHOT {
                        snapshot_stream::receive(inner, peer, stream).await;
                        return;
                    }
                    if kind[0] != STREAM_MESSAGES {
                        tracing::warn!(peer = %format!("{peer:x}"), kind = kind[0], "unknown peer stream");
                        return;
                    }
                    let mut buf = Vec::new();
                    loop {
                        match framing::read_message(&mut stream, &mut buf).await {
                            Ok(msg) => {
                                if msg.from != peer || msg.to != inner.local_id {
                                    tracing::warn!(
                                        peer = %format!("{peer:x}"),
                                        from = %format!("{:x}", msg.from),
                                        to = %format!("{:x}", msg.to),
                                        "dropping raft message with foreign addresses"
                                    );
                                    continue;
                                }
                                if let Some(node) = inner.node.get() {
                                    node.step(msg);
                                }
                            }
                            Err(framing::FrameError::Closed) => return,
                            Err(e) => {
                                tracing::debug!(peer = %format!("{peer:x}"), error = %e, "peer stream ended");
                                return;
                            }
                        }
                    }
                });
            }
        });
    }
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

async fn accept_loop(inner: Arc<Inner>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // A refused certificate ends here; say who and why, as etcd does.
                    tracing::warn!(
                        "rejected connection from {:?} (error {:?})",
                        remote.to_string(),
                        e.to_string()
                    );
                    return;
                }
            };
            if inner.check_peer_address
                && let Some(leaf) = peer_leaf_certificate(&conn)
                && let Err(e) = crate::tls::identity::check_peer_address(&leaf, remote.ip()).await
            {
                tracing::warn!(
                    "rejected connection from {:?} (error {:?})",
                    remote.to_string(),
                    e
                );
                conn.close(2u32.into(), b"certificate does not cover the peer address");
                return;
            }
            let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                return;
            };
            let mut opening = [0u8; handshake::HELLO_LEN];
            if recv.read_exact(&mut opening).await.is_err() {
                conn.close(1u32.into(), b"bad handshake");
                return;
            }
            if opening == members_query::QUERY {
                answer_members_query(&inner, send).await;
                return;
            }
            if let Some(learner) = members_query::parse_promote_query(&opening) {
                answer_promote_query(&inner, learner, send).await;
                return;
            }
            if let Some(query) = hash_query::HashQuery::decode(&opening) {
                answer_hash_query(&inner, query, remote, send).await;
                return;
            }
            let hello = match Hello::decode(&opening) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "rejected peer connection");
                    conn.close(1u32.into(), b"bad handshake");
                    return;
                }
            };
            let verdict = judge(
                &hello,
                inner.cluster_id,
                inner.local_id,
                inner.is_member(hello.from),
            );
            match verdict {
                Verdict::Accepted => {}
                Verdict::ClusterIdMismatch { .. } => tracing::warn!(
                    local_member_id = %hex(inner.local_id),
                    local_member_cluster_id = %hex(inner.cluster_id),
                    remote_peer_member_id = %hex(hello.from),
                    remote_peer_cluster_id = %hex(hello.cluster_id),
                    %remote,
                    "request cluster ID mismatch"
                ),
                Verdict::RemovedMember => tracing::warn!(
                    remote_peer_member_id = %hex(hello.from),
                    %remote,
                    "rejected peer connection from removed member"
                ),
                Verdict::WrongMember { .. } => tracing::warn!(
                    intended_member_id = %hex(hello.to),
                    %remote,
                    "rejected peer connection meant for another member"
                ),
            }
            if verdict.send(&mut send).await.is_err() || verdict != Verdict::Accepted {
                // Give the verdict a moment to reach the caller before closing.
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                conn.close(1u32.into(), b"refused");
                return;
            }
            let Some(link) = inner.link(hello.from) else {
                return;
            };
            tracing::info!(peer = %hex(hello.from), %remote, "peer connected");
            link.conn.send_replace(Some(conn.clone()));
            inner.serve_connection(conn.clone(), hello.from);
            conn.closed().await;
            link.conn.send_if_modified(|c| {
                let same = c
                    .as_ref()
                    .is_some_and(|c| c.stable_id() == conn.stable_id());
                if same {
                    *c = None;
                }
                same
            });
        });
    }
}

/// Keeps `link.connected_since` in step with its connection.
async fn track_connected_since(link: Arc<Link>) {
    let mut conns = link.conn.subscribe();
    loop {
        let up = conns.borrow_and_update().is_some();
        {
            let mut since = link.connected_since.lock().expect("connected_since lock");
            match (up, since.is_some()) {
                (true, false) => *since = Some(std::time::Instant::now()),
                (false, true) => *since = None,
                _ => {}
            }
        }
        if link.removed.load(Ordering::Acquire) || conns.changed().await.is_err() {
            return;
        }
    }
}

/// Tells a joining member who the members are (see [`members_query`]).
async fn answer_members_query(inner: &Arc<Inner>, send: quinn::SendStream) {
    let Some(readers) = inner.membership.get().cloned() else {
        return;
    };
    let listed = tokio::task::spawn_blocking(move || {
        readers.get()?.read(|txn| crate::membership::list(txn))
    })
    .await;
    match listed {
        Ok(Ok(members)) => {
            let cluster = members_query::RemoteCluster::new(inner.cluster_id, &members);
            members_query::answer(send, &cluster).await;
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot read membership for a joining member"),
        Err(e) => tracing::error!(error = %e, "membership read task failed"),
    }
}

/// Tells a member whether a learner may be promoted (see [`members_query`]).
async fn answer_promote_query(inner: &Arc<Inner>, learner: u64, mut send: quinn::SendStream) {
    let Some(node) = inner.node.get() else {
        return;
    };
    let answer = match node.learner_ready(learner).await {
        Ok(true) => members_query::READY,
        Ok(false) => members_query::NOT_READY,
        Err(crate::error::RequestError::MemberNotFound) => members_query::NOT_FOUND,
        Err(_) => members_query::NOT_LEADER,
    };
    if send.write_all(&[answer]).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    }
}

/// Tells a member this member's HashKV (see [`hash_query`]), computed on a read
/// connection on a blocking thread, never on the Raft thread.
async fn answer_hash_query(
    inner: &Arc<Inner>,
    query: hash_query::HashQuery,
    remote: SocketAddr,
    send: quinn::SendStream,
) {
    use hash_query::{HashAnswer, PeerHash};
    let refusal = if query.cluster_id != inner.cluster_id {
        Some(format!(
            "cluster ID mismatch: asked by a member of {}, this is {}",
            hex(query.cluster_id),
            hex(inner.cluster_id)
        ))
    } else if !inner.is_member(query.from) {
        Some(format!(
            "{} is not a member of this cluster",
            hex(query.from)
        ))
    } else {
        None
    };
    if let Some(reason) = refusal {
        tracing::warn!(remote_peer_member_id = %hex(query.from), %remote, %reason, "rejected hash kv request");
        hash_query::answer(send, &HashAnswer::Refused { reason }).await;
        return;
    }
    let Some(readers) = inner.membership.get().cloned() else {
        let error = "the member is still starting".to_string();
        hash_query::answer(send, &HashAnswer::Failed { error }).await;
        return;
    };
    let Ok(_permit) = inner.hash_permits.acquire().await else {
        return;
    };
    let revision = query.revision;
    let computed = tokio::task::spawn_blocking(move || {
        let mut out = None;
        readers.get()?.read(|conn| {
            out = Some(crate::mvcc::hash::hash_kv(conn, revision));
            Ok(())
        })?;
        Ok::<_, crate::storage::StorageError>(out.expect("read closure ran"))
    })
    .await;
    let answer = match computed {
        Ok(Ok(Ok(h))) => HashAnswer::Hash(PeerHash {
            member_id: inner.local_id,
            hash: h.hash,
            hash_revision: h.revision,
            compact_revision: h.compact_revision,
            revision: h.current_revision,
        }),
        Ok(Ok(Err(crate::error::RequestError::Compacted))) => HashAnswer::Compacted,
        Ok(Ok(Err(crate::error::RequestError::FutureRevision))) => HashAnswer::FutureRevision,
        Ok(Ok(Err(e))) => HashAnswer::Failed {
            error: e.to_string(),
        },
        Ok(Err(e)) => HashAnswer::Failed {
            error: e.to_string(),
        },
        Err(e) => HashAnswer::Failed {
            error: format!("hash task failed: {e}"),
        },
    };
    if let HashAnswer::Failed { error } = &answer {
        tracing::warn!(requested_revision = revision, %error, "failed to get hashKV");
    }
    hash_query::answer(send, &answer).await;
}

/// Keeps a connection to a peer, redialling with backoff. `eager` (we have the lower
/// ID) dials at once; otherwise only when the peer has not called within the grace time.
async fn dial_loop(inner: Arc<Inner>, link: Arc<Link>, eager: bool) {
    let mut backoff = BACKOFF_MIN;
    let mut last_refusal = None;
    let mut last_tls_error: Option<String> = None;
    let mut removed_since: Option<std::time::Instant> = None;
    let mut conns = link.conn.subscribe();
    while !link.removed.load(Ordering::Acquire) {
        if !eager {
            let called = tokio::time::timeout(FALLBACK_GRACE, conns.wait_for(|c| c.is_some()))
                .await
                .is_ok_and(|r| r.is_ok());
            if called {
                // The peer called us; wait until that connection ends.
                if conns.wait_for(|c| c.is_none()).await.is_err() {
                    return;
                }
                continue;
            }
        }
        let outcome = dial_once(&inner, link.peer).await;
        if matches!(outcome, Err(DialError::Refused(Verdict::RemovedMember))) {
            let since = *removed_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= REMOVED_CONFIRMATION {
                if !*inner.removed_from_cluster.borrow() {
                    tracing::error!("the member has been permanently removed from the cluster");
                }
                inner.removed_from_cluster.send_replace(true);
            }
        } else if !matches!(outcome, Err(DialError::Unreachable(_))) {
            removed_since = None;
        }
        match outcome {
            Ok(conn) if link.removed.load(Ordering::Acquire) => {
                // Removed from the cluster while this dial was in flight (a member
                // that was down comes back): it must be refused, not served.
                conn.close(0u32.into(), b"member removed");
                return;
            }
            Ok(conn) => {
                backoff = BACKOFF_MIN;
                last_refusal = None;
                tracing::info!(peer = %hex(link.peer), remote = %conn.remote_address(), "peer connected");
                link.conn.send_replace(Some(conn.clone()));
                inner.serve_connection(conn.clone(), link.peer);
                conn.closed().await;
                link.conn.send_replace(None);
                tracing::info!(peer = %hex(link.peer), "peer connection lost");
            }
            Err(DialError::Refused(v)) => {
                // Log a refusal once, not on every retry.
                if last_refusal != Some(v) {
                    match v {
                        Verdict::ClusterIdMismatch { ours } => tracing::warn!(
                            local_member_id = %hex(inner.local_id),
                            local_member_cluster_id = %hex(inner.cluster_id),
                            remote_peer_member_id = %hex(link.peer),
                            remote_peer_cluster_id = %hex(ours),
                            "request sent was ignored by remote peer due to cluster ID mismatch"
                        ),
                        // Believed only once it persists (REMOVED_CONFIRMATION): a
                        // peer that has just started says so for a moment.
                        Verdict::RemovedMember => tracing::warn!(
                            peer = %hex(link.peer),
                            "peer refused us as a removed member"
                        ),
                        other => {
                            tracing::warn!(peer = %hex(link.peer), verdict = ?other, "peer refused the connection")
                        }
                    }
                    last_refusal = Some(v);
                }
                backoff = BACKOFF_MAX;
            }
            Err(DialError::Unreachable(e)) => {
                // Certificate trouble will not fix itself: tell the operator, once per
                // distinct error. Plain unreachability is normal while a peer is down.
                let tls_trouble = e.contains("certificate") || e.contains("TLS");
                if tls_trouble && last_tls_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(peer = %hex(link.peer), error = %e, "cannot establish a trusted connection to peer");
                    last_tls_error = Some(e);
                } else {
                    tracing::debug!(peer = %hex(link.peer), error = %e, "cannot reach peer");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum DialError {
    Unreachable(String),
    Refused(Verdict),
}

/// The name a dialled peer's certificate must be valid for: its URL's host.
fn server_name(url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string(),
        None => crate::tls::peer_side::FALLBACK_SERVER_NAME.to_string(),
    }
}

/// The certificate a connected peer presented, if it presented one.
fn peer_leaf_certificate(
    conn: &quinn::Connection,
) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    chain.first().cloned()
}

async fn dial_once(inner: &Arc<Inner>, peer: u64) -> Result<quinn::Connection, DialError> {
    let urls = inner
        .members
        .read()
        .expect("members lock")
        .get(&peer)
        .cloned()
        .unwrap_or_default();
    let endpoint = inner
        .endpoints
        .first()
        .ok_or_else(|| DialError::Unreachable("no peer listener".into()))?;
    let mut last = String::from("no peer URLs");
    for url in urls {
        let Some(hostport) = url.split("://").nth(1) else {
            continue;
        };
        let addr = match tokio::net::lookup_host(hostport)
            .await
            .map(|mut a| a.next())
        {
            Ok(Some(a)) => a,
            Ok(None) => {
                last = format!("{url}: no address");
                continue;
            }
            Err(e) => {
                last = format!("{url}: {e}");
                continue;
            }
        };
        let connecting = endpoint
            .connect_with(inner.client_config.clone(), addr, &server_name(&url))
            .map_err(|e| DialError::Unreachable(e.to_string()))?;
        let conn = match tokio::time::timeout(Duration::from_secs(2), connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                last = format!("{url}: {e}");
                continue;
            }
            Err(_) => {
                last = format!("{url}: connect timed out");
                continue;
            }
        };
        let hello = Hello {
            cluster_id: inner.cluster_id,
            from: inner.local_id,
            to: peer,
        };
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            hello.send(&mut send).await.map_err(|e| e.to_string())?;
            Verdict::receive(&mut recv).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(2), exchange).await {
            Ok(Ok(Verdict::Accepted)) => return Ok(conn),
            Ok(Ok(v)) => {
                conn.close(0u32.into(), b"refused");
                return Err(DialError::Refused(v));
            }
            Ok(Err(e)) => last = format!("{url}: {e}"),
            Err(_) => last = format!("{url}: handshake timed out"),
        }
        conn.close(0u32.into(), b"handshake failed");
    }
    Err(DialError::Unreachable(last))
}

/// How often QUIC's figures for a peer connection are taken into the metrics.
const PEER_STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Feeds `etcd_network_peer_round_trip_time_seconds` (QUIC's smoothed RTT estimate)
/// and the sent and received byte counters (UDP bytes of the connection, everything
/// included) for one peer, until it is removed. Bytes a connection carried after its
/// last sample and before it closed are not counted.
async fn sample_peer_stats(link: Arc<Link>, metrics: Arc<crate::metrics::Metrics>) {
    let peer = hex(link.peer);
    let rtt = metrics.peer_round_trip.with_label_values(&[&peer]);
    let sent = metrics.peer_sent_bytes.with_label_values(&[&peer]);
    let received = metrics.peer_received_bytes.with_label_values(&[&peer]);
    // (connection, bytes sent, bytes received) at the last sample.
    let mut last: Option<(usize, u64, u64)> = None;
    let mut ticks = tokio::time::interval(PEER_STATS_INTERVAL);
    loop {
        ticks.tick().await;
        if link.removed.load(Ordering::Acquire) {
            let _ = metrics.peer_round_trip.remove_label_values(&[&peer]);
            let _ = metrics.peer_sent_bytes.remove_label_values(&[&peer]);
            let _ = metrics.peer_received_bytes.remove_label_values(&[&peer]);
            return;
        }
        let Some(conn) = link.conn.borrow().clone() else {
            continue;
        };
        let stats = conn.stats();
        let (tx, rx) = (stats.udp_tx.bytes, stats.udp_rx.bytes);
        let (tx_before, rx_before) = match last {
            Some((id, t, r)) if id == conn.stable_id() => (t, r),
            _ => (0, 0),
        };
        sent.inc_by(tx.saturating_sub(tx_before));
        received.inc_by(rx.saturating_sub(rx_before));
        last = Some((conn.stable_id(), tx, rx));
        rtt.observe(conn.rtt().as_secs_f64());
    }
}

/// Writes queued messages to the peer whenever a connection is up.
async fn send_loop(link: Arc<Link>, mut queue: mpsc::Receiver<Message>) {
    let mut conns = link.conn.subscribe();
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let conn = match conns.wait_for(|c| c.is_some()).await {
            Ok(c) => c.clone().expect("waited for a connection"),
            Err(_) => return,
        };
        let opened = match conn.open_uni().await {
            Ok(mut s) => s.write_all(&[STREAM_MESSAGES]).await.map(|_| s).ok(),
            Err(_) => None,
        };
        let Some(mut stream) = opened else {
            // Connection already gone; wait for the next one.
            let _ = conns
                .wait_for(|c| c.as_ref().is_none_or(|n| n.stable_id() != conn.stable_id()))
                .await;
            continue;
        };
        loop {
            let Some(first) = queue.recv().await else {
                return;
            };
            buf.clear();
            let mut taken = entry_bytes(&first);
            framing::encode_into(&first, &mut buf);
            while buf.len() < BATCH_BYTES {
                match queue.try_recv() {
                    Ok(m) => {
                        taken += entry_bytes(&m);
                        framing::encode_into(&m, &mut buf)
                    }
                    Err(_) => break,
                }
            }
            link.queued_bytes.fetch_sub(taken, Ordering::AcqRel);
            if stream.write_all(&buf).await.is_err() {
                break;
            }
        }
        if link.removed.load(Ordering::Acquire) {
            return;
        }
    }
}
