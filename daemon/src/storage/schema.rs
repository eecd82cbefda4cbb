//! The tables of the two databases: the Raft log's (attached as `log`) and the
//! state's (`main`). Table names are unique across both, so statements name tables
//! without a schema and work on either connection layout.

use rusqlite::Connection;

use super::StorageError;

/// Bumped when the layout changes; a database with another version is refused.
/// Version 2 kept the log in the state database; it is migrated (see [`migrate_v2`]).
pub const SCHEMA_VERSION: i64 = 3;

pub fn create(conn: &Connection) -> Result<(), StorageError> {
    let version: i64 = conn.pragma_query_value(Some("main"), "user_version", |r| r.get(0))?;
    if version != 0 && version != 2 && version != SCHEMA_VERSION {
        return Err(StorageError::UnknownSchema {
            found: version,
            understood: SCHEMA_VERSION,
        });
    }
    conn.execute_batch(
        "
        -- Raft log: one row per entry, the entry in raft's protobuf encoding.
        CREATE TABLE IF NOT EXISTS log.raft_log (
            idx   INTEGER PRIMARY KEY,
            term  INTEGER NOT NULL,
            entry BLOB    NOT NULL
        );
        -- The log's named values: hard state and the compaction point.
        CREATE TABLE IF NOT EXISTS log.raft_meta (
            name  TEXT PRIMARY KEY,
            value BLOB NOT NULL
        ) WITHOUT ROWID;
        -- The state's named values: conf state, IDs, applied index, revisions.
        CREATE TABLE IF NOT EXISTS main.meta (
            name  TEXT PRIMARY KEY,
            value BLOB NOT NULL
        ) WITHOUT ROWID;
        -- The latest version of every live key: what reads at the current revision see.
        -- WITHOUT ROWID here and in kv_history: rows live in their primary-key B-tree,
        -- so a write updates one tree instead of a rowid table plus a key index. On a
        -- CPU-bound member that is a large share of the cost of a put.
        CREATE TABLE IF NOT EXISTS main.kv_live (
            key        BLOB PRIMARY KEY,
            create_rev INTEGER NOT NULL,
            mod_rev    INTEGER NOT NULL,
            version    INTEGER NOT NULL,
            value      BLOB    NOT NULL,
            lease      INTEGER NOT NULL
        ) WITHOUT ROWID;
        -- Every revision of every key not yet compacted away, deletions as tombstones.
        -- Serves reads at past revisions and watch history.
        CREATE TABLE IF NOT EXISTS main.kv_history (
            key        BLOB    NOT NULL,
            mod_rev    INTEGER NOT NULL,
            sub_rev    INTEGER NOT NULL,
            create_rev INTEGER NOT NULL,
            version    INTEGER NOT NULL,
            value      BLOB    NOT NULL,
            lease      INTEGER NOT NULL,
            tombstone  INTEGER NOT NULL,
            PRIMARY KEY (key, mod_rev)
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS main.kv_history_by_rev ON kv_history (mod_rev, sub_rev);
        -- Granted leases, with the TTL they were granted (seconds). Keys name their
        -- lease in kv_live.lease; deadlines are not stored (see lease::Lessor).
        CREATE TABLE IF NOT EXISTS main.leases (
            id  INTEGER PRIMARY KEY,
            ttl INTEGER NOT NULL
        );
        -- The keys of each lease, for revoke and TimeToLive. Partial: keys without a
        -- lease (most of them) cost a put nothing here.
        CREATE INDEX IF NOT EXISTS main.kv_live_by_lease ON kv_live (lease) WHERE lease != 0;
        -- Request IDs applied recently, so that a request proposed twice (a retry after
        -- its first proposal may have been lost) takes effect once. Two generations,
        -- chosen by log index, instead of one table with an index on the log index to
        -- prune by: a put then costs one B-tree insert here, and forgetting a whole
        -- generation is one cheap DELETE (see state_machine).
        CREATE TABLE IF NOT EXISTS main.applied_requests_0 (
            origin INTEGER NOT NULL,
            id     INTEGER NOT NULL,
            PRIMARY KEY (origin, id)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS main.applied_requests_1 (
            origin INTEGER NOT NULL,
            id     INTEGER NOT NULL,
            PRIMARY KEY (origin, id)
        ) WITHOUT ROWID;
        -- Cluster membership as applied from the log.
        CREATE TABLE IF NOT EXISTS main.members (
            id          INTEGER PRIMARY KEY,
            name        TEXT    NOT NULL,
            peer_urls   TEXT    NOT NULL,
            client_urls TEXT    NOT NULL,
            is_learner  INTEGER NOT NULL
        );
        ",
    )?;
    if version == 2 {
        migrate_v2(conn)?;
    }
    conn.pragma_update(Some("main"), "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// Moves the log of a version-2 state database (log and state in one file) into the
/// log database. Safe to repeat if interrupted: rows are copied with replacement and
/// the old table is dropped only after the copy committed in the log database.
fn migrate_v2(conn: &Connection) -> Result<(), StorageError> {
    let has_old_log: bool = conn.query_row(
        "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = 'raft_log'",
        [],
        |r| r.get(0),
    )?;
    if !has_old_log {
        return Ok(());
    }
    tracing::info!("moving the raft log out of the state database (layout version 2 -> 3)");
    conn.execute_batch(
        "BEGIN;
         INSERT OR REPLACE INTO log.raft_log SELECT * FROM main.raft_log;
         INSERT OR REPLACE INTO log.raft_meta
           SELECT name, value FROM main.meta
           WHERE name IN ('raft.hard_state', 'raft.truncated_index', 'raft.truncated_term');
         COMMIT;
         BEGIN;
         DROP TABLE main.raft_log;
         DELETE FROM main.meta
           WHERE name IN ('raft.hard_state', 'raft.truncated_index', 'raft.truncated_term');
         COMMIT;",
    )?;
    Ok(())
}
