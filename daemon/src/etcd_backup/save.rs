//! The state database as an etcd snapshot: the bbolt backend file etcd would hold for
//! the same state, then the sha256 of that file, which is what etcd's `Snapshot` RPC
//! streams and `snapshot restore` checks.
//!
//! Everything is read inside the caller's read transaction, so the file is one
//! consistent state (SQLite's WAL mode keeps that state for the reader while the Raft
//! thread goes on writing). It is built in a temporary file, unlinked as soon as it is
//! created so that nothing is left behind whatever happens, never in memory: a key
//! space may be gigabytes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::Path;

use prost::Message;
use rusqlite::Connection;

use super::{
    BackupError, EtcdMember, LeaseRecord, REMOVED_MARK, auth_keys, buckets, member_key, meta_keys,
    rev_key,
};
use crate::auth::AuthState;
use crate::bbolt::Writer;
use crate::membership;
use crate::mvcc::Revisions;
use crate::storage::{Meta, StorageError, keyspace, leases};

/// The cluster version written into the backup's `cluster` bucket: the one qetcd
/// reports. It is also the storage version the `Snapshot` RPC announces: the layout
/// written here is etcd 3.5's.
pub const CLUSTER_VERSION: &str = "3.5.0";

/// A finished snapshot: an unlinked file positioned at its start.
pub struct Snapshot {
    pub file: File,
    /// Bytes, the sha256 included.
    pub size: u64,
    pub revision: i64,
    pub keys: u64,
}

/// Writes the state `conn` reads (inside its current transaction) as an etcd snapshot
/// into a temporary file in `dir`.
pub fn write_snapshot(conn: &Connection, dir: &Path) -> Result<Snapshot, BackupError> {
    let path = dir.join(format!(
        "etcd-snapshot-{}-{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| BackupError::io(&path, e))?;
    std::fs::remove_file(&path).map_err(|e| BackupError::io(&path, e))?;
    let name = path.display().to_string();
    let mut w = Writer::new(file, &name)?;

    let revs = Revisions::load(conn).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let mut keys = 0u64;
    {
        let mut b = w.bucket(buckets::KEY);
        let mut encoded = Vec::new();
        keyspace::for_each_revision::<BackupError>(conn, |row| {
            encoded.clear();
            let kv = if row.tombstone {
                // etcd records a deletion as a key-value holding only the key.
                crate::proto::mvccpb::KeyValue {
                    key: row.key,
                    ..Default::default()
                }
            } else {
                row.key_value()
            };
            kv.encode(&mut encoded).expect("a Vec grows as needed");
            b.put(&rev_key(row.main, row.sub, row.tombstone), &encoded)?;
            keys += 1;
            Ok(ControlFlow::Continue(()))
        })?;
        b.finish()?;
    }
    {
        let mut b = w.bucket(buckets::META);
        let applied_index = Meta::AppliedIndex.get_u64(conn)?.unwrap_or(0);
        let applied_term = Meta::AppliedTerm.get_u64(conn)?.unwrap_or(0);
        // In key order, as the writer needs them.
        b.put(meta_keys::CONSISTENT_INDEX, &applied_index.to_be_bytes())?;
        if revs.compacted > 0 {
            let compacted = rev_key(revs.compacted, 0, false);
            b.put(meta_keys::FINISHED_COMPACT, &compacted)?;
            b.put(meta_keys::SCHEDULED_COMPACT, &compacted)?;
        }
        b.put(meta_keys::TERM, &applied_term.to_be_bytes())?;
        b.finish()?;
    }
    {
        let mut b = w.bucket(buckets::LEASE);
        for (id, ttl) in leases::all(conn)? {
            let record = LeaseRecord {
                id,
                ttl,
                remaining_ttl: 0,
            };
            b.put(&(id as u64).to_be_bytes(), &record.encode_to_vec())?;
        }
        b.finish()?;
    }
    {
        let mut members: Vec<(String, Vec<u8>)> = membership::list(conn)?
            .into_iter()
            .map(|m| {
                let json = serde_json::to_vec(&EtcdMember {
                    id: m.id,
                    peer_urls: m.peer_urls,
                    is_learner: m.is_learner,
                    name: m.name,
                    client_urls: m.client_urls,
                })
                .expect("a member always serialises");
                (member_key(m.id), json)
            })
            .collect();
        members.sort();
        let mut b = w.bucket(buckets::MEMBERS);
        for (k, v) in members {
            b.put(k.as_bytes(), &v)?;
        }
        b.finish()?;
    }
    {
        let mut removed: Vec<String> = membership::removed_ids(conn)?
            .into_iter()
            .map(member_key)
            .collect();
        removed.sort();
        let mut b = w.bucket(buckets::MEMBERS_REMOVED);
        for k in removed {
            b.put(k.as_bytes(), REMOVED_MARK)?;
        }
        b.finish()?;
    }
    {
        let mut b = w.bucket(buckets::CLUSTER);
        b.put(b"clusterVersion", CLUSTER_VERSION.as_bytes())?;
        b.finish()?;
    }
    w.bucket(buckets::ALARM).finish()?;
    write_auth(&mut w, &AuthState::load(conn)?)?;

    let mut file = w.finish()?;
    let db_len = file
        .stream_position()
        .map_err(|e| BackupError::io(&path, e))?;
    let digest = sha256_of(&mut file, db_len).map_err(|e| BackupError::io(&path, e))?;
    file.seek(SeekFrom::Start(db_len))
        .and_then(|_| file.write_all(&digest))
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .map_err(|e| BackupError::io(&path, e))?;
    Ok(Snapshot {
        file,
        size: db_len + digest.len() as u64,
        revision: revs.current,
        keys,
    })
}

/// etcd's three auth buckets from qetcd's auth store.
fn write_auth(w: &mut Writer, auth: &AuthState) -> Result<(), BackupError> {
    {
        let mut b = w.bucket(buckets::AUTH);
        // In key order ("authEnabled" < "authRevision"). etcd starts its revision at 1
        // and moves a 0 it finds there to 1; writing it so keeps the file as etcd has it.
        b.put(auth_keys::ENABLED, &[u8::from(auth.enabled)])?;
        b.put(auth_keys::REVISION, &auth.revision.max(1).to_be_bytes())?;
        b.finish()?;
    }
    // etcd keys users and roles by name (bytes, which is how the maps are ordered:
    // a String orders as its UTF-8 bytes).
    let mut b = w.bucket(buckets::AUTH_USERS);
    for user in auth.users.values() {
        b.put(&user.name, &user.encode_to_vec())?;
    }
    b.finish()?;
    let mut b = w.bucket(buckets::AUTH_ROLES);
    for role in auth.roles.values() {
        b.put(&role.name, &role.encode_to_vec())?;
    }
    b.finish()?;
    Ok(())
}

fn sha256_of(file: &mut File, len: u64) -> std::io::Result<[u8; 32]> {
    file.seek(SeekFrom::Start(0))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(left as usize);
        file.read_exact(&mut buf[..n])?;
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}
