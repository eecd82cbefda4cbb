//! `Maintenance.HashKV` and `Maintenance.Hash`: checksums members compare to find out
//! whether their key spaces diverged.
//!
//! HashKV must equal etcd's bit for bit, so that `etcdctl endpoint hashkv` can compare a
//! qetcd member with an etcd one (after a migration, say). etcd 3.4, 3.5 and 3.6 agree
//! on it: a CRC-32C (Castagnoli) that starts with the name of etcd's key bucket
//! (`key`) and then takes, for every stored revision up to the hashed revision in
//! revision order, the bucket key (the revision's 17-byte encoding, 18 with the
//! tombstone mark) and the bucket value (the marshalled `mvccpb.KeyValue`, only the key
//! for a tombstone). At or below the compact revision only the revisions a read at
//! the hashed revision still sees are taken: each key's newest revision there, unless
//! that is a tombstone or has been superseded by a newer revision up to the hashed
//! one. If no key is live at the hashed revision, etcd takes every stored revision
//! below the compaction point; so does this. A tombstone at exactly the compact
//! revision is never taken (newer etcd keeps it in the bucket, older ones did not,
//! and etcd skips it so both hash alike; qetcd does not keep it).
//!
//! `Hash` is, in etcd, a checksum of the whole bbolt file's buckets, which has no
//! meaning outside bbolt. qetcd's is a CRC-32C over everything replicated that
//! decides what clients see: every stored revision (encoded as for HashKV, with no
//! compaction filter), then every lease (`lease` + ID and TTL, 8 bytes big-endian
//! each, in ID order), then every alarm (`alarm` + member ID, 8 bytes big-endian, and
//! the alarm type, 4 bytes big-endian). Members at the same applied index agree on it.

use std::ops::ControlFlow;

use prost::Message as _;
use rusqlite::Connection;

use super::Revisions;
use crate::error::RequestError;
use crate::storage::keyspace::{self, RevisionRow};
use crate::storage::{KeyRange, StateTxn, StorageError};

/// CRC-32C (Castagnoli), as Go's `crc32.MakeTable(crc32.Castagnoli)`.
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

const CASTAGNOLI_REVERSED: u32 = 0x82F6_3B78;

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CASTAGNOLI_REVERSED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c(!0)
    }
}

impl Crc32c {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.0;
        for b in bytes {
            crc = CRC_TABLE[((crc ^ u32::from(*b)) & 0xff) as usize] ^ (crc >> 8);
        }
        self.0 = crc;
    }

    pub fn sum(&self) -> u32 {
        !self.0
    }
}

/// What etcd's key bucket holds under one revision: its key (the revision, encoded
/// as etcd does) and its value (the marshalled key-value).
pub fn bucket_entry(row: &RevisionRow) -> ([u8; 18], usize, Vec<u8>) {
    let mut key = [0u8; 18];
    key[..8].copy_from_slice(&row.main.to_be_bytes());
    key[8] = b'_';
    key[9..17].copy_from_slice(&row.sub.to_be_bytes());
    let len = if row.tombstone {
        key[17] = b't';
        18
    } else {
        17
    };
    let value = if row.tombstone {
        crate::proto::mvccpb::KeyValue {
            key: row.key.clone(),
            ..Default::default()
        }
        .encode_to_vec()
    } else {
        row.key_value().encode_to_vec()
    };
    (key, len, value)
}

/// A HashKV result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The revision hashed up to.
    pub revision: i64,
    /// The store's compact revision, -1 if never compacted (as etcd reports it).
    pub compact_revision: i64,
    /// The store's current revision.
    pub current_revision: i64,
}

/// etcd's HashKV at `revision` (0: the current one), read inside the caller's
/// transaction.
pub fn hash_kv(conn: &StateTxn<'_>, revision: i64) -> Result<KvHash, RequestError> {
    let revs = Revisions::load(conn)?;
    // etcd's "never compacted" is -1; a compaction at 0 is impossible.
    let compact = if revs.compacted == 0 {
        -1
    } else {
        revs.compacted
    };
    if revision > 0 && revision < compact {
        return Err(RequestError::Compacted);
    }
    if revision > revs.current {
        return Err(RequestError::FutureRevision);
    }
    let rev = if revision <= 0 {
        revs.current
    } else {
        revision
    };
    let any_live = keyspace::count(
        conn,
        &KeyRange::From(Vec::new()),
        keyspace::At::Revision(rev),
    )? > 0;
    let mut crc = Crc32c::default();
    crc.update(b"key");
    keyspace::for_each_revision::<RequestError>(conn, |row| {
        if row.main > rev {
            return Ok(ControlFlow::Break(()));
        }
        if row.main <= compact {
            if row.main == compact && row.tombstone {
                return Ok(ControlFlow::Continue(()));
            }
            if any_live && !visible_at(conn, &row, rev)? {
                return Ok(ControlFlow::Continue(()));
            }
        }
        let (key, len, value) = bucket_entry(&row);
        crc.update(&key[..len]);
        crc.update(&value);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(KvHash {
        hash: crc.sum(),
        revision: rev,
        compact_revision: compact,
        current_revision: revs.current,
    })
}

/// Whether `row` is what a read at `rev` returns for its key.
fn visible_at(conn: &StateTxn<'_>, row: &RevisionRow, rev: i64) -> Result<bool, StorageError> {
    if row.tombstone {
        return Ok(false);
    }
    let newest = keyspace::change_before(conn, &row.key, rev + 1)?;
    Ok(newest.is_some_and(|n| !n.tombstone && n.main == row.main && n.sub == row.sub))
}

/// qetcd's whole-store `Hash` (see the module docs) and the current revision.
pub fn hash_all(conn: &Connection) -> Result<(u32, i64), RequestError> {
    let revs = Revisions::load(conn)?;
    let mut crc = Crc32c::default();
    crc.update(b"key");
    keyspace::for_each_revision::<RequestError>(conn, |row| {
        let (key, len, value) = bucket_entry(&row);
        crc.update(&key[..len]);
        crc.update(&value);
        Ok(ControlFlow::Continue(()))
    })?;
    crc.update(b"lease");
    for (id, ttl) in crate::storage::leases::all(conn)? {
        crc.update(&id.to_be_bytes());
        crc.update(&ttl.to_be_bytes());
    }
    crc.update(b"alarm");
    for alarm in crate::storage::alarms::list(conn)? {
        crc.update(&alarm.member_id.to_be_bytes());
        crc.update(&alarm.alarm.to_be_bytes());
    }
    Ok((crc.sum(), revs.current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        let mut c = Crc32c::default();
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.sum(), 0xE306_9283);
    }

    #[test]
    fn bucket_keys_are_etcds_revision_encoding() {
        let row = RevisionRow {
            key: b"k".to_vec(),
            main: 0x0102,
            sub: 3,
            tombstone: true,
            ..Default::default()
        };
        let (key, len, value) = bucket_entry(&row);
        assert_eq!(
            &key[..len],
            &[0, 0, 0, 0, 0, 0, 1, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 3, b't']
        );
        // A tombstone's value is a KeyValue holding only the key (field 1).
        assert_eq!(value, vec![0x0a, 1, b'k']);
    }
}
