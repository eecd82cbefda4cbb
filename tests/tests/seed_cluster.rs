//! The seed's static bootstrap, exactly: three hosts 10.0.1.10–12 (network namespaces
//! on a bridge this test creates), each started with the seed's command line (plus a
//! data dir) — once by flags, once by ETCD_* variables only. etcd's IDs for that
//! cluster are known, so the cluster must report exactly them.

use std::time::Duration;

use qetcd_tests::member::Binary;
use qetcd_tests::netns::{self, HostProcess, Hosts};
use qetcd_tests::wait_until;

const ADDRESSES: [&str; 3] = ["10.0.1.10", "10.0.1.11", "10.0.1.12"];
const CLUSTER: &str =
    "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra2=http://10.0.1.12:2380";
const CLUSTER_ID: u64 = 0xacccc8912db0cd57;
const MEMBER_IDS: [u64; 3] = [0x140fedbeeb74765d, 0xd5dc5f8d75d04e29, 0x8a0a11c6194fc77];

fn endpoints() -> String {
    ADDRESSES.map(|a| format!("http://{a}:2379")).join(",")
}

/// The seed's settings for member `i`, as (flag, value).
fn seed_settings(i: usize, data_dir: &str) -> Vec<(&'static str, String)> {
    let a = ADDRESSES[i];
    vec![
        ("name", format!("infra{i}")),
        ("initial-advertise-peer-urls", format!("http://{a}:2380")),
        ("listen-peer-urls", format!("http://{a}:2380")),
        (
            "listen-client-urls",
            format!("http://{a}:2379,http://127.0.0.1:2379"),
        ),
        ("advertise-client-urls", format!("http://{a}:2379")),
        ("initial-cluster-token", "etcd-cluster-1".into()),
        ("initial-cluster", CLUSTER.into()),
        ("initial-cluster-state", "new".into()),
        ("data-dir", data_dir.into()),
    ]
}

fn check_seed_cluster(by_env: bool) {
    if !netns::required() {
        return;
    }
    let hosts = Hosts::create(&ADDRESSES);
    let dir = tempfile::tempdir().unwrap();
    let mut members = Vec::new();
    for i in 0..3 {
        let data = dir.path().join(format!("infra{i}.etcd"));
        let mut cmd = hosts.command(i, &Binary::Qetcd.path());
        for (flag, value) in seed_settings(i, &data.display().to_string()) {
            if by_env {
                cmd.env(
                    format!("ETCD_{}", flag.to_uppercase().replace('-', "_")),
                    value,
                );
            } else {
                cmd.arg(format!("--{flag}")).arg(value);
            }
        }
        members.push(HostProcess::spawn(
            cmd,
            dir.path().join(format!("infra{i}.log")),
        ));
    }

    // The cluster forms: every member is healthy, seen from host 0 over the bridge.
    wait_until(
        "the seed cluster to be healthy",
        Duration::from_secs(30),
        || {
            hosts
                .etcdctl(0, &endpoints(), &["endpoint", "health"])
                .success
                .then_some(())
        },
    )
    .unwrap_or_else(|e| {
        let logs: Vec<String> = members.iter().map(|m| m.logs()).collect();
        panic!("{e}\n{}", logs.join("\n---\n"))
    });

    let status = hosts
        .etcdctl(0, &endpoints(), &["endpoint", "status", "-w", "json"])
        .json();
    let mut ids: Vec<u64> = Vec::new();
    for s in status.as_array().unwrap() {
        assert_eq!(
            s["Status"]["header"]["cluster_id"].as_u64(),
            Some(CLUSTER_ID),
            "{s}"
        );
        ids.push(s["Status"]["header"]["member_id"].as_u64().unwrap());
    }
    assert_eq!(ids, MEMBER_IDS);

    let list = hosts.etcdctl(1, "http://127.0.0.1:2379", &["member", "list"]);
    let mut rows: Vec<&str> = list.ok().lines().collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            "140fedbeeb74765d, started, infra0, http://10.0.1.10:2380, http://10.0.1.10:2379, false",
            "8a0a11c6194fc77, started, infra2, http://10.0.1.12:2380, http://10.0.1.12:2379, false",
            "d5dc5f8d75d04e29, started, infra1, http://10.0.1.11:2380, http://10.0.1.11:2379, false",
        ]
    );

    // A write on one host is read linearizably on the others (each through its own
    // 127.0.0.1 listener, as the seed's commands set up).
    hosts
        .etcdctl(2, "http://127.0.0.1:2379", &["put", "seed", "ok"])
        .ok();
    for i in 0..3 {
        let got = hosts.etcdctl(
            i,
            "http://127.0.0.1:2379",
            &["get", "seed", "--print-value-only"],
        );
        assert_eq!(got.ok().trim(), "ok", "on infra{i}");
    }
}

#[test]
fn the_seeds_cluster_by_flags() {
    check_seed_cluster(false);
}

#[test]
fn the_seeds_cluster_by_environment_variables_only() {
    check_seed_cluster(true);
}
