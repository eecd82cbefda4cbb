//! The key index: for every key, which of its revisions are stored, in memory (etcd's
//! `treeIndex`).
//!
//! Why in memory: a put must know the key's current version (its create revision,
//! version and lease) and record the new one. Kept on disk in key order, that cost a
//! page at a random place of a large B-tree per put of a random key — the page read,
//! rewritten as a whole WAL frame, and checkpointed again — so the cost of a put grew
//! with the key space (BENCHMARKS.md, issue 15). With the index here the state database
//! is only appended to: `kv_revisions` in revision order.
//!
//! Two maps share each key: a hash map from key to entry, for the lookups every put
//! makes, and an ordered set of the keys, for ranges. One ordered map alone cost a put
//! a walk down a tree whose every comparison followed a pointer to a key somewhere on
//! the heap: ~2 us per lookup at 200,000 keys, 5 % of a loaded three-member cluster's
//! CPU (perf). An update of an existing key, the common put, now touches the hash map
//! only.
//!
//! What it costs: memory, about 270 bytes per key with one stored revision and a 32-byte
//! key (the hash map's slot at its load factor, the set's node share, the shared key,
//! the revision list; 170 with the ordered map alone),
//! and a scan of `kv_revisions` at start ([`KeyIndex::load`]): the index is never
//! persisted, so it can never disagree with the rows.
//!
//! Who changes it: only the Raft thread, as it applies (see [`SharedKeyIndex`] for how
//! readers on other threads stay consistent with their SQLite snapshot).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rusqlite::Connection;

use super::{KeyRange, StorageError};

/// How a walk over the index ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Walk {
    /// The range is exhausted.
    Done,
    /// The visitor asked to stop.
    Stopped,
    /// The budget ran out at this key (looked at): the walk goes on past it.
    Paused(Vec<u8>),
}

/// One stored revision of a key: its main revision and the row that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRev {
    pub main: i64,
    /// The row's id in `kv_revisions`, shifted left once; the low bit marks a tombstone.
    row: i64,
}

impl StoredRev {
    pub fn new(main: i64, id: i64, tombstone: bool) -> Self {
        StoredRev {
            main,
            row: (id << 1) | tombstone as i64,
        }
    }

    /// The row's id in `kv_revisions`.
    pub fn id(self) -> i64 {
        self.row >> 1
    }

    pub fn tombstone(self) -> bool {
        self.row & 1 == 1
    }
}

/// What a put needs of a key's newest version: kept here so that a put reads nothing
/// from the database. `version == 0`: the key is not live (never put, or deleted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Live {
    pub fn is_live(self) -> bool {
        self.version > 0
    }
}

struct KeyEntry {
    /// Stored revisions in ascending order; a tombstone is followed only by a new life.
    revs: Vec<StoredRev>,
    live: Live,
}

/// How to take back one [`KeyIndex::record`] (a failed txn's changes are undone, as
/// its rows are rolled back).
#[derive(Debug)]
pub struct Undo {
    key: Box<[u8]>,
    before: Live,
    created: bool,
}

/// A key as the index holds it: one allocation shared by both maps and lease sets.
type Key = Arc<[u8]>;

/// The index proper; see the module docs.
#[derive(Default)]
pub struct KeyIndex {
    /// Every key's entry. The hasher is std's keyed one: keys come from clients.
    entries: HashMap<Key, KeyEntry>,
    /// The same keys, in order.
    order: BTreeSet<Key>,
    /// The live keys of each lease (etcd's lessor item sets).
    leases: HashMap<i64, BTreeSet<Key>>,
    live_keys: usize,
    /// Bumped when revisions are forgotten (see [`SharedKeyIndex`]); readers register
    /// under the epoch they pinned at.
    epoch: usize,
}

fn bounds(range: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    match range {
        KeyRange::Single(k) => (Bound::Included(k), Bound::Included(k)),
        KeyRange::Span(s, e) => (Bound::Included(s), Bound::Excluded(e)),
        KeyRange::From(s) => (Bound::Included(s), Bound::Unbounded),
        // Never iterated (see `entries`).
        KeyRange::Empty => (Bound::Unbounded, Bound::Unbounded),
    }
}

impl KeyEntry {
    /// The newest stored revision at or below `at`, tombstone or not.
    fn newest_at(&self, at: i64) -> Option<StoredRev> {
        match self.revs.last() {
            Some(last) if last.main <= at => Some(*last),
            _ => {
                let n = self.revs.partition_point(|r| r.main <= at);
                n.checked_sub(1).map(|i| self.revs[i])
            }
        }
    }

    fn visible_at(&self, at: i64) -> Option<StoredRev> {
        self.newest_at(at).filter(|r| !r.tombstone())
    }
}

impl KeyIndex {
    /// Builds the index from the stored revisions, in one pass in row order (which is
    /// revision order).
    pub fn load(conn: &Connection) -> Result<KeyIndex, StorageError> {
        let mut index = KeyIndex::default();
        let mut stmt = conn.prepare(
            "SELECT id, mod_rev, key, create_rev, version, lease, tombstone
             FROM kv_revisions ORDER BY id",
        )?;
        let mut rows = stmt.query([])?;
        let mut last_main = 0;
        while let Some(r) = rows.next()? {
            let main: i64 = r.get(1)?;
            if main < last_main {
                return Err(StorageError::Corrupt(format!(
                    "kv_revisions: row {} holds revision {main} after {last_main}",
                    r.get::<_, i64>(0)?
                )));
            }
            last_main = main;
            let tombstone: bool = r.get(6)?;
            let live = if tombstone {
                Live::default()
            } else {
                Live {
                    create_revision: r.get(3)?,
                    version: r.get(4)?,
                    lease: r.get(5)?,
                }
            };
            let key = r.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
            let rev = StoredRev::new(main, r.get(0)?, tombstone);
            match index.entries.get_mut(key) {
                Some(e) => {
                    e.revs.push(rev);
                    e.live = live;
                }
                None => index.insert(key, rev, live),
            }
        }
        for (key, e) in &index.entries {
            if e.live.is_live() {
                index.live_keys += 1;
                if e.live.lease != 0 {
                    index
                        .leases
                        .entry(e.live.lease)
                        .or_default()
                        .insert(key.clone());
                }
            }
        }
        Ok(index)
    }

    /// Adds a key not yet in the index.
    fn insert(&mut self, key: &[u8], rev: StoredRev, live: Live) {
        let key = Key::from(key);
        self.order.insert(key.clone());
        // vec! allocates exactly one: most keys have one stored revision.
        self.entries.insert(
            key,
            KeyEntry {
                revs: vec![rev],
                live,
            },
        );
    }

    /// The newest version of `key` if it is live, and where it is stored.
    pub fn live(&self, key: &[u8]) -> Option<(Live, StoredRev)> {
        let e = self.entries.get(key)?;
        let last = *e.revs.last()?;
        (e.live.is_live() && !last.tombstone()).then_some((e.live, last))
    }

    /// The newest stored revision of `key` at or below `at`, tombstone or not.
    pub fn newest_at(&self, key: &[u8], at: i64) -> Option<StoredRev> {
        self.entries.get(key)?.newest_at(at)
    }

    /// The keys in `range` live at revision `at`, with the revision a read at `at`
    /// returns, in key order (reversed if `descending`), each handed to `visit` until
    /// it returns false. Looks at no more than `budget` keys (live or not), so that a
    /// caller holding the index's lock can let the writer in between walks.
    pub fn visible(
        &self,
        range: &KeyRange,
        at: i64,
        descending: bool,
        budget: usize,
        mut visit: impl FnMut(&[u8], StoredRev) -> bool,
    ) -> Walk {
        if *range == KeyRange::Empty {
            return Walk::Done;
        }
        let keys = self.order.range::<[u8], _>(bounds(range));
        let keys: Box<dyn Iterator<Item = &Key>> = if descending {
            Box::new(keys.rev())
        } else {
            Box::new(keys)
        };
        for (seen, k) in keys.enumerate() {
            if let Some(rev) = self.entries.get(k).and_then(|e| e.visible_at(at))
                && !visit(k, rev)
            {
                return Walk::Stopped;
            }
            if seen + 1 == budget {
                return Walk::Paused(k.to_vec());
            }
        }
        Walk::Done
    }

    /// How many keys in `range` are live at revision `at`, looking at no more than
    /// `budget` keys (see [`Self::visible`]).
    pub fn count(&self, range: &KeyRange, at: i64, budget: usize) -> (usize, Walk) {
        let mut n = 0;
        let walk = self.visible(range, at, false, budget, |_, _| {
            n += 1;
            true
        });
        (n, walk)
    }

    /// Keys live now.
    pub fn live_keys(&self) -> usize {
        self.live_keys
    }

    /// The live keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.leases
            .get(&id)
            .map(|keys| keys.iter().map(|k| k.to_vec()).collect())
            .unwrap_or_default()
    }

    /// Records a new stored revision of `key` whose newest version is now `live`
    /// (default for a tombstone). Returns how to take it back.
    pub fn record(&mut self, key: &[u8], rev: StoredRev, live: Live) -> Undo {
        let (before, created) = match self.entries.get_mut(key) {
            Some(e) => {
                let before = e.live;
                e.revs.push(rev);
                e.live = live;
                (before, false)
            }
            None => {
                self.insert(key, rev, live);
                (Live::default(), true)
            }
        };
        self.relink(key, before, live);
        Undo {
            key: key.into(),
            before,
            created,
        }
    }

    /// Takes back a [`Self::record`]; undos must come newest first.
    pub fn undo(&mut self, undo: Undo) {
        let Some(e) = self.entries.get_mut(&undo.key[..]) else {
            return;
        };
        let now = e.live;
        e.revs.pop();
        e.live = undo.before;
        self.relink(&undo.key, now, undo.before);
        if undo.created {
            self.entries.remove(&undo.key[..]);
            self.order.remove(&undo.key[..]);
        }
    }

    /// Moves `key` between lease sets and the live count as its newest version changes
    /// from `before` to `after`.
    fn relink(&mut self, key: &[u8], before: Live, after: Live) {
        match (before.is_live(), after.is_live()) {
            (false, true) => self.live_keys += 1,
            (true, false) => self.live_keys -= 1,
            _ => {}
        }
        let lease = |l: Live| if l.is_live() { l.lease } else { 0 };
        let (old, new) = (lease(before), lease(after));
        if old == new {
            return;
        }
        if old != 0
            && let Some(set) = self.leases.get_mut(&old)
        {
            set.remove(key);
            if set.is_empty() {
                self.leases.remove(&old);
            }
        }
        if new != 0
            && let Some((key, _)) = self.entries.get_key_value(key)
        {
            self.leases.entry(new).or_default().insert(key.clone());
        }
    }

    /// Rows that a compaction at `at` makes unreachable, as (id, main revision): every
    /// stored revision at or below it except each key's newest there, and that one too
    /// if it is a tombstone.
    pub fn compactable(&self, at: i64) -> Vec<(i64, i64)> {
        let mut ids = Vec::new();
        for e in self.entries.values() {
            let n = e.revs.partition_point(|r| r.main <= at);
            if n == 0 {
                continue;
            }
            let keep_newest = !e.revs[n - 1].tombstone();
            let doomed = if keep_newest { n - 1 } else { n };
            ids.extend(e.revs[..doomed].iter().map(|r| (r.id(), r.main)));
        }
        // In row order, so that deleting them walks the table once.
        ids.sort_unstable();
        ids
    }

    /// Forgets what [`Self::compactable`] named; keys left with no stored revision go.
    fn prune(&mut self, at: i64) {
        let mut gone = Vec::new();
        self.entries.retain(|key, e| {
            let n = e.revs.partition_point(|r| r.main <= at);
            if n > 0 {
                let doomed = if e.revs[n - 1].tombstone() { n } else { n - 1 };
                if doomed > 0 {
                    e.revs.drain(..doomed);
                    e.revs.shrink_to_fit();
                }
            }
            if e.revs.is_empty() {
                gone.push(key.clone());
            }
            !e.revs.is_empty()
        });
        for key in gone {
            self.order.remove(&key);
        }
    }
}

/// The key index shared by the Raft thread (the one writer) and the reading threads.
///
/// A reader reads rows from a SQLite snapshot and revisions from the index, and both
/// must agree. The writer records revisions before committing the rows that hold them,
/// and a reader only looks at revisions up to its snapshot's current revision; so
/// additions never show a reader something its snapshot lacks. What can: forgetting
/// revisions (compaction) and replacing the whole index (a Raft snapshot installed).
/// Compacted revisions are therefore forgotten only after a grace period: once the
/// compaction is committed the epoch moves on, and its revisions go when no reader
/// registered under an earlier epoch is left ([`ReadPin`]). A replaced index is a new
/// cell: readers that pinned the old one keep it to the end of their read.
#[derive(Clone)]
pub struct SharedKeyIndex {
    current: Arc<Mutex<Arc<IndexCell>>>,
}

pub struct IndexCell {
    index: RwLock<KeyIndex>,
    /// Readers registered per epoch.
    readers: Mutex<BTreeMap<usize, usize>>,
    compaction: Mutex<PendingCompaction>,
}

#[derive(Default)]
struct PendingCompaction {
    /// Applied in the batch being written, not yet committed.
    applied: Option<i64>,
    /// Committed: its revision, and the last epoch whose readers may need what it
    /// removes.
    waiting: Option<(i64, usize)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IndexCell {
    fn new(index: KeyIndex) -> Arc<IndexCell> {
        Arc::new(IndexCell {
            index: RwLock::new(index),
            readers: Default::default(),
            compaction: Default::default(),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, KeyIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, KeyIndex> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A reader's registration: while it lives, revisions its snapshot may need stay.
pub struct ReadPin {
    cell: Arc<IndexCell>,
    epoch: usize,
}

impl ReadPin {
    pub fn index(&self) -> RwLockReadGuard<'_, KeyIndex> {
        self.cell.read()
    }
}

impl Drop for ReadPin {
    fn drop(&mut self) {
        let mut readers = lock(&self.cell.readers);
        if let Some(n) = readers.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.epoch);
            }
        }
    }
}

impl SharedKeyIndex {
    pub fn load(conn: &Connection) -> Result<SharedKeyIndex, StorageError> {
        Ok(SharedKeyIndex {
            current: Arc::new(Mutex::new(IndexCell::new(KeyIndex::load(conn)?))),
        })
    }

    fn cell(&self) -> Arc<IndexCell> {
        lock(&self.current).clone()
    }

    /// Registers a reader and runs `pin` (which must take the reader's SQLite snapshot)
    /// while no compaction can take effect and the index cannot be replaced.
    pub fn pin<T>(
        &self,
        pin: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<(ReadPin, T), StorageError> {
        loop {
            let cell = self.cell();
            let index = cell.read();
            // Replaced while this reader waited for the lock: a snapshot taken now
            // would be of the new state.
            if !Arc::ptr_eq(&cell, &self.cell()) {
                continue;
            }
            let epoch = index.epoch;
            *lock(&cell.readers).entry(epoch).or_default() += 1;
            let registration = ReadPin {
                cell: cell.clone(),
                epoch,
            };
            let out = pin()?;
            drop(index);
            return Ok((registration, out));
        }
    }

    /// The index for the writer, which sees everything recorded so far.
    pub fn writer(&self) -> WriterIndex {
        WriterIndex { cell: self.cell() }
    }

    /// Called once the writer's batch is committed: a compaction in it starts its
    /// grace period, and compacted revisions whose grace period is over are forgotten.
    /// Cheap when no compaction is pending.
    pub fn committed(&self) {
        let cell = self.cell();
        let mut compaction = lock(&cell.compaction);
        if let Some(at) = compaction.applied.take() {
            // Under the write lock: readers registering from now on pinned their
            // snapshot after the compaction committed. A later compaction replaces
            // an earlier one still waiting: it removes more, and waits longer.
            let mut index = cell.write();
            compaction.waiting = Some((at, index.epoch));
            index.epoch += 1;
        }
        let Some((at, last_epoch)) = compaction.waiting else {
            return;
        };
        if lock(&cell.readers).range(..=last_epoch).next().is_none() {
            cell.write().prune(at);
            compaction.waiting = None;
        }
    }

    /// Replaces the index with the one `install` returns (it installs a Raft snapshot,
    /// loads the index of the new state and commits), holding the old index's write
    /// lock throughout so that no reader pins the new state with the old index.
    pub fn replace(
        &self,
        install: impl FnOnce() -> Result<KeyIndex, StorageError>,
    ) -> Result<(), StorageError> {
        let old = self.cell();
        let _held = old.write();
        let fresh = IndexCell::new(install()?);
        *lock(&self.current) = fresh;
        Ok(())
    }
}

/// The writer's handle on the current index.
pub struct WriterIndex {
    cell: Arc<IndexCell>,
}

impl WriterIndex {
    pub fn read(&self) -> RwLockReadGuard<'_, KeyIndex> {
        self.cell.read()
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, KeyIndex> {
        self.cell.write()
    }

    /// A compaction at `at` was applied in the batch being written: its revisions are
    /// forgotten after the batch commits and the readers that may still need them are
    /// done (see [`SharedKeyIndex::committed`]).
    pub fn compacted(&self, at: i64) {
        lock(&self.cell.compaction).applied = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64, tombstone: bool) -> StoredRev {
        StoredRev::new(main, main * 10, tombstone)
    }

    fn live(create: i64, version: i64, lease: i64) -> Live {
        Live {
            create_revision: create,
            version,
            lease,
        }
    }

    #[test]
    fn reads_at_a_revision_see_the_newest_version_then() {
        let mut ix = KeyIndex::default();
        ix.record(b"a", rev(2, false), live(2, 1, 0));
        ix.record(b"b", rev(3, false), live(3, 1, 0));
        ix.record(b"a", rev(4, false), live(2, 2, 0));
        ix.record(b"a", rev(5, true), Live::default());
        let all = KeyRange::From(vec![]);
        let at = |r| {
            let mut out = Vec::new();
            ix.visible(&all, r, false, usize::MAX, |k, rev| {
                out.push((k.to_vec(), rev.main));
                true
            });
            out
        };
        assert_eq!(at(2), [(b"a".to_vec(), 2)]);
        assert_eq!(at(4), [(b"a".to_vec(), 4), (b"b".to_vec(), 3)]);
        assert_eq!(at(5), [(b"b".to_vec(), 3)]);
        assert_eq!(ix.count(&all, 4, usize::MAX), (2, Walk::Done));
        // A budget of one key pauses after the first.
        assert_eq!(ix.count(&all, 4, 1), (1, Walk::Paused(b"a".to_vec())));
        assert_eq!(ix.live_keys(), 1);
        assert!(ix.live(b"a").is_none());
        assert_eq!(ix.newest_at(b"a", 9).map(|r| r.main), Some(5));
    }

    #[test]
    fn compaction_keeps_the_newest_version_and_drops_dead_keys() {
        let mut ix = KeyIndex::default();
        ix.record(b"a", rev(2, false), live(2, 1, 0));
        ix.record(b"a", rev(3, false), live(2, 2, 0));
        ix.record(b"b", rev(4, false), live(4, 1, 0));
        ix.record(b"b", rev(5, true), Live::default());
        ix.record(b"a", rev(6, false), live(2, 3, 0));
        let mut doomed = ix.compactable(5);
        doomed.sort();
        assert_eq!(doomed, [(20, 2), (40, 4), (50, 5)]);
        ix.prune(5);
        assert!(!ix.entries.contains_key(&b"b"[..]));
        assert!(!ix.order.contains(&b"b"[..]));
        let revs: Vec<i64> = ix.entries[&b"a"[..]].revs.iter().map(|r| r.main).collect();
        assert_eq!(revs, [3, 6]);
    }

    #[test]
    fn an_undo_restores_version_lease_and_counts() {
        let mut ix = KeyIndex::default();
        ix.record(b"a", rev(2, false), live(2, 1, 7));
        let u1 = ix.record(b"a", rev(3, false), live(2, 2, 8));
        let u2 = ix.record(b"n", rev(3, false), live(3, 1, 8));
        assert_eq!(ix.lease_keys(8), [b"a".to_vec(), b"n".to_vec()]);
        assert!(ix.lease_keys(7).is_empty());
        ix.undo(u2);
        ix.undo(u1);
        assert_eq!(ix.lease_keys(7), [b"a".to_vec()]);
        assert!(ix.lease_keys(8).is_empty());
        assert_eq!(ix.live(b"a").unwrap().0, live(2, 1, 7));
        assert!(!ix.entries.contains_key(&b"n"[..]));
        assert!(!ix.order.contains(&b"n"[..]));
        assert_eq!(ix.live_keys(), 1);
    }

    #[test]
    fn compacted_revisions_stay_while_an_earlier_reader_is_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::storage::open_writer(&dir.path().join("s.db")).unwrap();
        let shared = SharedKeyIndex::load(&conn).unwrap();
        {
            let w = shared.writer();
            let mut ix = w.write();
            ix.record(b"a", rev(2, false), live(2, 1, 0));
            ix.record(b"a", rev(3, false), live(2, 2, 0));
        }
        let (early, ()) = shared.pin(|| Ok(())).unwrap();
        shared.writer().compacted(3);
        shared.committed();
        assert_eq!(early.index().newest_at(b"a", 2).map(|r| r.main), Some(2));
        let (late, ()) = shared.pin(|| Ok(())).unwrap();
        drop(early);
        shared.committed();
        assert_eq!(late.index().newest_at(b"a", 2), None);
        assert_eq!(late.index().newest_at(b"a", 3).map(|r| r.main), Some(3));
    }
}
