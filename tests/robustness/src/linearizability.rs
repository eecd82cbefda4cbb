//! The linearizability check: Wing and Gong's search with Lowe's memoisation, as
//! porcupine does it, run per key.
//!
//! The operations of one key become a time-ordered list of call and return entries.
//! The search walks the list: at a call it tries to linearize that operation now (the
//! model accepts it from the current state, and the pair "set of linearized
//! operations, state" was not explored before), removing it from the list and starting
//! over; at a return it has met an operation that had to be linearized already, so it
//! undoes the latest choice and tries the next one. The history is linearizable once
//! no return is left. Indeterminate operations (failed writes) have no return entry:
//! they may take effect anywhere after their call, or never.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::history::{History, Operation, Outcome};
use crate::model::{KeyState, step};

/// Where the search gave up on one key.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub key: String,
    /// The longest prefix the search could linearize, in order (operation ids).
    pub linearized: Vec<usize>,
    /// The key's state after that prefix.
    pub state: KeyState,
    /// The operation whose return came while it could not be linearized.
    pub stuck_at: usize,
    /// Ids of the key's operations that overlap the failing window: from the first
    /// call not in `linearized` to the return of `stuck_at`.
    pub window: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub enum Verdict {
    Linearizable,
    Violation(Box<Violation>),
    /// The search ran out of its step budget: no answer (a failure, not a pass).
    Inconclusive {
        steps: u64,
    },
}

/// The verdict for every key of `history` (failed reads are left out: they changed
/// nothing), with at most `max_steps` search steps per key.
pub fn check(history: &History, max_steps: u64) -> BTreeMap<String, Verdict> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &history.operations {
        if matches!(op.outcome, Outcome::Failed(_)) && !op.request.is_write() {
            continue;
        }
        by_key.entry(op.request.key()).or_default().push(op);
    }
    by_key
        .into_iter()
        .map(|(key, ops)| {
            (
                key.to_string(),
                check_key(key, &ops, KeyState::default(), max_steps),
            )
        })
        .collect()
}

const HEAD: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_return: bool,
    prev: usize,
    next: usize,
}

/// A doubly linked list of call and return entries that can take an operation out and
/// put it back in LIFO order.
struct Entries {
    head_next: usize,
    entries: Vec<Entry>,
    call_of: Vec<usize>,
    return_of: Vec<Option<usize>>,
    returns_left: usize,
}

impl Entries {
    fn new(ops: &[&Operation]) -> Entries {
        // (time, call before return at the same instant: such operations overlap).
        let mut order: Vec<(u64, bool, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            order.push((op.call, false, i));
            if matches!(op.outcome, Outcome::Ok(_)) {
                order.push((op.ret, true, i));
            }
        }
        order.sort();
        let n = order.len();
        let mut call_of = vec![0; ops.len()];
        let mut return_of = vec![None; ops.len()];
        let entries = order
            .iter()
            .enumerate()
            .map(|(i, &(_, is_return, op))| {
                if is_return {
                    return_of[op] = Some(i);
                } else {
                    call_of[op] = i;
                }
                Entry {
                    op,
                    is_return,
                    prev: if i == 0 { HEAD } else { i - 1 },
                    next: if i + 1 == n { HEAD } else { i + 1 },
                }
            })
            .collect();
        let returns_left = return_of.iter().flatten().count();
        Entries {
            head_next: if n == 0 { HEAD } else { 0 },
            entries,
            call_of,
            return_of,
            returns_left,
        }
    }

    fn next(&self, at: usize) -> usize {
        if at == HEAD {
            self.head_next
        } else {
            self.entries[at].next
        }
    }

    fn set_next(&mut self, at: usize, to: usize) {
        if at == HEAD {
            self.head_next = to;
        } else {
            self.entries[at].next = to;
        }
    }

    fn unlink(&mut self, e: usize) {
        let Entry { prev, next, .. } = self.entries[e];
        self.set_next(prev, next);
        if next != HEAD {
            self.entries[next].prev = prev;
        }
    }

    fn relink(&mut self, e: usize) {
        let Entry { prev, next, .. } = self.entries[e];
        self.set_next(prev, e);
        if next != HEAD {
            self.entries[next].prev = e;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        if let Some(r) = self.return_of[op] {
            self.unlink(r);
            self.returns_left -= 1;
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(r) = self.return_of[op] {
            self.relink(r);
            self.returns_left += 1;
        }
        self.relink(self.call_of[op]);
    }
}

/// Checks one key's operations from `initial`.
pub fn check_key(key: &str, ops: &[&Operation], initial: KeyState, max_steps: u64) -> Verdict {
    let mut list = Entries::new(ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, KeyState)> = HashSet::new();
    // (operation, state before it).
    let mut stack: Vec<(usize, KeyState)> = Vec::new();
    let mut state = initial;
    let mut at = list.head_next;
    let mut steps = 0u64;
    let mut deepest: Option<(Vec<usize>, KeyState, usize)> = None;
    while list.returns_left > 0 {
        steps += 1;
        if steps > max_steps {
            return Verdict::Inconclusive { steps };
        }
        let entry = (at != HEAD).then(|| list.entries[at]);
        match entry {
            Some(e) if !e.is_return => {
                let op = ops[e.op];
                let next_state = step(&state, &op.request, &op.outcome);
                let mut advanced = false;
                if let Some(next_state) = next_state {
                    let mut bits = linearized.clone();
                    bits[e.op / 64] |= 1 << (e.op % 64);
                    if seen.insert((bits.clone(), next_state.clone())) {
                        stack.push((e.op, std::mem::replace(&mut state, next_state)));
                        linearized = bits;
                        list.lift(e.op);
                        at = list.head_next;
                        advanced = true;
                    }
                }
                if !advanced {
                    at = list.next(at);
                }
            }
            _ => {
                // A return (or the end): the operation behind it was never linearized.
                if let Some(e) = entry
                    && deepest
                        .as_ref()
                        .is_none_or(|(lin, _, _)| stack.len() >= lin.len())
                {
                    deepest = Some((
                        stack.iter().map(|(op, _)| ops[*op].id).collect(),
                        state.clone(),
                        e.op,
                    ));
                }
                let Some((op, before)) = stack.pop() else {
                    let (linearized, state, stuck) = deepest.expect("stuck at a return");
                    return Verdict::Violation(Box::new(violation(
                        key, ops, linearized, state, stuck,
                    )));
                };
                linearized[op / 64] &= !(1 << (op % 64));
                list.unlift(op);
                state = before;
                at = list.next(list.call_of[op]);
            }
        }
    }
    Verdict::Linearizable
}

fn violation(
    key: &str,
    ops: &[&Operation],
    linearized: Vec<usize>,
    state: KeyState,
    stuck: usize,
) -> Violation {
    let done: HashSet<usize> = linearized.iter().copied().collect();
    let end = ops[stuck].ret;
    let start = ops
        .iter()
        .filter(|o| !done.contains(&o.id))
        .map(|o| o.call)
        .min()
        .unwrap_or(ops[stuck].call);
    let window = ops
        .iter()
        .filter(|o| {
            let ret = match o.outcome {
                Outcome::Ok(_) => o.ret,
                Outcome::Failed(_) => u64::MAX,
            };
            o.call <= end && ret >= start
        })
        .map(|o| o.id)
        .collect();
    Violation {
        key: key.to_string(),
        linearized,
        state,
        stuck_at: ops[stuck].id,
        window,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Kv, Request, Response};

    struct Builder(Vec<Operation>);

    impl Builder {
        fn op(&mut self, client: usize, call: u64, ret: u64, request: Request, outcome: Outcome) {
            let id = self.0.len();
            self.0.push(Operation {
                id,
                client,
                member: 0,
                call,
                ret,
                request,
                outcome,
            });
        }

        fn put(&mut self, client: usize, call: u64, ret: u64, value: &str, rev: Option<i64>) {
            let request = Request::Put {
                key: "k".into(),
                value: value.into(),
                prev_kv: false,
            };
            let outcome = match rev {
                Some(header) => Outcome::Ok(Response::Put { header, prev: None }),
                None => Outcome::Failed("timed out".into()),
            };
            self.op(client, call, ret, request, outcome);
        }

        fn get(&mut self, client: usize, call: u64, ret: u64, seen: Option<(&str, i64)>) {
            let header = seen.map_or(1, |(_, r)| r);
            let kv = seen.map(|(v, r)| Kv {
                key: "k".into(),
                value: v.into(),
                create_revision: r,
                mod_revision: r,
                version: 1,
            });
            self.op(
                client,
                call,
                ret,
                Request::Get { key: "k".into() },
                Outcome::Ok(Response::Get { header, kv }),
            );
        }

        fn verdict(&self) -> Verdict {
            let h = History {
                operations: self.0.clone(),
                ..Default::default()
            };
            h.validate().unwrap();
            check(&h, 1_000_000).remove("k").expect("key k checked")
        }
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let mut b = Builder(Vec::new());
        b.put(0, 0, 10, "a", Some(2));
        b.put(0, 20, 40, "b", Some(3));
        b.get(1, 25, 30, Some(("a", 2)));
        b.get(2, 26, 31, Some(("b", 3)));
        assert!(matches!(b.verdict(), Verdict::Linearizable));
    }

    #[test]
    fn a_stale_read_after_a_write_returned_is_a_violation() {
        let mut b = Builder(Vec::new());
        b.put(0, 0, 10, "a", Some(2));
        b.put(0, 20, 30, "b", Some(3));
        b.get(1, 40, 50, Some(("a", 2)));
        let Verdict::Violation(v) = b.verdict() else {
            panic!("stale read accepted")
        };
        assert_eq!(v.stuck_at, 2);
        assert!(v.window.contains(&2));
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        let mut b = Builder(Vec::new());
        b.put(0, 0, 10, "a", Some(2));
        b.get(1, 20, 30, None);
        assert!(matches!(b.verdict(), Verdict::Violation(_)));
    }

    #[test]
    fn an_indeterminate_write_may_apply_late_or_never() {
        let mut b = Builder(Vec::new());
        b.put(0, 0, 10, "a", None);
        b.get(1, 20, 30, None);
        b.get(1, 40, 50, Some(("a", 2)));
        assert!(matches!(b.verdict(), Verdict::Linearizable));
        let mut b = Builder(Vec::new());
        b.put(0, 0, 10, "a", None);
        b.get(1, 20, 30, None);
        assert!(matches!(b.verdict(), Verdict::Linearizable));
        // But not before it was called.
        let mut b = Builder(Vec::new());
        b.get(1, 0, 5, Some(("a", 2)));
        b.put(0, 10, 20, "a", None);
        assert!(matches!(b.verdict(), Verdict::Violation(_)));
    }

    #[test]
    fn a_value_read_back_after_a_newer_one_is_a_violation() {
        let mut b = Builder(Vec::new());
        b.put(0, 0, 100, "a", Some(2));
        b.put(1, 0, 100, "b", Some(3));
        b.get(2, 10, 20, Some(("b", 3)));
        b.get(2, 30, 40, Some(("a", 2)));
        assert!(matches!(b.verdict(), Verdict::Violation(_)));
    }
}
