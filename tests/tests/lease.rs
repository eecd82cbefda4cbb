//! Leases as Debian's etcdctl 3.4 uses them, against real qetcd processes, with
//! Debian's etcd as the reference for what etcdctl prints.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use qetcd_tests::etcdctl::ETCDCTL;
use qetcd_tests::{Binary, Cluster, Etcdctl, Member, MemberSpec, Output, wait_until};

/// `etcdctl lease grant` → the lease ID (hex, as etcdctl prints and takes it).
/// `ttl` must be at least the minimum (2 s with default timing).
fn grant(ctl: &Etcdctl, ttl: u64) -> String {
    let (id, granted) = grant_line(ctl, ttl);
    assert_eq!(granted, ttl);
    id
}

/// `etcdctl lease grant` → the lease ID and the TTL granted.
fn grant_line(ctl: &Etcdctl, ttl: u64) -> (String, u64) {
    let out = ctl.run(&["lease", "grant", &ttl.to_string()]);
    let line = out.ok().trim().to_string();
    // "lease 694d7a1c4fb1c70b granted with TTL(10s)"
    let parsed = line.strip_prefix("lease ").and_then(|rest| {
        let (id, rest) = rest.split_once(" granted with TTL(")?;
        Some((id.to_string(), rest.strip_suffix("s)")?.parse().ok()?))
    });
    parsed.unwrap_or_else(|| panic!("unexpected grant output {line:?}"))
}

/// Whether `key` exists, and when the read finished.
fn present(ctl: &Etcdctl, key: &str) -> (bool, Instant) {
    let out = ctl.run(&["get", key, "--keys-only"]);
    let done = Instant::now();
    (!out.ok().trim().is_empty(), done)
}

/// The last line etcdctl wrote to stderr (its `Error: ...` line), without the retry
/// warnings before it.
fn error_line(out: &Output) -> String {
    out.stderr.lines().last().unwrap_or_default().to_string()
}

/// `etcdctl lease keep-alive` running in the background, its output in a file.
struct KeepAlive {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl KeepAlive {
    fn start(endpoint: &str, id: &str) -> KeepAlive {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keep-alive.out");
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint, "lease", "keep-alive", id])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("etcdctl runs");
        KeepAlive {
            child,
            out,
            _dir: dir,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// How many keep-alives were answered so far.
    fn answered(&self, id: &str) -> usize {
        self.output()
            .lines()
            .filter(|l| l.starts_with(&format!("lease {id} keepalived with TTL(")))
            .count()
    }

    fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = &mut self.child;
        wait_until("etcdctl lease keep-alive to exit", timeout, || {
            child.try_wait().unwrap()
        })
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run of the lease commands, as text comparable across servers: lease IDs
/// replaced by `<A>`, `<B>`, the changing remaining TTL checked and replaced.
fn lease_script(ctl: &Etcdctl) -> Vec<String> {
    let mut seen = Vec::new();
    // Below the minimum TTL (1.5 election timeouts): raised to it.
    let (short, short_ttl) = grant_line(ctl, 1);
    seen.push(format!("short lease TTL {short_ttl}"));
    let long = grant(ctl, 60);
    let mut record = |args: &[&str]| {
        let out = ctl.run(args);
        let mut text = format!("{:?} {}{}", out.code, out.stdout, error_line(&out));
        if let Some(start) = text.find("remaining(") {
            let end = start + text[start..].find("s)").unwrap();
            let secs: u64 = text[start + 10..end].parse().unwrap();
            assert!((50..=60).contains(&secs), "remaining {secs}s of 60: {text}");
            text.replace_range(start..end, "remaining(<n>");
        }
        seen.push(text.replace(&long, "<A>").replace(&short, "<B>"));
    };
    record(&["put", "--lease", &long, "k", "v"]);
    record(&["lease", "timetolive", &long]);
    record(&["lease", "timetolive", "--keys", &long]);
    record(&["lease", "timetolive", "1234"]);
    record(&["lease", "revoke", "1234"]);
    record(&["lease", "keep-alive", "--once", &long]);
    record(&["lease", "keep-alive", "--once", "1234"]);
    record(&["put", "--lease", "1234", "x", "y"]);
    record(&["put", "--ignore-lease", "k", "w"]);
    record(&["get", "k", "--print-value-only"]);
    record(&["lease", "timetolive", "--keys", &long]);
    record(&["lease", "grant", "9000000001"]);
    record(&["lease", "revoke", &long]);
    record(&["get", "k"]);
    record(&["lease", "timetolive", &long]);
    // The JSON form of a grant and of a missing lease's time to live, minus the
    // header's and the lease's numbers.
    let json = ctl.run(&["lease", "grant", "5", "-w", "json"]).json();
    seen.push(format!("{:?} TTL={}", sorted_keys(&json), json["TTL"]));
    let json = ctl
        .run(&["lease", "timetolive", "-w", "json", "1234"])
        .json();
    seen.push(format!(
        "{:?} ttl={} granted-ttl={} keys={}",
        sorted_keys(&json),
        json["ttl"],
        json["granted-ttl"],
        json["keys"]
    ));
    seen
}

fn sorted_keys(v: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[test]
fn lease_commands_print_what_etcd_prints() {
    let m = Member::start(Binary::Qetcd, MemberSpec::new("lease"));
    let ours = lease_script(&m.etcdctl());
    // Spot checks that hold whatever the reference says.
    assert!(
        ours.iter().any(|l| l.contains("already expired")),
        "{ours:#?}"
    );
    assert!(
        ours.iter()
            .any(|l| l.contains("etcdserver: requested lease not found")),
        "{ours:#?}"
    );
    assert!(
        ours.iter().any(|l| l.contains("too large lease TTL")),
        "{ours:#?}"
    );
    if !Binary::Etcd.available() {
        eprintln!("Debian's etcd is not installed: compared with nothing");
        return;
    }
    let reference = Member::start(Binary::Etcd, MemberSpec::new("lease-ref"));
    let theirs = lease_script(&reference.etcdctl());
    assert_eq!(ours, theirs);
}

#[test]
fn lease_list_and_timetolive_keys() {
    let m = Member::start(Binary::Qetcd, MemberSpec::new("lease-list"));
    let ctl = m.etcdctl();
    assert_eq!(ctl.run(&["lease", "list"]).ok(), "found 0 leases\n");
    let a = grant(&ctl, 100);
    let b = grant(&ctl, 200);
    assert_ne!(a, b);
    let listed = ctl.run(&["lease", "list"]);
    let mut lines: Vec<&str> = listed.ok().lines().collect();
    assert_eq!(lines.remove(0), "found 2 leases");
    lines.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(lines, want);
    for key in ["z", "m", "a"] {
        ctl.run(&["put", "--lease", &a, key, "v"]).ok();
    }
    let ttl = ctl.run(&["lease", "timetolive", "--keys", &a]);
    assert!(
        ttl.ok().trim_end().ends_with("attached keys([a m z])"),
        "{ttl:?}"
    );
    // A put without the lease takes the key away from it.
    ctl.run(&["put", "m", "v"]).ok();
    let ttl = ctl.run(&["lease", "timetolive", "--keys", &a]);
    assert!(
        ttl.ok().trim_end().ends_with("attached keys([a z])"),
        "{ttl:?}"
    );
    // Revoking deletes both keys in one revision: puts were revisions 2..5, so the
    // store is at 6 afterwards, not 7.
    ctl.run(&["lease", "revoke", &a]).ok();
    let get = ctl.run(&["get", "a", "-w", "json"]).json();
    assert_eq!(get["header"]["revision"], 6, "{get}");
    assert_eq!(
        ctl.run(&["get", "", "--prefix", "--keys-only"]).ok().trim(),
        "m"
    );
    assert_eq!(
        ctl.run(&["lease", "list"]).ok(),
        format!("found 1 leases\n{b}\n")
    );
}

#[test]
fn keys_vanish_when_their_lease_expires_and_not_before() {
    let m = Member::start(Binary::Qetcd, MemberSpec::new("lease-expiry"));
    let ctl = m.etcdctl();
    let ttl = Duration::from_secs(3);
    let granted_at = Instant::now();
    let id = grant(&ctl, 3);
    ctl.run(&["put", "--lease", &id, "a", "1"]).ok();
    ctl.run(&["put", "--lease", &id, "b", "2"]).ok();
    // Present until the TTL has passed since the grant was asked for.
    let gone_at = wait_until("the lease's keys to vanish", ttl * 3, || {
        let (there, read_done) = present(&ctl, "a");
        if there {
            return None;
        }
        assert!(
            read_done >= granted_at + ttl,
            "key gone {:?} after the grant, before the lease's TTL of {ttl:?}",
            read_done - granted_at
        );
        Some(read_done)
    })
    .unwrap();
    assert!(!present(&ctl, "b").0);
    eprintln!(
        "key gone {:?} after a {ttl:?} lease was granted",
        gone_at - granted_at
    );
    // One revoke, one revision: puts at 2 and 3, both deletions at 4.
    let get = ctl.run(&["get", "a", "-w", "json"]).json();
    assert_eq!(get["header"]["revision"], 4, "{get}");
    assert_eq!(
        ctl.run(&["lease", "timetolive", &id]).ok().trim(),
        format!("lease {id} already expired")
    );
}

#[test]
fn keep_alive_holds_a_lease_until_it_is_revoked() {
    let m = Member::start(Binary::Qetcd, MemberSpec::new("lease-keepalive"));
    let ctl = m.etcdctl();
    let id = grant(&ctl, 2);
    ctl.run(&["put", "--lease", &id, "held", "1"]).ok();
    let mut keep = KeepAlive::start(&m.client_url(), &id);
    // Three TTLs, checking all along that the key stays.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert!(present(&ctl, "held").0, "key lost while kept alive");
        let remaining = ctl.run(&["lease", "timetolive", &id]);
        assert!(
            remaining.ok().contains("granted with TTL(2s), remaining("),
            "{remaining:?}"
        );
    }
    assert!(keep.answered(&id) >= 3, "{}", keep.output());
    ctl.run(&["lease", "revoke", &id]).ok();
    assert!(!present(&ctl, "held").0);
    // The keep-alive client learns the lease is gone, says so, and stops.
    keep.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(
        keep.output()
            .contains(&format!("lease {id} expired or revoked.")),
        "{}",
        keep.output()
    );
}

#[test]
fn a_kept_alive_lease_outlives_a_leader_failover() {
    let mut c = Cluster::start(Binary::Qetcd, Cluster::specs("lease-fo", 3, "lease-fo"));
    let leader = c.wait_for_leader(&[0, 1, 2]);
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (f1, f2) = (followers[0], followers[1]);
    let ctl1 = c.members[f1].etcdctl();
    let ctl2 = c.members[f2].etcdctl();
    let ttl = Duration::from_secs(4);
    // Granted through different members: distinct IDs all the same.
    let kept = grant(&ctl1, 4);
    let left_at = Instant::now();
    let left = grant(&ctl2, 4);
    assert_ne!(kept, left);
    ctl1.run(&["put", "--lease", &kept, "kept", "1"]).ok();
    ctl2.run(&["put", "--lease", &left, "left", "1"]).ok();
    let keep = KeepAlive::start(&c.members[f1].client_url(), &kept);
    wait_until("a first keep-alive answer", Duration::from_secs(10), || {
        (keep.answered(&kept) > 0).then_some(())
    })
    .unwrap();

    let answered_before = keep.answered(&kept);
    c.members[leader].kill9();
    let killed_at = Instant::now();

    // Over two TTLs after the kill: the kept-alive key stays, on both survivors. (The
    // reads wait for the election.)
    let until = killed_at + 2 * ttl + Duration::from_secs(1);
    while Instant::now() < until {
        assert!(
            present(&ctl1, "kept").0 && present(&ctl2, "kept").0,
            "kept-alive key lost after the failover; keep-alive said:\n{}",
            keep.output()
        );
    }
    assert!(
        keep.answered(&kept) > answered_before,
        "keep-alives answered after the failover: {}",
        keep.output()
    );
    // The new leader expires what nobody keeps alive, and not before its TTL.
    wait_until(
        "the lease nobody keeps alive to expire under the new leader",
        Duration::from_secs(15),
        || {
            let (there, read_done) = present(&ctl2, "left");
            (!there).then(|| assert!(read_done >= left_at + ttl))
        },
    )
    .unwrap();
    assert!(present(&ctl1, "kept").0);
}

#[test]
fn a_lease_survives_a_restart_and_still_expires() {
    let mut m = Member::start(Binary::Qetcd, MemberSpec::new("lease-restart"));
    let ctl = m.etcdctl();
    let id = grant(&ctl, 4);
    ctl.run(&["put", "--lease", &id, "r", "1"]).ok();
    m.restart();
    let restarted_at = Instant::now();
    let ttl = ctl.run(&["lease", "timetolive", "--keys", &id]);
    let text = ttl.ok().trim_end();
    assert!(
        text.starts_with(&format!("lease {id} granted with TTL(4s), remaining("))
            && text.ends_with("attached keys([r])"),
        "{text}"
    );
    assert_eq!(
        ctl.run(&["lease", "list"]).ok(),
        format!("found 1 leases\n{id}\n")
    );
    // Deadlines are not persisted: as on etcd, a restarted member counts a full TTL
    // (plus an election timeout, for clients to come back) from its start, then
    // expires the lease nobody renews.
    wait_until(
        "the lease to expire after the restart",
        Duration::from_secs(15),
        || {
            let (there, read_done) = present(&ctl, "r");
            (!there).then(|| assert!(read_done >= restarted_at + Duration::from_secs(4)))
        },
    )
    .unwrap();
}

#[test]
fn a_paused_leader_does_not_expire_a_lease_kept_alive_meanwhile() {
    let c = Cluster::start(
        Binary::Qetcd,
        Cluster::specs("lease-pause", 3, "lease-pause"),
    );
    let leader = c.wait_for_leader(&[0, 1, 2]);
    let f = (0..3).find(|i| *i != leader).unwrap();
    let ctl = c.members[f].etcdctl();
    let id = grant(&ctl, 2);
    ctl.run(&["put", "--lease", &id, "kept", "1"]).ok();
    let keep = KeepAlive::start(&c.members[f].client_url(), &id);
    // The leader stops mid-term; the others elect a new one and go on renewing. The
    // paused leader's deadlines all pass while it sleeps.
    c.members[leader].signal("STOP");
    let paused_at = Instant::now();
    let until = paused_at + Duration::from_secs(6);
    while Instant::now() < until {
        assert!(present(&ctl, "kept").0, "key lost during the pause");
    }
    // Woken, it still believes it leads the old term for a moment, and may propose
    // the expiry of every lease it tracks; that decision must not take effect.
    let answered = keep.answered(&id);
    c.members[leader].signal("CONT");
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert!(
            present(&ctl, "kept").0,
            "the resumed old leader's stale expiry revoked a kept-alive lease"
        );
    }
    assert!(keep.answered(&id) > answered, "{}", keep.output());
}

#[test]
fn a_member_that_catches_up_from_a_snapshot_knows_the_leases_and_expires_them_as_leader() {
    let specs = Cluster::specs_with("lease-snap", 3, "lease-snap", |s| {
        // Compact the log every 50 entries, keeping 10: a short absence outruns it.
        s.extra_args.extend(
            ["--snapshot-count", "50", "--snapshot-catchup-entries", "10"].map(String::from),
        );
    });
    let mut c = Cluster::start(Binary::Qetcd, specs);
    let leader = c.wait_for_leader(&[0, 1, 2]);
    let absent = (leader + 1) % 3;
    let absent_id = c.member_id(absent);
    c.members[absent].kill9();
    let ctl = c.members[leader].etcdctl();
    let gone = grant(&ctl, 60);
    ctl.run(&["put", "--lease", &gone, "gone", "1"]).ok();
    ctl.run(&["lease", "revoke", &gone]).ok();
    for i in 0..80 {
        ctl.run(&["put", &format!("fill/{i:03}"), "v"]).ok();
    }
    let short_at = Instant::now();
    let short = grant(&ctl, 10);
    ctl.run(&["put", "--lease", &short, "short", "1"]).ok();
    c.members[absent].restart();
    wait_until("a snapshot installed", Duration::from_secs(30), || {
        c.members[absent]
            .logs()
            .contains("installed snapshot from leader")
            .then_some(())
    })
    .unwrap();
    let there = c.members[absent].etcdctl();
    assert_eq!(
        there.run(&["lease", "list"]).ok(),
        format!("found 1 leases\n{short}\n")
    );
    assert!(
        there
            .run(&["lease", "timetolive", "--keys", &short])
            .ok()
            .trim_end()
            .ends_with("attached keys([short])")
    );
    // Leading, it expires the lease it learnt of from the snapshot.
    ctl.run(&["move-leader", &format!("{absent_id:x}")]).ok();
    wait_until("the lease to expire", Duration::from_secs(30), || {
        let (present, read_done) = present(&there, "short");
        (!present).then(|| assert!(read_done >= short_at + Duration::from_secs(10)))
    })
    .unwrap();
    assert!(
        c.members[absent]
            .logs()
            .contains(&format!("lease expired; revoked lease={short}")),
        "the new leader did not revoke it:\n{}",
        c.members[absent].logs()
    );
}
