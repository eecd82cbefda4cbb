//! Checks across keys that need no search: etcd's revision is one counter for the whole
//! store, so
//!
//! - no two acknowledged writes share a revision (each op here writes one key), and
//! - once a write with revision `r` returned, every operation called afterwards sees a
//!   header revision of at least `r`, and every write called afterwards gets a revision
//!   above `r` (real time order, across keys and members: this is what a stale read
//!   from a lagging member, or a revision going backwards after a crash, breaks).
//!
//! The per-key search cannot see the second rule when the keys differ.

use std::collections::HashMap;

use crate::history::{History, Operation};

/// Every breach found (empty: none).
pub fn check(history: &History) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_revision: HashMap<i64, usize> = HashMap::new();
    for op in &history.operations {
        if let Some(rev) = op.response().and_then(|r| r.created_revision())
            && let Some(other) = by_revision.insert(rev, op.id)
        {
            problems.push(format!(
                "operations {other} and {} were both acknowledged with revision {rev}",
                op.id
            ));
        }
    }

    // Writes by return time, with the running maximum of their revisions.
    let mut writes: Vec<(u64, i64, usize)> = history
        .operations
        .iter()
        .filter_map(|op| {
            let rev = op.response()?.created_revision()?;
            Some((op.ret, rev, op.id))
        })
        .collect();
    writes.sort();
    let mut running: Vec<(u64, i64, usize)> = Vec::with_capacity(writes.len());
    for (ret, rev, id) in writes {
        let best = match running.last() {
            Some(&(_, max, max_id)) if max >= rev => (ret, max, max_id),
            _ => (ret, rev, id),
        };
        running.push(best);
    }
    let latest_before = |op: &Operation| -> Option<(i64, usize)> {
        let n = running.partition_point(|(ret, _, _)| *ret < op.call);
        n.checked_sub(1).map(|i| (running[i].1, running[i].2))
    };
    for op in &history.operations {
        let Some(response) = op.response() else {
            continue;
        };
        let Some((floor, writer)) = latest_before(op) else {
            continue;
        };
        match response.created_revision() {
            Some(rev) if rev <= floor => problems.push(format!(
                "operation {} (member {}) wrote at revision {rev}, but operation {writer} had \
                 returned revision {floor} before it was called",
                op.id, op.member
            )),
            None if response.header() < floor => problems.push(format!(
                "operation {} (member {}) answered with header revision {}, but operation \
                 {writer} had returned revision {floor} before it was called: a stale answer",
                op.id,
                op.member,
                response.header()
            )),
            _ => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Request, Response};

    use crate::history::ok_op as op;

    fn put(id: usize, call: u64, ret: u64, key: &str, rev: i64) -> Operation {
        op(
            id,
            call,
            ret,
            Request::Put {
                key: key.into(),
                value: format!("v{id}"),
                prev_kv: false,
            },
            Response::Put {
                header: rev,
                prev: None,
            },
        )
    }

    #[test]
    fn a_read_of_another_key_must_not_go_back_in_time() {
        let read = op(
            1,
            20,
            30,
            Request::Get { key: "b".into() },
            Response::Get {
                header: 4,
                kv: None,
            },
        );
        let h = History {
            operations: vec![put(0, 0, 10, "a", 5), read],
            ..Default::default()
        };
        assert_eq!(check(&h).len(), 1, "{:?}", check(&h));
    }

    #[test]
    fn shared_or_backwards_revisions_are_reported() {
        let h = History {
            operations: vec![put(0, 0, 10, "a", 5), put(1, 20, 30, "b", 5)],
            ..Default::default()
        };
        assert_eq!(check(&h).len(), 2, "{:?}", check(&h));
        let h = History {
            operations: vec![put(0, 0, 10, "a", 5), put(1, 5, 30, "b", 6)],
            ..Default::default()
        };
        assert!(check(&h).is_empty());
    }
}
