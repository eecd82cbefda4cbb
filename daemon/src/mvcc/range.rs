//! `KV.Range`: reading keys at the current or a past revision.

use std::cmp::Ordering;
use std::ops::ControlFlow;

use super::{KeyRange, Revisions};
use crate::error::RequestError;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;
use crate::storage::StateTxn;
use crate::storage::keyspace::{self, At, Scan};

/// Executes a range read in the caller's transaction.
///
/// Semantics follow etcd's apply layer: `count` is the number of keys in the range at
/// that revision regardless of filters and limit; the min/max revision filters, sort
/// and limit apply afterwards, and `more` says whether the limit cut anything off.
/// The header carries the store's current revision, even for reads in the past.
pub fn range(
    conn: &StateTxn<'_>,
    req: &RangeRequest,
    revs: Revisions,
) -> Result<RangeResponse, RequestError> {
    revs.check_read(req.revision)?;
    let range = KeyRange::new(&req.key, &req.range_end);
    let at = if req.revision <= 0 || req.revision >= revs.current {
        At::Current
    } else {
        At::Revision(req.revision)
    };
    let count = keyspace::count(conn, &range, at)?;
    let header = Some(ResponseHeader {
        revision: revs.current,
        ..Default::default()
    });
    if req.count_only {
        return Ok(RangeResponse {
            header,
            kvs: Vec::new(),
            more: false,
            count,
        });
    }

    let (target, descending) = sort_of(req)?;
    let by_key = target == SortTarget::Key;
    // In key order the scan can stop once it has one more than the limit.
    let wanted = match req.limit {
        l if l > 0 && by_key => Some(l as usize + 1),
        _ => None,
    };
    let scan = Scan {
        at,
        descending: by_key && descending,
        values: !req.keys_only,
    };
    let mut kvs = Vec::new();
    keyspace::scan(conn, &range, scan, |kv| {
        if passes_filters(req, &kv) {
            kvs.push(kv);
        }
        match wanted {
            Some(n) if kvs.len() >= n => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    })?;
    if !by_key {
        // Stable: keys (the scan's order) break ties, so results are deterministic.
        kvs.sort_by(|a, b| {
            let o = compare_by(target, a, b);
            if descending { o.reverse() } else { o }
        });
    }
    let more = req.limit > 0 && kvs.len() as i64 > req.limit;
    if more {
        kvs.truncate(req.limit as usize);
    }
    Ok(RangeResponse {
        header,
        kvs,
        more,
        count,
    })
}

fn passes_filters(req: &RangeRequest, kv: &KeyValue) -> bool {
    (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
        && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
        && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
}

/// The sort target and whether it is descending.
fn sort_of(req: &RangeRequest) -> Result<(SortTarget, bool), RequestError> {
    let target =
        SortTarget::try_from(req.sort_target).map_err(|_| RequestError::InvalidSortOption)?;
    let mut order =
        SortOrder::try_from(req.sort_order).map_err(|_| RequestError::InvalidSortOption)?;
    // etcd sorts ascending by default when a non-key target is named without an order.
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    Ok((target, order == SortOrder::Descend))
}

fn compare_by(target: SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}
