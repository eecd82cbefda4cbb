//! TLS on the client and peer sides (issue 4): the seed's two secure set-ups, and every
//! refusal an operator relies on.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use qetcd_tests::pki::{Ca, Leaf, LeafSpec};
use qetcd_tests::{Binary, Cluster, Etcdctl, Member, MemberSpec, wait_until};

/// Three members with https client and peer URLs; `configure` adds the TLS flags.
fn secure_specs(prefix: &str, configure: impl Fn(usize, &mut MemberSpec)) -> Vec<MemberSpec> {
    let mut specs = Cluster::specs_with(prefix, 3, &format!("{prefix}-token"), |s| {
        s.client_scheme = "https".into();
        s.peer_scheme = "https".into();
    });
    for (i, s) in specs.iter_mut().enumerate() {
        configure(i, s);
    }
    specs
}

/// A read that gives up quickly: every refusal test expects it to fail.
const QUICK_GET: &[&str] = &[
    "get",
    "tls-key-0",
    "--dial-timeout=3s",
    "--command-timeout=4s",
];

/// `etcdctl get` against `url` presenting `leaf` as client certificate.
fn get_as(url: &str, ca: &str, leaf: &Leaf) -> qetcd_tests::Output {
    Etcdctl::new(url)
        .with_args(&args(&[
            &"--cacert",
            &ca,
            &"--cert",
            &leaf.cert,
            &"--key",
            &leaf.key,
        ]))
        .run(&[
            "get",
            "tls-key-0",
            "--dial-timeout=3s",
            "--command-timeout=4s",
        ])
}

fn args(list: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<String> {
    list.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect()
}

/// The seed's "self-signed certificates" set-up: a client CA (server and client
/// certificates) and a peer CA, every peer certificate covering its member's address.
struct Pki {
    _dir: tempfile::TempDir,
    client_ca: Ca,
    peer_ca: Ca,
    admin: Leaf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let client_ca = Ca::new(&dir.path().join("client"), "client-ca");
        let peer_ca = Ca::new(&dir.path().join("peer"), "peer-ca");
        let admin = client_ca.issue("admin", &LeafSpec::client("root"));
        Pki {
            _dir: dir,
            client_ca,
            peer_ca,
            admin,
        }
    }

    /// Flags of a member whose peer certificate is `peer`.
    fn configure(&self, s: &mut MemberSpec, peer: &Leaf) {
        let server = self.client_ca.issue(
            &format!("{}-server", s.name),
            &LeafSpec::member(&s.name, &[&s.ip, "localhost"]),
        );
        s.extra_args.extend(args(&[
            &"--cert-file",
            &server.cert,
            &"--key-file",
            &server.key,
            &"--client-cert-auth",
            &"--trusted-ca-file",
            &self.client_ca.cert,
            &"--peer-cert-file",
            &peer.cert,
            &"--peer-key-file",
            &peer.key,
            &"--peer-client-cert-auth",
            &"--peer-trusted-ca-file",
            &self.peer_ca.cert,
        ]));
        s.etcdctl_args = self.etcdctl_args();
    }

    fn peer_cert(&self, s: &MemberSpec) -> Leaf {
        self.peer_ca.issue(
            &format!("{}-peer", s.name),
            &LeafSpec::member(&s.name, &[&s.ip]),
        )
    }

    fn etcdctl_args(&self) -> Vec<String> {
        args(&[
            &"--cacert",
            &self.client_ca.cert,
            &"--cert",
            &self.admin.cert,
            &"--key",
            &self.admin.key,
        ])
    }
}

fn start_all(specs: Vec<MemberSpec>) -> Vec<Member> {
    specs
        .into_iter()
        .map(|s| Member::spawn(Binary::Qetcd, s))
        .collect()
}

fn wait_for_log(m: &Member, what: &str, needle: &str) {
    if let Err(e) = wait_until(what, Duration::from_secs(30), || {
        m.logs().contains(needle).then_some(())
    }) {
        panic!(
            "{e}: no {needle:?} in the log of {}:\n{}",
            m.spec.name,
            m.logs()
        );
    }
}

/// The subject of the certificate a TLS listener presents right now.
fn served_subject(addr: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn seed_self_signed_setup_serves_and_refuses_what_it_must() {
    let pki = Pki::new();
    let specs = secure_specs("st", |_, s| {
        let peer = pki.peer_cert(s);
        pki.configure(s, &peer);
    });
    let members = start_all(specs);
    for m in &members {
        m.wait_healthy();
    }

    // Writes through every member, linearizable reads of each from every other.
    for (i, writer) in members.iter().enumerate() {
        let key = format!("tls-key-{i}");
        writer.etcdctl().run(&["put", &key, &format!("v{i}")]).ok();
        for reader in &members {
            let got = reader.etcdctl().run(&["get", &key, "--print-value-only"]);
            assert_eq!(
                got.ok().trim(),
                format!("v{i}"),
                "read on {}",
                reader.spec.name
            );
        }
    }
    let health = members[0]
        .etcdctl()
        .run(&["endpoint", "health", "--cluster"]);
    // etcdctl 3.4 prints health to stderr.
    assert!(health.success, "{health:?}");
    assert_eq!(health.stderr.matches("is healthy").count(), 3, "{health:?}");

    let m = &members[0];
    let url = m.client_url();
    let ca = pki.client_ca.cert.display().to_string();

    // No client certificate while client auth is on.
    let anonymous = Etcdctl::new(&url).with_args(&args(&[&"--cacert", &ca]));
    let out = anonymous.run(QUICK_GET);
    assert!(
        !out.success,
        "a client without certificate was served: {out:?}"
    );
    wait_for_log(m, "the refusal to be logged", "rejected connection from");

    // A client certificate from another CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = Ca::new(other_dir.path(), "other-ca");
    let stranger = other_ca.issue("stranger", &LeafSpec::client("root"));
    let out = get_as(&url, &ca, &stranger);
    assert!(
        !out.success,
        "a client certificate from another CA was accepted: {out:?}"
    );

    // An expired client certificate from the right CA.
    let mut expired = LeafSpec::client("root");
    expired.valid_from_days = -30;
    expired.valid_until_days = -1;
    let expired = pki.client_ca.issue("expired", &expired);
    let out = get_as(&url, &ca, &expired);
    assert!(
        !out.success,
        "an expired client certificate was accepted: {out:?}"
    );
    wait_for_log(
        m,
        "the expired certificate to be logged",
        "certificate expired",
    );

    // Plaintext to the https listener.
    let plain = Etcdctl::new(&url.replace("https://", "http://"));
    let out = plain.run(QUICK_GET);
    assert!(
        !out.success,
        "plaintext was served on an https listener: {out:?}"
    );

    // Every refusal left the member serving.
    m.etcdctl().run(&["put", "after-refusals", "yes"]).ok();

    // A renewed leaf certificate on disk is served to the next new connection.
    let addr = format!("{}:2379", m.spec.ip);
    assert!(
        served_subject(&addr).contains("CN = st0"),
        "{}",
        served_subject(&addr)
    );
    let renewed = pki.client_ca.issue(
        "renewed",
        &LeafSpec::member("st0-renewed", &[&m.spec.ip, "localhost"]),
    );
    let server_cert = pki.client_ca.cert.parent().unwrap().join("st0-server.crt");
    let server_key = pki.client_ca.cert.parent().unwrap().join("st0-server.key");
    // Key first, then certificate, each by rename, as a certificate manager would.
    replace_file(&renewed.key, &server_key);
    replace_file(&renewed.cert, &server_cert);
    wait_until(
        "the renewed certificate to be served",
        Duration::from_secs(10),
        || {
            served_subject(&addr)
                .contains("CN = st0-renewed")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: still {}", served_subject(&addr)));
    let got = m
        .etcdctl()
        .run(&["get", "after-refusals", "--print-value-only"]);
    assert_eq!(got.ok().trim(), "yes");
}

fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// Members 0 and 1 are fine; member 2 is set up wrongly by `spoil`. The two good ones
/// form the cluster and serve, refuse member 2 with `expected` in their logs, and
/// nobody crashes.
fn bad_peer_is_refused(
    prefix: &str,
    spoil: impl Fn(&Pki, &mut MemberSpec) -> Leaf,
    extra_flags: &[String],
    expected: &str,
) {
    let pki = Pki::new();
    let specs = secure_specs(prefix, |i, s| {
        let peer = if i == 2 {
            spoil(&pki, s)
        } else {
            pki.peer_cert(s)
        };
        pki.configure(s, &peer);
        s.extra_args.extend(extra_flags.iter().cloned());
    });
    let mut members = start_all(specs);
    members[0].wait_healthy();
    members[1].wait_healthy();
    members[0].etcdctl().run(&["put", "k", "v"]).ok();
    wait_until(
        "a good member to log the refusal",
        Duration::from_secs(30),
        || {
            members[..2]
                .iter()
                .any(|m| m.logs().contains(expected))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {expected:?} not logged\n--- {} ---\n{}\n--- {} ---\n{}",
            members[0].spec.name,
            members[0].logs(),
            members[1].spec.name,
            members[1].logs()
        )
    });
    for m in &mut members {
        assert!(m.is_running(), "{} exited:\n{}", m.spec.name, m.logs());
    }
    // The refused member never joined: it has no leader to serve reads with.
    let out = members[2]
        .etcdctl()
        .run(&["get", "k", "--consistency=l", "--command-timeout=3s"]);
    assert!(
        !out.success,
        "the refused member served a linearizable read: {out:?}"
    );
    let got = members[1]
        .etcdctl()
        .run(&["get", "k", "--print-value-only"]);
    assert_eq!(got.ok().trim(), "v");
}

#[test]
fn peer_with_certificate_from_another_ca_is_refused() {
    bad_peer_is_refused(
        "ca",
        |_, s| {
            let dir = tempfile::tempdir().unwrap().keep();
            let other = Ca::new(&dir, "other-peer-ca");
            other.issue("bad-peer", &LeafSpec::member(&s.name, &[&s.ip]))
        },
        &[],
        "rejected connection from",
    );
}

#[test]
fn peer_whose_cn_is_not_allowed_is_refused() {
    bad_peer_is_refused(
        "cn",
        |pki, s| pki.peer_cert(s),
        // Every member allows only the first two members' names.
        &["--peer-cert-allowed-cn".into(), "cn0,cn1".into()],
        "client certificate authentication failed",
    );
}

#[test]
fn peer_whose_san_does_not_cover_its_address_is_refused() {
    bad_peer_is_refused(
        "san",
        |pki, s| {
            pki.peer_ca.issue(
                &format!("{}-peer", s.name),
                &LeafSpec::member(&s.name, &["127.254.254.254"]),
            )
        },
        &[],
        "x509: certificate is valid for 127.254.254.254, not",
    );
}

#[test]
fn seed_auto_tls_setup_encrypts_both_sides() {
    let specs = secure_specs("at", |_, s| {
        s.extra_args
            .extend(args(&[&"--auto-tls", &"--peer-auto-tls"]));
        s.etcdctl_args = args(&[&"--insecure-transport=false", &"--insecure-skip-tls-verify"]);
    });
    let members = start_all(specs);
    for m in &members {
        m.wait_healthy();
    }
    for (i, writer) in members.iter().enumerate() {
        let key = format!("auto-{i}");
        writer.etcdctl().run(&["put", &key, "x"]).ok();
        for reader in &members {
            let got = reader.etcdctl().run(&["get", &key, "--print-value-only"]);
            assert_eq!(got.ok().trim(), "x");
        }
    }
    use std::os::unix::fs::PermissionsExt;
    for side in ["client", "peer"] {
        let key = members[0].data_dir.join(format!("fixtures/{side}/key.pem"));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }
    // Plaintext to the auto-TLS listener is not served either.
    let plain = Etcdctl::new(&members[0].client_url().replace("https://", "http://"));
    assert!(
        !plain
            .run(&["get", "auto-0", "--dial-timeout=3s", "--command-timeout=4s"])
            .success
    );
}

#[test]
fn a_revoked_client_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "client-ca");
    let mut spec = MemberSpec::new("crl");
    spec.client_scheme = "https".into();
    let server = ca.issue("server", &LeafSpec::member("crl", &[&spec.ip]));
    let good = ca.issue("good", &LeafSpec::client("root"));
    let revoked = ca.issue("revoked", &LeafSpec::client("root"));
    let crl = ca.revocation_list("client", &[&revoked]);
    spec.extra_args = args(&[
        &"--cert-file",
        &server.cert,
        &"--key-file",
        &server.key,
        &"--trusted-ca-file",
        &ca.cert,
        &"--client-crl-file",
        &crl,
        &"--tls-min-version",
        &"TLS1.3",
    ]);
    spec.etcdctl_args = args(&[
        &"--cacert",
        &ca.cert,
        &"--cert",
        &good.cert,
        &"--key",
        &good.key,
    ]);
    let m = Member::start(Binary::Qetcd, spec);
    let url = m.client_url();
    let ca_path = ca.cert.display().to_string();
    assert!(get_as(&url, &ca_path, &good).success);
    let out = get_as(&url, &ca_path, &revoked);
    assert!(!out.success, "a revoked certificate was accepted: {out:?}");
    wait_for_log(&m, "the revocation to be logged", "Revoked");

    // --tls-min-version TLS1.3: a TLS 1.2 handshake is refused, 1.3 is not. openssl
    // presents the good client certificate: without one the server refuses every
    // handshake (client certificates are required), so a 1.2 refusal would prove
    // nothing, and in TLS 1.3 that refusal arrives only after the client thinks the
    // handshake is done, racing s_client's own exit on stdin EOF.
    let addr = format!("{}:2379", m.spec.ip);
    let handshake = |version: &str| {
        let out = Command::new("openssl")
            .args(["s_client", "-brief", "-connect", &addr, version])
            .arg("-CAfile")
            .arg(&ca.cert)
            .arg("-cert")
            .arg(&good.cert)
            .arg("-key")
            .arg(&good.key)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (accepted, said) = handshake("-tls1_2");
    assert!(
        !accepted && said.contains("protocol version"),
        "TLS 1.2 not refused for its version despite --tls-min-version TLS1.3: {said}"
    );
    let (accepted, said) = handshake("-tls1_3");
    assert!(
        accepted && said.contains("Protocol version: TLSv1.3"),
        "TLS 1.3 handshake with a good certificate failed: {said}"
    );
}

#[test]
fn a_member_joins_a_cluster_whose_peers_verify_certificates() {
    let pki = Pki::new();
    let mut specs = Cluster::specs_with("tj", 1, "tj-token", |s| {
        s.client_scheme = "https".into();
        s.peer_scheme = "https".into();
    });
    let peer = pki.peer_cert(&specs[0]);
    pki.configure(&mut specs[0], &peer);
    let mut cluster = Cluster::start(Binary::Qetcd, specs);
    cluster.members[0]
        .etcdctl()
        .run(&["put", "before", "x"])
        .ok();

    let (out, mut spec) = cluster.add_member(0, "tj1", false);
    assert!(
        out.ok().contains(&format!("https://{}:2380", spec.ip)),
        "{out:?}"
    );
    let peer = pki.peer_cert(&spec);
    pki.configure(&mut spec, &peer);
    let joined = cluster.join(spec);
    cluster.members[joined].wait_healthy();
    let got = cluster.members[joined]
        .etcdctl()
        .run(&["get", "before", "--print-value-only"]);
    assert_eq!(got.ok().trim(), "x");
    cluster.members[joined]
        .etcdctl()
        .run(&["put", "after", "y"])
        .ok();
}
