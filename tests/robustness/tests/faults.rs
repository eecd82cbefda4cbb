//! One fault per test, under a recorded load on a three-member cluster: the history is
//! then checked for linearizability (per key), the global revision order and etcd's
//! watch guarantees. A failed check writes the history and the failing windows to a
//! file under `target/tmp/robustness/` and the test fails naming it.
//!
//! With `QETCD_ROBUSTNESS_KEEP=1` every history is written there, passed or not.
//!
//! The tests run one at a time (they share two cores with everything else): each waits
//! for its conditions with deadlines, and sleeps only to let load run.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use qetcd_robustness::history::{History, Kv, Outcome, Request, Response};
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
}

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
}

impl Run {
    fn start(name: &'static str, net: Net) -> Run {
        let token = format!("robustness-{name}");
        let (cluster, hosts, rt) = match net {
            Net::Loopback => {
                let specs = Cluster::specs(&format!("{name}-"), 3, &token);
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                (Cluster::start(Binary::Qetcd, specs), None, rt)
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
            Duration::from_secs(40),
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

    /// Lets load run on (pacing).
    fn pace(&self, d: Duration) {
        std::thread::sleep(d);
    }

    /// After the fault is healed: waits for progress, lets load fill the least load
    /// time, stops the recording and checks the history.
    fn finish(mut self) {
        self.wait_for_progress("after the fault healed", AFTER_HEAL_OPS);
        if let Some(rest) = MIN_LOAD.checked_sub(self.started.elapsed()) {
            self.pace(rest);
        }
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
    run.wait_for_progress("with the old leader dead", 300);
    run.cluster.members[leader].relaunch();
    run.wait_healthy(leader);
    run.wait_for_leader(&[0, 1, 2], None);
    run.finish();
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
    run.wait_for_progress("with a follower dead", 300);
    run.cluster.members[follower].relaunch();
    run.wait_healthy(follower);
    run.wait_for_leader(&[0, 1, 2], None);
    run.finish();
}

/// The leader is paused (SIGSTOP) until the others have elected a new leader, so past
/// an election timeout, then continued: it comes back a follower with stale beliefs.
#[test]
fn leader_paused_past_an_election_timeout() {
    let _serial = serial();
    let run = Run::start("pause-leader", Net::Loopback);
    let leader = run.wait_for_leader(&[0, 1, 2], None);
    run.cluster.members[leader].signal("STOP");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    run.wait_for_leader(&others, Some(leader));
    run.wait_for_progress("with the old leader paused", 300);
    run.cluster.members[leader].signal("CONT");
    run.wait_for_leader(&[0, 1, 2], None);
    run.finish();
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
    run.finish();
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
    let run = Run::start("partition-leader", Net::Hosts);
    let leader = run.wait_for_leader(&[0, 1, 2], None);
    let hosts = run.hosts.as_ref().expect("hosts");
    hosts.set_link(leader, false);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    run.wait_for_leader(&others, Some(leader));
    run.wait_for_progress("with the old leader cut off", 300);
    hosts.set_link(leader, true);
    run.wait_for_leader(&[0, 1, 2], None);
    run.finish();
}
