//! `etcdctl member remove`: the cluster shrinks, the removed member exits with its
//! documented status (78) and stays out, refused by its former peers.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use qetcd_tests::{Binary, Cluster};

#[test]
fn a_removed_member_exits_and_is_refused_when_it_returns() {
    let mut cluster = Cluster::start(Binary::Qetcd, Cluster::specs("rm", 3, "remove-test"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let victim = (leader + 1) % 3;
    let keeper = (leader + 2) % 3;
    let victim_id = cluster.member_id(victim);
    let cluster_ctl = cluster.members[keeper].etcdctl();

    let out = cluster_ctl.run_reconfig(&["member", "remove", &format!("{victim_id:x}")]);
    // etcdctl prints IDs with Go's %16x: space-padded to 16 characters.
    assert!(
        out.ok()
            .contains(&format!("Member {victim_id:16x} removed from cluster")),
        "{out:?}"
    );
    let status = cluster.members[victim]
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "removed member still runs:\n{}",
                cluster.members[victim].logs()
            )
        });
    assert_eq!(
        status.code(),
        Some(78),
        "{status:?} signal {:?}",
        status.signal()
    );
    assert!(
        cluster.members[victim]
            .logs()
            .contains("the member has been permanently removed from the cluster")
    );

    let list = cluster_ctl.run(&["member", "list"]);
    assert_eq!(list.ok().lines().count(), 2, "{list:?}");
    cluster_ctl.run(&["put", "after-remove", "ok"]).ok();
    let got = cluster.members[leader]
        .etcdctl()
        .run(&["get", "after-remove", "--print-value-only"]);
    assert_eq!(got.ok().trim(), "ok");

    // Started again on its data dir it knows it was removed, and stays out.
    cluster.members[victim].relaunch();
    let status = cluster.members[victim]
        .wait_exit(Duration::from_secs(30))
        .expect("a removed member started again exits");
    assert_eq!(status.code(), Some(78));
    let got = cluster_ctl.run(&["member", "list"]);
    assert_eq!(got.ok().lines().count(), 2);
}

#[test]
fn a_member_removed_while_down_is_refused_by_its_peers() {
    let mut cluster = Cluster::start(Binary::Qetcd, Cluster::specs("rd", 3, "remove-down"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let victim = (leader + 1) % 3;
    let victim_id = cluster.member_id(victim);
    cluster.members[victim].kill9();
    let out = cluster.members[leader].etcdctl().run_reconfig(&[
        "member",
        "remove",
        &format!("{victim_id:x}"),
    ]);
    assert!(out.ok().contains("removed from cluster"), "{out:?}");

    // It does not know; its peers tell it, and it gives up with the same status.
    cluster.members[victim].relaunch();
    let status = cluster.members[victim]
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running:\n{}", cluster.members[victim].logs()));
    assert_eq!(
        status.code(),
        Some(78),
        "{}",
        cluster.members[victim].logs()
    );
    assert!(
        cluster.members[leader]
            .logs()
            .contains("rejected peer connection from removed member"),
        "{}",
        cluster.members[leader].logs()
    );
    let put = cluster.members[leader].etcdctl().run(&["put", "k", "v"]);
    assert!(put.success, "{put:?}");
}
