//! Apply-side lease rules, on a real state database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::mvcc::{Revisions, WriteTxn};
use crate::proto::etcdserverpb::{LeaseGrantRequest, PutRequest};
use crate::storage::{StateTxn, TestStore};

fn db() -> (tempfile::TempDir, TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::open(&dir.path().join("s.db"));
    (dir, store)
}

fn put(conn: &StateTxn<'_>, revs: &mut Revisions, key: &str, lease: i64) {
    let mut w = WriteTxn::new(conn, *revs);
    w.put(&PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    })
    .unwrap();
    revs.current = w.revision();
}

#[test]
fn min_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
    // etcd's defaults: 100 ms heartbeat, 10 ticks: 1.5 s, so 2 s.
    assert_eq!(min_ttl(Duration::from_millis(100), 10), 2);
    assert_eq!(min_ttl(Duration::from_millis(100), 20), 3);
    assert_eq!(min_ttl(Duration::from_millis(500), 10), 8); // 7.5 s
    assert_eq!(min_ttl(Duration::from_millis(10), 10), 1);
}

#[test]
fn generated_ids_are_positive_distinct_and_carry_the_member() {
    let g = IdGenerator::new(0xabcd_1234_5678);
    let a = g.next();
    let b = g.next();
    assert!(a > 0 && b > a);
    assert_eq!((a as u64) >> 48, 0x5678 & 0x7fff);
    let other = IdGenerator::new(0x9999);
    assert_ne!((other.next() as u64) >> 48, (a as u64) >> 48);
}

#[test]
fn grant_refuses_an_existing_id_and_revoke_a_missing_one() {
    let (_d, store) = db();
    let conn = store.txn();
    let lessor = Lessor::default();
    let req = LeaseGrantRequest { ttl: 10, id: 5 };
    let resp = grant(&conn, &lessor, &req, 1).unwrap();
    assert_eq!((resp.id, resp.ttl), (5, 10));
    assert!(matches!(
        grant(&conn, &lessor, &req, 1),
        Err(RequestError::LeaseExists)
    ));
    let mut w = WriteTxn::new(&conn, Revisions::load(&conn).unwrap());
    assert!(matches!(
        revoke(&mut w, &lessor, 6),
        Err(RequestError::LeaseNotFound)
    ));
    assert_eq!(w.revision(), 1, "a failed revoke writes nothing");
}

#[test]
fn revoke_deletes_the_attached_keys_in_one_revision() {
    let (_d, store) = db();
    let conn = store.txn();
    let lessor = Lessor::default();
    let mut revs = Revisions::load(&conn).unwrap();
    grant(&conn, &lessor, &LeaseGrantRequest { ttl: 10, id: 7 }, 1).unwrap();
    put(&conn, &mut revs, "a", 7);
    put(&conn, &mut revs, "b", 7);
    put(&conn, &mut revs, "c", 0);
    // Re-put without the lease: detached.
    put(&conn, &mut revs, "d", 7);
    put(&conn, &mut revs, "d", 0);
    assert_eq!(keys(&conn, 7), [b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(revs.current, 6);

    let mut w = WriteTxn::new(&conn, revs);
    let resp = revoke(&mut w, &lessor, 7).unwrap();
    assert_eq!(
        resp.header.unwrap().revision,
        7,
        "both deletions share revision 7"
    );
    let all = crate::mvcc::range(
        &conn,
        &crate::proto::etcdserverpb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        },
        Revisions { current: 7, ..revs },
    )
    .unwrap();
    let live: Vec<Vec<u8>> = all.kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(live, [b"c".to_vec(), b"d".to_vec()]);
    let mut tombstones = 0;
    crate::storage::keyspace::for_each_revision::<crate::storage::StorageError>(&conn, |row| {
        tombstones += i32::from(row.main == 7 && row.tombstone);
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .unwrap();
    assert_eq!(tombstones, 2);
    assert!(!exists(&conn, 7).unwrap());
    assert!(lessor.remaining(7).is_none());
    // A revoke of a lease without keys changes no revision.
    grant(&conn, &lessor, &LeaseGrantRequest { ttl: 10, id: 8 }, 7).unwrap();
    let mut w = WriteTxn::new(&conn, Revisions { current: 7, ..revs });
    revoke(&mut w, &lessor, 8).unwrap();
    assert_eq!(w.revision(), 7);
}

#[test]
fn renew_answers_the_granted_ttl_or_zero_for_a_missing_lease() {
    let (_d, store) = db();
    let conn = store.txn();
    let lessor = Lessor::default();
    grant(&conn, &lessor, &LeaseGrantRequest { ttl: 30, id: 3 }, 1).unwrap();
    assert_eq!(renew(&conn, &lessor, 3, 1).unwrap().ttl, 30);
    assert_eq!(renew(&conn, &lessor, 4, 1).unwrap().ttl, 0);
    assert!(
        lessor.remaining(4).is_none(),
        "renew does not create a lease"
    );
}

#[test]
fn expiry_hands_out_past_deadlines_once_per_retry_interval() {
    let lessor = Lessor::default();
    lessor.refresh(1, 0);
    lessor.refresh(2, 100);
    let now = Instant::now();
    assert_eq!(lessor.take_expired(now, 10), [1]);
    assert!(lessor.take_expired(now, 10).is_empty(), "not again at once");
    assert_eq!(
        lessor.take_expired(now + Duration::from_secs(4), 10),
        [1],
        "again once the retry interval has passed"
    );
    assert_eq!(
        lessor.take_expired(now + Duration::from_secs(200), 1).len(),
        1
    );
}

#[test]
fn promotion_gives_every_lease_a_full_ttl_plus_an_election_timeout() {
    let lessor = Lessor::new(1, Duration::from_millis(100), 10);
    lessor.refresh(1, 0);
    assert!(!lessor.is_primary(3));
    lessor.new_leader(2, false);
    assert!(!lessor.is_primary(2), "a follower never decides expiry");
    lessor.new_leader(3, true);
    assert!(lessor.is_primary(3));
    assert!(!lessor.is_primary(4));
    // The 0 s lease now has one election timeout (1 s) left.
    assert!(lessor.take_expired(Instant::now(), 10).is_empty());
    assert_eq!(
        lessor.take_expired(Instant::now() + Duration::from_millis(1100), 10),
        [1]
    );
}

#[test]
fn restore_tracks_what_the_database_holds() {
    let (_d, store) = db();
    let conn = store.txn();
    let lessor = Arc::new(Lessor::default());
    grant(&conn, &lessor, &LeaseGrantRequest { ttl: 30, id: 3 }, 1).unwrap();
    lessor.refresh(99, 5); // not in the database
    lessor.restore(&conn).unwrap();
    assert_eq!(lessor.len(), 1);
    assert!(lessor.remaining(3).unwrap() >= 29);
    assert_eq!(list(&conn).unwrap(), [3]);
}

/// Lease entries as the Raft node applies them: through the state machine, with the
/// results the proposer gets back.
mod through_the_state_machine {
    use prost::Message as _;
    use raft::prelude::Entry;

    use super::*;
    use crate::proto::etcdserverpb::{LeaseKeepAliveRequest, LeaseRevokeRequest};
    use crate::proto::qetcdpb::{LeaseExpire, RaftRequest, raft_request::Request};
    use crate::state_machine::{Applied, Completion, StateMachine};

    fn entry(index: u64, request: Request) -> Entry {
        let req = RaftRequest {
            id: index,
            origin: 7,
            request: Some(request),
            ..Default::default()
        };
        Entry {
            index,
            term: 1,
            data: req.encode_to_vec().into(),
            ..Default::default()
        }
    }

    fn apply(sm: &mut StateMachine, conn: &Connection, index: u64, r: Request) -> Completion {
        let mut done = Vec::new();
        sm.apply(conn, &entry(index, r), &mut done).unwrap();
        done.pop().expect("the proposer hears back")
    }

    #[test]
    fn grant_put_renew_revoke() {
        let (_d, store) = db();
        let conn = store.txn();
        let lessor = Arc::new(Lessor::default());
        let mut sm = StateMachine::with_lessor(
            &conn,
            7,
            lessor.clone(),
            Default::default(),
            store.keys.clone(),
        )
        .unwrap();
        let grant = LeaseGrantRequest { ttl: 30, id: 42 };
        match apply(&mut sm, &conn, 1, Request::LeaseGrant(grant)).result {
            Ok(Applied::LeaseGrant(r)) => assert_eq!((r.id, r.ttl), (42, 30)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            apply(&mut sm, &conn, 2, Request::LeaseGrant(grant)).result,
            Err(RequestError::LeaseExists)
        ));
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 42,
            ..Default::default()
        };
        apply(&mut sm, &conn, 3, Request::Put(put)).result.unwrap();
        assert_eq!(sm.revisions().current, 2);
        match apply(
            &mut sm,
            &conn,
            4,
            Request::LeaseRenew(LeaseKeepAliveRequest { id: 42 }),
        )
        .result
        {
            Ok(Applied::LeaseRenew(r)) => assert_eq!(r.ttl, 30),
            other => panic!("{other:?}"),
        }
        match apply(
            &mut sm,
            &conn,
            5,
            Request::LeaseRevoke(LeaseRevokeRequest { id: 42 }),
        )
        .result
        {
            Ok(Applied::LeaseRevoke(r)) => assert_eq!(r.header.unwrap().revision, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            sm.revisions().current,
            3,
            "the key's deletion is revision 3"
        );
        assert!(lessor.is_empty());
        match apply(
            &mut sm,
            &conn,
            6,
            Request::LeaseRenew(LeaseKeepAliveRequest { id: 42 }),
        )
        .result
        {
            Ok(Applied::LeaseRenew(r)) => assert_eq!(r.ttl, 0, "gone: TTL 0"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            apply(
                &mut sm,
                &conn,
                7,
                Request::LeaseRevoke(LeaseRevokeRequest { id: 42 })
            )
            .result,
            Err(RequestError::LeaseNotFound)
        ));
        // An expiry decided in another term than the one it is committed in is
        // ignored; decided and committed in the same term, it revokes.
        let grant = LeaseGrantRequest { ttl: 5, id: 44 };
        apply(&mut sm, &conn, 8, Request::LeaseGrant(grant))
            .result
            .unwrap();
        let stale = LeaseExpire { id: 44, term: 0 };
        assert!(matches!(
            apply(&mut sm, &conn, 9, Request::LeaseExpire(stale)).result,
            Err(RequestError::LeaderChanged)
        ));
        assert!(exists(&conn, 44).unwrap());
        let current = LeaseExpire { id: 44, term: 1 };
        assert!(matches!(
            apply(&mut sm, &conn, 10, Request::LeaseExpire(current)).result,
            Ok(Applied::LeaseRevoke(_))
        ));
        assert!(!exists(&conn, 44).unwrap());
        // A restarted member tracks the leases its database holds.
        let grant = LeaseGrantRequest { ttl: 9, id: 43 };
        apply(&mut sm, &conn, 11, Request::LeaseGrant(grant))
            .result
            .unwrap();
        let fresh = Arc::new(Lessor::default());
        StateMachine::with_lessor(
            &conn,
            7,
            fresh.clone(),
            Default::default(),
            store.keys.clone(),
        )
        .unwrap();
        assert_eq!(fresh.len(), 1);
        assert!(fresh.remaining(43).is_some());
    }
}

#[test]
fn the_longest_ttl_fits_in_a_deadline() {
    let lessor = Lessor::default();
    lessor.refresh(1, MAX_TTL);
    lessor.new_leader(1, true);
    assert!(lessor.remaining(1).unwrap() >= MAX_TTL - 1);
    assert!(lessor.take_expired(Instant::now(), 10).is_empty());
}
