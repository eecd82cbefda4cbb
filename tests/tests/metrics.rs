//! `/metrics` and the log lines, as an operator's tooling reads them: the metrics
//! parsed with a strict Prometheus text-format parser (below; it refuses malformed
//! lines), etcd's names there with values that follow the cluster (proposals committed
//! after puts, a leader, then none on a member cut off from its peers), on the client
//! URL and on `--listen-metrics-urls`; and every log line JSON with etcd's keys, or
//! console lines in a file with `--log-format console --log-outputs`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use qetcd_tests::member::http_get;
use qetcd_tests::{Binary, Cluster, Member, MemberSpec, wait_until};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape: samples and the declared type of each family.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Go's float syntax as Prometheus writes it: decimal, exponent, `+Inf`, `-Inf`, `NaN`.
fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        t if t
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')) =>
        {
            t.parse().map_err(|_| format!("bad value {t:?}"))
        }
        t => Err(format!("bad value {t:?}")),
    }
}

/// The family a sample belongs to, given the declared types (histogram and summary
/// samples carry suffixes).
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
        {
            return Some(base);
        }
    }
    None
}

/// Prometheus's text format 0.0.4, strictly: `# HELP`/`# TYPE` before a family's
/// samples, known types, valid names, quoted and escaped label values, no duplicate
/// label names or series, a parsable value (and optional integer timestamp), every
/// sample of a declared family, `le` on histogram buckets.
fn parse_exposition(text: &str) -> Result<Scrape, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let err = |what: String| format!("line {}: {what}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("HELP") => {
                    let name = parts
                        .next()
                        .ok_or_else(|| err("HELP without name".into()))?;
                    if !valid_metric_name(name) {
                        return Err(err("bad metric name".into()));
                    }
                }
                Some("TYPE") => {
                    let name = parts
                        .next()
                        .ok_or_else(|| err("TYPE without name".into()))?;
                    let kind = parts
                        .next()
                        .ok_or_else(|| err("TYPE without type".into()))?;
                    if !valid_metric_name(name) {
                        return Err(err("bad metric name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(err(format!("unknown type {kind}")));
                    }
                    if samples.iter().any(|s: &Sample| {
                        family_of(
                            &s.name,
                            &HashMap::from([(name.to_string(), kind.to_string())]),
                        )
                        .is_some()
                    }) {
                        return Err(err("TYPE after the family's samples".into()));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(err("second TYPE for a family".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(err("bad metric name".into()));
        }
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(after_brace) = rest.strip_prefix('{') {
            let mut chars = after_brace.char_indices().peekable();
            let consumed: usize;
            loop {
                // Label name up to '='.
                let start = match chars.peek() {
                    Some((_, '}')) => {
                        consumed = chars.next().expect("peeked").0 + 1;
                        break;
                    }
                    Some((i, _)) => *i,
                    None => return Err(err("unterminated label set".into())),
                };
                let mut label_end = None;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        label_end = Some(i);
                        break;
                    }
                }
                let label_end = label_end.ok_or_else(|| err("label without '='".into()))?;
                let label = &after_brace[start..label_end];
                if !valid_label_name(label) {
                    return Err(err(format!("bad label name {label:?}")));
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(err("label value not quoted".into()));
                }
                let mut value = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => return Err(err(format!("bad escape {other:?}"))),
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\n' => return Err(err("newline in label value".into())),
                        c => value.push(c),
                    }
                }
                if !closed {
                    return Err(err("unterminated label value".into()));
                }
                if labels.insert(label.to_string(), value).is_some() {
                    return Err(err(format!("label {label} twice")));
                }
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => {
                        consumed = i + 1;
                        break;
                    }
                    _ => return Err(err("expected ',' or '}' after a label".into())),
                }
            }
            rest = &after_brace[consumed..];
        }
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(&err)?;
        if let Some(ts) = fields.next()
            && ts.parse::<i64>().is_err()
        {
            return Err(err("bad timestamp".into()));
        }
        if fields.next().is_some() {
            return Err(err("trailing text".into()));
        }
        let family = family_of(name, &types).ok_or_else(|| err("sample without TYPE".into()))?;
        if types[family] == "histogram" && name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(err("histogram bucket without le".into()));
        }
        if !seen.insert((name.to_string(), labels.clone())) {
            return Err(err("duplicate series".into()));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(Scrape { samples, types })
}

impl Scrape {
    /// Samples of `name` whose labels include every pair of `with`.
    fn find(&self, name: &str, with: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && with
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .collect()
    }

    /// The value of the one unlabelled sample `name`.
    fn value(&self, name: &str) -> f64 {
        let found = self.find(name, &[]);
        assert_eq!(found.len(), 1, "one {name} expected: {found:?}");
        found[0].value
    }

    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.find(name, with).iter().map(|s| s.value).sum()
    }

    fn kind(&self, family: &str) -> &str {
        self.types.get(family).map_or("missing", String::as_str)
    }

    /// A histogram's buckets (`le` → cumulative count) for one label set, checked for
    /// shape: cumulative, ending in `+Inf` equal to `_count`.
    fn histogram(&self, name: &str, with: &[(&str, &str)]) -> Vec<(f64, f64)> {
        assert_eq!(self.kind(name), "histogram", "{name}");
        let mut buckets: Vec<(f64, f64)> = self
            .find(&format!("{name}_bucket"), with)
            .iter()
            .map(|s| (parse_value(&s.labels["le"]).expect("le"), s.value))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} buckets not cumulative: {buckets:?}"
        );
        let last = buckets.last().expect("buckets");
        assert!(last.0.is_infinite(), "{name} without +Inf");
        assert_eq!(last.1, self.sum(&format!("{name}_count"), with), "{name}");
        buckets
    }
}

fn scrape(addr: &str) -> Option<Scrape> {
    let (code, body) = http_get(addr, "/metrics")?;
    if code != 200 {
        return None;
    }
    Some(parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}")))
}

fn client_addr(m: &Member) -> String {
    format!("{}:2379", m.spec.ip)
}

/// etcd's disk latency buckets: 1 ms doubling fourteen times, then +Inf.
fn etcd_disk_buckets() -> Vec<f64> {
    let mut b: Vec<f64> = (0..14).map(|i| 0.001 * f64::powi(2.0, i)).collect();
    b.push(f64::INFINITY);
    b
}

fn same_bounds(buckets: &[(f64, f64)], expected: &[f64]) -> bool {
    buckets.len() == expected.len()
        && buckets
            .iter()
            .zip(expected)
            .all(|((le, _), e)| (le - e).abs() <= e.abs() * 1e-9 || le == e)
}

#[test]
fn the_parser_refuses_malformed_exposition() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n";
    let parsed = parse_exposition(good).expect("good text");
    assert_eq!(parsed.samples[0].labels["y"], "q\"");
    for bad in [
        "# TYPE a counter\na 1 2 3\n",               // trailing text
        "# TYPE a counter\na{x=\"1\" 1\n",           // unterminated label set
        "# TYPE a counter\na{x=1} 1\n",              // unquoted value
        "# TYPE a counter\na{x=\"1} 1\n",            // unterminated value
        "# TYPE a counter\na{x=\"\\q\"} 1\n",        // bad escape
        "# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n",  // repeated label
        "# TYPE a counter\na one\n",                 // bad value
        "# TYPE a counter\na\n",                     // no value
        "b 1\n",                                     // no TYPE
        "# TYPE a counter\n1a 1\n",                  // bad name
        "# TYPE a counter\na{1x=\"1\"} 1\n",         // bad label name
        "# TYPE a wobble\na 1\n",                    // unknown type
        "# TYPE a counter\na 1\na 2\n",              // duplicate series
        "# TYPE h histogram\nh_bucket 1\n",          // bucket without le
        "# TYPE a counter\na 1\n# TYPE a counter\n", // TYPE twice / late
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

/// Three members; member 0 also serves `--listen-metrics-urls` and exports extensive
/// metrics. Figures follow puts; then the other two are killed and member 0 reports
/// no leader.
#[test]
fn metrics_follow_the_cluster_and_show_a_lost_leader() {
    let specs = Cluster::specs_with("metrics", 3, "metrics-token", |_| {});
    let metrics_addr = format!("{}:2381", specs[0].ip);
    let mut specs = specs;
    specs[0].extra_args.extend([
        "--listen-metrics-urls".to_string(),
        format!("http://{metrics_addr}"),
        "--metrics".to_string(),
        "extensive".to_string(),
    ]);
    let mut c = Cluster::start(Binary::Qetcd, specs);
    c.wait_for_leader(&[0, 1, 2]);

    // Every member: a leader known, exactly one of them leading, the version and ID.
    let wait = Duration::from_secs(60);
    let scrapes: Vec<Scrape> = c
        .members
        .iter()
        .map(|m| {
            wait_until("a leader in the metrics", wait, || {
                scrape(&client_addr(m)).filter(|s| s.value("etcd_server_has_leader") == 1.0)
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", m.logs()))
        })
        .collect();
    let leaders: f64 = scrapes
        .iter()
        .map(|s| s.value("etcd_server_is_leader"))
        .sum();
    assert_eq!(leaders, 1.0, "exactly one member leads");
    for s in &scrapes {
        assert_eq!(
            s.find("etcd_server_version", &[("server_version", "3.5.0")])
                .len(),
            1
        );
        assert_eq!(s.find("etcd_server_id", &[]).len(), 1);
        assert!(s.value("etcd_server_leader_changes_seen_total") >= 1.0);
        assert_eq!(s.kind("etcd_server_leader_changes_seen_total"), "counter");
        assert_eq!(s.kind("etcd_server_proposals_committed_total"), "gauge");
        assert_eq!(s.kind("grpc_server_handled_total"), "counter");
        assert!(s.value("process_resident_memory_bytes") > 0.0);
        assert!(s.value("process_open_fds") > 0.0);
        assert!(s.value("process_cpu_seconds_total") >= 0.0);
    }
    let before = &scrapes[0];
    let committed_before = before.value("etcd_server_proposals_committed_total");

    // Puts through member 0 move its figures.
    let puts = 20;
    for i in 0..puts {
        c.members[0]
            .etcdctl()
            .run(&["put", &format!("metrics/{i}"), "value"])
            .ok();
    }
    let after = wait_until("the puts in member 0's metrics", wait, || {
        scrape(&client_addr(&c.members[0])).filter(|s| {
            s.value("etcd_server_proposals_applied_total") >= committed_before + puts as f64
                && s.sum(
                    "grpc_server_handled_total",
                    &[("grpc_method", "Put"), ("grpc_code", "OK")],
                ) >= puts as f64
                // Peer figures are sampled every second.
                && s.find("etcd_network_peer_round_trip_time_seconds_count", &[]).len() == 2
                && s.find("etcd_network_peer_round_trip_time_seconds_count", &[])
                    .iter()
                    .all(|r| r.value > 0.0)
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.members[0].logs()));
    assert!(after.value("etcd_server_proposals_committed_total") >= committed_before + puts as f64);
    assert!(
        after.value("etcd_server_proposals_committed_total")
            >= after.value("etcd_server_proposals_applied_total")
    );
    assert_eq!(after.value("etcd_server_proposals_failed_total"), 0.0);
    assert!(after.value("etcd_server_proposals_pending") >= 0.0);
    assert!(after.value("etcd_debugging_mvcc_keys_total") >= puts as f64);
    let db = after.value("etcd_mvcc_db_total_size_in_bytes");
    let in_use = after.value("etcd_mvcc_db_total_size_in_use_in_bytes");
    assert!(db > 0.0 && in_use > 0.0 && in_use <= db, "{db} {in_use}");
    let put_labels = [
        ("grpc_type", "unary"),
        ("grpc_service", "etcdserverpb.KV"),
        ("grpc_method", "Put"),
    ];
    assert!(after.sum("grpc_server_started_total", &put_labels) >= puts as f64);
    // Extensive: handling times, one per handled Put.
    let handling = after.histogram("grpc_server_handling_seconds", &put_labels);
    assert!(handling.last().expect("+Inf").1 >= puts as f64);
    // The disk histograms with etcd's buckets, and commits observed.
    for name in [
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
    ] {
        let buckets = after.histogram(name, &[]);
        assert!(
            same_bounds(&buckets, &etcd_disk_buckets()),
            "{name}: {buckets:?}"
        );
        assert!(
            buckets.last().expect("+Inf").1 > 0.0,
            "{name} observed nothing"
        );
    }
    // Peers: a round trip per peer, labelled with its ID, and bytes both ways.
    for rtt in after.find("etcd_network_peer_round_trip_time_seconds_count", &[]) {
        let peer = rtt.labels["To"].clone();
        let buckets = after.histogram(
            "etcd_network_peer_round_trip_time_seconds",
            &[("To", &peer)],
        );
        assert_eq!(buckets.len(), 17, "etcd's 16 RTT buckets and +Inf");
        assert!(after.sum("etcd_network_peer_sent_bytes_total", &[("To", &peer)]) > 0.0);
        assert!(after.sum("etcd_network_peer_received_bytes_total", &[("From", &peer)]) > 0.0);
    }
    // Basic metrics elsewhere: no handling histograms.
    let basic = scrape(&client_addr(&c.members[1])).expect("member 1 serves /metrics");
    assert_eq!(basic.kind("grpc_server_handling_seconds"), "missing");
    // The metrics listener serves the same registry.
    let on_metrics_url = scrape(&metrics_addr).expect("metrics URL serves /metrics");
    assert!(
        on_metrics_url.value("etcd_server_proposals_applied_total")
            >= committed_before + puts as f64
    );

    // Cut member 0 off: its peers die. It loses the leader, whichever it was.
    c.members[1].kill9();
    c.members[2].kill9();
    let alone = wait_until("member 0 to report no leader", wait, || {
        scrape(&metrics_addr).filter(|s| s.value("etcd_server_has_leader") == 0.0)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.members[0].logs()));
    assert_eq!(alone.value("etcd_server_is_leader"), 0.0);

    // Every line each member logged is a JSON object with etcd's keys.
    for m in &c.members {
        assert_json_log_lines(&m.raw_logs());
    }
}

/// Each line: a JSON object whose `level`, `ts`, `caller` and `msg` are strings of
/// etcd's forms.
fn assert_json_log_lines(raw: &str) {
    let mut count = 0;
    for line in raw.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        let field = |k: &str| {
            v.get(k)
                .and_then(|f| f.as_str())
                .unwrap_or_else(|| panic!("no string {k:?} in {line}"))
                .to_string()
        };
        assert!(
            ["debug", "info", "warn", "error"].contains(&field("level").as_str()),
            "{line}"
        );
        let ts = field("ts");
        // 2006-01-02T15:04:05.000000Z
        assert!(
            ts.len() == 27 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
            "ts {ts:?}"
        );
        let caller = field("caller");
        assert!(
            caller.contains(".rs:")
                && caller
                    .rsplit(':')
                    .next()
                    .is_some_and(|l| l.parse::<u32>().is_ok()),
            "caller {caller:?}"
        );
        field("msg");
        count += 1;
    }
    assert!(count > 5, "too few log lines:\n{raw}");
}

#[test]
fn console_logs_go_to_the_listed_outputs_and_bad_logging_flags_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("qetcd.log");
    let mut spec = MemberSpec::new("console");
    spec.extra_args.extend([
        "--log-format".to_string(),
        "console".to_string(),
        "--log-outputs".to_string(),
        format!("stderr,{}", file.display()),
    ]);
    let m = Member::start(Binary::Qetcd, spec);
    let published = "published local member to cluster";
    let logged = wait_until(
        "the file output to have the publish line",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            text.contains(published).then_some(text)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", m.raw_logs()));
    for line in logged.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert!(fields.len() >= 4, "not ts, level, caller, msg: {line:?}");
        assert!(
            fields[0].ends_with('Z') && fields[0].contains('T'),
            "{line:?}"
        );
        assert!(
            ["debug", "info", "warn", "error"].contains(&fields[1]),
            "{line:?}"
        );
        if let Some(extra) = fields.get(4) {
            serde_json::from_str::<serde_json::Value>(extra)
                .unwrap_or_else(|e| panic!("fields not JSON ({e}): {line:?}"));
        }
    }
    // stderr got the same lines.
    assert!(m.raw_logs().contains(published));
    assert!(!m.raw_logs().trim_start().starts_with('{'));
    drop(m);

    for (args, expected) in [
        (
            vec!["--log-format", "xml"],
            "unknown log format: xml, supported values json, console",
        ),
        (
            vec!["--log-outputs", "default,stdout"],
            "multi logoutput for \"default\" is not supported yet",
        ),
        (
            vec!["--log-outputs", "systemd/journal,stderr"],
            "running with systemd/journal but other '--log-outputs' values",
        ),
        (
            vec!["--logger", "capnslog"],
            "--logger=capnslog is removed in v3.5",
        ),
        (vec!["--metrics", "everything"], "-metrics"),
    ] {
        let (code, out) = Member::run_to_exit(Binary::Qetcd, &args, &[], Duration::from_secs(30));
        assert!(
            matches!(code, Some(1 | 2)),
            "{args:?} exited {code:?}: {out}"
        );
        assert!(out.contains(expected), "{args:?}: {out}");
    }
}
