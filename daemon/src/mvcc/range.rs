//! `KV.Range`: reading keys at the current or a past revision.

use rusqlite::{Connection, params_from_iter, types::Value};

use super::{KeyRange, Revisions};
use crate::error::RequestError;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;

/// Executes a range read in the caller's transaction.
///
/// Semantics follow etcd's apply layer: `count` is the number of keys in the range at
/// that revision regardless of filters and limit; the min/max revision filters, sort
/// and limit apply afterwards, and `more` says whether the limit cut anything off.
/// The header carries the store's current revision, even for reads in the past.
pub fn range(
    conn: &Connection,
    req: &RangeRequest,
    revs: Revisions,
) -> Result<RangeResponse, RequestError> {
    revs.check_read(req.revision)?;
    let range = KeyRange::new(&req.key, &req.range_end);
    let (cond, keys) = range.sql();
    let mut params: Vec<Value> = keys.iter().map(|k| Value::Blob(k.to_vec())).collect();

    let source = if req.revision <= 0 || req.revision >= revs.current {
        format!("SELECT key, create_rev, mod_rev, version, value, lease FROM kv_live WHERE {cond}")
    } else {
        // The newest version of each key at or below the revision; the bare columns come
        // from the row holding MAX(mod_rev), as SQLite guarantees for a lone MAX().
        params.push(Value::Integer(req.revision));
        format!(
            "SELECT key, create_rev, mod_rev, version, value, lease FROM (
                SELECT key, create_rev, MAX(mod_rev) AS mod_rev, version, value, lease, tombstone
                FROM kv_history WHERE {cond} AND mod_rev <= ? GROUP BY key)
             WHERE tombstone = 0"
        )
    };

    let count: i64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM ({source})"))?
        .query_row(params_from_iter(params.iter()), |r| r.get(0))?;

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

    let mut filters = Vec::new();
    for (value, clause) in [
        (req.min_mod_revision, "mod_rev >= ?"),
        (req.max_mod_revision, "mod_rev <= ?"),
        (req.min_create_revision, "create_rev >= ?"),
        (req.max_create_revision, "create_rev <= ?"),
    ] {
        if value != 0 {
            filters.push(clause);
            params.push(Value::Integer(value));
        }
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filters.join(" AND "))
    };

    let order = order_by(req)?;
    let limit = if req.limit > 0 { req.limit + 1 } else { -1 };
    params.push(Value::Integer(limit));
    let value_col = if req.keys_only { "x''" } else { "value" };
    let sql = format!(
        "SELECT key, create_rev, mod_rev, version, {value_col}, lease FROM ({source}) {filter}
         ORDER BY {order} LIMIT ?"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(params.iter()))?;
    let mut kvs = Vec::new();
    while let Some(row) = rows.next()? {
        kvs.push(KeyValue {
            key: row.get(0)?,
            create_revision: row.get(1)?,
            mod_revision: row.get(2)?,
            version: row.get(3)?,
            value: row.get(4)?,
            lease: row.get(5)?,
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

/// The ORDER BY clause for a request; keys break ties so results are deterministic.
fn order_by(req: &RangeRequest) -> Result<&'static str, RequestError> {
    let target =
        SortTarget::try_from(req.sort_target).map_err(|_| RequestError::InvalidSortOption)?;
    let mut order =
        SortOrder::try_from(req.sort_order).map_err(|_| RequestError::InvalidSortOption)?;
    // etcd sorts ascending by default when a non-key target is named without an order.
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    let descend = order == SortOrder::Descend;
    Ok(match (target, descend) {
        (SortTarget::Key, false) => "key ASC",
        (SortTarget::Key, true) => "key DESC",
        (SortTarget::Version, false) => "version ASC, key ASC",
        (SortTarget::Version, true) => "version DESC, key ASC",
        (SortTarget::Create, false) => "create_rev ASC, key ASC",
        (SortTarget::Create, true) => "create_rev DESC, key ASC",
        (SortTarget::Mod, false) => "mod_rev ASC, key ASC",
        (SortTarget::Mod, true) => "mod_rev DESC, key ASC",
        (SortTarget::Value, false) => "value ASC, key ASC",
        (SortTarget::Value, true) => "value DESC, key ASC",
    })
}
