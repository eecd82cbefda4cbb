//! Overload: far more request data in flight than a member admits. The excess is
//! refused at once with etcd's `etcdserver: too many requests` (gRPC
//! RESOURCE_EXHAUSTED) instead of queueing without bound, and the member serves
//! normally once the overload is over.

use std::time::Duration;

use etcd_client::{Client, Error};
use qetcd_tests::{Binary, Cluster, wait_until};

/// 1 MiB values; 400 of them in flight is well past the member's 256 MiB budget.
const VALUE_BYTES: usize = 1 << 20;
const REQUESTS: usize = 400;
/// gRPC's status code, as etcd answers "too many requests".
const RESOURCE_EXHAUSTED: i32 = 8;

fn resident_peak_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_past_the_in_flight_budget_are_refused_as_too_many() {
    let cluster = Cluster::start(Binary::Qetcd, Cluster::specs("ov", 3, "overload"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    // Without its followers the leader cannot commit: every write it takes stays in
    // flight until its timeout, so the in-flight data only grows.
    for &f in &followers {
        cluster.members[f].signal("STOP");
    }
    let client = Client::connect([cluster.members[leader].client_url()], None)
        .await
        .unwrap();
    let value = vec![b'o'; VALUE_BYTES];
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let (mut c, v) = (client.clone(), value.clone());
            tokio::spawn(async move { c.put(format!("overload/{i}"), v, None).await })
        })
        .collect();
    let (mut too_many, mut other_errors, mut ok) = (0, Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::GRpcStatus(s))
                if s.code() as i32 == RESOURCE_EXHAUSTED
                    && s.message() == "etcdserver: too many requests" =>
            {
                too_many += 1
            }
            Err(e) => other_errors.push(e.to_string()),
        }
    }
    let peak = resident_peak_mib(cluster.members[leader].pid().unwrap());
    eprintln!(
        "{too_many} refused as too many, {} failed otherwise, {ok} succeeded; leader's peak resident memory {peak} MiB",
        other_errors.len()
    );
    assert!(
        too_many > 0,
        "no request refused as too many; other errors: {other_errors:?}"
    );
    // What was admitted waited for a quorum that never came: it timed out or lost its
    // leader, as etcd's requests would.
    for e in &other_errors {
        assert!(
            e.contains("request timed out") || e.contains("leader"),
            "unexpected error {e}"
        );
    }

    for &f in &followers {
        cluster.members[f].signal("CONT");
    }
    let mut c = client.clone();
    wait_until(
        "the cluster to take writes again",
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            let put = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(async move { c.put("after-overload", "ok", None).await })
            });
            put.ok()
        },
    )
    .unwrap();
    let got = c.get("after-overload", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"ok");
}
