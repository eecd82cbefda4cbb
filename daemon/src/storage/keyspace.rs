//! The MVCC key space's tables: the one module that knows how revisions of keys are
//! laid out in the state database. `mvcc`, `watch` and `lease` read and write keys only
//! through it, and the operations that work on a whole store (hashes, backups in
//! etcd's format, defragmentation) use its revision-order API:
//!
//! - [`for_each_revision`]: every stored revision, in revision order, at the read point
//!   of the caller's transaction;
//! - [`crate::mvcc::Revisions::load`]: the current and the compact revision at that
//!   read point;
//! - [`Import`]: a bulk load into an empty store, in one transaction.
//!
//! A stored revision is a [`RevisionRow`]: what etcd keeps under one revision in its
//! `key` bucket.

use std::ops::ControlFlow;

use rusqlite::{
    Connection, OptionalExtension, Transaction, params, params_from_iter, types::Value,
};

use super::KeyRange;
use super::{Meta, StorageError};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

/// Tables whose content is the key space (replicated; travels in Raft snapshots).
pub const TABLES: &[&str] = &["kv_live", "kv_history"];

/// One change of one key: a put (a new version) or a delete (a tombstone). Revision
/// `(main, sub)` is unique: `main` is the store revision the change created, `sub`
/// its position among the changes of that revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevisionRow {
    pub key: Vec<u8>,
    pub main: i64,
    pub sub: i64,
    /// The revision that created this life of the key (0 in a tombstone).
    pub create_revision: i64,
    /// Puts since it was created, this one included (0 in a tombstone).
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
    pub tombstone: bool,
}

impl RevisionRow {
    /// The key-value a read at this revision returns (a tombstone has none).
    pub fn key_value(&self) -> KeyValue {
        KeyValue {
            key: self.key.clone(),
            create_revision: self.create_revision,
            mod_revision: self.main,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }

    /// The watch event of this change.
    pub fn into_event(self) -> Event {
        let tombstone = self.tombstone;
        Event {
            r#type: if tombstone {
                EventType::Delete as i32
            } else {
                EventType::Put as i32
            },
            kv: Some(if tombstone {
                KeyValue {
                    key: self.key,
                    mod_revision: self.main,
                    ..Default::default()
                }
            } else {
                KeyValue {
                    key: self.key,
                    create_revision: self.create_revision,
                    mod_revision: self.main,
                    version: self.version,
                    value: self.value,
                    lease: self.lease,
                }
            }),
            prev_kv: None,
        }
    }
}

const HISTORY_COLUMNS: &str = "key, mod_rev, sub_rev, create_rev, version, value, lease, tombstone";

fn history_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RevisionRow> {
    Ok(RevisionRow {
        key: r.get(0)?,
        main: r.get(1)?,
        sub: r.get(2)?,
        create_revision: r.get(3)?,
        version: r.get(4)?,
        value: r.get(5)?,
        lease: r.get(6)?,
        tombstone: r.get(7)?,
    })
}

fn range_params(range: &KeyRange) -> (&'static str, Vec<Value>) {
    let (cond, keys) = range.sql();
    (cond, keys.iter().map(|k| Value::Blob(k.to_vec())).collect())
}

/// Records one change, inside the caller's (write) transaction.
pub fn write(conn: &Connection, row: &RevisionRow) -> Result<(), StorageError> {
    if row.tombstone {
        conn.prepare_cached("DELETE FROM kv_live WHERE key = ?1")?
            .execute(params![row.key])?;
    } else {
        conn.prepare_cached(
            "INSERT INTO kv_live (key, create_rev, mod_rev, version, value, lease)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (key) DO UPDATE SET create_rev = excluded.create_rev,
               mod_rev = excluded.mod_rev, version = excluded.version,
               value = excluded.value, lease = excluded.lease",
        )?
        .execute(params![
            row.key,
            row.create_revision,
            row.main,
            row.version,
            row.value,
            row.lease
        ])?;
    }
    insert_history(conn, row)
}

fn insert_history(conn: &Connection, row: &RevisionRow) -> Result<(), StorageError> {
    conn.prepare_cached(&format!(
        "INSERT INTO kv_history ({HISTORY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        row.key,
        row.main,
        row.sub,
        row.create_revision,
        row.version,
        row.value,
        row.lease,
        row.tombstone
    ])?;
    Ok(())
}

/// The newest version of `key`, if it is live.
pub fn live(conn: &Connection, key: &[u8]) -> Result<Option<KeyValue>, StorageError> {
    let mut stmt = conn.prepare_cached(
        "SELECT create_rev, mod_rev, version, value, lease FROM kv_live WHERE key = ?1",
    )?;
    Ok(stmt
        .query_row(params![key], |r| {
            Ok(KeyValue {
                key: key.to_vec(),
                create_revision: r.get(0)?,
                mod_revision: r.get(1)?,
                version: r.get(2)?,
                value: r.get(3)?,
                lease: r.get(4)?,
            })
        })
        .optional()?)
}

/// Which version of the keys a scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The newest.
    Current,
    /// The newest at or below this revision (which must not be compacted away).
    Revision(i64),
}

/// What a scan reads of each key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    pub at: At,
    /// Key order descending instead of ascending.
    pub descending: bool,
    /// Leave values out (empty) when the caller does not need them.
    pub values: bool,
}

/// The live keys in `range` as of `scan.at`, in key order, each handed to `visit`
/// until it breaks.
pub fn scan(
    conn: &Connection,
    range: &KeyRange,
    scan: Scan,
    mut visit: impl FnMut(KeyValue) -> ControlFlow<()>,
) -> Result<(), StorageError> {
    let (cond, mut args) = range_params(range);
    let value = if scan.values { "value" } else { "x''" };
    let source = match scan.at {
        At::Current => format!(
            "SELECT key, create_rev, mod_rev, version, {value}, lease FROM kv_live WHERE {cond}"
        ),
        At::Revision(rev) => {
            // The newest version of each key at or below the revision; the bare columns
            // come from the row holding MAX(mod_rev), as SQLite guarantees for a lone
            // MAX().
            args.push(Value::Integer(rev));
            format!(
                "SELECT key, create_rev, mod_rev, version, value, lease FROM (
                    SELECT key, create_rev, MAX(mod_rev) AS mod_rev, version, {value} AS value,
                           lease, tombstone
                    FROM kv_history WHERE {cond} AND mod_rev <= ? GROUP BY key)
                 WHERE tombstone = 0"
            )
        }
    };
    let order = if scan.descending { "DESC" } else { "ASC" };
    let mut stmt = conn.prepare_cached(&format!("{source} ORDER BY key {order}"))?;
    let mut rows = stmt.query(params_from_iter(args.iter()))?;
    while let Some(r) = rows.next()? {
        let kv = KeyValue {
            key: r.get(0)?,
            create_revision: r.get(1)?,
            mod_revision: r.get(2)?,
            version: r.get(3)?,
            value: r.get(4)?,
            lease: r.get(5)?,
        };
        if visit(kv).is_break() {
            break;
        }
    }
    Ok(())
}

/// How many keys in `range` are live as of `at`.
pub fn count(conn: &Connection, range: &KeyRange, at: At) -> Result<i64, StorageError> {
    let (cond, mut args) = range_params(range);
    let sql = match at {
        At::Current => format!("SELECT COUNT(*) FROM kv_live WHERE {cond}"),
        At::Revision(rev) => {
            args.push(Value::Integer(rev));
            format!(
                "SELECT COUNT(*) FROM (
                    SELECT MAX(mod_rev), tombstone FROM kv_history
                    WHERE {cond} AND mod_rev <= ? GROUP BY key)
                 WHERE tombstone = 0"
            )
        }
    };
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params_from_iter(args.iter()), |r| r.get(0))?)
}

/// Changes of revisions `from..=to` on keys in `range`, in revision order, handed to
/// `visit` until it breaks.
pub fn changes(
    conn: &Connection,
    range: &KeyRange,
    from: i64,
    to: i64,
    mut visit: impl FnMut(RevisionRow) -> ControlFlow<()>,
) -> Result<(), StorageError> {
    let (cond, keys) = range_params(range);
    let mut args = vec![Value::Integer(from), Value::Integer(to)];
    args.extend(keys);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {HISTORY_COLUMNS} FROM kv_history
         WHERE mod_rev >= ?1 AND mod_rev <= ?2 AND {cond}
         ORDER BY mod_rev, sub_rev"
    ))?;
    let mut rows = stmt.query(params_from_iter(args.iter()))?;
    while let Some(r) = rows.next()? {
        if visit(history_row(r)?).is_break() {
            break;
        }
    }
    Ok(())
}

/// The newest change of `key` before revision `before`, tombstone or not.
pub fn change_before(
    conn: &Connection,
    key: &[u8],
    before: i64,
) -> Result<Option<RevisionRow>, StorageError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {HISTORY_COLUMNS} FROM kv_history
             WHERE key = ?1 AND mod_rev < ?2 ORDER BY mod_rev DESC LIMIT 1"
        ))?
        .query_row(params![key, before], history_row)
        .optional()?)
}

/// The live keys attached to lease `id`, in key order.
pub fn lease_keys(conn: &Connection, id: i64) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut stmt = conn.prepare_cached("SELECT key FROM kv_live WHERE lease = ?1 ORDER BY key")?;
    let rows = stmt.query_map(params![id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Forgets every change at or below `rev` that reads at `rev` or later cannot see: all
/// but the newest change of each key, and that one too if it is a tombstone.
pub fn compact(conn: &Connection, rev: i64) -> Result<(), StorageError> {
    conn.prepare_cached(
        "DELETE FROM kv_history WHERE mod_rev <= ?1 AND (tombstone = 1 OR mod_rev < (
            SELECT MAX(h.mod_rev) FROM kv_history h
            WHERE h.key = kv_history.key AND h.mod_rev <= ?1))",
    )?
    .execute(params![rev])?;
    Ok(())
}

/// Every stored revision, in revision order, at the read point of the caller's
/// transaction (open one with [`super::ReadGuard::read`] for a consistent view of a
/// serving member). Stops early when `visit` breaks.
pub fn for_each_revision<E: From<StorageError>>(
    conn: &Connection,
    mut visit: impl FnMut(RevisionRow) -> Result<ControlFlow<()>, E>,
) -> Result<(), E> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {HISTORY_COLUMNS} FROM kv_history ORDER BY mod_rev, sub_rev"
        ))
        .map_err(StorageError::from)?;
    let mut rows = stmt.query([]).map_err(StorageError::from)?;
    while let Some(r) = rows.next().map_err(StorageError::from)? {
        let row = history_row(r).map_err(StorageError::from)?;
        if visit(row)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// A bulk load of a key space into an empty store (an etcd backup being restored),
/// in one transaction: nothing of it is visible, or survives a crash, before
/// [`Import::commit`].
pub struct Import<'c> {
    tx: Transaction<'c>,
    last: Option<(i64, i64)>,
}

impl<'c> Import<'c> {
    /// Starts the import; fails if the store holds any key, lease or revision.
    pub fn begin(conn: &'c mut Connection) -> Result<Self, StorageError> {
        let tx = conn.transaction()?;
        let used: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM kv_history) OR EXISTS (SELECT 1 FROM leases)
               OR EXISTS (SELECT 1 FROM meta WHERE name = ?1)",
            params![Meta::Revision.name()],
            |r| r.get(0),
        )?;
        if used {
            return Err(StorageError::NotEmpty);
        }
        Ok(Import { tx, last: None })
    }

    /// Adds one stored revision; revisions must come in ascending `(main, sub)` order.
    pub fn revision(&mut self, row: &RevisionRow) -> Result<(), StorageError> {
        let rev = (row.main, row.sub);
        if self.last.is_some_and(|last| last >= rev) {
            return Err(StorageError::Corrupt(format!(
                "import: revision {rev:?} of key {:?} after {:?}",
                String::from_utf8_lossy(&row.key),
                self.last.unwrap_or_default()
            )));
        }
        self.last = Some(rev);
        write(&self.tx, row)
    }

    /// The import's transaction, for rows that must commit with it (the identity and
    /// membership of the member being restored).
    pub fn conn(&self) -> &Connection {
        &self.tx
    }

    /// Adds a granted lease.
    pub fn lease(&mut self, id: i64, ttl: i64) -> Result<(), StorageError> {
        super::leases::insert(&self.tx, id, ttl)
    }

    /// Records the store's current and compact revision and makes the whole import
    /// durable.
    pub fn commit(self, current: i64, compacted: i64) -> Result<(), StorageError> {
        Meta::Revision.set_i64(&self.tx, current)?;
        Meta::CompactRevision.set_i64(&self.tx, compacted)?;
        self.tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use super::*;
    use crate::mvcc::{Revisions, WriteTxn, range};
    use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open_writer(&dir.path().join("s.db")).unwrap();
        (dir, conn)
    }

    fn all_revisions(conn: &Connection) -> Vec<RevisionRow> {
        let mut out = Vec::new();
        for_each_revision::<StorageError>(conn, |row| {
            out.push(row);
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        out
    }

    fn everything_at(conn: &Connection, revs: Revisions, revision: i64) -> Vec<KeyValue> {
        let req = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..Default::default()
        };
        range(conn, &req, revs).unwrap().kvs
    }

    /// A small history: puts, an overwrite, a txn-sized revision with two changes
    /// (a delete range) and a re-created key.
    fn fill(conn: &Connection) -> Revisions {
        let mut revs = Revisions::load(conn).unwrap();
        let put = |revs: &mut Revisions, k: &str, v: &str| {
            let mut w = WriteTxn::new(conn, *revs);
            w.put(&PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })
            .unwrap();
            revs.current = w.revision();
        };
        put(&mut revs, "a", "1");
        put(&mut revs, "b", "1");
        put(&mut revs, "a", "2");
        let mut w = WriteTxn::new(conn, revs);
        w.delete_range(&DeleteRangeRequest {
            key: "a".into(),
            range_end: "c".into(),
            ..Default::default()
        })
        .unwrap();
        revs.current = w.revision();
        put(&mut revs, "b", "again");
        revs
    }

    #[test]
    fn revisions_come_in_revision_order_with_every_field() {
        let (_d, conn) = store();
        fill(&conn);
        let rows = all_revisions(&conn);
        let order: Vec<(i64, i64)> = rows.iter().map(|r| (r.main, r.sub)).collect();
        assert_eq!(order, [(2, 0), (3, 0), (4, 0), (5, 0), (5, 1), (6, 0)]);
        let a2 = &rows[2];
        assert_eq!(
            (
                a2.key.as_slice(),
                a2.create_revision,
                a2.version,
                a2.value.as_slice()
            ),
            (&b"a"[..], 2, 2, &b"2"[..])
        );
        assert!(rows[3].tombstone && rows[4].tombstone);
        assert_eq!((rows[5].create_revision, rows[5].version), (6, 1));
    }

    #[test]
    fn an_import_reproduces_the_store_at_every_revision() {
        let (_d, source) = store();
        let revs = fill(&source);
        crate::storage::leases::insert(&source, 9, 30).unwrap();
        let (_d2, mut target) = store();
        let mut import = Import::begin(&mut target).unwrap();
        for row in all_revisions(&source) {
            import.revision(&row).unwrap();
        }
        import.lease(9, 30).unwrap();
        import.commit(revs.current, revs.compacted).unwrap();

        assert_eq!(all_revisions(&target), all_revisions(&source));
        let loaded = Revisions::load(&target).unwrap();
        assert_eq!(loaded, revs);
        for rev in 2..=revs.current {
            assert_eq!(
                everything_at(&target, loaded, rev),
                everything_at(&source, revs, rev),
                "at revision {rev}"
            );
        }
        assert_eq!(crate::storage::leases::all(&target).unwrap(), [(9, 30)]);
    }

    #[test]
    fn an_import_needs_an_empty_store_and_ordered_revisions() {
        let (_d, mut used) = store();
        fill(&used);
        assert!(matches!(
            Import::begin(&mut used),
            Err(StorageError::NotEmpty)
        ));
        let (_d2, mut empty) = store();
        let mut import = Import::begin(&mut empty).unwrap();
        let row = |main, sub| RevisionRow {
            key: b"k".to_vec(),
            main,
            sub,
            create_revision: 2,
            version: 1,
            ..Default::default()
        };
        import.revision(&row(3, 0)).unwrap();
        assert!(matches!(
            import.revision(&row(2, 0)),
            Err(StorageError::Corrupt(_))
        ));
        // Dropped without commit: nothing stays.
        drop(import);
        assert!(all_revisions(&empty).is_empty());
    }
}
