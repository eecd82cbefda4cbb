//! JWT auth tokens (issue 18): a token one member signs is accepted by every member,
//! including one given only the public key, and again after all members restarted; an
//! expired token and one signed with another cluster's key are refused; key files that
//! cannot work stop the member with etcd's texts.
//!
//! Keys are made with openssl, and some tokens are signed with openssl too (RS256 is
//! PKCS#1 v1.5 over SHA-256), so qetcd's tokens are checked against an independent
//! implementation of the format, not only against themselves. Tokens travel in the
//! HTTP gateway's `Authorization` header (curl), as etcd's documentation shows.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qetcd_tests::etcdctl::base64_decode;
use qetcd_tests::{Binary, Cluster, Etcdctl, Member, MemberSpec, wait_until};

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key pair made by `openssl genpkey` (PKCS#8), and its public key (SPKI).
struct KeyPair {
    private: PathBuf,
    public: PathBuf,
}

fn key_pair(dir: &Path, name: &str, genpkey: &[&str]) -> KeyPair {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend(["-out", private.to_str().unwrap()]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    KeyPair { private, public }
}

fn rsa(dir: &Path, name: &str) -> KeyPair {
    key_pair(
        dir,
        name,
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    )
}

fn b64(data: &[u8], url: bool) -> String {
    const STD: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let alphabet = if url { URL } else { STD };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if !url {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

fn b64url_decode(s: &str) -> Vec<u8> {
    let mut std: String = s.replace('-', "+").replace('_', "/");
    while !std.len().is_multiple_of(4) {
        std.push('=');
    }
    base64_decode(&std)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An RS256 token signed by openssl with `key`.
fn openssl_token(key: &Path, claims: &serde_json::Value) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(br#"{"alg":"RS256","typ":"JWT"}"#, true),
        b64(claims.to_string().as_bytes(), true)
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    format!("{signing_input}.{}", b64(&out.stdout, true))
}

/// A POST to the HTTP gateway with curl: (HTTP status, JSON body).
fn post(base: &str, path: &str, token: Option<&str>, body: serde_json::Value) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "30",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: {t}")]);
    }
    let out = cmd
        .arg(format!("{base}{path}"))
        .args(["--data-binary", &body.to_string()])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("curl wrote the status");
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn authenticate(base: &str, name: &str, password: &str) -> (u16, String) {
    post(
        base,
        "/v3/auth/authenticate",
        None,
        serde_json::json!({ "name": name, "password": password }),
    )
}

fn token_of(answer: &(u16, String)) -> String {
    assert_eq!(answer.0, 200, "{answer:?}");
    let v: serde_json::Value = serde_json::from_str(&answer.1).unwrap();
    v["token"].as_str().expect("a token").to_string()
}

fn put(base: &str, token: &str, key: &str) -> (u16, String) {
    post(
        base,
        "/v3/kv/put",
        Some(token),
        serde_json::json!({ "key": b64(key.as_bytes(), false), "value": b64(b"v", false) }),
    )
}

fn assert_refused(answer: (u16, String), text: &str, what: &str) {
    assert!(
        answer.0 != 200 && answer.1.contains(text),
        "{what}: expected {text:?}, got {answer:?}"
    );
}

/// alice may read and write `app/`; root is root; auth enabled.
fn set_up_users(ctl: &Etcdctl) {
    qetcd_tests::users::enable_auth_with_alice(ctl, &[]);
}

fn jwt_flag(keys: &KeyPair, sign_method: &str, ttl: &str, with_private: bool) -> Vec<String> {
    let mut opt = format!(
        "jwt,pub-key={},sign-method={sign_method},ttl={ttl}",
        keys.public.display()
    );
    if with_private {
        opt.push_str(&format!(",priv-key={}", keys.private.display()));
    }
    vec!["--auth-token".into(), opt]
}

#[test]
fn a_jwt_from_one_member_works_on_every_member_and_after_a_restart_of_all() {
    let keys_dir = tempfile::tempdir().unwrap();
    let ours = rsa(keys_dir.path(), "cluster");
    let theirs = rsa(keys_dir.path(), "other");
    let specs = Cluster::specs_with("jwt", 3, "jwt-token", |_| {});
    let specs: Vec<MemberSpec> = specs
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            // The third member gets the public key only: it verifies, never signs.
            s.extra_args = jwt_flag(&ours, "RS256", "10m", i < 2);
            s
        })
        .collect();
    let mut cluster = Cluster::start(Binary::Qetcd, specs);
    set_up_users(&cluster.etcdctl());
    let urls: Vec<String> = cluster.members.iter().map(|m| m.client_url()).collect();

    let token = token_of(&authenticate(&urls[0], "alice", "alicepw"));
    // etcd's claims, readable by anyone: username, auth revision, expiry (the ttl).
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let header: serde_json::Value = serde_json::from_slice(&b64url_decode(parts[0])).unwrap();
    assert_eq!(header["alg"], "RS256");
    let claims: serde_json::Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
    assert_eq!(claims["username"], "alice");
    let revision = claims["revision"].as_u64().expect("a numeric revision");
    assert!(revision > 0, "{claims}");
    let exp = claims["exp"].as_u64().expect("a numeric exp");
    assert!(
        (now() + 540..=now() + 600).contains(&exp),
        "exp {exp} is not 10m from now: {claims}"
    );

    for (i, url) in urls.iter().enumerate() {
        let done = put(url, &token, &format!("app/{i}"));
        assert_eq!(done.0, 200, "member {i}: {done:?}");
        assert_refused(
            put(url, &token, "elsewhere"),
            "etcdserver: permission denied",
            "outside alice's prefix",
        );
    }
    // etcdctl authenticates and uses its token on its own, at any member.
    for url in &urls[..2] {
        let alice = Etcdctl::new(url).with_args(&["--user=alice:alicepw".into()]);
        assert_eq!(
            alice.run(&["get", "app/1", "--print-value-only"]).ok(),
            "v\n"
        );
    }
    // The verify-only member cannot issue tokens, with etcd's text.
    assert_refused(
        authenticate(&urls[2], "alice", "alicepw"),
        "auth: token signing attempted with verify-only key",
        "authentication at the verify-only member",
    );
    // A token that openssl signed with the cluster's key is as good as the cluster's.
    let claims =
        |exp: u64| serde_json::json!({ "exp": exp, "revision": revision, "username": "alice" });
    let by_openssl = openssl_token(&ours.private, &claims(now() + 600));
    assert_eq!(put(&urls[2], &by_openssl, "app/openssl").0, 200);
    // Expired, or signed by another cluster's key: refused everywhere.
    let expired = openssl_token(&ours.private, &claims(now() - 5));
    let foreign = openssl_token(&theirs.private, &claims(now() + 600));
    for url in &urls {
        for (bad, what) in [
            (&expired, "an expired token"),
            (&foreign, "another key's token"),
        ] {
            assert_refused(
                put(url, bad, "app/x"),
                "etcdserver: invalid auth token",
                what,
            );
        }
    }

    // All members down, then up again: the token needs no state, only the key.
    for m in &mut cluster.members {
        m.kill9();
    }
    for m in &mut cluster.members {
        m.relaunch();
    }
    for m in &cluster.members {
        m.wait_healthy();
    }
    for (i, url) in urls.iter().enumerate() {
        let done = wait_until(
            "the restarted member to take the token",
            Duration::from_secs(60),
            || {
                let done = put(url, &token, &format!("app/after/{i}"));
                (done.0 == 200).then_some(done)
            },
        );
        assert!(done.is_ok(), "member {i}: {:?}", put(url, &token, "app/y"));
    }
    // A change of the auth store outdates every token issued before it, as in etcd:
    // clients are told to log in again.
    let root = Etcdctl::new(&urls[0]).with_args(&["--user=root:rootpw".into()]);
    root.run(&["role", "add", "another"]).ok();
    assert_refused(
        put(&urls[1], &token, "app/z"),
        "auth: revision in header is old",
        "a token from before an auth change",
    );
    let fresh = token_of(&authenticate(&urls[1], "alice", "alicepw"));
    assert_eq!(put(&urls[2], &fresh, "app/z").0, 200);
}

#[test]
fn an_eddsa_jwt_from_a_private_key_alone_expires_after_its_ttl() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = key_pair(keys_dir.path(), "ed", &["-algorithm", "ED25519"]);
    let mut spec = MemberSpec::new("jwted");
    spec.extra_args = vec![
        "--auth-token".into(),
        format!(
            "jwt,priv-key={},sign-method=EdDSA,ttl=3s",
            keys.private.display()
        ),
    ];
    let m = Member::start(Binary::Qetcd, spec);
    set_up_users(&m.etcdctl());
    let url = m.client_url();
    let issued = Instant::now();
    let token = token_of(&authenticate(&url, "alice", "alicepw"));
    let header: serde_json::Value =
        serde_json::from_slice(&b64url_decode(token.split('.').next().unwrap())).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(put(&url, &token, "app/a").0, 200);
    // Using a JWT does not extend it (unlike a simple token): it dies at its exp.
    let refused = wait_until("the token to expire", Duration::from_secs(60), || {
        let answer = put(&url, &token, "app/a");
        (answer.0 != 200).then_some(answer)
    })
    .unwrap();
    assert!(
        issued.elapsed() >= Duration::from_secs(2),
        "expired too early"
    );
    assert_refused(
        refused,
        "etcdserver: invalid auth token",
        "an expired token",
    );
}

#[test]
fn unusable_jwt_keys_stop_the_member_with_etcds_texts() {
    let keys_dir = tempfile::tempdir().unwrap();
    let a = rsa(keys_dir.path(), "a");
    let b = rsa(keys_dir.path(), "b");
    let ec = key_pair(
        keys_dir.path(),
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let missing = keys_dir.path().join("missing.pem");
    let cases: Vec<(String, &str)> = vec![
        ("jwt,sign-method=RS256".into(), "auth: missing key data"),
        (
            format!(
                "jwt,pub-key={},priv-key={},sign-method=RS256",
                b.public.display(),
                a.private.display()
            ),
            "auth: public and private keys don't match",
        ),
        (
            format!("jwt,priv-key={},sign-method=RS512", missing.display()),
            "cannot read priv-key",
        ),
        (
            format!("jwt,pub-key={},sign-method=ES256", a.public.display()),
            "is not a ECDSA (PKCS#8) key",
        ),
        (
            format!("jwt,priv-key={},sign-method=XS256", ec.private.display()),
            "auth: invalid auth signature method",
        ),
        (
            format!(
                "jwt,priv-key={},sign-method=ES256,ttl=soon",
                ec.private.display()
            ),
            "auth: invalid auth options",
        ),
    ];
    for (flag, text) in cases {
        let data = tempfile::tempdir().unwrap();
        let ip = qetcd_tests::member::unique_ip();
        let client = format!("http://{ip}:2379");
        let peer = format!("http://{ip}:2380");
        let (code, log) = Member::run_to_exit(
            Binary::Qetcd,
            &[
                "--data-dir",
                data.path().join("d").to_str().unwrap(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("default={peer}"),
                "--auth-token",
                &flag,
            ],
            &[],
            Duration::from_secs(60),
        );
        assert!(
            code.is_some_and(|c| c != 0) && log.contains(text),
            "--auth-token {flag}: expected {text:?}, exit {code:?}:\n{log}"
        );
        assert!(
            !data.path().join("d").exists(),
            "--auth-token {flag}: the data dir was written"
        );
    }
}

#[test]
fn tokens_pass_between_debians_etcd_and_qetcd_sharing_a_key() {
    if !Binary::Etcd.available() {
        eprintln!("SKIPPED: /usr/bin/etcd is not installed; nothing to compare against");
        return;
    }
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = rsa(keys_dir.path(), "shared");
    let start = |binary: Binary, name: &str| {
        let mut spec = MemberSpec::new(name);
        spec.extra_args = jwt_flag(&keys, "RS256", "10m", true);
        let m = Member::start(binary, spec);
        // The same auth changes in the same order: the same auth revision.
        set_up_users(&m.etcdctl());
        m
    };
    let etcd = start(Binary::Etcd, "jwtetcd");
    let qetcd = start(Binary::Qetcd, "jwtqetcd");
    let from_etcd = token_of(&authenticate(&etcd.client_url(), "alice", "alicepw"));
    let from_qetcd = token_of(&authenticate(&qetcd.client_url(), "alice", "alicepw"));
    let claims_of = |token: &str| -> serde_json::Value {
        serde_json::from_slice(&b64url_decode(token.split('.').nth(1).unwrap())).unwrap()
    };
    let (e, q) = (claims_of(&from_etcd), claims_of(&from_qetcd));
    assert_eq!(e["username"], q["username"], "etcd {e}, qetcd {q}");
    assert_eq!(e["revision"], q["revision"], "etcd {e}, qetcd {q}");
    let done = put(&qetcd.client_url(), &from_etcd, "app/from-etcd");
    assert_eq!(done.0, 200, "etcd's token on qetcd: {done:?}");
    let done = put(&etcd.client_url(), &from_qetcd, "app/from-qetcd");
    assert_eq!(done.0, 200, "qetcd's token on etcd: {done:?}");
    for (url, token) in [
        (etcd.client_url(), &from_qetcd),
        (qetcd.client_url(), &from_etcd),
    ] {
        assert_refused(
            put(&url, token, "elsewhere"),
            "etcdserver: permission denied",
            "outside alice's prefix",
        );
    }
}
