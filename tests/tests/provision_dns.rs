//! `provision` for a `bootstrap = "dns"` inventory, end to end: the built binary renders
//! the shipped DNS example (with a `srv_name`), the dnsmasq fragment it wrote is what
//! dnsmasq serves on a host of our own, and the three bundles, installed at their real
//! paths on three more hosts (network + mount namespaces on a bridge this test creates,
//! 10.0.1.x), form a TLS cluster from those records alone. `provision check --dns`, run
//! on a member host through its resolver, passes, and names the record once it is
//! removed from what dnsmasq serves.

use std::time::Duration;

use qetcd_tests::member::Binary;
use qetcd_tests::netns::{self, Dnsmasq, HostProcess, Hosts};
use qetcd_tests::provision::{MountPoints, etcdctl, example, provision_on, render, start_members};
use qetcd_tests::wait_until;

const DOMAIN: &str = "example.com";
/// Hosts 0..3 are members infra0..infra2 (the example's addresses); host 3 serves DNS.
const ADDRESSES: [&str; 4] = ["10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.2"];
const DNS_HOST: usize = 3;

#[test]
fn a_dns_inventory_boots_a_tls_cluster_from_its_rendered_records() {
    if !netns::required() {
        return;
    }
    assert!(Binary::Qetcd.available(), "build qetcd first");
    let work = tempfile::tempdir().unwrap();
    let inventory = work.path().join("inventory-dns.toml");
    let text = std::fs::read_to_string(example("inventory-dns.toml"))
        .unwrap()
        .replace("# srv_name = \"infra\"", "srv_name = \"infra\"");
    assert!(text.contains("\nsrv_name = \"infra\""), "{text}");
    std::fs::write(&inventory, text).unwrap();
    let out = work.path().join("out");
    render(&inventory, &out);
    let env = std::fs::read_to_string(out.join("infra1/etc/qetcd/qetcd.env")).unwrap();
    for line in [
        "ETCD_DISCOVERY_SRV=example.com\n",
        "ETCD_DISCOVERY_SRV_NAME=infra\n",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS=https://infra1.example.com:2380\n",
    ] {
        assert!(env.contains(line), "{line:?} missing from\n{env}");
    }
    assert!(!env.contains("ETCD_INITIAL_CLUSTER="), "{env}");
    let records = std::fs::read_to_string(out.join("dns/dnsmasq.conf")).unwrap();
    let dropped = "srv-host=_etcd-server-ssl-infra._tcp.example.com,infra1.example.com,2380,0,0\n";
    assert!(records.contains(dropped), "{records}");

    let _mount_points = MountPoints::ensure();
    let hosts = Hosts::create(&ADDRESSES);
    hosts.use_nameserver(ADDRESSES[DNS_HOST]);
    let mut dns = Dnsmasq::start(&hosts, DNS_HOST, DOMAIN, &records, work.path());
    let members: Vec<HostProcess> = start_members(&hosts, 3, &out, work.path());

    // Every member, found through the member list, answers.
    wait_until(
        "the cluster discovered through DNS to be healthy",
        Duration::from_secs(60),
        || (etcdctl(&hosts, 0, &out, "endpoint health --cluster").code == Some(0)).then_some(()),
    )
    .unwrap_or_else(|e| {
        let last = etcdctl(&hosts, 0, &out, "endpoint health --cluster");
        panic!(
            "{e}\netcdctl: {}{}\n{}\ndnsmasq:\n{}",
            last.stdout,
            last.stderr,
            HostProcess::all_logs(&members),
            dns.logs()
        )
    });
    // Peer URLs are the SRV targets; every member has published its real name.
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
            format!(
                "started, infra{i}, https://infra{i}.example.com:2380, https://10.0.1.1{i}:2379, false"
            )
        })
        .collect();
    assert_eq!(rows, expect);

    // The live records are the rendered ones.
    let inv = inventory.to_str().unwrap();
    let check = provision_on(&hosts, 2, &["check", inv, "--dns"]);
    assert_eq!(
        check.code,
        Some(0),
        "{}{}\ndnsmasq:\n{}",
        check.stdout,
        check.stderr,
        dns.logs()
    );
    assert!(check.stdout.contains("ok: "), "{}", check.stdout);

    // One SRV record gone: named, with the target it lacks.
    dns.serve(&hosts, &records.replace(dropped, ""));
    let check = provision_on(&hosts, 2, &["check", inv, "--dns"]);
    assert_eq!(check.code, Some(1), "{}{}", check.stdout, check.stderr);
    let errors: Vec<&str> = check
        .stdout
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(
        errors,
        [
            "error: DNS: SRV _etcd-server-ssl-infra._tcp.example.com: differs from the inventory: missing infra1.example.com:2380 (the inventory gives infra0.example.com:2380, infra1.example.com:2380, infra2.example.com:2380)"
        ],
        "{}",
        check.stdout
    );
}
