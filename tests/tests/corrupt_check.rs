//! The corruption checks between members (`--experimental-corrupt-check-time`,
//! `--experimental-initial-corrupt-check`), against real members with Debian's
//! etcdctl: a follower whose state database was changed by hand (with Debian's
//! `sqlite3`, the member stopped) is refused at start-up by the initial check, and
//! started without it is found by the leader's periodic check, which raises CORRUPT
//! for that member and so stops every write. An undamaged cluster under writes, its
//! followers lagging now and then, raises nothing over several periods, and passes
//! the initial check.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use qetcd_tests::{Binary, Cluster, wait_until};

const CHECK_EVERY: &str = "2s";

fn specs(prefix: &str) -> Vec<qetcd_tests::MemberSpec> {
    let mut specs = Cluster::specs(prefix, 3, &format!("{prefix}-token"));
    for s in &mut specs {
        s.extra_args = vec![
            "--experimental-corrupt-check-time".into(),
            CHECK_EVERY.into(),
        ];
    }
    specs
}

/// Runs `sql` on a stopped member's database with Debian's `sqlite3`; its output.
fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3 (Debian package sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The member's ID as etcd prints it in logs (hex) and alarms (decimal).
fn hex(id: u64) -> String {
    format!("{id:x}")
}

#[test]
fn a_damaged_follower_is_refused_at_start_and_raises_corrupt_periodically() {
    let mut cluster = Cluster::start(Binary::Qetcd, specs("damaged"));
    let ctl = cluster.etcdctl();
    for i in 0..20 {
        ctl.run(&["put", &format!("key{i:02}"), &format!("value{i}")])
            .ok();
    }
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    let follower_id = cluster.member_id(follower);
    // Every member has applied the writes before the follower stops.
    wait_until(
        "the follower to apply every write",
        Duration::from_secs(30),
        || {
            let out = cluster.members[follower].etcdctl().run(&[
                "get",
                "key19",
                "--consistency=s",
                "--print-value-only",
            ]);
            (out.stdout.trim() == "value19").then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cluster.members[follower].terminate().is_some(),
        "the follower stops on SIGTERM"
    );

    // Change the value one revision holds (not compacted: nothing was), after
    // folding the WAL into the file so the change is not shadowed by it.
    let db = cluster.members[follower].data_dir.join("qetcd/state.db");
    sqlite3(&db, "PRAGMA wal_checkpoint(TRUNCATE);");
    let changed = sqlite3(
        &db,
        "UPDATE kv_revisions SET value = CAST('tampered' AS BLOB) \
         WHERE key = CAST('key07' AS BLOB); SELECT changes();",
    );
    assert_eq!(changed.trim(), "1", "one stored revision changed");

    // With the initial check the member refuses to start, in etcd's words.
    let plain_args = cluster.members[follower].spec.extra_args.clone();
    cluster.members[follower]
        .spec
        .extra_args
        .push("--experimental-initial-corrupt-check".into());
    cluster.members[follower].relaunch();
    let status = cluster.members[follower]
        .wait_exit(Duration::from_secs(60))
        .expect("the damaged member exits");
    assert_eq!(
        status.code(),
        Some(1),
        "{}",
        cluster.members[follower].logs()
    );
    let logs = cluster.members[follower].logs();
    assert!(
        logs.contains(&format!(
            "{} found data inconsistency with peers",
            hex(follower_id)
        )),
        "{logs}"
    );
    assert!(
        logs.contains("found different hash values from remote peer"),
        "{logs}"
    );
    assert!(
        !cluster.members[follower].is_running(),
        "never serves after a failed check"
    );

    // Without it, the member starts; the leader's next checks find it. (Not waited
    // for as healthy: once the alarm is raised, /health says `ALARM CORRUPT`.)
    cluster.members[follower].spec.extra_args = plain_args;
    cluster.members[follower].relaunch();
    let expected = format!("memberID:{follower_id} alarm:CORRUPT");
    wait_until(
        "the periodic check to raise CORRUPT for the damaged member",
        Duration::from_secs(90),
        || {
            let out = ctl.run(&["alarm", "list"]);
            (out.success && out.stdout.trim() == expected).then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}; alarms now: {:?}\n--- leader log ---\n{}",
            ctl.run(&["alarm", "list"]),
            cluster.members[leader].logs()
        )
    });
    let refused = ctl.run(&["put", "after", "corruption"]);
    assert!(
        !refused.success && refused.stderr.contains("etcdserver: corrupt cluster"),
        "{refused:?}"
    );
    // The leader that found it says so at error level, naming the member.
    let found_by = cluster
        .members
        .iter()
        .map(|m| m.logs())
        .find(|l| l.contains("same compact revision then hashes must match"))
        .expect("some leader logged the mismatch");
    let line = found_by
        .lines()
        .find(|l| l.contains("same compact revision then hashes must match"))
        .expect("the line");
    assert!(
        line.contains(" ERROR ")
            && line.contains(&format!("corrupt_member_id={}", hex(follower_id))),
        "{line}"
    );
}

#[test]
fn an_undamaged_cluster_under_writes_raises_nothing() {
    let mut cluster = Cluster::start(Binary::Qetcd, specs("sound"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let checks_done = |cluster: &Cluster| {
        cluster.members[leader]
            .logs()
            .matches("finished peer corruption check")
            .count()
    };
    let before = checks_done(&cluster);
    // Writers keep the followers a little behind the leader while the checks run.
    let stop = AtomicBool::new(false);
    let written = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for w in 0..3 {
            let (ctl, stop, written) = (cluster.etcdctl(), &stop, &written);
            scope.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    let value = "v".repeat(512);
                    if ctl.run(&["put", &format!("w{w}/{i}"), &value]).success {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            });
        }
        let waited = wait_until(
            "three periodic checks under writes",
            Duration::from_secs(90),
            || (checks_done(&cluster) >= before + 3).then_some(()),
        );
        stop.store(true, Ordering::Release);
        waited.unwrap_or_else(|e| panic!("{e}\n{}", cluster.members[leader].logs()));
    });
    assert!(written.load(Ordering::Relaxed) > 0, "the writers wrote");
    let ctl = cluster.etcdctl();
    assert_eq!(ctl.run(&["alarm", "list"]).ok().trim(), "");
    for m in &cluster.members {
        let logs = m.logs();
        assert!(
            !logs.contains("hashes must match") && !logs.contains("must be less than"),
            "{logs}"
        );
    }
    // Peers answered: the checks compared something.
    assert!(
        cluster.members[leader]
            .logs()
            .lines()
            .any(|l| l.contains("finished peer corruption check")
                && !l.contains("number_of_peers_checked=0")),
        "no check compared a peer's hash"
    );

    // A sound member passes the initial check and serves again.
    let follower = (leader + 1) % 3;
    cluster.members[follower]
        .spec
        .extra_args
        .push("--experimental-initial-corrupt-check".into());
    cluster.members[follower].restart();
    let logs = cluster.members[follower].logs();
    assert!(
        logs.contains("initial corruption checking passed; no corruption"),
        "{logs}"
    );
    ctl.run(&["put", "after", "restart"]).ok();
}
