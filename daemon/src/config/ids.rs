//! Member and cluster IDs, derived bit for bit as etcd derives them, so that a qetcd
//! member and an etcd member configured alike have the same identity.

use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use url::Url;

use super::urls::url_string;

fn first_u64(bytes: &[u8]) -> u64 {
    let d = digest(&SHA1_FOR_LEGACY_USE_ONLY, bytes);
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("SHA-1 is 20 bytes"))
}

/// SHA-1 over the sorted peer URLs (no separator), the token, and for members added at
/// runtime the Unix time in seconds; the first 8 bytes, big-endian.
pub fn member_id(peer_urls: &[Url], token: &str, now_unix: Option<u64>) -> u64 {
    let mut urls: Vec<String> = peer_urls.iter().map(url_string).collect();
    urls.sort();
    let mut input = urls.concat();
    input.push_str(token);
    if let Some(t) = now_unix {
        input.push_str(&t.to_string());
    }
    first_u64(input.as_bytes())
}

/// SHA-1 over the member IDs in ascending order, each as 8 big-endian bytes.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    first_u64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<Url> {
        list.iter().map(|u| Url::parse(u).unwrap()).collect()
    }

    #[test]
    fn etcd_test_vectors() {
        assert_eq!(
            member_id(&urls(&["http://10.0.0.8:2379"]), "", None),
            0xc9d6ea3d83245812
        );
        assert_eq!(
            member_id(&urls(&["http://10.0.0.8:2379"]), "", Some(472662245)),
            0x21fbd9adb44d9074
        );
        assert_eq!(
            member_id(
                &urls(&["http://10.0.0.2:2379", "http://10.0.0.1:2379"]),
                "",
                None
            ),
            0xe5b562e3caf577cb
        );
        assert_eq!(
            member_id(
                &urls(&["http://10.0.0.1:2379", "http://10.0.0.2:2379"]),
                "",
                None
            ),
            0xe5b562e3caf577cb,
            "URL order does not matter"
        );
    }

    #[test]
    fn bare_etcd_defaults() {
        let m = member_id(&urls(&["http://localhost:2380"]), "etcd-cluster", None);
        assert_eq!(m, 0x8e9e05c52164694d);
        assert_eq!(cluster_id(&[m]), 0xcdf818194e3a8c32);
    }

    #[test]
    fn the_seeds_three_member_cluster() {
        let ids: Vec<u64> = ["10", "11", "12"]
            .iter()
            .map(|h| {
                member_id(
                    &urls(&[&format!("http://10.0.1.{h}:2380")]),
                    "etcd-cluster-1",
                    None,
                )
            })
            .collect();
        assert_eq!(
            ids,
            [0x140fedbeeb74765d, 0xd5dc5f8d75d04e29, 0x8a0a11c6194fc77]
        );
        assert_eq!(cluster_id(&ids), 0xacccc8912db0cd57);
        let mut reversed = ids.clone();
        reversed.reverse();
        assert_eq!(cluster_id(&reversed), 0xacccc8912db0cd57);
    }
}
