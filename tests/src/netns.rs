//! Hosts of our own: network namespaces on a bridge that the test creates and removes,
//! so members can use the seed's real addresses (10.0.1.10–12) without touching any
//! network outside this machine. Needs root and iproute2.
//!
//! Hosts can get a resolver of their own ([`Hosts::use_nameserver`]): a
//! `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` mounts over `/etc/resolv.conf`,
//! pointing at a [`Dnsmasq`] that runs on one of the hosts.

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
    /// Each host's end of its veth pair (inside its namespace).
    links: Vec<String>,
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
            links: Vec::new(),
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
            hosts.links.push(ns_end.clone());
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

    /// Makes every host resolve names through `nameserver` (an address on the
    /// bridge), and nothing else. Undone on drop.
    pub fn use_nameserver(&self, nameserver: &str) {
        for ns in &self.namespaces {
            let dir = netns_etc(ns);
            std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
            std::fs::write(
                dir.join("resolv.conf"),
                format!("nameserver {nameserver}\noptions timeout:1 attempts:2\n"),
            )
            .expect("write resolv.conf");
        }
    }

    /// Takes host `i` off the bridge (`up: false`: its link goes down, so nothing gets
    /// in or out) or puts it back. Whatever state it is left in goes with the hosts.
    pub fn set_link(&self, i: usize, up: bool) {
        must(&[
            "-n",
            &self.namespaces[i],
            "link",
            "set",
            &self.links[i],
            if up { "up" } else { "down" },
        ]);
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
            let _ = std::fs::remove_dir_all(netns_etc(ns));
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
    /// The logs of several processes, for a failure message.
    pub fn all_logs(processes: &[HostProcess]) -> String {
        processes
            .iter()
            .map(HostProcess::logs)
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

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

    /// What the process logged, JSON lines rendered as text (see [`crate::log_lines`]).
    pub fn logs(&self) -> String {
        crate::log_lines::readable(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// The exit status, once the process has exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
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

/// Where `ip netns exec` finds files to mount over `/etc` for namespace `ns`.
fn netns_etc(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

/// Debian's dnsmasq (`dnsmasq-base`) serving records on one host, authoritative for
/// the domains it is told about and forwarding nothing. Stopped on drop.
pub struct Dnsmasq {
    host: usize,
    address: String,
    domain: String,
    conf: PathBuf,
    dir: PathBuf,
    process: Option<HostProcess>,
    starts: u32,
}

impl Dnsmasq {
    /// Starts dnsmasq on host `host` (listening on its `address`), answering for
    /// `domain` from the configuration lines `records` (`srv-host=`, `host-record=`,
    /// ...). Files go in `dir`.
    pub fn start(hosts: &Hosts, host: usize, domain: &str, records: &str, dir: &Path) -> Dnsmasq {
        let mut d = Dnsmasq {
            host,
            address: hosts.addresses[host].clone(),
            domain: domain.to_string(),
            conf: dir.join("dnsmasq.conf"),
            dir: dir.to_path_buf(),
            process: None,
            starts: 0,
        };
        d.serve(hosts, records);
        d
    }

    /// Replaces the records: dnsmasq reads `srv-host=` lines only at start, so it is
    /// restarted, and answers the new records once this returns.
    pub fn serve(&mut self, hosts: &Hosts, records: &str) {
        if let Some(old) = self.process.take() {
            drop(old);
        }
        std::fs::write(&self.conf, records).expect("write dnsmasq.conf");
        self.starts += 1;
        let mut cmd = hosts.command(self.host, Path::new("/usr/sbin/dnsmasq"));
        cmd.arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", self.conf.display()))
            .args(["--no-resolv", "--no-hosts", "--bind-interfaces"])
            .arg(format!("--listen-address={}", self.address))
            .arg(format!("--local=/{}/", self.domain))
            .args(["--user=root", "--group=root", "--pid-file="])
            .args(["--log-facility=-", "--log-queries"]);
        let log = self.dir.join(format!("dnsmasq-{}.log", self.starts));
        let process = HostProcess::spawn(cmd, log);
        crate::wait_until(
            "dnsmasq to start",
            std::time::Duration::from_secs(10),
            || process.logs().contains("started, version").then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", process.logs()));
        self.process = Some(process);
    }

    /// What dnsmasq logged since its last start (queries included).
    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(HostProcess::logs)
            .unwrap_or_default()
    }
}
