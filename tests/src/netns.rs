//! Hosts of our own: network namespaces on a bridge that the test creates and removes,
//! so members can use the seed's real addresses (10.0.1.10–12) without touching any
//! network outside this machine. Needs root and iproute2.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

fn ip(args: &[&str]) -> std::io::Result<Output> {
    Command::new("ip").args(args).output()
}

fn must(args: &[&str]) {
    let out = ip(args).unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the tests that need their own hosts should run. They need root and
/// iproute2; without them the tests fail, unless `QETCD_SKIP_NETNS=1` says to skip
/// them (for a developer machine without root).
pub fn required() -> bool {
    if std::env::var_os("QETCD_SKIP_NETNS").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: QETCD_SKIP_NETNS=1");
        return false;
    }
    true
}

/// A bridge with one namespace per address. Removed on drop, with everything in it.
pub struct Hosts {
    bridge: String,
    pub namespaces: Vec<String>,
    pub addresses: Vec<String>,
}

impl Hosts {
    /// One host per address, all on a fresh /24 bridge.
    pub fn create(addresses: &[&str]) -> Hosts {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut hosts = Hosts {
            bridge: format!("qbr{tag}"),
            namespaces: Vec::new(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        };
        must(&["link", "add", &hosts.bridge, "type", "bridge"]);
        must(&["link", "set", &hosts.bridge, "up"]);
        for (i, addr) in addresses.iter().enumerate() {
            let ns = format!("qetcd-{tag}-{i}");
            let (host_end, ns_end) = (format!("qh{tag}{i}"), format!("qn{tag}{i}"));
            must(&["netns", "add", &ns]);
            hosts.namespaces.push(ns.clone());
            must(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ]);
            must(&["link", "set", &ns_end, "netns", &ns]);
            must(&["link", "set", &host_end, "master", &hosts.bridge]);
            must(&["link", "set", &host_end, "up"]);
            must(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &ns_end,
            ]);
            must(&["-n", &ns, "link", "set", &ns_end, "up"]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// A command that runs inside host `i`.
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespaces[i]]).arg(program);
        c
    }

    /// Debian's etcdctl, run inside host `i`.
    pub fn etcdctl(&self, i: usize, endpoints: &str, args: &[&str]) -> crate::Output {
        let out = self
            .command(i, Path::new(crate::etcdctl::ETCDCTL))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoints, "--command-timeout=10s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec etcdctl");
        crate::Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            // Deleting the namespace removes its end of the veth pair, and with it ours.
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// A process in a namespace, killed on drop; its output goes to a file.
pub struct HostProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl HostProcess {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> HostProcess {
        let file = std::fs::File::create(&log).expect("log file");
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .expect("start process in namespace");
        HostProcess {
            child: Some(child),
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.logs());
        }
    }
}
