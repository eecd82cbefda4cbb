//! `provision` as an operator runs it: the built binary renders the shipped example,
//! openssl reads the certificates it made, re-rendering changes nothing (or only what
//! an inventory edit asks for), and the bundles, installed at their real paths on
//! three hosts of our own (network + mount namespaces, 10.0.1.10–12), start a cluster
//! that etcdctl reaches with nothing but `admin/etcdctl.env`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use qetcd_tests::member::Binary;
use qetcd_tests::netns::{self, HostProcess, Hosts};
use qetcd_tests::provision::{
    self, MountPoints, etcdctl, etcdctl_after, provision, render, start_members,
};
use qetcd_tests::wait_until;

const ADDRESSES: [&str; 3] = ["10.0.1.10", "10.0.1.11", "10.0.1.12"];

fn example() -> PathBuf {
    provision::example("inventory.toml")
}

fn openssl_text(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-text", "-noout", "-in"])
        .arg(cert)
        .output()
        .expect("openssl (tests/run.sh installs it)");
    assert!(out.status.success(), "openssl x509 -in {}", cert.display());
    String::from_utf8(out.stdout).unwrap()
}

/// The value lines under an X509v3 extension heading in `openssl x509 -text`.
fn extension(text: &str, heading: &str) -> String {
    let mut lines = text.lines().skip_while(|l| !l.trim().starts_with(heading));
    lines
        .next()
        .unwrap_or_else(|| panic!("no {heading} in\n{text}"));
    lines.next().unwrap_or_default().trim().to_string()
}

fn subject_cn(text: &str, field: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{field}: ")))
        .unwrap_or_else(|| panic!("no {field} in\n{text}"))
        .to_string()
}

fn openssl_verify(ca: &Path, cert: &Path) {
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not verify against {}: {}",
        cert.display(),
        ca.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every file under `dir` with its contents and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, i64, i64)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
                files.insert(
                    rel,
                    (std::fs::read(e.path()).unwrap(), m.mtime(), m.mtime_nsec()),
                );
            }
        }
    }
    files
}

#[test]
fn the_example_renders_certificates_with_the_right_names_and_usages() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    render(&example(), &out);

    let ca = out.join("ca");
    assert_eq!(mode(&ca), 0o700);
    assert_eq!(mode(&ca.join("peer-ca.key")), 0o600);
    assert_eq!(mode(&ca.join("client-ca.key")), 0o600);
    for (i, addr) in ADDRESSES.iter().enumerate() {
        let host = out.join(format!("infra{i}"));
        let pki = host.join("etc/qetcd/pki");
        assert_eq!(mode(&pki), 0o750);
        for key in ["peer.key", "server.key"] {
            assert_eq!(mode(&pki.join(key)), 0o640, "{key}");
        }
        assert!(host.join("etc/qetcd/qetcd.env").is_file());
        assert!(
            host.join("etc/systemd/system/qetcd.service.d/10-provision.conf")
                .is_file()
        );

        let peer = openssl_text(&pki.join("peer.crt"));
        assert_eq!(subject_cn(&peer, "Subject"), format!("CN = infra{i}"));
        assert_eq!(subject_cn(&peer, "Issuer"), "CN = infra peer CA");
        assert_eq!(
            extension(&peer, "X509v3 Subject Alternative Name"),
            format!("IP Address:{addr}, DNS:infra{i}.example.com")
        );
        assert_eq!(
            extension(&peer, "X509v3 Extended Key Usage"),
            "TLS Web Server Authentication, TLS Web Client Authentication"
        );
        assert_eq!(extension(&peer, "X509v3 Basic Constraints"), "CA:FALSE");
        openssl_verify(&pki.join("peer-ca.crt"), &pki.join("peer.crt"));

        // The example keeps the seed's 127.0.0.1 client listener, so the server
        // certificate covers it too.
        let server = openssl_text(&pki.join("server.crt"));
        assert_eq!(subject_cn(&server, "Subject"), format!("CN = infra{i}"));
        assert_eq!(subject_cn(&server, "Issuer"), "CN = infra client CA");
        assert_eq!(
            extension(&server, "X509v3 Subject Alternative Name"),
            format!(
                "IP Address:{addr}, DNS:infra{i}.example.com, IP Address:127.0.0.1, DNS:localhost"
            )
        );
        assert_eq!(
            extension(&server, "X509v3 Extended Key Usage"),
            "TLS Web Server Authentication, TLS Web Client Authentication"
        );
        openssl_verify(&pki.join("client-ca.crt"), &pki.join("server.crt"));
        // Separate CAs: a server (or client) certificate is no peer credential.
        let crossed = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(pki.join("peer-ca.crt"))
            .arg(pki.join("server.crt"))
            .output()
            .unwrap();
        assert!(!crossed.status.success());
    }

    let admin = out.join("admin");
    assert_eq!(mode(&admin), 0o700);
    assert_eq!(mode(&admin.join("admin.key")), 0o600);
    let cert = openssl_text(&admin.join("admin.crt"));
    assert_eq!(subject_cn(&cert, "Subject"), "CN = root");
    assert_eq!(
        extension(&cert, "X509v3 Extended Key Usage"),
        "TLS Web Client Authentication"
    );
    openssl_verify(&admin.join("client-ca.crt"), &admin.join("admin.crt"));

    let check = provision(&[
        "check",
        example().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(check.code, Some(0), "{}", check.stdout);
    assert!(check.stdout.contains("ok: "), "{}", check.stdout);
}

#[test]
fn a_second_render_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let first = render(&example(), &out);
    assert!(
        first.stdout.contains("created infra0/etc/qetcd/qetcd.env"),
        "{}",
        first.stdout
    );
    let before = snapshot(&out);

    let again = render(&example(), &out);
    assert!(again.stdout.contains("nothing changed"), "{}", again.stdout);
    assert!(!again.stdout.contains("issued"), "{}", again.stdout);
    assert_eq!(before, snapshot(&out), "a file was rewritten");
}

#[test]
fn a_new_san_reissues_only_that_members_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    render(&example(), &out);
    let before = snapshot(&out);

    let text = std::fs::read_to_string(example()).unwrap();
    let edited = text.replace(
        "hostname = \"infra1.example.com\"\n",
        "hostname = \"infra1.example.com\"\nextra_sans = [\"etcd.example.com\"]\n",
    );
    assert_ne!(edited, text);
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(&inventory, edited).unwrap();

    let dry = provision(&[
        "render",
        inventory.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    assert!(
        dry.stdout
            .contains("would update infra1/etc/qetcd/pki/peer.crt"),
        "{}",
        dry.stdout
    );
    assert_eq!(before, snapshot(&out), "--dry-run wrote something");

    let r = render(&inventory, &out);
    let changed: Vec<&str> = r
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("updated "))
        .collect();
    assert_eq!(
        changed,
        [
            "infra1/etc/qetcd/pki/peer.crt",
            "infra1/etc/qetcd/pki/server.crt"
        ],
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("re-issued: SANs changed (+etcd.example.com)"),
        "{}",
        r.stdout
    );
    let after = snapshot(&out);
    for (path, was) in &before {
        let same = after.get(path) == Some(was);
        let reissued = path.starts_with("infra1/etc/qetcd/pki")
            && path.extension().is_some_and(|e| e == "crt")
            && path
                .file_name()
                .is_some_and(|n| n == "peer.crt" || n == "server.crt");
        assert_eq!(same, !reissued, "{}", path.display());
    }
    let pki = out.join("infra1/etc/qetcd/pki");
    for cert in ["peer.crt", "server.crt"] {
        let text = openssl_text(&pki.join(cert));
        assert!(
            extension(&text, "X509v3 Subject Alternative Name").contains("DNS:etcd.example.com"),
            "{text}"
        );
    }
    // Kept keys: the re-issued certificates still belong to them.
    let check = provision(&[
        "check",
        inventory.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(check.code, Some(0), "{}", check.stdout);
}

#[test]
fn an_invalid_inventory_is_refused_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example()).unwrap().replace(
        "address = \"10.0.1.11\"",
        "address = \"infra1.example.com\"",
    );
    let inventory = dir.path().join("bad.toml");
    std::fs::write(&inventory, &text).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("address = \"infra1.example.com\""))
        .unwrap()
        + 1;
    let out = dir.path().join("out");
    let r = provision(&[
        "render",
        inventory.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr.trim(),
        format!(
            "provision: {}:{line}: member[1].address: \"infra1.example.com\" is a hostname, but the member listens on its address, so it must be an IP address (put the name in hostname)",
            inventory.display()
        )
    );
    assert!(!out.exists(), "nothing is written for an invalid inventory");
    let check = provision(&["check", inventory.to_str().unwrap()]);
    assert_eq!(check.code, Some(1));
}

#[test]
fn help_reads_like_a_finished_tool() {
    let top = provision(&["--help"]);
    assert_eq!(top.code, Some(0));
    for s in [
        "Usage: provision <COMMAND>",
        "render     Render every host's bundle into an output directory",
        "check      Check an inventory and, with --out, the bundles rendered from it",
        "discovery  Discovery tokens for bootstrap = \"discovery\"",
        "examples/inventory.toml",
    ] {
        assert!(top.stdout.contains(s), "{s:?} missing from\n{}", top.stdout);
    }
    let render = provision(&["render", "--help"]);
    assert_eq!(render.code, Some(0));
    for s in [
        "Usage: provision render [OPTIONS] --out <DIR> <INVENTORY>",
        "etc/qetcd/qetcd.env",
        "--dry-run",
        "admin/",
    ] {
        assert!(
            render.stdout.contains(s),
            "{s:?} missing from\n{}",
            render.stdout
        );
    }
}

// ---- the bundles on three hosts of our own ----

fn cluster_from_bundles(inventory: &Path, scheme: &str) {
    if !netns::required() {
        return;
    }
    assert!(Binary::Qetcd.available(), "build qetcd first");
    let _mount_points = MountPoints::ensure();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    render(inventory, &out);
    let env = std::fs::read_to_string(out.join("infra0/etc/qetcd/qetcd.env")).unwrap();
    assert!(
        env.contains(&format!(
            "ETCD_ADVERTISE_CLIENT_URLS={scheme}://10.0.1.10:2379"
        )),
        "{env}"
    );

    let hosts = Hosts::create(&ADDRESSES);
    let members: Vec<HostProcess> = start_members(&hosts, 3, &out, work.path());

    wait_until(
        "the rendered cluster to be healthy",
        Duration::from_secs(30),
        || (etcdctl(&hosts, 0, &out, "endpoint health").code == Some(0)).then_some(()),
    )
    .unwrap_or_else(|e| {
        let last = etcdctl(&hosts, 0, &out, "endpoint health");
        let logs: Vec<String> = members.iter().map(|m| m.logs()).collect();
        panic!(
            "{e}\netcdctl: {}{}\n{}",
            last.stdout,
            last.stderr,
            logs.join("\n---\n")
        )
    });

    let list = etcdctl(&hosts, 1, &out, "member list");
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    let mut rows: Vec<String> = list
        .stdout
        .lines()
        .map(|l| l.split(", ").skip(1).collect::<Vec<_>>().join(", "))
        .collect();
    rows.sort();
    let expect: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "started, infra{i}, {scheme}://10.0.1.1{i}:2380, {scheme}://10.0.1.1{i}:2379, false"
            )
        })
        .collect();
    assert_eq!(rows, expect);

    let put = etcdctl(&hosts, 2, &out, "put provisioned yes");
    assert_eq!(put.code, Some(0), "{}", put.stderr);
    for i in 0..3 {
        let got = etcdctl(&hosts, i, &out, "get provisioned --print-value-only");
        assert_eq!(got.stdout.trim(), "yes", "from infra{i}: {}", got.stderr);
    }
    if env.contains("ETCD_CLIENT_CERT_AUTH=true") {
        // Client-certificate authentication is on: the CA alone does not get in.
        let anonymous = etcdctl_after(
            &hosts,
            0,
            &out,
            "unset ETCDCTL_CERT ETCDCTL_KEY",
            "--dial-timeout=3s --command-timeout=5s get provisioned",
        );
        assert_ne!(anonymous.code, Some(0), "{}", anonymous.stdout);
        // The handshake is refused, which etcdctl reports as its deadline passing.
        assert!(
            anonymous.stderr.contains("context deadline exceeded"),
            "{}",
            anonymous.stderr
        );
    }
}

#[test]
fn a_plain_http_cluster_starts_from_rendered_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example())
        .unwrap()
        .replace("tls = \"self-signed\"", "tls = \"none\"");
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(&inventory, text).unwrap();
    cluster_from_bundles(&inventory, "http");
}

#[test]
fn an_auto_tls_cluster_starts_from_rendered_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example())
        .unwrap()
        .replace("tls = \"self-signed\"", "tls = \"auto\"");
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(&inventory, text).unwrap();
    cluster_from_bundles(&inventory, "https");
}

#[test]
fn the_example_starts_a_tls_cluster_from_its_bundles() {
    cluster_from_bundles(&example(), "https");
}
