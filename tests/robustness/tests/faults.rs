//! One fault per test, under a recorded load on a three-member cluster: the history is
//! then checked for linearizability (per key), the global revision order and etcd's
//! watch guarantees. A failed check writes the history and the failing windows to a
//! file under `target/tmp/robustness/` and the test fails naming it.
//!
//! With `QETCD_ROBUSTNESS_KEEP=1` every history is written there, passed or not.
//!
//! Each run records at least [`min_ops`] operations (`QETCD_ROBUSTNESS_OPS`, 2,000 by
//! default; `tests/robustness.sh --long` asks for 10,000), and holds its fault for a
//! fifth of them.
//!
//! The tests run one at a time (they share two cores with everything else): each waits
//! for its conditions with deadlines, and sleeps only to let load run.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use qetcd_robustness::history::{History, Kv, Outcome, Request, Response};
use qetcd_robustness::proxy::Proxies;
use qetcd_robustness::recorder::{Load, Recording};
use qetcd_robustness::{netns, report};
use qetcd_tests::netns::Hosts;
use qetcd_tests::{Binary, Cluster, Member, Output, wait_until};

/// Search steps per key before the linearizability check gives up (a failure).
const MAX_STEPS: u64 = 20_000_000;
/// Operations that must succeed before the fault, and again after it is healed.
const WARM_UP_OPS: i64 = 300;
const AFTER_HEAL_OPS: i64 = 300;
/// The least time load runs, fault included (pacing, not synchronisation).
const MIN_LOAD: Duration = Duration::from_secs(15);

/// The least operations a run records: `QETCD_ROBUSTNESS_OPS`, or 2,000.
fn min_ops() -> i64 {
    match std::env::var("QETCD_ROBUSTNESS_OPS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("QETCD_ROBUSTNESS_OPS={v}: not a whole number")),
        Err(_) => 2_000,
    }
}

/// Operations that must succeed while a fault holds (after the cluster has adapted).
fn during_fault_ops() -> i64 {
    (min_ops() / 5).max(300)
}

/// One test at a time: several clusters under load at once on two cores would turn
/// every request into a timeout.
static SERIAL: Mutex<()> = Mutex::new(());

fn reports_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("robustness")
}

/// Where the members run.
enum Net {
    /// Each on a loopback address of its own; the clients in the test process.
    Loopback,
    /// Each on a host of its own (a network namespace on a bridge), the clients on a
    /// fourth host: a host can then be cut off.
    Hosts,
    /// On loopback, each peer port behind a UDP proxy that can lose and delay
    /// datagrams ([`Proxies`]); the clients in the test process.
    Proxied,
    /// As [`Net::Loopback`], with member `member`'s data directory at `dir` (on a
    /// small file system, say).
    DataDirOn { member: usize, dir: PathBuf },
}

/// The port each member's peer proxy listens on in [`Net::Proxied`] (on the member's
/// own loopback address; the member itself listens on 2380).
const PROXY_PORT: u16 = 2381;

/// The client host's index in [`Net::Hosts`].
const CLIENT_HOST: usize = 3;

/// A cluster under recorded load.
struct Run {
    name: &'static str,
    /// Before `hosts`: the members leave their namespaces before those go.
    cluster: Cluster,
    /// Member IDs, by index (learned while every member answers).
    ids: Vec<u64>,
    rt: tokio::runtime::Runtime,
    recording: Option<Recording>,
    started: Instant,
    hosts: Option<Hosts>,
    /// The peer proxies of [`Net::Proxied`]; after `cluster`, so members go first.
    proxies: Option<Proxies>,
}

impl Run {
    fn start(name: &'static str, net: Net) -> Run {
        let token = format!("robustness-{name}");
        let local_runtime = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime")
        };
        let mut proxies = None;
        let (cluster, hosts, rt) = match net {
            Net::Loopback => {
                let specs = Cluster::specs(&format!("{name}-"), 3, &token);
                (Cluster::start(Binary::Qetcd, specs), None, local_runtime())
            }
            Net::DataDirOn { member, dir } => {
                let mut specs = Cluster::specs(&format!("{name}-"), 3, &token);
                // The spec leaves --data-dir to a set ETCD_DATA_DIR.
                specs[member]
                    .env
                    .push(("ETCD_DATA_DIR".into(), dir.display().to_string()));
                (Cluster::start(Binary::Qetcd, specs), None, local_runtime())
            }
            Net::Proxied => {
                let mut specs = Cluster::specs(&format!("{name}-"), 3, &token);
                let mut routes = Vec::new();
                for s in &mut specs {
                    let proxy = format!("{}:{PROXY_PORT}", s.ip);
                    routes.push((
                        proxy.parse().expect("proxy address"),
                        format!("{}:2380", s.ip).parse().expect("peer address"),
                    ));
                    s.advertise_peer = Some(format!("http://{proxy}"));
                }
                let initial = specs
                    .iter()
                    .map(|s| format!("{}={}", s.name, s.advertise_peer.as_deref().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",");
                for s in &mut specs {
                    s.initial_cluster = Some(initial.clone());
                }
                proxies = Some(Proxies::start(&routes).expect("start the peer proxies"));
                (Cluster::start(Binary::Qetcd, specs), None, local_runtime())
            }
            Net::Hosts => {
                let hosts = Hosts::create(&["10.0.7.10", "10.0.7.11", "10.0.7.12", "10.0.7.20"]);
                let specs = Cluster::specs_with(&format!("{name}-"), 3, &token, |s| {
                    let i: usize = s
                        .name
                        .rsplit('-')
                        .next()
                        .and_then(|i| i.parse().ok())
                        .expect("member index");
                    s.ip = hosts.addresses[i].clone();
                    s.netns = Some(hosts.namespaces[i].clone());
                });
                let cluster = Cluster {
                    members: specs
                        .into_iter()
                        .map(|s| Member::spawn(Binary::Qetcd, s))
                        .collect(),
                };
                let rt = netns::runtime_in(&hosts.namespaces[CLIENT_HOST], 2)
                    .expect("tokio runtime on the client host");
                (cluster, Some(hosts), rt)
            }
        };
        let mut run = Run {
            name,
            cluster,
            ids: Vec::new(),
            rt,
            recording: None,
            started: Instant::now(),
            hosts,
            proxies,
        };
        for i in 0..3 {
            run.wait_healthy(i);
        }
        run.ids = (0..3)
            .map(|i| {
                let v: serde_json::Value = serde_json::from_str(&run.status(i).stdout)
                    .unwrap_or_else(|e| panic!("{name}: endpoint status of member {i}: {e}"));
                v[0]["Status"]["header"]["member_id"]
                    .as_u64()
                    .expect("member id")
            })
            .collect();
        let endpoints = run.cluster.members.iter().map(|m| m.client_url()).collect();
        run.recording = {
            let _guard = run.rt.enter();
            Some(Recording::start(endpoints, Load::default()))
        };
        run.started = Instant::now();
        run.wait_for_progress("warm-up", WARM_UP_OPS);
        run
    }

    /// etcdctl against member `i` alone, from where the clients are.
    fn etcdctl(&self, i: usize, args: &[&str]) -> Output {
        let url = self.cluster.members[i].client_url();
        match &self.hosts {
            None => self.cluster.members[i].etcdctl().run(args),
            Some(hosts) => hosts.etcdctl(CLIENT_HOST, &url, args),
        }
    }

    fn status(&self, i: usize) -> Output {
        self.etcdctl(
            i,
            &["endpoint", "status", "-w", "json", "--command-timeout=2s"],
        )
    }

    fn wait_healthy(&self, i: usize) {
        wait_until(
            &format!("member {i} to report healthy"),
            Duration::from_secs(30),
            || {
                self.etcdctl(i, &["endpoint", "health", "--command-timeout=2s"])
                    .success
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", self.name));
    }

    fn recording(&self) -> &Recording {
        self.recording.as_ref().expect("recording")
    }

    /// Waits until `more` operations succeed from now on.
    fn wait_for_progress(&self, what: &str, more: i64) {
        let succeeded = self.recording().succeeded();
        let target = succeeded.load(Ordering::SeqCst) + more;
        wait_until(
            &format!("{more} operations to succeed ({what})"),
            Duration::from_secs(40) + Duration::from_millis(50) * more as u32,
            || (succeeded.load(Ordering::SeqCst) >= target).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", self.name));
    }

    /// The member the running members `among` agree leads, if they agree on one that is
    /// not `not`.
    fn leader(&self, among: &[usize], not: Option<usize>) -> Option<usize> {
        let mut agreed = None;
        for &i in among {
            let out = self.status(i);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            let leader = v[0]["Status"]["leader"].as_u64().filter(|l| *l != 0)?;
            let index = self.ids.iter().position(|id| *id == leader)?;
            if agreed.is_some_and(|a| a != index) || Some(index) == not {
                return None;
            }
            agreed = Some(index);
        }
        agreed
    }

    fn wait_for_leader(&self, among: &[usize], not: Option<usize>) -> usize {
        wait_until(
            &format!("members {among:?} to agree on a leader other than {not:?}"),
            Duration::from_secs(30),
            || self.leader(among, not),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// Asserts that members `a` and `b` hold the same keys at `revision` (each asked
    /// alone, serializably, once it has applied that far).
    fn assert_same_keys(&self, a: usize, b: usize, revision: i64) {
        let rev = format!("--rev={revision}");
        let keys = |i: usize| {
            let out = self.etcdctl(
                i,
                &[
                    "get",
                    "k/",
                    "--prefix",
                    &rev,
                    "--consistency=s",
                    "-w",
                    "json",
                ],
            );
            out.success.then(|| {
                let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
                v["kvs"].clone()
            })
        };
        let of = |i: usize| {
            wait_until(
                &format!("member {i} to serve revision {revision}"),
                Duration::from_secs(30),
                || keys(i),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
        };
        let expected = of(a);
        assert!(
            expected.as_array().is_some_and(|a| !a.is_empty()),
            "{}: no keys at revision {revision}: {expected}",
            self.name
        );
        assert_eq!(of(b), expected, "{}: members {a} and {b} differ", self.name);
    }

    /// Lets load run on (pacing).
    fn pace(&self, d: Duration) {
        std::thread::sleep(d);
    }

    /// After the fault is healed: waits for progress, lets load fill the least load
    /// time and reach [`min_ops`], stops the recording and checks the history, which
    /// it returns.
    fn finish(&mut self) -> History {
        self.wait_for_progress("after the fault healed", AFTER_HEAL_OPS);
        if let Some(rest) = MIN_LOAD.checked_sub(self.started.elapsed()) {
            self.pace(rest);
        }
        let done = self.recording().done();
        let target = min_ops();
        // Generous: a loaded machine has been seen to do no more than ~60 per second.
        let deadline = Duration::from_secs(60) + Duration::from_millis(50) * target as u32;
        wait_until(&format!("{target} operations in all"), deadline, || {
            (done.load(Ordering::SeqCst) >= target).then_some(())
        })
        .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let load_time = self.started.elapsed();
        let recording = self.recording.take().expect("recording");
        // On a worker thread: those are where the clients' network is.
        let finishing = self.rt.spawn(recording.finish(Duration::from_secs(30)));
        let history = self
            .rt
            .block_on(finishing)
            .expect("the recording's last task")
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.name));
        if std::env::var_os("QETCD_ROBUSTNESS_KEEP").is_some_and(|v| v == "1") {
            let findings = report::check(&history, MAX_STEPS);
            let path = report::write(&reports_dir(), self.name, &history, &findings)
                .expect("write the history");
            eprintln!("{}: history kept in {}", self.name, path.display());
        }
        let checking = Instant::now();
        let summary = report::check_or_report(&reports_dir(), self.name, &history, MAX_STEPS)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let checked_in = checking.elapsed();
        // The checkers are not vacuous on this very history: one read made stale fails.
        let stale = stale_read(&history)
            .unwrap_or_else(|| panic!("{}: no read to make stale in {summary}", self.name));
        assert!(
            !report::check(&stale, MAX_STEPS).linearizability.is_empty(),
            "{}: the linearizability check passed a history with a stale read",
            self.name
        );
        eprintln!(
            "{}: {summary}; load {load_time:.1?}, checked in {checked_in:.1?}",
            self.name
        );
        history
    }
}

/// A copy of `history` in which one successful read from its second half returns the
/// value its key had before a write that had returned before the read was called.
fn stale_read(history: &History) -> Option<History> {
    // Acknowledged puts and successful compare-and-swaps: (key, revision, value, return).
    let writes: Vec<(&str, i64, &str, u64)> = history
        .operations
        .iter()
        .filter_map(|op| {
            let rev = op.response()?.created_revision()?;
            match &op.request {
                Request::Put { key, value, .. } | Request::Cas { key, value, .. } => {
                    Some((key.as_str(), rev, value.as_str(), op.ret))
                }
                _ => None,
            }
        })
        .collect();
    let half = history.operations.len() / 2;
    for op in &history.operations[half..] {
        let (
            Request::Get { key },
            Outcome::Ok(Response::Get {
                header,
                kv: Some(kv),
            }),
        ) = (&op.request, &op.outcome)
        else {
            continue;
        };
        // A write of this key that returned before the read, and an earlier one.
        let Some(latest) = writes
            .iter()
            .filter(|w| w.0 == key && w.3 < op.call)
            .map(|w| w.1)
            .max()
        else {
            continue;
        };
        let Some(&(_, rev, value, _)) = writes
            .iter()
            .filter(|w| w.0 == key && w.1 < latest)
            .max_by_key(|w| w.1)
        else {
            continue;
        };
        let mut stale = history.clone();
        stale.operations[op.id].outcome = Outcome::Ok(Response::Get {
            header: *header,
            kv: Some(Kv {
                value: value.to_string(),
                mod_revision: rev,
                ..kv.clone()
            }),
        });
        return Some(stale);
    }
    None
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The leader dies (SIGKILL) under load, the others elect a new one, and it comes back
/// on its data directory.
#[test]
fn leader_killed_and_restarted() {
    let _serial = serial();
    let mut run = Run::start("kill-leader", Net::Loopback);
    let leader = run.wait_for_leader(&[0, 1, 2], None);
    run.cluster.members[leader].kill9();
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    run.wait_for_leader(&others, Some(leader));
    run.wait_for_progress("with the old leader dead", during_fault_ops());
    run.cluster.members[leader].relaunch();
    run.wait_healthy(leader);
    run.wait_for_leader(&[0, 1, 2], None);
    let _ = run.finish();
}

/// A follower dies (SIGKILL) while the other two carry the load, then restarts on its
/// data directory and catches up.
#[test]
fn follower_killed_and_restarted() {
    let _serial = serial();
    let mut run = Run::start("kill-follower", Net::Loopback);
    let leader = run.wait_for_leader(&[0, 1, 2], None);
    let follower = (leader + 1) % 3;
    run.cluster.members[follower].kill9();
    run.wait_for_progress("with a follower dead", during_fault_ops());
    run.cluster.members[follower].relaunch();
    run.wait_healthy(follower);
    run.wait_for_leader(&[0, 1, 2], None);
    let _ = run.finish();
}

/// The leader is paused (SIGSTOP) until the others have elected a new leader, so past
/// an election timeout, then continued: it comes back a follower with stale beliefs.
#[test]
fn leader_paused_past_an_election_timeout() {
    let _serial = serial();
    let mut run = Run::start("pause-leader", Net::Loopback);
    let leader = run.wait_for_leader(&[0, 1, 2], None);
    run.cluster.members[leader].signal("STOP");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    run.wait_for_leader(&others, Some(leader));
    run.wait_for_progress("with the old leader paused", during_fault_ops());
    run.cluster.members[leader].signal("CONT");
    run.wait_for_leader(&[0, 1, 2], None);
    let _ = run.finish();
}

/// Every member dies at once (SIGKILL) and all restart on their data directories.
#[test]
fn all_members_killed_at_once() {
    let _serial = serial();
    let mut run = Run::start("kill-all", Net::Loopback);
    for m in &mut run.cluster.members {
        m.kill9();
    }
    // Load runs on against no one for a moment: those requests fail.
    run.pace(Duration::from_secs(1));
    for m in &mut run.cluster.members {
        m.relaunch();
    }
    for i in 0..3 {
        run.wait_healthy(i);
    }
    run.wait_for_leader(&[0, 1, 2], None);
    let _ = run.finish();
}

/// The leader's host is cut off from the others and from the clients (its link goes
/// down) until the others have elected a new leader and served load, then comes back.
/// Needs root and iproute2 (`QETCD_SKIP_NETNS=1` skips it).
#[test]
fn leader_isolated_by_a_partition() {
    if !qetcd_tests::netns::required() {
        return;
    }
    let _serial = serial();
    let mut run = Run::start("partition-leader", Net::Hosts);
    let leader = run.wait_for_leader(&[0, 1, 2], None);
    let hosts = run.hosts.as_ref().expect("hosts");
    hosts.set_link(leader, false);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    run.wait_for_leader(&others, Some(leader));
    run.wait_for_progress("with the old leader cut off", during_fault_ops());
    hosts.set_link(leader, true);
    run.wait_for_leader(&[0, 1, 2], None);
    let _ = run.finish();
}

/// The cluster splits 2|1 with the leader alone (blackhole routes between its host and
/// the others' hosts, while the clients still reach all three). The two elect a new
/// leader and serve; the old one must neither acknowledge a write nor answer a
/// linearizable read while cut off. Then the split heals. Needs root and iproute2
/// (`QETCD_SKIP_NETNS=1` skips it).
#[test]
fn leader_in_the_minority_of_a_split() {
    if !qetcd_tests::netns::required() {
        return;
    }
    let _serial = serial();
    let mut run = Run::start("split-leader-minority", Net::Hosts);
    let leader = run.wait_for_leader(&[0, 1, 2], None);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let hosts = run.hosts.as_ref().expect("hosts");
    let host = |i: usize| (hosts.namespaces[i].as_str(), hosts.addresses[i].as_str());
    let cut = netns::Cut::between(&[host(leader)], &[host(others[0]), host(others[1])])
        .expect("split the cluster");
    run.wait_for_leader(&others, Some(leader));
    run.wait_for_progress("with the old leader in the minority", during_fault_ops());
    // Asked directly, the old leader refuses: a write outside the load's keys (so its
    // fate is checked below) and a linearizable read.
    let put = run.etcdctl(
        leader,
        &["put", "probe/minority", "x", "--command-timeout=3s"],
    );
    assert!(
        !put.success,
        "the minority's old leader acknowledged a write: {}",
        put.stdout
    );
    let get = run.etcdctl(leader, &["get", "k/0", "--command-timeout=3s"]);
    assert!(
        !get.success,
        "the minority's old leader served a linearizable read: {}",
        get.stdout
    );
    cut.heal().expect("heal the split");
    run.wait_for_leader(&[0, 1, 2], None);
    let _ = run.finish();
    // The refused write left no trace once the old leader rejoined.
    let after = run.etcdctl(others[0], &["get", "probe/minority", "-w", "json"]);
    assert!(after.success, "get probe/minority: {}", after.stderr);
    assert!(
        !after.stdout.contains("\"kvs\":"),
        "the write the minority refused was applied: {}",
        after.stdout
    );
}

/// Every peer link loses a fifth of its datagrams and delays the rest by 20–80 ms (so
/// they also overtake each other) under load, through the user-space proxies (this
/// kernel has no netem); then the links are clean again.
#[test]
fn peer_links_lossy_and_slow() {
    let _serial = serial();
    let mut run = Run::start("lossy-peer-links", Net::Proxied);
    run.wait_for_leader(&[0, 1, 2], None);
    let proxies = run.proxies.as_ref().expect("proxies");
    proxies
        .faults
        .set(0.2, Duration::from_millis(20), Duration::from_millis(60));
    run.wait_for_progress("over lossy, slow peer links", during_fault_ops());
    let counters = &run.proxies.as_ref().expect("proxies").counters;
    let (dropped, delayed) = (
        counters.dropped.load(Ordering::SeqCst),
        counters.delayed.load(Ordering::SeqCst),
    );
    run.proxies.as_ref().expect("proxies").faults.clear();
    assert!(
        dropped > 100 && delayed > 100,
        "the fault did not bite: {dropped} datagrams dropped, {delayed} delayed"
    );
    eprintln!("lossy-peer-links: {dropped} datagrams dropped, {delayed} delayed");
    run.wait_for_leader(&[0, 1, 2], None);
    let _ = run.finish();
}

/// A follower is removed (`etcdctl member remove`) under load and replaced by a new
/// member (`member add`, a fresh data directory, `--initial-cluster-state existing`
/// from the printed lines), which catches up: at the final revision it holds exactly
/// what the others hold.
#[test]
fn follower_removed_and_replaced() {
    let _serial = serial();
    let mut run = Run::start("replace-follower", Net::Loopback);
    let leader = run.wait_for_leader(&[0, 1, 2], None);
    let follower = (leader + 1) % 3;
    let removed = run.cluster.members[leader].etcdctl().run_reconfig(&[
        "member",
        "remove",
        &format!("{:x}", run.ids[follower]),
    ]);
    assert!(removed.success, "member remove: {}", removed.stderr);
    // etcd's removed member stops by itself; whether it has yet is not the point.
    run.cluster.members[follower].kill9();
    let remaining: Vec<usize> = (0..3).filter(|i| *i != follower).collect();
    run.wait_for_progress("with the follower removed", during_fault_ops());

    let (added, spec) = run
        .cluster
        .add_member(leader, "replace-follower-new", false);
    assert!(added.success, "member add: {}", added.stderr);
    let new = run.cluster.join(spec);
    run.wait_healthy(new);
    let new_id: u64 = {
        let v: serde_json::Value = serde_json::from_str(&run.status(new).stdout)
            .expect("endpoint status of the new member");
        v[0]["Status"]["header"]["member_id"]
            .as_u64()
            .expect("member id")
    };
    run.ids.push(new_id);
    let members: Vec<usize> = remaining.iter().copied().chain([new]).collect();
    run.wait_for_leader(&members, None);
    let history = run.finish();
    // The new member holds every key as the others do, at the final revision.
    run.assert_same_keys(remaining[0], new, history.final_revision);
}

/// The file system under one member's data directory (a small tmpfs) fills up under
/// load. The member stays up: it refuses writes with etcd's "database space exceeded",
/// serves serializable reads, and the others carry on. Once the tmpfs grows
/// (`mount -o remount,size=`) it takes writes again, catches up, and holds what the
/// others hold. Needs root (`QETCD_SKIP_NETNS=1` skips it, as the namespace tests).
#[test]
fn a_member_disk_fills_up_and_space_returns() {
    if !qetcd_tests::netns::required() {
        return;
    }
    let _serial = serial();
    const FULL: usize = 2;
    // Declared before the run, so dropped after its members are gone.
    let disk = qetcd_robustness::tmpfs::Tmpfs::mount(128).expect("mount a tmpfs");
    let dir = disk.path().join("data");
    let mut run = Run::start(
        "disk-full",
        Net::DataDirOn {
            member: FULL,
            dir: dir.clone(),
        },
    );
    // The daemon keeps 16 MiB free (storage::disk_space::RESERVE_BYTES): leave a
    // little above that for the load to fill (the log's WAL grows by pages of 4 KiB a
    // commit between checkpoints).
    disk.fill_leaving((16 << 20) + (256 << 10))
        .expect("fill the tmpfs");
    // The probe is a lease grant, a write that makes no revision: a put outside the
    // recorded keys would leave a gap the watch checker rightly reports.
    let grant = |run: &Run| run.etcdctl(FULL, &["lease", "grant", "600", "--command-timeout=3s"]);
    let refusal = wait_until(
        "the member with the full disk to refuse a write",
        Duration::from_secs(90),
        || {
            let out = grant(&run);
            (!out.success && out.stderr.contains("database space exceeded")).then_some(out.stderr)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("disk-full: refused with: {}", refusal.trim());
    assert!(
        run.cluster.members[FULL].is_running(),
        "the member with a full disk exited"
    );
    let read = run.etcdctl(FULL, &["get", "k/0", "--consistency=s"]);
    assert!(
        read.success,
        "serializable read on the full member: {}",
        read.stderr
    );
    run.wait_for_progress("with one member's disk full", during_fault_ops());
    assert!(run.cluster.members[FULL].is_running());

    disk.resize(256).expect("grow the tmpfs");
    wait_until(
        "the member to take writes again",
        Duration::from_secs(60),
        || grant(&run).success.then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    run.wait_for_leader(&[0, 1, 2], None);
    let history = run.finish();
    let refused = history
        .operations
        .iter()
        .filter(
            |op| matches!(&op.outcome, Outcome::Failed(e) if e.contains("database space exceeded")),
        )
        .count();
    eprintln!("disk-full: {refused} recorded writes refused for space");
    run.assert_same_keys((FULL + 1) % 3, FULL, history.final_revision);
    let logs = run.cluster.members[FULL].logs();
    assert!(
        logs.contains("disk is nearly full") && !logs.to_lowercase().contains("corrupt"),
        "the member's log should name the full disk and no corruption"
    );
}
