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
