//! Maintenance against real members with Debian's etcdctl: `endpoint hashkv` equal
//! across members and equal to Debian etcd's for the same history, `defrag` keeping
//! the data and shrinking the database, the NOSPACE cycle of `--quota-backend-bytes`,
//! and the health endpoints that report alarms.

use std::time::Duration;

use qetcd_tests::member::http_get;
use qetcd_tests::{Binary, Cluster, Etcdctl, Member, MemberSpec, wait_until};
use serde_json::Value;

/// One history, written the same way to every store compared: puts, overwrites,
/// deletes (one of several keys at once), a txn with two puts, a compaction at the
/// revision of a delete (so the compaction point is a tombstone), and writes after it
/// that supersede a kept revision.
fn write_history(ctl: &Etcdctl) {
    let run = |args: &[&str]| {
        ctl.run(args).ok();
    };
    run(&["put", "a", "1"]); // 2
    run(&["put", "b", "1"]); // 3
    run(&["put", "c/1", "x"]); // 4
    run(&["put", "c/2", "y"]); // 5
    run(&["put", "a", "2"]); // 6
    run(&["del", "b"]); // 7
    ctl.run_with_stdin(&["txn"], Some("\nput d 1\nput e 1\n\n\n"))
        .ok(); // 8
    run(&["put", "b", "2"]); // 9
    run(&["del", "c/", "--prefix"]); // 10
    run(&["put", "a", "3"]); // 11
    run(&["del", "e"]); // 12
}

/// Revisions at which the history is hashed before its compaction.
const BEFORE_COMPACTION: &[i64] = &[0, 5, 9];
/// ... and after it (the compaction is at 12; etcd 3.4 refuses a hash at exactly
/// the compact revision, 3.5 allows it, so the comparison starts above it).
const AFTER_COMPACTION: &[i64] = &[0, 13, 14];

fn write_after_compaction(ctl: &Etcdctl) {
    ctl.run(&["compaction", "12", "--physical"]).ok();
    ctl.run(&["put", "f", "1"]).ok(); // 13
    ctl.run(&["put", "a", "4"]).ok(); // 14
    ctl.run(&["del", "d"]).ok(); // 15
}

/// `endpoint hashkv` of every endpoint `ctl` names, as (hash, compact revision).
fn hashkv(ctl: &Etcdctl, rev: i64, cluster: bool) -> Vec<(u64, i64)> {
    let rev = rev.to_string();
    let mut args = vec!["endpoint", "hashkv", "--rev", &rev, "-w", "json"];
    if cluster {
        args.push("--cluster");
    }
    let v = ctl.run(&args).json();
    v.as_array()
        .expect("a list of endpoints")
        .iter()
        .map(|e| {
            (
                e["HashKV"]["hash"].as_u64().expect("hash"),
                e["HashKV"]["compact_revision"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

/// The hashes of all three members once they agree (followers may still be applying).
fn agreed_hash(cluster: &Cluster, rev: i64) -> (u64, i64) {
    let ctl = cluster.members[0].etcdctl();
    wait_until(
        "the members to agree on hashkv",
        Duration::from_secs(30),
        || {
            let all = hashkv(&ctl, rev, true);
            (all.len() == 3 && all.iter().all(|h| *h == all[0])).then(|| all[0])
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", hashkv(&ctl, rev, true)))
}

#[test]
fn hashkv_agrees_across_members_and_with_debian_etcd() {
    assert!(
        Binary::Etcd.available(),
        "Debian's etcd (etcd-server) is needed"
    );
    let etcd = Member::start(Binary::Etcd, MemberSpec::new("ref"));
    let qetcd = Cluster::start(Binary::Qetcd, Cluster::specs("hk", 3, "hashkv"));
    let (etcd_ctl, qetcd_ctl) = (etcd.etcdctl(), qetcd.etcdctl());

    write_history(&etcd_ctl);
    write_history(&qetcd_ctl);
    for &rev in BEFORE_COMPACTION {
        let want = hashkv(&etcd_ctl, rev, false)[0];
        assert_eq!(agreed_hash(&qetcd, rev).0, want.0, "hashkv --rev {rev}");
    }
    write_after_compaction(&etcd_ctl);
    write_after_compaction(&qetcd_ctl);
    for &rev in AFTER_COMPACTION {
        let want = hashkv(&etcd_ctl, rev, false)[0];
        assert_eq!(
            agreed_hash(&qetcd, rev),
            want,
            "hashkv --rev {rev} after compaction"
        );
    }
    // Below the compaction point there is nothing to hash, as in etcd.
    let out = qetcd_ctl.run(&["endpoint", "hashkv", "--rev", "5"]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{out:?}"
    );
    // Hash (the whole store) agrees across members too.
    let hashes = wait_until(
        "the members to agree on the store hash",
        Duration::from_secs(30),
        || {
            let hs: Vec<u64> = qetcd
                .members
                .iter()
                .map(|m| store_hash(&m.client_url()))
                .collect();
            hs.iter().all(|h| *h == hs[0]).then_some(hs)
        },
    );
    hashes.unwrap_or_else(|e| panic!("{e}"));
}

/// `Maintenance.Hash` of one member, through the Rust etcd client.
fn store_hash(endpoint: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("connect");
        client.hash().await.expect("hash").hash() as u64
    })
}

fn status(ctl: &Etcdctl) -> Value {
    ctl.run(&["endpoint", "status", "-w", "json"]).json()[0]["Status"].clone()
}

fn db_size(ctl: &Etcdctl) -> i64 {
    status(ctl)["dbSize"].as_i64().expect("dbSize")
}

#[allow(dead_code)]
fn health(m: &Member, path: &str) -> (u16, String) {
    http_get(&format!("{}:2379", m.spec.ip), path).expect("an HTTP answer")
}
