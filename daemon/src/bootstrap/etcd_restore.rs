//! Starting from a data dir that `etcdctl snapshot restore` (3.4) or `etcdutl snapshot
//! restore` (3.5) made: the way a cluster moves from etcd to qetcd (save → restore →
//! start), and the way a qetcd cluster is restored from its own backup.
//!
//! Which etcd data dirs are imported: only one whose WAL holds nothing but restore's
//! bootstrap entries ([`crate::etcd_backup::wal`]). One that an etcd member has run in
//! is refused untouched: its backend may be behind its WAL, and importing it would
//! silently lose what only the WAL holds; the operator takes a snapshot of it instead.
//! A data dir holding both an etcd member and a qetcd member that was not imported from
//! it is refused untouched too: which of the two is current cannot be known.
//!
//! The import is one SQLite transaction holding the key space, the leases, the
//! members, Raft's configuration, the IDs restore derived (from the WAL's metadata) and
//! a marker naming the imported member. The etcd files are not touched until it has
//! committed; then `member/` is renamed to `member.imported-by-qetcd`, so that neither
//! qetcd nor etcd mistakes it for live state again. A crash between the two is finished
//! on the next start (the marker, and the absence of the renamed directory, tell that
//! case from a stranger's member/ appearing beside an imported qetcd member).
//!
//! The member starts as a member of a new cluster does (an empty Raft log, every member
//! a voter), with the key space already in place: every member restored from the same
//! snapshot holds the same state, as etcd's restored members do.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::prelude::ConfState;

use super::BootstrapError;
use crate::config::{Config, member_id};
use crate::etcd_backup::import::EtcdBackend;
use crate::etcd_backup::wal::{self, Restored, Verdict};
use crate::etcd_backup::{BackupError, EtcdMember};
use crate::membership::{self, Member};
use crate::storage::{self, Meta};

/// Where the etcd member directory goes once imported.
pub const IMPORTED_DIR: &str = "member.imported-by-qetcd";

/// If `cfg.data_dir` holds an etcd member directory: imports it when restore made it
/// (and finishes an import a crash interrupted), refuses it otherwise. Afterwards the
/// data dir is a qetcd member's (or has no etcd files at all).
pub fn import_if_restored(cfg: &Config, has_member_state: bool) -> Result<(), BootstrapError> {
    let dir = &cfg.data_dir;
    let etcd_member = dir.join("member");
    if !etcd_member.exists() {
        return Ok(());
    }
    let verdict = wal::inspect(dir).map_err(|e| restore_error(dir, e))?;
    if has_member_state {
        let imported = imported_member(dir)?;
        return match verdict {
            // The rename is the import's last step: once done, a member/ appearing
            // again is a stranger, even one restored with the same flags.
            Verdict::Restored(r)
                if imported == Some(r.member_id) && !dir.join(IMPORTED_DIR).exists() =>
            {
                tracing::info!("finishing an import that stopped before moving member/ aside");
                move_aside(dir)
            }
            _ => Err(BootstrapError::HalfEtcdHalfQetcd(dir.clone())),
        };
    }
    let restored = match verdict {
        Verdict::Live(reason) => return Err(BootstrapError::EtcdDataDir(dir.clone(), reason)),
        Verdict::Restored(r) => r,
    };
    let db = etcd_member.join("snap").join("db");
    // Every record is checked before anything is written.
    let backend = EtcdBackend::open(&db).map_err(|e| restore_error(dir, e))?;
    backend.check().map_err(|e| restore_error(dir, e))?;
    check_ids(cfg, &restored);

    let state_db = storage::state_db_path(dir);
    let state_dir = state_db.parent().expect("state db path has a parent");
    let io_err = |source| BootstrapError::DataDir {
        path: state_dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(state_dir).map_err(io_err)?;
    fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
    let mut conn = storage::open_writer(&state_db)?;
    let summary = backend
        .import(&mut conn, |tx| record_membership(tx, &restored))
        .map_err(|e| restore_error(dir, e))?;
    drop(conn);
    tracing::info!(
        data_dir = %dir.display(),
        member_id = %format!("{:x}", restored.member_id),
        cluster_id = %format!("{:x}", restored.cluster_id),
        members = restored.members.len(),
        revision = summary.current,
        compact_revision = summary.compacted,
        revisions = summary.revisions,
        leases = summary.leases,
        auth_enabled = summary.auth_enabled,
        auth_users = summary.users,
        auth_roles = summary.roles,
        removed_members = summary.removed_members,
        "imported a data dir made by etcd's snapshot restore"
    );
    move_aside(dir)
}

/// The restored members, Raft's configuration, IDs and the import marker, inside the
/// import's transaction.
fn record_membership(tx: &rusqlite::Connection, r: &Restored) -> Result<(), BackupError> {
    let mut voters = Vec::new();
    let mut learners = Vec::new();
    for m in &r.members {
        // The backup's removed IDs are in already; restore gave every member a fresh
        // ID, so one of them being among the removed means the files do not belong
        // together, and the member could never join.
        if membership::is_removed(tx, m.id)? {
            return Err(BackupError::BadRecord {
                path: "member/snap/db".into(),
                bucket: "members_removed",
                key: format!("{:x}", m.id),
                reason: format!(
                    "member {} of the restored WAL is recorded as removed",
                    m.name
                ),
            });
        }
        membership::upsert(tx, &to_member(m))?;
        if m.is_learner {
            learners.push(m.id);
        } else {
            voters.push(m.id);
        }
    }
    voters.sort_unstable();
    learners.sort_unstable();
    let cs = ConfState::from((voters, learners));
    let bytes = cs
        .write_to_bytes()
        .map_err(|e| storage::StorageError::Corrupt(format!("encode conf state: {e}")))?;
    Meta::ConfState.set_blob(tx, &bytes)?;
    Meta::MemberId.set_u64(tx, r.member_id)?;
    Meta::ClusterId.set_u64(tx, r.cluster_id)?;
    Meta::ImportedEtcdMember.set_u64(tx, r.member_id)?;
    Ok(())
}

fn to_member(m: &EtcdMember) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// Restore derived the IDs from its own `--initial-cluster-token`; qetcd keeps them.
/// Says whether this member's token derives the same ones (it does when the member is
/// started with the flags restore was given), which is what a mistyped token shows up
/// as.
fn check_ids(cfg: &Config, r: &Restored) {
    let derived = r.members.iter().all(|m| {
        let urls: Vec<url::Url> = m.peer_urls.iter().filter_map(|u| u.parse().ok()).collect();
        member_id(&urls, &cfg.initial_cluster_token, None) == m.id
    });
    if derived {
        tracing::info!(
            token = %cfg.initial_cluster_token,
            "the restored member IDs match those --initial-cluster-token derives"
        );
    } else {
        tracing::warn!(
            token = %cfg.initial_cluster_token,
            "the restored member IDs were derived from another --initial-cluster-token; keeping restore's IDs"
        );
    }
}

fn imported_member(dir: &Path) -> Result<Option<u64>, BootstrapError> {
    let conn = storage::open_reader(&storage::state_db_path(dir))?;
    Ok(Meta::ImportedEtcdMember.get_u64(&conn)?)
}

fn move_aside(dir: &Path) -> Result<(), BootstrapError> {
    let to: PathBuf = dir.join(IMPORTED_DIR);
    fs::rename(dir.join("member"), &to).map_err(|source| BootstrapError::DataDir {
        path: to.clone(),
        source,
    })?;
    Ok(())
}

fn restore_error(dir: &Path, e: BackupError) -> BootstrapError {
    BootstrapError::EtcdRestore {
        dir: dir.to_path_buf(),
        source: e,
    }
}
