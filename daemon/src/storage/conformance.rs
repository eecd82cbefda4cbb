//! Behaviour every Raft [`Storage`] implementation must show, run against raft-rs's own
//! `MemStorage` (the reference) and against [`RaftLog`]. A test here that `MemStorage`
//! fails is a wrong test; one that `RaftLog` fails is a storage bug.

use raft::prelude::{ConfState, Entry, HardState};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, Storage, StorageError as RaftStorageError};

use super::{Durability, RaftLog};

/// The write side, which the `Storage` trait leaves to each implementation.
trait Writable: Storage {
    fn append(&mut self, entries: &[Entry]);
    fn compact(&mut self, index: u64);
    fn set_hard_state(&mut self, hs: HardState);
    fn set_conf_state(&mut self, cs: ConfState);
}

impl Writable for MemStorage {
    fn append(&mut self, entries: &[Entry]) {
        self.wl().append(entries).unwrap();
    }
    fn compact(&mut self, index: u64) {
        self.wl().compact(index).unwrap();
    }
    fn set_hard_state(&mut self, hs: HardState) {
        self.wl().set_hardstate(hs);
    }
    fn set_conf_state(&mut self, cs: ConfState) {
        self.wl().set_conf_state(cs);
    }
}

struct SqliteUnderTest {
    log: RaftLog,
    _dir: tempfile::TempDir,
}

impl SqliteUnderTest {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::open_writer(&dir.path().join("state.db")).unwrap();
        SqliteUnderTest {
            log: RaftLog::open(conn).unwrap(),
            _dir: dir,
        }
    }

    fn reopen(self) -> Self {
        let SqliteUnderTest { log, _dir } = self;
        drop(log);
        let conn = super::open_writer(&_dir.path().join("state.db")).unwrap();
        SqliteUnderTest {
            log: RaftLog::open(conn).unwrap(),
            _dir,
        }
    }

    fn write(&mut self, f: impl FnOnce(&mut super::LogBatch<'_>)) {
        let mut b = self.log.batch(Durability::Sync).unwrap();
        f(&mut b);
        b.commit().unwrap();
    }
}

impl Storage for SqliteUnderTest {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.log.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.log.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.log.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.log.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<raft::prelude::Snapshot> {
        self.log.snapshot(request_index, to)
    }
}

impl Writable for SqliteUnderTest {
    fn append(&mut self, entries: &[Entry]) {
        self.write(|b| b.append(entries).unwrap());
    }
    fn compact(&mut self, index: u64) {
        self.write(|b| b.compact(index).unwrap());
    }
    fn set_hard_state(&mut self, hs: HardState) {
        self.write(|b| b.set_hard_state(&hs).unwrap());
    }
    fn set_conf_state(&mut self, cs: ConfState) {
        self.write(|b| b.set_conf_state(&cs).unwrap());
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("payload-{index}").into_bytes().into(),
        ..Default::default()
    }
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn indexes(es: &[Entry]) -> Vec<(u64, u64)> {
    es.iter().map(|e| (e.index, e.term)).collect()
}

fn empty_storage_starts_at_one(s: &mut impl Writable) {
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 0);
    assert_eq!(s.term(0).unwrap(), 0);
    assert!(!s.initial_state().unwrap().initialized());
}

fn append_then_read_back(s: &mut impl Writable) {
    s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]);
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 3);
    assert_eq!(s.term(2).unwrap(), 1);
    assert_eq!(s.term(3).unwrap(), 2);
    let es = s.entries(1, 4, None, ctx()).unwrap();
    assert_eq!(indexes(&es), vec![(1, 1), (2, 1), (3, 2)]);
    assert_eq!(es[1].data.as_ref(), b"payload-2");
    assert_eq!(
        indexes(&s.entries(2, 3, None, ctx()).unwrap()),
        vec![(2, 1)]
    );
}

fn term_beyond_last_is_unavailable(s: &mut impl Writable) {
    s.append(&[entry(1, 1), entry(2, 1)]);
    assert!(matches!(
        s.term(3),
        Err(raft::Error::Store(RaftStorageError::Unavailable))
    ));
}

fn conflicting_append_replaces_the_tail(s: &mut impl Writable) {
    s.append(&[entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1)]);
    s.append(&[entry(3, 2), entry(4, 2), entry(5, 2)]);
    assert_eq!(s.last_index().unwrap(), 5);
    assert_eq!(
        indexes(&s.entries(1, 6, None, ctx()).unwrap()),
        vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]
    );
    // A shorter overwrite also drops what followed it.
    s.append(&[entry(2, 3)]);
    assert_eq!(s.last_index().unwrap(), 2);
    assert_eq!(s.term(2).unwrap(), 3);
}

fn size_limit_returns_at_least_one(s: &mut impl Writable) {
    let es: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
    s.append(&es);
    let one = s.entries(1, 11, Some(0), ctx()).unwrap();
    assert_eq!(one.len(), 1);
    let size_of_three: u64 = es[..3]
        .iter()
        .map(|e| protobuf::Message::compute_size(e) as u64)
        .sum();
    let three = s.entries(1, 11, Some(size_of_three), ctx()).unwrap();
    assert_eq!(indexes(&three), vec![(1, 1), (2, 1), (3, 1)]);
    assert_eq!(s.entries(1, 11, None, ctx()).unwrap().len(), 10);
}

fn compaction_hides_old_entries(s: &mut impl Writable) {
    let es: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 5)).collect();
    s.append(&es);
    s.compact(6);
    assert_eq!(s.first_index().unwrap(), 6);
    assert_eq!(s.last_index().unwrap(), 10);
    assert!(matches!(
        s.entries(5, 8, None, ctx()),
        Err(raft::Error::Store(RaftStorageError::Compacted))
    ));
    assert!(matches!(
        s.term(4),
        Err(raft::Error::Store(RaftStorageError::Compacted))
    ));
    assert_eq!(
        indexes(&s.entries(6, 8, None, ctx()).unwrap()),
        vec![(6, 2), (7, 2)]
    );
    // Compacting to an earlier point is a no-op.
    s.compact(3);
    assert_eq!(s.first_index().unwrap(), 6);
    // Appending continues after compaction.
    s.append(&[entry(11, 3)]);
    assert_eq!(s.last_index().unwrap(), 11);
}

fn hard_and_conf_state_round_trip(s: &mut impl Writable) {
    let hs = HardState {
        term: 7,
        vote: 3,
        commit: 0,
        ..Default::default()
    };
    s.set_hard_state(hs.clone());
    s.set_conf_state(ConfState::from((vec![1, 2, 3], vec![4])));
    let st = s.initial_state().unwrap();
    assert_eq!(st.hard_state, hs);
    assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(st.conf_state.learners, vec![4]);
    assert!(st.initialized());
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod mem {
            $( #[test] fn $name() { super::$name(&mut raft::storage::MemStorage::new()); } )*
        }
        mod sqlite {
            $( #[test] fn $name() { super::$name(&mut super::SqliteUnderTest::new()); } )*
        }
    };
}

conformance!(
    empty_storage_starts_at_one,
    append_then_read_back,
    term_beyond_last_is_unavailable,
    conflicting_append_replaces_the_tail,
    size_limit_returns_at_least_one,
    compaction_hides_old_entries,
    hard_and_conf_state_round_trip,
);

// What only the durable implementation promises.

#[test]
fn sqlite_state_survives_reopen() {
    let mut s = SqliteUnderTest::new();
    let es: Vec<Entry> = (1..=20).map(|i| entry(i, 2)).collect();
    s.append(&es);
    let hs = HardState {
        term: 2,
        vote: 1,
        commit: 20,
        ..Default::default()
    };
    s.set_hard_state(hs.clone());
    s.set_conf_state(ConfState::from((vec![1], vec![])));
    s.compact(11);
    let s = s.reopen();
    assert_eq!(s.first_index().unwrap(), 11);
    assert_eq!(s.last_index().unwrap(), 20);
    assert_eq!(
        s.term(10).unwrap(),
        2,
        "term before first index is retained"
    );
    assert_eq!(s.initial_state().unwrap().hard_state, hs);
    assert_eq!(s.entries(11, 21, None, ctx()).unwrap().len(), 10);
}

#[test]
fn sqlite_uncommitted_batch_changes_nothing() {
    let mut s = SqliteUnderTest::new();
    s.append(&[entry(1, 1)]);
    {
        let mut b = s.log.batch(Durability::Sync).unwrap();
        b.append(&[entry(2, 1), entry(3, 1)]).unwrap();
        // dropped without commit: rolled back
    }
    assert_eq!(s.last_index().unwrap(), 1);
    let s = s.reopen();
    assert_eq!(s.last_index().unwrap(), 1);
}

#[test]
fn sqlite_rejects_gaps_and_overwriting_compacted_entries() {
    let mut s = SqliteUnderTest::new();
    s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
    s.compact(3);
    let mut b = s.log.batch(Durability::Sync).unwrap();
    assert!(b.append(&[entry(5, 1)]).is_err(), "gap after last index");
    assert!(b.append(&[entry(2, 2)]).is_err(), "overwrites compacted");
}

#[test]
fn sqlite_reopened_log_counts_what_the_state_applied_as_committed() {
    // Commit indexes are not written down alone; a restart takes the state's applied
    // index as committed (only committed entries are applied), never past the log.
    let mut s = SqliteUnderTest::new();
    s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
    let b = s.log.batch(Durability::Deferred).unwrap();
    super::Meta::AppliedIndex.set_u64(b.conn(), 2).unwrap();
    b.commit().unwrap();
    let s = s.reopen();
    assert_eq!(s.initial_state().unwrap().hard_state.commit, 2);
}

#[test]
fn sqlite_new_entries_persist_while_another_connection_holds_the_state_lock() {
    // A Ready's entries go to the log database alone: a checkpointer restarting the
    // state's WAL (holding its write lock) must not hold them up.
    let mut s = SqliteUnderTest::new();
    s.append(&[entry(1, 1)]);
    let state = rusqlite::Connection::open(s._dir.path().join("state.db")).unwrap();
    state.execute_batch("BEGIN IMMEDIATE").unwrap();
    let hs = HardState {
        term: 2,
        vote: 3,
        commit: 1,
        ..Default::default()
    };
    let mut b = s.log.batch(Durability::LogSync).unwrap();
    b.append(&[entry(2, 2), entry(3, 2)]).unwrap();
    b.set_hard_state(&hs).unwrap();
    b.commit().unwrap();
    state.execute_batch("ROLLBACK").unwrap();
    drop(state);
    let s = s.reopen();
    assert_eq!(s.last_index().unwrap(), 3);
    assert_eq!(s.term(3).unwrap(), 2);
    assert_eq!(s.initial_state().unwrap().hard_state, hs);
}
