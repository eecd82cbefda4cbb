//! Backups in etcd's format, both ways: `etcdctl snapshot save` against qetcd, etcd's
//! own `snapshot restore` (Debian's etcdctl 3.4, etcdutl 3.5.1) of qetcd's and etcd's
//! snapshots, and qetcd and etcd started on what restore made.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qetcd_tests::etcdctl::ETCDCTL;
use qetcd_tests::{Binary, Cluster, Etcdctl, Member, MemberSpec, wait_until};

/// Which tool restores.
#[derive(Clone, Copy)]
enum Restorer {
    /// Debian's `etcdctl snapshot restore` (3.4).
    Etcdctl34,
    /// `etcdutl snapshot restore` of etcd 3.5.1.
    Etcdutl35,
}

/// Runs `snapshot restore` of `snapshot` for `spec` into `data_dir`; returns its log.
fn restore(tool: Restorer, snapshot: &Path, spec: &MemberSpec, data_dir: &Path) -> String {
    let mut cmd = match tool {
        Restorer::Etcdctl34 => {
            let mut c = Command::new(ETCDCTL);
            c.env("ETCDCTL_API", "3");
            c
        }
        Restorer::Etcdutl35 => Command::new(qetcd_tests::etcd35::etcdutl()),
    };
    let out = cmd
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .args(["--name", &spec.name, "--data-dir"])
        .arg(data_dir)
        .args([
            "--initial-cluster",
            spec.initial_cluster.as_deref().unwrap_or(&format!(
                "{}={}",
                spec.name,
                spec.peer_url()
            )),
            "--initial-cluster-token",
            spec.token.as_deref().unwrap_or("etcd-cluster"),
            "--initial-advertise-peer-urls",
            &spec.peer_url(),
        ])
        .output()
        .expect("run snapshot restore");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "snapshot restore failed: {log}");
    log
}

/// `snapshot save` through Debian's etcdctl into `dir/name`.
fn save(client: &Etcdctl, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    client
        .run(&["snapshot", "save", path.to_str().unwrap()])
        .ok();
    path
}

/// Every live key with its revisions, version, value and lease, and the store revision.
fn everything(client: &Etcdctl) -> (i64, Vec<serde_json::Value>) {
    let v = client.run(&["get", "", "--from-key", "-w", "json"]).json();
    let revision = v["header"]["revision"].as_i64().expect("a revision");
    let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
    (revision, kvs)
}

fn lease_ids(client: &Etcdctl) -> BTreeSet<String> {
    client
        .run(&["lease", "list"])
        .ok()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// Keys, an overwrite, a delete, a leased key, and a compaction: what a backup must
/// carry. Returns the compacted revision.
fn fill(client: &Etcdctl) -> i64 {
    for i in 0..20 {
        client
            .run(&["put", &format!("k{i:02}"), &format!("v{i}")])
            .ok();
    }
    client.run(&["put", "k01", "overwritten"]).ok();
    client.run(&["del", "k02"]).ok();
    let lease = client.run(&["lease", "grant", "3600"]);
    let id = lease.ok().split_whitespace().nth(1).unwrap().to_string();
    client.run(&["put", "leased", "x", "--lease", &id]).ok();
    let (rev, _) = everything(client);
    let compacted = rev - 3;
    client.run(&["compact", &compacted.to_string()]).ok();
    client.run(&["put", "after-compaction", "y"]).ok();
    compacted
}

/// Starts one member of `binary` on what `tool` restored from `snapshot`.
fn start_restored(binary: Binary, tool: Restorer, snapshot: &Path, token: &str) -> Member {
    let mut spec = MemberSpec::new("restored");
    spec.token = Some(token.to_string());
    let snapshot = snapshot.to_path_buf();
    let s = spec.clone();
    let m = Member::spawn_prepared(binary, spec, move |dir| {
        restore(tool, &snapshot, &s, dir);
    });
    m.wait_healthy();
    m
}

/// A store restored from a snapshot serves what its source served at the save.
fn assert_same_store(source: &Etcdctl, restored: &Etcdctl, compacted: i64) {
    let (src_rev, src_kvs) = everything(source);
    let (rev, kvs) = everything(restored);
    assert_eq!(rev, src_rev, "the store revision");
    assert_eq!(
        kvs, src_kvs,
        "every key with its revisions, version, value, lease"
    );
    assert_eq!(lease_ids(restored), lease_ids(source), "the leases");
    let below = (compacted - 1).to_string();
    let out = restored.run(&["get", "k00", "--rev", &below]);
    assert!(
        !out.success && out.stderr.contains("required revision has been compacted"),
        "{out:#?}"
    );
    let at = compacted.to_string();
    assert_eq!(
        restored
            .run(&["get", "k01", "--rev", &at, "-w", "json"])
            .json()["kvs"],
        source
            .run(&["get", "k01", "--rev", &at, "-w", "json"])
            .json()["kvs"],
        "a read at the compaction point"
    );
}

/// (a) A follower of a three-member cluster under write load saves a snapshot; three new
/// data dirs restored from it with a new token form a new cluster that has every write
/// acknowledged before the save began, none begun after it ended, new IDs, and takes
/// writes.
#[test]
fn a_follower_snapshot_under_load_restores_into_a_new_cluster() {
    let started = Instant::now();
    let cluster = Cluster::start(Binary::Qetcd, Cluster::specs("src", 3, "backup-src"));
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = &cluster.members[(leader + 1) % 3];
    let old_ids: BTreeSet<u64> = (0..3).map(|i| cluster.member_id(i)).collect();
    let old_cluster_id =
        follower.etcdctl().run(&["get", "x", "-w", "json"]).json()["header"]["cluster_id"]
            .as_u64()
            .unwrap();
    // Bulk: values big enough that the snapshot spans many pages.
    let big = "b".repeat(20_000);
    for i in 0..30 {
        cluster
            .etcdctl()
            .run(&["put", &format!("bulk/{i:03}"), &big])
            .ok();
    }

    // Write load: one writer putting fresh keys as fast as etcdctl goes, recording when
    // each put began and when it was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let client = cluster.etcdctl();
        std::thread::spawn(move || {
            let mut log: Vec<(String, Instant, Option<Instant>)> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                let key = format!("load/{n:05}");
                let began = Instant::now();
                let ok = client.run(&["put", &key, "v"]).success;
                log.push((key, began, ok.then(Instant::now)));
                n += 1;
            }
            log
        })
    };
    wait_until("the writer to get going", Duration::from_secs(60), || {
        (cluster
            .etcdctl()
            .run(&["get", "load/00100"])
            .stdout
            .contains("load/"))
        .then_some(())
    })
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let save_began = Instant::now();
    let snapshot = save(&follower.etcdctl(), dir.path(), "follower.db");
    let save_ended = Instant::now();
    // Some more writes after the save, which the restored cluster must not have.
    wait_until("writes after the save", Duration::from_secs(60), || {
        (Instant::now() > save_ended + Duration::from_millis(500)).then_some(())
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let log = writer.join().unwrap();
    assert!(
        log.iter().any(|(_, began, _)| *began > save_ended),
        "writes went on after the save"
    );

    let status = Etcdctl::new("unused")
        .run(&[
            "snapshot",
            "status",
            snapshot.to_str().unwrap(),
            "-w",
            "json",
        ])
        .json();
    let snap_revision = status["revision"].as_i64().unwrap();
    let snap_keys = status["totalKey"].as_i64().unwrap();

    let specs = Cluster::specs("new", 3, "backup-restored");
    let mut members = Vec::new();
    let mut restore_logs = String::new();
    for spec in specs {
        let (s, snap) = (spec.clone(), snapshot.clone());
        let logs = std::sync::Mutex::new(String::new());
        members.push(Member::spawn_prepared(Binary::Qetcd, spec, |dir| {
            *logs.lock().unwrap() = restore(Restorer::Etcdctl34, &snap, &s, dir);
        }));
        restore_logs.push_str(&logs.into_inner().unwrap());
    }
    for m in &members {
        m.wait_healthy();
    }
    let restored = Cluster { members };

    let v = restored
        .etcdctl()
        .run(&["get", "load/", "--prefix", "--keys-only", "-w", "json"])
        .json();
    let present: BTreeSet<String> = v["kvs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|kv| {
            String::from_utf8(qetcd_tests::etcdctl::base64_decode(
                kv["key"].as_str().unwrap(),
            ))
            .unwrap()
        })
        .collect();
    let (mut before, mut after) = (0, 0);
    for (key, began, acked) in &log {
        if acked.is_some_and(|a| a < save_began) {
            assert!(
                present.contains(key),
                "{key} was acknowledged before the save"
            );
            before += 1;
        }
        if *began > save_ended {
            assert!(!present.contains(key), "{key} was written after the save");
            after += 1;
        }
    }
    assert!(before >= 20, "{before} writes acknowledged before the save");
    let (revision, kvs) = everything(&restored.etcdctl());
    assert_eq!(
        revision, snap_revision,
        "snapshot status shows the store revision"
    );
    assert!(
        snap_keys as usize > kvs.len(),
        "snapshot status counts every record: {snap_keys} for {} keys",
        kvs.len()
    );
    assert_eq!(
        kvs.len(),
        present.len() + 30,
        "load and bulk keys, nothing else"
    );

    // New IDs, those restore derived, and qetcd derives the same from the new token.
    let new_ids: BTreeSet<u64> = (0..3).map(|i| restored.member_id(i)).collect();
    assert!(
        new_ids.is_disjoint(&old_ids),
        "{new_ids:x?} vs {old_ids:x?}"
    );
    for id in &new_ids {
        assert!(
            restore_logs.contains(&format!("\"added-peer-id\":\"{id:x}\"")),
            "member {id:x} is one restore added: {restore_logs}"
        );
    }
    for m in &restored.members {
        assert!(
            m.logs()
                .contains("the restored member IDs match those --initial-cluster-token derives"),
            "{}",
            m.logs()
        );
    }
    let header = restored
        .etcdctl()
        .run(&["put", "after-restore", "1", "-w", "json"])
        .json();
    assert_ne!(
        header["header"]["cluster_id"].as_u64().unwrap(),
        old_cluster_id
    );
    for m in &restored.members {
        wait_until(
            "the new write on every member",
            Duration::from_secs(30),
            || {
                m.etcdctl()
                    .run(&["get", "after-restore", "--consistency=s"])
                    .stdout
                    .contains("after-restore")
                    .then_some(())
            },
        )
        .unwrap();
    }
    eprintln!(
        "{before} writes acknowledged before the save (all restored), {after} begun after it \
         (none restored), save took {:?}, snapshot {} bytes; test took {:?}",
        save_ended - save_began,
        std::fs::metadata(&snapshot).unwrap().len(),
        started.elapsed()
    );
}

fn etcd_snapshot_restores_into_qetcd(source: Binary, tool: Restorer) {
    let etcd = Member::start(source, MemberSpec::new("etcd"));
    let compacted = fill(&etcd.etcdctl());
    let dir = tempfile::tempdir().unwrap();
    let snapshot = save(&etcd.etcdctl(), dir.path(), "etcd.db");
    let qetcd = start_restored(Binary::Qetcd, tool, &snapshot, "from-etcd");
    assert_same_store(&etcd.etcdctl(), &qetcd.etcdctl(), compacted);
    assert!(qetcd.data_dir.join("member.imported-by-qetcd").exists());
    qetcd.etcdctl().run(&["put", "more", "z"]).ok();
    let (rev, kvs) = everything(&qetcd.etcdctl());

    // A restart is a plain restart of the imported member.
    let mut qetcd = qetcd;
    qetcd.restart();
    assert_eq!(everything(&qetcd.etcdctl()), (rev, kvs));

    // An etcd member directory appearing beside it again is refused, untouched.
    assert!(qetcd.terminate().is_some());
    let other = dir.path().join("other");
    restore(tool, &snapshot, &qetcd.spec, &other);
    std::fs::rename(other.join("member"), qetcd.data_dir.join("member")).unwrap();
    let before = qetcd_tests::data_dir::contents(&qetcd.data_dir);
    let data_arg = qetcd.data_dir.display().to_string();
    let (code, log) = Member::run_to_exit(
        Binary::Qetcd,
        &["--name", "restored", "--data-dir", &data_arg],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("holds both an etcd member") && log.contains(&data_arg),
        "{log}"
    );
    assert_eq!(
        qetcd_tests::data_dir::contents(&qetcd.data_dir),
        before,
        "the data dir must not change"
    );
}

/// (b) Debian's etcd 3.4: save, `etcdctl snapshot restore`, qetcd serves the same.
#[test]
fn an_etcd_34_snapshot_restores_into_qetcd() {
    etcd_snapshot_restores_into_qetcd(Binary::Etcd, Restorer::Etcdctl34);
}

/// (b) etcd 3.5.1: save, `etcdutl snapshot restore`, qetcd serves the same.
#[test]
fn an_etcd_35_snapshot_restores_into_qetcd() {
    etcd_snapshot_restores_into_qetcd(Binary::Etcd35, Restorer::Etcdutl35);
}

/// (c) The reverse: Debian's etcd and etcd 3.5.1 start from a restore of a qetcd
/// snapshot and serve the same.
#[test]
fn a_qetcd_snapshot_restores_into_etcd() {
    let qetcd = Member::start(Binary::Qetcd, MemberSpec::new("qetcd"));
    let compacted = fill(&qetcd.etcdctl());
    let dir = tempfile::tempdir().unwrap();
    let snapshot = save(&qetcd.etcdctl(), dir.path(), "qetcd.db");
    for (binary, tool) in [
        (Binary::Etcd, Restorer::Etcdctl34),
        (Binary::Etcd35, Restorer::Etcdutl35),
    ] {
        let etcd = start_restored(binary, tool, &snapshot, "from-qetcd");
        assert_same_store(&qetcd.etcdctl(), &etcd.etcdctl(), compacted);
        etcd.etcdctl().run(&["put", "more", "z"]).ok();
    }
}

const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

/// `client` as `user` (one of [`ROOT`], [`ALICE`]).
fn as_user(client: &Etcdctl, user: &str) -> Etcdctl {
    client.clone().with_args(&[user.to_string()])
}

/// Users, a role with a permission, keys inside and outside it, and auth enabled:
/// alice may read and write `app/`, nothing else.
fn set_up_auth(client: &Etcdctl) {
    qetcd_tests::users::enable_auth_with_alice(
        client,
        &[("app/a", "in-alices-prefix"), ("other", "not-alices")],
    );
}

/// What `user get` / `role get` print for the auth store, as root.
fn auth_listing(client: &Etcdctl) -> Vec<String> {
    let root = as_user(client, ROOT);
    [
        &["user", "list"][..],
        &["role", "list"],
        &["user", "get", "alice"],
        &["user", "get", "root"],
        &["role", "get", "app"],
    ]
    .iter()
    .map(|args| root.run(args).ok().to_string())
    .collect()
}

/// Auth is on and enforced: nobody without a user; alice inside her prefix only (reads
/// and writes); a wrong password refused; root everywhere.
fn assert_auth_enforced(client: &Etcdctl) {
    let anon = client.run(&["get", "app/a"]);
    assert!(
        !anon.success && anon.stderr.contains("etcdserver: user name is empty"),
        "{anon:#?}"
    );
    let alice = as_user(client, ALICE);
    assert_eq!(
        alice
            .run(&["get", "app/a", "--print-value-only"])
            .ok()
            .trim(),
        "in-alices-prefix"
    );
    alice.run(&["put", "app/b", "written-after-restore"]).ok();
    for args in [&["get", "other"][..], &["put", "other", "x"]] {
        let out = alice.run(args);
        assert!(
            !out.success && out.stderr.contains("etcdserver: permission denied"),
            "alice {args:?}: {out:#?}"
        );
    }
    let wrong = client
        .clone()
        .with_args(&["--user=alice:guess".into()])
        .run(&["get", "app/a"]);
    assert!(
        !wrong.success
            && wrong
                .stderr
                .contains("authentication failed, invalid user ID or password"),
        "{wrong:#?}"
    );
    let root = as_user(client, ROOT);
    assert_eq!(
        root.run(&["get", "other", "--print-value-only"])
            .ok()
            .trim(),
        "not-alices"
    );
    root.run(&["put", "other", "root-may"]).ok();
}

/// (e) The auth store travels with a snapshot: `source` with users, a role and auth
/// enabled is saved (as root) and restored with Debian's etcdctl; `target` serves with
/// auth on, the same users and roles, and enforces alice's permission.
fn auth_survives_snapshot_restore(source: Binary, target: Binary) {
    let started = Instant::now();
    let src = Member::start(source, MemberSpec::new("auth-src"));
    set_up_auth(&src.etcdctl());
    let expected = auth_listing(&src.etcdctl());
    let dir = tempfile::tempdir().unwrap();
    let snapshot = save(&as_user(&src.etcdctl(), ROOT), dir.path(), "auth.db");
    let restored = start_restored(target, Restorer::Etcdctl34, &snapshot, "auth-restored");
    assert_eq!(auth_listing(&restored.etcdctl()), expected);
    assert_auth_enforced(&restored.etcdctl());
    eprintln!("auth {source:?} -> {target:?}: {:?}", started.elapsed());
}

#[test]
fn an_etcd_34_snapshot_with_auth_restores_into_qetcd_with_auth() {
    auth_survives_snapshot_restore(Binary::Etcd, Binary::Qetcd);
}

#[test]
fn a_qetcd_snapshot_with_auth_restores_into_etcd_34_with_auth() {
    auth_survives_snapshot_restore(Binary::Qetcd, Binary::Etcd);
}

#[test]
fn auth_state_survives_snapshot_restore() {
    auth_survives_snapshot_restore(Binary::Qetcd, Binary::Qetcd);
}

/// (d) A restored data dir whose backend is truncated, carries a wrong sha256 or is not
/// a bbolt file is refused by name, and nothing is written; etcd's restore refuses
/// such snapshot files too.
#[test]
fn damaged_snapshots_are_refused_by_name_and_nothing_is_written() {
    let qetcd = Member::start(Binary::Qetcd, MemberSpec::new("qetcd"));
    fill(&qetcd.etcdctl());
    let dir = tempfile::tempdir().unwrap();
    let snapshot = save(&qetcd.etcdctl(), dir.path(), "good.db");
    let good = std::fs::read(&snapshot).unwrap();
    let db_len = good.len() - 32;
    let mut wrong_sha = good.clone();
    wrong_sha[db_len / 2] ^= 0xff;
    let damaged: [(&str, Vec<u8>, &str); 3] = [
        ("truncated", good[..db_len / 2].to_vec(), "is truncated"),
        ("wrong-sha256", wrong_sha, "sha256"),
        (
            "not-bbolt",
            b"this is not a database\n".repeat(200),
            "is not a bbolt database",
        ),
    ];
    for (name, bytes, why) in damaged {
        let bad = dir.path().join(format!("{name}.db"));
        std::fs::write(&bad, &bytes).unwrap();
        // etcd's own restore refuses it.
        let out = Etcdctl::new("unused").run(&[
            "snapshot",
            "restore",
            bad.to_str().unwrap(),
            "--data-dir",
            dir.path().join(format!("{name}.etcd")).to_str().unwrap(),
        ]);
        assert!(!out.success, "etcdctl restored a {name} snapshot: {out:#?}");

        // A data dir restored from the good snapshot, its backend then replaced.
        let data = dir.path().join(format!("{name}.data"));
        let spec = MemberSpec::new("restored");
        restore(Restorer::Etcdctl34, &snapshot, &spec, &data);
        let db = data.join("member/snap/db");
        std::fs::write(&db, &bytes).unwrap();
        let before = qetcd_tests::data_dir::contents(&data);
        let data_arg = data.display().to_string();
        let (code, log) = Member::run_to_exit(
            Binary::Qetcd,
            &[
                "--name",
                "restored",
                "--data-dir",
                &data_arg,
                "--listen-client-urls",
                &spec.client_url(),
                "--advertise-client-urls",
                &spec.client_url(),
                "--listen-peer-urls",
                &spec.peer_url(),
                "--initial-advertise-peer-urls",
                &spec.peer_url(),
                "--initial-cluster",
                &format!("restored={}", spec.peer_url()),
            ],
            &[],
            Duration::from_secs(60),
        );
        assert_eq!(code, Some(1), "{name}: {log}");
        assert!(
            log.contains("cannot import the etcd snapshot")
                && log.contains(&db.display().to_string())
                && log.contains(why),
            "{name}: {log}"
        );
        assert_eq!(
            qetcd_tests::data_dir::contents(&data),
            before,
            "{name}: the data dir must not change"
        );
    }
}
