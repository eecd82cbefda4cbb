//! An etcd backend file loaded into qetcd's state database: the key space with its
//! revisions and compaction point, the leases, the auth store (users, roles, the
//! enabled flag and the auth revision, so a backup taken with auth on is served with
//! the same permissions) and the removed members' IDs. (Members come from the restored
//! WAL, see [`super::wal`]: `etcdctl snapshot restore` 3.4 empties the `members`
//! bucket, and the WAL is what both versions agree on.)
//!
//! The file is read twice: once to check every record, before anything is written, so
//! that a damaged backup is refused by name and leaves nothing behind; then to load it,
//! in one transaction that the caller completes with its own rows (IDs, membership).

use std::path::Path;

use prost::Message;
use rusqlite::Connection;

use super::{BackupError, LeaseRecord, auth_keys, buckets, meta_keys, parse_rev_key};
use crate::auth::AuthState;
use crate::auth::store::{ROOT_USER, has_root_role};
use crate::bbolt::{Bucket, Reader};
use crate::membership;
use crate::proto::authpb::{Role, User};
use crate::proto::mvccpb::KeyValue;
use crate::storage::keyspace::{Import, RevisionRow};

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
    pub auth_enabled: bool,
    pub users: u64,
    pub roles: u64,
    pub removed_members: u64,
}

/// An opened etcd backend file.
pub struct EtcdBackend {
    reader: Reader,
    path: String,
    key: Bucket,
    meta: Bucket,
    lease: Option<Bucket>,
    auth: Option<Bucket>,
    auth_users: Option<Bucket>,
    auth_roles: Option<Bucket>,
    members_removed: Option<Bucket>,
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
        let auth = reader.bucket(buckets::AUTH)?;
        let auth_users = reader.bucket(buckets::AUTH_USERS)?;
        let auth_roles = reader.bucket(buckets::AUTH_ROLES)?;
        let members_removed = reader.bucket(buckets::MEMBERS_REMOVED)?;
        Ok(EtcdBackend {
            reader,
            path: name,
            key,
            meta,
            lease,
            auth,
            auth_users,
            auth_roles,
            members_removed,
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
            auth_enabled: false,
            users: 0,
            roles: 0,
            removed_members: 0,
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
        let auth = self.auth_state()?;
        summary.auth_enabled = auth.enabled;
        summary.users = auth.users.len() as u64;
        summary.roles = auth.roles.len() as u64;
        summary.removed_members = self.removed_members()?.len() as u64;
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
        self.auth_state()?.persist_all(import.conn())?;
        for id in self.removed_members()? {
            membership::record_removed(import.conn(), id)?;
        }
        if summary.compacted > 0 {
            import.compact(summary.compacted)?;
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

    /// The auth store the `auth`, `authUsers` and `authRoles` buckets hold. A backup
    /// without them (auth never touched) is an empty, disabled store.
    fn auth_state(&self) -> Result<AuthState, BackupError> {
        let mut state = AuthState::default();
        if let Some(auth) = &self.auth {
            self.reader.for_each::<BackupError>(auth, |k, v| {
                match k {
                    auth_keys::ENABLED => {
                        state.enabled = match v {
                            [1] => true,
                            [0] => false,
                            _ => return Err(self.bad("auth", k, "neither 1 nor 0".into())),
                        }
                    }
                    auth_keys::REVISION => {
                        state.revision = u64::from_be_bytes(
                            v.try_into()
                                .map_err(|_| self.bad("auth", k, "not 8 bytes".into()))?,
                        )
                    }
                    _ => {}
                }
                Ok(())
            })?;
        }
        if let Some(users) = &self.auth_users {
            self.reader.for_each::<BackupError>(users, |k, v| {
                let user = User::decode(v)
                    .map_err(|e| self.bad("authUsers", k, format!("not an authpb.User: {e}")))?;
                let name = self.record_name("authUsers", k, &user.name)?;
                state.users.insert(name, user);
                Ok(())
            })?;
        }
        if let Some(roles) = &self.auth_roles {
            self.reader.for_each::<BackupError>(roles, |k, v| {
                let role = Role::decode(v)
                    .map_err(|e| self.bad("authRoles", k, format!("not an authpb.Role: {e}")))?;
                let name = self.record_name("authRoles", k, &role.name)?;
                state.roles.insert(name, role);
                Ok(())
            })?;
        }
        // etcd never lets root go while auth is on; a store that has lost it could not
        // be administered at all.
        if state.enabled && !state.users.get(ROOT_USER).is_some_and(has_root_role) {
            return Err(self.bad(
                "auth",
                auth_keys::ENABLED,
                "authentication is enabled but there is no root user with the root role".into(),
            ));
        }
        Ok(state)
    }

    /// A user's or role's name: the record's own, which must be its key, in UTF-8.
    fn record_name(
        &self,
        bucket: &'static str,
        key: &[u8],
        name: &[u8],
    ) -> Result<String, BackupError> {
        if name.is_empty() || name != key {
            return Err(self.bad(bucket, key, "the record's name is not its key".into()));
        }
        String::from_utf8(name.to_vec())
            .map_err(|_| self.bad(bucket, key, "the name is not UTF-8".into()))
    }

    /// The IDs in the `members_removed` bucket (hex keys, as etcd writes them).
    fn removed_members(&self) -> Result<Vec<u64>, BackupError> {
        let mut ids = Vec::new();
        if let Some(removed) = &self.members_removed {
            self.reader.for_each::<BackupError>(removed, |k, _| {
                let id = std::str::from_utf8(k)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or_else(|| self.bad("members_removed", k, "not a hex member ID".into()))?;
                ids.push(id);
                Ok(())
            })?;
        }
        Ok(ids)
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
