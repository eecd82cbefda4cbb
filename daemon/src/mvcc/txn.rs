//! `KV.Txn`: compare, then one of two lists of operations, atomically.

use super::{KeyRange, WriteTxn, range};
use crate::error::RequestError;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    Compare, RangeRequest, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

/// How deeply txns may nest. etcd sets no limit (its decoder has none), but a proposed
/// request must decode again when applied, and the decoder stops at 100 levels of
/// nested messages: two per txn level, plus the log entry's own. Deeper txns, which
/// the API's decoder still accepts, crashed every member that applied one. They are
/// refused as too many operations (etcd's text, so clients know it).
pub const MAX_TXN_DEPTH: usize = 32;

/// etcd's request checks, done before a txn is proposed: operation counts, keys present,
/// and no key written twice (or written and deleted) by the same branch; and nesting no
/// deeper than [`MAX_TXN_DEPTH`].
pub fn check_txn(req: &TxnRequest, max_ops: usize) -> Result<(), RequestError> {
    check_nested_txn(req, max_ops, 0)
}

fn check_nested_txn(req: &TxnRequest, max_ops: usize, depth: usize) -> Result<(), RequestError> {
    if depth > MAX_TXN_DEPTH {
        return Err(RequestError::TooManyOps);
    }
    if req.compare.len() > max_ops || req.success.len() > max_ops || req.failure.len() > max_ops {
        return Err(RequestError::TooManyOps);
    }
    for c in &req.compare {
        if c.key.is_empty() {
            return Err(RequestError::EmptyKey);
        }
    }
    for op in req.success.iter().chain(&req.failure) {
        check_op(op, max_ops, depth)?;
    }
    branch_writes(&req.success)?;
    branch_writes(&req.failure)?;
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize, depth: usize) -> Result<(), RequestError> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(p)) => check_put(p),
        Some(Request::RequestDeleteRange(d)) if d.key.is_empty() => Err(RequestError::EmptyKey),
        Some(Request::RequestDeleteRange(_)) => Ok(()),
        Some(Request::RequestTxn(t)) => check_nested_txn(t, max_ops, depth + 1),
        None => Ok(()),
    }
}

pub fn check_range(r: &RangeRequest) -> Result<(), RequestError> {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(RequestError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(p: &crate::proto::etcdserverpb::PutRequest) -> Result<(), RequestError> {
    if p.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(RequestError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(())
}

/// Keys a branch puts and ranges it deletes, nested txns included.
#[derive(Default)]
struct Writes {
    puts: Vec<Vec<u8>>,
    deletes: Vec<KeyRange>,
}

impl Writes {
    fn deleted(&self, key: &[u8]) -> bool {
        self.deletes.iter().any(|d| d.contains(key))
    }
    fn put(&self, key: &[u8]) -> bool {
        self.puts.iter().any(|p| p.as_slice() == key)
    }
}

/// The duplicate-key rule: within one branch a key may be put once and not also be
/// deleted. A nested txn's two branches exclude each other, so they may share keys.
fn branch_writes(ops: &[RequestOp]) -> Result<Writes, RequestError> {
    let mut w = Writes::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            w.deletes.push(KeyRange::new(&d.key, &d.range_end));
        }
    }
    for op in ops {
        if let Some(Request::RequestTxn(t)) = &op.request {
            let then = branch_writes(&t.success)?;
            let otherwise = branch_writes(&t.failure)?;
            for k in &then.puts {
                if w.put(k) || w.deleted(k) {
                    return Err(RequestError::DuplicateKey);
                }
            }
            for k in &otherwise.puts {
                if (w.put(k) && !then.put(k)) || w.deleted(k) {
                    return Err(RequestError::DuplicateKey);
                }
            }
            w.puts.extend(then.puts);
            for k in otherwise.puts {
                if !w.put(&k) {
                    w.puts.push(k);
                }
            }
            w.deletes.extend(then.deletes);
            w.deletes.extend(otherwise.deletes);
        }
    }
    for op in ops {
        if let Some(Request::RequestPut(p)) = &op.request {
            if w.put(&p.key) || w.deleted(&p.key) {
                return Err(RequestError::DuplicateKey);
            }
            w.puts.push(p.key.clone());
        }
    }
    Ok(w)
}

/// Applies a txn inside `w`; nested txns share its revision.
pub fn apply_txn(w: &mut WriteTxn<'_>, req: &TxnRequest) -> Result<TxnResponse, RequestError> {
    let mut succeeded = true;
    for c in &req.compare {
        if !compare(w, c)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => {
                Some(Response::ResponseRange(range(w.txn(), r, w.view())?))
            }
            Some(Request::RequestPut(p)) => Some(Response::ResponsePut(w.put(p)?)),
            Some(Request::RequestDeleteRange(d)) => {
                Some(Response::ResponseDeleteRange(w.delete_range(d)?))
            }
            Some(Request::RequestTxn(t)) => Some(Response::ResponseTxn(apply_txn(w, t)?)),
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader {
            revision: w.revision(),
            ..Default::default()
        }),
        succeeded,
        responses,
    })
}

/// A compare holds if it holds for every key in its range; a missing key compares as a
/// key with all-zero fields, except that a value compare on it is false.
fn compare(w: &WriteTxn<'_>, c: &Compare) -> Result<bool, RequestError> {
    let req = RangeRequest {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        ..Default::default()
    };
    let found = range(w.txn(), &req, w.view())?.kvs;
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    if found.is_empty() {
        if target == CompareTarget::Value {
            return Ok(false);
        }
        return Ok(compare_kv(c, target, &KeyValue::default()));
    }
    Ok(found.iter().all(|kv| compare_kv(c, target, kv)))
}

fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ordering = match (target, &c.target_union) {
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => kv.value.as_slice().cmp(v),
        (CompareTarget::Value, _) => kv.value.as_slice().cmp(&[]),
        (CompareTarget::Version, Some(TargetUnion::Version(v))) => kv.version.cmp(v),
        (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => kv.create_revision.cmp(v),
        (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => kv.mod_revision.cmp(v),
        (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => kv.lease.cmp(v),
        // A target without its matching value compares against zero, as in etcd.
        (CompareTarget::Version, _) => kv.version.cmp(&0),
        (CompareTarget::Create, _) => kv.create_revision.cmp(&0),
        (CompareTarget::Mod, _) => kv.mod_revision.cmp(&0),
        (CompareTarget::Lease, _) => kv.lease.cmp(&0),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
        CompareResult::NotEqual => ordering != Ordering::Equal,
    }
}
