//! etcd's v2 discovery protocol (`--discovery <url>`), end to end with real processes:
//! qetcd members through a qetcd discovery service (`--enable-v2`) and through Debian's
//! etcd 3.4, Debian's etcd members through a qetcd discovery service, and the failures
//! etcd reports with its own texts (full cluster, missing or bad size key, duplicate
//! names, unusable URLs), plus members that start before the service is reachable.
//!
//! Tokens are made as an operator would: `curl -X PUT …/_config/size -d value=N`.
//! Member IDs are checked against sha1(peer URL + full discovery URL), computed by
//! `sha1sum`, which is what etcd derives (spec §2.4, §3.1).

use std::process::{Command, Stdio};
use std::time::Duration;

use qetcd_tests::member::{Binary, Member, MemberSpec};
use qetcd_tests::wait_until;

/// A discovery service: a one-member cluster serving the v2 keys API.
fn discovery_service(binary: Binary) -> Member {
    let mut spec = MemberSpec::new("disc");
    spec.extra_args = vec!["--enable-v2".into()];
    Member::start(binary, spec)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-m", "10"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh token directory on `service` with `_config/size` = `size`; its URL.
fn new_token(service: &Member, token: &str, size: &str) -> String {
    let url = format!("{}/v2/keys/_etcd/registry/{token}", service.client_url());
    let body = curl(&[
        "-X",
        "PUT",
        &format!("{url}/_config/size"),
        "-d",
        &format!("value={size}"),
    ]);
    assert!(body.contains(&format!("\"value\":\"{size}\"")), "{body}");
    url
}

fn discovery_spec(name: &str, durl: &str) -> MemberSpec {
    let mut spec = MemberSpec::new(name);
    spec.discovery_args = Some(vec!["--discovery".into(), durl.into()]);
    spec
}

/// etcd's member ID: first 8 bytes of sha1(peer URL + token), in hex without leading
/// zeros.
fn expected_id(peer_url: &str, token: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$1\" | sha1sum", "sh"])
        .arg(format!("{peer_url}{token}"))
        .output()
        .expect("sha1sum runs");
    let hex = String::from_utf8_lossy(&out.stdout)[..16].to_string();
    format!("{:x}", u64::from_str_radix(&hex, 16).unwrap())
}

/// `member list` of the cluster, as (id, name) pairs sorted by name.
fn member_list(m: &Member) -> Vec<(String, String)> {
    let out = m.etcdctl().run(&["member", "list"]);
    let mut list: Vec<(String, String)> = out
        .ok()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            (f[0].to_string(), f[2].to_string())
        })
        .collect();
    list.sort_by(|a, b| a.1.cmp(&b.1));
    list
}

/// Starts three members of `binary` through `durl`, checks names, IDs and replication.
fn bootstrap_three(binary: Binary, durl: &str, prefix: &str) -> Vec<Member> {
    bootstrap_three_with(binary, durl, prefix, |name| discovery_spec(name, durl))
}

/// As [`bootstrap_three`], members made by `spec`, IDs hashed with `id_token`.
fn bootstrap_three_with(
    binary: Binary,
    id_token: &str,
    prefix: &str,
    spec: impl Fn(&str) -> MemberSpec,
) -> Vec<Member> {
    let durl = id_token;
    let members: Vec<Member> = (0..3)
        .map(|i| Member::spawn(binary, spec(&format!("{prefix}{i}"))))
        .collect();
    for m in &members {
        m.wait_healthy();
    }
    let listed = wait_until(
        "all three members to be listed with their names",
        Duration::from_secs(20),
        || {
            let l = member_list(&members[0]);
            (l.len() == 3 && l.iter().all(|(_, n)| !n.is_empty())).then_some(l)
        },
    )
    .unwrap();
    for (i, m) in members.iter().enumerate() {
        assert_eq!(listed[i].1, m.spec.name);
        assert_eq!(
            listed[i].0,
            expected_id(&m.spec.peer_url(), durl),
            "member ID of {} must hash its peer URL with the full discovery URL",
            m.spec.name
        );
    }
    members[0].etcdctl().run(&["put", "greeting", "hello"]).ok();
    for m in &members[1..] {
        let got = m.etcdctl().run(&["get", "greeting", "--print-value-only"]);
        assert_eq!(got.ok().trim(), "hello");
    }
    members
}

/// Runs a member that must fail, returning its log.
fn expect_failure(spec: MemberSpec) -> String {
    let mut m = Member::spawn(Binary::Qetcd, spec);
    let status = m
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("member should exit\n{}", m.logs()));
    assert!(!status.success(), "non-zero exit expected\n{}", m.logs());
    assert!(
        !m.data_dir.exists(),
        "a failed discovery must leave no data dir behind"
    );
    m.logs()
}

#[test]
fn qetcd_members_bootstrap_through_a_qetcd_discovery_service_and_a_fourth_finds_it_full() {
    let service = discovery_service(Binary::Qetcd);
    let durl = new_token(&service, "qetcd-via-qetcd", "3");
    let members = bootstrap_three(Binary::Qetcd, &durl, "q");
    // The registrations, as etcd's discovery clients read them.
    let listing = curl(&[&durl]);
    for m in &members {
        assert!(
            listing.contains(&format!("{}={}", m.spec.name, m.spec.peer_url())),
            "{listing}"
        );
    }
    let log = expect_failure(discovery_spec("q3", &durl));
    assert!(
        log.contains("failed to join discovery cluster (discovery: cluster is full)"),
        "{log}"
    );
    assert!(log.contains("do not reuse discovery token"), "{log}");
}

#[test]
fn etcd_members_bootstrap_through_a_qetcd_discovery_service() {
    if !Binary::Etcd.available() {
        eprintln!("skipped: Debian's etcd is not installed");
        return;
    }
    let service = discovery_service(Binary::Qetcd);
    let durl = new_token(&service, "etcd-via-qetcd", "3");
    bootstrap_three(Binary::Etcd, &durl, "e");
}

#[test]
fn qetcd_members_bootstrap_through_etcd_v2_discovery() {
    if !Binary::Etcd.available() {
        eprintln!("skipped: Debian's etcd is not installed");
        return;
    }
    let service = discovery_service(Binary::Etcd);
    let durl = new_token(&service, "qetcd-via-etcd", "3");
    bootstrap_three(Binary::Qetcd, &durl, "q");
}

#[test]
fn bad_tokens_and_urls_fail_with_etcds_texts() {
    let service = discovery_service(Binary::Qetcd);
    let base = format!("{}/v2/keys/_etcd/registry", service.client_url());

    let log = expect_failure(discovery_spec("a", &format!("{base}/no-such-token")));
    assert!(
        log.contains("failed to join discovery cluster (discovery: size key not found)"),
        "{log}"
    );

    let durl = new_token(&service, "bad-size", "abc");
    let log = expect_failure(discovery_spec("a", &durl));
    assert!(
        log.contains("failed to join discovery cluster (discovery: size key is bad)"),
        "{log}"
    );

    // Two members under one name: both find two registrations but one name.
    let durl = new_token(&service, "same-name", "2");
    let a = Member::spawn(Binary::Qetcd, discovery_spec("twin", &durl));
    let b = Member::spawn(Binary::Qetcd, discovery_spec("twin", &durl));
    for mut m in [a, b] {
        let status = m.wait_exit(Duration::from_secs(30)).expect("exits");
        assert!(!status.success());
        let log = m.logs();
        assert!(
            log.contains("failed to join discovery cluster (discovery: found duplicate name)"),
            "{log}"
        );
        assert!(
            log.contains("member with duplicated name has already been registered"),
            "{log}"
        );
    }

    for bad in ["ftp://127.0.0.1:2379/x", "127.0.0.1:2379/v2/keys/x"] {
        let log = expect_failure(discovery_spec("a", bad));
        assert!(log.contains("invalid discovery URL"), "{bad}: {log}");
    }

    let mut spec = discovery_spec("a", &format!("{base}/whatever"));
    spec.extra_args = vec!["--discovery-fallback".into(), "proxy".into()];
    let log = expect_failure(spec);
    assert!(
        log.contains(
            "v2 proxy is deprecated, and --discovery-fallback can't be configured as \"proxy\""
        ),
        "{log}"
    );
}

#[test]
fn a_member_started_before_the_service_retries_with_backoff_and_joins() {
    // The token is made first and the service stopped, so that once it is back, the
    // member's next attempt finds the token whenever it comes.
    let mut spec = MemberSpec::new("disc");
    spec.extra_args = vec!["--enable-v2".into()];
    let mut service = Member::start(Binary::Qetcd, spec);
    let durl = new_token(&service, "early", "1");
    service.terminate().expect("the service stops");
    let mut early = discovery_spec("early", &durl);
    early.env = vec![("ETCD_DISCOVERY".into(), durl.clone())];
    early.discovery_args = Some(Vec::new());
    let member = Member::spawn(Binary::Qetcd, early);
    wait_until(
        "the member to log a discovery retry",
        Duration::from_secs(20),
        || {
            member
                .logs()
                .contains("retry connecting to discovery service")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", member.logs()));
    service.relaunch();
    // Backoff is 2 s, then 4 s, 8 s: well within the deadline.
    wait_until(
        "the member to join after the service came up",
        Duration::from_secs(40),
        || member.health().filter(|(c, _)| *c == 200),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", member.logs()));
    let listed = member_list(&member);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, expected_id(&member.spec.peer_url(), &durl));
}

/// v3 discovery (`--discovery-token`, `--discovery-endpoints`) through `endpoint`.
fn v3_spec(name: &str, token: &str, endpoint: &str) -> MemberSpec {
    let mut spec = MemberSpec::new(name);
    spec.discovery_args = Some(vec![
        "--discovery-token".into(),
        token.into(),
        "--discovery-endpoints".into(),
        endpoint.into(),
    ]);
    spec
}

#[test]
fn v3_discovery_through_a_qetcd_cluster_and_its_failures() {
    let service = Member::start(Binary::Qetcd, MemberSpec::new("disc"));
    let ctl = service.etcdctl();
    ctl.run(&["put", "/_etcd/registry/v3-tok/_config/size", "3"])
        .ok();
    let ep = service.client_url();
    bootstrap_three_with(Binary::Qetcd, "v3-tok", "q", |name| {
        v3_spec(name, "v3-tok", &ep)
    });
    let listed = ctl.run(&[
        "get",
        "--prefix",
        "--keys-only",
        "/_etcd/registry/v3-tok/members/",
    ]);
    assert_eq!(listed.ok().lines().filter(|l| !l.is_empty()).count(), 3);

    let log = expect_failure(v3_spec("q3", "v3-tok", &ep));
    assert!(
        log.contains("failed to join discovery cluster (discovery: cluster is full)"),
        "{log}"
    );
    let log = expect_failure(v3_spec("a", "no-such-token", &ep));
    assert!(
        log.contains("failed to join discovery cluster (discovery: size key not found)"),
        "{log}"
    );
    ctl.run(&["put", "/_etcd/registry/zero/_config/size", "0"])
        .ok();
    let log = expect_failure(v3_spec("a", "zero", &ep));
    assert!(
        log.contains("failed to join discovery cluster (discovery: size key is bad)"),
        "{log}"
    );
    // Unlike etcd 3.6, two registrations under one name are refused, as in v2.
    ctl.run(&["put", "/_etcd/registry/twins/_config/size", "2"])
        .ok();
    let twins: Vec<Member> = (0..2)
        .map(|_| Member::spawn(Binary::Qetcd, v3_spec("twin", "twins", &ep)))
        .collect();
    for mut m in twins {
        let status = m.wait_exit(Duration::from_secs(30)).expect("exits");
        assert!(!status.success());
        let log = m.logs();
        assert!(
            log.contains("failed to join discovery cluster (discovery: found duplicate name)"),
            "{log}"
        );
    }
    let mut only_token = MemberSpec::new("a");
    only_token.discovery_args = Some(vec!["--discovery-token".into(), "t".into()]);
    let log = expect_failure(only_token);
    assert!(
        log.contains("both --discovery-token and --discovery-endpoints must be set"),
        "{log}"
    );
}

#[test]
fn v3_discovery_through_etcd_with_user_and_password() {
    if !Binary::Etcd.available() {
        eprintln!("skipped: Debian's etcd is not installed");
        return;
    }
    let service = Member::start(Binary::Etcd, MemberSpec::new("disc"));
    let ctl = service.etcdctl();
    ctl.run(&["user", "add", "root:rootpw"]).ok();
    ctl.run(&["auth", "enable"]).ok();
    let root = ctl
        .clone()
        .with_args(&["--user".into(), "root:rootpw".into()]);
    root.run(&["put", "/_etcd/registry/authed/_config/size", "3"])
        .ok();
    let ep = service.client_url();
    bootstrap_three_with(Binary::Qetcd, "authed", "q", |name| {
        let mut spec = v3_spec(name, "authed", &ep);
        // One member as flags, the others through the ETCD_* twins.
        if name.ends_with('0') {
            spec.discovery_args
                .as_mut()
                .unwrap()
                .extend(["--discovery-user".into(), "root:rootpw".into()]);
        } else {
            spec.env = vec![
                ("ETCD_DISCOVERY_USER".into(), "root".into()),
                ("ETCD_DISCOVERY_PASSWORD".into(), "rootpw".into()),
            ];
        }
        spec
    });
}

#[test]
fn a_member_that_registered_before_without_a_data_dir_finds_its_duplicate_id() {
    let service = discovery_service(Binary::Qetcd);
    let durl = new_token(&service, "crashed", "2");
    // It registers, then waits for a second member that never comes; it is killed
    // before anything is written.
    let spec = discovery_spec("lonely", &durl);
    let mut first = Member::spawn(Binary::Qetcd, spec.clone());
    wait_until("the member to register", Duration::from_secs(20), || {
        curl(&[&durl])
            .contains(&format!("lonely={}", spec.peer_url()))
            .then_some(())
    })
    .unwrap();
    first.kill9();
    assert!(!first.data_dir.exists());
    let log = expect_failure(spec);
    assert!(
        log.contains("failed to join discovery cluster (discovery: found duplicate id)"),
        "{log}"
    );
    assert!(
        log.contains("or use a new discovery token if previous bootstrap failed"),
        "{log}"
    );
}

#[test]
fn v3_discovery_over_tls_with_a_client_certificate() {
    use qetcd_tests::pki::{Ca, LeafSpec};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "discovery-ca");
    let mut spec = MemberSpec::new("disc");
    let client = ca.issue("client", &LeafSpec::client("root"));
    ca.serve_clients(&mut spec, &client);
    let path = |p: &std::path::Path| p.display().to_string();
    let service = Member::start(Binary::Qetcd, spec);
    service
        .etcdctl()
        .run(&["put", "/_etcd/registry/tls-tok/_config/size", "3"])
        .ok();
    let ep = service.client_url();
    assert!(ep.starts_with("https://"));
    bootstrap_three_with(Binary::Qetcd, "tls-tok", "q", |name| {
        let mut s = v3_spec(name, "tls-tok", &ep);
        s.env = vec![
            ("ETCD_DISCOVERY_CACERT".into(), path(&ca.cert)),
            ("ETCD_DISCOVERY_CERT".into(), path(&client.cert)),
            ("ETCD_DISCOVERY_KEY".into(), path(&client.key)),
        ];
        s
    });
}

#[test]
fn v3_members_started_before_the_service_retry_and_join() {
    // As above: the token exists before the service goes away and comes back.
    let mut service = Member::start(Binary::Qetcd, MemberSpec::new("disc"));
    let ep = service.client_url();
    service
        .etcdctl()
        .run(&["put", "/_etcd/registry/early-v3/_config/size", "1"])
        .ok();
    service.terminate().expect("the service stops");
    let mut early = MemberSpec::new("early");
    early.discovery_args = Some(Vec::new());
    early.env = vec![
        ("ETCD_DISCOVERY_TOKEN".into(), "early-v3".into()),
        ("ETCD_DISCOVERY_ENDPOINTS".into(), ep.clone()),
    ];
    let member = Member::spawn(Binary::Qetcd, early);
    wait_until(
        "the member to log a discovery retry",
        Duration::from_secs(20),
        || {
            member
                .logs()
                .contains("retry connecting to discovery service")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", member.logs()));
    service.relaunch();
    wait_until(
        "the member to join after the service came up",
        Duration::from_secs(40),
        || member.health().filter(|(c, _)| *c == 200),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", member.logs()));
    let listed = member_list(&member);
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].0,
        expected_id(&member.spec.peer_url(), "early-v3")
    );
}

/// A minimal HTTP proxy for plain-http targets on `ip:3128`: forwards each connection
/// to the host its absolute-form request line names, and records those lines.
fn start_proxy(ip: &str) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = TcpListener::bind((ip, 3128)).expect("proxy listens");
    let record = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            let record = record.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let line = text.lines().next().unwrap_or_default().to_string();
                record.lock().unwrap().push(line.clone());
                let target = line.split_whitespace().nth(1).unwrap_or_default();
                let authority = target
                    .strip_prefix("http://")
                    .and_then(|t| t.split('/').next())
                    .unwrap_or_default()
                    .to_string();
                let Ok(mut upstream) = TcpStream::connect(&authority) else {
                    let _ =
                        client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
                    return;
                };
                let _ = upstream.write_all(&head);
                let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut u2);
                    let _ = u2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut upstream, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    seen
}

#[test]
fn v2_discovery_goes_through_the_discovery_proxy() {
    let service = discovery_service(Binary::Qetcd);
    let durl = new_token(&service, "proxied", "1");
    let proxy_ip = qetcd_tests::member::unique_ip();
    let seen = start_proxy(&proxy_ip);
    let mut spec = discovery_spec("p", &durl);
    // A bare host:port gets http://, as in etcd.
    spec.discovery_args
        .as_mut()
        .unwrap()
        .extend(["--discovery-proxy".into(), format!("{proxy_ip}:3128")]);
    let m = Member::start(Binary::Qetcd, spec);
    assert!(
        m.logs().contains("running proxy with discovery"),
        "{}",
        m.logs()
    );
    let id = expected_id(&m.spec.peer_url(), &durl);
    let lines = seen.lock().unwrap().clone();
    let register = format!("PUT {durl}/{id}?prevExist=false HTTP/1.1");
    assert!(
        lines.contains(&register),
        "{register:?} not among {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("GET {durl}/_config/size?"))),
        "{lines:#?}"
    );
}

#[test]
fn v2_discovery_over_https_verifies_the_service_against_the_system_cas() {
    use qetcd_tests::pki::{Ca, LeafSpec};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "discovery-ca");
    let mut spec = MemberSpec::new("disc");
    spec.client_scheme = "https".into();
    let server = ca.issue("server", &LeafSpec::member("disc", &[&spec.ip]));
    let path = |p: &std::path::Path| p.display().to_string();
    spec.extra_args = vec![
        "--enable-v2".into(),
        "--cert-file".into(),
        path(&server.cert),
        "--key-file".into(),
        path(&server.key),
    ];
    spec.etcdctl_args = vec!["--cacert".into(), path(&ca.cert)];
    let service = Member::start(Binary::Qetcd, spec);
    let durl = format!("{}/v2/keys/_etcd/registry/https-tok", service.client_url());
    let body = curl(&[
        "--cacert",
        &path(&ca.cert),
        "-X",
        "PUT",
        &format!("{durl}/_config/size"),
        "-d",
        "value=3",
    ]);
    assert!(body.contains("\"value\":\"3\""), "{body}");
    // As etcd's, the v2 client trusts the system's CAs; SSL_CERT_FILE names them here.
    bootstrap_three_with(Binary::Qetcd, &durl, "q", |name| {
        let mut s = discovery_spec(name, &durl);
        s.env = vec![("SSL_CERT_FILE".into(), path(&ca.cert))];
        s
    });
}
