//! Reading past events from the stored revisions.

use std::ops::ControlFlow;

use rusqlite::Connection;

use crate::error::RequestError;
use crate::mvcc::KeyRange;
use crate::proto::mvccpb::{Event, KeyValue};
use crate::storage::{StateTxn, keyspace};

/// Events of revisions `from..=to` on keys in `range`, in revision order: whole
/// revisions, until about `byte_budget` bytes of keys and values are read. Returns the
/// events and the first revision not yet read (`to + 1` when done).
pub fn events(
    conn: &Connection,
    range: &KeyRange,
    from: i64,
    to: i64,
    byte_budget: usize,
) -> Result<(Vec<Event>, i64), RequestError> {
    if from > to {
        return Ok((Vec::new(), from));
    }
    let mut out: Vec<Event> = Vec::new();
    let mut bytes = 0;
    let mut next = to + 1;
    // Changes come in revision order; stop between two revisions.
    keyspace::changes(conn, range, from, to, |row| {
        if bytes >= byte_budget && out.last().is_some_and(|l| revision_of(l) != row.main) {
            next = row.main;
            return ControlFlow::Break(());
        }
        bytes += row.key.len() + row.value.len();
        out.push(row.into_event());
        ControlFlow::Continue(())
    })?;
    Ok((out, next))
}

pub fn revision_of(e: &Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// The version of `key` an event at `revision` replaced, if the key existed then.
pub fn previous(
    conn: &StateTxn<'_>,
    key: &[u8],
    revision: i64,
) -> Result<Option<KeyValue>, RequestError> {
    Ok(keyspace::change_before(conn, key, revision)?
        .filter(|row| !row.tombstone)
        .map(|row| row.key_value()))
}
