//! etcd's watch guarantees, checked against the watchers' recordings and the clients'
//! history of the same run.
//!
//! Every watcher watches the whole key prefix from revision 1 (the store starts empty)
//! with `prev_kv`, and when a stream breaks it re-opens the watch from the revision
//! after the last event it saw. Every write of a run is under that prefix, so each
//! watcher must see every revision from 2 to the run's final revision exactly once:
//!
//! - **ordered**: revisions strictly increase across a watcher's responses;
//! - **unique**: no event twice, also across a resumption;
//! - **atomic**: all events of one revision come in one response;
//! - **gap-free and resumable**: the revisions seen are exactly 2..=final, and a stream
//!   never starts before the revision it asked for;
//! - **agreement**: every watcher sees the same events;
//! - **true to the history**: each acknowledged write is an event at its revision with
//!   its value, and each event is some attempted write (values are unique);
//! - **`prev_kv`, `create_revision`, `version`** follow from the key's previous event.

use std::collections::{BTreeMap, HashMap};

use crate::history::{History, Kv, Outcome, Request, WatchEvent};

/// Every breach found (empty: none).
pub fn check(history: &History) -> Vec<String> {
    let mut problems = Vec::new();
    let watchers: Vec<usize> = {
        let mut w: Vec<usize> = history.watch_streams.iter().map(|s| s.watcher).collect();
        w.sort();
        w.dedup();
        w
    };
    let mut sequences: Vec<(usize, Vec<WatchEvent>)> = Vec::new();
    for &w in &watchers {
        let (events, mut found) = watcher_sequence(history, w);
        problems.append(&mut found);
        sequences.push((w, events));
    }
    if let Some((first, reference)) = sequences.first() {
        for (w, events) in &sequences[1..] {
            if let Some(i) =
                (0..reference.len().max(events.len())).find(|&i| reference.get(i) != events.get(i))
            {
                problems.push(format!(
                    "watchers {first} and {w} disagree at their event {i}: {:?} against {:?}",
                    reference.get(i),
                    events.get(i)
                ));
            }
        }
        problems.append(&mut against_history(history, reference));
        problems.append(&mut per_key_fields(reference));
    }
    problems
}

/// A watcher's events over all its streams, after checking order, uniqueness,
/// atomicity, start revisions and contiguity.
fn watcher_sequence(history: &History, watcher: usize) -> (Vec<WatchEvent>, Vec<String>) {
    let mut problems = Vec::new();
    let starts: HashMap<usize, i64> = history
        .watch_streams
        .iter()
        .filter(|s| s.watcher == watcher)
        .map(|s| (s.stream, s.start_revision))
        .collect();
    let mut responses: Vec<_> = history
        .watch_responses
        .iter()
        .filter(|r| r.watcher == watcher)
        .collect();
    responses.sort_by_key(|r| (r.stream, r.time));
    let mut events = Vec::new();
    let mut last_rev = 1;
    // revision -> (stream, response time) of the response that carried it.
    let mut carried_by: HashMap<i64, (usize, u64)> = HashMap::new();
    for r in responses {
        let start = starts.get(&r.stream).copied().unwrap_or(1);
        for e in &r.events {
            let rev = e.kv.mod_revision;
            if rev < start {
                problems.push(format!(
                    "watcher {watcher} stream {} asked to start at revision {start} but got an \
                     event at {rev}",
                    r.stream
                ));
            }
            if rev > r.header {
                problems.push(format!(
                    "watcher {watcher}: event at revision {rev} in a response with header \
                     revision {}",
                    r.header
                ));
            }
            match carried_by.get(&rev) {
                Some(&(s, t)) if (s, t) != (r.stream, r.time) => problems.push(format!(
                    "watcher {watcher}: revision {rev} came in two responses (not atomic, or \
                     delivered twice)"
                )),
                _ => {}
            }
            carried_by.insert(rev, (r.stream, r.time));
            if rev < last_rev
                || (rev == last_rev
                    && events
                        .last()
                        .is_some_and(|p: &WatchEvent| p.kv.key >= e.kv.key))
            {
                problems.push(format!(
                    "watcher {watcher}: event at revision {rev} ({}) after revision {last_rev}: \
                     out of order or duplicated",
                    e.kv.key
                ));
            }
            last_rev = last_rev.max(rev);
            events.push(e.clone());
        }
    }
    let seen: std::collections::HashSet<i64> = events.iter().map(|e| e.kv.mod_revision).collect();
    let missing: Vec<i64> = (2..=history.final_revision)
        .filter(|rev| !seen.contains(rev))
        .take(10)
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "watcher {watcher} missed revisions {missing:?} (of 2..={})",
            history.final_revision
        ));
    }
    if let Some(beyond) = seen.iter().find(|&&r| r > history.final_revision) {
        problems.push(format!(
            "watcher {watcher} saw revision {beyond}, beyond the final revision {}",
            history.final_revision
        ));
    }
    (events, problems)
}

/// Acknowledged writes appear at their revision; every event is an attempted write.
fn against_history(history: &History, events: &[WatchEvent]) -> Vec<String> {
    let mut problems = Vec::new();
    let by_rev: BTreeMap<i64, &WatchEvent> =
        events.iter().map(|e| (e.kv.mod_revision, e)).collect();
    // Puts and compare-and-swaps by value (values are unique); failed deletes by key.
    let mut writes_of_value: HashMap<&str, usize> = HashMap::new();
    let mut failed_deletes: HashMap<&str, usize> = HashMap::new();
    let mut acked_deletes: HashMap<i64, usize> = HashMap::new();
    for op in &history.operations {
        let acked = op.response().and_then(|r| r.created_revision());
        match (&op.request, &op.outcome) {
            (Request::Put { value, .. } | Request::Cas { value, .. }, _) => {
                writes_of_value.insert(value, op.id);
            }
            (Request::Delete { key }, Outcome::Failed(_)) => {
                *failed_deletes.entry(key).or_default() += 1;
            }
            (Request::Delete { .. }, Outcome::Ok(_)) => {
                if let Some(rev) = acked {
                    acked_deletes.insert(rev, op.id);
                }
            }
            _ => {}
        }
        let Some(rev) = acked else { continue };
        let expected = match &op.request {
            Request::Put { key, value, .. } | Request::Cas { key, value, .. } => {
                Some((key.as_str(), false, value.as_str()))
            }
            Request::Delete { key } => Some((key.as_str(), true, "")),
            Request::Get { .. } => None,
        };
        let Some((key, delete, value)) = expected else {
            continue;
        };
        match by_rev.get(&rev) {
            Some(e) if e.kv.key == key && e.delete == delete && (delete || e.kv.value == value) => {
            }
            other => problems.push(format!(
                "operation {} was acknowledged at revision {rev}, but the watchers saw {other:?} \
                 there",
                op.id
            )),
        }
    }
    for e in events {
        if e.delete {
            if acked_deletes.contains_key(&e.kv.mod_revision) {
                continue;
            }
            match failed_deletes.get_mut(e.kv.key.as_str()) {
                Some(n) if *n > 0 => *n -= 1,
                _ => problems.push(format!(
                    "a delete of {} at revision {} that no client asked for",
                    e.kv.key, e.kv.mod_revision
                )),
            }
        } else if !writes_of_value.contains_key(e.kv.value.as_str()) {
            problems.push(format!(
                "a put of {}={:?} at revision {} that no client asked for",
                e.kv.key, e.kv.value, e.kv.mod_revision
            ));
        }
    }
    problems
}

/// `prev_kv`, `create_revision` and `version` of each event follow from the key's
/// previous event (every key starts absent).
fn per_key_fields(events: &[WatchEvent]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut last: HashMap<&str, Kv> = HashMap::new();
    for e in events {
        let key = e.kv.key.as_str();
        let before = last.get(key);
        if e.prev.as_ref() != before {
            problems.push(format!(
                "event at revision {} on {key}: prev_kv {:?}, but the key was {before:?}",
                e.kv.mod_revision, e.prev
            ));
        }
        if e.delete {
            if before.is_none() {
                problems.push(format!(
                    "delete of absent key {key} at revision {}",
                    e.kv.mod_revision
                ));
            }
            last.remove(key);
            continue;
        }
        let (create, version) = match before {
            Some(b) => (b.create_revision, b.version + 1),
            None => (e.kv.mod_revision, 1),
        };
        if (e.kv.create_revision, e.kv.version) != (create, version) {
            problems.push(format!(
                "event at revision {} on {key}: create_revision {} version {}, expected {create} \
                 and {version}",
                e.kv.mod_revision, e.kv.create_revision, e.kv.version
            ));
        }
        last.insert(key, e.kv.clone());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Operation, Response, WatchResponse, WatchStream};

    fn kv(key: &str, value: &str, create: i64, rev: i64, version: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: rev,
            version,
        }
    }

    fn history(events: Vec<Vec<WatchEvent>>) -> History {
        let put = |id: usize, value: &str, rev: i64| Operation {
            id,
            client: 0,
            member: 0,
            call: id as u64 * 10,
            ret: id as u64 * 10 + 5,
            request: Request::Put {
                key: "k/a".into(),
                value: value.into(),
                prev_kv: false,
            },
            outcome: Outcome::Ok(Response::Put {
                header: rev,
                prev: None,
            }),
        };
        History {
            operations: vec![put(0, "x", 2), put(1, "y", 3)],
            watch_streams: vec![WatchStream {
                watcher: 0,
                stream: 0,
                member: 0,
                start_revision: 1,
                ended: None,
            }],
            watch_responses: events
                .into_iter()
                .enumerate()
                .map(|(i, events)| WatchResponse {
                    watcher: 0,
                    stream: 0,
                    time: i as u64,
                    header: 3,
                    events,
                })
                .collect(),
            final_revision: 3,
        }
    }

    fn first() -> WatchEvent {
        WatchEvent {
            delete: false,
            kv: kv("k/a", "x", 2, 2, 1),
            prev: None,
        }
    }

    fn second() -> WatchEvent {
        WatchEvent {
            delete: false,
            kv: kv("k/a", "y", 2, 3, 2),
            prev: Some(kv("k/a", "x", 2, 2, 1)),
        }
    }

    #[test]
    fn a_faithful_watch_passes() {
        assert_eq!(
            check(&history(vec![vec![first()], vec![second()]])),
            Vec::<String>::new()
        );
    }

    #[test]
    fn gaps_duplicates_and_wrong_prev_kv_are_found() {
        assert!(!check(&history(vec![vec![second()]])).is_empty(), "gap");
        assert!(
            !check(&history(vec![vec![first()], vec![first()], vec![second()]])).is_empty(),
            "duplicate"
        );
        let mut wrong = second();
        wrong.prev = None;
        assert!(!check(&history(vec![vec![first()], vec![wrong]])).is_empty());
        assert!(
            !check(&history(vec![vec![second()], vec![first()]])).is_empty(),
            "out of order"
        );
    }
}
