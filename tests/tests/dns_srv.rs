//! DNS SRV discovery (`--discovery-srv`), end to end: members on hosts of their own
//! (network namespaces on a bridge this test creates), each resolving names through
//! its own `/etc/netns/<ns>/resolv.conf`, which points at dnsmasq on another host.
//! The records are dnsmasq's `srv-host=`/`host-record=` lines for `example.com`.
//!
//! Member IDs are compared with the ones etcd 3.5.1 derives from the same records
//! (3.4, Debian's, never bootstraps from plain `_etcd-server._tcp` records).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use qetcd_tests::Output;
use qetcd_tests::member::Binary;
use qetcd_tests::netns::{self, Dnsmasq, HostProcess, Hosts};
use qetcd_tests::pki::{Ca, LeafSpec};
use qetcd_tests::wait_until;

const DOMAIN: &str = "example.com";
const TOKEN: &str = "etcd-cluster-1";
/// Host 0 runs dnsmasq; hosts 1.. are members infra0, infra1, ...
const ADDRESSES: [&str; 5] = [
    "10.0.1.2",
    "10.0.1.10",
    "10.0.1.11",
    "10.0.1.12",
    "10.0.1.13",
];

fn member_ip(i: usize) -> &'static str {
    ADDRESSES[i + 1]
}

fn host_name(i: usize) -> String {
    format!("infra{i}.{DOMAIN}")
}

/// A bridge with dnsmasq and up to four member hosts, everything removed on drop.
struct Net {
    hosts: Hosts,
    dns: Dnsmasq,
    dir: tempfile::TempDir,
}

impl Net {
    fn new(records: &str) -> Net {
        let hosts = Hosts::create(&ADDRESSES);
        hosts.use_nameserver(ADDRESSES[0]);
        let dir = tempfile::tempdir().unwrap();
        let dns = Dnsmasq::start(&hosts, 0, DOMAIN, records, dir.path());
        Net { hosts, dns, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Member `i` of `binary`, started with the seed's flags for host `i` and
    /// `--discovery-srv` instead of `--initial-cluster`, plus `extra`.
    fn start(
        &self,
        binary: &Path,
        i: usize,
        peer: &str,
        client: &str,
        extra: &[&str],
    ) -> HostProcess {
        let tag = binary.file_name().unwrap().to_string_lossy().into_owned();
        self.start_with_env(&tag, binary, i, peer, client, extra, &[])
    }

    /// Like [`Net::start`], with environment variables; data dir and log are named
    /// after `tag`.
    #[allow(clippy::too_many_arguments)]
    fn start_with_env(
        &self,
        tag: &str,
        binary: &Path,
        i: usize,
        peer: &str,
        client: &str,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> HostProcess {
        let ip = member_ip(i);
        let data = self.path(&format!("{tag}-infra{i}.data"));
        let mut cmd = self.hosts.command(i + 1, binary);
        cmd.args(["--name", &format!("infra{i}")])
            .args(["--discovery-srv", DOMAIN])
            .args([
                "--initial-advertise-peer-urls",
                &format!("{peer}://{ip}:2380"),
            ])
            .args(["--listen-peer-urls", &format!("{peer}://{ip}:2380")])
            .args([
                "--listen-client-urls",
                &format!("{client}://{ip}:2379,{client}://127.0.0.1:2379"),
            ])
            .args(["--advertise-client-urls", &format!("{client}://{ip}:2379")])
            .args(["--initial-cluster-token", TOKEN])
            .args(["--initial-cluster-state", "new"])
            .arg("--data-dir")
            .arg(&data)
            .args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        HostProcess::spawn(cmd, self.path(&format!("{tag}-infra{i}.log")))
    }

    /// Debian's etcdctl on member host `i`, finding the cluster through `args` (e.g.
    /// `--discovery-srv`), never a default endpoint.
    fn etcdctl(&self, i: usize, args: &[&str]) -> Output {
        let out = self
            .hosts
            .command(i + 1, Path::new("/usr/bin/etcdctl"))
            .env("ETCDCTL_API", "3")
            .env_remove("ETCDCTL_ENDPOINTS")
            .args(["--command-timeout=10s", "--dial-timeout=3s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl");
        Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// dnsmasq lines: an A record for each of the four member hosts, and SRV records
/// `_<service>._tcp` for the first three members' `port`.
fn records(sets: &[(&str, u16)]) -> String {
    let mut s = String::new();
    for i in 0..4 {
        s.push_str(&format!("host-record={},{}\n", host_name(i), member_ip(i)));
    }
    for (service, port) in sets {
        for i in 0..3 {
            s.push_str(&format!(
                "srv-host=_{service}._tcp.{DOMAIN},{},{port},0,0\n",
                host_name(i)
            ));
        }
    }
    s
}

/// Waits until etcdctl, finding the members through `discovery`, says all are
/// healthy; returns (cluster ID, member IDs by name) from `endpoint status` and
/// `member list`, checking the rows against what SRV discovery must give.
fn formed_cluster(
    net: &Net,
    members: &[HostProcess],
    discovery: &[&str],
    peer: &str,
    client: &str,
) -> (u64, Vec<(String, u64)>) {
    let mut health = discovery.to_vec();
    health.extend(["endpoint", "health"]);
    wait_until(
        "the discovered cluster to be healthy",
        Duration::from_secs(60),
        || net.etcdctl(0, &health).success.then_some(()),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{:?}\n{}\ndnsmasq:\n{}",
            net.etcdctl(0, &health),
            HostProcess::all_logs(members),
            net.dns.logs()
        )
    });
    // `member list` shows the real names once every member has published them.
    let mut list = discovery.to_vec();
    list.extend(["member", "list", "-w", "json"]);
    let rows = wait_until(
        "every member to publish its name",
        Duration::from_secs(30),
        || {
            let out = net.etcdctl(1, &list);
            let json: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            let members = json["members"].as_array()?.clone();
            members
                .iter()
                .all(|m| m["name"].as_str().is_some_and(|n| !n.is_empty()))
                .then_some((json, members))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", HostProcess::all_logs(members)));
    let (json, rows) = rows;
    let cluster_id = json["header"]["cluster_id"].as_u64().unwrap();
    let mut ids = Vec::new();
    for m in &rows {
        let name = m["name"].as_str().unwrap().to_string();
        let i: usize = name.strip_prefix("infra").unwrap().parse().unwrap();
        assert_eq!(
            m["peerURLs"],
            serde_json::json!([format!("{peer}://{}:2380", host_name(i))]),
            "peer URLs come from the SRV targets: {m}"
        );
        assert_eq!(
            m["clientURLs"],
            serde_json::json!([format!("{client}://{}:2379", member_ip(i))]),
            "{m}"
        );
        ids.push((name, m["ID"].as_u64().unwrap()));
    }
    ids.sort();
    assert_eq!(ids.len(), 3, "{json}");
    // A write through one discovered endpoint is read through the others.
    let mut put = discovery.to_vec();
    put.extend(["put", "found-by", "srv"]);
    net.etcdctl(2, &put).ok();
    let mut get = discovery.to_vec();
    get.extend(["get", "found-by", "--print-value-only", "--consistency=l"]);
    assert_eq!(net.etcdctl(0, &get).ok().trim(), "srv");
    (cluster_id, ids)
}

/// Starts three members of `binary`, checks the cluster they form, stops them.
fn run_cluster(
    net: &Net,
    binary: &Path,
    peer: &str,
    client: &str,
    extra: &[&str],
    discovery: &[&str],
) -> (u64, Vec<(String, u64)>) {
    let members: Vec<HostProcess> = (0..3)
        .map(|i| net.start(binary, i, peer, client, extra))
        .collect();
    formed_cluster(net, &members, discovery, peer, client)
}

#[test]
fn plain_records_form_a_cluster_with_the_ids_etcd_derives() {
    if !netns::required() {
        return;
    }
    let net = Net::new(&records(&[("etcd-server", 2380), ("etcd-client", 2379)]));
    let discovery = ["--discovery-srv", DOMAIN];
    let qetcd = run_cluster(&net, &Binary::Qetcd.path(), "http", "http", &[], &discovery);
    let etcd = run_cluster(
        &net,
        &qetcd_tests::etcd35::etcd(),
        "http",
        "http",
        &[],
        &discovery,
    );
    assert_eq!(qetcd, etcd, "qetcd and etcd 3.5.1 derive the same IDs");
    // The IDs hash the SRV targets' names, not the addresses the seed's static
    // cluster lists (whose IDs are known: 140fedbeeb74765d, ...).
    assert!(!qetcd.1.iter().any(|(_, id)| *id == 0x140fedbeeb74765d));
}

#[test]
fn tls_records_with_a_service_name_and_a_private_ca() {
    if !netns::required() {
        return;
    }
    let net = Net::new(&records(&[
        ("etcd-server-ssl-dev", 2380),
        ("etcd-client-ssl-dev", 2379),
    ]));
    let ca = Ca::new(&net.path("pki"), "ca");
    let mut args: Vec<Vec<String>> = Vec::new();
    for i in 0..3 {
        let leaf = ca.issue(
            &format!("infra{i}"),
            &LeafSpec::member(
                &format!("infra{i}"),
                &[&host_name(i), member_ip(i), "127.0.0.1"],
            ),
        );
        args.push(
            [
                "--discovery-srv-name",
                "dev",
                "--peer-cert-file",
                leaf.cert.to_str().unwrap(),
                "--peer-key-file",
                leaf.key.to_str().unwrap(),
                "--peer-trusted-ca-file",
                ca.cert.to_str().unwrap(),
                "--peer-client-cert-auth",
                "--cert-file",
                leaf.cert.to_str().unwrap(),
                "--key-file",
                leaf.key.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    let cacert = format!("--cacert={}", ca.cert.display());
    let discovery = [
        "--discovery-srv",
        DOMAIN,
        "--discovery-srv-name",
        "dev",
        &cacert,
    ];
    let start = |binary: &Path| -> (u64, Vec<(String, u64)>) {
        let members: Vec<HostProcess> = (0..3)
            .map(|i| {
                let extra: Vec<&str> = args[i].iter().map(String::as_str).collect();
                net.start(binary, i, "https", "https", &extra)
            })
            .collect();
        formed_cluster(&net, &members, &discovery, "https", "https")
    };
    let qetcd = start(&Binary::Qetcd.path());
    let etcd = start(&qetcd_tests::etcd35::etcd());
    assert_eq!(qetcd, etcd, "qetcd and etcd 3.5.1 derive the same IDs");
}

/// §5.2: https records and no `--peer-trusted-ca-file`: peers are verified against the
/// system roots (here `SSL_CERT_FILE`, a private CA) as the bare domain.
#[test]
fn without_a_peer_ca_peer_certificates_must_name_the_domain() {
    if !netns::required() {
        return;
    }
    let net = Net::new(&records(&[
        ("etcd-server-ssl", 2380),
        ("etcd-client", 2379),
    ]));
    let ca = Ca::new(&net.path("pki"), "system-root");
    let start = |sans: &dyn Fn(usize) -> Vec<String>, tag: &str| -> Vec<HostProcess> {
        (0..3)
            .map(|i| {
                let sans = sans(i);
                let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
                let leaf = ca.issue(&format!("{tag}{i}"), &LeafSpec::member(tag, &sans));
                net.start_with_env(
                    tag,
                    &Binary::Qetcd.path(),
                    i,
                    "https",
                    "http",
                    &[
                        "--peer-cert-file",
                        leaf.cert.to_str().unwrap(),
                        "--peer-key-file",
                        leaf.key.to_str().unwrap(),
                    ],
                    &[("SSL_CERT_FILE", &ca.cert)],
                )
            })
            .collect()
    };
    // Certificates that name only the targets: refused as not the domain's.
    let wrong = start(&|i| vec![host_name(i)], "target-only");
    wait_until(
        "members to refuse peers whose certificates do not name example.com",
        Duration::from_secs(30),
        || {
            wrong
                .iter()
                .all(|m| {
                    let l = m.logs();
                    l.contains("cannot establish a trusted connection to peer")
                        && l.contains(r#"certificate not valid for name \"example.com\""#)
                })
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", HostProcess::all_logs(&wrong)));
    assert!(
        !net.etcdctl(0, &["--discovery-srv", DOMAIN, "endpoint", "health"])
            .success
    );
    drop(wrong);
    // Certificates that name the domain alone: the cluster forms.
    let right = start(&|_| vec![DOMAIN.to_string()], "domain");
    formed_cluster(&net, &right, &["--discovery-srv", DOMAIN], "https", "http");
}

#[test]
fn a_member_not_in_the_records_exits_and_leaves_no_data_dir() {
    if !netns::required() {
        return;
    }
    let net = Net::new(&records(&[("etcd-server", 2380)]));
    let mut fourth = net.start(&Binary::Qetcd.path(), 3, "http", "http", &[]);
    let status = wait_until("the fourth member to exit", Duration::from_secs(60), || {
        fourth.exited()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", fourth.logs()));
    assert_eq!(status.code(), Some(1), "{}", fourth.logs());
    let log = fourth.logs();
    assert!(
        log.contains("cannot find local etcd member \"infra3\" in SRV records"),
        "{log}"
    );
    // The error names the record and what it lists.
    assert!(
        log.contains("_etcd-server._tcp.example.com lists infra0.example.com:2380 (10.0.1.10)"),
        "{log}"
    );
    assert!(log.contains("waiting for DNS SRV records"), "{log}");
    assert!(!net.path("qetcd-infra3.data").exists());
}

#[test]
fn both_record_sets_for_the_same_hosts_are_refused() {
    if !netns::required() {
        return;
    }
    let net = Net::new(&records(&[
        ("etcd-server-ssl", 2380),
        ("etcd-server", 2380),
    ]));
    let mut member = net.start(&Binary::Qetcd.path(), 0, "http", "http", &[]);
    let status = wait_until("the member to exit", Duration::from_secs(60), || {
        member.exited()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", member.logs()));
    assert_eq!(status.code(), Some(1));
    let log = member.logs();
    assert!(
        log.contains(
            "DNS SRV records _etcd-server-ssl._tcp.example.com and _etcd-server._tcp.example.com both list infra0.example.com, infra1.example.com, infra2.example.com"
        ),
        "{log}"
    );
    assert!(log.contains("Publish one of them"), "{log}");
    assert!(!net.path("qetcd-infra0.data").exists());
}

#[test]
fn records_published_after_the_members_started_still_form_a_cluster() {
    if !netns::required() {
        return;
    }
    // Only the A records at first.
    let mut net = Net::new(&records(&[]));
    let members: Vec<HostProcess> = (0..3)
        .map(|i| net.start(&Binary::Qetcd.path(), i, "http", "http", &[]))
        .collect();
    wait_until(
        "every member to wait for the records",
        Duration::from_secs(30),
        || {
            members
                .iter()
                .all(|m| m.logs().contains("waiting for DNS SRV records"))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", HostProcess::all_logs(&members)));
    let Net { hosts, dns, .. } = &mut net;
    dns.serve(
        hosts,
        &records(&[("etcd-server", 2380), ("etcd-client", 2379)]),
    );
    formed_cluster(&net, &members, &["--discovery-srv", DOMAIN], "http", "http");
}
