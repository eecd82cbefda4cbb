//! The tables of the two databases: the Raft log's (attached as `log`) and the
//! state's (`main`). Table names are unique across both, so statements name tables
//! without a schema and work on either connection layout.

use rusqlite::Connection;

use super::StorageError;

/// Bumped when the layout changes; a database with another version is refused.
/// Version 2 kept the log in the state database; version 3 had no auth store; version
/// 4 kept the live keys in `kv_live` and the history in `kv_history` (WITHOUT ROWID,
/// which spills every row over ~1 KB to a page of its own); version 5 kept applied
/// request IDs keyed by ID. Each is migrated (see [`migrate`]).
pub const SCHEMA_VERSION: i64 = 6;

pub fn create(conn: &Connection) -> Result<(), StorageError> {
    let version: i64 = conn.pragma_query_value(Some("main"), "user_version", |r| r.get(0))?;
    if version != 0 && !(2..=SCHEMA_VERSION).contains(&version) {
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
        -- Every revision of every key not yet compacted away, deletions as tombstones,
        -- in revision order: rows are appended whatever their key, so a write dirties
        -- the pages at the table's end only. Which rows each key has is kept in memory
        -- (storage::key_index), built from this table at start. A rowid table: its
        -- leaves hold rows of up to ~4 KB, where a WITHOUT ROWID table spills rows
        -- over ~1 KB to an overflow page each.
        CREATE TABLE IF NOT EXISTS main.kv_revisions (
            id         INTEGER PRIMARY KEY,
            key        BLOB    NOT NULL,
            mod_rev    INTEGER NOT NULL,
            sub_rev    INTEGER NOT NULL,
            create_rev INTEGER NOT NULL,
            version    INTEGER NOT NULL,
            value      BLOB    NOT NULL,
            lease      INTEGER NOT NULL,
            tombstone  INTEGER NOT NULL
        );
        -- Ids rise with revisions, so reads by revision (watch history) search the ids
        -- (storage::keyspace) instead of an index every put would have to update;
        -- databases written before keep theirs until this drops it.
        DROP INDEX IF EXISTS main.kv_revisions_by_rev;
        -- Granted leases, with the TTL they were granted (seconds). Keys name their
        -- lease in their rows; deadlines are not stored (see lease::Lessor).
        CREATE TABLE IF NOT EXISTS main.leases (
            id  INTEGER PRIMARY KEY,
            ttl INTEGER NOT NULL
        );
        -- Request IDs applied recently, in two generations chosen by log index: rows
        -- appended (no key), looked up in memory (see storage::applied_requests).
        CREATE TABLE IF NOT EXISTS main.applied_requests_0 (
            origin INTEGER NOT NULL,
            id     INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS main.applied_requests_1 (
            origin INTEGER NOT NULL,
            id     INTEGER NOT NULL
        );
        -- Raised alarms (etcd's alarm bucket): NOSPACE, CORRUPT, per member.
        CREATE TABLE IF NOT EXISTS main.alarms (
            member_id INTEGER NOT NULL,
            alarm     INTEGER NOT NULL,
            PRIMARY KEY (member_id, alarm)
        ) WITHOUT ROWID;
        -- Cluster membership as applied from the log.
        CREATE TABLE IF NOT EXISTS main.members (
            id          INTEGER PRIMARY KEY,
            name        TEXT    NOT NULL,
            peer_urls   TEXT    NOT NULL,
            client_urls TEXT    NOT NULL,
            is_learner  INTEGER NOT NULL
        );
        -- IDs of members removed from the cluster (etcd's members_removed bucket): a
        -- removed ID never comes back, whatever a later conf change says.
        CREATE TABLE IF NOT EXISTS main.members_removed (
            id INTEGER PRIMARY KEY
        );
        -- The auth store (etcd's authUsers / authRoles buckets): one authpb.User or
        -- authpb.Role record per name, protobuf-encoded as etcd stores them. The enabled
        -- flag and the auth revision are in meta.
        CREATE TABLE IF NOT EXISTS main.auth_users (
            name   BLOB PRIMARY KEY,
            record BLOB NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS main.auth_roles (
            name   BLOB PRIMARY KEY,
            record BLOB NOT NULL
        ) WITHOUT ROWID;
        ",
    )?;
    if version != 0 && version < SCHEMA_VERSION {
        migrate(conn, version)?;
    }
    conn.pragma_update(Some("main"), "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// Brings an older state database to this layout. Each step is safe to repeat if
/// interrupted: rows are copied with replacement or into a table emptied first, and
/// old tables are dropped in the transaction that copied them.
fn migrate(conn: &Connection, version: i64) -> Result<(), StorageError> {
    let exists = |name: &str| -> Result<bool, StorageError> {
        Ok(conn.query_row(
            "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = ?1",
            rusqlite::params![name],
            |r| r.get(0),
        )?)
    };
    if exists("raft_log")? {
        move_log_out(conn)?;
    }
    if version <= 3 {
        tracing::info!("added the auth store's tables (layout version {version})");
    }
    if exists("kv_history")? {
        move_history(conn)?;
    }
    super::applied_requests::migrate(conn)?;
    Ok(())
}

fn move_log_out(conn: &Connection) -> Result<(), StorageError> {
    tracing::info!("moving the raft log out of the state database (layout version 2)");
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

/// Copies the history, keyed by key (version 2) or by revision (3 and 4), into
/// `kv_revisions` in revision order, and drops it and `kv_live`, whose content the key
/// index now holds.
fn move_history(conn: &Connection) -> Result<(), StorageError> {
    tracing::info!("moving the key history to kv_revisions (layout version 5)");
    conn.execute_batch(
        "BEGIN;
         DELETE FROM main.kv_revisions;
         INSERT INTO main.kv_revisions
             (key, mod_rev, sub_rev, create_rev, version, value, lease, tombstone)
           SELECT key, mod_rev, sub_rev, create_rev, version, value, lease, tombstone
           FROM main.kv_history ORDER BY mod_rev, sub_rev;
         DROP TABLE main.kv_history;
         DROP TABLE IF EXISTS main.kv_live;
         COMMIT;",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state database as version 2 wrote it: the log inside, the history by key.
    fn write_v2(path: &std::path::Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE raft_log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL,
                                    entry BLOB NOT NULL);
             CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE kv_history (key BLOB NOT NULL, mod_rev INTEGER NOT NULL,
                 sub_rev INTEGER NOT NULL, create_rev INTEGER NOT NULL,
                 version INTEGER NOT NULL, value BLOB NOT NULL, lease INTEGER NOT NULL,
                 tombstone INTEGER NOT NULL, PRIMARY KEY (key, mod_rev)) WITHOUT ROWID;
             CREATE INDEX kv_history_by_rev ON kv_history (mod_rev, sub_rev);
             INSERT INTO raft_log VALUES (7, 2, x'01');
             INSERT INTO meta VALUES ('raft.hard_state', x'02'), ('apply.applied_index', x'03');
             INSERT INTO kv_history VALUES (x'6b', 5, 0, 5, 1, x'76', 0, 0);
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }

    /// A state database as version 4 wrote it: live keys in kv_live, the history keyed
    /// by revision in a WITHOUT ROWID table, with its by-key index.
    fn write_v4(path: &std::path::Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE kv_live (key BLOB PRIMARY KEY, create_rev INTEGER NOT NULL,
                 mod_rev INTEGER NOT NULL, version INTEGER NOT NULL, value BLOB NOT NULL,
                 lease INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE kv_history (key BLOB NOT NULL, mod_rev INTEGER NOT NULL,
                 sub_rev INTEGER NOT NULL, create_rev INTEGER NOT NULL,
                 version INTEGER NOT NULL, value BLOB NOT NULL, lease INTEGER NOT NULL,
                 tombstone INTEGER NOT NULL, PRIMARY KEY (mod_rev, sub_rev)) WITHOUT ROWID;
             CREATE INDEX kv_history_by_key ON kv_history (key, mod_rev);
             CREATE INDEX kv_live_by_lease ON kv_live (lease) WHERE lease != 0;
             -- Inserted out of order: the copy must follow revisions, not insertion.
             INSERT INTO kv_history VALUES (x'62', 4, 0, 3, 2, x'7632', 9, 0);
             INSERT INTO kv_history VALUES (x'61', 2, 0, 2, 1, x'7631', 0, 0);
             INSERT INTO kv_history VALUES (x'62', 3, 0, 3, 1, x'7631', 0, 0);
             INSERT INTO kv_history VALUES (x'61', 5, 0, 0, 0, x'', 0, 1);
             INSERT INTO kv_live VALUES (x'62', 3, 4, 2, x'7632', 9);
             PRAGMA user_version = 4;",
        )
        .unwrap();
    }

    #[test]
    fn a_version_4_database_keeps_every_revision_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        write_v4(&path);
        let conn = crate::storage::open_writer(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(Some("main"), "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let rows: Vec<(i64, i64, Vec<u8>)> = conn
            .prepare("SELECT id, mod_rev, key FROM kv_revisions ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let revisions: Vec<i64> = rows.iter().map(|r| r.1).collect();
        assert_eq!(revisions, [2, 3, 4, 5]);
        let old: i64 = conn
            .query_row(
                "SELECT count(*) FROM main.sqlite_master
                 WHERE name IN ('kv_live', 'kv_history', 'kv_history_by_key', 'kv_live_by_lease')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0);
        // The key index built from the copy knows what kv_live knew.
        let index = crate::storage::key_index::KeyIndex::load(&conn).unwrap();
        let (live, rev) = index.live(b"b").unwrap();
        assert_eq!(
            (live.create_revision, live.version, live.lease, rev.main),
            (3, 2, 9, 4)
        );
        assert!(index.live(b"a").is_none());
        assert_eq!(index.lease_keys(9), [b"b".to_vec()]);
        drop(conn);
        crate::storage::open_writer(&path).unwrap();
    }

    #[test]
    fn a_version_2_database_is_migrated_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        write_v2(&path);
        let conn = crate::storage::open_writer(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(Some("main"), "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let log: (i64, i64) = conn
            .query_row("SELECT idx, term FROM log.raft_log", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(log, (7, 2));
        let hard_state: Vec<u8> = conn
            .query_row(
                "SELECT value FROM log.raft_meta WHERE name = 'raft.hard_state'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(hard_state, vec![2]);
        let state_meta: i64 = conn
            .query_row("SELECT count(*) FROM main.meta", [], |r| r.get(0))
            .unwrap();
        assert_eq!(state_meta, 1, "only the applied index stays with the state");
        let history: (Vec<u8>, i64) = conn
            .query_row("SELECT key, mod_rev FROM kv_revisions", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(history, (b"k".to_vec(), 5));
        let old_tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM main.sqlite_master
                 WHERE name IN ('raft_log', 'kv_history', 'kv_history_by_rev', 'kv_live')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_tables, 0);
        drop(conn);
        // Opening again finds nothing left to migrate.
        crate::storage::open_writer(&path).unwrap();
    }
}
