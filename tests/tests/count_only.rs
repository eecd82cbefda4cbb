//! What etcdctl 3.4 cannot ask for, through a Rust etcd client: count-only, keys-only,
//! limit with `more`, sorting, revision filters.

use etcd_client::{Client, GetOptions, SortOrder, SortTarget};
use qetcd_tests::{Binary, Member, MemberSpec};

#[tokio::test]
async fn range_options_through_a_rust_client() {
    let m = Member::start(Binary::Qetcd, MemberSpec::new("ranges"));
    let mut c = Client::connect([m.client_url()], None).await.unwrap();
    for (k, v) in [("p/3", "c"), ("p/1", "a"), ("p/2", "b"), ("q/1", "z")] {
        c.put(k, v, None).await.unwrap();
    }

    let r = c
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), 3);
    assert!(r.kvs().is_empty());

    let r = c
        .get("p/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    let keys: Vec<&str> = r.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(keys, ["p/1", "p/2", "p/3"]);
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));

    let r = c
        .get("p/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!((r.kvs().len(), r.more(), r.count()), (2, true, 3));

    let r = c
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<&str> = r.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(keys, ["p/2", "p/1", "p/3"], "newest first");

    let r = c
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_min_mod_revision(3)),
        )
        .await
        .unwrap();
    let keys: Vec<&str> = r.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(keys, ["p/1", "p/2"]);
    assert_eq!(r.count(), 3, "count ignores filters, as in etcd");

    let r = c
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 3);
    assert_eq!(r.header().unwrap().revision(), 5);
}
