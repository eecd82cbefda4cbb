//! `KV.Compact`: forgetting history up to a revision.

use rusqlite::{Connection, params};

use super::Revisions;
use crate::error::RequestError;

/// Removes every revision at or below `rev` that a read at `rev` or later can no longer
/// see: all but the newest version of each key, and that one too if it is a tombstone.
/// Returns the new revision bounds.
pub fn compact(conn: &Connection, revs: Revisions, rev: i64) -> Result<Revisions, RequestError> {
    if rev <= revs.compacted {
        return Err(RequestError::Compacted);
    }
    if rev > revs.current {
        return Err(RequestError::FutureRevision);
    }
    conn.prepare_cached(
        "DELETE FROM kv_history WHERE mod_rev <= ?1 AND (tombstone = 1 OR mod_rev < (
            SELECT MAX(h.mod_rev) FROM kv_history h
            WHERE h.key = kv_history.key AND h.mod_rev <= ?1))",
    )?
    .execute(params![rev])?;
    Ok(Revisions {
        current: revs.current,
        compacted: rev,
    })
}
