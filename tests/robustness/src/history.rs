//! What the clients did: every request with the time it was called, the time its answer
//! (or error) came back, and what came back. The checkers read nothing else.
//!
//! Times are nanoseconds on one monotonic clock shared by every client of a run, so
//! "returned before it was called" is a real-time order the checkers may rely on. A
//! client has at most one request in flight: its next call is never earlier than its
//! previous return (checked by [`History::validate`]).

use serde::{Deserialize, Serialize};

/// A key's value, as etcd returns it in a range response, a `prev_kv` or a watch event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
}

/// One single-key request. Every request touches one key, which is what lets the
/// linearizability check run per key (a history is linearizable if and only if each
/// key's sub-history is: Herlihy and Wing's locality).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A linearizable `Range` of one key.
    Get { key: String },
    /// `Put`, asking for the previous value when `prev_kv` is set.
    Put {
        key: String,
        value: String,
        prev_kv: bool,
    },
    /// `DeleteRange` of one key, with `prev_kv`.
    Delete { key: String },
    /// A compare-and-swap `Txn`: if `mod_revision(key) == expected` (0: the key does
    /// not exist) then put `value`, else get the key.
    Cas {
        key: String,
        expected: i64,
        value: String,
    },
}

impl Request {
    pub fn key(&self) -> &str {
        match self {
            Request::Get { key }
            | Request::Put { key, .. }
            | Request::Delete { key }
            | Request::Cas { key, .. } => key,
        }
    }

    /// Whether it can change the store (so a failure leaves its effect unknown).
    pub fn is_write(&self) -> bool {
        !matches!(self, Request::Get { .. })
    }
}

/// What a request returned when it succeeded. `header` is the response header's
/// revision: for a write that created a revision, the write's own revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Get {
        header: i64,
        kv: Option<Kv>,
    },
    Put {
        header: i64,
        prev: Option<Kv>,
    },
    Delete {
        header: i64,
        deleted: i64,
        prev: Option<Kv>,
    },
    /// `kv` is the else branch's range result (`None` when the compare succeeded, or
    /// when it failed because the key does not exist).
    Cas {
        header: i64,
        succeeded: bool,
        kv: Option<Kv>,
    },
}

impl Response {
    pub fn header(&self) -> i64 {
        match self {
            Response::Get { header, .. }
            | Response::Put { header, .. }
            | Response::Delete { header, .. }
            | Response::Cas { header, .. } => *header,
        }
    }

    /// The revision this response's write created, if it created one.
    pub fn created_revision(&self) -> Option<i64> {
        match self {
            Response::Put { header, .. } => Some(*header),
            Response::Delete {
                header, deleted, ..
            } if *deleted > 0 => Some(*header),
            Response::Cas {
                header,
                succeeded: true,
                ..
            } => Some(*header),
            _ => None,
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok(Response),
    /// An error or a timeout. A failed write is indeterminate: it may have been applied
    /// (at any time after its call, even after the error came back) or never. A failed
    /// read has no effect and is left out of the checks.
    Failed(String),
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Index in [`History::operations`].
    pub id: usize,
    pub client: usize,
    /// The member the client talked to (index in the cluster).
    pub member: usize,
    pub call: u64,
    pub ret: u64,
    pub request: Request,
    pub outcome: Outcome,
}

impl Operation {
    pub fn response(&self) -> Option<&Response> {
        match &self.outcome {
            Outcome::Ok(r) => Some(r),
            Outcome::Failed(_) => None,
        }
    }
}

/// One watch response as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    pub watcher: usize,
    /// Which stream of this watcher (it re-opens its watch after errors, and now and
    /// then on purpose, to exercise resumption).
    pub stream: usize,
    pub time: u64,
    pub header: i64,
    pub events: Vec<WatchEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// false: a put; true: a delete (`kv` then carries the key and the delete's
    /// revision as `mod_revision`).
    pub delete: bool,
    pub kv: Kv,
    pub prev: Option<Kv>,
}

/// How one watch stream started and ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStream {
    pub watcher: usize,
    pub stream: usize,
    pub member: usize,
    /// The revision it asked to start from.
    pub start_revision: i64,
    /// Why it ended (`None`: it was still open when the run ended).
    pub ended: Option<String>,
}

/// Everything one run recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub operations: Vec<Operation>,
    pub watch_streams: Vec<WatchStream>,
    pub watch_responses: Vec<WatchResponse>,
    /// The revision every watched write is at or below once the run is over (from a
    /// final write every watcher waited for).
    pub final_revision: i64,
}

impl History {
    /// The recording's own assumptions: each operation returns after it is called, and
    /// each client has one request in flight at a time.
    pub fn validate(&self) -> Result<(), String> {
        let mut last_ret: std::collections::HashMap<usize, u64> = Default::default();
        let mut by_call: Vec<&Operation> = self.operations.iter().collect();
        by_call.sort_by_key(|o| o.call);
        for (i, op) in self.operations.iter().enumerate() {
            if op.id != i {
                return Err(format!("operation {i} carries id {}", op.id));
            }
            if op.ret < op.call {
                return Err(format!("operation {i} returned before it was called"));
            }
        }
        for op in by_call {
            if let Some(prev) = last_ret.insert(op.client, op.ret)
                && op.call < prev
            {
                return Err(format!(
                    "client {} called operation {} before its previous one returned",
                    op.client, op.id
                ));
            }
        }
        Ok(())
    }

    /// Counts by kind, for reports.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for op in &self.operations {
            match (&op.request, &op.outcome) {
                (_, Outcome::Failed(_)) if op.request.is_write() => s.indeterminate += 1,
                (_, Outcome::Failed(_)) => s.failed_reads += 1,
                (Request::Get { .. }, _) => s.gets += 1,
                (Request::Put { .. }, _) => s.puts += 1,
                (Request::Delete { .. }, _) => s.deletes += 1,
                (Request::Cas { .. }, _) => s.cas += 1,
            }
        }
        s.operations = self.operations.len();
        s.watch_events = self.watch_responses.iter().map(|r| r.events.len()).sum();
        s.watch_streams = self.watch_streams.len();
        s
    }
}

/// Operation counts of one history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub operations: usize,
    pub gets: usize,
    pub puts: usize,
    pub deletes: usize,
    pub cas: usize,
    /// Writes that failed or timed out: applied or not, nobody knows.
    pub indeterminate: usize,
    pub failed_reads: usize,
    pub watch_events: usize,
    pub watch_streams: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} operations ({} gets, {} puts, {} deletes, {} compare-and-swaps succeeded; \
             {} writes indeterminate, {} reads failed), {} watch events over {} streams",
            self.operations,
            self.gets,
            self.puts,
            self.deletes,
            self.cas,
            self.indeterminate,
            self.failed_reads,
            self.watch_events,
            self.watch_streams
        )
    }
}

/// A completed operation of its own client on member 0, for the checkers' unit tests.
#[cfg(test)]
pub(crate) fn ok_op(
    id: usize,
    call: u64,
    ret: u64,
    request: Request,
    response: Response,
) -> Operation {
    Operation {
        id,
        client: id,
        member: 0,
        call,
        ret,
        request,
        outcome: Outcome::Ok(response),
    }
}
