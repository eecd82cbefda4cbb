//! Watch (issue 5): etcdctl's watch against a concurrent writer, history replay,
//! compaction, and a watcher that follows the writes across a leader's `kill -9`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use qetcd_tests::etcdctl::ETCDCTL;
use qetcd_tests::{Binary, Cluster, Member, MemberSpec, wait_until};

/// `etcdctl watch ... -w json` in the background; its responses, one JSON per line.
struct WatchProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<serde_json::Value>,
}

impl WatchProcess {
    fn start(endpoints: &str, args: &[&str]) -> WatchProcess {
        let mut child = Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints)
            .arg("watch")
            .args(args)
            .args(["-w", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl runs");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        WatchProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                self.seen.push(v);
            }
        }
    }

    /// (type, key, value, mod_revision, prev value) of every event so far.
    fn events(&mut self) -> Vec<(String, String, String, i64, Option<String>)> {
        self.drain();
        let mut out = Vec::new();
        for resp in &self.seen {
            for e in resp["Events"].as_array().into_iter().flatten() {
                let kv = &e["kv"];
                let text = |v: &serde_json::Value| {
                    v.as_str()
                        .map(|s| String::from_utf8(qetcd_tests::etcdctl::base64_decode(s)).unwrap())
                        .unwrap_or_default()
                };
                out.push((
                    if e["type"].as_i64() == Some(1) || e["type"] == "DELETE" {
                        "DELETE".to_string()
                    } else {
                        "PUT".to_string()
                    },
                    text(&kv["key"]),
                    text(&kv["value"]),
                    kv["mod_revision"].as_i64().unwrap_or(0),
                    e.get("prev_kv").map(|p| text(&p["value"])),
                ));
            }
        }
        out
    }

    fn wait_for_events(&mut self, n: usize) -> Vec<(String, String, String, i64, Option<String>)> {
        let r = wait_until(
            "the watcher to see the events",
            Duration::from_secs(30),
            || {
                let ev = self.events();
                (ev.len() >= n).then_some(ev)
            },
        );
        r.unwrap_or_else(|e| panic!("{e}: saw {:?}", self.events()))
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WatchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcdctl_watch_sees_exactly_a_concurrent_writers_events() {
    let m = Member::start(Binary::Qetcd, MemberSpec::new("watched"));
    let ctl = m.etcdctl();
    ctl.run(&["put", "w/old", "before"]).ok();
    let mut prefix = WatchProcess::start(&m.client_url(), &["--prefix", "w/", "--prev-kv"]);
    let mut single = WatchProcess::start(&m.client_url(), &["w/k3"]);
    // The watch is established once it answers: a put it sees proves it.
    wait_until("the watchers to start", Duration::from_secs(10), || {
        ctl.run(&["put", "w/k3", "first"]).ok();
        (!prefix.events().is_empty() && !single.events().is_empty()).then_some(())
    })
    .unwrap();

    let writer = {
        let ctl = ctl.clone();
        std::thread::spawn(move || {
            for i in 0..20 {
                ctl.run(&["put", &format!("w/k{}", i % 5), &format!("v{i}")])
                    .ok();
                if i % 7 == 6 {
                    ctl.run(&["del", &format!("w/k{}", i % 5)]).ok();
                }
            }
            ctl.run(&["put", "other/k", "not watched"]).ok();
        })
    };
    writer.join().unwrap();
    let history = ctl.run(&["get", "w/", "--prefix", "-w", "json"]).json();
    let last_rev = history["header"]["revision"].as_i64().unwrap() - 1; // minus other/k

    let seen = prefix.wait_for_events(1);
    let first_rev = seen[0].3;
    let expected_count = (last_rev - first_rev + 1) as usize;
    let seen = prefix.wait_for_events(expected_count);
    let revisions: Vec<i64> = seen.iter().map(|e| e.3).collect();
    let expected: Vec<i64> = (first_rev..=last_rev).collect();
    assert_eq!(
        revisions, expected,
        "every revision once, in order: {seen:?}"
    );
    assert!(seen.iter().all(|e| e.1.starts_with("w/")), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|e| e.0 == "DELETE").count(),
        2,
        "{seen:?}"
    );
    // prev_kv: the put of v5 to w/k0 replaced v0.
    let v5 = seen.iter().find(|e| e.2 == "v5").unwrap();
    assert_eq!(v5.4.as_deref(), Some("v0"), "{v5:?}");

    let single_events = single.events();
    assert!(
        single_events.iter().all(|e| e.1 == "w/k3"),
        "{single_events:?}"
    );
    let writer_values: Vec<&str> = single_events
        .iter()
        .filter(|e| e.2.starts_with('v'))
        .map(|e| e.2.as_str())
        .collect();
    assert_eq!(
        writer_values,
        ["v3", "v8", "v13", "v18"],
        "{single_events:?}"
    );
    let deletes = single_events.iter().filter(|e| e.0 == "DELETE").count();
    assert_eq!(deletes, 1, "the delete after v13: {single_events:?}");
}

#[test]
fn watch_from_a_past_revision_replays_history_then_follows() {
    let m = Member::start(Binary::Qetcd, MemberSpec::new("replay"));
    let ctl = m.etcdctl();
    for i in 0..10 {
        ctl.run(&["put", "h/key", &format!("{i}")]).ok();
    }
    let rev = ctl.run(&["get", "h/key", "-w", "json"]).json()["header"]["revision"]
        .as_i64()
        .unwrap();
    let mut w = WatchProcess::start(&m.client_url(), &["h/key", "--rev", &(rev - 9).to_string()]);
    let seen = w.wait_for_events(10);
    let values: Vec<&str> = seen.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(values, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    ctl.run(&["put", "h/key", "live"]).ok();
    let seen = w.wait_for_events(11);
    assert_eq!(seen[10].2, "live");
    assert_eq!(seen[10].3, rev + 1);

    // From a compacted revision: etcd's error.
    ctl.run(&["compaction", &rev.to_string()]).ok();
    let out = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &m.client_url(),
            "watch",
            "h/key",
            "--rev",
            "2",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("required revision has been compacted"),
        "{text} (exit {:?})",
        out.status
    );
}

#[test]
fn a_watcher_follows_writes_across_a_leader_kill() {
    let mut cluster = Cluster::start(Binary::Qetcd, Cluster::specs("wk", 3, "watch-kill"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.members[follower]
        .etcdctl()
        .run(&["put", "f/start", "0"])
        .ok();
    let start_rev = cluster.members[follower]
        .etcdctl()
        .run(&["get", "f/start", "-w", "json"])
        .json()["header"]["revision"]
        .as_i64()
        .unwrap();
    let survivors = format!(
        "{},{}",
        cluster.members[follower].client_url(),
        cluster.members[other].client_url()
    );
    let mut watcher = WatchProcess::start(
        &cluster.members[follower].client_url(),
        &["--prefix", "f/", "--rev", &start_rev.to_string()],
    );

    // A writer puts through the survivors while the leader dies under it.
    let writer_ctl = qetcd_tests::Etcdctl::new(&survivors);
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..60 {
            if writer_ctl.run(&["put", &format!("f/{i}"), "x"]).success {
                acked.push(i);
            }
        }
        acked
    });
    wait_until(
        "some writes before the kill",
        Duration::from_secs(20),
        || (watcher.events().len() > 10).then_some(()),
    )
    .unwrap();
    cluster.members[leader].kill9();
    let acked = writer.join().unwrap();
    assert!(
        acked.len() > 40,
        "writes continued after the kill: {acked:?}"
    );

    let last_rev = cluster.members[follower]
        .etcdctl()
        .run(&["get", "f/", "--prefix", "-w", "json"])
        .json()["header"]["revision"]
        .as_i64()
        .unwrap();
    let mut seen = Vec::new();
    let mut next = start_rev;
    // If the stream broke, watch again from the last revision seen + 1.
    for _ in 0..3 {
        let want = (last_rev - next + 1) as usize;
        let got = wait_until("the watcher to catch up", Duration::from_secs(20), || {
            let ev = watcher.events();
            (ev.len() >= want).then_some(ev)
        });
        let ev = got.unwrap_or_else(|_| watcher.events());
        if let Some(last) = ev.last() {
            next = last.3 + 1;
        }
        seen.extend(ev);
        if next > last_rev {
            break;
        }
        watcher.stop();
        watcher = WatchProcess::start(&survivors, &["--prefix", "f/", "--rev", &next.to_string()]);
    }
    let revisions: Vec<i64> = seen.iter().map(|e| e.3).collect();
    let expected: Vec<i64> = (start_rev..=last_rev).collect();
    assert_eq!(revisions, expected, "complete, ordered, gap-free");
    for i in acked {
        assert!(
            seen.iter().any(|e| e.1 == format!("f/{i}")),
            "acknowledged put f/{i} not seen"
        );
    }
}

/// What etcdctl 3.4 cannot ask for, through a Rust etcd client: progress requests,
/// periodic progress notifications, filters, several watchers on one stream, cancel.
#[tokio::test]
async fn progress_filters_and_cancel_through_a_rust_client() {
    use etcd_client::{Client, EventType, WatchFilterType, WatchOptions};

    let mut spec = MemberSpec::new("progress");
    spec.extra_args = vec![
        "--experimental-watch-progress-notify-interval".into(),
        "1s".into(),
    ];
    let m = Member::start(Binary::Qetcd, spec);
    let mut c = Client::connect([m.client_url()], None).await.unwrap();
    c.put("p/a", "1", None).await.unwrap();

    let mut stream = c
        .watch(
            "p/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoDelete]),
            ),
        )
        .await
        .unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created());
    let puts_only = created.watch_id();
    stream
        .watch(
            "p/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_progress_notify()
                    .with_filters([WatchFilterType::NoPut]),
            ),
        )
        .await
        .unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created());
    let deletes_only = created.watch_id();
    assert_ne!(puts_only, deletes_only);

    c.put("p/b", "2", None).await.unwrap();
    let del = c.delete("p/a", None).await.unwrap();
    let del_rev = del.header().unwrap().revision();
    let (mut saw_put, mut saw_delete, mut saw_notify) = (false, false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(saw_put && saw_delete && saw_notify) {
        let resp = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("responses within the deadline")
            .unwrap()
            .unwrap();
        for e in resp.events() {
            if resp.watch_id() == puts_only {
                assert_eq!(e.event_type(), EventType::Put);
                saw_put = true;
            } else {
                assert_eq!(e.event_type(), EventType::Delete);
                assert_eq!(resp.watch_id(), deletes_only);
                saw_delete = true;
            }
        }
        if resp.events().is_empty() && resp.watch_id() == deletes_only && saw_delete {
            // A periodic progress notification, at the current revision.
            assert_eq!(resp.header().unwrap().revision(), del_rev);
            saw_notify = true;
        }
    }

    // A progress request is answered on the stream with the current revision.
    stream.request_progress().await.unwrap();
    loop {
        let resp = stream.message().await.unwrap().unwrap();
        if resp.watch_id() == -1 {
            assert_eq!(resp.header().unwrap().revision(), del_rev);
            break;
        }
    }

    stream.cancel(puts_only).await.unwrap();
    loop {
        let resp = stream.message().await.unwrap().unwrap();
        if resp.canceled() {
            assert_eq!(resp.watch_id(), puts_only);
            break;
        }
    }
    c.put("p/c", "3", None).await.unwrap();
    c.delete("p/c", None).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let resp = stream.message().await.unwrap().unwrap();
            if !resp.events().is_empty() {
                return resp;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        resp.watch_id(),
        deletes_only,
        "the cancelled watcher stays quiet"
    );

    // With no watcher left the stream lets go of the event feed; a new watch on the
    // same stream takes it up again and misses nothing.
    stream.cancel(deletes_only).await.unwrap();
    loop {
        let resp = stream.message().await.unwrap().unwrap();
        if resp.canceled() {
            break;
        }
    }
    stream
        .watch("p/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created());
    let put = c.put("p/d", "4", None).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.watch_id(), created.watch_id());
    assert_eq!(
        resp.events()[0].kv().unwrap().mod_revision(),
        put.header().unwrap().revision()
    );
}

/// A watcher that stops reading must not hold up writes or other watchers; when it
/// reads again it gets everything, in order, from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_blocks_nobody_and_misses_nothing() {
    use etcd_client::{Client, WatchOptions};

    let m = Member::start(Binary::Qetcd, MemberSpec::new("stalled"));
    let mut c = Client::connect([m.client_url()], None).await.unwrap();
    let mut stalled = c
        .watch("s/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(stalled.message().await.unwrap().unwrap().created());
    let mut live = c
        .watch("s/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(live.message().await.unwrap().unwrap().created());

    // More batches than the feed holds, each larger than the stalled stream's buffers.
    let puts = 400;
    let value = vec![b'v'; 100 * 1024];
    let live_reader = tokio::spawn(async move {
        let mut revisions = Vec::new();
        while revisions.len() < puts {
            let resp = live.message().await.unwrap().unwrap();
            revisions.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
        }
        revisions
    });
    let mut first = 0;
    for i in 0..puts {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.put(format!("s/{i}"), value.clone(), None),
        )
        .await
        .expect("a put waited on a stalled watcher")
        .unwrap();
        if i == 0 {
            first = r.header().unwrap().revision();
        }
    }
    let live_revisions = tokio::time::timeout(Duration::from_secs(30), live_reader)
        .await
        .expect("the live watcher kept up")
        .unwrap();
    let expected: Vec<i64> = (first..first + puts as i64).collect();
    assert_eq!(live_revisions, expected);

    let mut stalled_revisions = Vec::new();
    while stalled_revisions.len() < puts {
        let resp = tokio::time::timeout(Duration::from_secs(30), stalled.message())
            .await
            .expect("the stalled watcher catches up")
            .unwrap()
            .unwrap();
        stalled_revisions.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    assert_eq!(
        stalled_revisions, expected,
        "in order, no gap, no duplicate"
    );
}

/// One revision larger than the response limit reaches a watcher that allows fragments
/// in several responses, all but the last marked as fragments.
#[tokio::test]
async fn a_large_revision_is_fragmented_for_watchers_that_allow_it() {
    use etcd_client::{Client, DeleteOptions, WatchOptions};

    let mut spec = MemberSpec::new("fragments");
    spec.extra_args = vec!["--max-request-bytes".into(), "4096".into()];
    let m = Member::start(Binary::Qetcd, spec);
    let mut c = Client::connect([m.client_url()], None).await.unwrap();
    for i in 0..10 {
        c.put(format!("f/{i}"), vec![b'x'; 1000], None)
            .await
            .unwrap();
    }
    let mut stream = c
        .watch(
            "f/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_fragment(),
            ),
        )
        .await
        .unwrap();
    assert!(stream.message().await.unwrap().unwrap().created());
    c.delete("f/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    // (This client does not expose the fragment flag; what shows is several responses
    // for one revision, which the server sends only to a watcher that allows fragments.)
    let mut responses = Vec::new();
    let mut events = 0;
    while events < 10 {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        events += resp.events().len();
        assert!(resp.events().iter().all(|e| e.prev_kv().is_some()));
        let revisions: Vec<i64> = resp
            .events()
            .iter()
            .map(|e| e.kv().unwrap().mod_revision())
            .collect();
        responses.push(revisions);
    }
    assert_eq!(events, 10);
    assert!(
        responses.len() > 1,
        "one revision of ~10 kB under a 4 kB limit: {responses:?}"
    );
    let revision = responses[0][0];
    assert!(
        responses.iter().flatten().all(|r| *r == revision),
        "{responses:?}"
    );
}
