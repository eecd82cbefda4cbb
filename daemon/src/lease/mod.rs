//! Leases: TTL-bound ownership of keys. Granting, keep-alive and expiry build on this;
//! the key space only needs to know whether a lease exists.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::RequestError;

/// Whether lease `id` is currently granted.
pub fn exists(conn: &Connection, id: i64) -> Result<bool, RequestError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM leases WHERE id = ?1")?
        .query_row(params![id], |_| Ok(()))
        .optional()?
        .is_some())
}
