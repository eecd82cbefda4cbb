//! MVCC rules against a real (temporary) state database.

use rusqlite::Connection;

use super::*;
use crate::error::RequestError;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::*;

struct Store {
    db: crate::storage::TestStore,
    revs: Revisions,
    _dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::TestStore::open(&dir.path().join("s.db"));
        let revs = Revisions::load(&db.conn).unwrap();
        Store {
            db,
            revs,
            _dir: dir,
        }
    }

    fn txn(&self) -> crate::storage::StateTxn<'_> {
        self.db.txn()
    }

    fn write<T>(&mut self, f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T, RequestError>) -> T {
        let (out, revision) = {
            let txn = self.txn();
            let mut w = WriteTxn::new(&txn, self.revs);
            let out = f(&mut w).unwrap();
            (out, w.revision())
        };
        self.revs.current = revision;
        out
    }

    fn put(&mut self, k: &str, v: &str) -> i64 {
        self.write(|w| w.put(&put_req(k, v)))
            .header
            .unwrap()
            .revision
    }

    fn get(&self, req: RangeRequest) -> Result<RangeResponse, RequestError> {
        range(&self.txn(), &req, self.revs)
    }
}

/// Every stored revision as (key, main revision, tombstone), in revision order.
fn stored_revisions(conn: &Connection) -> Vec<(String, i64, bool)> {
    let mut out = Vec::new();
    crate::storage::keyspace::for_each_revision::<crate::storage::StorageError>(conn, |row| {
        out.push((String::from_utf8(row.key).unwrap(), row.main, row.tombstone));
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .unwrap();
    out
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn prefix(p: &str) -> RangeRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    RangeRequest {
        key: p.into(),
        range_end: end,
        ..Default::default()
    }
}

#[test]
fn revisions_start_at_one_and_count_changes() {
    let mut s = Store::new();
    assert_eq!(s.revs.current, 1);
    assert_eq!(s.put("a", "1"), 2);
    assert_eq!(s.put("a", "2"), 3);
    let kv = &s
        .get(RangeRequest {
            key: "a".into(),
            ..Default::default()
        })
        .unwrap()
        .kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(kv.value, b"2");
    // Deleting nothing is not a change.
    let resp = s.write(|w| {
        w.delete_range(&DeleteRangeRequest {
            key: "zz".into(),
            ..Default::default()
        })
    });
    assert_eq!(resp.deleted, 0);
    assert_eq!(s.revs.current, 3);
}

#[test]
fn past_revisions_and_tombstones() {
    let mut s = Store::new();
    s.put("a", "1"); // 2
    s.put("b", "1"); // 3
    s.write(|w| {
        w.delete_range(&DeleteRangeRequest {
            key: "a".into(),
            ..Default::default()
        })
    }); // 4
    s.put("a", "again"); // 5
    let at = |rev| {
        s.get(RangeRequest {
            key: "a".into(),
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        })
        .unwrap()
    };
    assert_eq!(keys(&at(2)), ["a"]);
    assert_eq!(keys(&at(3)), ["a", "b"]);
    assert_eq!(keys(&at(4)), ["b"]);
    let now = at(5);
    assert_eq!(keys(&now), ["a", "b"]);
    assert_eq!(
        now.kvs[0].create_revision, 5,
        "re-created key starts a new life"
    );
    assert_eq!(now.kvs[0].version, 1);
    assert_eq!(now.header.unwrap().revision, 5);
    assert!(matches!(
        s.get(RangeRequest {
            key: "a".into(),
            revision: 6,
            ..Default::default()
        }),
        Err(RequestError::FutureRevision)
    ));
}

#[test]
fn compaction_keeps_what_reads_at_or_after_it_see() {
    let mut s = Store::new();
    s.put("a", "1"); // 2
    s.put("a", "2"); // 3
    s.put("b", "1"); // 4
    s.write(|w| {
        w.delete_range(&DeleteRangeRequest {
            key: "b".into(),
            ..Default::default()
        })
    }); // 5
    s.revs = compact(&s.txn(), s.revs, 4).unwrap();
    assert!(matches!(
        s.get(RangeRequest {
            key: "a".into(),
            revision: 3,
            ..Default::default()
        }),
        Err(RequestError::Compacted)
    ));
    let at4 = s
        .get(RangeRequest {
            key: "a".into(),
            range_end: vec![0],
            revision: 4,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&at4), ["a", "b"]);
    assert_eq!(at4.kvs[0].value, b"2");
    assert!(matches!(
        compact(&s.txn(), s.revs, 4),
        Err(RequestError::Compacted)
    ));
    assert!(matches!(
        compact(&s.txn(), s.revs, 9),
        Err(RequestError::FutureRevision)
    ));
    assert_eq!(
        stored_revisions(&s.txn()),
        [
            ("a".to_string(), 3, false),
            ("b".to_string(), 4, false),
            ("b".to_string(), 5, true)
        ],
        "a@3, b@4 and b's tombstone@5 remain"
    );
}

#[test]
fn count_limit_sort_and_filters() {
    let mut s = Store::new();
    for (k, v) in [("k1", "c"), ("k2", "a"), ("k3", "b"), ("x", "z")] {
        s.put(k, v);
    }
    s.put("k2", "a2");
    let r = s
        .get(RangeRequest {
            limit: 2,
            ..prefix("k")
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.count, r.more),
        (vec!["k1".into(), "k2".into()], 3, true)
    );
    let r = s
        .get(RangeRequest {
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            ..prefix("k")
        })
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k3", "k2"]);
    // A non-key target without an order sorts ascending, as etcd does.
    let r = s
        .get(RangeRequest {
            sort_target: SortTarget::Mod as i32,
            ..prefix("k")
        })
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k3", "k2"]);
    let r = s
        .get(RangeRequest {
            count_only: true,
            ..prefix("k")
        })
        .unwrap();
    assert_eq!((r.count, r.kvs.len()), (3, 0));
    let r = s
        .get(RangeRequest {
            keys_only: true,
            ..prefix("k")
        })
        .unwrap();
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    let r = s
        .get(RangeRequest {
            min_mod_revision: 4,
            ..prefix("k")
        })
        .unwrap();
    assert_eq!((keys(&r), r.count), (vec!["k2".into(), "k3".into()], 3));
    let r = s
        .get(RangeRequest {
            max_create_revision: 2,
            ..prefix("k")
        })
        .unwrap();
    assert_eq!(keys(&r), ["k1"]);
    let all = s
        .get(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.count, 4);
}

#[test]
fn put_options() {
    let mut s = Store::new();
    let ignore = PutRequest {
        key: "a".into(),
        ignore_value: true,
        ..Default::default()
    };
    {
        let txn = s.txn();
        let mut w = WriteTxn::new(&txn, s.revs);
        assert!(matches!(w.put(&ignore), Err(RequestError::KeyNotFound)));
    }
    s.put("a", "keep");
    let r = s.write(|w| {
        w.put(&PutRequest {
            prev_kv: true,
            ..ignore.clone()
        })
    });
    assert_eq!(r.prev_kv.unwrap().value, b"keep");
    let kv = &s
        .get(RangeRequest {
            key: "a".into(),
            ..Default::default()
        })
        .unwrap()
        .kvs[0];
    assert_eq!((kv.value.as_slice(), kv.version), (&b"keep"[..], 2));
    let txn = s.txn();
    let mut w = WriteTxn::new(&txn, s.revs);
    assert!(matches!(
        w.put(&PutRequest {
            lease: 42,
            ..put_req("b", "v")
        }),
        Err(RequestError::LeaseNotFound)
    ));
}

fn op_put(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(put_req(k, "v"))),
    }
}
fn op_del(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}
fn op_txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(TxnRequest {
            compare: vec![],
            success,
            failure,
        })),
    }
}
fn txn(success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success,
        failure: vec![],
    }
}

#[test]
fn txn_request_checks() {
    assert!(check_txn(&txn(vec![op_put("a"), op_put("b")]), 128).is_ok());
    assert!(matches!(
        check_txn(&txn(vec![op_put("a"), op_put("a")]), 128),
        Err(RequestError::DuplicateKey)
    ));
    assert!(matches!(
        check_txn(&txn(vec![op_put("b"), op_del("a", "c")]), 128),
        Err(RequestError::DuplicateKey)
    ));
    assert!(check_txn(&txn(vec![op_put("c"), op_del("a", "c")]), 128).is_ok());
    // A nested txn's branches exclude each other...
    assert!(
        check_txn(
            &txn(vec![op_txn(vec![op_put("a")], vec![op_put("a")])]),
            128
        )
        .is_ok()
    );
    // ...but not the enclosing branch.
    assert!(matches!(
        check_txn(
            &txn(vec![op_put("a"), op_txn(vec![op_put("a")], vec![])]),
            128
        ),
        Err(RequestError::DuplicateKey)
    ));
    assert!(matches!(
        check_txn(
            &txn(vec![op_del("a", "z"), op_txn(vec![], vec![op_put("b")])]),
            128
        ),
        Err(RequestError::DuplicateKey)
    ));
    assert!(matches!(
        check_txn(&txn(vec![op_put("a"), op_put("b")]), 1),
        Err(RequestError::TooManyOps)
    ));
    assert!(matches!(
        check_txn(&txn(vec![op_put("")]), 128),
        Err(RequestError::EmptyKey)
    ));
}

#[test]
fn txn_compares_and_branches() {
    let mut s = Store::new();
    s.put("a", "1"); // 2
    let cmp = |target: CompareTarget, result: CompareResult, union: TargetUnion| Compare {
        result: result as i32,
        target: target as i32,
        key: "a".into(),
        target_union: Some(union),
        range_end: vec![],
    };
    let t = TxnRequest {
        compare: vec![
            cmp(
                CompareTarget::Value,
                CompareResult::Equal,
                TargetUnion::Value("1".into()),
            ),
            cmp(
                CompareTarget::Version,
                CompareResult::Greater,
                TargetUnion::Version(0),
            ),
            cmp(
                CompareTarget::Mod,
                CompareResult::Less,
                TargetUnion::ModRevision(3),
            ),
            cmp(
                CompareTarget::Create,
                CompareResult::NotEqual,
                TargetUnion::CreateRevision(9),
            ),
        ],
        success: vec![op_put("b"), op_put("c")],
        failure: vec![op_put("fail")],
    };
    let r = s.write(|w| apply_txn(w, &t));
    assert!(r.succeeded);
    assert_eq!(
        r.header.unwrap().revision,
        3,
        "one revision for the whole txn"
    );
    let b = &s
        .get(RangeRequest {
            key: "c".into(),
            ..Default::default()
        })
        .unwrap()
        .kvs[0];
    assert_eq!(b.mod_revision, 3);
    // A missing key: value compares are false; others compare against zero.
    let missing = |target, union| Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key: "nope".into(),
        target_union: Some(union),
        range_end: vec![],
    };
    let t = TxnRequest {
        compare: vec![missing(CompareTarget::Version, TargetUnion::Version(0))],
        success: vec![op_put("d")],
        failure: vec![],
    };
    assert!(s.write(|w| apply_txn(w, &t)).succeeded);
    let t = TxnRequest {
        compare: vec![missing(CompareTarget::Value, TargetUnion::Value(vec![]))],
        success: vec![],
        failure: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: "d".into(),
                ..Default::default()
            })),
        }],
    };
    let r = s.write(|w| apply_txn(w, &t));
    assert!(!r.succeeded);
    assert_eq!(s.revs.current, 4, "a read-only branch creates no revision");
    match &r.responses[0].response {
        Some(response_op::Response::ResponseRange(rr)) => assert_eq!(rr.kvs.len(), 1),
        other => panic!("unexpected {other:?}"),
    }
}

/// A txn nested `depth` levels below the outermost one.
fn nested_txn(depth: usize) -> TxnRequest {
    let mut t = txn(vec![op_put("a")]);
    for _ in 0..depth {
        t = txn(vec![op_txn(t.success, t.failure)]);
    }
    t
}

#[test]
fn txns_nest_as_deep_as_a_log_entry_can_hold_and_no_deeper() {
    use prost::Message;
    let deepest = nested_txn(MAX_TXN_DEPTH);
    assert!(check_txn(&deepest, 128).is_ok());
    // What is accepted must decode again from the log when applied.
    let entry = crate::proto::qetcdpb::RaftRequest {
        request: Some(crate::proto::qetcdpb::raft_request::Request::Txn(deepest)),
        ..Default::default()
    }
    .encode_to_vec();
    assert!(crate::proto::qetcdpb::RaftRequest::decode(entry.as_slice()).is_ok());
    assert!(matches!(
        check_txn(&nested_txn(MAX_TXN_DEPTH + 1), 128),
        Err(RequestError::TooManyOps)
    ));
}
