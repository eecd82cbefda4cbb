//! The same etcdctl session against Debian's etcd and against qetcd prints the same
//! thing. Both members advertise the same peer URL with the same token, so even their
//! member and cluster IDs agree; only what legitimately differs (addresses, server
//! version, database size, Raft term and index, timings) is normalised away.

use qetcd_tests::{Binary, Etcdctl, Member, MemberSpec, Output};
use serde_json::Value;

const SESSION: &[&[&str]] = &[
    &["put", "a", "1"],
    &["put", "b/1", "x"],
    &["put", "b/2", "y"],
    &["put", "a", "2", "--prev-kv"],
    &["get", "a"],
    &["get", "a", "-w", "json"],
    &["get", "b/", "--prefix"],
    &["get", "b/", "--prefix", "--limit", "1", "-w", "json"],
    &[
        "get",
        "b/",
        "--prefix",
        "--sort-by",
        "MODIFY",
        "--order",
        "DESCEND",
        "--keys-only",
    ],
    &["get", "a", "--rev", "2", "-w", "fields"],
    &["get", "", "--prefix", "--keys-only", "-w", "json"],
    &["del", "b/", "--prefix", "--prev-kv"],
    &["del", "nothing"],
    &["put", "c", "3", "-w", "json"],
    &["compaction", "3"],
    &["get", "a", "--rev", "2"],
    &["get", "a", "--rev", "99"],
    &["member", "list"],
    &["member", "list", "-w", "json"],
    &["endpoint", "status", "-w", "json"],
    &["endpoint", "health"],
];

const TXN: &str = "value(\"a\") = \"2\"\n\nput t yes\nget a\n\nput t no\n\n";

/// Fields whose values depend on the implementation, not on the data.
const VOLATILE: &[&str] = &[
    "raft_term",
    "raftTerm",
    "raftIndex",
    "raftAppliedIndex",
    "dbSize",
    "dbSizeInUse",
    "version",
    "took",
];

fn scrub(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if VOLATILE.contains(&k.as_str()) {
                    *val = Value::Null;
                } else {
                    scrub(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        _ => {}
    }
}

fn normalise(out: &Output, client_url: &str, ip: &str) -> String {
    // etcdctl's retry warnings (JSON log lines) carry timestamps and random client
    // ids; everything else it prints, on either stream, is what a user reads.
    let stderr: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .collect();
    let text = format!("{}{}", out.stdout, stderr.join("\n"));
    let text = text.replace(client_url, "<client-url>").replace(ip, "<ip>");
    let text: String = text
        .lines()
        .map(|l| match l.find("took =") {
            Some(i) => &l[..i],
            None => l,
        })
        .map(|l| {
            // `-w fields` prints RaftTerm on its own line.
            if l.starts_with("\"RaftTerm\"") {
                "\"RaftTerm\" : <term>"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    match serde_json::from_str::<Value>(&text) {
        Ok(mut v) => {
            scrub(&mut v);
            format!("{} {v}", out.success)
        }
        Err(_) => format!("{} {text}", out.success),
    }
}

fn session(m: &Member) -> Vec<String> {
    let ctl: Etcdctl = m.etcdctl();
    let mut outputs = Vec::new();
    for args in SESSION {
        outputs.push(format!(
            "{args:?} => {}",
            normalise(&ctl.run(args), &m.client_url(), &m.spec.ip)
        ));
        if args[0] == "del" && args[1] == "nothing" {
            let txn = ctl.run_with_stdin(&["txn", "-i"], Some(TXN));
            outputs.push(format!(
                "txn => {}",
                normalise(&txn, &m.client_url(), &m.spec.ip)
            ));
        }
    }
    outputs
}

fn spec() -> MemberSpec {
    let mut s = MemberSpec::new("infra0");
    s.advertise_peer = Some("http://10.0.1.10:2380".into());
    s.token = Some("etcd-cluster-1".into());
    s
}

#[test]
fn etcdctl_prints_the_same_for_etcd_and_qetcd() {
    if !Binary::Etcd.available() {
        eprintln!("SKIPPED: /usr/bin/etcd is not installed; nothing to compare against");
        return;
    }
    let etcd = Member::start(Binary::Etcd, spec());
    let expected = session(&etcd);
    drop(etcd);
    let qetcd = Member::start(Binary::Qetcd, spec());
    let got = session(&qetcd);
    let mut diffs = Vec::new();
    for (e, g) in expected.iter().zip(&got) {
        if e != g {
            diffs.push(format!("etcd:  {e}\nqetcd: {g}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n\n{}",
        diffs.len(),
        diffs.join("\n\n")
    );
}
