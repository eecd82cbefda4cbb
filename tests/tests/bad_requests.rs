//! Property test of request validation through the gRPC API of a real member: random
//! malformed or extreme requests (oversized keys and values, inverted ranges, huge or
//! negative limits and revisions, deeply nested transactions, unknown lease IDs) each
//! get an answer or an error in etcd's words within a deadline, and the member stays
//! healthy throughout. `PROPTEST_CASES` sets the case count (default 64 here: each case
//! is a round trip to a real process).

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use qetcd_tests::{Binary, Member, MemberSpec};

/// One request to try.
#[derive(Debug, Clone)]
enum Probe {
    Put {
        key_len: usize,
        value_len: usize,
        lease: i64,
    },
    Range {
        key: Vec<u8>,
        end: Vec<u8>,
        limit: i64,
        revision: i64,
    },
    Delete {
        key: Vec<u8>,
        end: Vec<u8>,
    },
    NestedTxn {
        depth: usize,
        ops_per_level: usize,
    },
    LeaseRevoke {
        id: i64,
    },
    LeaseTimeToLive {
        id: i64,
    },
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..64, Just(1_572_864), 1_500_000usize..2_200_000]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..8),
        Just(vec![0u8]),
        Just(Vec::new()),
    ]
}

fn extreme() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MAX),
        Just(i64::MIN),
        Just(-1i64),
        Just(0i64),
        any::<i64>(),
        0i64..100
    ]
}

fn probe() -> impl Strategy<Value = Probe> {
    prop_oneof![
        (size(), size(), prop_oneof![Just(0i64), extreme()]).prop_map(
            |(key_len, value_len, lease)| Probe::Put {
                key_len,
                value_len,
                lease
            }
        ),
        (bytes(), bytes(), extreme(), extreme()).prop_map(|(key, end, limit, revision)| {
            Probe::Range {
                key,
                end,
                limit,
                revision,
            }
        }),
        (bytes(), bytes()).prop_map(|(key, end)| Probe::Delete { key, end }),
        (1usize..300, 1usize..4).prop_map(|(depth, ops_per_level)| Probe::NestedTxn {
            depth,
            ops_per_level
        }),
        extreme().prop_map(|id| Probe::LeaseRevoke { id }),
        extreme().prop_map(|id| Probe::LeaseTimeToLive { id }),
    ]
}

/// The request's error text, or `None` when it succeeded.
async fn send(c: &mut Client, p: &Probe) -> Result<(), String> {
    let text = |e: etcd_client::Error| e.to_string();
    match p {
        Probe::Put {
            key_len,
            value_len,
            lease,
        } => {
            let key = if *key_len == 0 {
                Vec::new()
            } else {
                vec![b'k'; *key_len]
            };
            let options = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
            c.put(key, vec![b'v'; *value_len], options)
                .await
                .map(drop)
                .map_err(text)
        }
        Probe::Range {
            key,
            end,
            limit,
            revision,
        } => {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(*limit)
                .with_revision(*revision);
            c.get(key.clone(), Some(options))
                .await
                .map(drop)
                .map_err(text)
        }
        Probe::Delete { key, end } => c
            .delete(
                key.clone(),
                Some(DeleteOptions::new().with_range(end.clone())),
            )
            .await
            .map(drop)
            .map_err(text),
        Probe::NestedTxn {
            depth,
            ops_per_level,
        } => {
            let mut txn = Txn::new().and_then([TxnOp::get("nested", None)]);
            for level in 0..*depth {
                let mut ops = vec![TxnOp::txn(txn)];
                ops.extend((1..*ops_per_level).map(|i| TxnOp::get(format!("n/{level}/{i}"), None)));
                txn = Txn::new()
                    .when([Compare::version("nested", CompareOp::Equal, 0)])
                    .and_then(ops);
            }
            c.txn(txn).await.map(drop).map_err(text)
        }
        Probe::LeaseRevoke { id } => c.lease_revoke(*id).await.map(drop).map_err(text),
        Probe::LeaseTimeToLive { id } => c
            .lease_time_to_live(*id, None)
            .await
            .map(drop)
            .map_err(text),
    }
}

/// A refusal in words a client can act on: etcd's `etcdserver: ...` texts, or gRPC's
/// own for a message it could not decode or that is past the size limit.
fn clear(err: &str) -> bool {
    [
        "etcdserver: ",
        "failed to decode",
        "message length too large",
        "decoded message length too large",
        "grpc: received message larger than max",
    ]
    .iter()
    .any(|t| err.contains(t))
}

#[test]
fn malformed_and_extreme_requests_get_clear_answers() {
    let member = Member::start(Binary::Qetcd, MemberSpec::new("bad-requests"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(10))
        .with_connect_timeout(Duration::from_secs(10));
    let client = rt
        .block_on(Client::connect([member.client_url()], Some(options)))
        .expect("connect");
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let refusals = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let result = runner.run(&probe(), |p| {
        let mut c = client.clone();
        let answer = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), send(&mut c, &p)).await
        });
        let answer =
            answer.map_err(|_| TestCaseError::fail(format!("no answer within 20 s to {p:?}")))?;
        if let Err(e) = &answer {
            prop_assert!(clear(e), "unclear refusal of {:?}: {}", p, e);
            refusals.borrow_mut().insert(
                e.split("message: ")
                    .nth(1)
                    .unwrap_or(e)
                    .chars()
                    .take(80)
                    .collect::<String>(),
            );
        }
        prop_assert!(
            member.health().is_some_and(|(code, _)| code == 200),
            "member unhealthy after {p:?}"
        );
        Ok(())
    });
    eprintln!("{cases} requests; refusals seen: {:#?}", refusals.borrow());
    if let Err(e) = result {
        panic!("{e}\n--- member log ---\n{}", member.logs());
    }
}

/// Txns nested as deeply as the API's decoder takes them, but deeper than a log entry
/// can hold and decode again: one such txn once crashed every member that applied it
/// (the random probes above found it). Each depth is refused in etcd's words, or
/// served, and the member stays healthy.
#[test]
fn txns_nested_past_what_the_log_can_hold_are_refused_before_they_are_proposed() {
    let member = Member::start(Binary::Qetcd, MemberSpec::new("deep-txns"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut client = rt
        .block_on(Client::connect([member.client_url()], None))
        .expect("connect");
    let mut refused = 0;
    for depth in 30..=52 {
        let probe = Probe::NestedTxn {
            depth,
            ops_per_level: 1,
        };
        let answer = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), send(&mut client, &probe)).await
        });
        let answer = answer.unwrap_or_else(|_| panic!("no answer within 20 s to {probe:?}"));
        if let Err(e) = answer {
            assert!(clear(&e), "unclear refusal of {probe:?}: {e}");
            refused += 1;
        }
        assert!(
            member.health().is_some_and(|(code, _)| code == 200),
            "member unhealthy after {probe:?}\n--- member log ---\n{}",
            member.logs()
        );
    }
    assert!(refused > 0, "every depth up to 52 was served");
}
