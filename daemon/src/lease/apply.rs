//! Applying committed lease entries, inside the Raft thread's batch transaction.
//!
//! The TTL in a grant entry is final: the proposing member already raised it to the
//! minimum, so every member stores the same value whatever its own timing flags.

use rusqlite::Connection;

use super::Lessor;
use crate::error::RequestError;
use crate::mvcc::{KeyRange, WriteTxn};
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseRevokeResponse,
    ResponseHeader,
};

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Grants lease `req.ID` (never 0 here: the proposer chose one) with `req.TTL`.
pub fn grant(
    conn: &Connection,
    lessor: &Lessor,
    req: &LeaseGrantRequest,
    revision: i64,
) -> Result<LeaseGrantResponse, RequestError> {
    if req.id == 0 {
        return Err(RequestError::Internal(
            "lease grant entry without an ID".into(),
        ));
    }
    if super::exists(conn, req.id)? {
        return Err(RequestError::LeaseExists);
    }
    crate::storage::leases::insert(conn, req.id, req.ttl)?;
    lessor.refresh(req.id, req.ttl);
    Ok(LeaseGrantResponse {
        header: header(revision),
        id: req.id,
        ttl: req.ttl,
        error: String::new(),
    })
}

/// Revokes lease `id`: deletes every key attached to it, all in one revision (one
/// `WriteTxn`, so watchers see one atomic change), then the lease itself.
pub fn revoke(
    w: &mut WriteTxn<'_>,
    lessor: &Lessor,
    id: i64,
) -> Result<LeaseRevokeResponse, RequestError> {
    let conn = w.txn();
    if !super::exists(conn, id)? {
        return Err(RequestError::LeaseNotFound);
    }
    for key in super::keys(conn, id) {
        w.delete_keys(&KeyRange::Single(key), false)?;
    }
    crate::storage::leases::delete(conn, id)?;
    lessor.remove(id);
    Ok(LeaseRevokeResponse {
        header: header(w.revision()),
    })
}

/// A keep-alive: restarts lease `id`'s countdown on this member. A lease that no
/// longer exists is answered with TTL 0, as etcd does (clients take it as expired).
pub fn renew(
    conn: &Connection,
    lessor: &Lessor,
    id: i64,
    revision: i64,
) -> Result<LeaseKeepAliveResponse, RequestError> {
    let ttl = match super::granted_ttl(conn, id)? {
        Some(ttl) => {
            lessor.refresh(id, ttl);
            ttl
        }
        None => 0,
    };
    Ok(LeaseKeepAliveResponse {
        header: header(revision),
        id,
        ttl,
    })
}
