//! The tables of the two databases: the Raft log's (attached as `log`) and the
//! state's (`main`). Table names are unique across both, so statements name tables
//! without a schema and work on either connection layout.

use rusqlite::Connection;

use super::StorageError;

/// Bumped when the layout changes; a database with another version is refused.
/// Version 2 kept the log in the state database and the history keyed by key; it is
/// migrated (see [`migrate_v2`]). Version 3 had no auth store; migrating it only adds
/// the (empty) auth tables, which the statements below create.
pub const SCHEMA_VERSION: i64 = 4;

/// The columns of `kv_history` (after its opening parenthesis), shared by the schema
/// and the migration that re-keys a version-2 table.
const HISTORY_COLUMNS: &str = "
            key        BLOB    NOT NULL,
            mod_rev    INTEGER NOT NULL,
            sub_rev    INTEGER NOT NULL,
            create_rev INTEGER NOT NULL,
            version    INTEGER NOT NULL,
            value      BLOB    NOT NULL,
            lease      INTEGER NOT NULL,
            tombstone  INTEGER NOT NULL,
            PRIMARY KEY (mod_rev, sub_rev)
        ) WITHOUT ROWID;";

pub fn create(conn: &Connection) -> Result<(), StorageError> {
    let version: i64 = conn.pragma_query_value(Some("main"), "user_version", |r| r.get(0))?;
    if version != 0 && version != 2 && version != 3 && version != SCHEMA_VERSION {
        return Err(StorageError::UnknownSchema {
            found: version,
            understood: SCHEMA_VERSION,
        });
    }
    conn.execute_batch(&format!(
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
        -- Serves reads at past revisions and watch history. Keyed by revision, so a
        -- write appends at the right edge of the tree whatever its key: keyed by key,
        -- random keys split pages all over a tree of full-size rows, and a put's cost
        -- grew with the key space. The by-key index holds small rows only.
        CREATE TABLE IF NOT EXISTS main.kv_history ({HISTORY_COLUMNS}
        CREATE INDEX IF NOT EXISTS main.kv_history_by_key ON kv_history (key, mod_rev);
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
    ))?;
    if version == 2 {
        migrate_v2(conn)?;
    }
    if version == 2 || version == 3 {
        tracing::info!("added the auth store's tables (layout version {version} -> 4)");
    }
    conn.pragma_update(Some("main"), "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// Brings a version-2 state database to version 3: moves its log into the log database
/// and re-keys its history by revision. Each step is safe to repeat if interrupted:
/// rows are copied with replacement, and the old tables are dropped only after the
/// copies committed.
fn migrate_v2(conn: &Connection) -> Result<(), StorageError> {
    let exists = |kind: &str, name: &str| -> Result<bool, StorageError> {
        Ok(conn.query_row(
            "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = ?1 AND name = ?2",
            rusqlite::params![kind, name],
            |r| r.get(0),
        )?)
    };
    if exists("table", "raft_log")? {
        move_log_out(conn)?;
    }
    // Only the by-key history had this index.
    if exists("index", "kv_history_by_rev")? {
        rekey_history(conn)?;
    }
    Ok(())
}

fn move_log_out(conn: &Connection) -> Result<(), StorageError> {
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

fn rekey_history(conn: &Connection) -> Result<(), StorageError> {
    tracing::info!("re-keying the key history by revision (layout version 2 -> 3)");
    conn.execute_batch(&format!(
        "BEGIN;
         CREATE TABLE main.kv_history_v3 ({HISTORY_COLUMNS}
         INSERT INTO main.kv_history_v3
           SELECT key, mod_rev, sub_rev, create_rev, version, value, lease, tombstone
           FROM main.kv_history;
         DROP TABLE main.kv_history;
         ALTER TABLE main.kv_history_v3 RENAME TO kv_history;
         CREATE INDEX main.kv_history_by_key ON kv_history (key, mod_rev);
         COMMIT;"
    ))?;
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
            .query_row("SELECT key, mod_rev FROM kv_history", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(history, (b"k".to_vec(), 5));
        let old_tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM main.sqlite_master
                 WHERE name IN ('raft_log', 'kv_history_by_rev', 'kv_history_v3')",
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
