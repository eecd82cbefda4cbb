//! Whether a user's roles cover a key or a key range, as etcd's range permission cache
//! decides it: a single key needs one permission that includes it; a range needs the
//! union of the user's permissions to cover all of it, so two adjacent grants together
//! allow a range that neither allows alone.
//!
//! Ranges are etcd's: an empty end means the key alone, an end of `\0` means every key
//! from `key` on.

use crate::error::RequestError;
use crate::proto::authpb::{Role, permission::Type as PermType};
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, TxnRequest, request_op::Request as Op,
};

/// A half-open interval of keys; `end: None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// etcd's reading of a (key, range_end) pair.
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                // The key alone: [key, key + "\0").
                let mut next = key.to_vec();
                next.push(0);
                Some(next)
            }
            [0] => None,
            end => Some(end.to_vec()),
        };
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    fn contains_key(&self, key: &[u8]) -> bool {
        self.begin.as_slice() <= key && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

fn grants(perm: PermType, access: Access) -> bool {
    matches!(
        (perm, access),
        (PermType::Readwrite, _)
            | (PermType::Read, Access::Read)
            | (PermType::Write, Access::Write)
    )
}

/// Whether `roles` together allow `access` to `key` (and up to `range_end`).
pub fn permitted<'r>(
    roles: impl IntoIterator<Item = &'r Role>,
    key: &[u8],
    range_end: &[u8],
    access: Access,
) -> bool {
    let mut granted: Vec<Interval> = roles
        .into_iter()
        .flat_map(|r| r.key_permission.iter())
        .filter(|p| grants(p.perm_type(), access))
        .map(|p| Interval::of(&p.key, &p.range_end))
        .collect();
    let wanted = Interval::of(key, range_end);
    // A range that ends before it begins selects nothing; etcd still wants its start key.
    let empty = wanted
        .end
        .as_deref()
        .is_some_and(|end| end <= wanted.begin.as_slice());
    if range_end.is_empty() || empty {
        return granted.iter().any(|g| g.contains_key(key));
    }
    granted.sort_by(|a, b| a.begin.cmp(&b.begin));
    // Sweep from the start of the wanted range, extending the covered prefix.
    let mut covered_to: Vec<u8> = wanted.begin.clone();
    for g in &granted {
        if g.begin > covered_to {
            return false; // a gap before the next grant starts
        }
        match &g.end {
            None => return true,
            Some(end) if *end > covered_to => covered_to = end.clone(),
            Some(_) => {}
        }
        if wanted.end.as_ref().is_some_and(|w| covered_to >= *w) {
            return true;
        }
    }
    false
}

/// A permission check of one key or range, as the caller's auth store answers it.
pub type Check<'a> = dyn Fn(&[u8], &[u8], Access) -> Result<(), RequestError> + 'a;

/// A put writes its key, and reads it too when it asks for the previous value.
pub fn check_put(p: &PutRequest, check: &Check<'_>) -> Result<(), RequestError> {
    check(&p.key, b"", Access::Write)?;
    if p.prev_kv {
        check(&p.key, b"", Access::Read)?;
    }
    Ok(())
}

/// A delete writes its range, and reads it when it asks for the deleted values.
pub fn check_delete(d: &DeleteRangeRequest, check: &Check<'_>) -> Result<(), RequestError> {
    if d.prev_kv {
        check(&d.key, &d.range_end, Access::Read)?;
    }
    check(&d.key, &d.range_end, Access::Write)
}

/// Every compare reads its range; every operation of both branches is checked, and
/// nested txns all the way down (etcd 3.4 did not look into nested txns, so a user
/// could reach any key through one).
pub fn check_txn(t: &TxnRequest, check: &Check<'_>) -> Result<(), RequestError> {
    for c in &t.compare {
        check(&c.key, &c.range_end, Access::Read)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => check(&r.key, &r.range_end, Access::Read)?,
            Some(Op::RequestPut(p)) => check_put(p, check)?,
            Some(Op::RequestDeleteRange(d)) => check_delete(d, check)?,
            Some(Op::RequestTxn(inner)) => check_txn(inner, check)?,
            None => {}
        }
    }
    Ok(())
}

/// The leases a txn's puts attach keys to (nested txns included).
pub fn txn_leases(t: &TxnRequest) -> Vec<i64> {
    let mut leases = Vec::new();
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestPut(p)) if p.lease != 0 => leases.push(p.lease),
            Some(Op::RequestTxn(inner)) => leases.extend(txn_leases(inner)),
            _ => {}
        }
    }
    leases
}

/// Whether a txn only reads (etcd answers those without Raft).
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(_)) | None => true,
            Some(Op::RequestTxn(inner)) => txn_is_read_only(inner),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::authpb::Permission;

    fn role(perms: &[(&str, &str, PermType)]) -> Role {
        Role {
            name: b"r".to_vec(),
            key_permission: perms
                .iter()
                .map(|(k, e, t)| Permission {
                    perm_type: *t as i32,
                    key: k.as_bytes().to_vec(),
                    range_end: e.as_bytes().to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn single_keys_prefixes_and_from_key() {
        let r = role(&[
            ("foo", "", PermType::Read),
            ("app/", "app0", PermType::Readwrite),
            ("z", "\0", PermType::Write),
        ]);
        let ok = |k: &str, e: &str, a| permitted([&r], k.as_bytes(), e.as_bytes(), a);
        assert!(ok("foo", "", Access::Read));
        assert!(!ok("foo", "", Access::Write));
        assert!(!ok("foo1", "", Access::Read));
        assert!(
            !ok("foo", "foo1", Access::Read),
            "a range past the single key"
        );
        assert!(ok("app/x", "", Access::Write));
        assert!(ok("app/", "app0", Access::Read));
        assert!(ok("app/a", "app/b", Access::Read));
        assert!(
            !ok("app/", "app1", Access::Read),
            "the range runs past the prefix"
        );
        assert!(!ok("app/", "\0", Access::Read));
        assert!(!ok("ap", "app0", Access::Read));
        assert!(ok("zz", "", Access::Write));
        assert!(ok("z", "\0", Access::Write));
        assert!(!ok("y", "\0", Access::Write));
        assert!(!ok("zz", "", Access::Read));
    }

    #[test]
    fn adjacent_grants_cover_a_range_together() {
        let a = role(&[("a", "m", PermType::Read)]);
        let b = role(&[("m", "z", PermType::Readwrite)]);
        assert!(permitted([&a, &b], b"b", b"y", Access::Read));
        assert!(!permitted([&a, &b], b"b", b"y", Access::Write));
        assert!(!permitted([&a, &b], b"b", b"zz", Access::Read));
        assert!(!permitted(std::iter::empty(), b"b", b"", Access::Read));
    }
}
