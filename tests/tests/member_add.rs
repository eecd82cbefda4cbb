//! `etcdctl member add`: what it prints (the `ETCD_*` lines a new member starts with),
//! and etcd's refusals with etcd's texts.

use std::time::Duration;

use qetcd_tests::{Binary, Cluster, wait_until};

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

/// Every member has `keys`, read locally (serializable) so each answers for itself.
fn wait_all_have(cluster: &Cluster, keys: &[String]) {
    for (i, m) in cluster.members.iter().enumerate() {
        qetcd_tests::wait_until(
            &format!("member {i} to have every key"),
            Duration::from_secs(30),
            || {
                let out = m.etcdctl().run(&[
                    "get",
                    "grow/",
                    "--prefix",
                    "--keys-only",
                    "--consistency=s",
                ]);
                let have: Vec<&str> = out.stdout.lines().filter(|l| !l.is_empty()).collect();
                (out.success && keys.iter().all(|k| have.contains(&k.as_str()))).then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", m.logs()));
    }
}

#[test]
fn a_cluster_grows_from_one_to_three_with_the_printed_values() {
    // A short log: the first joiner gets a snapshot, as it would in production.
    let mut specs = Cluster::specs("gr", 1, "grow-test");
    specs[0].extra_args = ["--snapshot-count=10", "--snapshot-catchup-entries=2"]
        .map(String::from)
        .to_vec();
    let mut cluster = Cluster::start(Binary::Qetcd, specs);
    let mut keys = Vec::new();
    for i in 0..20 {
        let k = format!("grow/before/{i}");
        cluster.members[0].etcdctl().run(&["put", &k, "v"]).ok();
        keys.push(k);
    }
    for name in ["gr1", "gr2"] {
        let (out, spec) = cluster.add_member(0, name, false);
        out.ok();
        let joined = cluster.join(spec);
        cluster.members[joined].wait_healthy();
        let k = format!("grow/after/{name}");
        cluster.members[joined]
            .etcdctl()
            .run(&["put", &k, "v"])
            .ok();
        keys.push(k);
    }
    wait_all_have(&cluster, &keys);
    let list = cluster.members[2].etcdctl().run(&["member", "list"]);
    let rows: Vec<&str> = list.ok().lines().collect();
    assert_eq!(rows.len(), 3, "{list:?}");
    for name in ["gr0", "gr1", "gr2"] {
        assert!(
            rows.iter()
                .any(|r| r.contains(&format!(", started, {name}, ")) && r.ends_with(", false")),
            "{list:?}"
        );
    }
    assert!(
        cluster.members[1]
            .logs()
            .contains("joining existing cluster")
    );
    assert!(
        cluster.members[1]
            .logs()
            .contains("installed snapshot from leader"),
        "{}",
        cluster.members[1].logs()
    );
    // The joined members hold the cluster's IDs, not ones they derived.
    let ids: Vec<u64> = (0..3).map(|i| cluster.member_id(i)).collect();
    let header = |i: usize| {
        cluster.members[i]
            .etcdctl()
            .run(&["endpoint", "status", "-w", "json"])
            .json()[0]["Status"]["header"]["cluster_id"]
            .as_u64()
    };
    assert_eq!(header(1), header(0));
    assert_eq!(header(2), header(0));
    assert_eq!(ids.len(), 3);
}

#[test]
fn a_join_with_another_members_values_is_refused() {
    let cluster = Cluster::start(Binary::Qetcd, Cluster::specs("jr", 2, "join-refused"));
    cluster.wait_for_leader(&[0, 1]);
    let taken = &cluster.members[1].spec;
    let ip = qetcd_tests::member::unique_ip();
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().join("d");
    let listen_client = format!("http://{ip}:2379");
    let listen_peer = format!("http://{ip}:2380");
    let initial = taken.initial_cluster.clone().unwrap();
    let args = [
        "--name",
        &taken.name,
        "--data-dir",
        data.to_str().unwrap(),
        "--listen-client-urls",
        &listen_client,
        "--advertise-client-urls",
        &listen_client,
        "--listen-peer-urls",
        &listen_peer,
        "--initial-advertise-peer-urls",
        &taken.peer_url(),
        "--initial-cluster",
        &initial,
        "--initial-cluster-state",
        "existing",
    ];
    let (code, log) =
        qetcd_tests::Member::run_to_exit(Binary::Qetcd, &args, &[], Duration::from_secs(30));
    assert_eq!(code, Some(1), "{log}");
    let id = cluster.member_id(1);
    assert!(
        log.contains(&format!("member {id:x} has already been bootstrapped")),
        "{log}"
    );
}

#[test]
fn a_failed_member_is_replaced_by_a_new_one_with_a_fresh_data_dir() {
    let mut cluster = Cluster::start(Binary::Qetcd, Cluster::specs("rp", 3, "replace-test"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let failed = (leader + 1) % 3;
    let failed_id = cluster.member_id(failed);
    let mut keys = Vec::new();
    for i in 0..10 {
        let k = format!("grow/{i}");
        cluster.members[leader]
            .etcdctl()
            .run(&["put", &k, "v"])
            .ok();
        keys.push(k);
    }
    cluster.members[failed].kill9();
    let removed = cluster.members[leader].etcdctl().run_reconfig(&[
        "member",
        "remove",
        &format!("{failed_id:x}"),
    ]);
    assert!(removed.ok().contains("removed from cluster"), "{removed:?}");

    let (out, spec) = cluster.add_member(leader, "rp-new", false);
    out.ok();
    let new = cluster.join(spec);
    cluster.members[new].wait_healthy();
    cluster.members[new]
        .etcdctl()
        .run(&["put", "grow/after", "v"])
        .ok();
    keys.push("grow/after".into());
    let alive: Vec<usize> = (0..cluster.members.len())
        .filter(|i| *i != failed)
        .collect();
    for &i in &alive {
        wait_until(
            &format!("member {i} to have every key"),
            Duration::from_secs(30),
            || {
                let out = cluster.members[i].etcdctl().run(&[
                    "get",
                    "grow/",
                    "--prefix",
                    "--keys-only",
                    "--consistency=s",
                ]);
                keys.iter()
                    .all(|k| out.stdout.lines().any(|l| l == k))
                    .then_some(())
            },
        )
        .unwrap();
    }
    let list = cluster.members[new].etcdctl().run(&["member", "list"]);
    assert_eq!(
        list.ok()
            .lines()
            .filter(|l| l.contains(", started, "))
            .count(),
        3,
        "{list:?}"
    );

    // The old process, back on its old data dir, is refused and gives up.
    cluster.members[failed].relaunch();
    let status = cluster.members[failed]
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running:\n{}", cluster.members[failed].logs()));
    assert_eq!(status.code(), Some(78));
}

#[test]
fn a_member_started_as_new_never_joins_the_running_cluster() {
    let mut cluster = Cluster::start(Binary::Qetcd, Cluster::specs("nw", 3, "new-not-join"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let (out, mut spec) = cluster.add_member(leader, "nw3", true);
    out.ok();
    // The operator's classic mistake: the printed values, but state "new".
    for (k, v) in &mut spec.env {
        if k == "ETCD_INITIAL_CLUSTER_STATE" {
            *v = "new".into();
        }
    }
    let wrong = cluster.join(spec);
    wait_until(
        "both sides to log the cluster ID mismatch",
        Duration::from_secs(30),
        || {
            let theirs = cluster.members[..3]
                .iter()
                .any(|m| m.logs().contains("request cluster ID mismatch"));
            let ours = cluster.members[wrong]
                .logs()
                .contains("request sent was ignored by remote peer due to cluster ID mismatch");
            (theirs && ours).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.members[wrong].logs()));
    let list = cluster.members[leader].etcdctl().run(&["member", "list"]);
    assert_eq!(
        list.ok()
            .lines()
            .filter(|l| l.contains(", unstarted, "))
            .count(),
        1,
        "{list:?}"
    );
}
