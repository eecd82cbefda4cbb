//! `etcdctl member add`: what it prints (the `ETCD_*` lines a new member starts with),
//! and etcd's refusals with etcd's texts.

use qetcd_tests::{Binary, Cluster};

#[test]
fn member_add_prints_the_new_members_environment_and_refuses_etcds_cases() {
    let cluster = Cluster::start(Binary::Qetcd, Cluster::specs("ad", 3, "add-test"));
    cluster.wait_for_leader(&[0, 1, 2]);

    let (out, spec) = cluster.add_member(1, "ad3", false);
    let text = out.ok();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("Member ") && lines[0].contains(" added to cluster "),
        "{text}"
    );
    let mut expected_cluster: Vec<String> = cluster
        .members
        .iter()
        .map(|m| format!("{}={}", m.spec.name, m.spec.peer_url()))
        .collect();
    expected_cluster.push(format!("ad3={}", spec.peer_url()));
    let env = |k: &str| {
        spec.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} not printed: {text}"))
    };
    assert_eq!(env("ETCD_NAME"), "ad3");
    let mut printed: Vec<String> = env("ETCD_INITIAL_CLUSTER")
        .split(',')
        .map(String::from)
        .collect();
    printed.sort();
    expected_cluster.sort();
    assert_eq!(printed, expected_cluster);
    assert_eq!(env("ETCD_INITIAL_ADVERTISE_PEER_URLS"), spec.peer_url());
    assert_eq!(env("ETCD_INITIAL_CLUSTER_STATE"), "existing");

    // The new member is listed, unstarted (no name yet), and the cluster still serves.
    let list = cluster.members[0].etcdctl().run(&["member", "list"]);
    let row = list
        .ok()
        .lines()
        .find(|l| l.contains(&spec.peer_url()))
        .unwrap_or_else(|| panic!("{list:?}"));
    assert!(row.contains(", unstarted, ,"), "{row}");
    cluster.members[2].etcdctl().run(&["put", "k", "v"]).ok();

    // A peer URL another member has.
    let dup = cluster.members[0].etcdctl().run(&[
        "member",
        "add",
        "again",
        &format!("--peer-urls={}", spec.peer_url()),
    ]);
    assert!(!dup.success);
    assert!(
        dup.stderr.contains("etcdserver: Peer URLs already exists"),
        "{dup:?}"
    );
    // etcdctl checks URLs itself (types.NewURLs) before asking; the server's own check,
    // `etcdserver: given member URLs are invalid`, is unit-tested in api::cluster.

    // One learner at a time (--max-learners defaults to 1).
    let (first, learner) = cluster.add_member(0, "ln1", true);
    // etcdctl 3.5+ says "added as learner to cluster"; Debian's 3.4 does not.
    let head = first.ok().lines().next().unwrap();
    assert!(
        head.contains(" added as learner to cluster ") || head.contains(" added to cluster "),
        "{first:?}"
    );
    let listed = cluster.members[2].etcdctl().run(&["member", "list"]);
    assert!(
        listed
            .ok()
            .lines()
            .any(|l| l.contains(&learner.peer_url()) && l.ends_with(", true")),
        "{listed:?}"
    );
    let (second, _) = cluster.add_member(0, "ln2", true);
    assert!(
        second
            .stderr
            .contains("etcdserver: too many learner members in cluster"),
        "{second:?}"
    );
}
