//! Majority loss: `--force-new-cluster` on a survivor brings the cluster back as one
//! member with the data; the lost members are refused as removed, and new members are
//! added one by one.

use std::time::Duration;

use qetcd_tests::{Binary, Cluster, wait_until};

#[test]
fn a_survivor_forces_a_new_one_member_cluster_with_the_data() {
    let mut cluster = Cluster::start(Binary::Qetcd, Cluster::specs("fn", 3, "force-new"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    for i in 0..20 {
        cluster.members[leader]
            .etcdctl()
            .run(&["put", &format!("k{i}"), "v"])
            .ok();
    }
    let survivor = (leader + 1) % 3;
    let id = cluster.member_id(survivor);
    let lost: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();
    for &i in &lost {
        cluster.members[i].kill9();
    }
    cluster.members[survivor]
        .spec
        .extra_args
        .push("--force-new-cluster".into());
    cluster.members[survivor].restart();
    assert!(
        cluster.members[survivor]
            .logs()
            .contains("forcing a new one-member cluster")
    );

    let ctl = cluster.members[survivor].etcdctl();
    let list = ctl.run(&["member", "list"]);
    let rows: Vec<&str> = list.ok().lines().collect();
    assert_eq!(rows.len(), 1, "{list:?}");
    assert!(rows[0].starts_with(&format!("{id:x}, started")), "{list:?}");
    let keys = ctl.run(&["get", "k", "--prefix", "--keys-only"]);
    assert_eq!(
        keys.ok().lines().filter(|l| !l.is_empty()).count(),
        20,
        "{keys:?}"
    );
    ctl.run(&["put", "after", "force"]).ok();

    // The lost members, back on their data, are refused as removed.
    cluster.members[lost[0]].relaunch();
    let status = cluster.members[lost[0]]
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running:\n{}", cluster.members[lost[0]].logs()));
    assert_eq!(status.code(), Some(78));

    // Members are added again one by one.
    let (out, spec) = cluster.add_member(survivor, "fn-new", false);
    out.ok();
    let new = cluster.join(spec);
    cluster.members[new].wait_healthy();
    wait_until(
        "the new member to have the data",
        Duration::from_secs(30),
        || {
            let got = cluster.members[new].etcdctl().run(&[
                "get",
                "after",
                "--print-value-only",
                "--consistency=s",
            ]);
            (got.stdout.trim() == "force").then_some(())
        },
    )
    .unwrap();
}
