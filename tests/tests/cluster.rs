//! Static bootstrap of a three-member cluster on loopback addresses, replication through
//! Raft over QUIC, failover and leadership handover.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::Client;
use qetcd_tests::{Binary, Cluster, Member, wait_until};

#[test]
fn three_members_replicate_and_read_linearizably_everywhere() {
    let c = Cluster::start(Binary::Qetcd, Cluster::specs("rep", 3, "replicate"));
    let list = c.members[0].etcdctl().run(&["member", "list"]);
    let rows: Vec<&str> = list.ok().lines().collect();
    assert_eq!(rows.len(), 3, "{}", list.stdout);
    for m in &c.members {
        let row = format!(
            "started, {}, {}, {}, false",
            m.spec.name,
            m.spec.peer_url(),
            m.client_url()
        );
        assert!(
            rows.iter().any(|r| r.ends_with(&row)),
            "{row} missing from {rows:?}"
        );
    }
    for (i, writer) in c.members.iter().enumerate() {
        let key = format!("from-{i}");
        writer
            .etcdctl()
            .run(&["put", &key, &format!("value-{i}")])
            .ok();
        for reader in &c.members {
            // etcdctl reads are linearizable by default: no waiting needed.
            let got = reader.etcdctl().run(&["get", &key, "--print-value-only"]);
            assert_eq!(
                got.ok().trim(),
                format!("value-{i}"),
                "read on {}",
                reader.spec.name
            );
        }
    }
    let status = c
        .etcdctl()
        .run(&["endpoint", "status", "-w", "json"])
        .json();
    let leaders: Vec<u64> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "one leader: {leaders:?}"
    );
}

/// Acknowledged writes a phase of a load test waits for: enough that a fault lands
/// among writes in flight, few enough that a loaded machine (one sequential writer,
/// three fsyncs per write on a shared disk) gets there.
const WRITES_PER_PHASE: u64 = 20;

/// Waits until `count` acknowledged writes reach `target`. The deadline only stops a
/// stuck cluster from hanging the test; it is no throughput requirement.
fn wait_for_writes(count: &AtomicU64, target: u64, what: &str) {
    wait_until(what, Duration::from_secs(120), || {
        (count.load(Ordering::Relaxed) >= target).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {} acknowledged", count.load(Ordering::Relaxed)));
}

/// Writes in a loop through the given endpoints, remembering every acknowledged put.
fn start_writer(
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::Mutex<BTreeMap<String, i64>>>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut failures = 0;
            let mut client = Client::connect(&endpoints, None).await.unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load/{i:06}");
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    client.put(key.clone(), "v", None),
                )
                .await
                {
                    Ok(Ok(r)) => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(key, r.header().unwrap().revision());
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => failures += 1,
                }
                i += 1;
            }
            failures
        })
    })
}

#[test]
fn leader_kill_9_under_write_load_loses_no_acknowledged_write() {
    let mut c = Cluster::start(Binary::Qetcd, Cluster::specs("kill", 3, "kill-leader"));
    let leader = c.wait_for_leader(&[0, 1, 2]);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let endpoints: Vec<String> = survivors
        .iter()
        .map(|&i| c.members[i].client_url())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let count = Arc::new(AtomicU64::new(0));
    let writer = start_writer(endpoints, stop.clone(), acked.clone(), count.clone());
    wait_for_writes(&count, WRITES_PER_PHASE, "writes before the kill");

    c.members[leader].kill9();
    let new_leader = c.wait_for_leader(&survivors);
    assert_ne!(new_leader, leader);
    let at_failover = count.load(Ordering::Relaxed);
    wait_for_writes(
        &count,
        at_failover + WRITES_PER_PHASE,
        "writes to continue after failover",
    );

    // The killed member comes back and catches up.
    c.members[leader].restart();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() as u64 >= 2 * WRITES_PER_PHASE);
    for m in &c.members {
        let out = m
            .etcdctl()
            .run(&["get", "load/", "--prefix", "-w", "json"])
            .json();
        let found: BTreeMap<String, i64> = out["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| {
                        let key = String::from_utf8(qetcd_tests::etcdctl::base64_decode(
                            kv["key"].as_str().unwrap(),
                        ))
                        .unwrap();
                        (key, kv["mod_revision"].as_i64().unwrap())
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (k, rev) in &acked {
            assert_eq!(
                found.get(k),
                Some(rev),
                "{k} acknowledged at {rev} but on {} it is {:?}",
                m.spec.name,
                found.get(k)
            );
        }
    }
}

#[test]
fn clusters_with_different_tokens_never_merge() {
    let mut a = Cluster::start(Binary::Qetcd, Cluster::specs("tok", 3, "token-a"));
    // Replace member 2 by a member of another cluster (other token) on the same address
    // and with the same initial cluster: same peer URLs, different cluster ID.
    a.members[2].kill9();
    let mut stranger_spec = a.members[2].spec.clone();
    stranger_spec.token = Some("token-b".into());
    let mut stranger = Member::spawn(Binary::Qetcd, stranger_spec);
    wait_until(
        "the stranger to be refused",
        Duration::from_secs(20),
        || {
            stranger
                .logs()
                .contains("cluster ID mismatch")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", stranger.logs()));
    // Whichever side called, both learn of it: the callee logs etcd's "request cluster
    // ID mismatch", the caller that its request was ignored for the mismatch.
    wait_until(
        "a member of A to log the mismatch",
        Duration::from_secs(20),
        || {
            a.members[..2]
                .iter()
                .any(|m| m.logs().contains("cluster ID mismatch"))
                .then_some(())
        },
    )
    .unwrap();
    // A keeps working with its two members; the stranger runs but has no leader.
    a.wait_for_leader(&[0, 1]);
    let put = a.members[0].etcdctl().run(&["put", "still", "works"]);
    if !put.success {
        let s0 = a.members[0]
            .etcdctl()
            .run(&["endpoint", "status", "-w", "json"]);
        let s1 = a.members[1]
            .etcdctl()
            .run(&["endpoint", "status", "-w", "json"]);
        panic!(
            "put failed: {put:?}\nstatus 0: {}\nstatus 1: {}",
            s0.stdout, s1.stdout
        );
    }
    assert_eq!(
        a.members[1]
            .etcdctl()
            .run(&["get", "still", "--print-value-only"])
            .ok()
            .trim(),
        "works"
    );
    assert!(
        stranger.wait_exit(Duration::from_millis(500)).is_none(),
        "the refused member keeps running"
    );
    let (code, body) = stranger.health().expect("stranger answers /health");
    // etcd answers failures with Go's http.Error, whose body ends in a newline.
    assert_eq!(
        (code, body.as_str()),
        (
            503,
            "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}\n"
        )
    );
    let list = a.members[0].etcdctl().run(&["member", "list"]);
    assert_eq!(list.ok().lines().count(), 3, "membership unchanged");
    stranger.kill9();
}

#[test]
fn move_leader_and_sigterm_hand_leadership_over() {
    let mut c = Cluster::start(Binary::Qetcd, Cluster::specs("mv", 3, "move-leader"));
    let leader = c.wait_for_leader(&[0, 1, 2]);
    let target = (leader + 1) % 3;
    let target_id = c.member_id(target);
    let out = c.members[leader]
        .etcdctl()
        .run(&["move-leader", &format!("{target_id:x}")]);
    assert!(
        out.ok().contains(&format!("to {target_id:x}")),
        "{}",
        out.stdout
    );
    assert_eq!(c.wait_for_leader(&[0, 1, 2]), target);

    // SIGTERM on the leader: the others have a new leader without an election timeout,
    // and writes through them keep succeeding.
    let others: Vec<usize> = (0..3).filter(|i| *i != target).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let count = Arc::new(AtomicU64::new(0));
    let endpoints: Vec<String> = others.iter().map(|&i| c.members[i].client_url()).collect();
    let writer = start_writer(endpoints, stop.clone(), acked, count.clone());
    wait_for_writes(&count, WRITES_PER_PHASE, "writes before SIGTERM");
    let status = c.members[target]
        .terminate()
        .expect("the leader exits on SIGTERM");
    assert!(
        c.members[target]
            .logs()
            .contains("leadership transfer finished"),
        "{}",
        c.members[target].logs()
    );
    let at_stop = count.load(Ordering::Relaxed);
    wait_for_writes(
        &count,
        at_stop + WRITES_PER_PHASE,
        "writes after the handover",
    );
    stop.store(true, Ordering::Relaxed);
    let failures = writer.join().unwrap();
    assert_eq!(failures, 0, "no write failed during the handover");
    let new_leader = c.wait_for_leader(&others);
    assert_ne!(new_leader, target);
    let _ = status;
}

#[test]
fn a_member_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let mut specs = Cluster::specs("snap", 3, "snapshot-catch-up");
    for s in &mut specs {
        // Compact the log every 50 entries, keeping 10: a short absence outruns it.
        s.extra_args.extend(
            ["--snapshot-count", "50", "--snapshot-catchup-entries", "10"].map(String::from),
        );
    }
    let mut c = Cluster::start(Binary::Qetcd, specs);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    let absent = (leader + 1) % 3;
    let present = 3 - leader - absent;
    c.members[absent].kill9();
    let ctl = c.members[leader].etcdctl();
    for i in 0..200 {
        ctl.run(&["put", &format!("snap/{i:03}"), &format!("v{i}")])
            .ok();
    }
    c.members[absent].restart();
    wait_until(
        "the absent member to install a snapshot",
        Duration::from_secs(30),
        || {
            c.members[absent]
                .logs()
                .contains("installed snapshot from leader")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.members[absent].logs()));
    assert!(
        c.members[leader].logs().contains("sent snapshot"),
        "{}",
        c.members[leader].logs()
    );
    // Everything written while it was away is there, served locally.
    let out = c.members[absent]
        .etcdctl()
        .run(&["get", "snap/", "--prefix", "--consistency=s", "-w", "json"])
        .json();
    assert_eq!(out["count"], 200, "{out}");
    // And it follows new writes normally afterwards.
    c.members[present]
        .etcdctl()
        .run(&["put", "after", "snapshot"])
        .ok();
    assert_eq!(
        c.members[absent]
            .etcdctl()
            .run(&["get", "after", "--print-value-only"])
            .ok()
            .trim(),
        "snapshot"
    );
}
