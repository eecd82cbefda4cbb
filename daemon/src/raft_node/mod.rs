//! The Raft node: one thread that owns raft-rs's `RawNode`, the state database's writing
//! connection and the state machine, and turns client requests into proposals.
//!
//! The loop follows raft-rs's Ready protocol. Its performance design is batching: every
//! command that arrived since the last round is stepped into Raft before the next `Ready`
//! is taken, so one `Ready` carries many proposals, and one SQLite transaction with one
//! fsync persists all of them together with the effects of the entries it commits.

mod logger;
mod waiters;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::prelude::{Entry, Message, Snapshot};
use raft::{RawNode, StateRole, Storage};
use tokio::sync::{Notify, oneshot};

use crate::error::RequestError;
use crate::lease::Lessor;
use crate::proto::qetcdpb::{RaftRequest, raft_request::Request};
use crate::state_machine::{ApplyResult, Completion, StateMachine};
use crate::storage::disk_space::SpaceGuard;
use crate::storage::{Durability, RaftLog, StorageError};
use crate::watch::EventFeed;

pub use waiters::{ProposalReply, ReadReply};
use waiters::{Proposals, Reads};

/// Log entries deleted per apply batch while the log is cut. One cut removes
/// `snapshot_count` entries (10,000 by default, ~3 MB at 256-byte values): one DELETE
/// of them took SQLite 9–13 ms, a stall of the Raft thread, and so of every request in
/// flight, once per cut (every second or two under load). 1,024 take ~1 ms, and the
/// cut still ends long before the next is due (a batch applies far fewer entries).
const COMPACTION_STEP: u64 = 1024;

/// Tunables of the Raft node, from the member's configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// One Raft tick; etcd's `--heartbeat-interval`.
    pub tick_interval: Duration,
    /// Ticks without a leader before an election; `--election-timeout / --heartbeat-interval`.
    pub election_ticks: usize,
    pub pre_vote: bool,
    /// Applied entries between log compactions; etcd's `--snapshot-count`.
    pub snapshot_count: u64,
    /// Entries kept behind the applied index at compaction, so slow followers can catch
    /// up from the log rather than a snapshot; etcd's `--snapshot-catchup-entries`.
    pub snapshot_catchup_entries: u64,
    /// How long a caller waits for its proposal or read before `request timed out`.
    pub request_timeout: Duration,
    /// A member that just joined a running cluster: it waits for the leader rather
    /// than fast-forwarding to an election.
    pub joining: bool,
}

/// Sends Raft messages to other members. Single-member clusters have nothing to send.
pub trait PeerOutbox: Send + 'static {
    fn send(&self, messages: Vec<Message>);

    /// The membership changed (or is known for the first time): whom to connect to.
    fn update_members(&self, _members: &[crate::membership::Member]) {}
}

/// The outbox of a member with no peers.
pub struct NoPeers;

impl PeerOutbox for NoPeers {
    fn send(&self, messages: Vec<Message>) {
        if !messages.is_empty() {
            tracing::warn!(
                count = messages.len(),
                "dropping raft messages: no peer transport"
            );
        }
    }
}

enum Command {
    Propose {
        request: Request,
        /// Who asked, when auth identified them.
        caller: Option<crate::auth::AuthInfo>,
        reply: ProposalReply,
    },
    ReadIndex {
        reply: ReadReply,
    },
    Step(Message),
    /// The transport finished (or failed) streaming a snapshot to `to`.
    ReportSnapshot {
        to: u64,
        ok: bool,
    },
    /// Propose a membership change; answered once Raft took (or refused) it.
    ConfChange {
        change: raft::prelude::ConfChangeV2,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    /// Whether learner `id` is in sync with the leader (asked of the leader only).
    LearnerReady {
        id: u64,
        reply: oneshot::Sender<Result<bool, RequestError>>,
    },
    /// Hand leadership to `target`, or to the most up-to-date voter when `None`.
    TransferLeader {
        target: Option<u64>,
        reply: oneshot::Sender<Result<u64, RequestError>>,
    },
    /// Rewrite the state database compactly (SQLite's VACUUM); answered when done.
    Defragment {
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    /// The defragmentation thread finished (its result is in `Defrag::done`).
    DefragFinished,
    Stop,
}

/// A defragmentation under way: the state database is being rewritten by another
/// thread, which holds its write lock. Meanwhile Raft goes on (ticks, heartbeats,
/// votes, log appends on the log-only connection), but committed entries are kept
/// here rather than applied: they apply, in order, when the rewrite is done, and the
/// writes waiting for them are answered then. As in etcd, writes wait during a
/// defragmentation; what was acknowledged before was applied before it started.
struct Defrag {
    waiters: Vec<oneshot::Sender<Result<(), RequestError>>>,
    done: Receiver<Result<(), String>>,
    deferred: Vec<Entry>,
    started: Instant,
}

/// What the rest of the member can see of the node without asking it.
#[derive(Debug, Default)]
pub struct NodeStatus {
    pub term: AtomicU64,
    pub leader: AtomicU64,
    pub commit_index: AtomicU64,
    pub applied_index: AtomicU64,
    pub revision: AtomicU64,
    pub stopped: AtomicBool,
    /// Set when this member applies its own removal from the cluster.
    pub removed: AtomicBool,
    /// Whether this member is a learner in the configuration it has applied.
    pub learner: AtomicBool,
    /// Notified whenever the applied index moves.
    pub applied: Notify,
    /// The alarms raised in the cluster, as applied here.
    pub alarms: std::sync::RwLock<Vec<crate::proto::etcdserverpb::AlarmMember>>,
    /// Bytes of the state database's pages (what the backend quota is measured on),
    /// as of the last applied batch.
    pub db_size: AtomicU64,
}

impl NodeStatus {
    /// The alarms raised in the cluster, as applied here.
    pub fn alarms(&self) -> Vec<crate::proto::etcdserverpb::AlarmMember> {
        self.alarms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Cheap, cloneable handle to the Raft node.
#[derive(Clone)]
pub struct NodeHandle {
    id: u64,
    commands: SyncSender<Command>,
    status: Arc<NodeStatus>,
    next_request: Arc<AtomicU64>,
}

impl NodeHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn status(&self) -> &NodeStatus {
        &self.status
    }

    pub fn leader(&self) -> Option<u64> {
        match self.status.leader.load(Ordering::Acquire) {
            raft::INVALID_ID => None,
            id => Some(id),
        }
    }

    pub fn term(&self) -> u64 {
        self.status.term.load(Ordering::Acquire)
    }

    /// Whether this member is (as far as it has applied) a non-voting learner.
    pub fn is_learner(&self) -> bool {
        self.status.learner.load(Ordering::Acquire)
    }

    /// Proposes a request and waits until it is applied here.
    pub async fn propose(&self, request: Request) -> ApplyResult {
        self.propose_as(request, None).await
    }

    /// Proposes a request on behalf of an authenticated caller, whose name and auth
    /// revision go into the log entry for the permission check at apply time.
    pub async fn propose_as(
        &self,
        request: Request,
        caller: Option<crate::auth::AuthInfo>,
    ) -> ApplyResult {
        let (reply, rx) = oneshot::channel();
        self.submit(Command::Propose {
            request,
            caller,
            reply,
        })?;
        rx.await.unwrap_or(Err(RequestError::Timeout))
    }

    /// Waits until this member has applied everything the cluster committed before the
    /// call: afterwards a local read is linearizable.
    pub async fn read_barrier(&self) -> Result<(), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Command::ReadIndex { reply })?;
        rx.await.unwrap_or(Err(RequestError::Timeout))
    }

    /// Proposes a membership change. Raft takes one at a time and only with a leader;
    /// a refused change is `NoLeader` or, with a change still pending, `Timeout` after
    /// the caller's deadline. Completion is seen in the applied membership.
    pub async fn propose_conf_change(
        &self,
        change: raft::prelude::ConfChangeV2,
    ) -> Result<(), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Command::ConfChange { change, reply })?;
        rx.await.unwrap_or(Err(RequestError::Stopped))
    }

    /// On the leader: whether learner `id` has at least 90 % of the leader's log
    /// (etcd's rule for promoting it). Elsewhere `NotLeader`.
    pub async fn learner_ready(&self, id: u64) -> Result<bool, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::LearnerReady { id, reply })
            .map_err(|_| RequestError::Stopped)?;
        rx.await.unwrap_or(Err(RequestError::Stopped))
    }

    /// Completes once this member has applied its own removal from the cluster.
    pub async fn removed(&self) {
        loop {
            let applied = self.status.applied.notified();
            if self.status.removed.load(Ordering::Acquire) {
                return;
            }
            applied.await;
        }
    }

    /// Asks the leader to hand leadership over and returns the chosen member; the
    /// handover itself completes when that member has caught up and won its election.
    pub async fn transfer_leadership(&self, target: Option<u64>) -> Result<u64, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Command::TransferLeader { target, reply })?;
        rx.await.unwrap_or(Err(RequestError::Stopped))
    }

    /// Waits until `pred` holds for the known leader, or `timeout` passes.
    pub async fn wait_for_leader(
        &self,
        timeout: Duration,
        pred: impl Fn(Option<u64>) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(self.leader()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Tells Raft how sending a snapshot to `to` ended.
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        // If the queue is full this is lost; Raft learns the outcome from the peer's
        // next append response instead.
        let _ = self.commands.try_send(Command::ReportSnapshot { to, ok });
    }

    /// Hands a message from a peer to Raft.
    pub fn step(&self, msg: Message) {
        // A full queue drops the message, as a lossy network would: Raft retransmits.
        let _ = self.commands.try_send(Command::Step(msg));
    }

    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    /// Defragments the state database; completes when it is done (see `Defrag`).
    pub async fn defragment(&self) -> Result<(), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Command::Defragment { reply })?;
        rx.await.unwrap_or(Err(RequestError::Stopped))
    }

    /// Size a request will have in the log, for etcd's `--max-request-bytes` check.
    pub fn encoded_len(&self, request: &Request) -> usize {
        // The request plus the envelope's three u64 fields at their largest (the
        // caller's name is limited by the token or certificate it came from).
        request.encoded_len() + 3 * 11
    }

    /// Queues a command for the Raft thread without waiting: a full queue means the
    /// node is overloaded, and the caller is told so at once.
    fn submit(&self, cmd: Command) -> Result<(), RequestError> {
        self.commands.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => RequestError::TooManyRequests,
            TrySendError::Disconnected(_) => RequestError::Stopped,
        })
    }

    fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }
}

/// raft-rs owns its storage; the node needs the same log for its batches. Sharing it
/// through an `Rc` (all on the node thread) avoids borrowing the log out of the
/// `RawNode` while Raft itself is being driven.
#[derive(Clone)]
struct SharedLog(Rc<RaftLog>);

impl Storage for SharedLog {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.0.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.0.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.0.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.0.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.0.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.0.snapshot(request_index, to)
    }
}

/// What the node keeps up to date as it applies entries, for the rest of the member to
/// read: lease deadlines (the API and lease expiry) and committed changes (watchers).
/// The member owns them; the node only writes to them.
#[derive(Clone, Default)]
pub struct AppliedState {
    pub lessor: Arc<Lessor>,
    pub events: Arc<EventFeed>,
    /// Users, roles and tokens, as applied (the API reads them to authenticate and to
    /// check permissions of reads).
    pub auth: Arc<crate::auth::AuthStore>,
    /// The member's metrics (leader, proposals, commit latencies) the node keeps current.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The key index of the state database, when the member shares it with its
    /// readers; the node loads its own otherwise.
    pub keys: Option<crate::storage::SharedKeyIndex>,
}

/// Commands that may wait for the Raft thread. It takes up to 4096 per turn of its loop;
/// a queue of two turns absorbs bursts, and beyond it the API answers "too many
/// requests" and peer messages are dropped (Raft retransmits) instead of memory growing.
const COMMAND_QUEUE: usize = 8192;

/// How long the Raft thread polls its queue before it sleeps on it. A message for a
/// sleeping thread waits for the kernel to wake it, and on a virtual machine whose
/// CPUs idle that takes tens of microseconds (an interrupt to a halted CPU); a put
/// crosses four such hops between members. Polling briefly after each round of work
/// keeps the next message's hop short when messages come in quick succession (a
/// put's acknowledgement, its commit), at the cost of this much CPU after the last.
const POLL_BEFORE_SLEEP: Duration = Duration::from_micros(50);

/// The next command, polling for `POLL_BEFORE_SLEEP` before sleeping until `timeout`.
fn receive(inbox: &Receiver<Command>, timeout: Duration) -> Result<Command, RecvTimeoutError> {
    let started = Instant::now();
    let poll_for = POLL_BEFORE_SLEEP.min(timeout);
    loop {
        match inbox.try_recv() {
            Ok(cmd) => return Ok(cmd),
            Err(mpsc::TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let waited = started.elapsed();
        if waited >= poll_for {
            return inbox.recv_timeout(timeout.saturating_sub(waited));
        }
        std::thread::yield_now();
    }
}

/// Starts the node thread on an opened state database.
///
/// `conn` is the writing connection; the database must already be bootstrapped (IDs,
/// conf state). The returned join handle finishes when the node stops; it yields an error
/// if persistence failed, which must stop the member.
pub fn start(
    cfg: NodeConfig,
    conn: rusqlite::Connection,
    outbox: Box<dyn PeerOutbox>,
    applied: AppliedState,
) -> Result<
    (
        NodeHandle,
        std::thread::JoinHandle<Result<(), StorageError>>,
    ),
    StorageError,
> {
    let (tx, rx) = mpsc::sync_channel(COMMAND_QUEUE);
    let status = Arc::new(NodeStatus::default());
    // Request IDs only need to be unique among this member's in-flight proposals; the
    // start time keeps IDs of a previous run (still in the log) from being reused.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
        << 8;
    let handle = NodeHandle {
        id: cfg.id,
        commands: tx,
        status: status.clone(),
        next_request: Arc::new(AtomicU64::new(seed)),
    };
    let id_source = handle.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            let mut node = match Node::new(cfg, conn, outbox, status, id_source, applied) {
                Ok(n) => {
                    let _ = ready_tx.send(Ok(()));
                    n
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let result = node.run(rx);
            node.status.stopped.store(true, Ordering::Release);
            node.status.applied.notify_waiters();
            result
        })
        .map_err(|e| StorageError::Corrupt(format!("cannot start raft thread: {e}")))?;
    ready_rx
        .recv()
        .map_err(|_| StorageError::Corrupt("raft thread died during start-up".into()))??;
    Ok((handle, thread))
}

struct Node {
    cfg: NodeConfig,
    raw: RawNode<SharedLog>,
    log: Rc<RaftLog>,
    machine: StateMachine,
    outbox: Box<dyn PeerOutbox>,
    status: Arc<NodeStatus>,
    ids: NodeHandle,
    lessor: Arc<Lessor>,
    auth: Arc<crate::auth::AuthStore>,
    events: Arc<EventFeed>,
    proposals: Proposals,
    reads: Reads,
    /// Applied index at the last log compaction.
    compacted_at: u64,
    /// The first index the log is being cut to, a step per apply (see
    /// [`COMPACTION_STEP`]); 0 when no cut is pending.
    compact_to: u64,
    /// The last revision watchers were told about.
    published_revision: i64,
    completions: Vec<Completion>,
    /// A conf change was applied in the current batch: peers to re-read after commit.
    membership_changed: bool,
    /// Set when a new leader appears; pending proposals go to it after this Ready.
    repropose_after_leader_change: bool,
    /// Checkpoints the databases; knows how far the state is durable, which bounds log
    /// compaction. None for an in-memory database (tests).
    checkpointer: Option<crate::storage::Checkpointer>,
    /// The defragmentation under way, if any.
    defrag: Option<Defrag>,
    /// A storage failure met while handling a command, which stops the node.
    pending_error: Option<StorageError>,
    /// The data directory's free space (none for an in-memory store): below its
    /// reserve, nothing is proposed or persisted (see `storage::disk_space`).
    space: Option<SpaceGuard>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Node {
    fn new(
        cfg: NodeConfig,
        conn: rusqlite::Connection,
        outbox: Box<dyn PeerOutbox>,
        status: Arc<NodeStatus>,
        ids: NodeHandle,
        applied: AppliedState,
    ) -> Result<Self, StorageError> {
        let AppliedState {
            lessor,
            events,
            auth,
            metrics,
            keys,
        } = applied;
        let keys = match keys {
            Some(k) => k,
            None => crate::storage::SharedKeyIndex::load(&conn)?,
        };
        let machine = StateMachine::with_lessor(&conn, cfg.id, lessor.clone(), auth.clone(), keys)?;
        let checkpointer = conn
            .path()
            .filter(|p| !p.is_empty())
            .map(|p| crate::storage::Checkpointer::start(p.into(), machine.applied_index()));
        let space = conn
            .path()
            .filter(|p| !p.is_empty())
            .and_then(|p| std::path::Path::new(p).parent())
            .map(|dir| SpaceGuard::new(dir.to_path_buf()));
        let log = Rc::new(RaftLog::open(conn)?);
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: 1,
            applied: machine.applied_index(),
            // etcd's defaults: 1 MiB per append message, 512 in flight.
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 512,
            check_quorum: true,
            pre_vote: cfg.pre_vote,
            ..Default::default()
        };
        raft_cfg
            .validate()
            .map_err(|e| StorageError::Corrupt(format!("raft config: {e}")))?;
        let mut raw = RawNode::new(&raft_cfg, SharedLog(log.clone()), &logger::raft_logger())
            .map_err(|e| StorageError::Corrupt(format!("raft: {e}")))?;
        let voters = log.conf_state().voters;
        if voters == [cfg.id] {
            // Nobody to wait for: become leader at once rather than after a timeout.
            let _ = raw.campaign();
        } else if !cfg.joining {
            // As etcd's --initial-election-tick-advance: start close to the election
            // timeout so a restarted cluster elects a leader after about one tick.
            for _ in 1..cfg.election_ticks {
                raw.tick();
            }
        }
        outbox.update_members(&crate::membership::list(log.conn())?);
        let cs = log.conf_state();
        status
            .learner
            .store(cs.learners.contains(&cfg.id), Ordering::Release);
        if !cs.voters.is_empty() && !cs.voters.contains(&cfg.id) && !cs.learners.contains(&cfg.id) {
            // Removed before it stopped: restarting cannot bring it back.
            tracing::error!("the member has been permanently removed from the cluster");
            status.removed.store(true, Ordering::Release);
        }
        let applied = machine.applied_index();
        status.applied_index.store(applied, Ordering::Release);
        status
            .revision
            .store(machine.revisions().current as u64, Ordering::Release);
        Ok(Node {
            compacted_at: applied,
            compact_to: 0,
            published_revision: machine.revisions().current,
            cfg,
            raw,
            log,
            machine,
            outbox,
            status,
            ids,
            lessor,
            auth,
            events,
            proposals: Proposals::default(),
            reads: Reads::default(),
            completions: Vec::new(),
            membership_changed: false,
            repropose_after_leader_change: false,
            checkpointer,
            defrag: None,
            pending_error: None,
            space,
            metrics,
        })
    }

    fn run(&mut self, inbox: Receiver<Command>) -> Result<(), StorageError> {
        let mut next_tick = Instant::now() + self.cfg.tick_interval;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            match receive(&inbox, timeout) {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        return Ok(());
                    }
                    // Take everything already waiting: this is where batching happens.
                    for _ in 0..4096 {
                        match inbox.try_recv() {
                            Ok(cmd) => {
                                if !self.handle(cmd) {
                                    return Ok(());
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if let Some(ctx) = self.reads.start_batch() {
                self.raw.read_index(self.read_context(ctx));
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick = now + self.cfg.tick_interval;
                let failed = self.proposals.expire(now);
                self.metrics.proposals_failed.inc_by(failed as u64);
                self.reads.expire(now);
                self.repropose(now, false);
                // A read index lost on the way is asked again after an election timeout.
                let after = self.cfg.tick_interval * self.cfg.election_ticks as u32;
                for ctx in self.reads.unanswered(now, after) {
                    self.raw.read_index(self.read_context(ctx));
                }
            }
            if let Some(e) = self.pending_error.take() {
                return Err(e);
            }
            // Short of disk space: Raft goes on receiving, but persists (and so
            // answers) nothing until space returns; see storage::disk_space.
            if !self.short_of_space() {
                self.on_ready()?;
            }
        }
    }

    fn short_of_space(&mut self) -> bool {
        self.space.as_mut().is_some_and(|s| s.short(Instant::now()))
    }

    /// Returns false when the node must stop.
    fn handle(&mut self, cmd: Command) -> bool {
        let deadline = Instant::now() + self.cfg.request_timeout;
        match cmd {
            Command::Propose {
                request,
                caller,
                reply,
            } => {
                if self.short_of_space() {
                    let _ = reply.send(Err(RequestError::NoSpace));
                    return true;
                }
                let id = self.ids.next_request_id();
                let caller = caller.unwrap_or_default();
                let data = RaftRequest {
                    id,
                    origin: self.cfg.id,
                    username: caller.username,
                    auth_revision: caller.revision,
                    request: Some(request),
                }
                .encode_to_vec();
                // Raft refuses proposals while there is no leader (or while the leader
                // hands over); such a proposal waits and is proposed again.
                let accepted = self.raw.propose(Vec::new(), data.clone()).is_ok();
                self.proposals.insert(id, reply, deadline, data);
                if accepted {
                    self.proposals.proposed(id, Instant::now());
                }
            }
            Command::ReadIndex { reply } => self.reads.queue(reply, deadline),
            Command::Step(msg) => {
                if let Err(e) = self.raw.step(msg) {
                    tracing::debug!(error = %e, "raft refused a peer message");
                }
            }
            Command::ReportSnapshot { to, ok } => {
                let status = if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Command::ConfChange { change, reply } => {
                let taken = if self.raw.raft.leader_id == raft::INVALID_ID {
                    Err(RequestError::NoLeader)
                } else {
                    self.raw
                        .propose_conf_change(Vec::new(), change)
                        .map_err(|_| RequestError::Timeout)
                };
                let _ = reply.send(taken);
            }
            Command::LearnerReady { id, reply } => {
                let _ = reply.send(self.learner_ready(id));
            }
            Command::TransferLeader { target, reply } => {
                let _ = reply.send(self.transfer_leader(target));
            }
            Command::Defragment { reply } => self.start_defrag(reply),
            Command::DefragFinished => {
                let finished = self.defrag.as_ref().and_then(|d| d.done.try_recv().ok());
                if let Some(result) = finished {
                    self.pending_error = self.finish_defrag(result).err();
                }
            }
            Command::Stop => return false,
        }
        true
    }

    /// Starts rewriting the state database on a thread of its own, or joins the
    /// rewrite already under way.
    fn start_defrag(&mut self, reply: oneshot::Sender<Result<(), RequestError>>) {
        if let Some(d) = &mut self.defrag {
            d.waiters.push(reply);
            return;
        }
        let Some(path) = self.log.conn().path().filter(|p| !p.is_empty()) else {
            let _ = reply.send(Ok(()));
            return;
        };
        let path = std::path::PathBuf::from(path);
        let (done_tx, done) = mpsc::sync_channel(1);
        let wake = self.ids.commands.clone();
        // From here on no batch may touch the state database until the rewrite is done.
        self.log.set_state_locked(true);
        let spawned = std::thread::Builder::new()
            .name("defrag".into())
            .spawn(move || {
                let result = crate::storage::defragment(&path).map_err(|e| e.to_string());
                let _ = done_tx.send(result);
                // Blocking send: the Raft thread drains its queue, and must hear of it.
                let _ = wake.send(Command::DefragFinished);
            });
        if let Err(e) = spawned {
            self.log.set_state_locked(false);
            let _ = reply.send(Err(RequestError::Internal(format!(
                "cannot start defragmentation: {e}"
            ))));
            return;
        }
        tracing::info!("starting defragment");
        self.defrag = Some(Defrag {
            waiters: vec![reply],
            done,
            deferred: Vec::new(),
            started: Instant::now(),
        });
    }

    /// Ends the defragmentation: the state database is the Raft thread's again, and
    /// the entries committed meanwhile are applied.
    fn finish_defrag(&mut self, result: Result<(), String>) -> Result<(), StorageError> {
        let Some(defrag) = self.defrag.take() else {
            return Ok(());
        };
        self.log.set_state_locked(false);
        match &result {
            Ok(()) => tracing::info!(
                took = ?defrag.started.elapsed(),
                deferred_entries = defrag.deferred.len(),
                "finished defragment"
            ),
            Err(e) => tracing::warn!(error = %e, "failed to defragment"),
        }
        if !defrag.deferred.is_empty() {
            let log = self.log.clone();
            let mut batch = log.batch(Durability::Deferred)?;
            self.apply(&mut batch, &defrag.deferred)?;
            batch.commit()?;
            self.machine.committed();
            self.reads.applied(self.machine.applied_index());
            self.raw.advance_apply_to(self.machine.applied_index());
        }
        // Also when nothing was deferred: the status then shows the smaller database
        // at once, not after the next write (a Ready applies nothing on an idle member).
        self.after_apply();
        for w in defrag.waiters {
            let _ = w.send(
                result
                    .clone()
                    .map_err(|e| RequestError::Internal(format!("defragment: {e}"))),
            );
        }
        Ok(())
    }

    /// Waits for a defragmentation under way to end (before what cannot wait for it,
    /// such as installing a snapshot).
    fn wait_for_defrag(&mut self) -> Result<(), StorageError> {
        let result = match &self.defrag {
            Some(d) => d
                .done
                .recv()
                .unwrap_or_else(|_| Err("the defragmentation thread died".into())),
            None => return Ok(()),
        };
        self.finish_defrag(result)
    }

    /// The Raft context of read batch `n`. The leader keys pending read indexes by
    /// context across all members, so it carries this member's ID as well: two members'
    /// batch numbers may coincide, and one would otherwise never be answered.
    fn read_context(&self, n: u64) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(16);
        ctx.extend_from_slice(&self.cfg.id.to_be_bytes());
        ctx.extend_from_slice(&n.to_be_bytes());
        ctx
    }

    fn own_read_context(&self, ctx: &[u8]) -> Option<u64> {
        let (member, n) = ctx.split_at_checked(8)?;
        if member != self.cfg.id.to_be_bytes() {
            return None;
        }
        Some(u64::from_be_bytes(n.try_into().ok()?))
    }

    /// Hands waiting proposals to Raft again (see `Proposals`). Only when a leader is
    /// known: without one Raft would refuse them anyway.
    fn repropose(&mut self, now: Instant, leader_changed: bool) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let stale_after = self.cfg.tick_interval * (2 * self.cfg.election_ticks as u32);
        for id in self
            .proposals
            .to_repropose(now, leader_changed, stale_after)
        {
            let Some(data) = self.proposals.data(id).map(<[u8]>::to_vec) else {
                continue;
            };
            if self.raw.propose(Vec::new(), data).is_ok() {
                self.proposals.proposed(id, now);
            }
        }
    }

    /// etcd's `isLearnerReady`: the learner's match index is at least 90 % of the
    /// leader's.
    fn learner_ready(&self, id: u64) -> Result<bool, RequestError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(RequestError::NotLeader);
        }
        let prs = self.raw.raft.prs();
        let leader = prs.get(self.cfg.id).map_or(0, |p| p.matched);
        let learner = prs.get(id).ok_or(RequestError::MemberNotFound)?.matched;
        Ok(learner as f64 >= leader as f64 * 0.9)
    }

    fn transfer_leader(&mut self, target: Option<u64>) -> Result<u64, RequestError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(RequestError::NotLeader);
        }
        let me = self.cfg.id;
        let voters: Vec<u64> = self
            .raw
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != me)
            .collect();
        let target = match target {
            Some(t) if voters.contains(&t) => t,
            Some(_) => return Err(RequestError::BadLeaderTransferee),
            // The follower that has the most of the log takes over soonest.
            None => *voters
                .iter()
                .max_by_key(|id| self.raw.raft.prs().get(**id).map_or(0, |p| p.matched))
                .ok_or(RequestError::BadLeaderTransferee)?,
        };
        tracing::info!(transferee = %format!("{target:x}"), "leadership transfer starting");
        self.raw.transfer_leader(target);
        Ok(target)
    }

    fn on_ready(&mut self) -> Result<(), StorageError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        // The leader may send before persisting (Raft thesis §10.2.1).
        self.outbox.send(rd.take_messages());

        if !rd.snapshot().is_empty() {
            self.wait_for_defrag()?;
            self.install_snapshot(rd.snapshot())?;
        }
        // As etcd's MustSync: new entries, or a new term or vote, must be on disk before
        // Raft acts on them; a commit index alone can be recovered and needs no fsync.
        let previous = self.log.hard_state();
        let new_vote = rd
            .hs()
            .is_some_and(|hs| hs.term != previous.term || hs.vote != previous.vote);
        let must_sync = !rd.entries().is_empty() || new_vote;
        // Committed entries are already in this member's log (raft-rs hands out only
        // entries both committed and persisted), so applying them does not depend on
        // this Ready's log write, and each goes first where someone waits on it: a
        // follower's acknowledgements (persisted messages) wait on its log write, the
        // leader's clients on the apply. The leader's clients so no longer wait for
        // the fsync of newer entries that happened to share their Ready.
        let mut committed = Some(rd.take_committed_entries());
        // A new commit index alone is not written down (etcd writes it unsynced with
        // every Ready): a restart raises the commit index to the state's applied index
        // (`RaftLog::open`), and Raft learns the rest from the leader. Writing it cost
        // every Ready a WAL frame in the log, synced or with the apply.
        let acknowledge_first = !rd.persisted_messages().is_empty();
        if !acknowledge_first {
            self.apply_committed(committed.take().unwrap_or_default())?;
        }
        if must_sync {
            let started = Instant::now();
            let mut batch = self.log.batch(Durability::LogSync)?;
            batch.append(rd.entries())?;
            if let Some(hs) = rd.hs().filter(|_| new_vote) {
                batch.set_hard_state(hs)?;
            }
            batch.commit()?;
            self.metrics
                .wal_fsync
                .observe(started.elapsed().as_secs_f64());
        }
        self.outbox.send(rd.take_persisted_messages());
        if let Some(committed) = committed {
            self.apply_committed(committed)?;
        }

        for rs in rd.take_read_states() {
            if let Some(ctx) = self.own_read_context(&rs.request_ctx) {
                self.reads.confirmed(ctx, rs.index);
            }
        }
        self.reads.applied(self.machine.applied_index());
        if let Some(ss) = rd.ss() {
            self.on_soft_state(ss.leader_id, ss.raft_state);
        }

        // Not `advance`: that would also mark every committed entry handed out so far
        // as applied, which entries deferred by a defragmentation are not.
        let mut light = self.raw.advance_append(rd);
        self.outbox.send(light.take_messages());
        let committed = light.take_committed_entries();
        if !committed.is_empty() {
            self.apply_committed(committed)?;
        }
        // Only what was applied: entries deferred by a defragmentation are not yet.
        self.raw.advance_apply_to(self.machine.applied_index());
        self.publish_status();
        if std::mem::take(&mut self.repropose_after_leader_change) {
            self.repropose(Instant::now(), true);
        }
        Ok(())
    }

    /// Applies entries already durable in the log, in a transaction of their own that
    /// needs no fsync (see `Durability::Deferred`), and then answers their callers.
    fn apply_committed(&mut self, committed: Vec<Entry>) -> Result<(), StorageError> {
        if committed.is_empty() {
            return Ok(());
        }
        let log = self.log.clone();
        let mut batch = log.batch(Durability::Deferred)?;
        match &mut self.defrag {
            Some(d) => d.deferred.extend(committed),
            None => self.apply(&mut batch, &committed)?,
        }
        let started = Instant::now();
        batch.commit()?;
        self.machine.committed();
        self.metrics
            .backend_commit
            .observe(started.elapsed().as_secs_f64());
        self.after_apply();
        self.reads.applied(self.machine.applied_index());
        Ok(())
    }

    /// Replaces the whole replicated state by a snapshot a peer sent (its data is the
    /// path of the received file), in one transaction with the log reset to it.
    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        let meta = snap.get_metadata();
        let path = String::from_utf8(snap.data.to_vec())
            .map_err(|_| StorageError::Corrupt("snapshot path is not UTF-8".into()))?;
        let log = self.log.clone();
        log.conn()
            .execute("ATTACH DATABASE ?1 AS snap", rusqlite::params![path])?;
        let result = (|| {
            let applied = crate::storage::snapshot::attached_applied_index(log.conn())?;
            if applied != meta.index {
                return Err(StorageError::Corrupt(format!(
                    "snapshot file {path} holds index {applied}, the message says {}",
                    meta.index
                )));
            }
            let mut batch = log.batch(Durability::SyncAll)?;
            crate::storage::snapshot::install_attached(batch.conn())?;
            batch.reset_to_snapshot(meta.index, meta.term, meta.get_conf_state())?;
            let keys = self.machine.keys().clone();
            let mut machine = None;
            // Readers wait while the key index is rebuilt and the new state committed.
            keys.replace(|| {
                let index = crate::storage::key_index::KeyIndex::load(batch.conn())?;
                machine = Some(StateMachine::with_lessor(
                    batch.conn(),
                    self.cfg.id,
                    self.lessor.clone(),
                    self.auth.clone(),
                    keys.clone(),
                )?);
                batch.commit()?;
                Ok(index)
            })?;
            self.machine = machine.expect("set by the replacement");
            Ok(())
        })();
        log.conn().execute("DETACH DATABASE snap", [])?;
        let _ = std::fs::remove_file(&path);
        result?;
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installed snapshot from leader"
        );
        self.compacted_at = meta.index;
        self.compact_to = 0;
        self.membership_changed = true;
        self.after_apply();
        Ok(())
    }

    fn apply(
        &mut self,
        batch: &mut crate::storage::LogBatch<'_>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        self.machine.collect_events(self.events.has_subscribers());
        for entry in entries {
            // A new leader's empty entry, applied: every lease gets a full TTL again.
            // On the leader itself everything of earlier terms is applied too, so its
            // deadlines may now decide expiry (etcd promotes its lessor at the same
            // point); followers extend alike so that they report the same TTLs.
            if entry.data.is_empty()
                && entry.get_entry_type() == raft::prelude::EntryType::EntryNormal
            {
                let leading =
                    entry.term == self.raw.raft.term && self.raw.raft.state == StateRole::Leader;
                self.lessor.new_leader(entry.term, leading);
            }
            if let Some(cc) = self
                .machine
                .apply(batch.conn(), entry, &mut self.completions)?
            {
                let cs = self
                    .raw
                    .apply_conf_change(&cc.change)
                    .map_err(|e| StorageError::Corrupt(format!("conf change {}: {e}", cc.index)))?;
                batch.set_conf_state(&cs)?;
                self.membership_changed = true;
                if !cs.voters.contains(&self.cfg.id) && !cs.learners.contains(&self.cfg.id) {
                    tracing::error!("the member has been permanently removed from the cluster");
                    self.status.removed.store(true, Ordering::Release);
                }
            }
        }
        self.machine.persist_progress(batch.conn())?;
        self.maybe_compact_log(batch)
    }

    /// Every `snapshot_count` applied entries, drop log entries that are both applied
    /// and older than the catch-up window: [`COMPACTION_STEP`] entries per apply
    /// batch until the log starts at the chosen index, and never past what the state
    /// database holds durably.
    fn maybe_compact_log(
        &mut self,
        batch: &mut crate::storage::LogBatch<'_>,
    ) -> Result<(), StorageError> {
        let applied = self.machine.applied_index();
        // Entries the state database may still lose in a machine crash (applied, but
        // not yet checkpointed) must stay in the log to be applied again.
        let durable = self
            .checkpointer
            .as_ref()
            .map_or(applied, |c| c.durable_applied());
        if applied >= self.compacted_at + self.cfg.snapshot_count {
            self.compacted_at = applied;
            let keep_from = applied.saturating_sub(self.cfg.snapshot_catchup_entries);
            if keep_from > self.compact_to.max(1) {
                tracing::info!(applied, compact_index = keep_from, "compacting raft log");
                self.compact_to = keep_from;
                // A cut that waits on the checkpointer goes on as soon as it has run
                // (it runs every 2 s), not a whole snapshot-count of entries later.
                if durable < keep_from
                    && let Some(c) = &self.checkpointer
                {
                    c.nudge();
                }
            }
        }
        let first = batch.first_index();
        let to = self
            .compact_to
            .min(first + COMPACTION_STEP)
            .min(durable + 1);
        if to > first {
            batch.compact(to)?;
        }
        Ok(())
    }

    fn after_apply(&mut self) {
        if std::mem::take(&mut self.membership_changed) | self.machine.take_membership_touched() {
            let learner = self.raw.raft.prs().conf().learners().contains(&self.cfg.id);
            self.status.learner.store(learner, Ordering::Release);
            match crate::membership::list(self.log.conn()) {
                Ok(members) => self.outbox.update_members(&members),
                Err(e) => tracing::error!(error = %e, "cannot read membership after a conf change"),
            }
        }
        // Watchers hear of a batch only once it is committed: what they then read from
        // storage is consistent with it.
        let revision = self.machine.revisions().current;
        let events = self.machine.take_events();
        if revision > self.published_revision {
            self.events.publish(crate::watch::EventBatch {
                first: self.published_revision + 1,
                last: revision,
                events,
            });
        }
        self.published_revision = revision;
        for c in self.completions.drain(..) {
            self.proposals.complete(c.id, c.result);
        }
        if let Some(alarms) = self.machine.take_alarms_changed() {
            *self
                .status
                .alarms
                .write()
                .unwrap_or_else(|e| e.into_inner()) = alarms;
        }
        match crate::mvcc::db_size_cached(self.log.conn()) {
            Ok(size) => self.status.db_size.store(size as u64, Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "cannot read the state database's size"),
        }
        let applied = self.machine.applied_index();
        self.status.applied_index.store(applied, Ordering::Release);
        self.metrics.proposals_applied.set(applied as i64);
        self.metrics
            .is_learner
            .set(i64::from(self.status.learner.load(Ordering::Acquire)));
        if let Ok(size) = i64::try_from(self.status.db_size.load(Ordering::Acquire)) {
            self.metrics.db_total_size.set(size);
        }
        self.status
            .revision
            .store(self.machine.revisions().current as u64, Ordering::Release);
        self.status.applied.notify_waiters();
    }

    fn on_soft_state(&mut self, leader: u64, role: StateRole) {
        let previous = self.status.leader.swap(leader, Ordering::AcqRel);
        self.metrics
            .has_leader
            .set(i64::from(leader != raft::INVALID_ID));
        self.metrics
            .is_leader
            .set(i64::from(role == StateRole::Leader));
        if previous != leader {
            // As etcd: a change to another leader counts, losing the leader does not.
            if leader != raft::INVALID_ID {
                self.metrics.leader_changes.inc();
            }
            tracing::info!(leader = %format!("{leader:x}"), role = ?role, term = self.raw.raft.term, "raft leader changed");
            // Reads not yet confirmed were asked of a leadership that is gone.
            self.reads.fail_unconfirmed(|| RequestError::LeaderChanged);
            // Proposals the old leader had not committed may be lost: propose them again
            // (the state machine applies each request ID once).
            self.repropose_after_leader_change = leader != raft::INVALID_ID;
        }
    }

    fn publish_status(&self) {
        self.status
            .term
            .store(self.raw.raft.term, Ordering::Release);
        self.status
            .commit_index
            .store(self.raw.raft.raft_log.committed, Ordering::Release);
        self.metrics
            .proposals_committed
            .set(self.raw.raft.raft_log.committed as i64);
        self.metrics
            .proposals_pending
            .set(self.proposals.len() as i64);
    }
}

#[cfg(test)]
mod tests;
