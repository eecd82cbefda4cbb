//! Patroni keeps PostgreSQL highly available on qetcd through the v3 HTTP/JSON gateway
//! (its `etcd3` mode): Debian's `patroni` and PostgreSQL 15, two nodes on loopback
//! addresses, a three-member qetcd cluster. A primary is elected, the other node
//! becomes its replica, and when the primary's Patroni and PostgreSQL are killed the
//! replica takes the leader key and is promoted — once with every qetcd member up,
//! once with a qetcd member killed first.
//!
//! PostgreSQL refuses to run as root, so Patroni runs as the `postgres` user that
//! Debian's package creates. Every process is killed when its guard drops, also when
//! the test fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qetcd_tests::member::unique_ip;
use qetcd_tests::{Binary, Cluster, wait_until};

const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Patroni's leader-key TTL and loop period, in seconds (its minimum TTL is 20).
const TTL: u64 = 20;
const LOOP_WAIT: u64 = 2;
const SCOPE: &str = "qetcd";

/// One Patroni node and the PostgreSQL it runs, killed on drop.
struct PatroniNode {
    name: String,
    ip: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl PatroniNode {
    fn config_path(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start(name: &str, root: &Path, etcd_hosts: &str) -> PatroniNode {
        let ip = unique_ip();
        let dir = root.join(name);
        fs::create_dir_all(dir.join("socket")).unwrap();
        let data = dir.join("data");
        let config = format!(
            "scope: {SCOPE}
namespace: /service/
name: {name}
restapi:
  listen: {ip}:8008
  connect_address: {ip}:8008
etcd3:
  hosts: {etcd_hosts}
bootstrap:
  dcs:
    ttl: {TTL}
    loop_wait: {LOOP_WAIT}
    retry_timeout: 5
  initdb:
  - encoding: UTF8
postgresql:
  listen: {ip}:5432
  connect_address: {ip}:5432
  data_dir: {data}
  bin_dir: {POSTGRES_BIN}
  pgpass: {dir}/pgpass
  authentication:
    superuser: {{username: postgres, password: super-secret}}
    replication: {{username: replicator, password: rep-secret}}
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.0/8 md5
  - host all all 127.0.0.0/8 md5
  parameters:
    unix_socket_directories: {dir}/socket
",
            data = data.display(),
            dir = dir.display(),
        );
        fs::write(dir.join("patroni.yml"), config).unwrap();
        chown_postgres(&dir);
        let mut node = PatroniNode {
            name: name.to_string(),
            ip,
            dir,
            child: None,
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let log = fs::File::create(self.dir.join("patroni.log")).unwrap();
        let (uid, gid) = postgres_ids();
        let child = Command::new("patroni")
            .arg(self.config_path())
            .uid(uid)
            .gid(gid)
            .env("HOME", &self.dir)
            // Its own process group: PostgreSQL's processes go with it on kill.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run patroni (apt-get install patroni)");
        self.child = Some(child);
    }

    /// Kills Patroni (-9) and then its PostgreSQL, as a crashed host would lose them.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            signal_kill(&format!("-{pid}"));
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(pidfile) = fs::read_to_string(self.data_dir().join("postmaster.pid"))
            && let Some(pid) = pidfile.lines().next()
        {
            signal_kill(pid.trim());
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("patroni.log")).unwrap_or_default()
    }
}

impl Drop for PatroniNode {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- log of Patroni node {} ({}) ---\n{}",
                self.name,
                self.ip,
                self.log()
            );
        }
    }
}

fn signal_kill(pid: &str) {
    let _ = Command::new("kill")
        .args(["-9", "--", pid])
        .stderr(Stdio::null())
        .status();
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres user (apt-get install postgresql)")
    };
    (id("-u"), id("-g"))
}

fn chown_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "chown {}", path.display());
}

/// `patronictl list` as (member, role, state) rows.
fn patronictl_list(node: &PatroniNode) -> Option<Vec<(String, String, String)>> {
    let out = Command::new("patronictl")
        .arg("-c")
        .arg(node.config_path())
        .args(["list", "-f", "json"])
        .output()
        .ok()?;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        rows.as_array()?
            .iter()
            .map(|r| {
                let field = |k: &str| r[k].as_str().unwrap_or("").to_string();
                (field("Member"), field("Role"), field("State"))
            })
            .collect(),
    )
}

/// Waits until `patronictl list` shows `leader` as the leader, running, and (when
/// given) `replica` as a running replica.
fn wait_for_roles(node: &PatroniNode, leader: &str, replica: Option<&str>, within: Duration) {
    let mut last = None;
    let found = wait_until("patronictl list to show the roles", within, || {
        let rows = patronictl_list(node)?;
        last = Some(rows.clone());
        let has = |name: &str, role: &str| {
            rows.iter()
                .any(|(m, r, s)| m == name && r == role && (s == "running" || s == "streaming"))
        };
        (has(leader, "Leader") && replica.is_none_or(|r| has(r, "Replica"))).then_some(())
    });
    if found.is_err() {
        panic!("patronictl list never showed leader {leader}, replica {replica:?}; last: {last:?}");
    }
}

fn leader_key(cluster: &Cluster, running: usize) -> Option<String> {
    let out = cluster.members[running].etcdctl().run(&[
        "get",
        &format!("/service/{SCOPE}/leader"),
        "--print-value-only",
    ]);
    out.success.then(|| out.stdout.trim().to_string())
}

fn failover(kill_a_qetcd_member: bool) {
    if !Path::new("/usr/bin/patroni").exists() || !Path::new(POSTGRES_BIN).exists() {
        eprintln!("skipped: apt-get install patroni postgresql");
        return;
    }
    let started = Instant::now();
    let cluster = Cluster::start(Binary::Qetcd, Cluster::specs("patroni", 3, "patroni-test"));
    let mut cluster = cluster;
    let hosts = cluster
        .members
        .iter()
        .map(|m| m.spec.ip.clone() + ":2379")
        .collect::<Vec<_>>()
        .join(",");
    let root = tempfile::tempdir().unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();

    let mut first = PatroniNode::start("pg0", root.path(), &hosts);
    // The first node bootstraps (initdb) and takes the leader key.
    wait_for_roles(&first, "pg0", None, Duration::from_secs(90));
    let second = PatroniNode::start("pg1", root.path(), &hosts);
    wait_for_roles(&first, "pg0", Some("pg1"), Duration::from_secs(90));
    assert_eq!(leader_key(&cluster, 0).as_deref(), Some("pg0"));
    eprintln!("primary and replica up after {:?}", started.elapsed());

    // A qetcd member to serve from after the kill.
    let mut running = 0;
    if kill_a_qetcd_member {
        // The Raft leader: the harder case, an election in qetcd under Patroni.
        let leader = cluster.wait_for_leader(&[0, 1, 2]);
        cluster.members[leader].kill9();
        running = (leader + 1) % 3;
        cluster.wait_for_leader(&[running, (leader + 2) % 3]);
        // Patroni goes on through the other members: the primary keeps its key.
        wait_for_roles(&first, "pg0", Some("pg1"), Duration::from_secs(60));
    }

    let killed_at = Instant::now();
    first.kill();
    // The leader key expires after the TTL; the replica takes it on its next loop.
    wait_for_roles(&second, "pg1", None, Duration::from_secs(90));
    let promoted_after = killed_at.elapsed();
    assert_eq!(leader_key(&cluster, running).as_deref(), Some("pg1"));
    eprintln!(
        "replica promoted {promoted_after:?} after the primary was killed (TTL {TTL} s); \
         whole run {:?}",
        started.elapsed()
    );
    assert!(
        promoted_after <= Duration::from_secs(TTL + 3 * LOOP_WAIT + 5),
        "promotion took {promoted_after:?}, more than the TTL of {TTL} s and a few loops"
    );
}

#[test]
fn patroni_fails_over_on_qetcd() {
    failover(false);
}

#[test]
fn patroni_fails_over_with_a_qetcd_member_down() {
    failover(true);
}
