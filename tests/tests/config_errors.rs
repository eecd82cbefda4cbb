//! Bad configuration is refused with etcd's message and exit code, before anything is
//! written. Each case was checked against Debian's etcd 3.4; where that binary is
//! installed the same cases run against it too, to keep the expectations honest.

use std::time::Duration;

use qetcd_tests::Binary;
use qetcd_tests::member::Member;

struct Case {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    code: i32,
    message: &'static str,
}

const CASES: &[Case] = &[
    Case {
        args: &["--listen-peer-urls", "http://myhost:2380"],
        env: &[],
        code: 1,
        message: "expected IP in URL for binding (http://myhost:2380)",
    },
    Case {
        args: &["--initial-advertise-peer-urls", "http://10.0.0.1:2380/"],
        env: &[],
        code: 2,
        message: "invalid value \"http://10.0.0.1:2380/\" for flag -initial-advertise-peer-urls: URL must not contain a path: http://10.0.0.1:2380/",
    },
    Case {
        args: &["--initial-advertise-peer-urls", "ftp://1.2.3.4:5"],
        env: &[],
        code: 2,
        message: "URL scheme must be http, https, unix, or unixs: ftp://1.2.3.4:5",
    },
    Case {
        args: &["--listen-client-urls", "http://127.0.0.1"],
        env: &[],
        code: 2,
        message: "URL address does not have the form \"host:port\": http://127.0.0.1",
    },
    Case {
        args: &["--listen-client-urls", "http://127.0.0.1:23790"],
        env: &[],
        code: 1,
        message: "--advertise-client-urls is required when --listen-client-urls is set explicitly",
    },
    Case {
        args: &[
            "--name",
            "x",
            "--initial-cluster",
            "y=http://localhost:2380",
        ],
        env: &[],
        code: 1,
        message: "couldn't find local name \"x\" in the initial cluster configuration",
    },
    Case {
        args: &["--initial-cluster", "default=http://127.0.0.1:2380"],
        env: &[],
        code: 1,
        message: "--initial-cluster has default=http://127.0.0.1:2380 but missing from --initial-advertise-peer-urls=http://localhost:2380",
    },
    Case {
        args: &[
            "--name",
            "a",
            "--listen-peer-urls",
            "http://127.0.0.1:23800",
            "--initial-advertise-peer-urls",
            "http://127.0.9.1:2380",
            "--initial-cluster",
            "a=http://127.0.9.1:2380,b=http://127.0.9.1:2380",
        ],
        env: &[],
        code: 1,
        message: "initial cluster a=http://127.0.9.1:2380,b=http://127.0.9.1:2380 has duplicate url",
    },
    Case {
        args: &["--heartbeat-interval", "0"],
        env: &[],
        code: 1,
        message: "--heartbeat-interval must be >0 (set to 0ms)",
    },
    Case {
        args: &["--election-timeout", "400", "--heartbeat-interval", "100"],
        env: &[],
        code: 1,
        message: "--election-timeout[400ms] should be at least as 5 times as --heartbeat-interval[100ms]",
    },
    Case {
        args: &["--election-timeout", "60000"],
        env: &[],
        code: 1,
        message: "--election-timeout[60000ms] is too long, and should be set less than 50000ms",
    },
    Case {
        args: &["--name", "b"],
        env: &[("ETCD_NAME", "a")],
        code: 1,
        message: "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)",
    },
    Case {
        args: &[],
        env: &[("ETCD_HEARTBEAT_INTERVAL", "abc")],
        code: 1,
        message: "invalid value \"abc\" for ETCD_HEARTBEAT_INTERVAL: parse error",
    },
    Case {
        args: &["--initial-cluster-state", "foo"],
        env: &[],
        code: 2,
        message: "invalid value \"foo\" for flag -initial-cluster-state",
    },
    Case {
        args: &["--bogus"],
        env: &[],
        code: 2,
        message: "flag provided but not defined: -bogus",
    },
    Case {
        args: &[
            "--listen-client-urls",
            "https://127.0.0.1:2379",
            "--advertise-client-urls",
            "https://127.0.0.1:2379",
        ],
        env: &[],
        code: 1,
        message: "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme",
    },
    Case {
        args: &["--cipher-suites", "TLS_BOGUS"],
        env: &[],
        code: 1,
        message: "unexpected TLS cipher suite \"TLS_BOGUS\"",
    },
];

/// Checks of flags Debian's etcd 3.4 does not have, or where qetcd says more.
const QETCD_ONLY: &[Case] = &[
    Case {
        args: &[
            "--peer-cert-allowed-cn",
            "a",
            "--peer-cert-allowed-hostname",
            "b",
        ],
        env: &[],
        code: 1,
        message: "AllowedCNs and AllowedHostnames are mutually exclusive (cns=[\"a\"], hostnames=[\"b\"])",
    },
    Case {
        args: &["--auto-tls", "--self-signed-cert-validity", "0"],
        env: &[],
        code: 1,
        message: "selfSignedCertValidity is invalid,it should be greater than 0",
    },
    Case {
        // A suite Go knows but rustls deliberately lacks: refused by name, not dropped.
        args: &["--cipher-suites", "TLS_RSA_WITH_AES_128_CBC_SHA"],
        env: &[],
        code: 1,
        message: "TLS cipher suite \"TLS_RSA_WITH_AES_128_CBC_SHA\" is not supported by qetcd's TLS library",
    },
    Case {
        args: &[
            "--listen-peer-urls",
            "https://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "https://127.0.0.1:2380",
            "--initial-cluster",
            "default=https://127.0.0.1:2380",
        ],
        env: &[],
        code: 1,
        message: "cannot listen on TLS for 127.0.0.1:2380: KeyFile and CertFile are not presented",
    },
    Case {
        args: &["--peer-client-cert-file", "/x.crt"],
        env: &[],
        code: 1,
        message: "ClientKeyFile and ClientCertFile must both be present or both absent",
    },
];

fn check(binary: Binary) {
    check_cases(binary, CASES);
}

fn check_cases(binary: Binary, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let (code, log) = Member::run_to_exit(binary, case.args, case.env, Duration::from_secs(10));
        if code != Some(case.code) || !log.contains(case.message) {
            failures.push(format!(
                "{:?} {:?}: expected exit {} with {:?}, got {:?}:\n{log}",
                case.args, case.env, case.code, case.message, code
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn qetcd_refuses_bad_configuration_like_etcd() {
    check(Binary::Qetcd);
    check_cases(Binary::Qetcd, QETCD_ONLY);
}

#[test]
fn the_expectations_hold_for_real_etcd() {
    if !Binary::Etcd.available() {
        eprintln!("SKIPPED: /usr/bin/etcd is not installed");
        return;
    }
    check(Binary::Etcd);
}

#[test]
fn unknown_etcd_variables_warn_and_startup_continues() {
    let mut spec = qetcd_tests::MemberSpec::new("warned");
    spec.env.push(("ETCD_BOGUS".into(), "1".into()));
    let m = Member::start(Binary::Qetcd, spec);
    assert!(
        m.logs()
            .contains("unrecognized environment variable ETCD_BOGUS"),
        "{}",
        m.logs()
    );
}

#[test]
fn nothing_is_written_for_a_refused_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let data_arg = data.display().to_string();
    let (code, _) = Member::run_to_exit(
        Binary::Qetcd,
        &["--data-dir", &data_arg, "--heartbeat-interval", "0"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1));
    assert!(
        !data.exists(),
        "a refused configuration must not create the data directory"
    );
}
