//! Raft snapshots as files: a consistent copy of the state database, made for a peer
//! that is too far behind for the log, streamed to it, and installed there.
//!
//! Only the replicated state travels: the key space, leases, membership, recently
//! applied request IDs, the auth store, and the revision and applied-index markers. The receiver keeps
//! its own Raft hard state and member ID; its log is reset to the snapshot's index.

use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use protobuf::Message as _;
use raft::prelude::ConfState;
use rusqlite::{Connection, params};

use super::{Meta, StorageError};

/// Tables whose content is the replicated state, besides the key space's.
const OTHER_REPLICATED_TABLES: &[&str] = &[
    "leases",
    "members",
    "members_removed",
    "alarms",
    "applied_requests_0",
    "applied_requests_1",
    "auth_users",
    "auth_roles",
];

/// Where snapshot files of the database at `db_path` are kept.
pub fn snapshot_dir(db_path: &Path) -> PathBuf {
    db_path
        .parent()
        .map_or_else(|| PathBuf::from("snapshots"), |p| p.join("snapshots"))
}

/// A snapshot file made from the state database, and the Raft metadata it stands for
/// (read from the file itself, so the three always agree).
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
}

/// Makes snapshot files on a worker thread with its own read-only connection.
///
/// `VACUUM INTO` of a large database takes seconds; on the Raft thread it would stall
/// ticks, heartbeats and every request for that long. Raft asks through
/// [`SnapshotMaker::get`], which never blocks: it answers with a finished file that is
/// recent enough, or starts one and answers `None` (raft-rs then reports the snapshot
/// as temporarily unavailable and asks again later).
pub struct SnapshotMaker {
    state_db: PathBuf,
    slot: Arc<Mutex<Slot>>,
}

#[derive(Default)]
enum Slot {
    #[default]
    Idle,
    Running,
    Ready(SnapshotFile),
}

impl SnapshotMaker {
    pub fn new(state_db: PathBuf) -> Self {
        SnapshotMaker {
            state_db,
            slot: Arc::default(),
        }
    }

    /// A finished snapshot at an index of at least `min_index`, or `None` while one is
    /// being made (started here if none is).
    pub fn get(&self, min_index: u64) -> Option<SnapshotFile> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Slot::Ready(f) if f.index >= min_index && f.path.exists() => return Some(f.clone()),
            Slot::Running => return None,
            _ => {}
        }
        *slot = Slot::Running;
        let (state_db, shared) = (self.state_db.clone(), self.slot.clone());
        let spawned = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                let made = make_snapshot_file(&state_db);
                let mut slot = shared.lock().unwrap_or_else(|e| e.into_inner());
                *slot = match made {
                    Ok(f) => {
                        tracing::info!(index = f.index, path = %f.path.display(), "made snapshot");
                        Slot::Ready(f)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot make a snapshot");
                        Slot::Idle
                    }
                };
            });
        if spawned.is_err() {
            *slot = Slot::Idle;
        }
        None
    }
}

/// Copies the committed state database into a new snapshot file (named after the
/// applied index it holds) and removes older ones.
fn make_snapshot_file(state_db: &Path) -> Result<SnapshotFile, StorageError> {
    let dir = snapshot_dir(state_db);
    std::fs::create_dir_all(&dir).map_err(|source| StorageError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let partial = dir.join("snap.db.partial");
    let _ = std::fs::remove_file(&partial);
    super::open_reader(state_db)?.execute("VACUUM INTO ?1", params![partial.to_string_lossy()])?;
    let copy = Connection::open(&partial)?;
    let index = Meta::AppliedIndex.get_u64(&copy)?.unwrap_or(0);
    let term = Meta::AppliedTerm.get_u64(&copy)?.unwrap_or(0);
    let conf_state = match Meta::ConfState.get_blob(&copy)? {
        Some(b) => ConfState::parse_from_bytes(&b)
            .map_err(|e| StorageError::Corrupt(format!("conf state: {e}")))?,
        None => ConfState::default(),
    };
    drop(copy);
    let path = dir.join(format!("snap-{index:016x}.db"));
    std::fs::rename(&partial, &path).map_err(|source| StorageError::DataDir {
        path: path.clone(),
        source,
    })?;
    // Older snapshots are superseded (a transfer still reading one keeps its open file).
    prune_snapshot_files(&dir, Some(&path));
    Ok(SnapshotFile {
        path,
        index,
        term,
        conf_state,
    })
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
    super::keyspace::install_attached(conn, "snap")?;
    for table in OTHER_REPLICATED_TABLES {
        conn.execute(&format!("DELETE FROM main.{table}"), [])?;
        // A snapshot made by a qetcd from before the table existed has none of it.
        let in_snapshot: bool = conn.query_row(
            "SELECT count(*) > 0 FROM snap.sqlite_master WHERE type = 'table' AND name = ?1",
            params![table],
            |r| r.get(0),
        )?;
        if !in_snapshot {
            continue;
        }
        conn.execute(
            &format!("INSERT INTO main.{table} SELECT * FROM snap.{table}"),
            [],
        )?;
    }
    for m in [
        Meta::Revision,
        Meta::CompactRevision,
        Meta::AppliedIndex,
        Meta::AppliedTerm,
        Meta::AuthEnabled,
        Meta::AuthRevision,
    ] {
        let name = m.name();
        conn.execute("DELETE FROM main.meta WHERE name = ?1", params![name])?;
        conn.execute(
            "INSERT INTO main.meta (name, value) SELECT name, value FROM snap.meta WHERE name = ?1",
            params![name],
        )?;
    }
    Ok(())
}
