//! The WAL files next to the databases, and laying out the Raft log's before SQLite
//! first writes it.
//!
//! A log commit's fsync is on every write's path (a follower's, before it
//! acknowledges). While its WAL file grows, each of those fsyncs also commits the file
//! system's journal (the new size and blocks); once the file has its size, a commit
//! rewrites blocks in place. Measured on three members, one client: log commits of
//! 420–620 us while the WAL grew, 280–390 us once it was written in place. SQLite
//! starts a WAL over from its beginning only after a checkpoint (see `checkpointer`),
//! so a WAL grows to [`WAL_BYTES`] after every start of the member (SQLite removes it
//! when the last connection closes). Writing that much zeroes first (up to 0.35 s at
//! start, measured on a busy disk) spares a member's first minutes those journal
//! commits. SQLite takes a WAL whose header is not valid (zeroes) as empty and writes
//! over it from its start; it deletes one it finds beside an empty database, so a new
//! member's log is laid out when bootstrap opens the storage the second time, once the
//! member's identity is written. etcd preallocates its WAL files for the same reason.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The size WALs are kept to: a checkpoint restarts a WAL that grew past it (see
/// `checkpointer`), SQLite cuts one back to it when it starts over
/// (`journal_size_limit`), and the log's is laid out at it, so that it never has to
/// grow in between.
pub const WAL_BYTES: u64 = 64 << 20;

/// The WAL file of the database file `db`.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Writes the log database's WAL as [`WAL_BYTES`] of zeroes and syncs it, unless it
/// exists (it may then hold commits) or the log database is missing or empty (SQLite
/// would delete the WAL as it opens the database: the write would be wasted). Best
/// effort: on failure (a full disk) the partial file is removed and SQLite grows the
/// WAL as it would have.
pub fn lay_out_log_wal(log_db: &Path) {
    if std::fs::metadata(log_db).map_or(true, |m| m.len() == 0) {
        return;
    }
    let wal = wal_path(log_db);
    if let Err(e) = write_zeroes(&wal) {
        tracing::warn!(path = %wal.display(), error = %e, "cannot lay out the Raft log's WAL; it will grow as written");
    }
}

/// Creates `wal` as [`WAL_BYTES`] of zeroes, synced; nothing if it exists; on failure,
/// no file.
fn write_zeroes(wal: &Path) -> std::io::Result<()> {
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(wal)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    };
    let zeroes = vec![0u8; 1 << 20];
    let written = (0..WAL_BYTES / zeroes.len() as u64)
        .try_for_each(|_| file.write_all(&zeroes))
        .and_then(|()| file.sync_data());
    if written.is_err() {
        drop(file);
        let _ = std::fs::remove_file(wal);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_laid_out_log_wal_is_written_in_place_and_keeps_its_commits() {
        let dir = tempfile::tempdir().unwrap();
        let state_db = dir.path().join("state.db");
        let log_wal = wal_path(&crate::storage::log_db_path(&state_db));
        let append = |conn: &rusqlite::Connection, from: i64| {
            for i in from..from + 50 {
                conn.execute(
                    "INSERT INTO log.raft_log (idx, term, entry) VALUES (?1, 1, zeroblob(300))",
                    [i],
                )
                .unwrap();
            }
        };
        // A new log: nothing is laid out (SQLite would delete a WAL it finds beside an
        // empty database), SQLite grows its own, and closing the last connection
        // removes it.
        lay_out_log_wal(&crate::storage::log_db_path(&state_db));
        assert!(!log_wal.exists());
        let conn = crate::storage::open_writer(&state_db).unwrap();
        append(&conn, 1);
        drop(conn);
        assert!(!log_wal.exists());

        let conn = crate::storage::open_writer(&state_db).unwrap();
        assert_eq!(std::fs::metadata(&log_wal).unwrap().len(), WAL_BYTES);
        append(&conn, 51);
        // Written in place: SQLite took the zeroes for an empty WAL, and the file kept
        // its size.
        assert_eq!(std::fs::metadata(&log_wal).unwrap().len(), WAL_BYTES);
        // Not closed: the last commits are in the WAL only, as after a kill -9.
        std::mem::forget(conn);

        // A WAL that exists (it may hold commits, as this one does) is left alone.
        let conn = crate::storage::open_writer(&state_db).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM log.raft_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 100);
    }

    #[test]
    fn a_wal_that_cannot_be_written_is_left_to_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        // Something already in the WAL's place (here a directory) is left alone.
        let log_db = dir.path().join("log.db");
        std::fs::write(&log_db, b"not empty").unwrap();
        std::fs::create_dir(wal_path(&log_db)).unwrap();
        lay_out_log_wal(&log_db);
        assert!(wal_path(&log_db).is_dir());
        // A WAL that cannot be created is an error, and leaves nothing behind.
        let missing = dir.path().join("gone").join("log.db");
        assert!(write_zeroes(&wal_path(&missing)).is_err());
        assert!(!wal_path(&missing).exists());
    }
}
