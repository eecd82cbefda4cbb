//! The tables of the state database.

use rusqlite::Connection;

/// Bumped when the layout changes; a database with another version is refused.
pub const SCHEMA_VERSION: i64 = 2;

pub fn create(conn: &Connection) -> Result<(), super::StorageError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != 0 && version != SCHEMA_VERSION {
        return Err(super::StorageError::Corrupt(format!(
            "state database has schema version {version}, this qetcd understands {SCHEMA_VERSION}"
        )));
    }
    conn.execute_batch(
        "
        -- Raft log: one row per entry, the entry in raft's protobuf encoding.
        CREATE TABLE IF NOT EXISTS raft_log (
            idx   INTEGER PRIMARY KEY,
            term  INTEGER NOT NULL,
            entry BLOB    NOT NULL
        );
        -- Small named values: hard state, conf state, IDs, applied index, revisions.
        CREATE TABLE IF NOT EXISTS meta (
            name  TEXT PRIMARY KEY,
            value BLOB NOT NULL
        ) WITHOUT ROWID;
        -- The latest version of every live key: what reads at the current revision see.
        -- WITHOUT ROWID here and in kv_history: rows live in their primary-key B-tree,
        -- so a write updates one tree instead of a rowid table plus a key index. On a
        -- CPU-bound member that is a large share of the cost of a put.
        CREATE TABLE IF NOT EXISTS kv_live (
            key        BLOB PRIMARY KEY,
            create_rev INTEGER NOT NULL,
            mod_rev    INTEGER NOT NULL,
            version    INTEGER NOT NULL,
            value      BLOB    NOT NULL,
            lease      INTEGER NOT NULL
        ) WITHOUT ROWID;
        -- Every revision of every key not yet compacted away, deletions as tombstones.
        -- Serves reads at past revisions and watch history.
        CREATE TABLE IF NOT EXISTS kv_history (
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
        CREATE INDEX IF NOT EXISTS kv_history_by_rev ON kv_history (mod_rev, sub_rev);
        -- Granted leases, with the TTL they were granted (seconds). Keys name their
        -- lease in kv_live.lease; deadlines are not stored (see lease::Lessor).
        CREATE TABLE IF NOT EXISTS leases (
            id  INTEGER PRIMARY KEY,
            ttl INTEGER NOT NULL
        );
        -- The keys of each lease, for revoke and TimeToLive. Partial: keys without a
        -- lease (most of them) cost a put nothing here.
        CREATE INDEX IF NOT EXISTS kv_live_by_lease ON kv_live (lease) WHERE lease != 0;
        -- Request IDs applied recently, so that a request proposed twice (a retry after
        -- its first proposal may have been lost) takes effect once. Two generations,
        -- chosen by log index, instead of one table with an index on the log index to
        -- prune by: a put then costs one B-tree insert here, and forgetting a whole
        -- generation is one cheap DELETE (see state_machine).
        CREATE TABLE IF NOT EXISTS applied_requests_0 (
            origin INTEGER NOT NULL,
            id     INTEGER NOT NULL,
            PRIMARY KEY (origin, id)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS applied_requests_1 (
            origin INTEGER NOT NULL,
            id     INTEGER NOT NULL,
            PRIMARY KEY (origin, id)
        ) WITHOUT ROWID;
        -- Cluster membership as applied from the log.
        CREATE TABLE IF NOT EXISTS members (
            id          INTEGER PRIMARY KEY,
            name        TEXT    NOT NULL,
            peer_urls   TEXT    NOT NULL,
            client_urls TEXT    NOT NULL,
            is_learner  INTEGER NOT NULL
        );
        ",
    )?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}
