//! Callers waiting on the Raft node: proposals until they are applied, linearizable
//! reads until a read index is confirmed and applied.
//!
//! Every waiter carries a deadline. Raft silently drops what it cannot handle (a
//! proposal forwarded to a leader that then died, a read index asked of a member with no
//! leader), so the node expires waiters itself rather than leak them.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::error::RequestError;
use crate::state_machine::ApplyResult;

pub type ProposalReply = oneshot::Sender<ApplyResult>;
pub type ReadReply = oneshot::Sender<Result<(), RequestError>>;

/// A proposal whose caller is waiting for it to be applied.
struct Pending {
    reply: ProposalReply,
    deadline: Instant,
    /// The encoded log entry, kept to propose again.
    data: Vec<u8>,
    /// When it was last handed to Raft; `None` if Raft refused it (no leader).
    proposed_at: Option<Instant>,
}

/// Proposals in flight. Raft may lose a proposal without telling anyone: one forwarded
/// to a leader that is handing over leadership, or to a leader that then dies. Since
/// the state machine applies a request ID only once, proposals that have not come back
/// are simply proposed again — after a leader change, or when they have waited long —
/// until their deadline.
#[derive(Default)]
pub struct Proposals {
    waiting: HashMap<u64, Pending>,
}

impl Proposals {
    pub fn insert(&mut self, id: u64, reply: ProposalReply, deadline: Instant, data: Vec<u8>) {
        self.waiting.insert(
            id,
            Pending {
                reply,
                deadline,
                data,
                proposed_at: None,
            },
        );
    }

    /// Records that Raft accepted the proposal (it may still lose it later).
    pub fn proposed(&mut self, id: u64, now: Instant) {
        if let Some(p) = self.waiting.get_mut(&id) {
            p.proposed_at = Some(now);
        }
    }

    pub fn data(&self, id: u64) -> Option<&[u8]> {
        self.waiting.get(&id).map(|p| p.data.as_slice())
    }

    pub fn complete(&mut self, id: u64, result: ApplyResult) {
        if let Some(p) = self.waiting.remove(&id) {
            // The caller may have given up already; nothing to do then.
            let _ = p.reply.send(result);
        }
    }

    /// Proposals to hand to Raft again: all of them after a leader change, otherwise
    /// those Raft refused and those outstanding for longer than `stale_after`.
    pub fn to_repropose(
        &self,
        now: Instant,
        leader_changed: bool,
        stale_after: std::time::Duration,
    ) -> Vec<u64> {
        self.waiting
            .iter()
            .filter(|(_, p)| {
                leader_changed
                    || p.proposed_at
                        .is_none_or(|at| now.saturating_duration_since(at) >= stale_after)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Drops proposals past their deadline or given up by their caller; returns how
    /// many there were (they failed).
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.waiting.len();
        self.waiting
            .retain(|_, p| p.deadline > now && !p.reply.is_closed());
        before - self.waiting.len()
    }

    /// Proposals waiting to be applied.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.waiting.len()
    }
}

/// Linearizable reads, batched: all reads that arrive while one read index is in flight
/// share the next one.
#[derive(Default)]
pub struct Reads {
    /// Not yet sent to Raft.
    queued: Vec<(ReadReply, Instant)>,
    /// Sent to Raft under a context number, awaiting its read state; with when it was
    /// last sent.
    in_flight: HashMap<u64, (Instant, Vec<(ReadReply, Instant)>)>,
    /// Confirmed at a log index, waiting until that index is applied. Ascending.
    confirmed: VecDeque<(u64, Vec<(ReadReply, Instant)>)>,
    next_ctx: u64,
}

impl Reads {
    pub fn queue(&mut self, reply: ReadReply, deadline: Instant) {
        self.queued.push((reply, deadline));
    }

    /// Moves the queued reads under a fresh context; returns it if there were any.
    pub fn start_batch(&mut self) -> Option<u64> {
        if self.queued.is_empty() {
            return None;
        }
        self.next_ctx += 1;
        let ctx = self.next_ctx;
        self.in_flight
            .insert(ctx, (Instant::now(), std::mem::take(&mut self.queued)));
        Some(ctx)
    }

    /// Raft confirmed context `ctx` at `index`.
    pub fn confirmed(&mut self, ctx: u64, index: u64) {
        if let Some((_, batch)) = self.in_flight.remove(&ctx) {
            let pos = self.confirmed.partition_point(|(i, _)| *i <= index);
            self.confirmed.insert(pos, (index, batch));
        }
    }

    /// Releases reads whose index has been applied.
    pub fn applied(&mut self, applied: u64) {
        while self.confirmed.front().is_some_and(|(i, _)| *i <= applied) {
            let (_, batch) = self.confirmed.pop_front().expect("front exists");
            for (reply, _) in batch {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Fails every read not yet confirmed (e.g. leadership was lost).
    pub fn fail_unconfirmed(&mut self, err: impl Fn() -> RequestError) {
        for (_, (_, batch)) in self.in_flight.drain() {
            for (reply, _) in batch {
                let _ = reply.send(Err(err()));
            }
        }
    }

    pub fn expire(&mut self, now: Instant) {
        let live = |(reply, deadline): &(ReadReply, Instant)| *deadline > now && !reply.is_closed();
        self.in_flight.retain(|_, (_, batch)| {
            batch.retain(live);
            !batch.is_empty()
        });
    }

    /// Batches sent longer than `after` ago without an answer: Raft does not resend a
    /// read index whose request or response was lost, so the node asks again under the
    /// same context (a late first answer then finds nothing to release).
    pub fn unanswered(&mut self, now: Instant, after: std::time::Duration) -> Vec<u64> {
        let mut out = Vec::new();
        for (ctx, (sent, _)) in self.in_flight.iter_mut() {
            if now.saturating_duration_since(*sent) >= after {
                *sent = now;
                out.push(*ctx);
            }
        }
        out
    }
}
