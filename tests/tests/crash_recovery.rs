//! Every member killed at once, several times, under a write load of random keys: after
//! each restart every acknowledged write is there with its revision, and no write is
//! there in part.
//!
//! Each write is a transaction that puts the same value under a key and its shadow, so
//! a write applied in part would show as a key and shadow that disagree. Writers own
//! disjoint keys, so a key's writes are applied in the order they were sent: what a key
//! holds must be its last acknowledged value, or a value sent after it whose answer
//! was lost to the kill.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, GetOptions, Txn, TxnOp};
use qetcd_tests::{Binary, Cluster, wait_until};

const KEY_SPACE: u64 = 100_000;
const WRITERS: u64 = 32;
const WRITES: u64 = 100_000;
const KILLS: usize = 3;

/// What one key is known to hold: its last acknowledged value and revision, and the
/// values sent after it whose outcome is unknown.
#[derive(Default, Clone)]
struct KeyLedger {
    acked: Option<(String, i64)>,
    unknown: Vec<String>,
}

fn key(i: u64) -> String {
    // Spread over the key space, not in insertion order.
    format!("crash/{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

async fn writer(
    endpoints: Vec<String>,
    w: u64,
    round: usize,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> HashMap<String, KeyLedger> {
    let mut ledger: HashMap<String, KeyLedger> = HashMap::new();
    let mut rng = w.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    let mut client = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && next.load(Ordering::Relaxed) < WRITES {
        let c = match &mut client {
            Some(c) => c,
            None => match Client::connect(&endpoints, None).await {
                Ok(c) => client.insert(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // xorshift: a key of this writer's share, at random.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let k = key((rng % (KEY_SPACE / WRITERS)) * WRITERS + w);
        seq += 1;
        let value = format!("r{round}-w{w}-{seq}");
        let txn = Txn::new().and_then([
            TxnOp::put(k.clone(), value.clone(), None),
            TxnOp::put(format!("{k}/shadow"), value.clone(), None),
        ]);
        let entry = ledger.entry(k).or_default();
        match tokio::time::timeout(Duration::from_secs(10), c.txn(txn)).await {
            Ok(Ok(resp)) => {
                let rev = resp.header().expect("header").revision();
                entry.acked = Some((value, rev));
                entry.unknown.clear();
                next.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                entry.unknown.push(value);
                client = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    ledger
}

/// Reads every key of the test and checks it against the ledger.
async fn verify(endpoints: &[String], ledger: &HashMap<String, KeyLedger>) -> usize {
    let mut c = Client::connect(endpoints, None).await.unwrap();
    let mut found: HashMap<Vec<u8>, (Vec<u8>, i64)> = HashMap::new();
    let mut from = b"crash/".to_vec();
    loop {
        let resp = c
            .get(
                from.clone(),
                Some(GetOptions::new().with_range("crash0").with_limit(10_000)),
            )
            .await
            .unwrap();
        for kv in resp.kvs() {
            found.insert(kv.key().to_vec(), (kv.value().to_vec(), kv.mod_revision()));
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    let mut checked = 0;
    for (k, l) in ledger {
        let main = found.get(k.as_bytes());
        let shadow = found.get(format!("{k}/shadow").as_bytes());
        assert_eq!(
            main, shadow,
            "{k}: the two puts of one transaction disagree"
        );
        let Some((value, rev)) = main else {
            assert!(l.acked.is_none(), "{k}: acknowledged write lost");
            continue;
        };
        let value = String::from_utf8_lossy(value);
        match &l.acked {
            Some((acked, acked_rev)) if *acked == value => {
                assert_eq!(rev, acked_rev, "{k}: acknowledged at another revision")
            }
            _ => assert!(
                l.unknown.iter().any(|u| *u == value),
                "{k}: holds {value}, neither its last acknowledged write {:?} nor one sent after it",
                l.acked
            ),
        }
        checked += 1;
    }
    checked
}

fn merge(into: &mut HashMap<String, KeyLedger>, from: HashMap<String, KeyLedger>) {
    for (k, l) in from {
        let e = into.entry(k).or_default();
        if l.acked.is_some() {
            *e = l;
        } else {
            e.unknown.extend(l.unknown);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_kill_9_of_every_member() {
    let mut cluster = Cluster::start(Binary::Qetcd, Cluster::specs("cr", 3, "crash-test"));
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.client_url()).collect();
    let next = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let mut ledger: HashMap<String, KeyLedger> = HashMap::new();
    for round in 0..=KILLS {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    endpoints.clone(),
                    w,
                    round,
                    next.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        if round < KILLS {
            // Kill at a point that depends on the load, not on the clock: after a
            // further share of the writes has been acknowledged.
            let target =
                WRITES * (round as u64 + 1) / (KILLS as u64 + 2) + (round as u64 * 977) % 1000;
            let counter = next.clone();
            tokio::task::spawn_blocking(move || {
                wait_until(
                    "writes to be acknowledged before the kill",
                    Duration::from_secs(300),
                    || (counter.load(Ordering::Relaxed) >= target).then_some(()),
                )
            })
            .await
            .unwrap()
            .unwrap();
            for m in &mut cluster.members {
                m.kill9();
            }
            stop.store(true, Ordering::Relaxed);
            eprintln!(
                "kill {} of every member after {} acknowledged transactions ({:?} in)",
                round + 1,
                next.load(Ordering::Relaxed),
                started.elapsed()
            );
        }
        for w in writers {
            merge(&mut ledger, w.await.unwrap());
        }
        if round < KILLS {
            for m in &mut cluster.members {
                m.relaunch();
            }
            for m in &cluster.members {
                m.wait_healthy();
            }
            let checked = verify(&endpoints, &ledger).await;
            assert!(checked > 0);
            eprintln!(
                "restarted and verified {checked} keys ({:?} in)",
                started.elapsed()
            );
        }
    }
    assert!(next.load(Ordering::Relaxed) >= WRITES);
    let checked = verify(&endpoints, &ledger).await;
    let acked = ledger.values().filter(|l| l.acked.is_some()).count();
    assert!(
        checked >= acked,
        "{checked} keys checked, {acked} acknowledged"
    );
    eprintln!(
        "{} transactions acknowledged over {KILLS} kills of every member; {checked} keys verified",
        next.load(Ordering::Relaxed)
    );
}
