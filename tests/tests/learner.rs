//! Learners: added with `member add --learner`, they replicate without voting, refuse
//! what etcd refuses a learner, and become voters with `member promote` once in sync.

use std::time::Duration;

use qetcd_tests::{Binary, Cluster, wait_until};

const REFUSED: &str = "etcdserver: rpc not supported for learner";

#[test]
fn a_learner_replicates_is_refused_writes_and_is_promoted_once_in_sync() {
    let mut cluster = Cluster::start(Binary::Qetcd, Cluster::specs("le", 3, "learner-test"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    for i in 0..10 {
        cluster.members[0]
            .etcdctl()
            .run(&["put", &format!("k{i}"), "v"])
            .ok();
    }
    let (out, spec) = cluster.add_member(follower, "le3", true);
    out.ok();
    let l = cluster.join(spec);
    cluster.members[l].wait_healthy();
    let learner_id = cluster.member_id(l);

    // It has the data, and serves it only as a serializable read.
    let ctl = cluster.members[l].etcdctl();
    wait_until("the learner to have k9", Duration::from_secs(30), || {
        let got = ctl.run(&["get", "k9", "--print-value-only", "--consistency=s"]);
        (got.success && got.stdout.trim() == "v").then_some(())
    })
    .unwrap();
    let put = ctl.run(&["put", "no", "way"]);
    assert!(!put.success && put.stderr.contains(REFUSED), "{put:?}");
    let get = ctl.run(&["get", "k9"]);
    assert!(!get.success && get.stderr.contains(REFUSED), "{get:?}");
    let status = ctl.run(&["endpoint", "status", "-w", "json"]).json();
    assert_eq!(status[0]["Status"]["isLearner"], true, "{status}");

    // Never a leadership-transfer target.
    let moved = cluster.members[leader]
        .etcdctl()
        .run(&["move-leader", &format!("{learner_id:x}")]);
    assert!(
        !moved.success && moved.stderr.contains("etcdserver: bad leader transferee"),
        "{moved:?}"
    );

    // A voter cannot be promoted.
    let voter_id = cluster.member_id(leader);
    let wrong =
        cluster.members[follower]
            .etcdctl()
            .run(&["member", "promote", &format!("{voter_id:x}")]);
    assert!(
        !wrong.success
            && wrong
                .stderr
                .contains("etcdserver: can only promote a learner member"),
        "{wrong:?}"
    );

    // Promoted through a member that does not lead: the leader decides it is in sync.
    let promoted =
        cluster.members[follower]
            .etcdctl()
            .run(&["member", "promote", &format!("{learner_id:x}")]);
    assert!(
        promoted
            .ok()
            .contains(&format!("Member {learner_id:16x} promoted in cluster")),
        "{promoted:?}"
    );
    wait_until(
        "the promoted member to take writes",
        Duration::from_secs(30),
        || {
            ctl.run(&["put", "by-promoted", "yes"])
                .success
                .then_some(())
        },
    )
    .unwrap();
    let list = cluster.members[0].etcdctl().run(&["member", "list"]);
    assert!(
        list.ok()
            .lines()
            .any(|r| r.contains(", started, le3, ") && r.ends_with(", false")),
        "{list:?}"
    );

    // A learner that never started is behind the leader: not promoted.
    let (out, _never_started) = cluster.add_member(0, "le4", true);
    out.ok();
    let list = cluster.members[0].etcdctl().run(&["member", "list"]);
    let row = list
        .ok()
        .lines()
        .find(|r| r.contains(", unstarted, "))
        .unwrap_or_else(|| panic!("{list:?}"))
        .to_string();
    let behind = row.split(',').next().unwrap().trim().to_string();
    let refused = cluster.members[follower]
        .etcdctl()
        .run(&["member", "promote", &behind]);
    assert!(
        !refused.success
            && refused.stderr.contains(
                "etcdserver: can only promote a learner member which is in sync with leader"
            ),
        "{refused:?}"
    );
}

/// Writes keys one after another through `endpoints` until `stop` is set; returns
/// the keys whose put was acknowledged.
fn write_load(
    endpoints: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let ctl = qetcd_tests::Etcdctl::new(&endpoints);
        let mut acked = Vec::new();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let key = format!("load/{i:05}");
            if ctl.run(&["put", &key, "v"]).success {
                acked.push(key);
            }
            i += 1;
        }
        acked
    })
}

#[test]
fn add_learner_promote_and_remove_old_under_write_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(Binary::Qetcd, Cluster::specs("cy", 3, "cycle-test"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let old = (leader + 1) % 3;
    let old_id = cluster.member_id(old);
    let stays: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let endpoints = stays
        .iter()
        .map(|&i| cluster.members[i].client_url())
        .collect::<Vec<_>>()
        .join(",");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = write_load(endpoints, stop.clone());

    let (out, spec) = cluster.add_member(leader, "cy-new", true);
    out.ok();
    let new = cluster.join(spec);
    cluster.members[new].wait_healthy();
    let new_id = cluster.member_id(new);
    let via = cluster.members[stays[1]].etcdctl();
    wait_until(
        "the learner to be promoted",
        Duration::from_secs(60),
        || {
            let out = via.run(&["member", "promote", &format!("{new_id:x}")]);
            if out.success {
                return Some(());
            }
            // Behind the leader while it catches up under load: try again.
            assert!(out.stderr.contains("in sync with leader"), "{out:?}");
            None
        },
    )
    .unwrap();
    let removed = via.run_reconfig(&["member", "remove", &format!("{old_id:x}")]);
    assert!(removed.ok().contains("removed from cluster"), "{removed:?}");
    cluster.members[old]
        .wait_exit(Duration::from_secs(30))
        .expect("the removed member exits");

    // Writes go on in the new configuration; then stop the load.
    let check = cluster.members[stays[0]].etcdctl();
    wait_until(
        "writes to continue after the cycle",
        Duration::from_secs(30),
        || {
            check
                .run(&["put", "cycle-done", "yes"])
                .success
                .then_some(())
        },
    )
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.join().expect("writer thread");
    assert!(!acked.is_empty());
    for i in [stays[0], stays[1], new] {
        let ctl = cluster.members[i].etcdctl();
        wait_until(
            &format!("member {i} to have every acknowledged write"),
            Duration::from_secs(30),
            || {
                let out = ctl.run(&["get", "load/", "--prefix", "--keys-only", "--consistency=s"]);
                let have: std::collections::HashSet<&str> = out.stdout.lines().collect();
                acked
                    .iter()
                    .all(|k| have.contains(k.as_str()))
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e} ({} acknowledged)", acked.len()));
    }
}
