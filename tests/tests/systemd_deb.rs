//! The qetcd .deb under a real systemd: four systemd-nspawn containers, each booted with
//! systemd as PID 1 and its own address (10.0.1.10-13) on a bridge this test creates.
//! What an operator does, from the shipped example inventory: `provision render`, the
//! package installed with `dpkg -i` and each host's bundle on three hosts, then start,
//! watch the status, stop the leader, kill -9, upgrade; `provision member add` and its
//! printed plan bring the fourth host in (learner, then voter), `provision member
//! remove` and its plan take the third out; purge.
//!
//! Needs root, debootstrap and systemd-container (tests/run.sh installs them) and the
//! .deb from packaging/build-debs.sh ($QETCD_DEB, or the newest in target/debian/).
//! `QETCD_SKIP_SYSTEMD=1` skips it. The prepared container root file system is cached
//! as a tar under /var/cache/qetcd-tests/, so only the first run pays for debootstrap.
//! How to run systemd containers on this kind of machine: ../shared/spec/systemd-e2e-notes.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use qetcd_tests::provision::{self, provision, render};
use qetcd_tests::wait_until;

const BRIDGE: &str = "qetcd-br0";
/// The example inventory's three members, and the host `provision member add` brings in.
const ADDRESSES: [&str; 4] = ["10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.13"];
const CACHE_DIR: &str = "/var/cache/qetcd-tests";
/// Part of the cache key: change it whenever the prepared root file system changes.
const ROOTFS_VERSION: &str = "bookworm-v1";
/// The containers cannot reach a mirror, so everything the package and the test need
/// at run time is installed up front. man-db: `systemd-analyze verify` checks that the
/// unit's Documentation=man:qetcd(8) page exists.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,iproute2,man-db";
const MIRROR: &str = "http://deb.debian.org/debian";
const UNIT: &str = "qetcd.service";

/// Written past the test harness's output capture, so it shows on success too.
fn report(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The package under test: `$QETCD_DEB`, or the newest qetcd_*.deb in target/debian/.
fn find_deb() -> PathBuf {
    if let Some(p) = std::env::var_os("QETCD_DEB") {
        return PathBuf::from(p);
    }
    // Test executables live in target/<profile>/deps.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.ancestors().nth(3).expect("target dir").join("debian");
    let newest = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("qetcd_") && name.ends_with(".deb")
            })
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
    });
    newest.unwrap_or_else(|| {
        panic!(
            "no qetcd_*.deb in {}: run packaging/build-debs.sh first (tests/run.sh does)",
            dir.display()
        )
    })
}

/// The prepared root file system as a tar, built once with debootstrap and cached.
fn prepared_rootfs() -> PathBuf {
    let tar = Path::new(CACHE_DIR).join(format!("rootfs-{ROOTFS_VERSION}.tar"));
    if tar.exists() {
        return tar;
    }
    std::fs::create_dir_all(CACHE_DIR).expect("cache dir");
    let build = Path::new(CACHE_DIR).join(format!("build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    let started = Instant::now();
    must(Command::new("debootstrap").args([
        "--variant=minbase",
        &format!("--include={INCLUDE}"),
        "bookworm",
        build.to_str().expect("utf-8 path"),
        MIRROR,
    ]));
    // Static addresses come from systemd-networkd; network-online.target (which the
    // unit waits for) then means "host0 has its address".
    must(
        Command::new("systemctl")
            .arg(format!("--root={}", build.display()))
            .args([
                "enable",
                "systemd-networkd.service",
                "systemd-networkd-wait-online.service",
            ]),
    );
    // Each container writes its own machine-id into its overlay.
    std::fs::write(build.join("etc/machine-id"), "").expect("machine-id");
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let _ = std::fs::remove_dir_all(build.join(dir));
        let _ = std::fs::create_dir_all(build.join(dir));
    }
    let partial = tar.with_extension("tar.partial");
    must(
        Command::new("tar")
            .arg("-C")
            .arg(&build)
            .arg("-cf")
            .arg(&partial)
            .arg("."),
    );
    std::fs::rename(&partial, &tar).expect("publish rootfs tar");
    let _ = std::fs::remove_dir_all(&build);
    report(&format!(
        "prepared container rootfs {} in {:?}",
        tar.display(),
        started.elapsed()
    ));
    tar
}

/// This process's cgroup in one hierarchy (`name=systemd` or the unified `0::`).
fn own_cgroup(controller: &str) -> String {
    let table = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    table
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            (ctl == controller).then(|| path.trim_start_matches('/').to_string())
        })
        .unwrap_or_default()
}

/// Removes a cgroup directory tree, deepest first (cgroup dirs only go with rmdir).
fn remove_cgroup(dir: &Path) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut dirs = Vec::new();
    walk(dir, &mut dirs);
    for d in dirs {
        let _ = std::fs::remove_dir(&d);
    }
}

struct Node {
    name: String,
    addr: &'static str,
    nspawn: Option<Child>,
    /// The container's PID 1 (systemd), as seen from the host.
    pid1: u32,
    log: PathBuf,
    cgroups: Vec<PathBuf>,
    /// `provision`'s output directory on the host: the admin client certificate the
    /// host's etcdctl presents, and each member's bundle.
    bundles: PathBuf,
}

impl Node {
    /// The container's PID 1, checked every time: it must still be `systemd` with the
    /// nspawn process as parent, or a command meant for the container would run on
    /// the host.
    fn pid1(&self) -> u32 {
        let nspawn = self.nspawn.as_ref().expect("container running").id();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid1))
            .unwrap_or_else(|e| panic!("{}: PID 1 {} is gone: {e}", self.name, self.pid1));
        let (comm, ppid) = parse_stat(&stat);
        assert!(
            comm == "systemd" && ppid == nspawn,
            "{}: PID {} is {comm:?} with parent {ppid}, not the container's systemd",
            self.name,
            self.pid1
        );
        self.pid1
    }

    /// A command inside the container (all of its namespaces).
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid1().to_string(), "-a", "--"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "");
        c
    }

    fn exec(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    fn must(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{}: {args:?} failed: {}",
            self.name,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl show` properties of the unit.
    fn show(&self, props: &[&str]) -> Vec<String> {
        let mut args = vec!["systemctl", "show", UNIT];
        for p in props {
            args.push("-p");
            args.push(p);
        }
        let out = self.must(&args);
        props
            .iter()
            .map(|p| {
                out.lines()
                    .find_map(|l| l.strip_prefix(&format!("{p}=")))
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    fn prop(&self, prop: &str) -> String {
        self.show(&[prop]).remove(0)
    }

    /// The host's etcdctl with the admin certificate, run in the container's network
    /// namespace: the bridge carries no host address, so this is how the host reaches
    /// the members.
    fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Output {
        let admin = self.bundles.join("admin");
        run(Command::new("nsenter")
            .args([
                "-t",
                &self.pid1().to_string(),
                "-n",
                "--",
                "/usr/bin/etcdctl",
            ])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoints, "--command-timeout=5s"])
            .arg(format!(
                "--cacert={}",
                admin.join("client-ca.crt").display()
            ))
            .arg(format!("--cert={}", admin.join("admin.crt").display()))
            .arg(format!("--key={}", admin.join("admin.key").display()))
            .args(args))
    }

    /// Lines of a plan `provision` printed, run as printed by the host's shell from the
    /// bundles directory (as the plan says), in the container's network namespace.
    fn plan_step(&self, lines: &str) -> Output {
        run(Command::new("nsenter")
            .args(["-t", &self.pid1().to_string(), "-n", "--", "/bin/sh", "-ec"])
            .arg(format!("cd \"$1\"\n{lines}"))
            .arg("sh")
            .arg(&self.bundles)
            .env_clear()
            .env("PATH", "/usr/bin:/bin"))
    }

    /// Installs a host's bundle at its paths as the README says (owners root, keys for
    /// group qetcd), streamed from the host's bundles directory into the container.
    fn install_bundle(&self, member: &str) {
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(self.bundles.join(member))
            .args(["-cf", "-", "etc"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let out = self
            .command(&[
                "sh",
                "-ec",
                "tar -C / -xf - --no-same-owner --no-overwrite-dir\n\
                 chgrp -R qetcd /etc/qetcd/pki\n\
                 systemctl daemon-reload",
            ])
            .stdin(tar.stdout.take().expect("tar stdout"))
            .output()
            .expect("nsenter");
        assert!(
            tar.wait().expect("tar").success(),
            "tar of {member}'s bundle"
        );
        assert!(
            out.status.success(),
            "{}: installing {member}'s bundle: {}",
            self.name,
            text(&out)
        );
    }

    fn client_url(&self) -> String {
        format!("https://{}:2379", self.addr)
    }

    fn journal(&self, lines: &str) -> String {
        let out = self.exec(&["journalctl", "-u", UNIT, "--no-pager", "-n", lines]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// (comm, ppid) from a /proc/<pid>/stat line; comm may contain spaces and parentheses.
fn parse_stat(stat: &str) -> (String, u32) {
    let open = stat.find('(').unwrap_or(0);
    let close = stat.rfind(')').unwrap_or(stat.len());
    let comm = stat.get(open + 1..close).unwrap_or("").to_string();
    let ppid = stat
        .get(close + 1..)
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    (comm, ppid)
}

/// Three booted containers on a bridge. Dropping it (also when the test fails) stops
/// the containers and removes the bridge, the cgroups and every file it created.
struct Lab {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl Lab {
    fn boot(rootfs_tar: &Path, deb: &Path) -> Lab {
        // A bridge of this name can only be left over from an earlier run of this test.
        let _ = run(Command::new("ip").args(["link", "del", BRIDGE]));
        let dir = PathBuf::from(format!("/var/tmp/qetcd-systemd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let base = dir.join("base");
        std::fs::create_dir_all(&base).expect("run dir");
        let mut lab = Lab {
            dir,
            nodes: Vec::new(),
        };
        must(
            Command::new("tar")
                .arg("-C")
                .arg(&base)
                .arg("-xf")
                .arg(rootfs_tar),
        );
        must(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]));
        must(Command::new("ip").args(["link", "set", BRIDGE, "up"]));

        for (i, addr) in ADDRESSES.iter().enumerate() {
            let name = format!("qetcd-{i}");
            let upper = lab.dir.join(format!("upper-{i}"));
            let files: [(&str, String); 3] = [
                ("etc/hostname", format!("{name}\n")),
                (
                    "etc/machine-id",
                    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
                        .expect("uuid")
                        .trim()
                        .replace('-', "")
                        + "\n",
                ),
                (
                    "etc/systemd/network/10-host0.network",
                    format!("[Match]\nName=host0\n\n[Network]\nAddress={addr}/24\n"),
                ),
            ];
            for (path, content) in files {
                let p = upper.join(path);
                std::fs::create_dir_all(p.parent().unwrap()).expect("upper dir");
                std::fs::write(&p, content).expect("node file");
            }
            std::fs::create_dir_all(upper.join("root")).expect("upper /root");
            std::fs::copy(deb, upper.join("root/qetcd.deb")).expect("copy .deb");

            // Each container from its own cgroup: containers sharing one collide
            // (units fail with status=219/CGROUP).
            let cgroups: Vec<PathBuf> = [("systemd", "name=systemd"), ("unified", "")]
                .iter()
                .map(|(mount, ctl)| {
                    let mut p = PathBuf::from("/sys/fs/cgroup").join(mount);
                    let own = own_cgroup(ctl);
                    if !own.is_empty() {
                        p.push(own);
                    }
                    p.join(format!("qetcd-test-{}-{i}", std::process::id()))
                })
                .collect();
            for c in &cgroups {
                std::fs::create_dir_all(c).expect("create cgroup");
            }
            let log = lab.dir.join(format!("{name}.console"));
            let console = std::fs::File::create(&log).expect("console log");
            let script = format!(
                "echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs && exec systemd-nspawn \
                 --keep-unit --register=no -D {base} --overlay={base}:{upper}:/ -b \
                 --network-bridge={BRIDGE} -M {name}",
                cgroups[0].display(),
                cgroups[1].display(),
                base = base.display(),
                upper = upper.display(),
            );
            let child = Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(console.try_clone().expect("console fd"))
                .stderr(console)
                .spawn()
                .expect("start systemd-nspawn");
            lab.nodes.push(Node {
                name,
                addr,
                nspawn: Some(child),
                pid1: 0,
                log,
                cgroups,
                bundles: lab.dir.join("bundles"),
            });
        }

        for node in &mut lab.nodes {
            let nspawn = node.nspawn.as_ref().unwrap().id();
            let log = node.log.clone();
            node.pid1 = wait_until(
                "the container's systemd to start",
                Duration::from_secs(30),
                || find_child(nspawn, "systemd"),
            )
            .unwrap_or_else(|e| {
                panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
            });
        }
        for node in &lab.nodes {
            let state = wait_until(
                "the container to finish booting",
                Duration::from_secs(60),
                || {
                    let out = node.exec(&["systemctl", "is-system-running"]);
                    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    matches!(state.as_str(), "running" | "degraded").then_some(state)
                },
            )
            .unwrap_or_else(|e| panic!("{}: {e}", node.name));
            if state == "degraded" {
                report(&format!(
                    "{} booted degraded:\n{}",
                    node.name,
                    node.must(&["systemctl", "--failed", "--no-pager"])
                ));
            }
        }
        lab
    }

    fn endpoints(&self, which: &[usize]) -> String {
        which
            .iter()
            .map(|&i| self.nodes[i].client_url())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The child of `parent` whose command name is `comm`.
fn find_child(parent: u32, comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (c, ppid) = parse_stat(&stat);
        (c == comm && ppid == parent).then_some(pid)
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        for node in &mut self.nodes {
            if failing && node.pid1 != 0 && node.nspawn.is_some() {
                let status = node.exec(&["systemctl", "status", UNIT, "--no-pager", "-n", "0"]);
                report(&format!(
                    "--- {}: systemctl status ---\n{}\n--- journal ---\n{}",
                    node.name,
                    String::from_utf8_lossy(&status.stdout),
                    node.journal("150")
                ));
            }
            if let Some(mut child) = node.nspawn.take() {
                // SIGTERM asks nspawn to shut the container down cleanly.
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let exited = wait_until("the container to stop", Duration::from_secs(20), || {
                    child.try_wait().ok().flatten()
                });
                if exited.is_err() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            for c in &node.cgroups {
                remove_cgroup(c);
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", BRIDGE])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asserts `etcdctl endpoint health --cluster` reports `members` members, all healthy.
fn assert_cluster_healthy(lab: &Lab, from: usize, members: usize) {
    let node = &lab.nodes[from];
    let out = wait_until(
        &format!("etcdctl endpoint health --cluster to report {members} healthy members"),
        Duration::from_secs(30),
        || {
            let out = node.etcdctl(&node.client_url(), &["endpoint", "health", "--cluster"]);
            let all = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success() && all.matches("is healthy").count() == members).then_some(all)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    report(&format!("endpoint health --cluster:\n{}", out.trim()));
}

/// The commands of each numbered step (`# 1. ...`) of a plan `provision` printed.
fn plan_steps(plan: &str) -> Vec<String> {
    let mut steps: Vec<String> = Vec::new();
    for line in plan.lines().map(str::trim) {
        let numbered = line
            .strip_prefix("# ")
            .and_then(|l| l.split_once(". "))
            .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
        if numbered {
            steps.push(String::new());
        } else if let Some(step) = steps.last_mut()
            && !line.is_empty()
            && !line.starts_with('#')
        {
            step.push_str(line);
            step.push('\n');
        }
    }
    steps
}

/// Index of the member the cluster reports as leader.
fn leader(lab: &Lab, among: &[usize]) -> usize {
    wait_until(
        "the members to agree on a leader",
        Duration::from_secs(30),
        || {
            let out = lab.nodes[among[0]]
                .etcdctl(&lab.endpoints(among), &["endpoint", "status", "-w", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let rows = v.as_array()?;
            let leader = rows.first()?["Status"]["leader"].as_u64()?;
            let same = rows
                .iter()
                .all(|r| r["Status"]["leader"].as_u64() == Some(leader));
            let row = rows
                .iter()
                .find(|r| r["Status"]["header"]["member_id"].as_u64() == Some(leader))?;
            let endpoint = row["Endpoint"].as_str()?;
            let i = lab.nodes.iter().position(|n| n.client_url() == endpoint)?;
            (same && leader != 0).then_some(i)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn deb_on_three_systemd_hosts() {
    if std::env::var_os("QETCD_SKIP_SYSTEMD").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: QETCD_SKIP_SYSTEMD=1");
        return;
    }
    assert!(
        is_root(),
        "the systemd test needs root (containers, bridge, cgroups); QETCD_SKIP_SYSTEMD=1 skips it"
    );
    let wall = Instant::now();
    let deb = find_deb();
    let rootfs = prepared_rootfs();
    let lab = Lab::boot(&rootfs, &deb);
    report(&format!(
        "booted {} containers in {:?} (since test start)",
        lab.nodes.len(),
        wall.elapsed()
    ));
    let inventory = lab.dir.join("inventory.toml");
    std::fs::copy(provision::example("inventory.toml"), &inventory).expect("copy inventory");
    render(&inventory, &lab.dir.join("bundles"));

    // Installing enables the unit; without the env file starting is a no-op, and the
    // unit stays inactive rather than failed. The fourth host joins later.
    for n in &lab.nodes[..3] {
        n.must(&["dpkg", "-i", "/root/qetcd.deb"]);
        assert_eq!(n.must(&["systemctl", "is-enabled", UNIT]).trim(), "enabled");
        let [active, condition] =
            <[String; 2]>::try_from(n.show(&["ActiveState", "ConditionResult"])).unwrap();
        assert_eq!(
            (active.as_str(), condition.as_str()),
            ("inactive", "no"),
            "{}",
            n.name
        );
        n.must(&["getent", "passwd", "qetcd"]);
        assert_eq!(
            n.must(&["stat", "-c", "%a %U", "/etc/qetcd"]).trim(),
            "755 root"
        );
    }

    // The unit as installed: nothing for verify to say, and the sandboxing score.
    let verify = lab.nodes[0].exec(&[
        "systemd-analyze",
        "verify",
        "/lib/systemd/system/qetcd.service",
    ]);
    assert!(
        verify.status.success() && verify.stdout.is_empty() && verify.stderr.is_empty(),
        "systemd-analyze verify complained: {}",
        text(&verify)
    );
    let security = lab.nodes[0].must(&["systemd-analyze", "security", "--no-pager", UNIT]);
    let score: f64 = security
        .lines()
        .find_map(|l| l.split("Overall exposure level for qetcd.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{security}"));
    report(&format!(
        "systemd-analyze security {UNIT}: exposure {score} (systemd 252)"
    ));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{security}");

    for (i, n) in lab.nodes[..3].iter().enumerate() {
        n.install_bundle(&format!("infra{i}"));
    }

    // `systemctl start` on all three, concurrently: each blocks until its member is
    // ready, which needs a quorum. Node 0 starts first and must be seen waiting (the
    // unit activating, StatusText saying so) before the others are started.
    let mut seen: Vec<(usize, String, String)> = Vec::new();
    let record = |seen: &mut Vec<(usize, String, String)>, i: usize| {
        let [state, status] =
            <[String; 2]>::try_from(lab.nodes[i].show(&["ActiveState", "StatusText"])).unwrap();
        if seen
            .iter()
            .rfind(|(j, _, _)| *j == i)
            .map(|(_, a, s)| (a, s))
            != Some((&state, &status))
        {
            seen.push((i, state, status));
        }
    };
    std::thread::scope(|s| {
        let start = |i: usize| {
            let node = &lab.nodes[i];
            s.spawn(move || {
                let begun = Instant::now();
                let out = node.exec(&["systemctl", "start", UNIT]);
                // The moment start returns the member must serve: one put, no retry.
                let put =
                    node.etcdctl(&node.client_url(), &["put", &format!("started-{i}"), "yes"]);
                (out, put, begun.elapsed())
            })
        };
        let first = start(0);
        wait_until(
            "node 0 to report that it waits for peers",
            Duration::from_secs(30),
            || {
                record(&mut seen, 0);
                seen.iter()
                    .any(|(i, state, status)| {
                        *i == 0 && state == "activating" && status.starts_with("waiting for peers")
                    })
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}; seen: {seen:#?}"));
        assert!(
            !first.is_finished(),
            "systemctl start returned without quorum"
        );
        let others = [start(1), start(2)];
        let deadline = Instant::now() + Duration::from_secs(120);
        while !(first.is_finished() && others.iter().all(|t| t.is_finished())) {
            assert!(
                Instant::now() < deadline,
                "systemctl start did not return within 120 s; seen: {seen:#?}"
            );
            for i in 0..3 {
                record(&mut seen, i);
            }
        }
        for (i, t) in std::iter::once(first).chain(others).enumerate() {
            let (out, put, took) = t.join().expect("start thread");
            assert!(
                out.status.success(),
                "node {i}: systemctl start: {}",
                text(&out)
            );
            assert!(
                put.status.success(),
                "node {i} was started but cannot serve a put: {}",
                text(&put)
            );
            report(&format!(
                "node {i}: systemctl start returned after {took:?}"
            ));
        }
    });
    report(&format!(
        "states seen while starting (node, ActiveState, StatusText):\n{}",
        seen.iter()
            .map(|(i, a, s)| format!("  {i} {a:<11} {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    for (i, n) in lab.nodes[..3].iter().enumerate() {
        let [state, status] =
            <[String; 2]>::try_from(n.show(&["ActiveState", "StatusText"])).unwrap();
        assert_eq!(state, "active", "node {i}");
        assert!(status.starts_with("serving"), "node {i}: {status}");
    }
    assert_cluster_healthy(&lab, 0, 3);

    // The sandbox as applied: the service user, no capabilities, a seccomp filter, a
    // user namespace mapping only root and qetcd, and the disk priority (Nice=-10) that
    // PID 1 set before dropping privileges.
    {
        let n = &lab.nodes[0];
        let pid = n.prop("MainPID");
        let proc_status = n.must(&["cat", &format!("/proc/{pid}/status")]);
        let field = |k: &str| {
            proc_status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        let uid = n.must(&["id", "-u", "qetcd"]);
        assert_eq!(
            field("Uid:").split(' ').next(),
            Some(uid.trim()),
            "runs as qetcd"
        );
        assert_eq!(field("CapEff:"), "0000000000000000");
        assert_eq!(field("NoNewPrivs:"), "1");
        assert_eq!(field("Seccomp:"), "2", "seccomp filter mode");
        let uid_map = n.must(&["cat", &format!("/proc/{pid}/uid_map")]);
        assert_eq!(
            uid_map.lines().count(),
            2,
            "PrivateUsers maps root and qetcd only: {uid_map}"
        );
        // ProtectProc=invisible and ProcSubset=pid: the service's own /proc mount.
        let mounts = n.must(&["cat", &format!("/proc/{pid}/mountinfo")]);
        let proc_mount = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/proc"))
            .unwrap_or_else(|| panic!("no /proc mount:\n{mounts}"));
        assert!(
            proc_mount.contains("hidepid=invisible") && proc_mount.contains("subset=pid"),
            "ProtectProc/ProcSubset not applied: {proc_mount}"
        );
        let stat = n.must(&["cat", &format!("/proc/{pid}/stat")]);
        let nice = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(16));
        assert_eq!(nice, Some("-10"), "Nice=-10: {stat}");
    }

    // Stopping the leader: it hands leadership over and exits; the other two serve.
    let l = leader(&lab, &[0, 1, 2]);
    let rest: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let begun = Instant::now();
    lab.nodes[l].must(&["systemctl", "stop", UNIT]);
    let took = begun.elapsed();
    report(&format!("node {l} (leader): systemctl stop took {took:?}"));
    assert!(took < Duration::from_secs(60), "stop within TimeoutStopSec");
    assert_eq!(lab.nodes[l].prop("ActiveState"), "inactive");
    let journal = lab.nodes[l].journal("40");
    assert!(
        journal.contains("leadership transfer finished"),
        "no handover:\n{journal}"
    );
    let survivors = lab.endpoints(&rest);
    let put = lab.nodes[rest[0]].etcdctl(&survivors, &["put", "while-leader-down", "kept"]);
    assert!(
        put.status.success(),
        "the two survivors do not serve: {}",
        text(&put)
    );
    let l2 = leader(&lab, &rest);
    assert_ne!(l2, l);

    // Starting it again: it rejoins and has what was written meanwhile.
    lab.nodes[l].must(&["systemctl", "start", UNIT]);
    let got = lab.nodes[l].etcdctl(
        &lab.nodes[l].client_url(),
        &["get", "while-leader-down", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "kept",
        "{}",
        text(&got)
    );
    assert_cluster_healthy(&lab, l, 3);

    // kill -9 of the main process: systemd restarts it (Restart=on-failure) and it
    // rejoins.
    let victim = rest[0];
    let n = &lab.nodes[victim];
    let old_pid = n.prop("MainPID");
    // The shell's own kill: minbase has no procps.
    n.must(&["sh", "-c", &format!("kill -9 {old_pid}")]);
    let restarted = wait_until(
        "systemd to restart the killed member",
        Duration::from_secs(60),
        || {
            let [state, pid, restarts, status] = <[String; 4]>::try_from(n.show(&[
                "ActiveState",
                "MainPID",
                "NRestarts",
                "StatusText",
            ]))
            .unwrap();
            (state == "active"
                && pid != old_pid
                && pid != "0"
                && restarts != "0"
                && status.starts_with("serving"))
            .then_some((pid, restarts))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", n.journal("40")));
    report(&format!(
        "node {victim}: killed PID {old_pid}; restarted as PID {} (NRestarts={})",
        restarted.0, restarted.1
    ));
    assert_cluster_healthy(&lab, victim, 3);

    // Upgrading (reinstalling) the package leaves the running member alone.
    let pid_before = lab.nodes[0].prop("MainPID");
    lab.nodes[0].must(&["dpkg", "-i", "/root/qetcd.deb"]);
    assert_eq!(
        lab.nodes[0].prop("MainPID"),
        pid_before,
        "the upgrade restarted the member"
    );
    assert_eq!(lab.nodes[0].prop("ActiveState"), "active");

    // What an operator reads.
    let status = lab.nodes[0].exec(&["systemctl", "status", UNIT, "--no-pager"]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let journal = lab.nodes[0].journal("25");
    report(&format!(
        "--- node 0: systemctl status {UNIT} ---\n{status}"
    ));
    report(&format!("--- node 0: journalctl -u {UNIT} ---\n{journal}"));
    assert!(status.contains("Active: active (running)"), "{status}");
    assert!(status.contains("Status: \"serving"), "{status}");
    assert!(
        journal.contains("published local member to cluster"),
        "{journal}"
    );

    // The fourth host joins from the bundle `provision member add` renders, following
    // the printed plan: announce it as a learner, install and start, promote.
    let bundles = lab.dir.join("bundles");
    let membership = |args: &[&str]| -> Vec<String> {
        let mut all = args.to_vec();
        all.extend([
            "--inventory",
            inventory.to_str().expect("utf-8 path"),
            "--out",
            bundles.to_str().expect("utf-8 path"),
        ]);
        let r = provision(&all);
        assert_eq!(
            r.code,
            Some(0),
            "provision {args:?}:\n{}{}",
            r.stdout,
            r.stderr
        );
        let plan = &r.stdout[r.stdout.find("Plan:").expect("a printed plan")..];
        report(&format!("provision {args:?} printed:\n{plan}"));
        plan_steps(plan)
    };
    let join = membership(&[
        "member",
        "add",
        "infra3",
        "--address",
        ADDRESSES[3],
        "--hostname",
        "infra3.example.com",
    ]);
    let announce = lab.nodes[0].plan_step(&join[0]);
    assert!(announce.status.success(), "{}", text(&announce));
    let printed = String::from_utf8_lossy(&announce.stdout).into_owned();
    let env3 = std::fs::read_to_string(bundles.join("infra3/etc/qetcd/qetcd.env")).expect("env");
    let cluster_of = |text: &str, quoted: bool| -> Vec<String> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
            .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in:\n{text}"));
        let line = if quoted { line.trim_matches('"') } else { line };
        let mut members: Vec<String> = line.split(',').map(str::to_string).collect();
        members.sort();
        members
    };
    assert_eq!(
        cluster_of(&printed, true),
        cluster_of(&env3, false),
        "the bundle's ETCD_INITIAL_CLUSTER is not what etcdctl member add printed"
    );
    assert!(
        printed.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{printed}"
    );
    assert!(
        env3.contains("ETCD_INITIAL_CLUSTER_STATE=existing\n"),
        "{env3}"
    );

    let newcomer = &lab.nodes[3];
    newcomer.must(&["dpkg", "-i", "/root/qetcd.deb"]);
    newcomer.install_bundle("infra3");
    // Type=notify: start returns once the learner has the state and serves.
    newcomer.must(&["systemctl", "start", UNIT]);
    let [state, status] =
        <[String; 2]>::try_from(newcomer.show(&["ActiveState", "StatusText"])).unwrap();
    assert_eq!(state, "active");
    assert!(status.starts_with("serving"), "{status}");
    // The plan's promotion loop, with a deadline instead of `until`: the announce
    // step's endpoints, the ID lookup, one promote per attempt.
    let endpoints_line = join[0].lines().next().expect("the endpoints line");
    let id_line = join[2]
        .lines()
        .find(|l| l.starts_with("ID="))
        .unwrap_or_else(|| panic!("no ID lookup in step 3:\n{}", join[2]));
    wait_until(
        "the learner to catch up and be promoted",
        Duration::from_secs(60),
        || {
            let promote = format!(
                "{endpoints_line}\n{id_line}\ntest -n \"$ID\"\netcdctl member promote \"$ID\""
            );
            lab.nodes[0]
                .plan_step(&promote)
                .status
                .success()
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", newcomer.journal("40")));
    let check = wait_until("the plan's check to pass", Duration::from_secs(30), || {
        let out = lab.nodes[0].plan_step(&join[3]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let voters = stdout
            .lines()
            .filter(|l| l.contains(", started, ") && l.ends_with(", false"))
            .count();
        (out.status.success() && voters == 4).then_some(stdout)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    report(&format!(
        "after the fourth member joined:\n{}",
        check.trim()
    ));
    let got = newcomer.etcdctl(
        &newcomer.client_url(),
        &["get", "while-leader-down", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "kept",
        "{}",
        text(&got)
    );

    // `provision member remove infra2` and its plan: the member removed from the
    // cluster exits 78, and systemd leaves it down (RestartPreventExitStatus=78)
    // instead of restarting it into a refusal loop.
    let removed = &lab.nodes[2];
    let restarts_before = removed.prop("NRestarts");
    let leave = membership(&["member", "remove", "infra2"]);
    // --strict-reconfig-check: refused as `unhealthy cluster` until the leader's peers
    // have been connected for 5 s (one was just killed and restarted above).
    let out = wait_until(
        "member remove to be accepted",
        Duration::from_secs(30),
        || {
            let out = lab.nodes[0].plan_step(&leave[0]);
            (!text(&out).contains("etcdserver: unhealthy cluster")).then_some(out)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "member remove: {}", text(&out));
    wait_until(
        "the removed member's unit to fail with 78",
        Duration::from_secs(60),
        || {
            let [state, code] =
                <[String; 2]>::try_from(removed.show(&["ActiveState", "ExecMainStatus"])).unwrap();
            (state == "failed" && code == "78").then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", removed.journal("30")));
    let last_status = removed.prop("StatusText");
    assert!(
        last_status.starts_with("removed from the cluster"),
        "last status: {last_status}"
    );
    // Past RestartSec=5s: still down, never restarted.
    let watch_until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < watch_until {
        let [state, restarts] =
            <[String; 2]>::try_from(removed.show(&["ActiveState", "NRestarts"])).unwrap();
        assert_eq!(
            (state.as_str(), restarts.as_str()),
            ("failed", restarts_before.as_str()),
            "a removed member was restarted"
        );
    }
    let status = removed.exec(&["systemctl", "status", UNIT, "--no-pager", "-n", "5"]);
    report(&format!(
        "--- node 2 after member remove ---\n{}",
        String::from_utf8_lossy(&status.stdout)
    ));
    let remaining = lab.endpoints(&[0, 1, 3]);
    let put = lab.nodes[0].etcdctl(&remaining, &["put", "after-remove", "ok"]);
    assert!(
        put.status.success(),
        "the three remaining members do not serve: {}",
        text(&put)
    );
    assert_cluster_healthy(&lab, 3, 3);

    // Purging the package keeps the member's data (and the host's env file).
    let p = &lab.nodes[2];
    p.must(&["dpkg", "--purge", "qetcd"]);
    assert!(
        !p.exec(&["test", "-e", "/usr/bin/qetcd"]).status.success(),
        "purge left the binary"
    );
    let kept = p.must(&["find", "/var/lib/qetcd", "-type", "f"]);
    assert!(!kept.trim().is_empty(), "purge emptied /var/lib/qetcd");
    p.must(&["test", "-f", "/etc/qetcd/qetcd.env"]);
    report(&format!(
        "after purge, /var/lib/qetcd keeps:\n{}",
        kept.trim()
    ));

    drop(lab);
    report(&format!("systemd test wall time: {:?}", wall.elapsed()));
}
