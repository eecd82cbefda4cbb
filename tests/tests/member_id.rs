//! IDs are etcd's: the seed's first member advertised at 10.0.1.10 (while listening on a
//! loopback address) gets etcd's member ID for that URL and token.

use qetcd_tests::{Binary, Member, MemberSpec};

#[test]
fn advertised_peer_url_and_token_give_etcds_member_id() {
    let mut spec = MemberSpec::new("infra0");
    spec.advertise_peer = Some("http://10.0.1.10:2380".into());
    spec.token = Some("etcd-cluster-1".into());
    let m = Member::start(Binary::Qetcd, spec);
    let status = m
        .etcdctl()
        .run(&["endpoint", "status", "-w", "json"])
        .json();
    assert_eq!(
        status[0]["Status"]["header"]["member_id"].as_u64(),
        Some(0x140fedbeeb74765d)
    );
    let table = m.etcdctl().run(&["endpoint", "status"]);
    assert!(table.ok().contains("140fedbeeb74765d"), "{}", table.stdout);
    let list = m.etcdctl().run(&["member", "list"]);
    assert!(
        list.ok()
            .starts_with("140fedbeeb74765d, started, infra0, http://10.0.1.10:2380"),
        "{}",
        list.stdout
    );
}

#[test]
fn restart_ignores_changed_initial_flags_and_keeps_ids() {
    let mut spec = MemberSpec::new("keeper");
    spec.token = Some("first-token".into());
    let mut m = Member::start(Binary::Qetcd, spec);
    let id = m
        .etcdctl()
        .run(&["endpoint", "status", "-w", "json"])
        .json()[0]["Status"]["header"]["member_id"]
        .as_u64();
    m.etcdctl().run(&["put", "k", "v"]).ok();
    m.kill9();
    m.spec.token = Some("another-token".into());
    m.restart();
    let status = m
        .etcdctl()
        .run(&["endpoint", "status", "-w", "json"])
        .json();
    assert_eq!(status[0]["Status"]["header"]["member_id"].as_u64(), id);
    assert_eq!(
        m.etcdctl()
            .run(&["get", "k", "--print-value-only"])
            .ok()
            .trim(),
        "v"
    );
    assert!(
        m.logs().contains("--initial-cluster* flags are ignored"),
        "{}",
        m.logs()
    );
}
