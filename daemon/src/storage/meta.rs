//! Typed access to the named values of the two databases: the Raft log's own
//! (`raft_meta` in the log database: hard state and the compaction point, which must
//! be as durable as the log) and the state's (`meta`: IDs, applied index, revisions,
//! conf state, which must move together with the state they describe).

use rusqlite::{Connection, OptionalExtension, params};

use super::StorageError;

/// The named values kept in the `meta` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    /// Raft `HardState` (term, vote, commit), protobuf-encoded.
    HardState,
    /// Raft `ConfState` (voters, learners), protobuf-encoded. Kept with the state, not
    /// the log: it is the effect of applied conf changes, so it must never be ahead of
    /// (or behind) the applied index it belongs to.
    ConfState,
    /// Index and term of the last entry removed from the log by compaction.
    TruncatedIndex,
    TruncatedTerm,
    /// This member's ID; written once at bootstrap and never changed.
    MemberId,
    /// The cluster's ID; written once at bootstrap.
    ClusterId,
    /// Index of the last log entry whose effects are in this database.
    AppliedIndex,
    /// Term of that entry (what a snapshot of this database needs besides the index).
    AppliedTerm,
    /// Current MVCC revision (starts at 1 on an empty store, as in etcd).
    Revision,
    /// Revision up to which history has been compacted (0: never).
    CompactRevision,
    /// Whether auth is enabled (1) or not (0 or absent).
    AuthEnabled,
    /// The auth store's revision, bumped by every change to users, roles or the flag.
    AuthRevision,
    /// The member whose etcd data dir (made by `snapshot restore`) this state was
    /// imported from; set only by that import.
    ImportedEtcdMember,
}

impl Meta {
    pub fn name(self) -> &'static str {
        match self {
            Meta::HardState => "raft.hard_state",
            Meta::ConfState => "raft.conf_state",
            Meta::TruncatedIndex => "raft.truncated_index",
            Meta::TruncatedTerm => "raft.truncated_term",
            Meta::MemberId => "cluster.member_id",
            Meta::ClusterId => "cluster.cluster_id",
            Meta::AppliedIndex => "apply.applied_index",
            Meta::AppliedTerm => "apply.applied_term",
            Meta::Revision => "mvcc.revision",
            Meta::CompactRevision => "mvcc.compact_revision",
            Meta::AuthEnabled => "auth.enabled",
            Meta::AuthRevision => "auth.revision",
            Meta::ImportedEtcdMember => "bootstrap.imported_etcd_member",
        }
    }

    /// Whether this value belongs to the Raft log's database rather than the state's.
    fn in_log_db(self) -> bool {
        matches!(
            self,
            Meta::HardState | Meta::TruncatedIndex | Meta::TruncatedTerm
        )
    }

    pub fn get_blob(self, conn: &Connection) -> Result<Option<Vec<u8>>, StorageError> {
        let mut stmt = conn.prepare_cached(if self.in_log_db() {
            "SELECT value FROM raft_meta WHERE name = ?1"
        } else {
            "SELECT value FROM meta WHERE name = ?1"
        })?;
        Ok(stmt
            .query_row(params![self.name()], |r| r.get::<_, Vec<u8>>(0))
            .optional()?)
    }

    pub fn set_blob(self, conn: &Connection, value: &[u8]) -> Result<(), StorageError> {
        let mut stmt = conn.prepare_cached(if self.in_log_db() {
            "INSERT INTO raft_meta (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        } else {
            "INSERT INTO meta (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        })?;
        stmt.execute(params![self.name(), value])?;
        Ok(())
    }

    /// Reads a u64 value (stored as 8 big-endian bytes so that all 64 bits survive).
    pub fn get_u64(self, conn: &Connection) -> Result<Option<u64>, StorageError> {
        match self.get_blob(conn)? {
            None => Ok(None),
            Some(bytes) => {
                let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    StorageError::Corrupt(format!("meta {} is not 8 bytes", self.name()))
                })?;
                Ok(Some(u64::from_be_bytes(arr)))
            }
        }
    }

    pub fn set_u64(self, conn: &Connection, value: u64) -> Result<(), StorageError> {
        self.set_blob(conn, &value.to_be_bytes())
    }

    pub fn get_i64(self, conn: &Connection) -> Result<Option<i64>, StorageError> {
        Ok(self.get_u64(conn)?.map(|v| v as i64))
    }

    pub fn set_i64(self, conn: &Connection, value: i64) -> Result<(), StorageError> {
        self.set_u64(conn, value as u64)
    }
}
