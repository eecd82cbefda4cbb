//! etcd's multi-version key space on SQLite.
//!
//! Every change creates a revision: a put writes the key's new version, a delete writes
//! a tombstone, and all changes of one request share one main revision (told apart by
//! a sub-revision). How those revisions are stored is `storage::keyspace`'s business;
//! this module holds etcd's rules on top of it.
//!
//! Reads ([`range`]) run on any connection; writes ([`WriteTxn`]) only inside the Raft
//! thread's batch transaction.

mod compaction;
pub mod hash;
mod range;
mod txn;
mod write;

use rusqlite::Connection;

pub use crate::storage::KeyRange;
pub use compaction::compact;
pub use range::range;
pub use txn::{MAX_TXN_DEPTH, apply_txn, check_put, check_range, check_txn};
pub use write::WriteTxn;

use crate::error::RequestError;
use crate::storage::{Meta, StorageError};

/// Revision bounds of the store as seen by one read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revisions {
    /// The newest revision; 1 on an empty store, as in etcd.
    pub current: i64,
    /// Reads below this revision fail as compacted (0: nothing compacted).
    pub compacted: i64,
}

impl Revisions {
    /// Reads the committed revisions, inside the caller's transaction.
    pub fn load(conn: &Connection) -> Result<Self, RequestError> {
        Ok(Revisions {
            current: Meta::Revision.get_i64(conn)?.unwrap_or(1),
            compacted: Meta::CompactRevision.get_i64(conn)?.unwrap_or(0),
        })
    }

    pub fn store(&self, conn: &Connection) -> Result<(), RequestError> {
        Meta::Revision.set_i64(conn, self.current)?;
        Meta::CompactRevision.set_i64(conn, self.compacted)?;
        Ok(())
    }

    /// etcd's rule for a read at `rev` (0 or less: the current revision).
    pub fn check_read(&self, rev: i64) -> Result<(), RequestError> {
        if rev > self.current {
            return Err(RequestError::FutureRevision);
        }
        if rev > 0 && rev < self.compacted {
            return Err(RequestError::Compacted);
        }
        Ok(())
    }
}

/// Database size figures for `Maintenance.Status`.
pub fn db_size(conn: &Connection) -> Result<(i64, i64), RequestError> {
    let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    Ok((pages * page_size, (pages - free) * page_size))
}

/// Bytes of the state database's pages, through cached statements: cheap enough for
/// the Raft thread to read after every batch (the backend quota is checked on it).
pub fn db_size_cached(conn: &Connection) -> Result<i64, StorageError> {
    let page_size: i64 = conn
        .prepare_cached("PRAGMA main.page_size")?
        .query_row([], |r| r.get(0))?;
    let pages: i64 = conn
        .prepare_cached("PRAGMA main.page_count")?
        .query_row([], |r| r.get(0))?;
    Ok(pages * page_size)
}

#[cfg(test)]
mod tests;
