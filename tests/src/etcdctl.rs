//! Debian's `etcdctl` (v3 API) against a set of endpoints.

use std::io::Write;
use std::process::{Command, Stdio};

/// Debian's etcdctl (package etcd-client), by absolute path: a PATH lookup finds
/// whichever etcdctl was installed last (a pip-installed etcd 3.5 shadows it, and offers
/// only TLS 1.2), so the client under test would change under a running suite.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// What one etcdctl run printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout, after asserting the command succeeded.
    pub fn ok(&self) -> &str {
        assert!(self.success, "etcdctl failed: {self:#?}");
        &self.stdout
    }

    /// Parsed `-w json` output, after asserting success.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("etcdctl printed no JSON ({e}): {self:#?}"))
    }
}

#[derive(Debug, Clone)]
pub struct Etcdctl {
    endpoints: String,
    global_args: Vec<String>,
}

impl Etcdctl {
    pub fn new(endpoints: &str) -> Self {
        Etcdctl {
            endpoints: endpoints.to_string(),
            global_args: Vec::new(),
        }
    }

    /// The same client with more global flags (TLS material and the like).
    pub fn with_args(mut self, args: &[String]) -> Self {
        self.global_args.extend(args.iter().cloned());
        self
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    /// A membership change, asked again while the cluster answers `etcdserver:
    /// unhealthy cluster`: with `--strict-reconfig-check` (on by default) a member
    /// refuses changes until its peers have been connected for 5 s, as etcd does, so
    /// a cluster that has just started (or just grown) needs a moment. Other answers
    /// are returned as they are; gives up after 30 s.
    pub fn run_reconfig(&self, args: &[&str]) -> Output {
        let mut last = None;
        let settled = crate::wait::wait_until(
            "the cluster to accept a membership change",
            std::time::Duration::from_secs(30),
            || {
                let out = self.run(args);
                if out.stderr.contains("etcdserver: unhealthy cluster") {
                    last = Some(out);
                    None
                } else {
                    Some(out)
                }
            },
        );
        settled.unwrap_or_else(|_| last.expect("at least one attempt"))
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.endpoints)
            .arg("--command-timeout=10s")
            .args(&self.global_args)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl is installed (Debian package etcd-client)");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin piped");
            pipe.write_all(input.as_bytes())
                .expect("write etcdctl stdin");
        }
        let out = child.wait_with_output().expect("etcdctl runs");
        Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Decodes standard base64, as etcdctl's JSON output encodes keys and values.
pub fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .unwrap_or_else(|| panic!("not base64: {s:?}")) as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}
