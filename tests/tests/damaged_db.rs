//! A database file damaged on disk while the member is stopped (one page overwritten
//! with garbage) is found at start by SQLite's structural check and refused with an
//! error that names the file: the member exits before it serves anything from it.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use qetcd_tests::{Binary, Member, MemberSpec};

/// Writes a key space of a few pages, stops the member cleanly and folds both WALs
/// into their database files (with Debian's `sqlite3`), so the files alone hold the
/// pages a later overwrite damages.
fn stopped_member_with_data(name: &str) -> Member {
    let mut m = Member::start(Binary::Qetcd, MemberSpec::new(name));
    let value = "v".repeat(300);
    for i in 0..60 {
        m.etcdctl()
            .run(&["put", &format!("key/{i:03}"), &value])
            .ok();
    }
    assert!(m.terminate().is_some_and(|s| s.success()), "clean stop");
    for file in ["state.db", "log.db"] {
        let db = m.data_dir.join("qetcd").join(file);
        let out = Command::new("sqlite3")
            .arg(&db)
            .arg("PRAGMA wal_checkpoint(TRUNCATE);")
            .output()
            .expect("run sqlite3 (Debian package sqlite3)");
        assert!(
            out.status.success(),
            "checkpoint {}: {}",
            db.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    m
}

/// Overwrites page `page` (1-based) of the SQLite file at `db` with pseudo-random bytes.
fn overwrite_page(db: &Path, page: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db)
        .expect("open database file");
    let mut header = [0u8; 100];
    f.read_exact(&mut header).expect("read header");
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => n as u64,
    };
    let len = f.metadata().expect("metadata").len();
    assert!(
        page * page_size <= len,
        "{} has only {} pages",
        db.display(),
        len / page_size
    );
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..page_size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    f.seek(SeekFrom::Start((page - 1) * page_size))
        .expect("seek");
    f.write_all(&garbage).expect("overwrite page");
    f.sync_all().expect("sync");
}

fn assert_refused(m: &mut Member, file: &str) {
    m.relaunch();
    let status = m
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the member served a damaged {file}:\n{}", m.logs()));
    assert!(!status.success(), "exit status {status}");
    let logs = m.logs();
    let path = m.data_dir.join("qetcd").join(file);
    assert!(
        logs.contains(&format!("database file {} is damaged", path.display())),
        "the error should name {}:\n{logs}",
        path.display()
    );
    assert!(m.health().is_none(), "the member answers after refusing");
    if let Some(line) = logs.lines().find(|l| l.contains("is damaged")) {
        eprintln!("{file}: {line}");
    }
}

#[test]
fn a_damaged_state_database_page_is_refused_at_start() {
    let mut m = stopped_member_with_data("damaged-state");
    overwrite_page(&m.data_dir.join("qetcd/state.db"), 2);
    assert_refused(&mut m, "state.db");
}

#[test]
fn a_damaged_log_database_page_is_refused_at_start() {
    let mut m = stopped_member_with_data("damaged-log");
    overwrite_page(&m.data_dir.join("qetcd/log.db"), 2);
    assert_refused(&mut m, "log.db");
}

/// The check passes an intact database: the same stop and checkpoint, no damage, and
/// the member comes back with its keys.
#[test]
fn an_intact_database_starts_with_its_keys() {
    let mut m = stopped_member_with_data("intact");
    m.relaunch();
    m.wait_healthy();
    let out = m.etcdctl().run(&["get", "key/", "--prefix", "--keys-only"]);
    assert_eq!(out.ok().lines().filter(|l| !l.is_empty()).count(), 60);
}
