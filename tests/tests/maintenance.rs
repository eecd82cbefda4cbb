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

fn http(m: &Member, path: &str) -> (u16, String) {
    http_get(&format!("{}:2379", m.spec.ip), path).expect("an HTTP answer")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Puts `count` values of `size` bytes over `keys` keys (so most of them are history
/// that a compaction frees), through the Rust client; stops at the first refusal and
/// returns how many were written and the refusal.
fn fill(endpoints: &[String], keys: usize, count: usize, size: usize) -> (usize, Option<String>) {
    runtime().block_on(async {
        let mut c = etcd_client::Client::connect(endpoints, None)
            .await
            .expect("connect");
        for i in 0..count {
            let value = vec![b'a' + (i % 26) as u8; size];
            if let Err(e) = c.put(format!("fill/{}", i % keys), value, None).await {
                return (i, Some(e.to_string()));
            }
        }
        (count, None)
    })
}

fn revision(ctl: &Etcdctl) -> i64 {
    status(ctl)["header"]["revision"]
        .as_i64()
        .expect("revision")
}

/// Every member's DB SIZE, in member order, through `endpoint status --cluster`.
fn db_sizes(cluster: &Cluster) -> Vec<i64> {
    cluster
        .members
        .iter()
        .map(|m| db_size(&m.etcdctl()))
        .collect()
}

fn all_keys(ctl: &Etcdctl) -> String {
    ctl.run(&["get", "", "--prefix", "-w", "json"]).json()["kvs"].to_string()
}

#[test]
fn defrag_cluster_keeps_the_data_and_shrinks_the_database() {
    let cluster = Cluster::start(Binary::Qetcd, Cluster::specs("df", 3, "defrag"));
    let ctl = cluster.etcdctl();
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.client_url()).collect();
    // 8 MiB written over 16 keys: after a compaction all but 256 KiB is free.
    let (written, refused) = fill(&endpoints, 16, 512, 16 << 10);
    assert_eq!((written, refused), (512, None));
    ctl.run(&["put", "kept", "yes"]).ok();
    let before_keys = all_keys(&ctl);
    ctl.run(&["compaction", &revision(&ctl).to_string(), "--physical"])
        .ok();
    let before = wait_until(
        "every member to hold the history",
        Duration::from_secs(30),
        || {
            let sizes = db_sizes(&cluster);
            sizes.iter().all(|s| *s > 8 << 20).then_some(sizes)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", db_sizes(&cluster)));
    let out = cluster.members[0]
        .etcdctl()
        .run(&["defrag", "--cluster"])
        .ok()
        .to_string();
    assert_eq!(
        out.matches("Finished defragmenting etcd member").count(),
        3,
        "{out}"
    );
    let after = db_sizes(&cluster);
    for (b, a) in before.iter().zip(&after) {
        assert!(a * 4 < *b, "DB SIZE {b} -> {a}: not shrunk to a quarter");
    }
    for m in &cluster.members {
        let ctl = m.etcdctl();
        assert_eq!(
            all_keys(&ctl),
            before_keys,
            "data of {} after defrag",
            m.spec.name
        );
        let st = status(&ctl);
        assert!(st["dbSizeInUse"].as_i64().unwrap() <= st["dbSize"].as_i64().unwrap());
    }
    // Still takes writes.
    ctl.run(&["put", "after", "defrag"]).ok();
    assert!(ctl.run(&["get", "after"]).ok().contains("defrag"));
}

#[test]
fn nospace_alarm_refuses_writes_until_compact_defrag_disarm() {
    let quota = (16 << 20).to_string();
    let specs = Cluster::specs("ns", 3, "nospace")
        .into_iter()
        .map(|mut s| {
            s.extra_args = vec!["--quota-backend-bytes".into(), quota.clone()];
            s
        })
        .collect();
    let cluster = Cluster::start(Binary::Qetcd, specs);
    let ctl = cluster.etcdctl();
    ctl.run(&["put", "before", "fill"]).ok();
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.client_url()).collect();
    // 256 KiB values over 8 keys: the history passes 16 MiB after about 64 puts.
    let (written, refused) = fill(&endpoints, 8, 400, 256 << 10);
    let refused = refused.unwrap_or_else(|| panic!("{written} puts of 256 KiB, none refused"));
    assert!(
        refused.contains("etcdserver: mvcc: database space exceeded"),
        "{refused}"
    );
    assert!(written >= 40, "refused after only {written} puts");

    // Every member refuses writes with etcd's text, serves reads and deletes, and
    // reports the alarm.
    let ids: Vec<u64> = (0..3).map(|i| cluster.member_id(i)).collect();
    let mut listed = None;
    for m in &cluster.members {
        let ctl = m.etcdctl();
        wait_until("the alarm on every member", Duration::from_secs(30), || {
            let out = ctl.run(&["put", "more", "x"]);
            (!out.success).then_some(out.stderr)
        })
        .map(|stderr| {
            assert!(
                stderr.contains("etcdserver: mvcc: database space exceeded"),
                "{stderr}"
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(ctl.run(&["get", "before"]).ok().contains("fill"));
        let (code, body) = http(m, "/health");
        assert_eq!(code, 503, "{body}");
        assert_eq!(
            body.trim_end(),
            r#"{"health":"false","reason":"ALARM NOSPACE"}"#
        );
        let (code, _) = http(m, "/health?exclude=NOSPACE");
        assert_eq!(code, 200);
        // NOSPACE is no reason to take a member out of service: /readyz checks only
        // for CORRUPT, reads, and not being a learner; /livez for local reads.
        assert_eq!(http(m, "/readyz"), (200, "ok\n".to_string()));
        assert_eq!(
            http(m, "/readyz?verbose&exclude=non_learner"),
            (
                200,
                "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n"
                    .to_string()
            )
        );
        assert_eq!(
            http(m, "/readyz/data_corruption"),
            (200, "ok\n".to_string())
        );
        assert_eq!(
            http(m, "/livez?verbose"),
            (200, "[+]serializable_read ok\nok\n".to_string())
        );
        // One alarm, raised by whichever member the quota check failed on, and the
        // same on every member.
        let list = ctl.run(&["alarm", "list"]).ok().trim().to_string();
        assert!(
            ids.iter()
                .any(|id| list == format!("memberID:{id} alarm:NOSPACE")),
            "{list}"
        );
        assert_eq!(listed.get_or_insert_with(|| list.clone()), &list);
        let errors = status(&ctl)["errors"].to_string();
        assert!(errors.contains("alarm:NOSPACE"), "{errors}");
    }
    ctl.run(&["del", "before"]).ok();

    // Recovery: compact, defragment, disarm.
    ctl.run(&["compaction", &revision(&ctl).to_string(), "--physical"])
        .ok();
    cluster.members[0]
        .etcdctl()
        .run(&["defrag", "--cluster"])
        .ok();
    for size in db_sizes(&cluster) {
        assert!(size < 16 << 20, "DB SIZE {size} still above the quota");
    }
    let out = ctl.run(&["put", "still", "refused"]);
    assert!(
        out.stderr
            .contains("etcdserver: mvcc: database space exceeded"),
        "writes stay refused until the alarm is disarmed: {out:?}"
    );
    let disarmed = ctl.run(&["alarm", "disarm"]).ok().to_string();
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed}");
    assert_eq!(ctl.run(&["alarm", "list"]).ok().trim(), "");
    for m in &cluster.members {
        wait_until("writes accepted again", Duration::from_secs(30), || {
            m.etcdctl()
                .run(&["put", "after", "disarm"])
                .success
                .then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(http(m, "/health").0, 200);
    }
}

#[test]
fn defrag_under_write_load_loses_no_acknowledged_write() {
    let cluster = Cluster::start(Binary::Qetcd, Cluster::specs("dl", 3, "defragload"));
    let ctl = cluster.etcdctl();
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.client_url()).collect();
    fill(&endpoints, 16, 256, 16 << 10);
    ctl.run(&["compaction", &revision(&ctl).to_string(), "--physical"])
        .ok();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (endpoints, stop) = (endpoints.clone(), stop.clone());
            std::thread::spawn(move || {
                runtime().block_on(async move {
                    let mut c = etcd_client::Client::connect(&endpoints, None)
                        .await
                        .expect("connect");
                    let mut acknowledged = Vec::new();
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Acquire) {
                        let key = format!("load/{w}/{i}");
                        // A refused or timed-out put is not acknowledged: it may or
                        // may not be there, and is not checked.
                        if c.put(key.clone(), format!("v{i}"), None).await.is_ok() {
                            acknowledged.push((key, format!("v{i}")));
                        }
                        i += 1;
                    }
                    acknowledged
                })
            })
        })
        .collect();
    for round in 0..3 {
        let out = cluster.members[round % 3]
            .etcdctl()
            .run(&["defrag", "--cluster"]);
        assert!(out.success, "defrag round {round}: {out:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let acknowledged: Vec<(String, String)> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    assert!(
        acknowledged.len() > 50,
        "only {} writes during the defrags",
        acknowledged.len()
    );
    let stored: serde_json::Map<String, Value> = {
        let v = ctl.run(&["get", "load/", "--prefix", "-w", "json"]).json();
        v["kvs"]
            .as_array()
            .expect("kvs")
            .iter()
            .map(|kv| {
                let k = String::from_utf8(qetcd_tests::etcdctl::base64_decode(
                    kv["key"].as_str().unwrap(),
                ))
                .unwrap();
                let v = String::from_utf8(qetcd_tests::etcdctl::base64_decode(
                    kv["value"].as_str().unwrap(),
                ))
                .unwrap();
                (k, Value::String(v))
            })
            .collect()
    };
    for (k, v) in &acknowledged {
        assert_eq!(
            stored.get(k).and_then(Value::as_str),
            Some(v.as_str()),
            "acknowledged {k}"
        );
    }
    // And every member holds the same: hashes agree.
    agreed_hash(&cluster, 0);
    // The defragmentations overlapped the writes: entries committed meanwhile were
    // applied after them (the member logs how many).
    let overlapped = cluster.members.iter().any(|m| {
        m.logs()
            .lines()
            .any(|l| l.contains("finished defragment") && !l.contains("deferred_entries=0"))
    });
    assert!(
        overlapped,
        "no defragmentation saw a write committed while it ran"
    );
}

/// A CORRUPT alarm (raised here through the API, as etcd allows) stops every write
/// with etcd's text while reads go on, and takes the member out of `/readyz`.
#[test]
fn corrupt_alarm_refuses_writes_and_fails_readyz() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let mut spec = MemberSpec::new("corrupt");
    let metrics = format!("{}:2381", spec.ip);
    spec.extra_args = vec!["--listen-metrics-urls".into(), format!("http://{metrics}")];
    let m = Member::start(Binary::Qetcd, spec);
    let ctl = m.etcdctl();
    ctl.run(&["put", "k", "v"]).ok();
    let id = status(&ctl)["header"]["member_id"]
        .as_u64()
        .expect("member id");
    let alarm = |action: AlarmAction| {
        runtime().block_on(async {
            let mut c = etcd_client::Client::connect([m.client_url()], None)
                .await
                .expect("connect");
            let mut options = AlarmOptions::new();
            options.with_member(id);
            c.alarm(action, AlarmType::Corrupt, Some(options))
                .await
                .expect("alarm")
        })
    };
    alarm(AlarmAction::Activate);
    for args in [&["put", "k", "w"][..], &["del", "k"], &["compaction", "2"]] {
        let out = ctl.run(args);
        assert!(
            out.stderr.contains("etcdserver: corrupt cluster"),
            "{args:?}: {out:?}"
        );
    }
    assert!(ctl.run(&["get", "k"]).ok().contains('v'));
    assert_eq!(
        ctl.run(&["alarm", "list"]).ok().trim(),
        format!("memberID:{id} alarm:CORRUPT")
    );
    let (code, body) = http(&m, "/health");
    assert_eq!(
        (code, body.trim_end()),
        (503, r#"{"health":"false","reason":"ALARM CORRUPT"}"#)
    );
    let (code, body) = http(&m, "/readyz");
    assert_eq!(code, 503);
    assert!(
        body.contains("[-]data_corruption failed: alarm activated: CORRUPT"),
        "{body}"
    );
    assert_eq!(http(&m, "/livez").0, 200, "a corrupt member is still alive");
    // The metrics listener answers the same health endpoints (and nothing of gRPC).
    let on_metrics = |path: &str| http_get(&metrics, path).expect("metrics listener answers");
    assert_eq!(on_metrics("/livez"), (200, "ok\n".to_string()));
    assert_eq!(on_metrics("/readyz").0, 503);
    assert_eq!(on_metrics("/health").0, 503);
    alarm(AlarmAction::Deactivate);
    ctl.run(&["put", "k", "w"]).ok();
    assert_eq!(http(&m, "/readyz").0, 200);
    assert_eq!(on_metrics("/health").0, 200);
}
