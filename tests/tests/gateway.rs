//! The v3 HTTP/JSON gateway against etcd's: the same requests, sent with curl to a
//! one-member qetcd, Debian's etcd 3.4 and etcd 3.5.1, must get the same HTTP status
//! and the same JSON, once what differs by nature (cluster and member IDs, terms, Raft
//! indexes, database sizes, server versions, URLs) is masked. Revisions are not
//! masked: the three see the same writes in the same order, so theirs must agree.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qetcd_tests::member::{Binary, Member, MemberSpec};
use qetcd_tests::pki::{Ca, LeafSpec};
use serde_json::Value;

/// What the table compares, per request shape.
#[derive(Clone, Copy, PartialEq)]
enum Compare {
    /// Status and masked JSON equal on all three.
    All,
    /// etcd 3.4 and 3.5 answer differently; qetcd (which presents itself as 3.5)
    /// matches 3.5.
    Etcd35Only,
    /// Not JSON (a 404 or 405 from the router): the status only.
    StatusOnly,
}

struct Shape {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: String,
    compare: Compare,
}

fn shape(name: &'static str, path: &'static str, body: &str) -> Shape {
    Shape {
        name,
        method: "POST",
        path,
        body: body.to_string(),
        compare: Compare::All,
    }
}

fn etcd35_only(mut s: Shape) -> Shape {
    s.compare = Compare::Etcd35Only;
    s
}

fn b64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request with curl: (HTTP status, body).
fn call(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut child = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .arg(format!("{base}{path}"))
        .args(["--data-binary", "@-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run curl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("curl output");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("curl wrote the status");
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A streaming request (watch) whose answer lines arrive on a channel.
struct Stream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Stream {
    fn open(base: &str, path: &str, body: &str) -> Stream {
        let mut child = Command::new("curl")
            .args(["-s", "-N", "--max-time", "120", "-X", "POST"])
            .arg(format!("{base}{path}"))
            .args(["--data-binary", body])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run curl");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Stream { child, lines }
    }

    /// The next `n` lines, within a generous deadline.
    fn take(&self, n: usize, what: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.lines
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("{what}: line {} of {n} did not come", i + 1))
            })
            .collect()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces what differs between servers by nature with a placeholder; its presence
/// is still compared.
fn mask(value: &mut Value, parent: &str) {
    const MASKED: [&str; 9] = [
        "cluster_id",
        "member_id",
        "raft_term",
        "leader",
        "raftIndex",
        "raftTerm",
        "raftAppliedIndex",
        "dbSize",
        "dbSizeInUse",
    ];
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let in_member = parent == "members" || parent == "member";
                let server_version = k == "version" && v.as_str().is_some_and(|s| s.contains('.'));
                if MASKED.contains(&k.as_str())
                    || server_version
                    || (in_member && ["ID", "name", "peerURLs", "clientURLs"].contains(&k.as_str()))
                {
                    *v = Value::String("<masked>".into());
                } else if k == "TTL" || k == "grantedTTL" {
                    // A lease's remaining TTL ticks down: near the granted 60 is enough.
                    let ttl: i64 = v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                    if (50..=60).contains(&ttl) {
                        *v = Value::String("about 60".into());
                    }
                } else {
                    mask(v, k);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask(v, parent)),
        _ => {}
    }
}

fn masked(body: &str) -> Value {
    let mut v: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    mask(&mut v, "");
    v
}

fn masked_lines(lines: &[String]) -> Vec<Value> {
    lines.iter().map(|l| masked(l)).collect()
}

fn table() -> Vec<Shape> {
    let key_foo = b64("foo");
    let dir = b64("dir/");
    let dir_end = b64("dir0");
    let mut too_many_ops = String::from(r#"{"success":["#);
    for i in 0..129 {
        if i > 0 {
            too_many_ops.push(',');
        }
        too_many_ops.push_str(&format!(
            r#"{{"request_put":{{"key":"{}","value":"eA=="}}}}"#,
            b64(&format!("k{i}"))
        ));
    }
    too_many_ops.push_str("]}");
    let mut shapes = vec![
        shape(
            "put",
            "/v3/kv/put",
            &format!(r#"{{"key":"{key_foo}","value":"{}"}}"#, b64("bar")),
        ),
        shape(
            "put with prev_kv",
            "/v3/kv/put",
            &format!(
                r#"{{"key":"{key_foo}","value":"{}","prev_kv":true}}"#,
                b64("baz")
            ),
        ),
        shape(
            "range one key",
            "/v3/kv/range",
            &format!(r#"{{"key":"{key_foo}"}}"#),
        ),
        shape(
            "put dir/a",
            "/v3/kv/put",
            &format!(r#"{{"key":"{}","value":"MQ=="}}"#, b64("dir/a")),
        ),
        shape(
            "put dir/b",
            "/v3/kv/put",
            &format!(r#"{{"key":"{}","value":"Mg=="}}"#, b64("dir/b")),
        ),
        shape(
            "put dir/c",
            "/v3/kv/put",
            &format!(r#"{{"key":"{}","value":"Mw=="}}"#, b64("dir/c")),
        ),
        shape(
            "range prefix with limit",
            "/v3/kv/range",
            &format!(r#"{{"key":"{dir}","range_end":"{dir_end}","limit":"2"}}"#),
        ),
        shape(
            "range count_only",
            "/v3/kv/range",
            &format!(r#"{{"key":"{dir}","range_end":"{dir_end}","count_only":true}}"#),
        ),
        shape(
            "range keys_only descending by key (numbers for int64, enum by name)",
            "/v3/kv/range",
            &format!(
                r#"{{"key":"{dir}","range_end":"{dir_end}","keys_only":true,"sort_order":"DESCEND","sort_target":"KEY"}}"#
            ),
        ),
        shape(
            "range at a past revision",
            "/v3/kv/range",
            &format!(r#"{{"key":"{key_foo}","revision":2}}"#),
        ),
        shape(
            "range serializable, camelCase field names accepted",
            "/v3/kv/range",
            &format!(
                r#"{{"key":"{dir}","rangeEnd":"{dir_end}","serializable":true,"countOnly":true}}"#
            ),
        ),
        shape(
            "range with unknown fields",
            "/v3/kv/range",
            &format!(r#"{{"key":"{key_foo}","no_such_field":1}}"#),
        ),
        shape(
            "error: future revision",
            "/v3/kv/range",
            &format!(r#"{{"key":"{key_foo}","revision":"1000"}}"#),
        ),
        shape("error: key not base64", "/v3/kv/range", r#"{"key":"@@@"}"#),
        shape("error: truncated JSON", "/v3/kv/range", r#"{"key":"Zm9v"#),
        shape("error: empty key", "/v3/kv/range", r#"{"key":""}"#),
        shape(
            "error: put without key",
            "/v3/kv/put",
            r#"{"value":"eA=="}"#,
        ),
        shape(
            "error: put ignore_value on a missing key",
            "/v3/kv/put",
            &format!(r#"{{"key":"{}","ignore_value":true}}"#, b64("missing")),
        ),
        shape(
            "txn: compare succeeds",
            "/v3/kv/txn",
            &format!(
                r#"{{"compare":[{{"key":"{key_foo}","target":"VALUE","result":"EQUAL","value":"{}"}}],
                "success":[{{"request_put":{{"key":"{key_foo}","value":"{}"}}}},{{"request_range":{{"key":"{key_foo}"}}}}],
                "failure":[{{"request_range":{{"key":"{key_foo}"}}}}]}}"#,
                b64("baz"),
                b64("qux")
            ),
        ),
        shape(
            "txn: compare fails",
            "/v3/kv/txn",
            &format!(
                r#"{{"compare":[{{"key":"{key_foo}","target":"MOD","result":"LESS","mod_revision":"2"}}],
                "success":[{{"request_delete_range":{{"key":"{key_foo}"}}}}],
                "failure":[{{"request_range":{{"key":"{dir}","range_end":"{dir_end}","count_only":true}}}}]}}"#
            ),
        ),
        shape(
            "error: txn with too many operations",
            "/v3/kv/txn",
            &too_many_ops,
        ),
        shape(
            "error: txn puts one key twice",
            "/v3/kv/txn",
            &format!(
                r#"{{"success":[{{"request_put":{{"key":"{key_foo}"}}}},{{"request_put":{{"key":"{key_foo}"}}}}]}}"#
            ),
        ),
        shape(
            "deleterange one key with prev_kv",
            "/v3/kv/deleterange",
            &format!(r#"{{"key":"{}","prev_kv":true}}"#, b64("dir/c")),
        ),
        shape("compaction", "/v3/kv/compaction", r#"{"revision":"4"}"#),
        shape(
            "error: range at a compacted revision",
            "/v3/kv/range",
            &format!(r#"{{"key":"{key_foo}","revision":"3"}}"#),
        ),
        shape(
            "error: compaction at a compacted revision",
            "/v3/kv/compaction",
            r#"{"revision":"3"}"#,
        ),
        shape(
            "error: compaction at a future revision",
            "/v3/kv/compaction",
            r#"{"revision":"1000"}"#,
        ),
        shape(
            "lease grant with a chosen ID",
            "/v3/lease/grant",
            r#"{"TTL":"60","ID":"4242"}"#,
        ),
        // 3.4 answers 412 for FailedPrecondition, 3.5 answers 400.
        etcd35_only(shape(
            "error: lease grant of an existing ID",
            "/v3/lease/grant",
            r#"{"TTL":"60","ID":"4242"}"#,
        )),
        shape(
            "put with lease",
            "/v3/kv/put",
            &format!(
                r#"{{"key":"{}","value":"eA==","lease":"4242"}}"#,
                b64("leased")
            ),
        ),
        shape(
            "error: put with an unknown lease",
            "/v3/kv/put",
            &format!(r#"{{"key":"{}","lease":"777"}}"#, b64("leased")),
        ),
        shape(
            "lease timetolive with keys",
            "/v3/lease/timetolive",
            r#"{"ID":"4242","keys":true}"#,
        ),
        shape(
            "lease timetolive (kv/ path)",
            "/v3/kv/lease/timetolive",
            r#"{"ID":4242}"#,
        ),
        shape(
            "lease timetolive of an unknown lease",
            "/v3/lease/timetolive",
            r#"{"ID":"777"}"#,
        ),
        shape("lease leases", "/v3/lease/leases", "{}"),
        shape("lease leases (kv/ path)", "/v3/kv/lease/leases", ""),
        shape(
            "lease keepalive (a stream of one)",
            "/v3/lease/keepalive",
            r#"{"ID":"4242"}"#,
        ),
        shape("lease revoke", "/v3/lease/revoke", r#"{"ID":"4242"}"#),
        shape(
            "lease keepalive of a revoked lease",
            "/v3/lease/keepalive",
            r#"{"ID":"4242"}"#,
        ),
        shape(
            "error: lease revoke of a revoked lease (kv/ path)",
            "/v3/kv/lease/revoke",
            r#"{"ID":"4242"}"#,
        ),
        shape(
            "range: the leased key went with its lease",
            "/v3/kv/range",
            &format!(r#"{{"key":"{}"}}"#, b64("leased")),
        ),
        shape(
            "deleterange a prefix",
            "/v3/kv/deleterange",
            &format!(r#"{{"key":"{dir}","range_end":"{dir_end}"}}"#),
        ),
        shape("member list", "/v3/cluster/member/list", "{}"),
        shape(
            "error: member remove of an unknown member",
            "/v3/cluster/member/remove",
            r#"{"ID":"12345"}"#,
        ),
        shape(
            "error: member promote of an unknown member",
            "/v3/cluster/member/promote",
            r#"{"ID":"12345"}"#,
        ),
        shape(
            "maintenance status (empty body)",
            "/v3/maintenance/status",
            "",
        ),
        // 3.4 answers `{}`, 3.5 a header.
        etcd35_only(shape(
            "alarm list",
            "/v3/maintenance/alarm",
            r#"{"action":"GET"}"#,
        )),
        shape(
            "v3beta prefix",
            "/v3beta/kv/range",
            &format!(r#"{{"key":"{key_foo}"}}"#),
        ),
    ];
    for (name, method, path) in [
        ("v3alpha is not served", "POST", "/v3alpha/kv/range"),
        ("GET is not allowed", "GET", "/v3/kv/range"),
        (
            "OPTIONS (CORS preflight) is answered",
            "OPTIONS",
            "/v3/kv/range",
        ),
        ("unknown RPC path", "POST", "/v3/kv/nope"),
        (
            "HashKV has no path of its own",
            "POST",
            "/v3/maintenance/hashkv",
        ),
    ] {
        shapes.push(Shape {
            name,
            method,
            path,
            body: String::new(),
            compare: Compare::StatusOnly,
        });
    }
    shapes
}

struct Servers {
    qetcd: Member,
    etcd34: Member,
    etcd35: Member,
}

fn start() -> Option<Servers> {
    if !Binary::Etcd.available() {
        eprintln!("skipped: Debian's etcd (etcd-server) is not installed");
        return None;
    }
    // The same member name everywhere, so that nothing but IDs and URLs differ.
    let spec = || MemberSpec::new("gateway");
    Some(Servers {
        qetcd: Member::start(Binary::Qetcd, spec()),
        etcd34: Member::start(Binary::Etcd, spec()),
        etcd35: Member::start(Binary::Etcd35, spec()),
    })
}

#[test]
fn json_answers_match_etcd_34_and_35() {
    let Some(servers) = start() else { return };
    let mut differences = Vec::new();
    let shapes = table();
    assert!(shapes.len() >= 30);
    for s in &shapes {
        let q = call(&servers.qetcd.client_url(), s.method, s.path, &s.body);
        let e34 = call(&servers.etcd34.client_url(), s.method, s.path, &s.body);
        let e35 = call(&servers.etcd35.client_url(), s.method, s.path, &s.body);
        let refs: Vec<(&str, &(u16, String))> = match s.compare {
            Compare::Etcd35Only => vec![("etcd 3.5", &e35)],
            _ => vec![("etcd 3.4", &e34), ("etcd 3.5", &e35)],
        };
        for (who, reference) in refs {
            let same = q.0 == reference.0
                && (s.compare == Compare::StatusOnly
                    || masked_lines(&lines(&q.1)) == masked_lines(&lines(&reference.1)));
            if !same {
                differences.push(format!(
                    "{}: {} {} {}\n  qetcd:    {} {}\n  {who}: {} {}",
                    s.name, s.method, s.path, s.body, q.0, q.1, reference.0, reference.1
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} request shapes differ:\n{}",
        differences.len(),
        shapes.len(),
        differences.join("\n")
    );
}

fn lines(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// A watch with prev_kv, a progress request in the same body, then two writes: the
/// same stream of `{"result":...}` lines from all three; and a watch from a compacted
/// revision is cancelled the same way.
#[test]
fn watch_stream_matches_etcd() {
    let Some(servers) = start() else { return };
    let key = b64("w");
    let mut streams = Vec::new();
    for m in [&servers.qetcd, &servers.etcd34, &servers.etcd35] {
        let base = m.client_url();
        call(
            &base,
            "POST",
            "/v3/kv/put",
            &format!(r#"{{"key":"{key}","value":"MA=="}}"#),
        );
        let watch = Stream::open(
            &base,
            "/v3/watch",
            &format!(
                r#"{{"create_request":{{"key":"{key}","prev_kv":true}}}} {{"progress_request":{{}}}}"#
            ),
        );
        let mut got = watch.take(2, "created and progress");
        for value in ["MQ==", "Mg=="] {
            call(
                &base,
                "POST",
                "/v3/kv/put",
                &format!(r#"{{"key":"{key}","value":"{value}"}}"#),
            );
        }
        call(&base, "POST", "/v3/kv/compaction", r#"{"revision":"3"}"#);
        got.extend(watch.take(2, "the two puts"));
        let compacted = Stream::open(
            &base,
            "/v3/watch",
            &format!(r#"{{"create_request":{{"key":"{key}","start_revision":"2"}}}}"#),
        );
        got.extend(compacted.take(2, "created and cancelled"));
        streams.push((m.binary, masked_lines(&got), got));
    }
    let (_, qetcd, raw) = &streams[0];
    for (binary, reference, reference_raw) in &streams[1..] {
        assert_eq!(
            qetcd, reference,
            "qetcd's watch stream differs from {binary:?}'s:\n{raw:#?}\n{reference_raw:#?}"
        );
    }
}

/// The gateway shares the client listener's TLS and its client-certificate rule: with
/// `--trusted-ca-file`, a request without a certificate from that CA gets no answer.
#[test]
fn gateway_over_tls_requires_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "client-ca");
    let mut spec = MemberSpec::new("gateway-tls");
    let client = ca.issue("client", &LeafSpec::client("root"));
    ca.serve_clients(&mut spec, &client);
    let member = Member::start(Binary::Qetcd, spec);
    let curl = |with_cert: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "30", "-w", "\n%{http_code}", "--cacert"])
            .arg(&ca.cert);
        if with_cert {
            cmd.arg("--cert")
                .arg(&client.cert)
                .arg("--key")
                .arg(&client.key);
        }
        let out = cmd
            .args(["-X", "POST", "--data-binary"])
            .arg(format!(
                r#"{{"key":"{}","value":"{}"}}"#,
                b64("tls"),
                b64("yes")
            ))
            .arg(format!("{}/v3/kv/put", member.client_url()))
            .output()
            .expect("run curl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, said) = curl(true);
    assert!(
        ok && said.ends_with("\n200"),
        "put over TLS with a certificate: {said}"
    );
    let (ok, said) = curl(false);
    assert!(
        !ok,
        "a request without a client certificate was answered: {said}"
    );
    let got = member.etcdctl().run(&["get", "tls", "--print-value-only"]);
    assert_eq!(got.ok().trim(), "yes");
}
