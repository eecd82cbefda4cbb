//! The key space (rows in SQLite, revisions in the in-memory index) against a model
//! that keeps every revision of every key in a plain map: after each step of a random
//! history of puts, deletes, failed txns, compactions and restarts, a read at every
//! readable revision — by the writer, and by a reader on its own connection — returns
//! what the model says, and so does a restarted member's index.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{ReaderPool, StateTxn, TestStore};
use crate::mvcc::{Revisions, WriteTxn, compact, range};
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use crate::proto::mvccpb::KeyValue;

#[derive(Debug, Clone)]
enum Step {
    Put {
        key: u8,
        value: u16,
        lease: bool,
    },
    Delete {
        from: u8,
        to: u8,
    },
    /// A txn that puts and then fails: nothing of it may remain.
    FailedTxn {
        key: u8,
    },
    Compact {
        back: u8,
    },
    /// A reader that stays open across steps: compacted revisions stay in the index
    /// (their grace period) until it goes.
    PinReader,
    UnpinReader,
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..6u8, any::<u16>(), any::<bool>())
            .prop_map(|(key, value, lease)| Step::Put { key, value, lease }),
        2 => (0..6u8, 0..7u8).prop_map(|(from, to)| Step::Delete { from, to }),
        1 => (0..6u8).prop_map(|key| Step::FailedTxn { key }),
        2 => (0..6u8).prop_map(|back| Step::Compact { back }),
        1 => Just(Step::PinReader),
        1 => Just(Step::UnpinReader),
        1 => Just(Step::Restart),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

const LEASE: i64 = 5;

/// Every key's versions by main revision; `None` is a deletion.
#[derive(Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
}

impl Model {
    fn live(&self, k: &[u8]) -> Option<&KeyValue> {
        self.keys.get(k)?.last()?.1.as_ref()
    }

    fn at(&self, rev: i64) -> Vec<KeyValue> {
        self.keys
            .values()
            .filter_map(|versions| {
                versions
                    .iter()
                    .rev()
                    .find(|(main, _)| *main <= rev)
                    .and_then(|(_, kv)| kv.clone())
            })
            .collect()
    }

    fn lease_keys(&self) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .filter(|(k, _)| self.live(k).is_some_and(|kv| kv.lease == LEASE))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

fn everything(revision: i64) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    }
}

fn check(
    store: &TestStore,
    readers: &ReaderPool,
    model: &Model,
    revs: Revisions,
) -> Result<(), TestCaseError> {
    let first = revs.compacted.max(1);
    for rev in first..=revs.current {
        let want = model.at(rev);
        let by_writer = range(&store.txn(), &everything(rev), revs).unwrap();
        prop_assert_eq!(&by_writer.kvs, &want, "writer at {}", rev);
        prop_assert_eq!(by_writer.count, want.len() as i64);
        let by_reader = readers
            .get()
            .unwrap()
            .read(|txn| Ok(range(txn, &everything(rev), revs).unwrap()))
            .unwrap();
        prop_assert_eq!(&by_reader.kvs, &want, "reader at {}", rev);
    }
    // Descending with a limit crosses the scan's chunks only for large stores; here it
    // checks order and the cut.
    let desc = RangeRequest {
        sort_order: 2,
        limit: 2,
        ..everything(0)
    };
    let got = range(&store.txn(), &desc, revs).unwrap();
    let mut want = model.at(revs.current);
    want.reverse();
    want.truncate(2);
    prop_assert_eq!(got.kvs, want);
    prop_assert_eq!(
        crate::storage::keyspace::lease_keys(&store.txn(), LEASE),
        model.lease_keys()
    );
    // What a watcher's prev_kv reads: each key's newest change, tombstone or not.
    for (k, versions) in &model.keys {
        let (main, kv) = versions.last().expect("no empty key in the model");
        let got =
            crate::storage::keyspace::change_before(&store.txn(), k, revs.current + 1).unwrap();
        let got = got.map(|row| (row.main, (!row.tombstone).then(|| row.key_value())));
        prop_assert_eq!(got, Some((*main, kv.clone())));
    }
    Ok(())
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = TestStore::open(&path);
    crate::storage::leases::insert(&store.conn, LEASE, 60).unwrap();
    let mut readers = ReaderPool::new(path.clone(), store.keys.clone());
    let mut revs = Revisions::load(&store.conn).unwrap();
    let mut model = Model::default();
    let mut pinned = None;
    for step in steps {
        match step {
            Step::Put {
                key: k,
                value,
                lease,
            } => {
                let main = revs.current + 1;
                let (create_revision, version) = match model.live(&key(k)) {
                    Some(kv) => (kv.create_revision, kv.version + 1),
                    None => (main, 1),
                };
                let kv = KeyValue {
                    key: key(k),
                    create_revision,
                    mod_revision: main,
                    version,
                    value: value.to_be_bytes().to_vec(),
                    lease: if lease { LEASE } else { 0 },
                };
                let txn = store.txn();
                let mut w = WriteTxn::new(&txn, revs);
                w.put(&PutRequest {
                    key: kv.key.clone(),
                    value: kv.value.clone(),
                    lease: kv.lease,
                    ..Default::default()
                })
                .unwrap();
                revs.current = w.revision();
                model.keys.entry(key(k)).or_default().push((main, Some(kv)));
            }
            Step::Delete { from, to } => {
                let victims: Vec<Vec<u8>> = (from..to.max(from + 1))
                    .map(key)
                    .filter(|k| model.live(k).is_some())
                    .collect();
                let txn = store.txn();
                let mut w = WriteTxn::new(&txn, revs);
                let resp = w
                    .delete_range(&DeleteRangeRequest {
                        key: key(from),
                        range_end: if to > from { key(to) } else { Vec::new() },
                        ..Default::default()
                    })
                    .unwrap();
                prop_assert_eq!(resp.deleted, victims.len() as i64);
                let main = w.revision();
                revs.current = main;
                for k in victims {
                    model.keys.entry(k).or_default().push((main, None));
                }
            }
            Step::FailedTxn { key: k } => {
                let txn = store.txn();
                txn.execute_batch("SAVEPOINT request").unwrap();
                let mut w = WriteTxn::new(&txn, revs);
                w.put(&PutRequest {
                    key: key(k),
                    value: b"never".to_vec(),
                    lease: LEASE,
                    ..Default::default()
                })
                .unwrap();
                w.roll_back();
                txn.execute_batch("ROLLBACK TO request; RELEASE request")
                    .unwrap();
            }
            Step::Compact { back } => {
                let at = revs.current - i64::from(back);
                if at > revs.compacted {
                    revs = compact(&store.txn(), revs, at).unwrap();
                    for versions in model.keys.values_mut() {
                        let n = versions.iter().filter(|(m, _)| *m <= at).count();
                        let drop = match versions.get(n.wrapping_sub(1)) {
                            Some((_, Some(_))) => n - 1,
                            _ => n,
                        };
                        versions.drain(..drop);
                    }
                    model.keys.retain(|_, v| !v.is_empty());
                    store.keys.committed();
                }
            }
            Step::PinReader => {
                pinned.get_or_insert(store.keys.pin(|| Ok(())).unwrap().0);
            }
            Step::UnpinReader => {
                pinned = None;
                store.keys.committed();
            }
            Step::Restart => {
                pinned = None;
                revs.store(&store.conn).unwrap();
                store = TestStore::open(&path);
                readers = ReaderPool::new(path.clone(), store.keys.clone());
                prop_assert_eq!(Revisions::load(&store.conn).unwrap(), revs);
            }
        }
        revs.store(&store.conn).unwrap();
        check(&store, &readers, &model, revs)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_key_space_agrees_with_a_model_of_every_revision(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        run(steps)?;
    }
}

/// Scans and counts walk the index a bounded number of keys per hold of its lock, and
/// a scan reads rows a chunk at a time: across those pauses, over thousands of deleted
/// keys, every live key is seen once, in order.
#[test]
fn a_scan_longer_than_a_chunk_sees_every_key_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::open(&dir.path().join("s.db"));
    let txn: StateTxn<'_> = store.txn();
    let mut revs = Revisions::load(&txn).unwrap();
    let (n, deleted) = (9000, 6000);
    let key = |i: usize| format!("key{i:05}").into_bytes();
    for i in 0..n {
        let mut w = WriteTxn::new(&txn, revs);
        w.put(&PutRequest {
            key: key(i),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .unwrap();
        revs.current = w.revision();
    }
    let mut w = WriteTxn::new(&txn, revs);
    w.delete_range(&DeleteRangeRequest {
        key: key(0),
        range_end: key(deleted),
        ..Default::default()
    })
    .unwrap();
    revs.current = w.revision();
    for descending in [false, true] {
        let req = RangeRequest {
            sort_order: if descending { 2 } else { 0 },
            ..everything(0)
        };
        let got = range(&txn, &req, revs).unwrap();
        let keys: Vec<Vec<u8>> = got.kvs.into_iter().map(|kv| kv.key).collect();
        let mut want: Vec<Vec<u8>> = (deleted..n).map(key).collect();
        if descending {
            want.reverse();
        }
        assert_eq!(keys, want, "descending: {descending}");
        assert_eq!(got.count, (n - deleted) as i64);
    }
    // Before the deletion, at its revision - 1: every key.
    let before = range(&txn, &everything(revs.current - 1), revs).unwrap();
    assert_eq!((before.kvs.len(), before.count), (n, n as i64));
}

/// A compaction whose revisions are still indexed (a reader was open) and then a second
/// one, after the ids of the first one's rows went to new rows: the second must delete
/// only what it names (found in review: it deleted the new rows).
#[test]
fn a_second_compaction_within_the_grace_period_deletes_only_its_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::open(&dir.path().join("s.db"));
    let txn = store.txn();
    let mut revs = Revisions::load(&txn).unwrap();
    let put = |revs: &mut Revisions, k: &str| {
        let mut w = WriteTxn::new(&txn, *revs);
        w.put(&PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .unwrap();
        revs.current = w.revision();
    };
    put(&mut revs, "a");
    let mut w = WriteTxn::new(&txn, revs);
    w.delete_range(&DeleteRangeRequest {
        key: "a".into(),
        ..Default::default()
    })
    .unwrap();
    revs.current = w.revision();
    let (reader, ()) = store.keys.pin(|| Ok(())).unwrap();
    revs = compact(&txn, revs, revs.current).unwrap();
    store.keys.committed();
    put(&mut revs, "b");
    put(&mut revs, "c");
    revs = compact(&txn, revs, revs.current - 1).unwrap();
    store.keys.committed();
    let keys: Vec<Vec<u8>> = range(&txn, &everything(0), revs)
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, [b"b".to_vec(), b"c".to_vec()]);
    // The deleted key's newest change is its tombstone, whose row is gone.
    let prev = crate::storage::keyspace::change_before(&txn, b"a", revs.current + 1)
        .unwrap()
        .unwrap();
    assert!(prev.tombstone);
    drop(reader);
}
