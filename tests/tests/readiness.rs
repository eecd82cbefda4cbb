//! systemd readiness without systemd: each member gets `$NOTIFY_SOCKET` pointing at a
//! unix datagram socket the test reads, as systemd's would be. `READY=1` must mean
//! "serving": etcdctl writes through the member the moment it arrives, and a member of a
//! three-member cluster without quorum says what it waits for but never READY.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use qetcd_tests::{Binary, Cluster, Member, MemberSpec};

/// A stand-in for systemd's notification socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    /// Everything received so far, one entry per datagram.
    received: Vec<String>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket {
            socket,
            path,
            received: Vec::new(),
            _dir: dir,
        }
    }

    fn env(&self) -> (String, String) {
        ("NOTIFY_SOCKET".into(), self.path.display().to_string())
    }

    /// The next datagram, or `None` once `deadline` passes.
    fn next(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.checked_duration_since(Instant::now())?;
        self.socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.received.push(text.clone());
        Some(text)
    }

    /// Reads until a datagram satisfies `pred`, failing with everything seen after
    /// `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(msg) = self.next(deadline) {
            if pred(&msg) {
                return msg;
            }
        }
        panic!(
            "no {what} within {timeout:?}; received: {:#?}",
            self.received
        );
    }

    fn statuses(&self) -> Vec<&str> {
        self.received
            .iter()
            .flat_map(|m| m.lines())
            .filter_map(|l| l.strip_prefix("STATUS="))
            .collect()
    }
}

fn is_ready(msg: &str) -> bool {
    msg.lines().any(|l| l == "READY=1")
}

/// The moment READY=1 arrives the member must take a write: one attempt, no retries.
fn assert_serving(member: &Member) {
    let out = member.etcdctl().run(&["put", "ready-check", "yes"]);
    assert!(
        out.success,
        "READY=1 was sent but {} cannot serve a put: {out:#?}\n{}",
        member.spec.name,
        member.logs()
    );
}

#[test]
fn one_member_is_ready_when_it_serves_pings_the_watchdog_and_says_stopping() {
    let mut notify = NotifySocket::new();
    let mut spec = MemberSpec::new("ready1");
    spec.env.push(notify.env());
    // systemd sets these for WatchdogSec=400ms; the member must ping every 200 ms.
    spec.env.push(("WATCHDOG_USEC".into(), "400000".into()));
    let mut member = Member::spawn(Binary::Qetcd, spec);

    let ready = notify.wait_for("READY=1", Duration::from_secs(30), is_ready);
    assert_serving(&member);
    assert!(
        ready.contains("STATUS=serving"),
        "READY=1 comes with the serving status: {ready:?}"
    );

    // Watchdog pings keep coming, a few per WatchdogSec.
    let since_ready = notify.received.len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while notify.received[since_ready..]
        .iter()
        .filter(|m| *m == "WATCHDOG=1")
        .count()
        < 3
    {
        assert!(
            notify.next(deadline).is_some(),
            "fewer than 3 WATCHDOG=1 within 5 s at WATCHDOG_USEC=400000: {:#?}",
            notify.received
        );
    }

    let status = member.terminate().expect("member exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    notify.wait_for("STOPPING=1", Duration::from_secs(5), |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
}

#[test]
fn three_members_are_ready_only_with_quorum_and_say_what_they_wait_for() {
    let specs = Cluster::specs("ready3-", 3, "readiness");
    let mut sockets: Vec<NotifySocket> = (0..3).map(|_| NotifySocket::new()).collect();
    let mut specs: Vec<MemberSpec> = specs
        .into_iter()
        .zip(&sockets)
        .map(|(mut s, n)| {
            s.env.push(n.env());
            // Meant for another process: the member must not ping.
            s.env.push(("WATCHDOG_USEC".into(), "400000".into()));
            s.env.push(("WATCHDOG_PID".into(), "1".into()));
            s
        })
        .collect();

    // One of three: no quorum. It must say so, and must not claim to be ready for a
    // good many election timeouts (etcd's default election timeout is 1 s).
    let first = Member::spawn(Binary::Qetcd, specs.remove(0));
    sockets[0].wait_for(
        "STATUS=waiting for peers: 1/3",
        Duration::from_secs(20),
        |m| m.contains("STATUS=waiting for peers: 1/3 members reachable"),
    );
    let quiet_until = Instant::now() + Duration::from_secs(5);
    while let Some(msg) = sockets[0].next(quiet_until) {
        assert!(
            !is_ready(&msg),
            "READY=1 without quorum: {:#?}",
            sockets[0].received
        );
    }
    let no_quorum = first
        .etcdctl()
        .run(&["--command-timeout=2s", "put", "k", "v"]);
    assert!(
        !no_quorum.success,
        "a put succeeded without quorum: {no_quorum:#?}"
    );

    // The others arrive; every member becomes ready, and serves when it says so.
    let mut members = vec![first];
    members.extend(specs.into_iter().map(|s| Member::spawn(Binary::Qetcd, s)));
    for (i, m) in members.iter().enumerate() {
        let ready = sockets[i].wait_for("READY=1", Duration::from_secs(30), is_ready);
        assert_serving(m);
        assert!(ready.contains("STATUS=serving; leader"), "{ready:?}");
    }
    for s in &sockets {
        assert!(
            !s.received.iter().any(|m| m == "WATCHDOG=1"),
            "pinged a watchdog meant for PID 1: {:#?}",
            s.received
        );
    }
    // Member 0 went through the waiting states in order: peers, then (possibly very
    // briefly) the election or publishing, then serving.
    let statuses = sockets[0].statuses();
    let waiting = statuses
        .iter()
        .position(|s| s.starts_with("waiting for peers"))
        .expect("waited for peers");
    let serving = statuses
        .iter()
        .position(|s| s.starts_with("serving"))
        .expect("serving");
    assert!(waiting < serving, "{statuses:#?}");
}
