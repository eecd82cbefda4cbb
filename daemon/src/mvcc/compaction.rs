//! `KV.Compact`: forgetting history up to a revision.

use super::Revisions;
use crate::error::RequestError;
use crate::storage::{StateTxn, keyspace};

/// Removes every revision at or below `rev` that a read at `rev` or later can no longer
/// see: all but the newest version of each key, and that one too if it is a tombstone.
/// Returns the new revision bounds.
pub fn compact(conn: &StateTxn<'_>, revs: Revisions, rev: i64) -> Result<Revisions, RequestError> {
    if rev <= revs.compacted {
        return Err(RequestError::Compacted);
    }
    if rev > revs.current {
        return Err(RequestError::FutureRevision);
    }
    keyspace::compact(conn, rev)?;
    Ok(Revisions {
        current: revs.current,
        compacted: rev,
    })
}
