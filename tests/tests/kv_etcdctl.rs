//! The KV API as Debian's etcdctl 3.4 uses it, against a real qetcd process.

use qetcd_tests::{Binary, Member, MemberSpec};

fn member() -> Member {
    Member::start(Binary::Qetcd, MemberSpec::new("kv"))
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn put_get_ranges_and_options() {
    let m = member();
    let ctl = m.etcdctl();
    for (k, v) in [
        ("fruit/b", "banana"),
        ("fruit/a", "apple"),
        ("fruit/c", "cherry"),
        ("veg/x", "leek"),
    ] {
        assert_eq!(ctl.run(&["put", k, v]).ok().trim(), "OK");
    }
    assert_eq!(
        lines(ctl.run(&["get", "fruit/a"]).ok()),
        ["fruit/a", "apple"]
    );
    assert_eq!(
        lines(ctl.run(&["get", "fruit/", "--prefix", "--keys-only"]).ok())
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>(),
        ["fruit/a", "fruit/b", "fruit/c"]
    );
    assert_eq!(
        lines(ctl.run(&["get", "fruit/", "--prefix", "--limit", "2"]).ok()),
        ["fruit/a", "apple", "fruit/b", "banana"]
    );
    assert_eq!(
        lines(
            ctl.run(&[
                "get",
                "fruit/",
                "--prefix",
                "--sort-by",
                "VALUE",
                "--order",
                "DESCEND",
                "--print-value-only"
            ])
            .ok()
        ),
        ["cherry", "banana", "apple"]
    );
    // A range [fruit/b, veg/y).
    assert_eq!(
        lines(ctl.run(&["get", "fruit/b", "veg/y", "--keys-only"]).ok())
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>(),
        ["fruit/b", "fruit/c", "veg/x"]
    );
    let json = ctl
        .run(&["get", "fruit/", "--prefix", "--limit", "1", "-w", "json"])
        .json();
    assert_eq!(json["count"], 3);
    assert_eq!(json["more"], true);
    assert_eq!(json["header"]["revision"], 5);
    // History: fruit/b at its first revision.
    ctl.run(&["put", "fruit/b", "blueberry"]).ok();
    assert_eq!(
        lines(ctl.run(&["get", "fruit/b", "--rev", "2"]).ok()),
        ["fruit/b", "banana"]
    );
    assert_eq!(
        lines(ctl.run(&["get", "fruit/b"]).ok()),
        ["fruit/b", "blueberry"]
    );
    let kv = &ctl.run(&["get", "fruit/b", "-w", "json"]).json()["kvs"][0];
    assert_eq!(
        (
            kv["create_revision"].as_i64(),
            kv["mod_revision"].as_i64(),
            kv["version"].as_i64()
        ),
        (Some(2), Some(6), Some(2))
    );
}

#[test]
fn delete_with_prefix_and_prev_kv() {
    let m = member();
    let ctl = m.etcdctl();
    for k in ["a/1", "a/2", "b/1"] {
        ctl.run(&["put", k, &format!("v{k}")]).ok();
    }
    assert_eq!(
        lines(ctl.run(&["del", "a/1", "--prev-kv"]).ok()),
        ["1", "a/1", "va/1"]
    );
    assert_eq!(ctl.run(&["del", "a/", "--prefix"]).ok().trim(), "1");
    assert_eq!(ctl.run(&["del", "nothing"]).ok().trim(), "0");
    assert_eq!(
        lines(ctl.run(&["get", "", "--prefix", "--keys-only"]).ok())[0],
        "b/1"
    );
}

#[test]
fn interactive_txn_from_stdin() {
    let m = member();
    let ctl = m.etcdctl();
    ctl.run(&["put", "user", "alice"]).ok();
    let txn = "value(\"user\") = \"alice\"\nversion(\"user\") = \"1\"\n\nput user bob\nget user\n\nput user carol\n\n";
    let out = ctl.run_with_stdin(&["txn", "-i"], Some(txn));
    let printed = out.ok();
    assert!(printed.starts_with("compares:"), "{printed}");
    assert!(
        printed.contains("SUCCESS\n\nOK\n\nuser\nbob\n"),
        "{printed}"
    );
    assert_eq!(
        lines(ctl.run(&["get", "user", "--print-value-only"]).ok()),
        ["bob"]
    );
    // Same compares now fail: the failure branch runs.
    let out = ctl.run_with_stdin(&["txn", "-i"], Some(txn));
    assert!(out.ok().contains("FAILURE\n\nOK"), "{}", out.stdout);
    assert_eq!(
        lines(ctl.run(&["get", "user", "--print-value-only"]).ok()),
        ["carol"]
    );
    // mod revision compare, non-interactive style via stdin too.
    let rev = ctl.run(&["get", "user", "-w", "json"]).json()["kvs"][0]["mod_revision"]
        .as_i64()
        .unwrap();
    let txn = format!(
        "mod(\"user\") > \"{}\"\n\nput won yes\n\nput lost yes\n\n",
        rev - 1
    );
    assert!(
        ctl.run_with_stdin(&["txn", "-i"], Some(&txn))
            .ok()
            .contains("SUCCESS")
    );
    assert_eq!(
        lines(ctl.run(&["get", "won", "--print-value-only"]).ok()),
        ["yes"]
    );
}

#[test]
fn compaction_and_revision_errors() {
    let m = member();
    let ctl = m.etcdctl();
    for i in 0..5 {
        ctl.run(&["put", "k", &i.to_string()]).ok();
    }
    // Revisions 2..=6 hold values 0..=4.
    assert_eq!(
        ctl.run(&["compaction", "4"]).ok().trim(),
        "compacted revision 4"
    );
    let old = ctl.run(&["get", "k", "--rev", "3"]);
    assert!(!old.success);
    assert!(
        old.stderr
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{}",
        old.stderr
    );
    assert_eq!(
        lines(
            ctl.run(&["get", "k", "--rev", "4", "--print-value-only"])
                .ok()
        ),
        ["2"]
    );
    let future = ctl.run(&["get", "k", "--rev", "100"]);
    assert!(!future.success);
    assert!(
        future
            .stderr
            .contains("etcdserver: mvcc: required revision is a future revision"),
        "{}",
        future.stderr
    );
    let again = ctl.run(&["compaction", "4"]);
    assert!(
        again
            .stderr
            .contains("required revision has been compacted"),
        "{}",
        again.stderr
    );
}

#[test]
fn endpoint_status_health_and_member_list() {
    let m = member();
    let ctl = m.etcdctl();
    ctl.run(&["put", "a", "1"]).ok();
    let status = ctl.run(&["endpoint", "status", "-w", "json"]).json();
    let s = &status[0]["Status"];
    let member_id = s["header"]["member_id"].as_u64().unwrap();
    assert_eq!(
        s["leader"].as_u64(),
        Some(member_id),
        "a single member leads"
    );
    assert_eq!(s["header"]["revision"], 2);
    assert!(s["dbSize"].as_i64().unwrap() > 0);
    assert!(s["raftIndex"].as_u64().unwrap() >= 2);
    let table = ctl.run(&["endpoint", "status", "-w", "table"]);
    let row = table.ok().lines().nth(3).unwrap_or_default().to_string();
    assert!(
        row.contains(&m.client_url())
            && row.contains(&format!("{member_id:x}"))
            && row.contains("true"),
        "{row}"
    );

    let health = ctl.run(&["endpoint", "health"]);
    // etcdctl prints health to stderr.
    assert!(
        health.success
            && health
                .stderr
                .contains(&format!("{} is healthy", m.client_url())),
        "{health:?}"
    );

    let list = ctl.run(&["member", "list"]);
    assert_eq!(
        list.ok().trim(),
        format!(
            "{member_id:x}, started, kv, {}, {}, false",
            m.spec.peer_url(),
            m.client_url()
        )
    );
    let (code, body) = m.health().unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "{\"health\":\"true\",\"reason\":\"\"}")
    );
}

#[test]
fn txn_limits_and_duplicate_keys_are_refused() {
    let m = member();
    let ctl = m.etcdctl();
    let dup = ctl.run_with_stdin(&["txn", "-i"], Some("\nput a 1\nput a 2\n\n\n"));
    assert!(!dup.success);
    assert!(
        dup.stderr
            .contains("etcdserver: duplicate key given in txn request"),
        "{}",
        dup.stderr
    );
    let many: String = (0..129).map(|i| format!("put k{i} v\n")).collect();
    let too_many = ctl.run_with_stdin(&["txn", "-i"], Some(&format!("\n{many}\n\n")));
    assert!(!too_many.success);
    assert!(
        too_many
            .stderr
            .contains("etcdserver: too many operations in txn request"),
        "{}",
        too_many.stderr
    );
}
