//! Raft snapshots as files: a consistent copy of the state database, made for a peer
//! that is too far behind for the log, streamed to it, and installed there.
//!
//! Only the replicated state travels: the key space, leases, membership, recently
//! applied request IDs, and the revision and applied-index markers. The receiver keeps
//! its own Raft hard state and member ID; its log is reset to the snapshot's index.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use super::{Meta, StorageError};

/// Tables whose content is the replicated state, besides the key space's.
const OTHER_REPLICATED_TABLES: &[&str] = &[
    "leases",
    "members",
    "applied_requests_0",
    "applied_requests_1",
];

/// Where snapshot files of the database at `db_path` are kept.
pub fn snapshot_dir(db_path: &Path) -> PathBuf {
    db_path
        .parent()
        .map_or_else(|| PathBuf::from("snapshots"), |p| p.join("snapshots"))
}

/// Writes a consistent copy of the database (as committed on `conn`) to a file named
/// after the applied index it contains, unless one already exists. `conn` must not be
/// inside a transaction.
pub fn write_snapshot_file(
    conn: &Connection,
    dir: &Path,
    applied: u64,
) -> Result<PathBuf, StorageError> {
    std::fs::create_dir_all(dir).map_err(|source| StorageError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(format!("snap-{applied:016x}.db"));
    if path.exists() {
        return Ok(path);
    }
    // Older snapshots are superseded (a transfer still reading one keeps its open file).
    prune_snapshot_files(dir, None);
    let partial = dir.join(format!("snap-{applied:016x}.db.partial"));
    let _ = std::fs::remove_file(&partial);
    conn.execute("VACUUM INTO ?1", params![partial.to_string_lossy()])?;
    std::fs::rename(&partial, &path).map_err(|source| StorageError::DataDir {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Removes snapshot files other than `keep`.
pub fn prune_snapshot_files(dir: &Path, keep: Option<&Path>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if Some(p.as_path()) != keep {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The applied index recorded inside a snapshot file attached as `snap`.
pub fn attached_applied_index(conn: &Connection) -> Result<u64, StorageError> {
    let bytes: Vec<u8> = conn.query_row(
        "SELECT value FROM snap.meta WHERE name = 'apply.applied_index'",
        [],
        |r| r.get(0),
    )?;
    let arr: [u8; 8] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| StorageError::Corrupt("snapshot applied index is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(arr))
}

/// Replaces the replicated state with that of the snapshot attached as `snap`, inside
/// the caller's transaction.
pub fn install_attached(conn: &Connection) -> Result<(), StorageError> {
    for table in super::keyspace::TABLES
        .iter()
        .chain(OTHER_REPLICATED_TABLES)
    {
        conn.execute(&format!("DELETE FROM main.{table}"), [])?;
        conn.execute(
            &format!("INSERT INTO main.{table} SELECT * FROM snap.{table}"),
            [],
        )?;
    }
    for m in [Meta::Revision, Meta::CompactRevision, Meta::AppliedIndex] {
        let name = m.name();
        conn.execute("DELETE FROM main.meta WHERE name = ?1", params![name])?;
        conn.execute(
            "INSERT INTO main.meta (name, value) SELECT name, value FROM snap.meta WHERE name = ?1",
            params![name],
        )?;
    }
    Ok(())
}
