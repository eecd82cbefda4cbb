//! Backups in etcd's format, both ways, so that etcd's own tools (`etcdctl snapshot
//! save/status/restore`, `etcdutl snapshot restore`) work with qetcd and a cluster can
//! move between etcd and qetcd by save → restore → start:
//!
//! - [`save`]: the state database, read in one read transaction, written as the bbolt
//!   backend file etcd would have (its buckets, key encoding and values) followed by the
//!   sha256 etcd appends to a streamed snapshot;
//! - [`import`]: an etcd backend file (a restored `member/snap/db`) loaded into an empty
//!   state database in one transaction, auth store and removed members included (an
//!   auth-enabled backup must come back auth-enabled: anything else would serve its
//!   data to anyone);
//! - [`wal`]: what tells a data dir made by `snapshot restore` from one an etcd member
//!   has run in: its WAL holds nothing but restore's bootstrap entries.
//!
//! The bucket layout is etcd 3.4/3.5's (`server/mvcc/backend` and `server/etcdserver/
//! cindex` in etcd's source); the process-level tests check it with etcd's tools.

pub mod import;
pub mod save;
pub mod wal;

use crate::bbolt::BboltError;
use crate::storage::StorageError;

/// etcd's bucket names.
pub mod buckets {
    pub const KEY: &[u8] = b"key";
    pub const META: &[u8] = b"meta";
    pub const LEASE: &[u8] = b"lease";
    pub const MEMBERS: &[u8] = b"members";
    pub const MEMBERS_REMOVED: &[u8] = b"members_removed";
    pub const CLUSTER: &[u8] = b"cluster";
    pub const ALARM: &[u8] = b"alarm";
    pub const AUTH: &[u8] = b"auth";
    pub const AUTH_USERS: &[u8] = b"authUsers";
    pub const AUTH_ROLES: &[u8] = b"authRoles";
}

/// Keys of etcd's `meta` bucket.
mod meta_keys {
    pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
    pub const TERM: &[u8] = b"term";
    pub const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
    pub const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
}

/// Keys of etcd's `auth` bucket: the enabled flag (one byte, 1 or 0) and the auth
/// revision (8 bytes, big-endian).
mod auth_keys {
    pub const ENABLED: &[u8] = b"authEnabled";
    pub const REVISION: &[u8] = b"authRevision";
}

/// The value etcd's `members_removed` bucket holds under a removed member's ID (etcd
/// reads only the key).
const REMOVED_MARK: &[u8] = b"removed";

/// etcd's key for a member in its `members` and `members_removed` buckets: the ID in
/// lowercase hex without leading zeros.
fn member_key(id: u64) -> String {
    format!("{id:x}")
}

/// Length of an etcd revision key: 8-byte big-endian main revision, `_`, 8-byte
/// big-endian sub revision; a tombstone's key has a `t` after it.
const REV_KEY_LEN: usize = 17;

fn rev_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(REV_KEY_LEN + 1);
    k.extend_from_slice(&(main as u64).to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&(sub as u64).to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// (main, sub, tombstone) of a revision key, if it is one.
fn parse_rev_key(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        REV_KEY_LEN => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(k[0..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(k[9..17].try_into().ok()?) as i64;
    Some((main, sub, tombstone))
}

/// etcd's `leasepb.Lease`, as its `lease` bucket stores it.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// A member as etcd's `members` bucket and its restore's conf-change contexts hold it
/// (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EtcdMember {
    pub id: u64,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(
        rename = "isLearner",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub is_learner: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "clientURLs", default, skip_serializing_if = "Vec::is_empty")]
    pub client_urls: Vec<String>,
}

/// Why a backup could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Bbolt(#[from] BboltError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{path}: bucket {bucket:?}, key {key}: {reason}")]
    BadRecord {
        path: String,
        bucket: &'static str,
        key: String,
        reason: String,
    },
    #[error("{path} has no {bucket:?} bucket: it is not an etcd backend database")]
    MissingBucket { path: String, bucket: &'static str },
    #[error("{path}: {reason}")]
    Wal { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl BackupError {
    fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        BackupError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
