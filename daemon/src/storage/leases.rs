//! The `leases` table: which leases are granted, with the TTL each was granted.
//! (Which keys a lease owns is part of the key space, see [`super::keyspace`].)

use rusqlite::{Connection, OptionalExtension, params};

use super::StorageError;

pub fn insert(conn: &Connection, id: i64, ttl: i64) -> Result<(), StorageError> {
    conn.prepare_cached("INSERT INTO leases (id, ttl) VALUES (?1, ?2)")?
        .execute(params![id, ttl])?;
    Ok(())
}

pub fn delete(conn: &Connection, id: i64) -> Result<(), StorageError> {
    conn.prepare_cached("DELETE FROM leases WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

/// The TTL lease `id` was granted with, if it exists.
pub fn granted_ttl(conn: &Connection, id: i64) -> Result<Option<i64>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT ttl FROM leases WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?)
}

/// Every granted lease with its TTL, in ID order.
pub fn all(conn: &Connection) -> Result<Vec<(i64, i64)>, StorageError> {
    let mut stmt = conn.prepare_cached("SELECT id, ttl FROM leases ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
