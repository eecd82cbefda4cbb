//! A data directory written by real etcd is refused and left exactly as it was.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use qetcd_tests::{Binary, Member, MemberSpec};

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
                out.insert(p.display().to_string(), Vec::new());
            } else {
                out.insert(p.display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn qetcd_refuses_an_etcd_data_dir_without_touching_it() {
    if !Binary::Etcd.available() {
        eprintln!("SKIPPED: /usr/bin/etcd is not installed");
        return;
    }
    let mut etcd = Member::start(Binary::Etcd, MemberSpec::new("old"));
    etcd.etcdctl().run(&["put", "precious", "data"]).ok();
    assert!(etcd.terminate().is_some());
    let before = snapshot(&etcd.data_dir);
    assert!(
        before.keys().any(|k| k.ends_with("member/wal")),
        "etcd wrote its WAL"
    );

    let dir_arg = etcd.data_dir.display().to_string();
    let (code, log) = Member::run_to_exit(
        Binary::Qetcd,
        &["--name", "old", "--data-dir", &dir_arg],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("was written by etcd") && log.contains(&dir_arg),
        "{log}"
    );
    assert_eq!(
        snapshot(&etcd.data_dir),
        before,
        "the etcd data dir must not change"
    );
}
