use std::io::Read;
use std::ops::ControlFlow;

use super::import::EtcdBackend;
use super::save::write_snapshot;
use super::*;
use crate::storage::keyspace::{self, RevisionRow};
use crate::storage::{Meta, TestStore, leases, open_writer};

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
    let store = TestStore::open(&dir.path().join("src.db"));
    let src = store.txn();
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
    let dst = TestStore::with(dst);
    assert_eq!(
        keyspace::live(&dst.txn(), b"leased", true)
            .unwrap()
            .unwrap()
            .lease,
        7,
        "live keys rebuilt"
    );
    assert!(keyspace::live(&dst.txn(), b"a", false).unwrap().is_none());
    let mut dst = dst.conn;

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

/// An auth store as etcdctl would leave it: root, alice with a role reading `app/`,
/// a user without password, auth enabled.
fn auth_store() -> crate::auth::AuthState {
    use crate::proto::authpb::Permission;
    use crate::proto::etcdserverpb::*;
    use crate::proto::qetcdpb::auth_change::Change;
    let mut s = crate::auth::AuthState::default();
    let add = |name: &str, no_password: bool| {
        Change::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: format!("hash-of-{name}"),
            options: Some(crate::proto::authpb::UserAddOptions { no_password }),
            ..Default::default()
        })
    };
    for c in [
        add("root", false),
        add("alice", false),
        add("carol", true),
        Change::UserGrantRole(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        }),
        Change::RoleAdd(AuthRoleAddRequest { name: "app".into() }),
        Change::RoleGrantPermission(AuthRoleGrantPermissionRequest {
            name: "app".into(),
            perm: Some(Permission {
                perm_type: 0,
                key: b"app/".to_vec(),
                range_end: b"app0".to_vec(),
            }),
        }),
        Change::UserGrantRole(AuthUserGrantRoleRequest {
            user: "alice".into(),
            role: "app".into(),
        }),
        Change::Enable(AuthEnableRequest {}),
    ] {
        s.change(&c).unwrap();
    }
    s
}

#[test]
fn auth_store_and_removed_members_survive_save_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::open(&dir.path().join("src.db"));
    let src = store.txn();
    keyspace::write(&src, &row("app/x", 2, 0, 2, 1, false)).unwrap();
    Meta::Revision.set_i64(&src, 2).unwrap();
    let auth = auth_store();
    auth.persist_all(&src).unwrap();
    crate::membership::record_removed(&src, 0xbeef).unwrap();
    crate::membership::record_removed(&src, u64::MAX - 1).unwrap();

    let snap = write_snapshot(&src, dir.path()).unwrap();
    let path = dir.path().join("snapshot.db");
    let mut bytes = Vec::new();
    let mut file = snap.file;
    file.read_to_end(&mut bytes).unwrap();
    std::fs::write(&path, &bytes).unwrap();

    let backend = EtcdBackend::open(&path).unwrap();
    let mut dst = open_writer(&dir.path().join("dst.db")).unwrap();
    let summary = backend.import(&mut dst, |_| Ok(())).unwrap();
    assert!(summary.auth_enabled);
    assert_eq!((summary.users, summary.roles), (3, 1));
    assert_eq!(summary.removed_members, 2);
    let imported = crate::auth::AuthState::load(&dst).unwrap();
    assert_eq!(imported, auth, "users, roles, flag and revision");
    assert!(imported.revision > 1);
    assert_eq!(
        crate::membership::removed_ids(&dst).unwrap(),
        [0xbeef, u64::MAX - 1]
    );
}

/// Writes a backend with etcd's key and meta buckets and the given extra buckets.
type Records = Vec<(Vec<u8>, Vec<u8>)>;
/// A bucket's name and its records.
type BucketRecords<'a> = (&'a [u8], Records);

fn backend_with(path: &std::path::Path, extra: &[BucketRecords]) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = crate::bbolt::Writer::new(file, "db").unwrap();
    w.bucket(buckets::KEY).finish().unwrap();
    w.bucket(buckets::META).finish().unwrap();
    for (name, records) in extra {
        let mut b = w.bucket(name);
        for (k, v) in records {
            b.put(k, v).unwrap();
        }
        b.finish().unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn bad_auth_and_removed_member_records_are_refused_by_name_before_writing() {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let alice = crate::proto::authpb::User {
        name: b"alice".to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    let rec = |k: &[u8], v: &[u8]| vec![(k.to_vec(), v.to_vec())];
    let cases: [(&str, Vec<BucketRecords>, &str); 5] = [
        (
            "user-under-another-name",
            vec![(buckets::AUTH_USERS, rec(b"bob", &alice))],
            "bucket \"authUsers\", key [62, 6f, 62]: the record's name is not its key",
        ),
        (
            "not-a-role",
            vec![(buckets::AUTH_ROLES, rec(b"app", b"\xff\xff\xff"))],
            "bucket \"authRoles\", key [61, 70, 70]: not an authpb.Role",
        ),
        (
            "enabled-without-root",
            vec![
                (buckets::AUTH, rec(b"authEnabled", &[1])),
                (buckets::AUTH_USERS, rec(b"alice", &alice)),
            ],
            "no root user with the root role",
        ),
        (
            "short-revision",
            vec![(buckets::AUTH, rec(b"authRevision", &[0, 1]))],
            "bucket \"auth\"",
        ),
        (
            "removed-not-hex",
            vec![(buckets::MEMBERS_REMOVED, rec(b"zz", b"removed"))],
            "bucket \"members_removed\", key [7a, 7a]: not a hex member ID",
        ),
    ];
    for (name, extra, want) in cases {
        let path = dir.path().join(name);
        backend_with(&path, &extra);
        let backend = EtcdBackend::open(&path).unwrap();
        let err = backend.check().unwrap_err().to_string();
        assert!(err.contains(want) && err.contains(name), "{name}: {err}");
        let mut dst = open_writer(&dir.path().join(format!("{name}.dst"))).unwrap();
        backend.import(&mut dst, |_| Ok(())).unwrap_err();
        assert_eq!(
            crate::auth::AuthState::load(&dst).unwrap(),
            Default::default(),
            "{name}: nothing written"
        );
        assert_eq!(Meta::Revision.get_i64(&dst).unwrap(), None, "{name}");
    }
}
