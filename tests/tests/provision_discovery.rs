//! `provision` for a `bootstrap = "discovery"` inventory, end to end: on a host of our
//! own runs a one-member qetcd, the discovery service; `provision discovery new` makes a
//! v3 token on it; the shipped example with that token renders (the token is checked
//! with the service), and the three bundles, installed at their real paths on three
//! more hosts (network + mount namespaces on a bridge this test creates, 10.0.1.x),
//! form a TLS cluster through the token alone. Rendering again with the used token is
//! refused.

use std::time::Duration;

use qetcd_tests::member::Binary;
use qetcd_tests::netns::{self, HostProcess, Hosts};
use qetcd_tests::provision::{MountPoints, etcdctl, example, provision_on, start_members};
use qetcd_tests::wait_until;

/// Hosts 0..3 are members infra0..infra2 (the example's addresses); host 3 is the
/// discovery service.
const ADDRESSES: [&str; 4] = ["10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.2"];
const SERVICE: usize = 3;

#[test]
fn a_discovery_inventory_boots_a_tls_cluster_through_a_fresh_token() {
    if !netns::required() {
        return;
    }
    assert!(Binary::Qetcd.available(), "build qetcd first");
    let work = tempfile::tempdir().unwrap();
    let _mount_points = MountPoints::ensure();
    let hosts = Hosts::create(&ADDRESSES);

    let service_url = format!("http://{}:2379", ADDRESSES[SERVICE]);
    let mut cmd = hosts.command(SERVICE, &Binary::Qetcd.path());
    cmd.args([
        "--name",
        "disc",
        "--data-dir",
        work.path().join("disc.data").to_str().unwrap(),
        "--listen-client-urls",
        &service_url,
        "--advertise-client-urls",
        &service_url,
        "--listen-peer-urls",
        "http://10.0.1.2:2380",
        "--initial-advertise-peer-urls",
        "http://10.0.1.2:2380",
        "--initial-cluster",
        "disc=http://10.0.1.2:2380",
    ]);
    let service = HostProcess::spawn(cmd, work.path().join("disc.log"));
    wait_until("the discovery service", Duration::from_secs(30), || {
        hosts
            .etcdctl(SERVICE, &service_url, &["endpoint", "health"])
            .success
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", service.logs()));

    let new = provision_on(
        &hosts,
        SERVICE,
        &[
            "discovery",
            "new",
            "--size",
            "3",
            "--endpoints",
            &service_url,
        ],
    );
    assert_eq!(new.code, Some(0), "{}{}", new.stdout, new.stderr);
    let lines: String = new
        .stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(lines.contains("discovery_token = \""), "{lines}");
    let text = std::fs::read_to_string(example("inventory.toml"))
        .unwrap()
        .replace("bootstrap = \"static\"\n", &lines);
    let inventory = work.path().join("inventory.toml");
    std::fs::write(&inventory, text).unwrap();
    let out = work.path().join("out");
    let inv = inventory.to_str().unwrap();
    let out_arg = out.to_str().unwrap();
    let render = provision_on(&hosts, SERVICE, &["render", inv, "--out", out_arg]);
    assert_eq!(render.code, Some(0), "{}{}", render.stdout, render.stderr);
    assert!(
        !render.stderr.contains("could not check discovery token"),
        "{}",
        render.stderr
    );
    let env = std::fs::read_to_string(out.join("infra1/etc/qetcd/qetcd.env")).unwrap();
    assert!(env.contains("ETCD_DISCOVERY_TOKEN="), "{env}");
    assert!(
        env.contains(&format!("ETCD_DISCOVERY_ENDPOINTS={service_url}\n")),
        "{env}"
    );
    assert!(!env.contains("ETCD_INITIAL_CLUSTER="), "{env}");

    let members: Vec<HostProcess> = start_members(&hosts, 3, &out, work.path());
    wait_until(
        "the cluster bootstrapped through the token to be healthy",
        Duration::from_secs(60),
        || (etcdctl(&hosts, 0, &out, "endpoint health --cluster").code == Some(0)).then_some(()),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            HostProcess::all_logs(&members),
            service.logs()
        )
    });
    let rows = wait_until(
        "every member to publish its name",
        Duration::from_secs(30),
        || {
            let list = etcdctl(&hosts, 1, &out, "member list");
            let mut rows: Vec<String> = list
                .stdout
                .lines()
                .map(|l| l.split(", ").skip(1).collect::<Vec<_>>().join(", "))
                .collect();
            rows.sort();
            (rows.len() == 3 && rows.iter().all(|r| r.starts_with("started, infra")))
                .then_some(rows)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", HostProcess::all_logs(&members)));
    let expect: Vec<String> = (0..3)
        .map(|i| {
            format!("started, infra{i}, https://10.0.1.1{i}:2380, https://10.0.1.1{i}:2379, false")
        })
        .collect();
    assert_eq!(rows, expect);

    // The token is used now: rendering with it again is refused.
    let again = provision_on(
        &hosts,
        SERVICE,
        &[
            "render",
            inv,
            "--out",
            work.path().join("out2").to_str().unwrap(),
        ],
    );
    assert_eq!(again.code, Some(1), "{}{}", again.stdout, again.stderr);
    assert!(
        again
            .stderr
            .contains("was already used: 3 member(s) registered"),
        "{}",
        again.stderr
    );
}
