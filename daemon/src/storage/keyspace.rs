//! The MVCC key space's tables: the one module that knows how revisions of keys are
//! laid out. `mvcc`, `watch` and `lease` read and write keys only through it, and the
//! operations that work on a whole store (hashes, backups in etcd's format,
//! defragmentation) use its revision-order API:
//!
//! - [`for_each_revision`]: every stored revision, in revision order, at the read point
//!   of the caller's transaction;
//! - [`crate::mvcc::Revisions::load`]: the current and the compact revision at that
//!   read point;
//! - [`Import`]: a bulk load into an empty store, in one transaction.
//!
//! A stored revision is a [`RevisionRow`]: what etcd keeps under one revision in its
//! `key` bucket. Rows live in `kv_revisions`, in revision order (appended, whatever the
//! key); which rows each key has is in memory ([`super::key_index`]), so a read by key
//! goes through the index to rows by id, and a write appends a row and records it in
//! the index ([`write`]).

use std::ops::ControlFlow;

use rusqlite::{
    Connection, OptionalExtension, Transaction, params, params_from_iter, types::Value,
};

use super::KeyRange;
use super::key_index::{Live, StoredRev, Undo, Walk};
use super::{Meta, StateTxn, StorageError};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

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

/// The columns of a [`RevisionRow`], in the order [`revision_row`] reads them.
const ROW_COLUMNS: &str = "key, mod_rev, sub_rev, create_rev, version, value, lease, tombstone";

fn revision_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RevisionRow> {
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

/// Appends one change's row, inside the caller's (write) transaction; returns its id.
fn insert_row(conn: &Connection, row: &RevisionRow) -> Result<i64, StorageError> {
    conn.prepare_cached(&format!(
        "INSERT INTO kv_revisions ({ROW_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
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
    Ok(conn.last_insert_rowid())
}

/// Records one change in the writer's transaction: its row, and in the index. Returns
/// how to take the index's part back if the request fails (its row goes with the
/// request's savepoint).
pub fn write(txn: &StateTxn<'_>, row: &RevisionRow) -> Result<Undo, StorageError> {
    let writer = txn
        .writer_index()
        .ok_or_else(|| StorageError::Corrupt("a write in a read transaction".into()))?;
    let id = insert_row(txn, row)?;
    let live = if row.tombstone {
        Live::default()
    } else {
        Live {
            create_revision: row.create_revision,
            version: row.version,
            lease: row.lease,
        }
    };
    Ok(writer
        .write()
        .record(&row.key, StoredRev::new(row.main, id, row.tombstone), live))
}

/// Reads the row the index says holds revision `rev` of `key`, checking that it is
/// that revision of that key. The index only names rows within the reader's snapshot
/// (compacted rows stay named until every reader that may see them is done), so a
/// missing or different row is damage.
fn fetch(
    conn: &Connection,
    key: &[u8],
    rev: StoredRev,
    values: bool,
) -> Result<RevisionRow, StorageError> {
    // Two fixed statements, so the per-row lookup never builds SQL.
    const WITH_VALUE: &str = "SELECT key, mod_rev, sub_rev, create_rev, version, value, \
        lease, tombstone FROM kv_revisions WHERE id = ?1";
    const WITHOUT_VALUE: &str = "SELECT key, mod_rev, sub_rev, create_rev, version, x'', \
        lease, tombstone FROM kv_revisions WHERE id = ?1";
    conn.prepare_cached(if values { WITH_VALUE } else { WITHOUT_VALUE })?
        .query_row(params![rev.id()], revision_row)
        .optional()?
        .filter(|r| r.main == rev.main && r.key == key)
        .ok_or_else(|| {
            StorageError::Corrupt(format!(
                "revision {} of key {:?} is indexed but not stored",
                rev.main,
                String::from_utf8_lossy(key)
            ))
        })
}

/// The newest version of `key`, if it is live; its value only if `values`.
pub fn live(
    txn: &StateTxn<'_>,
    key: &[u8],
    values: bool,
) -> Result<Option<KeyValue>, StorageError> {
    let found = if txn.writer_index().is_some() {
        // The writer sees every revision, and its index knows all of the newest
        // version but the value: one lookup, and no read unless the value is wanted.
        let Some((live, rev)) = txn.index().live(key) else {
            return Ok(None);
        };
        if !values {
            return Ok(Some(KeyValue {
                key: key.to_vec(),
                create_revision: live.create_revision,
                mod_revision: rev.main,
                version: live.version,
                value: Vec::new(),
                lease: live.lease,
            }));
        }
        rev
    } else {
        let visible = txn
            .index()
            .newest_at(key, txn.visible_through())
            .filter(|r| !r.tombstone());
        let Some(rev) = visible else {
            return Ok(None);
        };
        rev
    };
    Ok(Some(fetch(txn, key, found, values)?.key_value()))
}

/// Which version of the keys a scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The newest.
    Current,
    /// The newest at or below this revision (which must not be compacted away).
    Revision(i64),
}

impl At {
    fn revision(self, txn: &StateTxn<'_>) -> i64 {
        match self {
            At::Current => txn.visible_through(),
            At::Revision(r) => r.min(txn.visible_through()),
        }
    }
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

/// Keys a scan takes from the index at a time, and index entries a scan or a count
/// looks at per hold of the index's read lock: the lock is never held while rows are
/// read, nor for long, so the Raft thread never waits long to record a write.
const SCAN_CHUNK: usize = 512;
const WALK_BUDGET: usize = 4096;

/// The live keys in `range` as of `scan.at`, in key order, each handed to `visit`
/// until it breaks.
pub fn scan(
    txn: &StateTxn<'_>,
    range: &KeyRange,
    scan: Scan,
    mut visit: impl FnMut(KeyValue) -> ControlFlow<()>,
) -> Result<(), StorageError> {
    let at = scan.at.revision(txn);
    let mut rest = range.clone();
    loop {
        let mut chunk: Vec<(Vec<u8>, StoredRev)> = Vec::with_capacity(SCAN_CHUNK);
        let walk = txn
            .index()
            .visible(&rest, at, scan.descending, WALK_BUDGET, |k, rev| {
                chunk.push((k.to_vec(), rev));
                chunk.len() < SCAN_CHUNK
            });
        for (key, rev) in &chunk {
            let row = fetch(txn, key, *rev, scan.values)?;
            if visit(row.key_value()).is_break() {
                return Ok(());
            }
        }
        rest = match walk {
            Walk::Done => return Ok(()),
            Walk::Stopped => match chunk.last() {
                Some((last, _)) => rest.past(last, scan.descending),
                None => return Ok(()),
            },
            Walk::Paused(last) => rest.past(&last, scan.descending),
        };
    }
}

/// How many keys in `range` are live as of `at`.
pub fn count(txn: &StateTxn<'_>, range: &KeyRange, at: At) -> Result<i64, StorageError> {
    let at = at.revision(txn);
    let mut rest = range.clone();
    let mut total = 0;
    loop {
        let (n, walk) = txn.index().count(&rest, at, WALK_BUDGET);
        total += n as i64;
        match walk {
            Walk::Paused(last) => rest = rest.past(&last, false),
            Walk::Done | Walk::Stopped => return Ok(total),
        }
    }
}

/// Keys live now (at the transaction's view).
pub fn live_keys(txn: &StateTxn<'_>) -> i64 {
    txn.index().live_keys() as i64
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
    let Some(first) = first_id_from(conn, from)? else {
        return Ok(());
    };
    let end = first_id_from(conn, to.saturating_add(1))?.unwrap_or(i64::MAX);
    let (cond, keys) = range.sql();
    let mut args = vec![Value::Integer(first), Value::Integer(end)];
    args.extend(keys.iter().map(|k| Value::Blob(k.to_vec())));
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ROW_COLUMNS} FROM kv_revisions
         WHERE id >= ?1 AND id < ?2 AND {cond}
         ORDER BY id"
    ))?;
    let mut rows = stmt.query(params_from_iter(args.iter()))?;
    while let Some(r) = rows.next()? {
        if visit(revision_row(r)?).is_break() {
            break;
        }
    }
    Ok(())
}

/// The id of the first row whose main revision is `rev` or later; `None` when there is
/// none.
///
/// Rows are appended in revision order, so ids and revisions rise together, and a
/// binary search over ids (with gaps where compaction removed rows; each probe takes
/// the next row at or after it) finds the row in about twenty seeks. An index on the
/// revision would answer at once, but every put had to insert into it: one B-tree
/// page more in each apply's commit (a quarter of its WAL frames at one client), for
/// the few reads by revision (watch history).
fn first_id_from(conn: &Connection, rev: i64) -> Result<Option<i64>, StorageError> {
    let last: Option<i64> = conn.query_row("SELECT max(id) FROM kv_revisions", [], |r| r.get(0))?;
    let Some(last) = last else {
        return Ok(None);
    };
    let mut next = conn.prepare_cached(
        "SELECT id, mod_rev FROM kv_revisions WHERE id >= ?1 ORDER BY id LIMIT 1",
    )?;
    let mut row_at_or_after = |at: i64| -> Result<Option<(i64, i64)>, StorageError> {
        Ok(next
            .query_row([at], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    };
    // The smallest id whose next row is at `rev` or later, or is missing: whether it
    // is only rises with the id.
    let (mut low, mut high) = (0, last + 1);
    while low < high {
        let mid = low + (high - low) / 2;
        match row_at_or_after(mid)? {
            Some((_, main)) if main < rev => low = mid + 1,
            _ => high = mid,
        }
    }
    Ok(row_at_or_after(low)?.map(|(id, _)| id))
}

/// The newest change of `key` before revision `before`, tombstone or not. A tombstone
/// is given as the index knows it (key, main revision), not read: a compaction may
/// already have removed its row while the index keeps it for readers that started
/// earlier.
pub fn change_before(
    txn: &StateTxn<'_>,
    key: &[u8],
    before: i64,
) -> Result<Option<RevisionRow>, StorageError> {
    let at = (before - 1).min(txn.visible_through());
    let found = txn.index().newest_at(key, at);
    match found {
        None => Ok(None),
        Some(rev) if rev.tombstone() => Ok(Some(RevisionRow {
            key: key.to_vec(),
            main: rev.main,
            tombstone: true,
            ..Default::default()
        })),
        Some(rev) => fetch(txn, key, rev, true).map(Some),
    }
}

/// The live keys attached to lease `id`, in key order: for a reader, those whose
/// attaching version is within its snapshot.
pub fn lease_keys(txn: &StateTxn<'_>, id: i64) -> Vec<Vec<u8>> {
    let index = txn.index();
    let through = txn.visible_through();
    let mut keys = index.lease_keys(id);
    keys.retain(|k| index.live(k).is_some_and(|(_, rev)| rev.main <= through));
    keys
}

/// Forgets every change at or below `rev` that reads at `rev` or later cannot see: all
/// but the newest change of each key, and that one too if it is a tombstone. The rows
/// go now, in the writer's transaction; the index forgets them once no reader may
/// still need them.
pub fn compact(txn: &StateTxn<'_>, rev: i64) -> Result<(), StorageError> {
    let writer = txn
        .writer_index()
        .ok_or_else(|| StorageError::Corrupt("a compaction in a read transaction".into()))?;
    let doomed = writer.read().compactable(rev);
    // The revision as well as the id: the index still names rows an earlier compaction
    // deleted (it forgets them after their grace period), and SQLite may have given
    // such a row's id to a new row since.
    let mut delete =
        txn.prepare_cached("DELETE FROM kv_revisions WHERE id = ?1 AND mod_rev = ?2")?;
    for (id, main) in doomed {
        delete.execute(params![id, main])?;
    }
    writer.compacted(rev);
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
            "SELECT {ROW_COLUMNS} FROM kv_revisions ORDER BY id"
        ))
        .map_err(StorageError::from)?;
    let mut rows = stmt.query([]).map_err(StorageError::from)?;
    while let Some(r) = rows.next().map_err(StorageError::from)? {
        let row = revision_row(r).map_err(StorageError::from)?;
        if visit(row)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// Replaces the key space with that of the database attached as `schema` (a Raft
/// snapshot), inside the caller's transaction. A snapshot from a qetcd that kept the
/// history in `kv_history` (layout 4 and before) is read from there.
pub fn install_attached(conn: &Connection, schema: &str) -> Result<(), StorageError> {
    conn.execute("DELETE FROM main.kv_revisions", [])?;
    let has = |table: &str| -> Result<bool, StorageError> {
        Ok(conn.query_row(
            &format!(
                "SELECT count(*) > 0 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?1"
            ),
            params![table],
            |r| r.get(0),
        )?)
    };
    if has("kv_revisions")? {
        conn.execute(
            &format!(
                "INSERT INTO main.kv_revisions (id, {ROW_COLUMNS})
                 SELECT id, {ROW_COLUMNS} FROM {schema}.kv_revisions"
            ),
            [],
        )?;
    } else if has("kv_history")? {
        conn.execute(
            &format!(
                "INSERT INTO main.kv_revisions ({ROW_COLUMNS})
                 SELECT {ROW_COLUMNS} FROM {schema}.kv_history ORDER BY mod_rev, sub_rev"
            ),
            [],
        )?;
    }
    Ok(())
}

/// A bulk load of a key space into an empty store (an etcd backup being restored),
/// in one transaction: nothing of it is visible, or survives a crash, before
/// [`Import::commit`]. The key index is built when the member starts.
pub struct Import<'c> {
    tx: Transaction<'c>,
    last: Option<(i64, i64)>,
}

impl<'c> Import<'c> {
    /// Starts the import; fails if the store holds any key, lease or revision.
    pub fn begin(conn: &'c mut Connection) -> Result<Self, StorageError> {
        let tx = conn.transaction()?;
        let used: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM kv_revisions) OR EXISTS (SELECT 1 FROM leases)
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
        insert_row(&self.tx, row).map(|_| ())
    }

    /// Compacts what was imported at `rev` (the backup's compaction point), as
    /// [`compact`] would: rows are in revision order, so a key's newest row at or
    /// below `rev` is the one with the highest id there.
    pub fn compact(&mut self, rev: i64) -> Result<(), StorageError> {
        self.tx.execute(
            "DELETE FROM kv_revisions WHERE mod_rev <= ?1 AND (tombstone = 1 OR id NOT IN (
                SELECT MAX(id) FROM kv_revisions WHERE mod_rev <= ?1 GROUP BY key))",
            params![rev],
        )?;
        Ok(())
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
    use crate::storage::TestStore;

    fn store() -> (tempfile::TempDir, TestStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = TestStore::open(&dir.path().join("s.db"));
        (dir, store)
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

    fn everything_at(conn: &StateTxn<'_>, revs: Revisions, revision: i64) -> Vec<KeyValue> {
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
    fn fill(conn: &StateTxn<'_>) -> Revisions {
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
        let (_d, store) = store();
        let conn = store.txn();
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
    fn changes_between_any_two_revisions_are_the_stored_rows_between_them() {
        let (_d, store) = store();
        let conn = store.txn();
        let mut revs = fill(&conn);
        for i in 0..40 {
            let mut w = crate::mvcc::WriteTxn::new(&conn, revs);
            w.put(&PutRequest {
                key: format!("k{}", i % 7).into(),
                value: format!("{i}").into(),
                ..Default::default()
            })
            .unwrap();
            revs.current = w.revision();
        }
        // Compaction leaves gaps among the ids, which the search must step over.
        revs = crate::mvcc::compact(&conn, revs, revs.current - 10).unwrap();
        let stored = all_revisions(&conn);
        assert!(stored.len() < 46, "the compaction removed rows");
        let everything = KeyRange::From(vec![0]);
        for from in 0..=revs.current + 2 {
            for to in from - 1..=revs.current + 2 {
                let mut got = Vec::new();
                changes(&conn, &everything, from, to, |row| {
                    got.push(row);
                    ControlFlow::Continue(())
                })
                .unwrap();
                let want: Vec<_> = stored
                    .iter()
                    .filter(|r| (from..=to).contains(&r.main))
                    .cloned()
                    .collect();
                assert_eq!(got, want, "changes {from}..={to}");
            }
        }
        let mut one_key = Vec::new();
        changes(
            &conn,
            &KeyRange::Single(b"k3".to_vec()),
            0,
            revs.current,
            |row| {
                one_key.push(row.main);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        let want: Vec<i64> = stored
            .iter()
            .filter(|r| r.key == b"k3")
            .map(|r| r.main)
            .collect();
        assert_eq!(one_key, want);
    }

    #[test]
    fn an_import_reproduces_the_store_at_every_revision() {
        let (_d, source) = store();
        let source = source.txn();
        let revs = fill(&source);
        crate::storage::leases::insert(&source, 9, 30).unwrap();
        let (_d2, mut target) = store();
        let mut import = Import::begin(&mut target.conn).unwrap();
        for row in all_revisions(&source) {
            import.revision(&row).unwrap();
        }
        import.lease(9, 30).unwrap();
        import.commit(revs.current, revs.compacted).unwrap();
        let target = TestStore::with(target.conn);
        let target = target.txn();

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
    fn a_snapshot_from_a_layout_4_member_installs_in_revision_order() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch(
                "CREATE TABLE kv_history (key BLOB NOT NULL, mod_rev INTEGER NOT NULL,
                     sub_rev INTEGER NOT NULL, create_rev INTEGER NOT NULL,
                     version INTEGER NOT NULL, value BLOB NOT NULL, lease INTEGER NOT NULL,
                     tombstone INTEGER NOT NULL, PRIMARY KEY (mod_rev, sub_rev)) WITHOUT ROWID;
                 INSERT INTO kv_history VALUES (x'62', 3, 0, 3, 1, x'31', 0, 0);
                 INSERT INTO kv_history VALUES (x'61', 2, 0, 2, 1, x'31', 0, 0);",
            )
            .unwrap();
        let (_d, store) = store();
        fill(&store.txn());
        store
            .conn
            .execute("ATTACH DATABASE ?1 AS snap", params![old.to_string_lossy()])
            .unwrap();
        install_attached(&store.conn, "snap").unwrap();
        let rows: Vec<(Vec<u8>, i64)> = all_revisions(&store.conn)
            .into_iter()
            .map(|r| (r.key, r.main))
            .collect();
        assert_eq!(rows, [(b"a".to_vec(), 2), (b"b".to_vec(), 3)]);
    }

    #[test]
    fn a_row_the_index_names_but_the_table_lacks_is_reported_as_damage() {
        let (_d, store) = store();
        let txn = store.txn();
        let revs = fill(&txn);
        txn.execute(
            "DELETE FROM kv_revisions WHERE key = x'62' AND mod_rev = 6",
            [],
        )
        .unwrap();
        let err = range(&txn, &everything_req(), revs).unwrap_err();
        assert!(
            err.to_string()
                .contains("revision 6 of key \"b\" is indexed but not stored"),
            "{err}"
        );
    }

    fn everything_req() -> RangeRequest {
        RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        }
    }

    #[test]
    fn an_import_needs_an_empty_store_and_ordered_revisions() {
        let (_d, mut used) = store();
        fill(&used.txn());
        assert!(matches!(
            Import::begin(&mut used.conn),
            Err(StorageError::NotEmpty)
        ));
        let (_d2, mut empty) = store();
        let mut import = Import::begin(&mut empty.conn).unwrap();
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
        assert!(all_revisions(&empty.conn).is_empty());
    }
}
