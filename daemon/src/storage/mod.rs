//! SQLite persistence: one database file per member holds the Raft log, Raft's hard and
//! conf state, the membership, and the MVCC key space.
//!
//! Keeping everything in one file is what lets a whole Raft `Ready` — new log entries,
//! hard state, and the effects of the committed entries — land in a single transaction
//! with a single fsync. The Raft thread owns the only writing connection; client reads go
//! through a small pool of read-only connections ([`ReaderPool`]), which WAL mode lets run
//! beside the writer without blocking it.

mod checkpointer;
mod key_range;
pub mod keyspace;
pub mod leases;
mod meta;
mod raft_log;
mod readers;
mod schema;
pub mod snapshot;

#[cfg(test)]
mod conformance;

use std::path::{Path, PathBuf};

pub use checkpointer::Checkpointer;
pub use key_range::KeyRange;
pub use meta::Meta;
pub use raft_log::{Durability, LogBatch, RaftLog};
pub use readers::{ReadGuard, ReaderPool};

/// Failure of the persistence layer. Any of these stops the member: Raft must not
/// continue on a log it could not write.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite reported an error (I/O, corruption, full disk, ...).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record could not be decoded.
    #[error("corrupt state database: {0}")]
    Corrupt(String),
    /// A bulk import was asked of a store that already holds data.
    #[error("the store is not empty; an import needs an empty one")]
    NotEmpty,
    /// The data directory could not be prepared.
    #[error("cannot access data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Name of the state database inside a data directory.
pub const STATE_DB_FILE: &str = "qetcd/state.db";

/// Where the state database of `data_dir` lives.
pub fn state_db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_DB_FILE)
}

/// Opens (creating if needed) the writing connection of a state database.
///
/// WAL journal with `synchronous=FULL` by default: a commit returns only once the WAL
/// is on stable storage. [`RaftLog`] lowers this per transaction when a commit may be
/// lost in a crash without harm (it can be replayed from the log).
pub fn open_writer(path: &Path) -> Result<rusqlite::Connection, StorageError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Checkpoints run on their own thread (see Checkpointer), not inside commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // 64 MiB of page cache (SQLite's default is 2 MiB): the B-tree pages every write
    // touches stay in memory instead of being re-read from the OS cache.
    conn.pragma_update(None, "cache_size", -65536)?;
    schema::create(&conn)?;
    Ok(conn)
}

/// Opens a read-only connection to an existing state database.
pub fn open_reader(path: &Path) -> Result<rusqlite::Connection, StorageError> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
        | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}
