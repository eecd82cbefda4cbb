//! The `alarms` table: the alarms raised in the cluster (etcd's `alarm` bucket). Alarms
//! are raised and cleared only by applying Raft entries, so every member holds the same
//! set, and it survives restarts and travels in Raft snapshots.

use rusqlite::{Connection, params};

use super::StorageError;
use crate::proto::etcdserverpb::AlarmMember;

/// Every raised alarm, ordered by member then alarm type.
pub fn list(conn: &Connection) -> Result<Vec<AlarmMember>, StorageError> {
    let mut stmt =
        conn.prepare_cached("SELECT member_id, alarm FROM alarms ORDER BY member_id, alarm")?;
    let rows = stmt.query_map([], |r| {
        Ok(AlarmMember {
            member_id: r.get::<_, i64>(0)? as u64,
            alarm: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Raises `alarm` for `member`; true if it was not raised before.
pub fn activate(conn: &Connection, alarm: &AlarmMember) -> Result<bool, StorageError> {
    let inserted = conn
        .prepare_cached("INSERT OR IGNORE INTO alarms (member_id, alarm) VALUES (?1, ?2)")?
        .execute(params![alarm.member_id as i64, alarm.alarm])?;
    Ok(inserted == 1)
}

/// Clears `alarm` of `member`; true if it was raised.
pub fn deactivate(conn: &Connection, alarm: &AlarmMember) -> Result<bool, StorageError> {
    let deleted = conn
        .prepare_cached("DELETE FROM alarms WHERE member_id = ?1 AND alarm = ?2")?
        .execute(params![alarm.member_id as i64, alarm.alarm])?;
    Ok(deleted == 1)
}
