use std::fs::OpenOptions;

use super::*;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn write(path: &std::path::Path, buckets: &[(&str, Pairs)]) {
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut w = Writer::new(file, "test").unwrap();
    for (name, kvs) in buckets {
        let mut b = w.bucket(name.as_bytes());
        for (k, v) in kvs {
            b.put(k, v).unwrap();
        }
        b.finish().unwrap();
    }
    w.finish().unwrap();
}

fn read_all(r: &Reader, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let b = r.bucket(name.as_bytes()).unwrap().unwrap();
    let mut out = Vec::new();
    r.for_each::<BboltError>(&b, |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn what_is_written_reads_back_in_order_across_branch_levels_and_overflow_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // Enough keys for three levels of pages, values of every size up to several pages.
    let many: Vec<(Vec<u8>, Vec<u8>)> = (0..60_000u64)
        .map(|i| {
            (
                i.to_be_bytes().to_vec(),
                vec![(i % 251) as u8; (i % 97) as usize],
            )
        })
        .collect();
    let big: Vec<(Vec<u8>, Vec<u8>)> = (0..20u8)
        .map(|i| (vec![i], vec![i; 3000 * i as usize]))
        .collect();
    write(
        &path,
        &[
            ("zeta", many.clone()),
            ("alpha", big.clone()),
            ("empty", vec![]),
        ],
    );
    let r = Reader::open(&path).unwrap();
    let names: Vec<Vec<u8>> = r.buckets().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [b"alpha".to_vec(), b"empty".to_vec(), b"zeta".to_vec()]
    );
    assert_eq!(read_all(&r, "zeta"), many);
    assert_eq!(read_all(&r, "alpha"), big);
    assert!(read_all(&r, "empty").is_empty());
    assert!(r.bucket(b"missing").unwrap().is_none());
}

#[test]
fn keys_out_of_order_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("db")).unwrap();
    let mut w = Writer::new(file, "test").unwrap();
    let mut b = w.bucket(b"key");
    b.put(b"b", b"").unwrap();
    let err = b.put(b"a", b"").unwrap_err();
    assert!(matches!(err, BboltError::Unordered { .. }), "{err}");
}

#[test]
fn damaged_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let kvs: Vec<(Vec<u8>, Vec<u8>)> = (0..5000u32)
        .map(|i| (i.to_be_bytes().to_vec(), vec![1; 100]))
        .collect();
    write(&path, &[("key", kvs)]);
    let good = std::fs::read(&path).unwrap();

    let check = |bytes: &[u8], want: &str| {
        let p = dir.path().join("bad");
        std::fs::write(&p, bytes).unwrap();
        let err = Reader::open(&p)
            .and_then(|r| {
                let b = r.bucket(b"key")?.unwrap();
                r.for_each::<BboltError>(&b, |_, _| Ok(()))
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains(want) && err.contains("bad"), "{err}");
    };
    check(&good[..good.len() / 2], "is truncated");
    check(
        b"SQLite format 3\0 and then some more bytes to be long enough for a meta page ......",
        "is not a bbolt database",
    );
    // A snapshot as etcd streams it: the database and its sha256.
    let digest = ring::digest::digest(&ring::digest::SHA256, &good);
    let mut with_sha = good.clone();
    with_sha.extend_from_slice(digest.as_ref());
    let p = dir.path().join("snap");
    std::fs::write(&p, &with_sha).unwrap();
    Reader::open(&p).unwrap();
    let last = with_sha.len() - 1;
    with_sha[last] ^= 1;
    check(&with_sha, "sha256");
}
