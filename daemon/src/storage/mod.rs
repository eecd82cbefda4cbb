//! SQLite persistence in two database files per member, both in WAL mode:
//!
//! - the **log database** (`log.db`): the Raft log, hard state and compaction point.
//!   Committed with `synchronous=FULL` whenever Raft needs it stable (new entries, a new
//!   term or vote): one fsync per `Ready`, of a few sequential pages.
//! - the **state database** (`state.db`): the key space, leases, membership, conf state
//!   and the applied index, committed with `synchronous=NORMAL`: atomic and ordered, but
//!   not fsynced per commit. Its pages (random places in B-trees for random keys) reach
//!   the disk in the background [`Checkpointer`]'s checkpoints, which fsync.
//!
//! Why split: with one file, every put's random B-tree pages were part of the fsync of
//! the Ready that applied it, so the cost of a put grew with the key space. Now only the
//! log is on the fsync path. A crash can lose state commits that were not yet
//! checkpointed (only a machine crash can: a killed process leaves its writes in the OS
//! cache); the state is then consistent at an older applied index, and Raft applies the
//! entries after it again from the log, which is never compacted past what the state
//! holds durably ([`Checkpointer::durable_applied`]). This is etcd's design (WAL fsync,
//! batched backend commits, replay from the consistent index) on SQLite.
//!
//! The Raft thread owns the one writing connection, which has the log database attached
//! as `log`, so that a transaction can span both (a cut of the log rides with the apply
//! that allows it; SQLite commits the main (state) database first and the log second).
//! A `Ready` is a transaction for its new entries (fsynced, on a second connection to
//! the log database alone, so that it takes no lock of the state's) and one for what
//! it applies (not; see `raft_node` for their order). Client reads go through a small pool of
//! read-only connections to the state database ([`ReaderPool`]), which WAL mode lets run
//! beside the writer without blocking it.
//!
//! Which revisions each key has is not in either file but in memory ([`key_index`]),
//! built from the state database at start; a [`StateTxn`] pairs a transaction with it.

pub mod alarms;
pub mod applied_requests;
mod checkpointer;
pub mod disk_space;
pub mod key_index;
mod key_range;
pub mod keyspace;
pub mod leases;
mod meta;
mod raft_log;
mod readers;
mod schema;
pub mod snapshot;
mod state_txn;
mod wal_file;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod keyspace_conformance;

use std::path::{Path, PathBuf};

pub use checkpointer::Checkpointer;
pub use key_index::SharedKeyIndex;
pub use key_range::KeyRange;
pub use meta::Meta;
pub use raft_log::{Durability, LogBatch, RaftLog};
pub use readers::{ReadGuard, ReaderPool};
pub use state_txn::StateTxn;

/// Failure of the persistence layer. Any of these stops the member: Raft must not
/// continue on a log it could not write.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite reported an error (I/O, corruption, ...) other than a full disk.
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
    /// The disk filled up during a write (`SQLITE_FULL`) despite the reserve the Raft
    /// thread keeps ([`disk_space`]); the write was rolled back, nothing is corrupt.
    #[error("the disk is full: {0}")]
    DiskFull(rusqlite::Error),
    /// A database file failed SQLite's structural check at start (a page overwritten,
    /// a truncated file, ...). The member refuses to serve it; restore the member from
    /// its peers (remove it, wipe the data directory, add it again) or from a snapshot.
    #[error("database file {path} is damaged ({detail}); refusing to serve it")]
    Damaged { path: PathBuf, detail: String },
    /// A stored record could not be decoded.
    #[error("corrupt state database: {0}")]
    Corrupt(String),
    /// The database was written by a qetcd with another layout.
    #[error("state database has layout version {found}, this qetcd understands {understood}")]
    UnknownSchema { found: i64, understood: i64 },
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

impl From<rusqlite::Error> for StorageError {
    /// Tells a full disk apart from every other SQLite failure: the one needs space,
    /// the others may need repair.
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StorageError::DiskFull(e),
            _ => StorageError::Sqlite(e),
        }
    }
}

/// Name of the state database inside a data directory.
pub const STATE_DB_FILE: &str = "qetcd/state.db";

/// Where the state database of `data_dir` lives.
pub fn state_db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_DB_FILE)
}

/// Where the log database that belongs to the state database at `state_db` lives: the
/// same directory, `log.db`.
pub fn log_db_path(state_db: &Path) -> PathBuf {
    state_db.with_file_name("log.db")
}

/// Opens (creating if needed) the writing connection: the state database at `path` as
/// `main`, its log database attached as `log`.
///
/// The log is `synchronous=FULL` by default (a commit returns once its WAL frames are
/// on stable storage; [`RaftLog`] lowers this per transaction when nothing in it needs
/// an fsync); the state is `synchronous=NORMAL` (see the module docs).
pub fn open_writer(path: &Path) -> Result<rusqlite::Connection, StorageError> {
    let conn = open_writer_unchecked(path).map_err(|e| match e {
        // A file so damaged that SQLite cannot even open it.
        StorageError::Sqlite(e)
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            ) =>
        {
            StorageError::Damaged {
                path: path.to_path_buf(),
                detail: format!("{e} (in it or in its log {})", log_db_path(path).display()),
            }
        }
        e => e,
    })?;
    check_intact(&conn, path)?;
    schema::create(&conn)?;
    Ok(conn)
}

/// `PRAGMA quick_check` of both databases: every page's B-tree structure, record
/// format and freelist, read once, without the index cross-checks of
/// `integrity_check`. Its cost is one read of each file, paid at start only: a damaged
/// page found now is refused before anything is served from it.
fn check_intact(conn: &rusqlite::Connection, state_db: &Path) -> Result<(), StorageError> {
    for (schema, file) in [
        ("main", state_db.to_path_buf()),
        ("log", log_db_path(state_db)),
    ] {
        let damaged = |detail: String| StorageError::Damaged {
            path: file.clone(),
            detail,
        };
        // At most a few findings: one is enough to refuse, a few help whoever repairs.
        let mut stmt = conn
            .prepare(&format!("PRAGMA {schema}.quick_check(5)"))
            .map_err(|e| damaged(e.to_string()))?;
        let findings: Vec<String> = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| damaged(e.to_string()))?;
        if findings != ["ok"] {
            // SQLite's report spans lines; the error is one.
            return Err(damaged(findings.join("; ").replace('\n', " ")));
        }
    }
    Ok(())
}

fn open_writer_unchecked(path: &Path) -> Result<rusqlite::Connection, StorageError> {
    wal_file::lay_out_log_wal(&log_db_path(path));
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute(
        "ATTACH DATABASE ?1 AS log",
        rusqlite::params![log_db_path(path).to_string_lossy()],
    )?;
    for schema in ["main", "log"] {
        conn.pragma_update(Some(schema), "journal_mode", "WAL")?;
        // A WAL that grew past this (a burst the checkpointer could not keep up with)
        // is cut back to it when it starts over; below it, its blocks are reused.
        conn.pragma_update(Some(schema), "journal_size_limit", wal_file::WAL_BYTES)?;
    }
    conn.pragma_update(Some("main"), "synchronous", "NORMAL")?;
    conn.pragma_update(Some("log"), "synchronous", "FULL")?;
    wait_for_locks(&mut conn, std::time::Duration::from_secs(5))?;
    // Checkpoints run on their own thread (see Checkpointer), not inside commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Pages of the state are read through a memory map rather than read() into
    // SQLite's own cache: no copy per page, and the page cache can stay small. A small
    // cache matters: SQLite's commit scans the cache's whole hash table whenever a
    // page split moved a page through the pending-byte page, which splits of random
    // keys do in most commits (perf: 6-12% of the Raft thread at a 64 MiB cache).
    // The log is appended at its end and read back from RaftLog's in-memory tail.
    conn.pragma_update(Some("main"), "cache_size", -STATE_CACHE_KIB)?;
    conn.pragma_update(Some("main"), "mmap_size", MMAP_BYTES)?;
    Ok(conn)
}

/// Makes `conn` wait for a lock another connection holds (the checkpointer's, while it
/// starts a WAL over) in steps of [`LOCK_POLL`], for up to `budget`, then fail busy.
///
/// SQLite's own busy timeout sleeps in growing steps (1, 2, 5, 10 … 100 ms), so a wait
/// ends up to that step after the lock's release: one on a lock held 3 ms took 8, one
/// held 60 ms took 78. A trace of a loaded member's sleeps found the Raft thread there,
/// and with it every request in flight, for up to 120 ms at a time while the
/// checkpointer started a WAL over (see `checkpointer`).
pub(crate) fn wait_for_locks(
    conn: &mut rusqlite::Connection,
    budget: std::time::Duration,
) -> Result<(), StorageError> {
    let mut since = std::time::Instant::now();
    conn.busy_handler(Some(move |attempt: i32| {
        if attempt == 0 {
            since = std::time::Instant::now();
        }
        if since.elapsed() >= budget {
            return false;
        }
        std::thread::sleep(LOCK_POLL);
        true
    }))?;
    Ok(())
}

/// How often a connection waiting for a lock tries again (see [`wait_for_locks`]).
const LOCK_POLL: std::time::Duration = std::time::Duration::from_micros(100);

/// SQLite page cache of the writing connection, KiB.
const STATE_CACHE_KIB: i64 = 8 * 1024;
/// How much of the state database connections map into memory (SQLite's `mmap_size`):
/// 64 GiB of address space, far past any state database; mapped pages cost memory only
/// as the OS caches them, as bbolt's map does for etcd.
const MMAP_BYTES: i64 = 64 << 30;

/// Opens a read-only connection to an existing state database.
pub fn open_reader(path: &Path) -> Result<rusqlite::Connection, StorageError> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
        | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
    Ok(conn)
}

/// Rewrites the state database at `state_db` compactly (SQLite's `VACUUM`): pages
/// freed by compaction go back to the file system and partly filled pages are packed,
/// as etcd's defragmentation does for bbolt. Runs on its own connection; it holds the
/// state database's write lock throughout (readers go on, on the version before), so
/// the caller must keep its own writes away meanwhile (see `raft_node`). Then the WAL,
/// which now holds the whole rewritten database, is copied back and cut to nothing,
/// so the space is returned at once; if readers keep that from finishing, the
/// checkpointer completes it later.
pub fn defragment(state_db: &Path) -> Result<(), StorageError> {
    let conn = rusqlite::Connection::open(state_db)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch("VACUUM")?;
    let (busy, _, _): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if busy != 0 {
        tracing::info!(
            "readers kept the defragmented WAL from being truncated now; the checkpointer will"
        );
    }
    Ok(())
}

/// A state database with its key index, for unit tests that write keys directly.
#[cfg(test)]
pub struct TestStore {
    pub conn: rusqlite::Connection,
    pub keys: SharedKeyIndex,
    writer: key_index::WriterIndex,
}

#[cfg(test)]
impl TestStore {
    pub fn open(path: &Path) -> Self {
        Self::with(open_writer(path).unwrap())
    }

    /// The store on `conn`, its index loaded from it.
    pub fn with(conn: rusqlite::Connection) -> Self {
        let keys = SharedKeyIndex::load(&conn).unwrap();
        let writer = keys.writer();
        TestStore { conn, keys, writer }
    }

    /// The writer's transaction view (the caller runs any SQL transaction).
    pub fn txn(&self) -> StateTxn<'_> {
        StateTxn::writer(&self.conn, &self.writer)
    }
}
