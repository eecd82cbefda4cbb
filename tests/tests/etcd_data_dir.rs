//! A data directory written by real etcd is refused and left exactly as it was.

use std::time::Duration;

use qetcd_tests::data_dir::contents;
use qetcd_tests::{Binary, Member, MemberSpec};

#[test]
fn qetcd_refuses_an_etcd_data_dir_without_touching_it() {
    if !Binary::Etcd.available() {
        eprintln!("SKIPPED: /usr/bin/etcd is not installed");
        return;
    }
    let mut etcd = Member::start(Binary::Etcd, MemberSpec::new("old"));
    etcd.etcdctl().run(&["put", "precious", "data"]).ok();
    assert!(etcd.terminate().is_some());
    let before = contents(&etcd.data_dir);
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
        contents(&etcd.data_dir),
        before,
        "the etcd data dir must not change"
    );
}
