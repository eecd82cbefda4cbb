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

use qetcd_robustness::recorder::{Load, Recording};
use qetcd_robustness::report;
use qetcd_tests::{Binary, Cluster, wait_until};

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

/// A cluster under recorded load.
struct Run {
    name: &'static str,
    cluster: Cluster,
    /// Member IDs, by index (learned while every member answers).
    ids: Vec<u64>,
    rt: tokio::runtime::Runtime,
    recording: Option<Recording>,
    started: Instant,
}

impl Run {
    fn start(name: &'static str) -> Run {
        let specs = Cluster::specs(&format!("{name}-"), 3, &format!("robustness-{name}"));
        let cluster = Cluster::start(Binary::Qetcd, specs);
        let ids = (0..3).map(|i| cluster.member_id(i)).collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let endpoints = cluster.members.iter().map(|m| m.client_url()).collect();
        let recording = {
            let _guard = rt.enter();
            Recording::start(endpoints, Load::default())
        };
        let run = Run {
            name,
            cluster,
            ids,
            rt,
            recording: Some(recording),
            started: Instant::now(),
        };
        run.wait_for_progress("warm-up", WARM_UP_OPS);
        run
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
            let out = self.cluster.members[i].etcdctl().run(&[
                "endpoint",
                "status",
                "-w",
                "json",
                "--command-timeout=2s",
            ]);
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
        let history = self
            .rt
            .block_on(recording.finish(Duration::from_secs(30)))
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
        eprintln!(
            "{}: {summary}; load {load_time:.1?}, checked in {:.1?}",
            self.name,
            checking.elapsed()
        );
    }
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The leader dies (SIGKILL) under load, the others elect a new one, and it comes back
/// on its data directory.
#[test]
fn leader_killed_and_restarted() {
    let _serial = serial();
    let mut run = Run::start("kill-leader");
    let leader = run.wait_for_leader(&[0, 1, 2], None);
    run.cluster.members[leader].kill9();
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    run.wait_for_leader(&others, Some(leader));
    run.wait_for_progress("with the old leader dead", 300);
    run.cluster.members[leader].relaunch();
    run.cluster.members[leader].wait_healthy();
    run.wait_for_leader(&[0, 1, 2], None);
    run.finish();
}

/// The leader is paused (SIGSTOP) until the others have elected a new leader, so past
/// an election timeout, then continued: it comes back a follower with stale beliefs.
#[test]
fn leader_paused_past_an_election_timeout() {
    let _serial = serial();
    let run = Run::start("pause-leader");
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
    let mut run = Run::start("kill-all");
    for m in &mut run.cluster.members {
        m.kill9();
    }
    // Load runs on against no one for a moment: those requests fail.
    run.pace(Duration::from_secs(1));
    for m in &mut run.cluster.members {
        m.relaunch();
    }
    for m in &run.cluster.members {
        m.wait_healthy();
    }
    run.wait_for_leader(&[0, 1, 2], None);
    run.finish();
}
