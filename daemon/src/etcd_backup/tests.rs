use std::io::Read;
use std::ops::ControlFlow;

use super::import::EtcdBackend;
use super::save::write_snapshot;
use super::*;
use crate::storage::keyspace::{self, RevisionRow};
use crate::storage::{Meta, leases, open_writer};

fn row(key: &str, main: i64, sub: i64, create: i64, version: i64, tombstone: bool) -> RevisionRow {
    RevisionRow {
        key: key.into(),
        main,
        sub,
        create_revision: if tombstone { 0 } else { create },
        version: if tombstone { 0 } else { version },
        value: if tombstone {
            Vec::new()
        } else {
            format!("{key}@{main}").into_bytes()
        },
        lease: if key == "leased" { 7 } else { 0 },
        tombstone,
    }
}

fn all_revisions(conn: &rusqlite::Connection) -> Vec<RevisionRow> {
    let mut out = Vec::new();
    keyspace::for_each_revision::<StorageError>(conn, |r| {
        out.push(r);
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    out
}

#[test]
fn a_saved_snapshot_imports_back_to_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let src = open_writer(&dir.path().join("src.db")).unwrap();
    let rows = [
        row("a", 2, 0, 2, 1, false),
        row("b", 3, 0, 3, 1, false),
        row("a", 4, 0, 2, 2, false),
        row("a", 5, 0, 0, 0, true),
        row("b", 5, 1, 0, 0, true),
        row("b", 6, 0, 6, 1, false),
        row("leased", 7, 0, 7, 1, false),
    ];
    for r in &rows {
        keyspace::write(&src, r).unwrap();
    }
    // Many more, so that the key bucket spans several levels of pages.
    for i in 0..3000 {
        keyspace::write(&src, &row(&format!("k{i:05}"), 8 + i, 0, 8 + i, 1, false)).unwrap();
    }
    leases::insert(&src, 7, 60).unwrap();
    keyspace::compact(&src, 4).unwrap();
    Meta::Revision.set_i64(&src, 3007).unwrap();
    Meta::CompactRevision.set_i64(&src, 4).unwrap();
    Meta::AppliedIndex.set_u64(&src, 99).unwrap();

    let snap = write_snapshot(&src, dir.path()).unwrap();
    assert_eq!(snap.revision, 3007);
    let mut bytes = Vec::new();
    let mut file = snap.file;
    file.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes.len() as u64, snap.size);
    assert_eq!(
        bytes.len() % 512,
        32,
        "a bbolt file of whole pages and a sha256"
    );
    let path = dir.path().join("snapshot.db");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        // src.db, its -wal and -shm, its log.db (+ -wal, -shm) and snapshot.db: the
        // temporary file is gone.
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| !e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
            .count()
    );

    let backend = EtcdBackend::open(&path).unwrap();
    let mut dst = open_writer(&dir.path().join("dst.db")).unwrap();
    let summary = backend
        .import(&mut dst, |conn| {
            Meta::MemberId.set_u64(conn, 1)?;
            Ok(())
        })
        .unwrap();
    assert_eq!(summary.current, 3007);
    assert_eq!(summary.compacted, 4);
    assert_eq!(summary.consistent_index, 99);
    assert_eq!(summary.leases, 1);
    assert_eq!(all_revisions(&dst), all_revisions(&src));
    assert_eq!(leases::all(&dst).unwrap(), [(7, 60)]);
    assert_eq!(Meta::MemberId.get_u64(&dst).unwrap(), Some(1));
    assert_eq!(
        keyspace::live(&dst, b"leased").unwrap().unwrap().lease,
        7,
        "live keys rebuilt"
    );
    assert!(keyspace::live(&dst, b"a").unwrap().is_none());

    // Importing into a store that holds data is refused.
    let err = backend.import(&mut dst, |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

#[test]
fn a_file_without_etcd_buckets_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let file = std::fs::File::create(&path).unwrap();
    let mut w = crate::bbolt::Writer::new(file, "db").unwrap();
    w.bucket(b"other").finish().unwrap();
    w.finish().unwrap();
    let err = EtcdBackend::open(&path).err().unwrap().to_string();
    assert!(err.contains("no \"key\" bucket"), "{err}");
}
