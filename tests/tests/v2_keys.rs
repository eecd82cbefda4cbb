//! The v2 keys API subset qetcd serves with `--enable-v2` (what etcd's v2 discovery
//! uses), driven with curl against qetcd and Debian's etcd 3.4 with `--enable-v2`: the
//! same requests must give the same statuses, actions, error codes, keys, values and
//! directory listings (indexes differ by design: qetcd's are revisions).

use std::process::{Command, Stdio};

use qetcd_tests::member::{Binary, Member, MemberSpec};
use serde_json::Value;

/// `curl` → (status, X-Etcd-Index present, JSON body).
fn curl(args: &[&str]) -> (u16, bool, Value) {
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", "-i"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let has_index = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("x-etcd-index:"));
    let body = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    (status, has_index, body)
}

/// The body without indexes, which are implementation-specific.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "modifiedIndex" | "createdIndex" | "index"))
                .map(|(k, v)| (k.clone(), shape(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        other => other.clone(),
    }
}

/// Runs the discovery subset against `m`, returning what each step gave.
fn session(m: &Member) -> Vec<(String, u16, Value)> {
    let base = format!("{}/v2/keys", m.client_url());
    let mut out = Vec::new();
    let mut step = |name: &str, args: &[&str]| -> Value {
        let (status, has_index, body) = curl(args);
        assert!(has_index, "{name}: no X-Etcd-Index header");
        out.push((name.to_string(), status, shape(&body)));
        body
    };
    step(
        "set size",
        &[
            "-X",
            "PUT",
            &format!("{base}/d/_config/size"),
            "-d",
            "value=3",
        ],
    );
    step(
        "get size",
        &[&format!(
            "{base}/d/_config/size?quorum=false&recursive=false&sorted=false"
        )],
    );
    step(
        "empty dir (hidden _config)",
        &[&format!(
            "{base}/d?quorum=false&recursive=false&sorted=false"
        )],
    );
    let created = step(
        "create",
        &[
            "-X",
            "PUT",
            &format!("{base}/d/a1?prevExist=false"),
            "-d",
            "value=n1=http://10.0.0.1:2380",
        ],
    );
    step(
        "create again",
        &[
            "-X",
            "PUT",
            &format!("{base}/d/a1?prevExist=false"),
            "-d",
            "value=n1=http://10.0.0.1:2380",
        ],
    );
    step(
        "list",
        &[&format!(
            "{base}/d?quorum=false&recursive=false&sorted=false"
        )],
    );
    step("missing", &[&format!("{base}/nope/_config/size")]);
    let index = created["node"]["createdIndex"].as_u64().unwrap();
    step(
        "wait for own key",
        &[&format!(
            "{base}/d/a1?recursive=false&wait=true&waitIndex={index}"
        )],
    );
    // A recursive watch from after the registration sees the next one.
    let url = format!("{base}/d?recursive=true&wait=true&waitIndex={}", index + 1);
    let watcher = std::thread::spawn(move || curl(&[&url]));
    // Until the watcher is registered the PUT could come first; either way the watch
    // is answered with it, since waitIndex is before it.
    curl(&[
        "-X",
        "PUT",
        &format!("{base}/d/b2?prevExist=false"),
        "-d",
        "value=n2=http://10.0.0.2:2380",
    ]);
    let (status, _, body) = watcher.join().unwrap();
    out.push(("recursive watch".into(), status, shape(&body)));
    out
}

#[test]
fn the_discovery_subset_answers_as_etcd_3_4_does() {
    if !Binary::Etcd.available() {
        eprintln!("skipped: Debian's etcd is not installed");
        return;
    }
    let start = |binary| {
        let mut spec = MemberSpec::new("v2");
        spec.extra_args = vec!["--enable-v2".into()];
        Member::start(binary, spec)
    };
    let etcd = start(Binary::Etcd);
    let qetcd = start(Binary::Qetcd);
    let expected = session(&etcd);
    let got = session(&qetcd);
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(g, e, "step {:?}: qetcd (left) vs etcd (right)", e.0);
    }
    assert_eq!(got.len(), expected.len());
}

#[test]
fn without_enable_v2_there_is_no_v2_api() {
    let m = Member::start(Binary::Qetcd, MemberSpec::new("nov2"));
    // The gRPC router answers unknown paths itself; no v2 answer comes back.
    let (_, has_index, body) = curl(&[&format!("{}/v2/keys/x", m.client_url())]);
    assert!(!has_index);
    assert_eq!(body, Value::Null);
}
