//! Acknowledged writes survive kill -9.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use qetcd_tests::{Binary, Member, MemberSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_puts_survive_kill_9() {
    let mut m = Member::start(Binary::Qetcd, MemberSpec::new("durable"));
    let client = Client::connect([m.client_url()], None).await.unwrap();

    // 500 puts from 10 concurrent writers; remember the revision each was acknowledged at.
    let mut writers = Vec::new();
    for w in 0..10 {
        let mut c = client.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..50 {
                let key = format!("key/{w:02}/{i:03}");
                let resp = c
                    .put(key.clone(), format!("value-{w}-{i}"), None)
                    .await
                    .unwrap();
                acked.push((key, resp.header().unwrap().revision()));
            }
            acked
        }));
    }
    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert_eq!(acked.len(), 500);

    // Keep writing while the process is killed: those are not acknowledged, the 500 are.
    let late = Arc::new(AtomicU64::new(0));
    let (mut c, count) = (client.clone(), late.clone());
    let background = tokio::spawn(async move {
        for i in 0.. {
            if c.put(format!("late/{i}"), "x", None).await.is_err() {
                break;
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    qetcd_tests::wait_until(
        "the late writer to be under way",
        Duration::from_secs(10),
        || (late.load(Ordering::Relaxed) >= 20).then_some(()),
    )
    .unwrap();
    m.kill9();
    let _ = background.await;
    m.restart();

    let mut c = Client::connect([m.client_url()], None).await.unwrap();
    let resp = c
        .get("key/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let found: BTreeMap<String, i64> = resp
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .collect();
    assert_eq!(
        found, acked,
        "every acknowledged put is there, at the revision it was acknowledged with"
    );
    for kv in resp.kvs() {
        let (_, w, i) = {
            let mut p = kv.key_str().unwrap().split('/');
            (
                p.next(),
                p.next().unwrap().parse::<u32>().unwrap(),
                p.next().unwrap().parse::<u32>().unwrap(),
            )
        };
        assert_eq!(kv.value_str().unwrap(), format!("value-{w}-{i}"));
    }
}
