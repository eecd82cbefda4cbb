//! Parsing and validation, checked against what etcd 3.4 (Debian's) prints.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse_with(
    args: &[&str],
    environment: &[(&str, &str)],
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut full = vec!["qetcd"];
    full.extend_from_slice(args);
    match Config::parse(full, &env(environment))? {
        Parsed::Run { config, warnings } => Ok((*config, warnings)),
        _ => panic!("expected a configuration"),
    }
}

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    parse_with(args, &[]).map(|(c, _)| c)
}

/// Parse, then validate as a new member would be.
fn start(args: &[&str]) -> Result<Config, ConfigError> {
    let c = parse(args)?;
    c.validate()?;
    c.validate_new_cluster()?;
    Ok(c)
}

fn err(r: Result<Config, ConfigError>) -> (String, i32) {
    let e = r.expect_err("configuration should be refused");
    (e.to_string(), e.exit_code())
}

#[test]
fn bare_defaults_are_etcds() {
    let c = start(&[]).unwrap();
    assert_eq!(c.name, "default");
    assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
    assert_eq!(
        url_string(&c.listen_client_urls[0]),
        "http://localhost:2379"
    );
    assert_eq!(
        url_string(&c.advertise_client_urls[0]),
        "http://localhost:2379"
    );
    assert_eq!(
        c.initial_cluster.to_string(),
        "default=http://localhost:2380"
    );
    assert_eq!(c.initial_cluster_token, "etcd-cluster");
    assert_eq!(c.initial_cluster_state, ClusterState::New);
    assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(c.election_ticks(), 10);
    assert_eq!(c.snapshot_count, 10_000);
    assert_eq!(c.max_request_bytes, 1_572_864);
    assert_eq!(c.max_txn_ops, 128);
    assert!(c.pre_vote);
}

#[test]
fn a_name_alone_forms_a_one_member_cluster() {
    let c = start(&["--name", "foo"]).unwrap();
    assert_eq!(c.initial_cluster.to_string(), "foo=http://localhost:2380");
    assert_eq!(c.data_dir, PathBuf::from("foo.etcd"));
}

#[test]
fn a_name_with_advertised_urls_forms_a_cluster_of_those_urls() {
    // etcd 3.4: `--name b1 --initial-advertise-peer-urls X` without --initial-cluster
    // bootstraps b1=X; with the default name the untouched default cluster mismatches.
    let c = start(&[
        "--name",
        "b1",
        "--initial-advertise-peer-urls",
        "http://127.0.6.9:2380",
    ])
    .unwrap();
    assert_eq!(c.initial_cluster.to_string(), "b1=http://127.0.6.9:2380");
    let (msg, _) = err(start(&[
        "--initial-advertise-peer-urls",
        "http://127.0.6.9:2380",
    ]));
    assert!(
        msg.starts_with("--initial-cluster has default=http://localhost:2380 but missing"),
        "{msg}"
    );
}

#[test]
fn go_flag_syntax() {
    let c = parse(&[
        "-name",
        "a",
        "--data-dir=/x",
        "-heartbeat-interval=50",
        "--pre-vote=false",
        "--auto-tls",
    ])
    .unwrap();
    assert_eq!(c.name, "a");
    assert_eq!(c.data_dir, PathBuf::from("/x"));
    assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
    assert!(!c.pre_vote);
    assert!(c.client_tls.auto_tls);
}

#[test]
fn environment_variables_set_unset_flags() {
    let (c, warnings) = parse_with(
        &["--name", "a"],
        &[
            ("ETCD_INITIAL_CLUSTER_TOKEN", "x"),
            ("ETCD_BOGUS", "1"),
            ("ETCDCTL_API", "3"),
        ],
    )
    .unwrap();
    assert_eq!(c.initial_cluster_token, "x");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("unrecognized environment variable ETCD_BOGUS")),
        "{warnings:?}"
    );
    assert!(!warnings.iter().any(|w| w.contains("ETCDCTL")));
}

#[test]
fn flag_and_environment_for_one_option_is_fatal() {
    let e = parse_with(&["--name", "b"], &[("ETCD_NAME", "a")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
    );
    assert_eq!(e.exit_code(), 1);
    // Even an empty variable conflicts; alone, an empty one is ignored.
    assert!(parse_with(&["--name", "b"], &[("ETCD_NAME", "")]).is_err());
    let (c, _) = parse_with(&[], &[("ETCD_NAME", "")]).unwrap();
    assert_eq!(c.name, "default");
}

#[test]
fn bad_environment_values_name_the_variable() {
    let e = parse_with(&[], &[("ETCD_HEARTBEAT_INTERVAL", "abc")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid value \"abc\" for ETCD_HEARTBEAT_INTERVAL: parse error"
    );
    assert_eq!(e.exit_code(), 1);
}

#[test]
fn url_grammar_errors_are_flag_errors() {
    assert_eq!(
        err(parse(&["--initial-advertise-peer-urls", "http://10.0.0.1:2380/"])),
        (
            "invalid value \"http://10.0.0.1:2380/\" for flag -initial-advertise-peer-urls: URL must not contain a path: http://10.0.0.1:2380/".into(),
            2
        )
    );
    assert_eq!(
        err(parse(&["--initial-advertise-peer-urls", "ftp://1.2.3.4:5"])),
        (
            "invalid value \"ftp://1.2.3.4:5\" for flag -initial-advertise-peer-urls: URL scheme must be http, https, unix, or unixs: ftp://1.2.3.4:5".into(),
            2
        )
    );
    let (msg, code) = err(parse(&["--listen-client-urls", "http://127.0.0.1"]));
    assert!(
        msg.contains("URL address does not have the form \"host:port\""),
        "{msg}"
    );
    assert_eq!(code, 2);
}

#[test]
fn unknown_flags_and_bad_state() {
    assert_eq!(
        err(parse(&["--bogus"])),
        ("flag provided but not defined: -bogus".into(), 2)
    );
    let (msg, code) = err(parse(&["--initial-cluster-state", "foo"]));
    assert!(
        msg.starts_with("invalid value \"foo\" for flag -initial-cluster-state"),
        "{msg}"
    );
    assert_eq!(code, 2);
}

#[test]
fn listen_urls_must_be_ips() {
    assert_eq!(
        err(start(&["--listen-peer-urls", "http://myhost:2380"])),
        (
            "expected IP in URL for binding (http://myhost:2380)".into(),
            1
        )
    );
}

#[test]
fn advertise_client_urls_required_with_listen() {
    assert_eq!(
        err(start(&["--listen-client-urls", "http://127.0.0.1:2379"])),
        (
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                .into(),
            1
        )
    );
    // From the environment it counts as set too.
    let (c, _) = parse_with(&[], &[("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:2379")]).unwrap();
    assert!(c.validate().is_err());
}

#[test]
fn timing_rules() {
    assert_eq!(
        err(start(&["--heartbeat-interval", "0"])),
        ("--heartbeat-interval must be >0 (set to 0ms)".into(), 1)
    );
    assert_eq!(
        err(start(&["--election-timeout", "0"])),
        ("--election-timeout must be >0 (set to 0ms)".into(), 1)
    );
    assert_eq!(
        err(start(&["--election-timeout", "400", "--heartbeat-interval", "100"])),
        ("--election-timeout[400ms] should be at least as 5 times as --heartbeat-interval[100ms]".into(), 1)
    );
    assert_eq!(
        err(start(&["--election-timeout", "60000"])),
        (
            "--election-timeout[60000ms] is too long, and should be set less than 50000ms".into(),
            1
        )
    );
}

#[test]
fn initial_cluster_membership_rules() {
    assert_eq!(
        err(start(&[
            "--name",
            "x",
            "--initial-cluster",
            "y=http://localhost:2380"
        ])),
        (
            "couldn't find local name \"x\" in the initial cluster configuration".into(),
            1
        )
    );
    let (msg, _) = err(start(&[
        "--initial-cluster",
        "default=http://127.0.0.1:2380",
    ]));
    assert!(
        msg.starts_with("--initial-cluster has default=http://127.0.0.1:2380 but missing from --initial-advertise-peer-urls=http://localhost:2380"),
        "{msg}"
    );
    let (msg, _) = err(start(&[
        "--name",
        "a",
        "--initial-advertise-peer-urls",
        "http://127.0.9.1:2380,http://127.0.9.2:2380",
        "--initial-cluster",
        "a=http://127.0.9.1:2380",
    ]));
    assert_eq!(
        msg,
        "--initial-advertise-peer-urls has http://127.0.9.2:2380 but missing from --initial-cluster=a=http://127.0.9.1:2380,a=http://127.0.9.2:2380"
    );
    assert_eq!(
        err(start(&[
            "--name",
            "a",
            "--initial-advertise-peer-urls",
            "http://127.0.9.1:2380",
            "--initial-cluster",
            "a=http://127.0.9.1:2380,b=http://127.0.9.1:2380",
        ])),
        (
            "initial cluster a=http://127.0.9.1:2380,b=http://127.0.9.1:2380 has duplicate url"
                .into(),
            1
        )
    );
}

#[test]
fn the_seeds_flags_parse_and_validate() {
    let c = start(&[
        "--name",
        "infra0",
        "--initial-advertise-peer-urls",
        "http://10.0.1.10:2380",
        "--listen-peer-urls",
        "http://10.0.1.10:2380",
        "--listen-client-urls",
        "http://10.0.1.10:2379,http://127.0.0.1:2379",
        "--advertise-client-urls",
        "http://10.0.1.10:2379",
        "--initial-cluster-token",
        "etcd-cluster-1",
        "--initial-cluster",
        "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra2=http://10.0.1.12:2380",
        "--initial-cluster-state",
        "new",
    ])
    .unwrap();
    let ids: Vec<u64> = c
        .initial_cluster
        .iter()
        .map(|(_, urls)| member_id(urls, &c.initial_cluster_token, None))
        .collect();
    assert_eq!(
        ids,
        [0x140fedbeeb74765d, 0xd5dc5f8d75d04e29, 0x8a0a11c6194fc77]
    );
    assert_eq!(c.listen_client_urls.len(), 2);
}

#[test]
fn multiple_bootstrap_sources_conflict() {
    let (msg, code) = err(start(&[
        "--initial-cluster",
        "default=http://localhost:2380",
        "--discovery-srv",
        "example.com",
    ]));
    assert!(
        msg.starts_with("multiple discovery or bootstrap flags are set"),
        "{msg}"
    );
    assert_eq!(code, 1);
    let (msg, _) = err(start(&["--discovery-token", "t"]));
    assert_eq!(
        msg,
        "both --discovery-token and --discovery-endpoints must be set"
    );
}

#[test]
fn https_needs_certificates() {
    let (msg, _) = err(start(&[
        "--listen-client-urls",
        "https://127.0.0.1:2379",
        "--advertise-client-urls",
        "https://127.0.0.1:2379",
    ]));
    assert_eq!(
        msg,
        "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"
    );
}

#[test]
fn help_and_version() {
    match Config::parse(["qetcd", "--help"], &[]).unwrap() {
        Parsed::Help(text) => {
            assert!(text.contains("--initial-cluster-token"));
            assert!(text.contains("ETCD_INITIAL_CLUSTER_TOKEN"));
        }
        _ => panic!("expected help"),
    }
    assert!(matches!(
        Config::parse(["qetcd", "--version"], &[]).unwrap(),
        Parsed::Version
    ));
}

#[test]
fn discovery_fallback_proxy_is_refused_as_etcd_3_6_does() {
    let (msg, code) = err(start(&[
        "--discovery",
        "http://127.0.0.1:2379/v2/keys/_etcd/registry/t",
        "--discovery-fallback",
        "proxy",
    ]));
    assert_eq!(
        msg,
        "v2 proxy is deprecated, and --discovery-fallback can't be configured as \"proxy\""
    );
    assert_eq!(code, 1);
    let (msg, _) = err(start(&["--discovery-fallback", "later"]));
    assert!(
        msg.contains("valid values are \"exit\" or \"proxy\""),
        "{msg}"
    );
    let c = parse(&[
        "--name",
        "a",
        "--discovery",
        "http://127.0.0.1:2379/v2/keys/_etcd/registry/t",
        "--discovery-proxy",
        "127.0.0.1:3128",
        "--enable-v2",
    ])
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.discovery_fallback, "exit");
    assert_eq!(c.discovery_proxy, "127.0.0.1:3128");
    assert!(c.enable_v2);
    assert!(
        c.initial_cluster.is_empty(),
        "--discovery replaces the default initial cluster"
    );
}

#[test]
fn v3_discovery_flags_and_their_environment_twins() {
    let (c, _) = parse_with(
        &[
            "--name",
            "a",
            "--discovery-token",
            "tok",
            "--discovery-endpoints",
            "http://127.0.0.1:2379",
            "--discovery-dial-timeout",
            "3s",
        ],
        &[
            ("ETCD_DISCOVERY_USER", "root:pw"),
            ("ETCD_DISCOVERY_INSECURE_TRANSPORT", "false"),
            ("ETCD_DISCOVERY_CACERT", "/etc/ca.pem"),
        ],
    )
    .unwrap();
    c.validate().unwrap();
    let d = &c.discovery_client;
    assert_eq!(d.dial_timeout, Duration::from_secs(3));
    assert_eq!(d.request_timeout, Duration::from_secs(5));
    assert_eq!(d.keepalive_time, Duration::from_secs(2));
    assert_eq!(d.keepalive_timeout, Duration::from_secs(6));
    assert!(!d.insecure_transport);
    assert!(!d.insecure_skip_tls_verify);
    assert_eq!(d.user, "root:pw");
    assert_eq!(d.cacert, "/etc/ca.pem");
    assert!(c.initial_cluster.is_empty());
    let (msg, _) = err(start(&[
        "--discovery-token",
        "tok",
        "--discovery-endpoints",
        "http://127.0.0.1:2379",
        "--discovery",
        "http://127.0.0.1:2379/v2/keys/x",
    ]));
    assert!(
        msg.starts_with("multiple discovery or bootstrap flags are set"),
        "{msg}"
    );
}

#[test]
fn backend_quota_is_read_as_etcd_reads_it() {
    use super::backend_quota;
    assert_eq!(backend_quota(0), Some(2 << 30));
    assert_eq!(backend_quota(-1), None);
    assert_eq!(backend_quota(16 << 20), Some(16 << 20));
    assert_eq!(
        backend_quota(10 << 30),
        Some(10 << 30),
        "warned about, not refused"
    );
}

#[test]
fn logging_and_metrics_flags() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.log_outputs, vec![LogOutput::Stderr]);
    assert_eq!(c.metrics, crate::metrics::MetricsLevel::Basic);
    let c = parse_with(
        &["--log-outputs", "stdout,/var/log/q.log,stdout"],
        &[
            ("ETCD_LOG_FORMAT", "console"),
            ("ETCD_METRICS", "extensive"),
        ],
    )
    .unwrap()
    .0;
    assert_eq!(c.log_format, LogFormat::Console);
    assert_eq!(
        c.log_outputs,
        vec![
            LogOutput::Stdout,
            LogOutput::File(PathBuf::from("/var/log/q.log"))
        ]
    );
    assert_eq!(c.metrics, crate::metrics::MetricsLevel::Extensive);
    assert_eq!(
        parse(&["--log-outputs", "systemd/journal"])
            .unwrap()
            .log_outputs,
        vec![LogOutput::Journal]
    );
    assert_eq!(
        err(parse(&["--log-outputs", "stderr,default"])).0,
        "multi logoutput for \"default\" is not supported yet"
    );
    assert_eq!(
        err(parse(&["--log-outputs", "systemd/journal,stderr"])).0,
        "running with systemd/journal but other '--log-outputs' values ([\"systemd/journal\" \"stderr\"]) are configured with 'default'; override 'default' value with something else"
    );
    assert_eq!(
        err(parse(&["--log-format", "xml"])).0,
        "unknown log format: xml, supported values json, console"
    );
    assert_eq!(
        err(parse(&["--logger", "capnslog"])).0,
        "--logger=capnslog is removed in v3.5"
    );
    let (text, code) = err(parse(&["--metrics", "all"]));
    assert_eq!(code, 2);
    assert!(text.contains("for flag -metrics"), "{text}");
}

#[test]
fn corruption_check_flags_and_their_environment_twins() {
    let c = start(&[]).unwrap();
    assert!(!c.initial_corrupt_check, "etcd's default: no initial check");
    assert_eq!(c.corrupt_check_time, Duration::ZERO, "etcd's default: off");

    let c = start(&[
        "--experimental-initial-corrupt-check",
        "--experimental-corrupt-check-time=2m30s",
    ])
    .unwrap();
    assert!(c.initial_corrupt_check);
    assert_eq!(c.corrupt_check_time, Duration::from_secs(150));

    let (c, _) = parse_with(
        &[],
        &[
            ("ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", "true"),
            ("ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", "500ms"),
        ],
    )
    .unwrap();
    assert!(c.initial_corrupt_check);
    assert_eq!(c.corrupt_check_time, Duration::from_millis(500));

    assert_eq!(
        err(parse(&["--experimental-corrupt-check-time", "10"])),
        (
            "invalid value \"10\" for flag -experimental-corrupt-check-time: parse error".into(),
            2
        )
    );
    assert_eq!(
        err(parse(&["--experimental-initial-corrupt-check=yes"])),
        (
            "invalid value \"yes\" for flag -experimental-initial-corrupt-check: parse error"
                .into(),
            2
        )
    );
    let refused = parse_with(&[], &[("ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", "often")])
        .expect_err("a bad duration in the environment is refused");
    assert!(
        refused
            .to_string()
            .contains("ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME"),
        "{refused}"
    );
}
