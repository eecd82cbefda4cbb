//! Leases: TTL-bound ownership of keys.
//!
//! What is replicated and persisted: which leases exist and their granted TTL (table
//! `leases`), and which keys they own (the lease of each key's newest version). Grant, revoke and keep-alive
//! are Raft entries; applying them changes that state in the batch transaction
//! ([`apply`]). What is not: each lease's deadline, which lives in memory on every
//! member ([`Lessor`]), restarted by every applied keep-alive. Only the leader acts on
//! deadlines (`server::lease_expiry`): it proposes a revoke for each lease past its
//! deadline, so an expiry reaches every member as an ordinary revoke. That revoke names
//! the term it was decided in and is ignored if committed in another: a decision
//! re-proposed through a later leader may have missed keep-alives. A new leader first
//! extends every deadline to a full TTL from the moment it has applied its
//! predecessor's entries, as etcd's `Promote` does, so no lease expires because of a
//! failover.

mod apply;
mod lessor;

use rusqlite::Connection;

pub use apply::{grant, renew, revoke};
pub use lessor::Lessor;

use crate::error::RequestError;

/// etcd's `MaxLeaseTTL`: about 285 years, in seconds.
pub const MAX_TTL: i64 = 9_000_000_000;

/// Whether lease `id` is currently granted.
pub fn exists(conn: &Connection, id: i64) -> Result<bool, RequestError> {
    Ok(granted_ttl(conn, id)?.is_some())
}

/// The TTL lease `id` was granted with, if it exists.
pub fn granted_ttl(conn: &Connection, id: i64) -> Result<Option<i64>, RequestError> {
    Ok(crate::storage::leases::granted_ttl(conn, id)?)
}

/// The keys attached to lease `id`, in key order.
pub fn keys(txn: &crate::storage::StateTxn<'_>, id: i64) -> Vec<Vec<u8>> {
    crate::storage::keyspace::lease_keys(txn, id)
}

/// Every granted lease, in ID order.
pub fn list(conn: &Connection) -> Result<Vec<i64>, RequestError> {
    let all = crate::storage::leases::all(conn)?;
    Ok(all.into_iter().map(|(id, _)| id).collect())
}

/// etcd's `minLeaseTTL`: a lease must outlive the election that may follow a leader's
/// failure, so the shortest TTL is 1.5 election timeouts, rounded up to whole seconds.
pub fn min_ttl(heartbeat: std::time::Duration, election_ticks: usize) -> i64 {
    let min = heartbeat * ((3 * election_ticks as u32) / 2);
    min.as_millis().div_ceil(1000) as i64
}

/// Generates lease IDs the way etcd does (its `idutil.Generator`): the low 16 bits of
/// the member ID, then milliseconds since the epoch and a counter. IDs from different
/// members differ in their top bits; those from one member increase. Apply still
/// refuses an ID that exists (a client may have picked it), and the API then asks for
/// another one.
pub struct IdGenerator {
    prefix: u64,
    next: std::sync::atomic::AtomicU64,
}

impl IdGenerator {
    pub fn new(member_id: u64) -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        IdGenerator {
            prefix: (member_id & 0xffff) << 48,
            next: std::sync::atomic::AtomicU64::new((millis & ((1 << 40) - 1)) << 8),
        }
    }

    /// A new, positive, non-zero ID.
    pub fn next(&self) -> i64 {
        loop {
            let suffix =
                self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & ((1 << 48) - 1);
            let id = ((self.prefix | suffix) & (i64::MAX as u64)) as i64;
            if id != 0 {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests;
