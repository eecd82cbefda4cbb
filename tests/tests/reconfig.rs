//! `etcdctl member update` (a member moves to a new peer URL) and
//! `--strict-reconfig-check` (on by default): changes that would cost the cluster its
//! quorum are refused with etcd's texts.

use std::time::Duration;

use qetcd_tests::member::unique_ip;
use qetcd_tests::{Binary, Cluster, wait_until};

#[test]
fn a_member_moves_to_its_updated_peer_url() {
    let mut cluster = Cluster::start(Binary::Qetcd, Cluster::specs("up", 3, "update-test"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let mover = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let id = cluster.member_id(mover);
    let new_ip = unique_ip();
    let new_peer = format!("http://{new_ip}:2380");

    let taken = cluster.members[other].spec.peer_url();
    let dup = cluster.members[other].etcdctl().run(&[
        "member",
        "update",
        &format!("{id:x}"),
        &format!("--peer-urls={taken}"),
    ]);
    assert!(
        dup.stderr.contains("etcdserver: Peer URLs already exists"),
        "{dup:?}"
    );
    let unknown = cluster.members[other].etcdctl().run(&[
        "member",
        "update",
        "1234",
        &format!("--peer-urls={new_peer}"),
    ]);
    assert!(
        unknown.stderr.contains("etcdserver: member not found"),
        "{unknown:?}"
    );

    let out = cluster.members[other].etcdctl().run(&[
        "member",
        "update",
        &format!("{id:x}"),
        &format!("--peer-urls={new_peer}"),
    ]);
    assert!(
        out.ok()
            .contains(&format!("Member {id:16x} updated in cluster")),
        "{out:?}"
    );
    let list = cluster.members[leader].etcdctl().run(&["member", "list"]);
    assert!(list.ok().contains(&new_peer), "{list:?}");

    // Restarted on the new address (same data dir), it is back in the cluster.
    cluster.members[mover].terminate();
    cluster.members[mover].spec.ip = new_ip;
    cluster.members[mover].restart();
    cluster.members[mover]
        .etcdctl()
        .run(&["put", "moved", "yes"])
        .ok();
    for m in &cluster.members {
        wait_until(
            "every member to see the write",
            Duration::from_secs(30),
            || {
                let got =
                    m.etcdctl()
                        .run(&["get", "moved", "--print-value-only", "--consistency=s"]);
                (got.stdout.trim() == "yes").then_some(())
            },
        )
        .unwrap();
    }
    let health = cluster.etcdctl().run(&["endpoint", "health", "--cluster"]);
    // etcdctl 3.4 prints the verdicts on stderr.
    let verdicts = format!("{}{}", health.stdout, health.stderr);
    assert!(health.success, "{health:?}");
    assert_eq!(verdicts.matches("is healthy").count(), 3, "{health:?}");
}

#[test]
fn strict_reconfig_check_refuses_changes_that_cost_quorum() {
    let mut cluster = Cluster::start(Binary::Qetcd, Cluster::specs("sc", 3, "strict-test"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let down = (leader + 1) % 3;
    // A learner does not vote: its add is not checked for quorum...
    let (learner, _) = cluster.add_member(leader, "sc-learner", true);
    learner.ok();
    // ...and, once a voter is down, refuses a fourth voter: 2 connected < quorum(4).
    cluster.members[down].kill9();
    let ctl = cluster.members[leader].etcdctl();
    let url = format!("--peer-urls=http://{}:2380", unique_ip());
    wait_until(
        "a voter add to be refused as unhealthy",
        Duration::from_secs(30),
        || {
            let out = ctl.run(&["member", "add", "sc-voter", &url]);
            assert!(!out.success, "a voter was added with a voter down: {out:?}");
            out.stderr
                .contains("etcdserver: unhealthy cluster")
                .then_some(())
        },
    )
    .unwrap();
    // Back up and connected again: the same add is accepted.
    cluster.members[down].restart();
    let out = ctl.run_reconfig(&["member", "add", "sc-voter", &url]);
    assert!(out.ok().contains(" added to cluster "), "{out:?}");
}

#[test]
fn a_voter_add_needs_a_quorum_of_started_members() {
    let cluster = Cluster::start(Binary::Qetcd, Cluster::specs("ns", 1, "started-test"));
    // One started member may take a second (etcd's special case)...
    let (first, _) = cluster.add_member(0, "ns1", false);
    first.ok();
    // ...but with it never started, a third would have 1 of 3 started.
    let (second, _) = cluster.add_member(0, "ns2", false);
    assert!(
        second
            .stderr
            .contains("etcdserver: re-configuration failed due to not enough started members"),
        "{second:?}"
    );
    // Learners do not count toward quorum: not refused for that reason.
    let (learner, _) = cluster.add_member(0, "ns3", true);
    assert!(
        !learner.stderr.contains("not enough started"),
        "{learner:?}"
    );
}
