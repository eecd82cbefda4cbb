//! `provision` as an operator runs it, and its bundles installed on hosts of our own:
//! the built binary, rendering an inventory, and starting a member from nothing but
//! its host's bundle (as systemd's `EnvironmentFile=` would), then reaching the cluster
//! with nothing but `admin/etcdctl.env`. Shared by the tests of each bootstrap mode.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use crate::member::Binary;
use crate::netns::{HostProcess, Hosts};

/// An inventory shipped in `examples/`.
pub fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file)
}

/// The built `provision` binary (or `$PROVISION_BIN`), next to `qetcd`.
pub fn provision_bin() -> PathBuf {
    let p = match std::env::var_os("PROVISION_BIN") {
        Some(p) => PathBuf::from(p),
        None => Binary::Qetcd.path().with_file_name("provision"),
    };
    assert!(
        p.exists(),
        "{} not found: build it first (`cargo build --workspace --bins`, as tests/run.sh does)",
        p.display()
    );
    p
}

/// How a command ended, and what it printed.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn of(cmd: &mut Command) -> Run {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `provision <args>` on this machine.
pub fn provision(args: &[&str]) -> Run {
    Run::of(Command::new(provision_bin()).args(args))
}

/// `provision <args>` inside host `i` (its network and its resolver).
pub fn provision_on(hosts: &Hosts, i: usize, args: &[&str]) -> Run {
    Run::of(hosts.command(i, &provision_bin()).args(args))
}

/// `provision render inventory --out out`, which must succeed.
pub fn render(inventory: &Path, out: &Path) -> Run {
    let r = provision(&[
        "render",
        inventory.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, Some(0), "render failed:\n{}{}", r.stdout, r.stderr);
    r
}

/// Cluster tests bind-mount over the same two host paths; one at a time keeps the
/// creation and removal of those mount points simple.
static MOUNT_POINTS: Mutex<()> = Mutex::new(());

/// `/etc/qetcd` and `/var/lib/qetcd` must exist to be mounted over (in our own mount
/// namespaces only). Whichever were created are removed again on drop, and only one
/// test of a test binary holds them at a time.
pub struct MountPoints {
    created: Vec<&'static Path>,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl MountPoints {
    pub fn ensure() -> MountPoints {
        let lock = MOUNT_POINTS.lock().unwrap_or_else(|e| e.into_inner());
        let mut created = Vec::new();
        for p in [Path::new("/etc/qetcd"), Path::new("/var/lib/qetcd")] {
            if !p.exists() {
                std::fs::create_dir_all(p).unwrap();
                created.push(p);
            }
        }
        MountPoints {
            created,
            _one_at_a_time: lock,
        }
    }
}

impl Drop for MountPoints {
    fn drop(&mut self) {
        for p in &self.created {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Starts the example inventory's members infra0..infra`n-1` from their bundles, one
/// per host (see [`start_member`]).
pub fn start_members(hosts: &Hosts, n: usize, out: &Path, work: &Path) -> Vec<HostProcess> {
    (0..n)
        .map(|i| start_member(hosts, i, &format!("infra{i}"), out, work))
        .collect()
}

/// Installs the bundle of member `name` (rendered into `out`) at its real paths on
/// host `i` and starts qetcd with nothing but the env file, as systemd's
/// `EnvironmentFile=` would: a mount namespace of its own (inside the host's network
/// namespace, so with the host's resolver) bind-mounts the bundle's `etc/qetcd` on
/// `/etc/qetcd` and a fresh data dir on `/var/lib/qetcd`. Needs [`MountPoints`].
pub fn start_member(hosts: &Hosts, i: usize, name: &str, out: &Path, work: &Path) -> HostProcess {
    let bundle = out.join(name).join("etc/qetcd");
    let data = work.join(format!("{name}.data"));
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let script = r#"set -e
mount --bind "$1" /etc/qetcd
mount --bind "$2" /var/lib/qetcd
set -a
. /etc/qetcd/qetcd.env
set +a
exec "$3""#;
    let mut cmd = hosts.command(i, Path::new("/usr/bin/unshare"));
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(&bundle)
    .arg(&data)
    .arg(Binary::Qetcd.path());
    HostProcess::spawn(cmd, work.join(format!("{name}.log")))
}

/// etcdctl on host `i`, configured only by sourcing `admin/etcdctl.env` in `out`.
pub fn etcdctl(hosts: &Hosts, i: usize, out: &Path, args: &str) -> Run {
    etcdctl_after(hosts, i, out, ":", args)
}

/// Like [`etcdctl`], running shell command `then` after sourcing.
pub fn etcdctl_after(hosts: &Hosts, i: usize, out: &Path, then: &str, args: &str) -> Run {
    let mut cmd = hosts.command(i, Path::new("/bin/sh"));
    cmd.arg("-c")
        .arg(format!(
            "cd \"$1\" && . admin/etcdctl.env && {then} && etcdctl --command-timeout=10s {args}"
        ))
        .arg("sh")
        .arg(out);
    for (k, _) in std::env::vars() {
        if k.starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    Run::of(&mut cmd)
}
