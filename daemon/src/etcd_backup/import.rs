//! An etcd backend file loaded into qetcd's state database: the key space with its
//! revisions and compaction point, and the leases. (Members come from the restored
//! WAL, see [`super::wal`]: `etcdctl snapshot restore` 3.4 empties the `members`
//! bucket, and the WAL is what both versions agree on.)
//!
//! The file is read twice: once to check every record, before anything is written, so
//! that a damaged backup is refused by name and leaves nothing behind; then to load it,
//! in one transaction that the caller completes with its own rows (IDs, membership).

use std::path::Path;

use prost::Message;
use rusqlite::Connection;

use super::{BackupError, LeaseRecord, buckets, meta_keys, parse_rev_key};
use crate::bbolt::{Bucket, Reader};
use crate::proto::mvccpb::KeyValue;
use crate::storage::keyspace::{self, Import, RevisionRow};

/// What a checked backend file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The store's revision: the newest stored one, or the compaction point if that is
    /// newer (etcd's rule when it opens a backend).
    pub current: i64,
    pub compacted: i64,
    pub revisions: u64,
    pub leases: u64,
    pub consistent_index: u64,
}

/// An opened etcd backend file.
pub struct EtcdBackend {
    reader: Reader,
    path: String,
    key: Bucket,
    meta: Bucket,
    lease: Option<Bucket>,
}

impl EtcdBackend {
    /// Opens `path` (a `member/snap/db`, or a snapshot file with its sha256, which is
    /// checked) and finds etcd's buckets in it.
    pub fn open(path: &Path) -> Result<Self, BackupError> {
        let reader = Reader::open(path)?;
        let name = path.display().to_string();
        let missing = |bucket| BackupError::MissingBucket {
            path: name.clone(),
            bucket,
        };
        let key = reader.bucket(buckets::KEY)?.ok_or_else(|| missing("key"))?;
        let meta = reader
            .bucket(buckets::META)?
            .ok_or_else(|| missing("meta"))?;
        let lease = reader.bucket(buckets::LEASE)?;
        if let Some(auth) = reader.bucket(buckets::AUTH)? {
            let mut enabled = false;
            reader.for_each::<BackupError>(&auth, |k, v| {
                enabled |= k == b"authEnabled" && v == [1];
                Ok(())
            })?;
            if enabled {
                return Err(BackupError::AuthEnabled { path: name });
            }
        }
        Ok(EtcdBackend {
            reader,
            path: name,
            key,
            meta,
            lease,
        })
    }

    /// Reads every record and checks it decodes, writing nothing.
    pub fn check(&self) -> Result<Summary, BackupError> {
        let mut summary = Summary {
            current: 1,
            compacted: 0,
            revisions: 0,
            leases: 0,
            consistent_index: 0,
        };
        let mut scheduled = 0;
        self.reader.for_each::<BackupError>(&self.meta, |k, v| {
            match k {
                meta_keys::FINISHED_COMPACT => summary.compacted = self.compact_rev(k, v)?,
                meta_keys::SCHEDULED_COMPACT => scheduled = self.compact_rev(k, v)?,
                meta_keys::CONSISTENT_INDEX => {
                    summary.consistent_index = u64::from_be_bytes(
                        v.try_into()
                            .map_err(|_| self.bad("meta", k, "not 8 bytes".into()))?,
                    )
                }
                _ => {}
            }
            Ok(())
        })?;
        // A compaction etcd had scheduled but not finished is finished here.
        summary.compacted = summary.compacted.max(scheduled);
        self.each_revision(|row| {
            summary.current = summary.current.max(row.main);
            summary.revisions += 1;
            Ok(())
        })?;
        summary.current = summary.current.max(summary.compacted);
        self.each_lease(|_, _| {
            summary.leases += 1;
            Ok(())
        })?;
        Ok(summary)
    }

    /// Loads the key space and leases into `conn`'s empty store, in one transaction
    /// which `finish` may add to (inside it) before it commits.
    pub fn import(
        &self,
        conn: &mut Connection,
        finish: impl FnOnce(&Connection) -> Result<(), BackupError>,
    ) -> Result<Summary, BackupError> {
        let summary = self.check()?;
        let mut import = Import::begin(conn)?;
        self.each_revision(|row| Ok(import.revision(&row)?))?;
        self.each_lease(|id, ttl| Ok(import.lease(id, ttl)?))?;
        if summary.compacted > 0 {
            keyspace::compact(import.conn(), summary.compacted)?;
        }
        finish(import.conn())?;
        import.commit(summary.current, summary.compacted)?;
        Ok(summary)
    }

    fn each_revision(
        &self,
        mut visit: impl FnMut(RevisionRow) -> Result<(), BackupError>,
    ) -> Result<(), BackupError> {
        self.reader.for_each::<BackupError>(&self.key, |k, v| {
            let (main, sub, tombstone) =
                parse_rev_key(k).ok_or_else(|| self.bad("key", k, "not a revision key".into()))?;
            let kv = KeyValue::decode(v)
                .map_err(|e| self.bad("key", k, format!("not an mvccpb.KeyValue: {e}")))?;
            if kv.key.is_empty() {
                return Err(self.bad("key", k, "a key-value without a key".into()));
            }
            visit(RevisionRow {
                key: kv.key,
                main,
                sub,
                create_revision: if tombstone { 0 } else { kv.create_revision },
                version: if tombstone { 0 } else { kv.version },
                value: if tombstone { Vec::new() } else { kv.value },
                lease: if tombstone { 0 } else { kv.lease },
                tombstone,
            })
        })
    }

    fn each_lease(
        &self,
        mut visit: impl FnMut(i64, i64) -> Result<(), BackupError>,
    ) -> Result<(), BackupError> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        self.reader.for_each::<BackupError>(lease, |k, v| {
            let lease = LeaseRecord::decode(v)
                .map_err(|e| self.bad("lease", k, format!("not a leasepb.Lease: {e}")))?;
            visit(lease.id, lease.ttl)
        })
    }

    fn compact_rev(&self, k: &[u8], v: &[u8]) -> Result<i64, BackupError> {
        parse_rev_key(v)
            .map(|(main, _, _)| main)
            .ok_or_else(|| self.bad("meta", k, "not a revision".into()))
    }

    fn bad(&self, bucket: &'static str, key: &[u8], reason: String) -> BackupError {
        BackupError::BadRecord {
            path: self.path.clone(),
            bucket,
            key: format!("{key:02x?}"),
            reason,
        }
    }
}
